"""The README's pre-commit snippets, exactly as printed, run by the real ``pre-commit`` (from
PyPI) in a temporary project.

The local hook runs the ``clipcheck`` of the environment the tests run in, put first on the
``PATH`` as activating it does. The remote form's placeholders are the only change made to it:
``repo`` becomes a local git repository holding this checkout's shipped files (so that the
working tree is what is tested) and ``rev`` that repository's commit, as a full SHA; pre-commit
installs the hook into an environment of its own, and it runs without the tests' environment on
the ``PATH``."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT
from test_cli import BAD, CLEAN, write
from test_readme import fenced, section

SHIPPED = ("clipcheck", "rules", "pyproject.toml", "README.md", ".pre-commit-hooks.yaml")
BIN = Path(sys.executable).parent
FINDING = "train.py:8:9: CC104 zero-grad-before-step"


def git(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``git`` in ``cwd`` (in ``env``, else this process's environment), as a user named t."""
    user = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
            "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
    return subprocess.run(["git", *args], cwd=cwd, env={**(env or os.environ), **user}, capture_output=True,
                          text=True, timeout=600, check=False)


def readme_snippets() -> dict[str, str]:
    """The README's pre-commit configurations, by form: ``local`` and ``remote``."""
    blocks = fenced(section("### Use in pre-commit"), "yaml")
    forms = {("local" if yaml.safe_load(b)["repos"][0]["repo"] == "local" else "remote"): b for b in blocks}
    assert len(blocks) == 2 and set(forms) == {"local", "remote"}, blocks
    return forms


def replace_value(text: str, key: str, value: str) -> str:
    """``text`` with the value of its one ``key:`` line replaced (the line's comment kept)."""
    replaced, count = re.subn(rf"^(\s*(?:- )?{key}: )\S+", rf"\g<1>{value}", text, flags=re.MULTILINE)
    assert count == 1, (key, text)
    return replaced


@pytest.fixture(scope="module")
def hook_repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A git repository of this checkout's shipped files, and its commit's full SHA."""
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
    return hook_repo, git(hook_repo, "rev-parse", "HEAD").stdout.strip()


@pytest.fixture(scope="module")
def pre_commit_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """pre-commit's cache, shared by the tests: the remote hook's environment is built once."""
    return tmp_path_factory.mktemp("pre-commit-home")


@pytest.fixture(params=["local", "remote"])
def project(request: pytest.FixtureRequest, tmp_path: Path, hook_repo: tuple[Path, str],
            pre_commit_home: Path) -> tuple[Path, dict[str, str]]:
    """A git project configured with one README snippet, and the environment to run pre-commit in."""
    config = readme_snippets()[request.param]
    path = os.environ.get("PATH", "")
    if request.param == "remote":
        config = replace_value(replace_value(config, "repo", str(hook_repo[0])), "rev", hook_repo[1])
        path = os.pathsep.join(p for p in path.split(os.pathsep) if Path(p) != BIN)
    else:
        path = f"{BIN}{os.pathsep}{path}"
    git(tmp_path, "init", "-q")
    write(tmp_path, ".pre-commit-config.yaml", config)
    git(tmp_path, "add", ".pre-commit-config.yaml")
    return tmp_path, {**os.environ, "PATH": path, "PRE_COMMIT_HOME": str(pre_commit_home)}


def pre_commit(project: tuple[Path, dict[str, str]], *args: str) -> subprocess.CompletedProcess[str]:
    folder, env = project
    return subprocess.run([str(BIN / "pre-commit"), *args], cwd=folder, env=env, capture_output=True,
                          text=True, timeout=600, check=False)


def add(project: tuple[Path, dict[str, str]], name: str, text: str) -> None:
    write(project[0], name, text)
    git(project[0], "add", name)


def test_the_snippets_use_the_shipped_hook() -> None:
    shipped = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())
    (local,) = yaml.safe_load(readme_snippets()["local"])["repos"][0]["hooks"]
    (remote,) = yaml.safe_load(readme_snippets()["remote"])["repos"][0]["hooks"]
    assert [remote] == [{"id": hook["id"]} for hook in shipped]
    same = ("id", "name", "entry", "types_or", "require_serial")
    assert [{k: local[k] for k in same}] == [{k: hook[k] for k in same} for hook in shipped]


def test_a_mistake_fails_the_run_with_the_finding(project: tuple[Path, dict[str, str]]) -> None:
    add(project, "train.py", BAD)
    result = pre_commit(project, "run", "--all-files")
    assert result.returncode == 1, result.stdout + result.stderr
    assert FINDING in result.stdout


def test_correct_code_and_other_files_pass(project: tuple[Path, dict[str, str]]) -> None:
    add(project, "good.py", CLEAN)
    add(project, "notes.txt", "optimizer.zero_grad() between backward and step\n")
    result = pre_commit(project, "run", "--all-files")
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"^clipcheck\.+Passed$", result.stdout, re.MULTILINE), result.stdout


def test_a_staged_mistake_blocks_the_commit(project: tuple[Path, dict[str, str]]) -> None:
    installed = pre_commit(project, "install")
    assert installed.returncode == 0, installed.stderr
    add(project, "train.py", BAD)
    result = git(project[0], "commit", "-m", "add train.py", env=project[1])
    assert result.returncode != 0
    assert FINDING in result.stdout + result.stderr
