"""``clipcheck run script.py``: the global mode, without editing the script."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch")

from conftest import run_clipcheck

SCRIPT = """import sys
import torch

torch.manual_seed(0)
model = torch.nn.Linear(4, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
x, y = torch.randn(8, 4), torch.randn(8, 1)
for _ in range(int(sys.argv[1])):
    loss = torch.nn.functional.mse_loss(model(x), y)
    loss.backward()
    {mistake}
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    {zero}
"""


def test_run_reports_the_mistake_with_its_line(tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text(SCRIPT.format(mistake="opt.zero_grad()", zero="pass"))
    result = run_clipcheck("run", "--max-norm", "1.0", str(script), "4", cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert "[zero-grad-before-step]" in result.stderr
    assert f"{script}:11" in result.stderr


def test_run_passes_a_correct_script_its_arguments(tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text(SCRIPT.format(mistake="pass", zero="opt.zero_grad()"))
    result = run_clipcheck("run", "--max-norm", "1.0", "--check-every", "1", str(script), "5", cwd=tmp_path)
    assert result.returncode == 0, result.stderr


def test_a_script_that_exits_zero_is_still_checked(tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    # The last step is unclipped; only the final check, which must still run, can say so.
    script.write_text(
        "import sys\nimport torch\n\nmodel = torch.nn.Linear(4, 1)\n"
        "opt = torch.optim.SGD(model.parameters(), lr=0.1)\nx, y = torch.randn(8, 4), torch.randn(8, 1)\n"
        "for _ in range(2):\n    opt.zero_grad()\n"
        "    torch.nn.functional.mse_loss(model(x), y).backward()\n    opt.step()\nsys.exit(0)\n")
    result = run_clipcheck("run", "--max-norm", "1.0", str(script), cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert "[missing-clip]" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_run_without_steps_says_nothing_was_checked(tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text(SCRIPT.format(mistake="pass", zero="opt.zero_grad()"))
    result = run_clipcheck("run", str(script), "0", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "nothing was checked" in result.stderr


def test_a_failing_script_keeps_its_exit_status(tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text("import sys\nsys.exit(3)\n")
    result = run_clipcheck("run", str(script), cwd=tmp_path)
    assert result.returncode == 3, result.stderr


def test_a_script_that_raises_shows_its_own_traceback(tmp_path: Path) -> None:
    """As under ``python train.py``: the traceback starts at the script, with no frame of
    clipcheck's runner, runpy or click that would read as clipcheck failing."""
    script = tmp_path / "train.py"
    script.write_text("def load():\n    raise FileNotFoundError('data/train.bin')\n\n\nload()\n")
    result = run_clipcheck("run", str(script), cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.splitlines()
    assert lines[0] == "Traceback (most recent call last):", result.stderr
    assert f'File "{script}", line 5, in <module>' in lines[1], result.stderr
    assert f'File "{script}", line 2, in load' in result.stderr
    assert lines[-1] == "FileNotFoundError: data/train.bin", result.stderr
    assert "clipcheck" not in result.stderr.replace(str(tmp_path), "") and "click" not in result.stderr


def test_a_script_with_a_syntax_error_is_reported_like_python_does(tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text("for step in range(3)\n    pass\n")
    result = run_clipcheck("run", str(script), cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert f'File "{script}", line 1' in result.stderr
    assert result.stderr.splitlines()[-1].startswith("SyntaxError:"), result.stderr
    assert "runpy" not in result.stderr and "click" not in result.stderr
