"""Where people use clipcheck: configuration, suppression comments, CI output formats,
notebooks, a forgiving command line, rule pages. Each test runs the installed command."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from conftest import ROOT, clipcheck_command, run_clipcheck, run_json
from test_cli import BAD, CLEAN, write

# BAD's finding: CC104 at line 8, column 9.
SUPPRESSED = BAD.replace("optimizer.zero_grad()", "optimizer.zero_grad()  # noqa: CC104")


def notebook(*cells: tuple[str, str]) -> str:
    return json.dumps({"cells": [{"cell_type": kind, "metadata": {}, "source": text.splitlines(keepends=True),
                                  **({"outputs": [], "execution_count": None} if kind == "code" else {})}
                                 for kind, text in cells],
                       "metadata": {}, "nbformat": 4, "nbformat_minor": 5})


# -- suppressions ---------------------------------------------------------------------------------

@pytest.mark.parametrize("comment", ["# noqa", "# noqa: CC104", "# noqa: E501, CC104",
                                     "# clipcheck: ignore[zero-grad-before-step]",
                                     "# clipcheck: ignore[CC101, CC104]"])
def test_a_comment_on_the_line_suppresses_the_finding(tmp_path: Path, comment: str) -> None:
    write(tmp_path, "train.py", BAD.replace("optimizer.zero_grad()", f"optimizer.zero_grad()  {comment}"))
    assert run_json("train.py", cwd=tmp_path) == (0, [])


def test_a_comment_for_another_rule_or_tool_suppresses_nothing(tmp_path: Path) -> None:
    for comment in ("# noqa: E501", "# noqa: CC101", "# clipcheck: ignore[clip-after-step]",
                    "x = '# noqa'"):
        text = BAD.replace("optimizer.zero_grad()", f"optimizer.zero_grad()  {comment}" if comment[0] == "#"
                           else f"optimizer.zero_grad(); {comment}")
        write(tmp_path, "train.py", text)
        code, findings = run_json("train.py", cwd=tmp_path)
        assert (code, [f["code"] for f in findings]) == (1, ["CC104"]), comment


def test_unused_suppressions_are_reported_on_request(tmp_path: Path) -> None:
    write(tmp_path, "train.py", CLEAN.replace("optimizer.step()", "optimizer.step()  # noqa: CC102"))
    assert run_json("train.py", cwd=tmp_path) == (0, [])
    result = run_clipcheck("check", "--report-unused-suppressions", "--output-format", "json", "train.py",
                           cwd=tmp_path)
    found = json.loads(result.stdout)
    assert result.returncode == 1
    assert [(f["code"], f["rule"], f["line"]) for f in found] == [("CC900", "unused-suppression", 8)]


# -- configuration --------------------------------------------------------------------------------

def test_nearest_pyproject_configures_the_files_below_it(tmp_path: Path) -> None:
    write(tmp_path, "pyproject.toml",
          '[project]\nname = "x"\n\n[tool.clipcheck]\nignore = ["zero-grad-before-step"]\n')
    write(tmp_path, "pkg/train.py", BAD)
    write(tmp_path, "pkg/strict/clipcheck.toml", 'select = ["CC1"]\n')
    write(tmp_path, "pkg/strict/train.py", BAD)
    write(tmp_path, "pkg/generated/train.py", BAD)
    write(tmp_path, "pkg/legacy/old.py", BAD)
    with (tmp_path / "pyproject.toml").open("a") as config:
        config.write('extend-exclude = ["pkg/generated/"]\n[tool.clipcheck.per-file-ignores]\n'
                     '"pkg/legacy/*.py" = ["CC1"]\n')
    code, findings = run_json(cwd=tmp_path)
    assert (code, [(f["path"], f["code"]) for f in findings]) == (1, [("pkg/strict/train.py", "CC104")])
    # The command line wins: --select replaces the configured selection.
    code, findings = run_json("--select", "CC302", "pkg/strict/train.py", cwd=tmp_path)
    assert (code, findings) == (0, [])


@pytest.mark.parametrize(("config", "named"), [
    ('[tool.clipcheck]\nselekt = ["CC1"]\n', "unknown key `selekt`"),
    ('[tool.clipcheck]\nignore = ["no-such-rule"]\n', "unknown rule 'no-such-rule'"),
    ('[tool.clipcheck]\nignore = "CC101"\n', "`ignore`"),
    ("[tool.clipcheck\n", "not valid TOML"),
    ('[tool.clipcheck.vocabulary]\nbackwards = ["a.b"]\n', "unknown key `vocabulary.backwards`"),
    ('[tool.clipcheck.vocabulary]\nclip = ["clip all"]\n', "not a dotted name"),
])
def test_a_bad_configuration_is_a_usage_error_naming_it(tmp_path: Path, config: str, named: str) -> None:
    write(tmp_path, "pyproject.toml", config)
    write(tmp_path, "train.py", BAD)
    result = run_clipcheck("check", "train.py", cwd=tmp_path)
    assert result.returncode == 2
    assert named in result.stderr and "pyproject.toml" in result.stderr


def test_show_settings(tmp_path: Path) -> None:
    write(tmp_path, "pyproject.toml", '[tool.clipcheck]\nselect = ["CC10"]\nextend-select = ["CC302"]\n')
    write(tmp_path, "train.py", BAD)
    result = run_clipcheck("check", "--show-settings", "--ignore", "CC103", "train.py", cwd=tmp_path)
    assert result.returncode == 0
    assert "pyproject.toml" in result.stdout
    assert "CC104 (zero-grad-before-step)" in result.stdout and "CC302" in result.stdout
    assert "CC103" not in result.stdout and "CC301" not in result.stdout


# -- a forgiving command line ---------------------------------------------------------------------

def test_paths_are_reported_as_given_and_each_file_once(tmp_path: Path) -> None:
    write(tmp_path, "src/train.py", BAD)
    code, findings = run_json("./src", "src/train.py", "src/../src/train.py", cwd=tmp_path)
    assert (code, [f["path"] for f in findings]) == (1, ["./src/train.py"])


def test_only_top_level_build_and_env_folders_are_skipped(tmp_path: Path) -> None:
    for folder in ("build", "env", "venv", "pkg/env", "pkg/build", "more"):
        write(tmp_path, f"{folder}/train.py", BAD)
    _, findings = run_json(cwd=tmp_path)
    assert [f["path"] for f in findings] == ["more/train.py", "pkg/build/train.py", "pkg/env/train.py"]
    _, findings = run_json("--exclude", "pkg/env", "--exclude", "more/*.py", cwd=tmp_path)
    assert [f["path"] for f in findings] == ["pkg/build/train.py"]


def test_an_unreadable_file_is_cc000_and_the_json_stays_an_array(tmp_path: Path) -> None:
    (tmp_path / "gone.py").symlink_to(tmp_path / "nowhere.py")
    write(tmp_path, "train.py", BAD)
    code, findings = run_json("gone.py", "train.py", cwd=tmp_path)
    assert code == 2
    assert [(f["path"], f["code"]) for f in findings] == [("gone.py", "CC000"), ("train.py", "CC104")]
    assert "cannot read the file" in findings[0]["message"]


def test_a_run_that_checks_nothing_says_so(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = run_clipcheck("check", "empty", cwd=tmp_path)
    assert result.returncode == 0
    assert "no Python file or notebook was found" in result.stderr


def test_a_pep263_coding_line_is_honoured(tmp_path: Path) -> None:
    write(tmp_path, "train.py", ("# -*- coding: latin-1 -*-\n# caf\xe9\n" + BAD).encode("latin-1"))
    code, findings = run_json("train.py", cwd=tmp_path)
    assert (code, [(f["code"], f["line"]) for f in findings]) == (1, [("CC104", 10)])


def test_a_syntax_error_points_where_cpython_does(tmp_path: Path) -> None:
    write(tmp_path, "train.py", "def train(model):\n    loss.backward(\n    optimizer.step()\nx = (]\n")
    code, findings = run_json("train.py", cwd=tmp_path)
    try:
        compile((tmp_path / "train.py").read_text(), "train.py", "exec")
    except SyntaxError as error:
        expected = (error.lineno, error.offset)
    assert code == 2 and (findings[0]["line"], findings[0]["column"]) == expected


def test_pathological_nesting_is_cc000(tmp_path: Path) -> None:
    write(tmp_path, "deep.py", "x = " + "(" * 5000 + ")" * 5000 + "\nloss.backward()\n")
    write(tmp_path, "train.py", BAD)
    code, findings = run_json(cwd=tmp_path)
    assert code == 2 and [f["code"] for f in findings] == ["CC000", "CC104"]


def test_standard_input(tmp_path: Path) -> None:
    result = subprocess.run([*clipcheck_command(), "check", "--output-format", "json", "--stdin-filename",
                             "job/train.py", "-"], input=BAD, capture_output=True, text=True, cwd=tmp_path,
                            timeout=120, check=False)
    assert result.returncode == 1
    assert [(f["path"], f["line"]) for f in json.loads(result.stdout)] == [("job/train.py", 8)]


def test_exit_zero_quiet_statistics_and_colour(tmp_path: Path) -> None:
    write(tmp_path, "train.py", BAD)
    assert run_clipcheck("check", "--exit-zero", "train.py", cwd=tmp_path).returncode == 0
    quiet = run_clipcheck("check", "-q", "--output-format", "concise", "train.py", cwd=tmp_path)
    assert quiet.stdout.splitlines() == [quiet.stdout.splitlines()[0]] and "Found" not in quiet.stdout
    stats = run_clipcheck("check", "--statistics", "train.py", cwd=tmp_path)
    assert stats.stdout.split() == ["1", "CC104", "zero-grad-before-step"] and stats.returncode == 1
    coloured = run_clipcheck("check", "--color", "always", "train.py", cwd=tmp_path)
    assert "\x1b[" in coloured.stdout
    assert "\x1b[" not in run_clipcheck("check", "train.py", cwd=tmp_path).stdout  # not a terminal
    assert run_clipcheck("-h").returncode == 0


# -- output for CI ---------------------------------------------------------------------------------

def test_sarif_validates_against_the_2_1_0_schema(tmp_path: Path) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    write(tmp_path, "src/train.py", BAD)
    write(tmp_path, "nb.ipynb", notebook(("code", BAD)))
    write(tmp_path, "broken.py", "def (:\n")
    result = run_clipcheck("check", "--output-format", "sarif", ".", cwd=tmp_path)
    log = json.loads(result.stdout)
    schema = json.loads((ROOT / "tests" / "data" / "sarif-schema-2.1.0.json").read_text())
    jsonschema.validate(log, schema)
    run = log["runs"][0]
    rules = {r["id"]: r for r in run["tool"]["driver"]["rules"]}
    assert rules["CC104"]["help"]["markdown"].startswith("# CC104 zero-grad-before-step")
    uris = sorted(r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] for r in run["results"])
    assert uris == ["broken.py", "nb.ipynb", "src/train.py"]
    # Fingerprints survive the finding moving down the file.
    write(tmp_path, "src/train.py", "\n\n" + BAD)
    moved = json.loads(run_clipcheck("check", "--output-format", "sarif", "src", cwd=tmp_path).stdout)
    before = [r["partialFingerprints"] for r in run["results"] if r["ruleId"] == "CC104"
              and r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == "src/train.py"]
    assert [r["partialFingerprints"] for r in moved["runs"][0]["results"]] == before


WORKFLOW_COMMAND = re.compile(r"^::(error|warning) file=[^,:]+,line=\d+,col=\d+,endLine=\d+,endColumn=\d+,"
                              r"title=[^:,]+::[^\r\n]+$")


def test_github_annotations_parse_as_workflow_commands(tmp_path: Path) -> None:
    write(tmp_path, "train.py", BAD.replace("optimizer.step()", "optimizer.step()  # noqa: CC101"))
    write(tmp_path, "bad%name.py", "def (:\n")
    result = run_clipcheck("check", "--output-format", "github", "--report-unused-suppressions", ".",
                           cwd=tmp_path)
    lines = result.stdout.splitlines()
    assert lines and all(WORKFLOW_COMMAND.match(line) for line in lines), lines
    assert [line.split(" ", 1)[0] for line in lines] == ["::error", "::error", "::warning"]
    assert "bad%25name.py" in lines[0]


# -- notebooks -------------------------------------------------------------------------------------

def test_notebook_findings_name_the_cell_and_the_line_in_it(tmp_path: Path) -> None:
    train = ("for x, y in loader:\n    loss = model(x).sum()\n    loss.backward()\n"
             "    optimizer.zero_grad()\n    optimizer.step()\n")
    setup = "%matplotlib inline\nimport torch\n!pip install tqdm\nfiles = !ls\n"
    write(tmp_path, "nb.ipynb", notebook(("markdown", "# Training\n"), ("code", setup),
                                         ("code", "%%time\n" + train), ("code", "%%bash\nls -la (\n")))
    code, findings = run_json("nb.ipynb", cwd=tmp_path)
    assert code == 1
    assert [(f["cell"], f["line"], f["column"], f["code"]) for f in findings] == [(3, 5, 5, "CC104")]
    assert "line 4" in findings[0]["message"] and "line 6" in findings[0]["message"]
    text = run_clipcheck("check", "nb.ipynb", cwd=tmp_path).stdout
    assert text.startswith("nb.ipynb:cell 3:5:5: CC104 zero-grad-before-step")
    assert "    optimizer.zero_grad()" in text


def test_unused_suppressions_in_a_notebook_name_their_cell(tmp_path: Path) -> None:
    write(tmp_path, "nb.ipynb", notebook(("code", "import torch\n"), ("code", CLEAN.replace(
        "optimizer.step()", "optimizer.step()  # noqa: CC102"))))
    result = run_clipcheck("check", "--report-unused-suppressions", "--output-format", "json", "nb.ipynb",
                           cwd=tmp_path)
    assert [(f["code"], f["cell"], f["line"]) for f in json.loads(result.stdout)] == [("CC900", 2, 8)]


def test_a_broken_notebook_is_cc000(tmp_path: Path) -> None:
    write(tmp_path, "a.ipynb", "{not json")
    write(tmp_path, "b.ipynb", '{"cells": 3}')
    write(tmp_path, "c.ipynb", notebook(("code", "def train(:\n")))
    write(tmp_path, "train.py", BAD)
    code, findings = run_json(cwd=tmp_path)
    assert code == 2
    assert [(f["path"], f["code"]) for f in findings] == [
        ("a.ipynb", "CC000"), ("b.ipynb", "CC000"), ("c.ipynb", "CC000"), ("train.py", "CC104")]


# -- rule pages ------------------------------------------------------------------------------------

def test_explain_and_rules_json(tmp_path: Path) -> None:
    by_code = run_clipcheck("explain", "CC104")
    by_name = run_clipcheck("explain", "zero-grad-before-step")
    assert by_code.returncode == 0 and by_code.stdout == by_name.stdout
    assert run_clipcheck("explain", "CC999").returncode == 2
    rules = json.loads(run_clipcheck("rules", "--output-format", "json").stdout)
    assert {"code": "CC104", "name": "zero-grad-before-step"}.items() <= rules[3].items()
    assert all(r["summary"] and r["explanation"] for r in rules)


# -- the project's own vocabulary -----------------------------------------------------------------

IN_HOUSE = """from mylib import Trainer
from mylib.utils import apply_update, clip_all


def fit(model, loader, optimizer):
    trainer = Trainer(model)
    for batch in loader:
        optimizer.zero_grad()
        clip_all(model.parameters())
        trainer.backward(model(batch).sum())
        apply_update(optimizer)
"""


def test_in_house_trainers_join_the_vocabulary(tmp_path: Path) -> None:
    write(tmp_path, "train.py", IN_HOUSE)
    assert run_json("train.py", cwd=tmp_path) == (0, [])  # unknown calls: silence, not a guess
    write(tmp_path, "pyproject.toml", '[tool.clipcheck.vocabulary]\n'
                                      'backward = ["mylib.Trainer.backward"]\n'
                                      'clip = ["mylib.utils.clip_all"]\n'
                                      'step = ["mylib.utils.apply_update"]\n')
    code, findings = run_json("train.py", cwd=tmp_path)
    assert (code, [(f["code"], f["line"]) for f in findings]) == (1, [("CC101", 9)])
    fixed = IN_HOUSE.replace("        clip_all(model.parameters())\n", "").replace(
        "        apply_update", "        clip_all(model.parameters())\n        apply_update")
    write(tmp_path, "train.py", fixed)
    assert run_json("train.py", cwd=tmp_path) == (0, [])
