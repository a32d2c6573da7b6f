"""Configuration errors as Ruff gives them: the file and the line (tomllib gives no line for a
key it parsed, so the text is read for it), and the nearest spelling of a misspelt key or
rule. CC900 can be selected from the configuration as from the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import BAD, run_clipcheck, run_json
from test_cli import CLEAN, write

from clipcheck.config import _line_of


@pytest.mark.parametrize(("name", "config", "message"), [
    ("pyproject.toml", '[project]\nname = "x"\n\n[tool.clipcheck]\nselekt = ["CC1"]\n',
     "pyproject.toml:5: unknown key `selekt`; did you mean `select`?"),
    ("clipcheck.toml", 'extend-select = ["CC3"]\nper-file-ignore = {}\n',
     "clipcheck.toml:2: unknown key `per-file-ignore`; did you mean `per-file-ignores`?"),
    ("pyproject.toml", '[tool.clipcheck]\nignore = [\n  "CC101",\n  "zero-grad-befor-step",\n]\n',
     "pyproject.toml:4: unknown rule 'zero-grad-befor-step' in `ignore`; "
     "did you mean 'zero-grad-before-step'?"),
    ("pyproject.toml", '[tool.clipcheck.per-file-ignores]\n"tests/*.py" = ["CC103"]\n"nb/*.py" = ["CC1O4"]\n',
     "pyproject.toml:3: unknown rule 'CC1O4' in `per-file-ignores.\"nb/*.py\"`; did you mean 'CC104'?"),
    ("pyproject.toml", '[tool.clipcheck]\nselect = ["CC1"]\n\n'
                       '[tool.clipcheck.vocabulary]\nbackwards = ["a.b"]\n',
     "pyproject.toml:5: unknown key `vocabulary.backwards`; did you mean `backward`?"),
    ("pyproject.toml", '[tool]\nclipcheck.extend-select = ["CC3", "zzz"]\n',
     "pyproject.toml:2: unknown rule 'zzz' in `extend-select`; known rules: CC101 (clip-before-backward), "),
    ("pyproject.toml", '[tool.clipcheck]\nignore = "CC101"\n',
     "pyproject.toml:2: `ignore` must be a list of strings"),
    ("pyproject.toml", "[tool.clipcheck\nselect = []\n",
     "pyproject.toml:1:16: not valid TOML: Expected ']' at the end of a table declaration"),
])
def test_a_configuration_error_names_the_file_the_line_and_the_nearest_spelling(
        tmp_path: Path, name: str, config: str, message: str) -> None:
    write(tmp_path, name, config)
    write(tmp_path, "train.py", CLEAN)
    result = run_clipcheck("check", "train.py", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith(f"Error: {message}"), result.stderr
    assert "usage:" not in result.stderr  # the file is at fault, not the command line


def test_a_pyproject_that_cannot_name_clipcheck_is_not_read(tmp_path: Path) -> None:
    """Not even parsed: broken TOML there is another tool's concern, and a table spelled with
    an escape is still found."""
    write(tmp_path, "pyproject.toml", '[tool.black\nline-length = 100\n')
    write(tmp_path, "train.py", BAD)
    assert run_clipcheck("check", "train.py", cwd=tmp_path).returncode == 1
    write(tmp_path, "pyproject.toml", '[tool."clip\\u0063heck"]\nignore = ["CC1", "CC2", "CC3", "CC4"]\n')
    result = run_clipcheck("check", "train.py", cwd=tmp_path)
    assert (result.returncode, result.stderr) == (0, "")


def test_a_file_in_a_subfolder_is_named_from_the_current_folder(tmp_path: Path) -> None:
    write(tmp_path, "pkg/pyproject.toml", '[tool.clipcheck]\nignore = ["CC104"]\nexlude = []\n')
    write(tmp_path, "pkg/train.py", BAD)
    result = run_clipcheck("check", "pkg", cwd=tmp_path)
    assert result.stderr == "Error: pkg/pyproject.toml:3: unknown key `exlude`; did you mean `exclude`?\n"
    given = run_clipcheck("check", "--config", "pkg/pyproject.toml", "pkg", cwd=tmp_path)
    assert given.stderr == result.stderr


@pytest.mark.parametrize(("text", "key", "value", "line"), [
    ('[tool.clipcheck]\nselect = ["A"]\n', ("tool", "clipcheck", "select"), None, 2),
    ('[tool.clipcheck]\nselect = ["A",\n  "B"]\nignore = ["B"]\n', ("tool", "clipcheck", "select"), "B", 3),
    ('[tool.clipcheck]\nselect = ["A"]\nignore = ["B"]\n', ("tool", "clipcheck", "select"), "B", 2),
    ("[tool]\n'clipcheck' . ignore = ['B']\n", ("tool", "clipcheck", "ignore"), "B", 2),
    ('tool.clipcheck = { select = ["A"],\n  ignore = ["B"] }\n', ("tool", "clipcheck", "ignore"), "B", 1),
    ('[tool.clipcheck]\n# selekt = 1\n\n[tool.clipcheck.vocabulary]\nclip = []\n',
     ("tool", "clipcheck", "vocabulary", "step"), None, 4),
    ("[tool.other]\nselect = []\n", ("tool", "clipcheck", "select"), None, None),
    # TOML spells a character ``\U0001F600`` where JSON cannot: TOML's parser reads that key.
    ('[tool.x]\n"\\U0001F600" = 1\n[tool.clipcheck]\nselect = ["A"]\n',
     ("tool", "clipcheck", "select"), "A", 4),
    ('["\\U0001F600"]\ntool.clipcheck.selekt = 1\n[tool.clipcheck]\nselekt = 2\n',
     ("tool", "clipcheck", "selekt"), None, 4),
    # A line in a multi-line string that reads as a key TOML does not allow.
    ('[tool.clipcheck]\ndoc = \"\"\"\n"\\q" = 1\n\"\"\"\nselekt = 2\n',
     ("tool", "clipcheck", "selekt"), None, 5),
])
def test_the_line_of_a_key_or_of_its_value(text: str, key: tuple[str, ...], value: str | None,
                                           line: int | None) -> None:
    assert _line_of(text, key, value) == line


def test_cc900_can_be_selected_from_the_configuration(tmp_path: Path) -> None:
    write(tmp_path, "train.py", CLEAN.replace("optimizer.step()", "optimizer.step()  # noqa: CC102"))
    write(tmp_path, "legacy/old.py", CLEAN.replace("optimizer.step()", "optimizer.step()  # noqa: CC102"))
    assert run_json(cwd=tmp_path) == (0, [])  # ALL: the analysis rules, not CC900
    write(tmp_path, "pyproject.toml", '[tool.clipcheck]\nextend-select = ["unused-suppression"]\n'
                                      '[tool.clipcheck.per-file-ignores]\n"legacy/*" = ["CC900"]\n')
    code, findings = run_json(cwd=tmp_path)
    assert (code, [(f["path"], f["code"], f["line"]) for f in findings]) == (1, [("train.py", "CC900", 8)])
    settings = run_clipcheck("check", "--show-settings", "train.py", cwd=tmp_path).stdout
    assert "CC900 (unused-suppression)" in settings
    write(tmp_path, "pyproject.toml", '[tool.clipcheck]\nselect = ["CC9"]\n')
    assert [f["code"] for f in run_json("train.py", cwd=tmp_path)[1]] == ["CC900"]
    result = run_clipcheck("check", "--output-format", "json", "--select", "CC900", "train.py", cwd=tmp_path)
    assert [f["code"] for f in json.loads(result.stdout)] == ["CC900"]
