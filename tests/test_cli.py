"""The command line as users and CI see it: output shapes, exit codes, selection, bad input."""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import BAD, FIXTURES, clipcheck_command, run_clipcheck, run_json

from clipcheck import cli

CLEAN = """import torch


def train(model, loader, optimizer):
    for x, y in loader:
        optimizer.zero_grad()
        model(x).sum().backward()
        optimizer.step()
"""


def invoke(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[object, str]:
    """``clipcheck argv`` in this process: its exit status, and what it printed (both streams)."""
    with pytest.raises(SystemExit) as exited:
        cli.main(list(argv))
    printed = capsys.readouterr()
    return exited.value.code, printed.out + printed.err


def write(folder: Path, name: str, text: str | bytes) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def test_json_shape_and_exit_code(tmp_path: Path) -> None:
    write(tmp_path, "train.py", BAD)
    code, findings = run_json("train.py", cwd=tmp_path)
    assert code == 1
    assert findings == [{
        "path": "train.py", "line": 8, "column": 9, "end_line": 8, "end_column": 30,
        "code": "CC104", "rule": "zero-grad-before-step", "message": findings[0]["message"],
        "fix": None,
    }]
    assert "line 7" in findings[0]["message"] and "line 9" in findings[0]["message"]


def test_clean_exit_zero_and_text_summary(tmp_path: Path) -> None:
    write(tmp_path, "train.py", CLEAN)
    write(tmp_path, "eval.py", CLEAN)
    result = run_clipcheck("check", "train.py", cwd=tmp_path)
    assert (result.returncode, result.stdout) == (0, "All checks passed: 1 file.\n")
    assert run_clipcheck("check", cwd=tmp_path).stdout == "All checks passed: 2 files.\n"


def test_text_output_points_at_the_call(tmp_path: Path) -> None:
    write(tmp_path, "train.py", BAD)
    result = run_clipcheck("check", "train.py", cwd=tmp_path)
    lines = result.stdout.splitlines()
    assert lines[0] == "train.py:8:9: CC104 zero-grad-before-step"
    assert lines[2].endswith("|         optimizer.zero_grad()")
    assert lines[3] == "       |         " + "^" * len("optimizer.zero_grad()")
    assert lines[-1] == "Found 1 problem (1 file checked)."


def test_recursion_sorting_and_relative_paths(tmp_path: Path) -> None:
    write(tmp_path, "b/train.py", BAD)
    write(tmp_path, "a/train.py", BAD)
    write(tmp_path, ".hidden/train.py", BAD)
    write(tmp_path, "venv/lib/train.py", BAD)
    write(tmp_path, "build/train.py", BAD)
    code, findings = run_json(cwd=tmp_path)
    assert code == 1
    assert [f["path"] for f in findings] == ["a/train.py", "b/train.py"]


def test_gitignored_files_are_skipped(tmp_path: Path) -> None:
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    write(tmp_path, ".gitignore", "generated/\n")
    write(tmp_path, "generated/train.py", BAD)
    write(tmp_path, "train.py", BAD)
    _, findings = run_json(".", cwd=tmp_path)
    assert [f["path"] for f in findings] == ["./train.py"]  # the folder given, joined


def test_select_and_ignore_by_code_or_name(tmp_path: Path) -> None:
    write(tmp_path, "train.py", BAD)
    for option in (["--ignore", "CC104"], ["--ignore", "zero-grad-before-step"],
                   ["--select", "clip-after-step,CC101"]):
        result = run_clipcheck("check", *option, "train.py", cwd=tmp_path)
        assert result.returncode == 0, option
    result = run_clipcheck("check", "--select", "cc104", "train.py", cwd=tmp_path)
    assert result.returncode == 1


def test_unknown_rule_is_a_usage_error_naming_its_flag(tmp_path: Path) -> None:
    write(tmp_path, "train.py", CLEAN)
    write(tmp_path, "pyproject.toml", '[tool.clipcheck]\nselect = ["CC1"]\n')
    for flag in ("--select", "--extend-select", "--ignore"):
        result = run_clipcheck("check", flag, "no-such-rule", "--config", "pyproject.toml", "train.py",
                               cwd=tmp_path)
        assert result.returncode == 2
        assert f"unknown rule 'no-such-rule' ({flag})" in result.stderr, flag
        assert "pyproject.toml" not in result.stderr  # the flag's mistake, not the file's
    typo = run_clipcheck("check", "--select", "clip-befor-backward", "train.py", cwd=tmp_path)
    assert "did you mean 'clip-before-backward'?" in typo.stderr


def test_a_missing_path_is_cc000_and_the_others_are_still_checked(tmp_path: Path) -> None:
    write(tmp_path, "train.py", BAD)
    code, findings = run_json("nope.py", "./train.py", "train.py", cwd=tmp_path)
    assert code == 2
    assert [(f["path"], f["code"]) for f in findings] == [("./train.py", "CC104"), ("nope.py", "CC000")]
    assert "no such file or directory" in findings[1]["message"]


def test_bad_files_are_reported_and_the_rest_still_checked(tmp_path: Path) -> None:
    write(tmp_path, "a_syntax.py", "def train(:\n    loss.backward()\n")
    write(tmp_path, "a_untrained.py", "def helper(:\n    pass\n")
    write(tmp_path, "b_latin1.py", "# caf\xe9\nloss.backward()\n".encode("latin-1"))
    write(tmp_path, "c_train.py", BAD)
    code, findings = run_json(cwd=tmp_path)
    assert code == 2
    summary = [(f["path"], f["code"], f["rule"]) for f in findings]
    assert summary == [
        ("a_syntax.py", "CC000", "unanalysable-file"),
        ("a_untrained.py", "CC000", "unanalysable-file"),
        ("b_latin1.py", "CC000", "unanalysable-file"),
        ("c_train.py", "CC104", "zero-grad-before-step"),
    ]
    assert "syntax error" in findings[0]["message"]
    assert "not UTF-8" in findings[2]["message"]
    text = run_clipcheck("check", cwd=tmp_path)
    assert text.returncode == 2
    assert text.stdout.endswith("Found 1 problem and 3 files that could not be analysed (4 files checked).\n")


def test_the_checked_code_is_never_imported_or_run(tmp_path: Path) -> None:
    marker = tmp_path / "executed"
    write(tmp_path, "train.py", f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n" + BAD)
    write(tmp_path, "torch.py", f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n")
    code, findings = run_json("train.py", cwd=tmp_path)
    assert code == 1 and findings
    assert not marker.exists()


def test_static_pass_does_not_import_torch() -> None:
    script = ("import sys, clipcheck.cli, clipcheck.engine\n"
              "from clipcheck.engine import analyse_source\n"
              f"analyse_source({BAD!r}, 'x.py')\n"
              "assert 'torch' not in sys.modules, 'torch was imported'\n")
    subprocess.run([__import__("sys").executable, "-c", script], check=True)


def test_rules_command_lists_and_shows_pages() -> None:
    listing = run_clipcheck("rules")
    assert listing.returncode == 0
    assert "CC101  clip-before-backward" in listing.stdout
    page = run_clipcheck("rules", "CC105")
    assert page.stdout.startswith("# CC105 missing-zero-grad")


def test_fixture_tree_as_ci_sees_it() -> None:
    code, findings = run_json(str(FIXTURES))
    assert code == 1
    assert all(set(f) == {"path", "line", "column", "end_line", "end_column", "code", "rule",
                          "message", "fix"} for f in findings)
    assert findings == sorted(findings, key=lambda f: (f["path"], f["line"], f["column"]))
    json.dumps(findings)


def test_a_stub_is_held_to_the_parser_only(tmp_path: Path) -> None:
    """A ``.pyi`` file is never run: a type checker only parses it, and so does clipcheck; the
    same text in a ``.py`` file is a syntax error Python raises before running it."""
    write(tmp_path, "api.pyi", "def f() -> int: ...\nreturn\n")
    write(tmp_path, "api.py", "def f() -> int: ...\nreturn\n")
    code, findings = run_json(cwd=tmp_path)
    assert code == 2
    assert [(f["path"], f["code"], f["line"], f["message"]) for f in findings] == [
        ("api.py", "CC000", 2, "syntax error: 'return' outside function")]


def test_long_chains_of_branches_and_helpers_stay_linear(tmp_path: Path) -> None:
    """Joins must not multiply paths: 200 one-armed ifs and a deep helper chain."""
    ifs = "".join(f"        if x > {i}:\n            pass\n" for i in range(200))
    helpers = "".join(f"def h{i}(o):\n    h{i + 1}(o)\n\n\n" for i in range(30))
    helpers += "def h30(o):\n    o.step()\n"
    source = BAD.replace("        loss.backward()\n", "        loss.backward()\n" + ifs) + "\n\n" + helpers
    write(tmp_path, "train.py", source)
    code, findings = run_json("train.py", cwd=tmp_path)
    assert code == 1
    assert [f["rule"] for f in findings] == ["zero-grad-before-step"]


def test_many_uncertain_events_in_one_loop_stay_bounded(tmp_path: Path) -> None:
    """Weak updates multiply states; widening must keep a long loop of them analysable."""
    body = "".join(
        f"    out{i}.sum().backward()\n    part{i}.zero_grad()\n"
        f"    torch.nn.utils.clip_grad_norm_(head{i}.parameters(), 1.0)\n"
        for i in range(150)
    )
    source = ("import torch\n\nfirst = build_optimizer()\nsecond = build_optimizer()\n"
              "for batch in loader:\n" + body + "    first.step()\n    second.step()\n")
    write(tmp_path, "train.py", source)
    code, findings = run_json("train.py", cwd=tmp_path)
    assert (code, findings) == (0, [])


def test_names_assigned_from_themselves_are_analysed(tmp_path: Path) -> None:
    """``params = list(params)`` and friends must not send name resolution round in circles."""
    source = ("import torch\n\n\ndef fit(model, params, loader, sync):\n"
              "    params = list(params)\n    params = tuple(params)\n"
              "    opt = torch.optim.SGD(params, lr=0.1)\n"
              "    for x in loader:\n        model(x).sum().backward()\n        sync(params)\n"
              "        opt.step()\n        opt.zero_grad()\n")
    write(tmp_path, "train.py", source)
    code, findings = run_json("train.py", cwd=tmp_path)
    assert (code, findings) == (0, [])


def test_many_flags_tested_twice_stay_bounded(tmp_path: Path) -> None:
    """Each flag tested twice around training events may double the paths a node tells apart;
    past a bound the analysis widens instead of growing with 2 ** flags, and the rest of the
    file is still checked."""
    body = "".join(
        f"        if flag{i}:\n            torch.nn.utils.clip_grad_norm_(head{i}.parameters(), 1.0)\n"
        for i in range(40)
    ) * 2
    source = ("import torch\n\n\ndef train(model, loader, opt, "
              + ", ".join(f"flag{i}" for i in range(40)) + "):\n    for x in loader:\n"
              "        opt.zero_grad()\n        model(x).sum().backward()\n" + body + "        opt.step()\n"
              + BAD.split("import torch\n", 1)[1])
    write(tmp_path, "train.py", source)
    code, findings = run_json("train.py", cwd=tmp_path)
    assert code == 1
    assert [f["rule"] for f in findings] == ["zero-grad-before-step"]


def test_helpers_calling_helpers_at_many_places_stay_bounded(tmp_path: Path) -> None:
    """Five levels of helpers, each calling the next at eight places, would expand 8 ** 5
    times; past a bound per helper its calls stay unexpanded and the file is still checked."""
    levels = "".join(
        f"def h{i}(optimizer, m, x):\n" + "".join(f"    if x[{j}]:\n        h{i + 1}(optimizer, m, x)\n"
                                                for j in range(8)) + "\n\n"
        for i in range(5))
    source = ("import torch\n\n\n" + levels + "def h5(optimizer, m, x):\n    optimizer.zero_grad()\n"
              "    m(x).backward()\n    optimizer.step()\n\n\ndef fit(model, opt, loader):\n"
              "    for b in loader:\n        h0(opt, model, b)\n" + BAD.split("import torch\n", 1)[1])
    write(tmp_path, "train.py", source)
    code, findings = run_json("train.py", cwd=tmp_path)
    assert code == 1
    assert [f["rule"] for f in findings] == ["zero-grad-before-step"]


def test_odd_but_valid_code_never_ends_in_a_traceback(tmp_path: Path) -> None:
    """A literal too large for a float, and a loop variable over optimizers reused inside."""
    huge = "1" + "0" * 400
    source = (f"import torch\n\nBIG = {huge}\n\n\ndef train(model, loader, opt_g, opt_d, n):\n"
              f"    for x in loader:\n        if n > {huge}:\n            pass\n"
              "        for opt in (opt_g, opt_d):\n            opt.zero_grad()\n"
              "            for opt in (opt_g, opt_d):\n                pass\n"
              "        model(x).sum().backward()\n        opt_g.step()\n        opt_d.step()\n")
    write(tmp_path, "train.py", source)
    result = run_clipcheck("check", "--output-format", "json", "train.py", cwd=tmp_path)
    assert "Traceback" not in result.stderr
    assert result.returncode == 0, result.stdout + result.stderr


def test_statistics_on_a_clean_tree_say_zero(tmp_path: Path) -> None:
    write(tmp_path, "train.py", CLEAN)
    result = run_clipcheck("check", "--statistics", "train.py", cwd=tmp_path)
    assert (result.returncode, result.stdout) == (0, "Found 0 problems (1 file checked).\n")


def test_ctrl_c_exits_130_and_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    """Not with a traceback, nor with status 1, the status of findings."""
    def interrupted(*_args: object, **_kwargs: object) -> None:
        raise KeyboardInterrupt

    import clipcheck.engine

    monkeypatch.setattr(clipcheck.engine, "check", interrupted)
    monkeypatch.chdir(tmp_path)
    assert invoke(capsys, "check", ".") == (130, "clipcheck: interrupted.\n")


def test_run_says_a_notebook_is_not_a_script(tmp_path: Path) -> None:
    write(tmp_path, "nb.ipynb", '{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}\n')
    result = run_clipcheck("run", "nb.ipynb", cwd=tmp_path)
    assert result.returncode == 2 and "NameError" not in result.stderr
    assert "nb.ipynb is a notebook, and `clipcheck run` runs a Python script" in result.stderr
    assert "clipcheck.runtime.guard(optimizer)" in result.stderr


class _Server(importlib.abc.MetaPathFinder):
    """Finds ``clipcheck.server`` in a file of the test's making."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def find_spec(self, name: str, *_: object) -> importlib.machinery.ModuleSpec | None:
        return importlib.util.spec_from_file_location(name, self.path) if name == "clipcheck.server" else None


@pytest.fixture
def server_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], None]]:
    """Makes ``clipcheck.server`` the given source for the test (and forgets it after)."""
    import clipcheck

    def install(source: str) -> None:
        write(tmp_path, "server.py", source)
        monkeypatch.setattr(sys, "meta_path", [_Server(tmp_path / "server.py"), *sys.meta_path])

    monkeypatch.delitem(sys.modules, "clipcheck.server", raising=False)
    monkeypatch.delattr(clipcheck, "server", raising=False)
    yield install
    sys.modules.pop("clipcheck.server", None)
    vars(clipcheck).pop("server", None)


def test_server_runs_serve(server_module: Callable[[str], None], capsys: pytest.CaptureFixture[str]) -> None:
    server_module("def serve():\n    print('serving')\n")
    assert invoke(capsys, "server") == (0, "serving\n")


def test_server_without_the_lsp_extra_says_how_to_install_it(server_module: Callable[[str], None],
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "pygls", None)  # import pygls: ModuleNotFoundError
    server_module("import pygls\n\ndef serve():\n    pass\n")
    code, printed = invoke(capsys, "server")
    assert code == 2 and printed.startswith("Error: ")
    assert "pygls is not installed here" in printed
    assert "pip install 'clipcheck[lsp]'" in printed and "usage:" not in printed


def test_server_lets_another_missing_module_show(server_module: Callable[[str], None]) -> None:
    server_module("import clipcheck_no_such_module\n")
    with pytest.raises(ModuleNotFoundError) as raised:
        cli.main(["server"])
    assert raised.value.name == "clipcheck_no_such_module"


def test_the_linter_does_not_import_the_server() -> None:
    script = ("import sys, clipcheck.cli\n"
              "assert not any(m.startswith(('clipcheck.server', 'pygls')) for m in sys.modules)\n")
    subprocess.run([sys.executable, "-c", script], check=True)


def test_a_reader_that_goes_away_ends_the_run_quietly() -> None:
    """``clipcheck rules | head -1``: no traceback when the pipe closes."""
    process = subprocess.Popen([*clipcheck_command(), "rules", "--output-format", "json"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # no reader from the start: the first write fails
    assert (process.wait(timeout=60), process.stderr.read()) == (1, "")


def test_options_are_never_abbreviated(tmp_path: Path) -> None:
    """``--fi`` is a typo, not ``--fix``: it must not rewrite the file."""
    path = write(tmp_path, "train.py", BAD)
    result = run_clipcheck("check", "--fi", "--unsafe-fixes", "train.py", cwd=tmp_path)
    assert result.returncode == 2 and "unrecognized arguments: --fi" in result.stderr
    assert path.read_text() == BAD


def test_paths_may_follow_options(tmp_path: Path) -> None:
    write(tmp_path, "a.py", BAD)
    write(tmp_path, "b.py", BAD)
    code, findings = run_json("a.py", "--no-cache", "b.py", cwd=tmp_path)
    assert code == 1 and {f["path"] for f in findings} == {"a.py", "b.py"}


def test_run_passes_every_word_after_the_script_through(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    write(tmp_path, "show.py", "import sys\nprint(sys.argv[1:])\n")
    result = run_clipcheck("run", "--max-norm", "1", "show.py", "--max-norm", "2", "--", "-x", cwd=tmp_path)
    assert result.stdout == "['--max-norm', '2', '--', '-x']\n", result.stderr


@pytest.mark.parametrize("argv", [("-h",), ("-h", "check"), ("chek",)])
def test_the_commands_are_all_listed_where_none_is_given_first(argv: tuple[str, ...]) -> None:
    """Only the command given is built (``check`` at every commit); help before a command, or
    a command that does not exist, lists every one."""
    result = run_clipcheck(*argv)
    listing = result.stdout + result.stderr
    assert all(name in listing for name in ("check", "rules", "explain", "run", "server")), listing


def test_help_is_as_wide_as_the_terminal_says() -> None:
    """The parser is built at a fixed width; the terminal is measured when help is printed."""
    narrow = subprocess.run([*clipcheck_command(), "check", "--help"], capture_output=True, text=True,
                            timeout=300, check=False, env={**os.environ, "COLUMNS": "50"})
    wide = subprocess.run([*clipcheck_command(), "check", "--help"], capture_output=True, text=True,
                          timeout=300, check=False, env={**os.environ, "COLUMNS": "200"})
    assert narrow.returncode == wide.returncode == 0
    assert len(narrow.stdout.splitlines()) > 1.5 * len(wide.stdout.splitlines())
    assert max(len(line) for line in wide.stdout.splitlines()) > 100  # options' help on one line
