"""Notebooks as IPython reads them. IPython's own input transformer is the oracle: every cell it
turns into Python must mask into Python with the same lines, and the lines it leaves alone must
stay exactly as they are (findings point into the cell). A cell that is not Python is one error
at its cell and line; the other cells are still one program."""

from __future__ import annotations

import ast
import difflib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("IPython")
pytest.importorskip("hypothesis")

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from IPython.core.inputtransformer2 import TransformerManager

from clipcheck.engine import analyse_source
from clipcheck.notebooks import PYTHON_CELL_MAGICS, CellError, _masked, program

FLAGS = ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT


def compiles(text: str) -> bool:
    try:
        compile(text, "<cell>", "exec", FLAGS, dont_inherit=True)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    return True


def cleaned(cell: str) -> list[str]:
    """The cell after IPython's clean-up (leading blank lines, indentation, prompts)."""
    lines = cell.splitlines(keepends=True)
    for transform in TransformerManager().cleanup_transforms:
        lines = transform(lines)
    return lines


def python_cell_magic(cell: str) -> str | None:
    """The body of a ``%%time``-like cell (IPython runs it as a cell of its own)."""
    lines = cleaned(cell)
    if not lines or not lines[0].startswith("%%") or re.match(r"%%\w+\?", lines[0]):
        return None
    return "".join(lines[1:]) if lines[0][2:].rstrip().partition(" ")[0] in PYTHON_CELL_MAGICS else None


def ipython_runs(cell: str) -> bool:
    """Whether IPython turns the cell into Python it can compile."""
    body = python_cell_magic(cell)
    if body is not None:
        return ipython_runs(body)
    try:
        return compiles(TransformerManager().transform_cell(cell))
    except Exception:
        return False


def kept_by_ipython(cell: str) -> list[int]:
    """The indices of the cell's lines IPython leaves as they are."""
    original = cell.splitlines()
    body = python_cell_magic(cell)
    if body is not None:  # the body's lines as IPython runs them, where they are still the cell's
        lines = body.splitlines()
        offset = len(original) - len(lines)
        return [offset + index for index in kept_by_ipython(body) if lines[index] == original[offset + index]]
    try:
        transformed = TransformerManager().transform_cell(cell).splitlines()
    except Exception:
        return []
    matcher = difflib.SequenceMatcher(None, original, transformed, autojunk=False)
    return [block.a + k for block in matcher.get_matching_blocks() for k in range(block.size)]


def check_against_ipython(cell: str) -> list[str]:
    original = cell.splitlines()
    masked = _masked(original)
    assert len(masked) == len(original), masked
    if ipython_runs(cell):
        assert compiles("\n".join(masked) + "\n"), "\n".join(masked)
    for index in kept_by_ipython(cell):
        assert masked[index] == original[index], (index, masked)
    return masked


# -- cells written like the real ones ---------------------------------------------------------------

REAL_CELLS = [
    "%matplotlib inline\n%load_ext autoreload\n%autoreload 2\nimport torch\n",
    "!pip install -q transformers \\\n    datasets \\\n    accelerate\nimport transformers\n",
    "%pip install timm\n%env CUDA_VISIBLE_DEVICES=0\nimport os\n",
    "import os\nif not os.path.exists('data.zip'):\n    !wget -q https://example.com/data.zip \\\n"
    "        -O data.zip\n    !unzip -q data.zip\nprint('ready')\n",
    "%time model = build_model()\n%timeit -n 10 -r 3 model(x)\n",
    "for epoch in range(3):\n    %time train_one_epoch(model, loader)\n    %timeit evaluate(model)\n",
    "%%time\nfor x, y in loader:\n    optimizer.zero_grad()\n    loss = model(x).sum()\n"
    "    loss.backward()\n    optimizer.step()\n",
    "%%capture\n!pip install wandb\nimport wandb\n",
    "%%capture output\nfor step in range(10):\n    %time f(step)\n",
    "%%bash\nset -e\nls -la (\necho done\n",
    "%%writefile train.py\nimport torch\nprint('hi'\n",
    "%%timeit -n 1\nsum(range(1000))\n",
    "files = !ls *.csv\nhome = %env HOME\nprint(files, home)\n",
    "model?\n?torch.nn.Linear\ntorch.optim.AdamW??\nmodel.fc.weight?\n",
    "x = (a\n% b)\nprint(x)\n",
    "s = '''\n%not a magic\n!nor a shell\n'''\n",
    "if use_gpu:\n    %env CUDA_VISIBLE_DEVICES=0\nelse:\n    !nvidia-smi\n",
    "await asyncio.sleep(1)\n",
    "    model.train()\n    for x in loader:\n        model(x)\n",
    ">>> x = 1\n>>> for i in range(3):\n...     print(i)\n",
    "In [1]: import torch\n   ...: x = torch.ones(2)\n",
    "\n\n%%time\n\ny = 1\n",
    "%time for i in range(3): f(i)\n",
    "%prun -s cumulative -l 10 train()\n",
    "def f():\n    !echo inside\n    return 1\n",
    "total = 0  # how much?\nprint(total)\n",
    "x = 1 + \\\n    2\n!echo a\n",
    "%%capture\n",
    "%%time\n%%capture\n\n",
    'def double(x):\n    """Twice x.\n\n    >>> double(2)\n    4\n    """\n    return 2 * x\n',
]


@pytest.mark.parametrize("cell", REAL_CELLS)
def test_real_cells_mask_as_ipython_reads_them(cell: str) -> None:
    assert ipython_runs(cell), cell
    check_against_ipython(cell)


@pytest.mark.parametrize(("line", "kept"), [
    ("%time x = f()", "x = f()"),
    ("%time(x)", "(x)"),
    ("    %timeit -n 10 -r 3 step()", "step()"),
    ("%prun -s cumulative train()", "train()"),
    ("%memit -r 2 model(x)  # memory", "model(x)  # memory"),
])
def test_a_timed_statement_stays_at_its_columns(line: str, kept: str) -> None:
    indent = line[: len(line) - len(line.lstrip())]
    # (a cell indented as a whole is dedented, as IPython does)
    masked = _masked(["if go:", line])[1] if indent else _masked([line])[0]
    assert masked.startswith(indent + "pass;") and masked.endswith(kept) and len(masked) == len(line)


@pytest.mark.parametrize(("line", "masked"), [
    ("!wget -q url", "pass"),
    ("files = !ls", "files = None"),
    ("out = %env HOME", "out = None"),
    ("model.fc?", "pass"),
    ("??torch", "pass"),
    ("%time for i in range(3): f(i)", "pass"),
])
def test_other_ipython_lines_are_masked(line: str, masked: str) -> None:
    assert _masked([line]) == [masked]


def test_a_shell_command_masks_its_continuation_lines() -> None:
    cell = ["!pip install a \\", "    b \\", "    c", "import torch"]
    assert _masked(cell) == ["pass", "", "", "import torch"]


def test_a_timed_statement_keeps_its_backslash_continuation() -> None:
    assert _masked(["%time x = f(a, \\", "        b)"]) == ["pass; x = f(a, \\", "        b)"]


def test_only_a_python_cell_magic_keeps_its_body() -> None:
    assert _masked(["%%time", "for x in y:", "    %time f(x)"]) == ["pass", "for x in y:", "    pass; f(x)"]
    assert _masked(["%%bash", "for x in y; do", "  echo $x", "done"]) == ["pass", "", "", ""]


# -- generated cells ---------------------------------------------------------------------------------

def lines_of(*lines: str) -> st.SearchStrategy[list[str]]:
    return st.just(list(lines))


def shell(continued: int) -> list[str]:
    """``!cmd``, or ``!cmd \\`` and ``continued`` continuation lines."""
    if not continued:
        return ["!ls -la data{n}"]
    options = [f"    --opt{{n}}-{k} \\" for k in range(1, continued)]
    return ["!pip install -q pkg{n} \\", *options, "    --last{n}"]


LEAVES = st.one_of(
    lines_of("x{n} = f({n})"),
    lines_of("loss{n}.backward()"),
    lines_of("print('not a magic: %time {n} ? !ls')  # what{n}?"),
    lines_of("y{n} = (a{n}", "    % 2)"),
    lines_of("z{n} = 1 + \\", "    {n}"),
    lines_of("s{n} = '''", "%time not{n}", "!not{n}", "'''"),
    lines_of("%matplotlib inline"),
    lines_of("%load_ext autoreload{n}"),
    lines_of("%env A{n}=1"),
    lines_of("%time x{n} = f({n})"),
    lines_of("%timeit -n 10 f({n})"),
    lines_of("%time for i{n} in range(3): f(i{n})"),
    lines_of("!echo \"it's{n}\" [ok] \\", "  done{n}"),
    lines_of("files{n} = !ls {n}"),
    lines_of("a{n}, b{n} = !ls \\", "    -la{n}"),
    lines_of("names{n}: list = !ls"),
    lines_of("%time x{n} = f(a, \\", "        b{n})"),
    lines_of("%timeit?"),
    lines_of("%%capture"),
    lines_of("/print {n}"),
    lines_of(",print a{n} b"),
    lines_of("print('done{n}?')"),
    lines_of("out{n} = %env HOME{n}"),
    lines_of("model{n}?"),
    lines_of("?torch{n}"),
    lines_of("torch.nn.Linear{n}??"),
    lines_of("# a comment{n}?"),
    lines_of(""),
    lines_of("await asyncio.sleep({n})"),
    st.integers(0, 3).map(shell),
)
HEADERS = ["for i{n} in range(3):", "if cond{n}:", "with ctx{n}:", "def f{n}():", "while go{n}:"]
ITEMS = st.recursive(
    LEAVES, lambda inner: st.tuples(st.sampled_from(HEADERS), st.lists(inner, min_size=1, max_size=4)),
    max_leaves=12)


def render(item: list[str] | tuple[str, list[object]], indent: str, counter: list[int]) -> list[str]:
    counter[0] += 1
    n = counter[0]
    if isinstance(item, list):
        return [indent + line.format(n=n) if line else "" for line in item]
    header, body = item
    lines = [indent + header.format(n=n)]
    for inner in body:
        lines += render(inner, indent + "    ", counter)  # type: ignore[arg-type]
    return lines


@st.composite
def cells(draw: st.DrawFn) -> str:
    counter = [0]
    magic = draw(st.sampled_from([[], ["%%time"], ["%%capture"], ["%%bash"], ["%%writefile f.py"]]))
    lines = [*magic, *(line for item in draw(st.lists(ITEMS, min_size=1, max_size=6))
                       for line in render(item, "", counter))]
    margin = draw(st.sampled_from(["", "", "  "]))
    return "".join(f"{margin}{line}\n" if line else "\n" for line in lines)


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(cells())
def test_generated_cells_mask_as_ipython_reads_them(cell: str) -> None:
    check_against_ipython(cell)


# -- broken cells --------------------------------------------------------------------------------------

SETUP = "%matplotlib inline\nimport torch\n!pip install tqdm \\\n    rich\nmodel = torch.nn.Linear(2, 2)\n"
TRAIN = ("optimizer = torch.optim.SGD(model.parameters(), lr=0.1)\nfor x, y in loader:\n"
         "    %time loss = model(x).sum()\n    optimizer.zero_grad()\n"
         "    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)\n"
         "    loss.backward()\n    optimizer.step()\n")
LOG = "Epoch 1/3\n100%|██████████| 938/938 [00:12<00:00, 75.1it/s]\nloss: 0.3412 - acc: 0.91\n"
KEY = "import openai\nopenai.api_key = <your-api-key>\n"


def notebook(*cells: tuple[str, str]) -> str:
    return json.dumps({"cells": [{"cell_type": kind, "metadata": {}, "source": text.splitlines(keepends=True),
                                  **({"outputs": [], "execution_count": None} if kind == "code" else {})}
                                 for kind, text in cells],
                       "metadata": {}, "nbformat": 4, "nbformat_minor": 5})


def where_python_fails(text: str) -> tuple[int, int]:
    try:
        compile(text, "<cell>", "exec", FLAGS, dont_inherit=True)
    except SyntaxError as error:
        return error.lineno or 0, error.offset or 0
    raise AssertionError("the cell compiles")


@pytest.mark.parametrize("broken", [LOG, KEY])
def test_a_broken_cell_is_one_error_and_the_others_are_the_program(broken: str) -> None:
    nb = program(notebook(("code", SETUP), ("markdown", "# Train"), ("code", broken), ("code", TRAIN)))
    assert [(e.cell, e.line, e.column) for e in nb.errors] == [(3, *where_python_fails(broken))]
    assert broken != KEY or (nb.errors[0].line, nb.errors[0].column) == (2, 18)  # at the `<`
    assert nb.errors[0].message.startswith("syntax error: ")
    assert compiles(nb.text)
    assert "model = torch.nn.Linear(2, 2)" in nb.text and "    loss.backward()" in nb.text
    assert "<your-api-key>" not in nb.text and "938/938" not in nb.text
    lines = nb.text.splitlines()
    backward = lines.index("    loss.backward()") + 1
    assert nb.place(backward) == (4, 6)
    assert [nb.place(i + 1)[0] for i, text in enumerate(lines) if text] == [1] * 4 + [4] * 7


def test_an_error_points_at_the_cell_as_written() -> None:
    nb = program(notebook(("code", "    for x in y:\n        %time f(x)\n        g(x) +* 2\n")))
    assert nb.errors == [CellError(1, 3, 15, "syntax error: invalid syntax")]
    assert nb.text == "\n\n\n"


def test_cells_ipython_runs_are_never_errors() -> None:
    nb = program(notebook(*(("code", cell) for cell in REAL_CELLS)))
    assert nb.errors == []
    assert compiles(nb.text)
    assert len(nb.text.splitlines()) == sum(len(cell.splitlines()) for cell in REAL_CELLS)


def test_a_null_byte_is_an_error_of_its_cell() -> None:
    nb = program(notebook(("code", "x = 1\n"), ("code", "y = '\0'\n")))
    assert [(e.cell, e.line) for e in nb.errors] == [(2, 1)]
    assert nb.text == "x = 1\n\n"


def test_an_error_only_the_compiler_finds_is_an_error_of_its_cell() -> None:
    nb = program(notebook(("code", "import torch\n"), ("code", "x = 1\nreturn x\n"), ("code", "y = 2\n")))
    assert nb.errors == [CellError(2, 2, 1, "syntax error: 'return' outside function")]
    assert nb.text == "import torch\n\n\ny = 2\n"


# Cells IPython runs though a file could not be: it compiles each top-level statement of a cell
# on its own, with ``await`` allowed at the top (a magic is masked to ``pass``).
IPYTHON_ONLY_CELLS = [
    "import asyncio\nx = await asyncio.sleep(0)\n",
    "async for item in stream():\n    print(item)\n",
    "%matplotlib inline\nfrom __future__ import print_function, division\nimport os\n",
    "x = 1\nfrom __future__ import annotations\n",
    "y = 1\nglobal y\n",
]


def test_what_ipython_runs_statement_by_statement_is_no_error() -> None:
    nb = program(notebook(*(("code", cell) for cell in IPYTHON_ONLY_CELLS)))
    assert nb.errors == []
    assert analyse_source(nb.text, "nb.ipynb", runs_as_a_file=False) == []
    assert [f.code for f in analyse_source(nb.text, "nb.py")] == ["CC000"]


def test_the_command_reports_the_broken_cell_and_still_the_training_mistake(tmp_path: Path) -> None:
    path = tmp_path / "nb.ipynb"
    path.write_text(notebook(("code", SETUP), ("code", KEY), ("code", TRAIN)))
    command = [sys.executable, "-m", "clipcheck", "check", "--output-format", "json", "--exit-zero",
               path.name]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
    found = json.loads(result.stdout)
    assert [(f["code"], f["cell"], f["line"]) for f in found if f["code"] == "CC000"] == [("CC000", 2, 2)]
    assert [(f["code"], f["cell"], f["line"], f["column"]) for f in found if f["code"] == "CC101"] == [
        ("CC101", 3, 5, 5)]


def test_cell_lines_break_where_python_breaks_them() -> None:
    """A form feed or U+2028 is inside a line for CPython and IPython, not between two."""
    cell = "import torch\n\x0cx = 1\ns = 'a\u2028b'\n"
    nb = program(json.dumps({"cells": [{"cell_type": "code", "source": cell}]}))
    assert nb.errors == [] and nb.cells[1] == ["import torch", "\x0cx = 1", "s = 'a\u2028b'"]
