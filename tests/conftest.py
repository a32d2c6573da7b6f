"""Shared helpers: the tests run the installed ``clipcheck`` command, as users do."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"


def clipcheck_command() -> list[str]:
    exe = shutil.which("clipcheck", path=str(Path(sys.executable).parent)) or shutil.which("clipcheck")
    if exe is None:
        pytest.fail("the clipcheck command is not installed; run `pip install -e .[dev]`")
    return [exe]


def run_clipcheck(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*clipcheck_command(), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, check=False, stdin=subprocess.DEVNULL)


def run_json(*paths: str, cwd: Path = ROOT) -> tuple[int, list[dict[str, object]]]:
    result = run_clipcheck("check", "--output-format", "json", *paths, cwd=cwd)
    assert result.returncode in (0, 1, 2), result.stderr
    return result.returncode, json.loads(result.stdout)


def marked_line(path: Path, marker: str) -> str:
    """``file:line`` of the one line of ``path`` ending with ``# <- marker``: where a runtime
    error must point."""
    lines = path.read_text(encoding="utf-8").splitlines()
    numbers = [i for i, text in enumerate(lines, start=1) if text.endswith(f"# <- {marker}")]
    assert len(numbers) == 1, marker
    return f"{path}:{numbers[0]}"


# A training loop that zeroes between backward and step (CC104 on line 8).
BAD = """import torch


def train(model, loader, optimizer):
    for x, y in loader:
        loss = model(x).sum()
        loss.backward()
        optimizer.zero_grad()
        optimizer.step()
"""
