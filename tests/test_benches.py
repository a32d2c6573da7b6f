"""The developer benches: the ecosystem check skips a repository without a snapshot and still
finishes, and the speed bench shows progress and removes its git worktree when killed."""

from __future__ import annotations

import importlib.util
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from conftest import ROOT
from test_cli import BAD, write
from test_pre_commit import git


def load_bench(name: str) -> ModuleType:
    """``bench/<name>.py`` as a module (the benches are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it runs
    spec.loader.exec_module(module)
    return module


def committed_repo(folder: Path, files: dict[str, str]) -> str:
    """A git repository at ``folder`` holding ``files`` in one commit; that commit's SHA."""
    folder.mkdir(parents=True, exist_ok=True)
    git(folder, "init", "-q")
    for name, text in files.items():
        write(folder, name, text)
    git(folder, "add", "-A")
    git(folder, "commit", "-q", "-m", "files")
    return git(folder, "rev-parse", "HEAD").stdout.strip()


def test_ecosystem_skips_a_repository_without_a_snapshot(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    ecosystem = load_bench("ecosystem")
    commit = committed_repo(tmp_path / "source", {"train.py": BAD})
    mirrors = tmp_path / "mirrors"
    snapshot = mirrors / "someone+present" / "repo"
    git(tmp_path, "clone", "-q", "--mirror", str(tmp_path / "source"), str(snapshot))
    repos = write(tmp_path, "repos.toml", f'[[repo]]\nname = "someone/absent"\ncommit = "{"0" * 40}"\n\n'
                                          f'[[repo]]\nname = "someone/present"\ncommit = "{commit}"\n')
    verdicts = write(tmp_path, "verdicts.csv",
                     "repo,path,line,rule,verdict,reason\n"
                     "someone/absent,a.py,3,missing-zero-grad,TRUE,kept while its snapshot is missing\n"
                     "someone/present,train.py,8,zero-grad-before-step,TRUE,zeroed before the step\n")
    monkeypatch.setattr(ecosystem, "REPOS_FILE", repos)
    monkeypatch.setattr(ecosystem, "VERDICTS_FILE", verdicts)
    before = verdicts.read_text()

    status = ecosystem.main(["--mirrors", str(mirrors), "--work", str(tmp_path / "work"), "--prune"])

    out = capsys.readouterr().out
    absent = mirrors / "someone+absent" / "repo"
    assert f"someone/absent skipped: no snapshot at {absent}" in " ".join(out.split())
    assert "1 true, 0 false, 0 untriaged, 0 gone; precision 100%" in out
    assert "1 of 2 repositories skipped (no snapshot): someone/absent" in out
    assert status == 1
    assert sorted(verdicts.read_text().splitlines()) == sorted(before.splitlines())


def progress_until(process: subprocess.Popen[str], last: str) -> list[str]:
    """The lines ``process`` writes on standard error, up to and including ``last``."""
    assert process.stderr is not None
    lines: list[str] = []
    while not lines or lines[-1] != last:
        lines.append(process.stderr.readline())
        assert lines[-1], f"standard error ended before {last!r}: {lines}"
    return lines


# A clipcheck that never finishes: the bench is killed while it runs.
SLEEPER = "import time\n\ntime.sleep(120)\n"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_static_speed_shows_progress_and_removes_its_worktree_when_killed(tmp_path: Path,
                                                                         signum: int) -> None:
    project = tmp_path / "project"
    (project / "bench").mkdir(parents=True)
    shutil.copy(ROOT / "bench" / "static_speed.py", project / "bench")
    committed_repo(project, {"clipcheck/__init__.py": "", "clipcheck/__main__.py": SLEEPER})
    write(tmp_path, "target/train.py", BAD)
    script = project / "bench" / "static_speed.py"
    command = [sys.executable, str(script), "--rounds", "1", str(tmp_path / "target")]
    bench = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = progress_until(bench, "round 1/1: baseline...\n")
        assert git(project, "worktree", "list").stdout.count("\n") == 2
        bench.send_signal(signum)
        assert bench.wait(timeout=30) == 128 + signum
    finally:
        bench.kill()
    assert git(project, "worktree", "list").stdout.count("\n") == 1
    assert lines[:2] == [f"copying the Python files of {tmp_path / 'target'}...\n", "checking out HEAD...\n"]


def test_the_long_units_bench_measures_every_shape_at_two_lengths(capsys: pytest.CaptureFixture[str]) -> None:
    long_units = load_bench("long_units")
    assert long_units.main(["--blocks", "2", "--rounds", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:2] == ["shape", "2"]
    assert [line.split("  ")[0] for line in out[1:-1]] == list(long_units.SHAPES)
    for shape in long_units.SHAPES:
        compile(long_units.source(shape, 3), shape, "exec")  # each shape is valid Python
