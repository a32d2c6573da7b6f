"""Worker processes, limits and the cache: a crash, a hang or a blow-up in one file is one
CC000 for that file and never the run's end; results are the same whatever ``--jobs`` and
whatever the cache holds."""

from __future__ import annotations

import faulthandler
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import clipcheck_command

from clipcheck import engine
from clipcheck.cache import FOLDER, Cache
from clipcheck.config import Overrides, Resolver
from clipcheck.findings import Finding
from clipcheck.workers import Limits, Pool

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"

CLIP_AFTER_STEP = """import torch


def train(model, loader, optimizer):
    for x, y in loader:
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
"""


# One epoch of a generated variant, as long as hand-written ones: a docstring, logging,
# a scheduler, a clip in its place.
GENERATED = """

def train_{index}(model, loader, optimizer, scheduler, max_norm=1.0, log_every=50):
    \"\"\"One epoch of variant {index}: forward, backward, clip, step, then the schedule.\"\"\"
    model.train()
    total = 0.0
    for batch, (inputs, targets) in enumerate(loader):
        optimizer.zero_grad(set_to_none=True)
        outputs = model(inputs.to("cuda", non_blocking=True))
        loss = torch.nn.functional.cross_entropy(outputs, targets.to("cuda"))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        optimizer.step()
        scheduler.step()
        total += loss.item()
        if batch % log_every == 0:
            print(f"variant {index}: batch {{batch}} loss {{total / (batch + 1):.4f}}")
    return total
"""


def _tree(tmp_path: Path, names: list[str]) -> None:
    for name in names:
        (tmp_path / name).write_text(CLIP_AFTER_STEP)


def _check(tmp_path: Path, jobs: int = 2, limits: Limits = engine.DEFAULT_LIMITS,
           cache: Cache | None = None) -> list[Finding]:
    os.chdir(tmp_path)
    return engine.check(["."], Resolver(Overrides()), jobs=jobs, cache=cache, limits=limits).findings


def _places(findings: list[Finding]) -> list[tuple[str, str]]:
    return [(f.path, f.code) for f in findings]


def _misbehaving(monkeypatch: pytest.MonkeyPatch, name: str, misbehave: object) -> None:
    """Makes the analysis of the file called ``name`` misbehave, in the forked workers too."""
    real = engine.analyse_source

    def analyse(source: str, shown: str, *args: object, **kwargs: object) -> list[Finding]:
        if shown.endswith(name):
            misbehave()  # type: ignore[operator]
        return real(source, shown, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(engine, "analyse_source", analyse)


@pytest.fixture(autouse=True)
def _keep_cwd() -> object:
    here = os.getcwd()
    yield
    os.chdir(here)


def test_a_native_crash_is_one_cc000_and_the_run_goes_on(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    _tree(tmp_path, ["a.py", "crash.py", "z.py"])
    def crash() -> None:
        faulthandler.disable()  # pytest's handler would print the worker's stack
        os.kill(os.getpid(), signal.SIGSEGV)

    _misbehaving(monkeypatch, "crash.py", crash)
    findings = _check(tmp_path)
    assert _places(findings) == [("./a.py", "CC102"), ("./crash.py", "CC000"), ("./z.py", "CC102")]
    assert findings[1].message == "the analysis crashed (SIGSEGV)"


def test_a_hang_is_stopped_at_its_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _tree(tmp_path, ["a.py", "hang.py", "z.py"])
    _misbehaving(monkeypatch, "hang.py", lambda: time.sleep(600))
    started = time.monotonic()
    findings = _check(tmp_path, limits=Limits(seconds=2, seconds_per_mib=0))
    assert time.monotonic() - started < 60
    assert _places(findings) == [("./a.py", "CC102"), ("./hang.py", "CC000"), ("./z.py", "CC102")]
    assert findings[1].message == "the analysis took longer than its limit of 2 s"


def test_a_memory_blow_up_is_stopped_at_its_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _tree(tmp_path, ["a.py", "big.py", "z.py"])
    _misbehaving(monkeypatch, "big.py", lambda: bytearray(8 << 30))
    findings = _check(tmp_path, jobs=1, limits=Limits(memory_mib=1024, memory_per_mib=0))
    assert _places(findings) == [("./a.py", "CC102"), ("./big.py", "CC000"), ("./z.py", "CC102")]
    assert findings[1].message == "the analysis ran out of memory (limit 1024 MiB)"


def test_an_internal_error_names_itself(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _tree(tmp_path, ["a.py", "bug.py"])
    _misbehaving(monkeypatch, "bug.py", lambda: {}["missing"])
    findings = _check(tmp_path, jobs=1)
    assert _places(findings) == [("./a.py", "CC102"), ("./bug.py", "CC000")]
    assert findings[1].message.startswith("internal error in clipcheck (KeyError: 'missing', at ")


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "clipcheck", "check", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, check=False, timeout=600)


def test_output_is_the_same_whatever_the_number_of_workers(tmp_path: Path) -> None:
    outputs = [_cli("--no-cache", "--jobs", jobs, "--output-format", "json", str(FIXTURES), cwd=tmp_path)
               for jobs in ("1", "2", "5")]
    assert outputs[0].stdout and all(o.stdout == outputs[0].stdout for o in outputs)
    assert all(o.returncode == outputs[0].returncode for o in outputs)


def test_a_five_megabyte_file_is_analysed(tmp_path: Path) -> None:
    """Generated training code with one mistake at its very end is analysed, not skipped."""
    functions = ["import torch\n"]
    while sum(map(len, functions)) < 5 << 20:
        functions.append(GENERATED.format(index=len(functions)))
    text = "".join(functions) + "\n\n" + CLIP_AFTER_STEP.split("\n\n\n")[1]
    (tmp_path / "generated.py").write_text(text)
    (tmp_path / "small.py").write_text(CLIP_AFTER_STEP)
    findings = json.loads(_cli("--no-cache", "--output-format", "json", ".", cwd=tmp_path).stdout)
    assert [(f["path"], f["code"], f["line"]) for f in findings] == [
        ("./generated.py", "CC102", text.count("\n")), ("./small.py", "CC102", 10)]


def test_the_cache_gives_the_same_findings_and_is_never_stale(tmp_path: Path) -> None:
    _tree(tmp_path, ["a.py", "b.py"])
    (tmp_path / "c.py").write_text("def broken(:\n")
    cold = _cli("--output-format", "json", ".", cwd=tmp_path)
    assert (tmp_path / FOLDER / ".gitignore").is_file()
    warm = _cli("--output-format", "json", ".", cwd=tmp_path)
    assert cold.stdout == warm.stdout and cold.returncode == warm.returncode == 2
    (tmp_path / "a.py").write_text(CLIP_AFTER_STEP.replace(
        "        optimizer.step()\n        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)\n",
        "        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)\n        optimizer.step()\n"))
    changed = json.loads(_cli("--output-format", "json", ".", cwd=tmp_path).stdout)
    assert [(f["path"], f["code"]) for f in changed] == [("./b.py", "CC102"), ("./c.py", "CC000")]
    ignored = json.loads(_cli("--output-format", "json", "--ignore", "CC102", ".", cwd=tmp_path).stdout)
    assert [(f["path"], f["code"]) for f in ignored] == [("./c.py", "CC000")]


def test_no_cache_writes_nothing_and_a_corrupt_entry_is_a_miss(tmp_path: Path) -> None:
    _tree(tmp_path, ["a.py"])
    _cli("--no-cache", ".", cwd=tmp_path)
    assert not (tmp_path / FOLDER).exists()
    first = _cli("--output-format", "json", ".", cwd=tmp_path)
    for entry in (tmp_path / FOLDER).rglob("*"):
        if entry.is_file() and entry.parent.parent.parent.name == FOLDER:
            entry.write_text("{not json")
    again = _cli("--output-format", "json", ".", cwd=tmp_path)
    assert again.stdout == first.stdout


def test_concurrent_runs_share_the_cache_safely(tmp_path: Path) -> None:
    _tree(tmp_path, [f"m{i}.py" for i in range(40)])
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    runs = [subprocess.Popen([sys.executable, "-m", "clipcheck", "check", "--output-format", "json", "."],
                             cwd=tmp_path, env=env, stdout=subprocess.PIPE, text=True) for _ in range(3)]
    outputs = [run.communicate(timeout=300)[0] for run in runs]
    assert all(len(json.loads(o)) == 40 for o in outputs)
    assert not [p for p in (tmp_path / FOLDER).rglob("*.tmp")]
    assert _cli("--output-format", "json", ".", cwd=tmp_path).stdout == outputs[0]


def test_an_entry_with_wrong_types_is_a_miss(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    good = Finding("a.py", 3, 1, 3, 9, "CC102", "clip-after-step", "message")
    cache.put("ab" * 20, [good], {None: ["x"]})
    assert cache.get("ab" * 20) == ([good], {None: ["x"]})
    entry = cache.folder / "ab" / ("ab" * 20)
    entry.write_text(entry.read_text().replace('"line": 3', '"line": "3"'))
    assert cache.get("ab" * 20) is None
    entry.write_text("[" * 100_000 + "]" * 100_000)
    assert cache.get("ab" * 20) is None


@pytest.mark.parametrize("limit", ["inf", "nan", "1e10", "0"])
def test_an_impossible_timeout_is_a_usage_error(tmp_path: Path, limit: str) -> None:
    _tree(tmp_path, ["a.py"])
    result = _cli("--timeout", limit, ".", cwd=tmp_path)
    assert result.returncode == 2 and "--timeout" in result.stderr and "Traceback" not in result.stderr


# -- progress and Ctrl-C ---------------------------------------------------------------------------

def slow_tree(folder: Path, files: int) -> None:
    """Files of fifty training functions each: about half a second apiece to analyse here."""
    for number in range(files):
        (folder / f"train_{number}.py").write_text(
            "import torch\n" + "".join(GENERATED.format(index=index) for index in range(50)))


def _double(number: int) -> int:
    return 2 * number


def _nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def test_the_pool_tells_its_progress_after_each_input() -> None:
    """Of the inputs taken so far: the workers start before the last input is found."""
    told: list[tuple[int, int]] = []
    results = Pool(_double, 2, Limits()).map(iter([1, 2, 3]), lambda done, total: told.append((done, total)))
    assert results == [2, 4, 6]
    assert [done for done, _ in told] == [1, 2, 3]
    assert all(done <= total <= later for (done, total), (_, later) in itertools.pairwise(told))
    assert told[-1] == (3, 3)


def test_progress_counts_the_cached_files_as_done(tmp_path: Path) -> None:
    _tree(tmp_path, ["a.py", "b.py", "c.py"])
    os.chdir(tmp_path)
    cache = Cache(tmp_path)
    engine.check(["."], Resolver(Overrides()), jobs=1, cache=cache)
    (tmp_path / "b.py").write_text(CLIP_AFTER_STEP + "\n")
    told: list[tuple[int, int]] = []
    engine.check(["."], Resolver(Overrides()), jobs=1, cache=cache,
                 progress=lambda done, total: told.append((done, total)))
    assert told == [(3, 3)]  # two from the cache, then the one analysed


def test_an_interrupted_pool_leaves_no_worker_behind() -> None:
    def interrupt(_done: int, _total: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Pool(_nap, 2, Limits()).map([0.0, 60.0, 60.0, 60.0], interrupt)  # the first goes first
    assert _children(os.getpid()) == []


def _children(parent: int) -> list[int]:
    """The processes whose parent is ``parent``, from Linux's /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split() if entry.name.isdigit() else []
        except OSError:  # gone meanwhile
            continue
        if fields and int(fields[1]) == parent:
            found.append(int(entry.name))
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="finds the workers in /proc")
def test_ctrl_c_exits_130_and_stops_every_worker(tmp_path: Path) -> None:
    """As a terminal sends it: SIGINT to the whole process group, workers included, in the
    middle of a run."""
    slow_tree(tmp_path, 10)
    run = subprocess.Popen([*clipcheck_command(), "check", "--no-cache", "--jobs", "2", "."], cwd=tmp_path,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 60
    while len(workers := _children(run.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(workers) == 2
    os.killpg(run.pid, signal.SIGINT)
    out, err = run.communicate(timeout=60)
    assert (run.returncode, out, err) == (130, "", "clipcheck: interrupted.\n")
    assert [pid for pid in workers if Path(f"/proc/{pid}").exists()] == []


def test_workers_reaped_by_the_system_still_give_their_results() -> None:
    """With SIGCHLD ignored (a parent may set it so), the system reaps the workers itself."""
    script = ("import signal\nsignal.signal(signal.SIGCHLD, signal.SIG_IGN)\n"
              "from clipcheck.workers import Limits, Pool\n"
              "print(Pool(abs, 2, Limits()).map([-1, -2, -3]))\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                            check=False)
    assert (result.returncode, result.stdout, result.stderr) == (0, "[1, 2, 3]\n", "")


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts descriptors in /proc")
def test_workers_that_cannot_start_leave_no_descriptor_open(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse() -> int:
        raise BlockingIOError(11, "Resource temporarily unavailable")

    before = len(os.listdir("/proc/self/fd"))
    monkeypatch.setattr(os, "fork", refuse)
    results = Pool(_double, 2, Limits()).map([1, 2])
    assert [getattr(r, "reason", r) for r in results] == ["no worker process could be started"] * 2
    assert len(os.listdir("/proc/self/fd")) == before
