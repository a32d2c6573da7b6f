"""The README's commands and CI workflows, as printed: the set-up names files that exist and
lints the example as it says, the usage lines run, and each workflow is complete and fails on
exit 2 (its clipcheck step run under ``bash -e``, as GitHub runs it)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import ROOT

README = ROOT / "README.md"
BIN = Path(sys.executable).parent  # the environment the tests run in, as `.venv/bin` is to users
EXAMPLE = ROOT / "examples" / "train.py"
# How GitHub runs a `run:` step on Linux: without `shell:`, and with `shell: bash`.
GITHUB_SHELLS = (("bash", "-e"), ("bash", "--noprofile", "--norc", "-eo", "pipefail"))


def section(heading: str) -> str:
    """The README's text under ``heading`` (``## Title``, exactly), up to the next heading of
    the same or a higher level; lines inside code blocks are never headings."""
    level = len(heading) - len(heading.lstrip("#"))
    lines = README.read_text(encoding="utf-8").splitlines(keepends=True)
    start = lines.index(heading + "\n") + 1
    fenced_block = False
    for end in range(start, len(lines)):
        fenced_block ^= lines[end].startswith("```")
        marks = len(lines[end]) - len(lines[end].lstrip("#"))
        if not fenced_block and 0 < marks <= level and lines[end][marks] == " ":
            return "".join(lines[start:end])
    return "".join(lines[start:])


def fenced(text: str, language: str) -> list[str]:
    """The bodies of the code blocks of ``language`` in ``text``, in order."""
    return re.findall(rf"^```{language}\n(.*?)^```$", text, flags=re.MULTILINE | re.DOTALL)


def environment_active() -> dict[str, str]:
    """The environment variables of a shell in which the test environment is activated."""
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


# --- the first two commands and the usage lines ----------------------------------------------

SETUP, TESTS = fenced(section("## Two commands"), "sh")[:2]


def commands(block: str) -> list[list[str]]:
    """The block's commands (joined by ``&&`` or on lines of their own), split into words."""
    lines = [shlex.split(line, comments=True) for line in block.splitlines()]
    return [command for words in lines if words for command in split_on(words, "&&")]


def split_on(words: list[str], separator: str) -> list[list[str]]:
    parts: list[list[str]] = [[]]
    for word in words:
        if word == separator:
            parts.append([])
        else:
            parts[-1].append(word)
    return parts


@pytest.mark.parametrize("block", [SETUP, TESTS], ids=["set-up and lint", "test suite"])
def test_the_first_commands_name_what_exists(block: str) -> None:
    for command in commands(block):
        for word in command:
            if word.startswith(".venv/bin/"):  # made by the set-up, as in the tests' environment
                assert (BIN / word.removeprefix(".venv/bin/")).exists(), command
            elif word == "." or "/" in word:
                assert (ROOT / word).exists(), f"{word} in {command}"


def test_the_first_command_lints_the_example_as_the_readme_says() -> None:
    claim = "the bundled example (it has three mistakes, so the exit status is 1)"
    assert claim in section("## Two commands")
    *_, lint = commands(SETUP)
    assert lint[:1] == [".venv/bin/clipcheck"]
    result = subprocess.run([str(BIN / "clipcheck"), *lint[1:]], cwd=ROOT, capture_output=True, text=True,
                            timeout=300, check=False)
    assert result.returncode == 1, result.stderr
    assert len(re.findall(r"^examples/train\.py:\d+:\d+: CC\d{3} ", result.stdout, re.MULTILINE)) == 3


def usage_lines() -> list[str]:
    """The lines of the Usage block, without their comments; ``[PATH]...`` given no path."""
    (block,) = fenced(section("## Usage"), "sh")
    return [re.sub(r"\s+#.*", "", line).replace(" [PATH]...", "") for line in block.splitlines()]


@pytest.mark.parametrize("line", usage_lines())
def test_a_usage_line_runs_as_printed(line: str, tmp_path: Path) -> None:
    for name in ("train.py", "src/train.py"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        shutil.copy(EXAMPLE, tmp_path / name)
    result = subprocess.run(["bash", "-c", line], cwd=tmp_path, env=environment_active(), capture_output=True,
                            text=True, timeout=300, check=False)
    assert result.returncode in (0, 1), result.stderr
    assert result.stdout


# --- the CI workflows --------------------------------------------------------------------------

WORKFLOWS = fenced(section("### Use in CI"), "yaml")
KINDS = ["code scanning", "annotations"]
SARIF_UPLOAD = "github/codeql-action/upload-sarif"


def workflow(text: str) -> dict[Any, Any]:
    """A workflow as GitHub reads it: YAML 1.1 reads a bare ``on`` key as True."""
    data = yaml.safe_load(text)
    if True in data:
        data["on"] = data.pop(True)
    return data


def jobs(text: str) -> list[dict[str, Any]]:
    """The workflow's jobs, each with the permissions in effect for it (its own, else the
    workflow's)."""
    data = workflow(text)
    return [{**job, "permissions": job.get("permissions", data.get("permissions"))}
            for job in data["jobs"].values()]


def uploads_sarif(job: dict[str, Any]) -> bool:
    return any(str(step.get("uses", "")).startswith(SARIF_UPLOAD) for step in job["steps"])


def clipcheck_steps(job: dict[str, Any]) -> list[str]:
    return [step["run"] for step in job["steps"] if str(step.get("run", "")).startswith("clipcheck ")]


def test_the_readme_shows_both_workflows() -> None:
    """The SARIF upload first, then the annotations (the order of ``KINDS``)."""
    assert [uploads_sarif(job) for text in WORKFLOWS for job in jobs(text)] == [True, False]


@pytest.mark.parametrize("text", WORKFLOWS, ids=KINDS)
def test_a_workflow_has_the_keys_github_requires(text: str) -> None:
    data = workflow(text)
    assert data["name"] and data["on"]
    assert data["jobs"]
    for job in jobs(text):
        assert job["runs-on"]
        assert job["steps"]
        for step in job["steps"]:
            assert ("uses" in step) != ("run" in step), step
        assert len(clipcheck_steps(job)) == 1
        assert job["permissions"]["contents"] == "read"


@pytest.mark.parametrize("text", WORKFLOWS[:1], ids=KINDS[:1])
def test_the_sarif_workflow_uploads_what_clipcheck_wrote(text: str) -> None:
    (job,) = jobs(text)
    assert job["permissions"]["security-events"] == "write"
    (upload,) = [step for step in job["steps"] if str(step.get("uses", "")).startswith(SARIF_UPLOAD)]
    assert "if" not in upload, "the upload must be skipped when clipcheck's step fails"
    (run,) = clipcheck_steps(job)
    assert run.endswith(f"> {upload['with']['sarif_file']} || [ $? -eq 1 ]")


def fake_clipcheck(folder: Path, status: int) -> Path:
    """A new ``folder`` holding a ``clipcheck`` that prints a line and exits with ``status``."""
    folder.mkdir()
    fake = folder / "clipcheck"
    fake.write_text(f"#!/bin/sh\necho '{{\"fake\": {status}}}'\nexit {status}\n")
    fake.chmod(0o755)
    return folder


def run_step(script: str, shell: tuple[str, ...], folder: Path,
             path: str) -> subprocess.CompletedProcess[str]:
    """``script`` as GitHub runs a step: written to a file, run by ``shell``, in the workspace."""
    (folder / "step.sh").write_text(script + "\n")
    return subprocess.run([*shell, "step.sh"], cwd=folder, env={**os.environ, "PATH": path},
                          capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.parametrize("shell", GITHUB_SHELLS, ids=" ".join)
@pytest.mark.parametrize("status", [0, 1, 2])
@pytest.mark.parametrize("text", WORKFLOWS, ids=KINDS)
def test_the_clipcheck_step_fails_the_job_as_it_should(text: str, status: int, shell: tuple[str, ...],
                                                       tmp_path: Path) -> None:
    (job,) = jobs(text)
    (run,) = clipcheck_steps(job)
    passes = {0, 1} if uploads_sarif(job) else {0}
    fake = fake_clipcheck(tmp_path / "bin", status)
    result = run_step(run, shell, tmp_path, f"{fake}{os.pathsep}{os.environ['PATH']}")
    assert (result.returncode == 0) == (status in passes), result
    if uploads_sarif(job):
        assert (tmp_path / "clipcheck.sarif").read_text() == f'{{"fake": {status}}}\n'


@pytest.mark.parametrize("text", WORKFLOWS, ids=KINDS)
def test_the_clipcheck_step_runs_the_real_clipcheck(text: str, tmp_path: Path) -> None:
    (job,) = jobs(text)
    (run,) = clipcheck_steps(job)
    shutil.copy(EXAMPLE, tmp_path / "train.py")
    result = run_step(run, GITHUB_SHELLS[0], tmp_path, environment_active()["PATH"])
    if uploads_sarif(job):
        assert result.returncode == 0, result.stderr
        sarif = json.loads((tmp_path / "clipcheck.sarif").read_text())
        assert len(sarif["runs"][0]["results"]) == 3
    else:
        assert result.returncode == 1, result.stderr
        assert result.stdout.count("::error file=train.py,") == 3
