"""Fixes in notebooks: a fix is described in its cells' lines (its JSON and SARIF edits name
the cell), ``--fix`` rewrites only the sources of the cells it edits, every other byte of the
file as it was, and an edit with no certain place in a cell is not offered at all."""

from __future__ import annotations

import codecs
import json
from pathlib import Path

import pytest
from conftest import ROOT, run_clipcheck, run_json
from test_cli import write

from clipcheck.notebooks import rewrite

CLIP_LAST = ("for x, y in loader:\n    opt.zero_grad()\n    loss = model(x).sum()\n    loss.backward()\n"
             "    opt.step()\n    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)")
CLIP_MOVED = ("for x, y in loader:\n    opt.zero_grad()\n    loss = model(x).sum()\n    loss.backward()\n"
              "    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)\n    opt.step()")
SETUP = "%matplotlib inline\nimport torch\n"


def notebook(*cells: str | tuple[str, str], source_as_string: bool = False) -> str:
    """A notebook as Jupyter saves one: one-space indentation, non-ASCII kept, outputs and
    metadata around each cell, no newline after a cell's last line (a cell is its source, or
    ``(kind, source)``)."""
    def cell(spec: str | tuple[str, str], number: int) -> dict[str, object]:
        kind, source = spec if isinstance(spec, tuple) else ("code", spec)
        extra = {"execution_count": number, "outputs": [{"output_type": "stream", "name": "stdout",
                                                         "text": ["époque 1\n"]}]} if kind == "code" else {}
        return {"cell_type": kind, "id": f"c{number}", "metadata": {"tags": []}, **extra,
                "source": source if source_as_string else source.splitlines(keepends=True)}

    body = {"cells": [cell(spec, n) for n, spec in enumerate(cells, start=1)],
            "metadata": {"kernelspec": {"display_name": "Python 3", "name": "python3"}},
            "nbformat": 4, "nbformat_minor": 5}
    return json.dumps(body, indent=1, ensure_ascii=False) + "\n"


def sources(path: Path) -> list[str]:
    return ["".join(c["source"]) if isinstance(c["source"], list) else c["source"]
            for c in json.loads(path.read_text(encoding="utf-8-sig"))["cells"]]


def test_a_fix_is_described_in_its_cell(tmp_path: Path) -> None:
    write(tmp_path, "nb.ipynb", notebook(("markdown", "# Train\n"), SETUP, CLIP_LAST))
    code, findings = run_json("nb.ipynb", cwd=tmp_path)
    assert code == 1 and [(f["code"], f["cell"], f["line"]) for f in findings] == [("CC102", 3, 6)]
    fix = findings[0]["fix"]
    assert fix["message"] == "Move the clip before the step at line 5"  # the cell's line, not 10
    assert fix["edits"] == [
        {"content": "", "location": {"row": 6, "column": 1}, "end_location": {"row": 7, "column": 1},
         "cell": 3},
        {"content": "    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)\n",
         "location": {"row": 5, "column": 1}, "end_location": {"row": 5, "column": 1}, "cell": 3}]
    text = run_clipcheck("check", "nb.ipynb", cwd=tmp_path).stdout
    assert "fix (unsafe, --fix --unsafe-fixes): Move the clip before the step at line 5\n" in text


def test_fix_rewrites_the_cell_and_keeps_every_other_byte(tmp_path: Path) -> None:
    path = write(tmp_path, "nb.ipynb", notebook(("markdown", "# Train\n"), SETUP, CLIP_LAST))
    before = path.read_bytes()
    result = run_clipcheck("check", "--fix", "--unsafe-fixes", "nb.ipynb", cwd=tmp_path)
    assert (result.returncode, result.stdout) == (0, "All checks passed: 1 file.\n")
    assert "fixed 1 problem" in result.stderr
    moved = ('    "    opt.step()\\n",\n    "    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)"',
             '    "    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)\\n",\n    "    opt.step()"')
    assert moved[0] in before.decode()
    assert path.read_bytes() == before.decode().replace(*moved).encode()
    assert sources(path)[2] == CLIP_MOVED
    again = run_clipcheck("check", "--fix", "--unsafe-fixes", "nb.ipynb", cwd=tmp_path)
    assert again.returncode == 0 and path.read_bytes() == before.decode().replace(*moved).encode()
    assert [p.name for p in tmp_path.iterdir()] == ["nb.ipynb"]  # no temporary file left behind


def test_a_fix_may_edit_two_cells(tmp_path: Path) -> None:
    """Top-level code runs across cells: the clip leaves one cell for the other."""
    path = write(tmp_path, "nb.ipynb", notebook(
        "import torch\nopt.zero_grad()\ntorch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)",
        "loss = model(x).sum()\nloss.backward()\nopt.step()"))
    _, findings = run_json("nb.ipynb", cwd=tmp_path)
    fix = findings[0]["fix"]
    assert (findings[0]["cell"], findings[0]["line"]) == (1, 3)
    assert fix["message"] == "Move the clip after the backward pass at line 2 of cell 2"
    assert [(e["cell"], e["location"]["row"], e["end_location"]["row"]) for e in fix["edits"]] == [
        (1, 3, 4), (2, 3, 3)]
    assert run_clipcheck("check", "--fix", "--unsafe-fixes", "nb.ipynb", cwd=tmp_path).returncode == 0
    assert sources(path) == ["import torch\nopt.zero_grad()",
                             "loss = model(x).sum()\nloss.backward()\n"
                             "torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)\nopt.step()"]


def test_a_safe_fix_in_a_cell_kept_as_one_string_with_a_byte_order_mark(tmp_path: Path) -> None:
    cell = ("def build(model):\n    params = model.parameters()  # poids entraînés\n"
            "    print(sum(p.numel() for p in params))\n    return torch.optim.AdamW(params, lr=1e-3)\n")
    text = notebook(SETUP, cell, source_as_string=True)
    path = write(tmp_path, "nb.ipynb", codecs.BOM_UTF8 + text.encode())
    assert run_clipcheck("check", "--fix", "nb.ipynb", cwd=tmp_path).returncode == 0
    fixed = cell.replace("params = model.parameters()", "params = list(model.parameters())")
    assert fixed != cell
    assert path.read_bytes() == codecs.BOM_UTF8 + text.replace(json.dumps(cell, ensure_ascii=False),
                                                               json.dumps(fixed, ensure_ascii=False)).encode()


@pytest.mark.parametrize("cells", [
    # The clip must follow a backward that ends its cell: the end of that cell and the start of
    # the next are one place in the program.
    ("import torch\ntorch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)\nloss.backward()", "opt.step()"),
    # A cell indented as a whole is dedented as IPython runs it: its lines are not as written.
    ("\n".join("    " + line for line in CLIP_LAST.splitlines()),),
])
def test_no_fix_where_its_place_in_a_cell_is_not_certain(tmp_path: Path, cells: tuple[str, ...]) -> None:
    path = write(tmp_path, "nb.ipynb", notebook(*cells))
    before = path.read_bytes()
    code, findings = run_json("nb.ipynb", cwd=tmp_path)
    assert code == 1 and findings and [f["fix"] for f in findings] == [None] * len(findings)
    assert run_clipcheck("check", "--fix", "--unsafe-fixes", "nb.ipynb", cwd=tmp_path).returncode == 1
    assert path.read_bytes() == before


def test_diff_shows_each_cell_and_writes_nothing(tmp_path: Path) -> None:
    path = write(tmp_path, "nb.ipynb", notebook(SETUP, CLIP_LAST))
    before = path.read_bytes()
    result = run_clipcheck("check", "--diff", "--unsafe-fixes", "nb.ipynb", cwd=tmp_path)
    assert result.returncode == 1 and path.read_bytes() == before
    assert result.stdout.splitlines()[:2] == ["--- a/nb.ipynb:cell 2", "+++ b/nb.ipynb:cell 2"]
    assert result.stdout.endswith("+    opt.step()\n\\ No newline at end of file\n")


def test_sarif_names_the_cell_of_each_edit(tmp_path: Path) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    write(tmp_path, "nb.ipynb", notebook(SETUP, CLIP_LAST))
    log = json.loads(run_clipcheck("check", "--output-format", "sarif", "nb.ipynb", cwd=tmp_path).stdout)
    jsonschema.validate(log, json.loads((ROOT / "tests" / "data" / "sarif-schema-2.1.0.json").read_text()))
    fix = log["runs"][0]["results"][0]["fixes"][0]
    assert fix["description"]["text"] == "Move the clip before the step at line 5 (unsafe)"
    regions = [r["deletedRegion"] for r in fix["artifactChanges"][0]["replacements"]]
    assert [(r["startLine"], r["message"]["text"]) for r in regions] == [(6, "cell 2"), (5, "cell 2")]


def test_rewrite_keeps_the_layout_of_a_source_list() -> None:
    text = '{"cells": [{"cell_type": "code", "source": ["a = 1\\n", "b = 2"]}], "nbformat": 4}'
    assert rewrite(text, {1: "b = 2\na = 1\n"}) == \
        '{"cells": [{"cell_type": "code", "source": ["b = 2\\n", "a = 1"]}], "nbformat": 4}'
    assert rewrite(text, {1: ""}) == '{"cells": [{"cell_type": "code", "source": []}], "nbformat": 4}'
