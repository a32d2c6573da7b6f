"""What the static pass costs next to bare parsing, every number measured in the same run.

    python bench/static_cost.py [TARGET] [--rounds N] [--single FILE]

TARGET defaults to the installed torch package's sources (several thousand files of real,
varied Python); its Python files are copied to a temporary folder first, so that no
``.gitignore`` around it (a virtual environment's) hides them, and everything runs on the copy.
clipcheck runs from this working tree (``PYTHONPATH`` is the repository root) with the same
interpreter, each time from a fresh temporary folder, so no results cache is found by accident.

Measured, each as a median over ``--rounds`` (default 3) unless said otherwise:

1. bare LibCST: ``libcst.parse_module`` of every file's text, serially, in a subprocess that
   reads the files inside the timed region (files that fail are counted and skipped); measured
   once, since it takes about 100 s on torch;
2. bare ``ast.parse`` of the same files, the same way;
3. clipcheck cold on all cores (``--no-cache``), and 4. cold serially (``--jobs 1``);
5. clipcheck warm on all cores: one run fills ``.clipcheck_cache``, the next ones are timed;
6. single-file latency: ``clipcheck check --no-cache FILE`` against ``python -c "import libcst"``,
   medians of 10 runs (FILE defaults to ``examples/train.py``);
7. whether a file without training code makes clipcheck import LibCST (``-X importtime``).

Peak memory is the largest resident set of any single process of a command's tree: each timed
command runs under a small launcher that reads ``RUSAGE_CHILDREN``, which on Linux is the
maximum over every descendant that was waited for (clipcheck joins its workers, so theirs
count). Progress goes to standard error, results to standard output.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SINGLE = ROOT / "examples" / "train.py"
SINGLE_RUNS = 10
PLAIN_SOURCE = "def add(a, b):\n    return a + b\n"

# Runs the command after its two file arguments (where its standard output and error go) and
# prints its wall seconds, exit status and the peak RSS of its process tree as JSON.
LAUNCHER = """\
import json, resource, subprocess, sys, time
with open(sys.argv[1], "wb") as out, open(sys.argv[2], "wb") as err:
    started = time.perf_counter()
    code = subprocess.run(sys.argv[3:], stdout=out, stderr=err, check=False).returncode
    seconds = time.perf_counter() - started
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"seconds": seconds, "code": code, "peak": peak}))
"""

# Parses every .py file under a folder with LibCST or ast, serially; prints the counts as JSON.
BARE_PARSE = """\
import json, sys, tokenize
from pathlib import Path
if sys.argv[1] == "libcst":
    import libcst
    parse = libcst.parse_module
else:
    import ast
    parse = ast.parse
files = failures = 0
for path in sorted(Path(sys.argv[2]).rglob("*.py")):
    files += 1
    try:
        with tokenize.open(path) as source:
            parse(source.read())
    except Exception:
        failures += 1
print(json.dumps({"files": files, "failures": failures}))
"""


@dataclass(frozen=True)
class Run:
    """One command's wall seconds, peak RSS (MiB) of any single process, and what it printed."""

    seconds: float
    peak_mib: float
    stdout: str
    stderr: str


def progress(message: str) -> None:
    print(f"[static_cost] {message}", file=sys.stderr, flush=True)


def default_target() -> Path:
    spec = importlib.util.find_spec("torch")
    if spec is None or spec.origin is None:
        raise SystemExit("torch is not installed here; pass a TARGET folder")
    return Path(spec.origin).parent


def _not_python(folder: str, names: list[str]) -> list[str]:
    return [n for n in names if not n.endswith(".py") and not (Path(folder) / n).is_dir()]


def _peak_mib(raw: int) -> float:
    # ru_maxrss is in KiB on Linux, in bytes on macOS.
    return raw / (1 << 20) if sys.platform == "darwin" else raw / 1024


def measure(command: Sequence[str], cwd: Path, scratch: Path, ok: Sequence[int] = (0,)) -> Run:
    """Runs ``command`` under the launcher in ``cwd``; stops the benchmark if it fails."""
    out, err = scratch / "stdout", scratch / "stderr"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    launcher = [sys.executable, "-c", LAUNCHER, str(out), str(err), *command]
    result = subprocess.run(launcher, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"the launcher failed:\n{result.stderr[-2000:]}")
    report = json.loads(result.stdout)
    stdout = out.read_text(errors="replace")
    stderr = err.read_text(errors="replace")
    if report["code"] not in ok:
        raise SystemExit(f"{shlex.join(command)} exited {report['code']}:\n{stderr[-2000:]}")
    return Run(report["seconds"], _peak_mib(report["peak"]), stdout, stderr)


# A target may hold files that do not parse (torch has one for Python 3.12 only): their CC000
# makes the exit status 2, and the run still counts.
CHECKED = (0, 1, 2)


def clipcheck(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "clipcheck", "check", *arguments]


def bare_parse(kind: str, target: Path, scratch: Path) -> tuple[Run, dict[str, int]]:
    run = measure([sys.executable, "-c", BARE_PARSE, kind, str(target)], scratch, scratch)
    counts: dict[str, int] = json.loads(run.stdout)
    return run, counts


def in_fresh_folder(scratch: Path, command: Sequence[str], ok: Sequence[int] = (0,)) -> Run:
    """``command`` from a new, empty working folder (no cache, no configuration)."""
    with tempfile.TemporaryDirectory(dir=scratch) as cwd:
        return measure(command, Path(cwd), scratch, ok)


def summary(runs: Sequence[Run]) -> tuple[float, float]:
    """The median seconds and the largest peak MiB of some runs of one command."""
    return statistics.median(r.seconds for r in runs), max(r.peak_mib for r in runs)


def findings_of(run: Run) -> str:
    findings = json.loads(run.stdout)
    unanalysable = sum(1 for f in findings if f["code"] == "CC000")
    return f"{len(findings)} findings, {unanalysable} CC000"


def imports_libcst(source: Path, scratch: Path) -> bool:
    """Whether checking ``source`` serially imports LibCST in any process (``-X importtime``
    output of the main process and of its forked worker both go to standard error)."""
    command = [sys.executable, "-X", "importtime", "-m", "clipcheck", "check", "--no-cache",
               "--jobs", "1", "--exit-zero", str(source)]
    run = in_fresh_folder(scratch, command)
    modules = (line.rsplit("|", 1)[-1].strip() for line in run.stderr.splitlines()
               if line.startswith("import time:"))
    return any(name == "libcst" or name.startswith("libcst.") for name in modules)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("target", nargs="?", type=Path, default=None,
                        help="folder of Python files (default: the installed torch package)")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each fast measure (median)")
    parser.add_argument("--single", type=Path, default=DEFAULT_SINGLE,
                        help="the small training file for single-file latency")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    original = (args.target or default_target()).resolve()
    single = args.single.resolve()
    # Bytecode for clipcheck as an installed package has it (pip compiles on install), so that
    # start-up is compared with ``import libcst`` on equal terms, whatever PYTHONDONTWRITEBYTECODE.
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "clipcheck")], check=True)
    if not original.is_dir():
        parser.error(f"{original} is not a folder")
    if not single.is_file():
        parser.error(f"{single} is not a file")
    invocation = shlex.join([sys.executable, *sys.argv])

    with tempfile.TemporaryDirectory(prefix="static_cost_", ignore_cleanup_errors=True) as folder:
        scratch = Path(folder)
        target = scratch / "target"
        progress(f"copying the .py files of {original} to {target}")
        shutil.copytree(original, target, ignore=_not_python)
        cold_command = clipcheck("--no-cache", "--output-format", "json", "--exit-zero", str(target))
        serial_command = clipcheck("--no-cache", "--jobs", "1", "--output-format", "json", "--exit-zero",
                                   str(target))
        warm_command = clipcheck("--output-format", "json", "--exit-zero", str(target))

        progress("bare LibCST parse of every file, serially (one run; about 100 s on torch)")
        libcst_run, libcst_counts = bare_parse("libcst", target, scratch)
        progress(f"  {libcst_run.seconds:.2f} s, {libcst_counts}")

        ast_counts: dict[str, int] = {}
        ast_runs: list[Run] = []
        cold_runs: list[Run] = []
        serial_runs: list[Run] = []
        warm_runs: list[Run] = []
        with tempfile.TemporaryDirectory(dir=scratch) as warm_folder:
            progress("warm-up: filling a results cache (cold, all cores, writing the cache)")
            filling = measure(warm_command, Path(warm_folder), scratch, CHECKED)
            progress(f"  {filling.seconds:.2f} s")
            for round_ in range(1, args.rounds + 1):
                progress(f"round {round_}/{args.rounds}: bare ast.parse")
                run, ast_counts = bare_parse("ast", target, scratch)
                ast_runs.append(run)
                progress(f"  {run.seconds:.2f} s, {ast_counts}")
                progress(f"round {round_}/{args.rounds}: clipcheck cold, all cores")
                cold_runs.append(in_fresh_folder(scratch, cold_command, CHECKED))
                progress(f"  {cold_runs[-1].seconds:.2f} s")
                progress(f"round {round_}/{args.rounds}: clipcheck cold, --jobs 1")
                serial_runs.append(in_fresh_folder(scratch, serial_command, CHECKED))
                progress(f"  {serial_runs[-1].seconds:.2f} s")
                progress(f"round {round_}/{args.rounds}: clipcheck warm, all cores")
                warm_runs.append(measure(warm_command, Path(warm_folder), scratch, CHECKED))
                progress(f"  {warm_runs[-1].seconds:.2f} s")

        single_command = clipcheck("--no-cache", str(single))
        import_command = [sys.executable, "-c", "import libcst"]
        single_runs: list[Run] = []
        import_runs: list[Run] = []
        progress(f"single file: {SINGLE_RUNS} runs each of clipcheck on {single} and of import libcst")
        for _ in range(SINGLE_RUNS):
            single_runs.append(in_fresh_folder(scratch, single_command, ok=(0, 1)))
            import_runs.append(in_fresh_folder(scratch, import_command))

        progress("does a plain file import LibCST? (-X importtime, --jobs 1)")
        plain = scratch / "plain.py"
        plain.write_text(PLAIN_SOURCE)
        plain_imports = imports_libcst(plain, scratch)
        training_imports = imports_libcst(single, scratch)  # the probe's control
        files = sum(1 for _ in target.rglob("*.py"))

    libcst_s, libcst_peak = libcst_run.seconds, libcst_run.peak_mib
    ast_s, ast_peak = summary(ast_runs)
    cold_s, cold_peak = summary(cold_runs)
    serial_s, serial_peak = summary(serial_runs)
    warm_s, warm_peak = summary(warm_runs)
    single_s, single_peak = summary(single_runs)
    import_s, import_peak = summary(import_runs)

    try:
        affinity = str(len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        affinity = "n/a"
    print(f"command: {invocation}")
    print(f"machine: {platform.platform()}, {platform.machine()}, os.cpu_count()={os.cpu_count()}, "
          f"usable cores={affinity}, Python {platform.python_version()} ({sys.executable})")
    print(f"target: {original} ({files} .py files, copied to a temporary folder)")
    print(f"LibCST failures: {libcst_counts['failures']}, ast failures: {ast_counts['failures']} "
          f"(skipped); clipcheck cold: {findings_of(cold_runs[-1])}")
    print(f"rounds: {args.rounds} (median) except bare LibCST (1 run); single file: median of {SINGLE_RUNS}")
    print()
    rows = [
        ("bare LibCST parse, serial (1 run)", libcst_s, libcst_peak),
        ("bare ast.parse, serial", ast_s, ast_peak),
        ("clipcheck cold, all cores", cold_s, cold_peak),
        ("clipcheck cold, --jobs 1", serial_s, serial_peak),
        ("clipcheck warm, all cores", warm_s, warm_peak),
        (f"clipcheck --no-cache {single.name}", single_s, single_peak),
        ('python -c "import libcst"', import_s, import_peak),
    ]
    width = max(len(name) for name, _, _ in rows)
    print(f"{'measure':<{width}}  {'seconds':>9}  {'peak MiB':>9}")
    for name, seconds, peak in rows:
        print(f"{name:<{width}}  {seconds:>9.3f}  {peak:>9.1f}")
    print()
    ratios = [
        ("cold / LibCST", cold_s / libcst_s),
        ("cold / ast", cold_s / ast_s),
        ("serial / LibCST", serial_s / libcst_s),
        ("warm / LibCST", warm_s / libcst_s),
        ("single file / import libcst", single_s / import_s),
    ]
    for name, ratio in ratios:
        print(f"{name:<{width}}  x{ratio:.2f}")
    print()
    print(f"plain file imports libcst: {'yes' if plain_imports else 'no'} "
          f"(control, {single.name}: {'yes' if training_imports else 'no'})")
    print(f"warm-up run that filled the cache: {filling.seconds:.3f} s")
    print()
    print("commands (PYTHONPATH=" + str(ROOT) + ", each from a fresh temporary folder; TARGET is the copy):")
    for command in (cold_command, serial_command, warm_command, single_command):
        print("  " + shlex.join(command).replace(str(target), "TARGET"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
