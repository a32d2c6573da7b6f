"""The pre-commit hook as users install it: a real ``pre-commit`` (from PyPI) runs the hook of a
git repository holding this checkout's code, in a temporary project."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT
from test_cli import BAD, CLEAN, write

SHIPPED = ("clipcheck", "rules", "pyproject.toml", "README.md", ".pre-commit-hooks.yaml")


def git(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
    return subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600,
                          check=False)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pre_commit = shutil.which("pre-commit", path=str(Path(sys.executable).parent))
    if pre_commit is None:
        pytest.fail("pre-commit is not installed; run `pip install -e .[dev]`")
    hook_repo = tmp_path_factory.mktemp("hook")
    for name in SHIPPED:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, hook_repo / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, hook_repo / name)
    git(hook_repo, "init", "-q")
    git(hook_repo, "add", "-A")
    git(hook_repo, "commit", "-q", "-m", "clipcheck")
    rev = git(hook_repo, "rev-parse", "HEAD").stdout.strip()
    project = tmp_path_factory.mktemp("project")
    git(project, "init", "-q")
    write(project, ".pre-commit-config.yaml",
          f"repos:\n- repo: {hook_repo}\n  rev: {rev}\n  hooks:\n    - id: clipcheck\n")
    git(project, "add", ".pre-commit-config.yaml")
    os.environ.setdefault("PRE_COMMIT_HOME", str(tmp_path_factory.mktemp("pre-commit-home")))
    installed = subprocess.run([pre_commit, "install"], cwd=project, capture_output=True, text=True,
                               timeout=600, check=False)
    assert installed.returncode == 0, installed.stderr
    return project


def commit(project: Path, name: str, text: str) -> subprocess.CompletedProcess[str]:
    write(project, name, text)
    git(project, "add", name)
    return git(project, "commit", "-m", f"add {name}")


def test_a_staged_mistake_blocks_the_commit(project: Path) -> None:
    result = commit(project, "train.py", BAD)
    assert result.returncode != 0
    assert "train.py:8:9: CC104 zero-grad-before-step" in result.stdout + result.stderr
    git(project, "reset", "-q", "train.py")
    (project / "train.py").unlink()


def test_correct_code_and_other_files_pass(project: Path) -> None:
    assert commit(project, "good.py", CLEAN).returncode == 0
    assert commit(project, "notes.txt", "optimizer.zero_grad() between backward and step\n").returncode == 0
