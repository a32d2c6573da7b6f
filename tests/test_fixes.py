"""Fixes: the edit each one makes, idempotence, a clean re-check for the rule fixed, comments
and permissions kept, safe versus unsafe, --diff writing nothing, and no partial write."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest
from conftest import ROOT, run_clipcheck, run_json
from test_cli import write

CLIP_FIRST = """import torch


def train(model, loader, optimizer):
    for x, y in loader:
        optimizer.zero_grad()
        # keep the norm in check
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # max norm from the paper
        loss = model(x).sum()
        loss.backward()
        optimizer.step()
"""
CLIP_FIRST_FIXED = """import torch


def train(model, loader, optimizer):
    for x, y in loader:
        optimizer.zero_grad()
        # keep the norm in check
        loss = model(x).sum()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # max norm from the paper
        optimizer.step()
"""
CLIP_LAST = """import torch


def train(model, loader, optimizer):
    for x, y in loader:
        optimizer.zero_grad()
        model(x).sum().backward()
        optimizer.step()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
"""
CLIP_LAST_FIXED = """import torch


def train(model, loader, optimizer):
    for x, y in loader:
        optimizer.zero_grad()
        model(x).sum().backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
"""
GENERATOR = """import torch


def build(model):
    params = model.parameters()  # trainable weights
    print(sum(p.numel() for p in params))
    return torch.optim.AdamW(params, lr=1e-3)
"""
GENERATOR_FIXED = GENERATOR.replace("params = model.parameters()", "params = list(model.parameters())")
# A form feed inside a line is no line break to Python, though ``str.splitlines`` breaks there.
FORM_FEED = ("# keep the norm in check", "# keep the norm\x0c in check")


@pytest.mark.parametrize(("before", "after", "rule"), [
    (CLIP_FIRST, CLIP_FIRST_FIXED, "CC101"), (CLIP_LAST, CLIP_LAST_FIXED, "CC102"),
    (GENERATOR, GENERATOR_FIXED, "CC302"),
    (CLIP_FIRST.replace(*FORM_FEED), CLIP_FIRST_FIXED.replace(*FORM_FEED), "CC101"),
])
def test_a_fix_makes_its_edit_once_and_the_file_rechecks_clean(tmp_path: Path, before: str, after: str,
                                                                 rule: str) -> None:
    path = write(tmp_path, "train.py", before)
    path.chmod(0o640)
    result = run_clipcheck("check", "--fix", "--unsafe-fixes", "train.py", cwd=tmp_path)
    assert result.returncode == 0, result.stdout
    assert path.read_text() == after  # comments and formatting kept
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert run_json("--select", rule, "train.py", cwd=tmp_path) == (0, [])
    again = run_clipcheck("check", "--fix", "--unsafe-fixes", "train.py", cwd=tmp_path)
    assert again.returncode == 0 and path.read_text() == after  # idempotent
    assert sorted(os.listdir(tmp_path)) == [".clipcheck_cache", "train.py"]  # no temporary file left behind


def test_moves_are_unsafe_and_need_the_flag(tmp_path: Path) -> None:
    path = write(tmp_path, "train.py", CLIP_FIRST)
    _, findings = run_json("train.py", cwd=tmp_path)
    fix = findings[0]["fix"]
    assert fix["applicability"] == "unsafe" and "after the backward pass at line 10" in fix["message"]
    assert fix["edits"][0] == {"content": "", "location": {"row": 8, "column": 1},
                               "end_location": {"row": 9, "column": 1}}
    assert run_clipcheck("check", "--fix", "train.py", cwd=tmp_path).returncode == 1
    assert path.read_text() == CLIP_FIRST


def test_diff_shows_the_fix_and_writes_nothing(tmp_path: Path) -> None:
    path = write(tmp_path, "train.py", GENERATOR)
    result = run_clipcheck("check", "--diff", "train.py", cwd=tmp_path)
    assert result.returncode == 1
    assert "-    params = model.parameters()  # trainable weights" in result.stdout
    assert "+    params = list(model.parameters())  # trainable weights" in result.stdout
    assert path.read_text() == GENERATOR


def test_no_fix_where_the_clip_and_its_anchor_are_in_different_blocks(tmp_path: Path) -> None:
    guarded = "        if True:\n            torch.nn.utils.clip_grad_norm_"
    write(tmp_path, "train.py", CLIP_FIRST.replace("        torch.nn.utils.clip_grad_norm_", guarded))
    code, findings = run_json("train.py", cwd=tmp_path)
    assert code == 1 and [f["fix"] for f in findings] == [None]


@pytest.mark.parametrize("anchor", ["scaler.scale(loss).backward()", "accelerator.backward(loss)"])
def test_no_move_next_to_scaled_gradients(tmp_path: Path, anchor: str) -> None:
    write(tmp_path, "train.py", CLIP_FIRST.replace("loss.backward()", anchor))
    code, findings = run_json("train.py", cwd=tmp_path)
    # The plain ``optimizer.step()`` after a scaler's backward is a finding of its own (CC202).
    clips = [(f["code"], f["fix"]) for f in findings if f["code"] != "CC202"]
    assert code == 1 and clips == [("CC101", None)]


def test_a_failed_write_leaves_the_file_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from clipcheck import fixes

    path = write(tmp_path, "train.py", GENERATOR)

    def refuse(*_: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fixes.os, "replace", refuse)
    with pytest.raises(OSError):
        fixes.write_whole(path, GENERATOR_FIXED.encode(), GENERATOR.encode())
    assert path.read_text() == GENERATOR
    assert sorted(os.listdir(tmp_path)) == ["train.py"]


def test_an_edit_made_while_fixing_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Someone saves the file between clipcheck's read and its write: their edit stays, and
    the file is reported (CC000) instead of fixed."""
    import shutil

    from clipcheck import engine
    from clipcheck.static.frameworks.custom import NONE

    path = write(tmp_path, "train.py", GENERATOR)
    edited = GENERATOR.replace("lr=1e-3", "lr=3e-4")
    copy_mode = shutil.copymode

    def save_meanwhile(source: str, target: str) -> None:
        path.write_text(edited)
        copy_mode(source, target)

    monkeypatch.setattr(shutil, "copymode", save_meanwhile)
    task = engine.Task(str(path), path, GENERATOR.encode(), ("CC302",), NONE, engine.Fixing(unsafe=True))
    outcome = engine.run_task(task)
    assert path.read_text() == edited and sorted(os.listdir(tmp_path)) == ["train.py"]
    assert [(f.code, f.message) for f in outcome.findings] == [
        ("CC000", "the file changed while clipcheck fixed it: left as it is now, run the fix again")]


def test_sarif_carries_the_fix(tmp_path: Path) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    write(tmp_path, "train.py", GENERATOR)
    log = json.loads(run_clipcheck("check", "--output-format", "sarif", "train.py", cwd=tmp_path).stdout)
    jsonschema.validate(log, json.loads((ROOT / "tests" / "data" / "sarif-schema-2.1.0.json").read_text()))
    change = log["runs"][0]["results"][0]["fixes"][0]["artifactChanges"][0]
    assert [r["insertedContent"]["text"] for r in change["replacements"]] == [")", "list("]


def test_a_suppressed_finding_is_not_fixed(tmp_path: Path) -> None:
    """A ``# noqa`` says the code is meant as it is: --fix leaves it, as Ruff does."""
    suppressed = GENERATOR.replace("lr=1e-3)", "lr=1e-3)  # noqa: CC302")  # the finding's line
    path = write(tmp_path, "train.py", suppressed)
    result = run_clipcheck("check", "--fix", "train.py", cwd=tmp_path)
    assert (result.returncode, result.stderr) == (0, "")
    assert path.read_text() == suppressed


def test_a_file_without_a_final_newline_diffs_as_patch_reads_it(tmp_path: Path) -> None:
    path = write(tmp_path, "train.py", GENERATOR.rstrip("\n"))
    result = run_clipcheck("check", "--diff", "train.py", cwd=tmp_path)
    last = "     return torch.optim.AdamW(params, lr=1e-3)\n"
    assert result.stdout.endswith(last + "\\ No newline at end of file\n")
    patched = subprocess.run(["git", "apply", "-"], input=result.stdout, cwd=tmp_path, text=True,
                             capture_output=True, check=False)
    assert patched.returncode == 0, patched.stderr
    assert path.read_text() == GENERATOR_FIXED.rstrip("\n")
