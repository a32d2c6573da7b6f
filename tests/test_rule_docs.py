"""Every rule has a page; its bad example triggers the rule and its fixed example is clean."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import run_json

from clipcheck.docs import rule_doc
from clipcheck.static.rules import RULES, Rule

SECTIONS = ("## What it does", "## Why it is bad", "## Example", "## Fix", "## When it stays silent")
CODE = re.compile(r"```python\n(.*?)```", re.S)


def example(page: str, section: str) -> str:
    body = page.split(section, 1)[1].split("\n## ", 1)[0]
    match = CODE.search(body)
    assert match, f"no python example under {section}"
    return match.group(1)


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.name)
def test_rule_page(rule: Rule, tmp_path: Path) -> None:
    page = rule_doc(rule)
    assert page.startswith(f"# {rule.code} {rule.name}\n")
    for section in SECTIONS:
        assert section in page, f"{rule.name}: missing {section}"
    (tmp_path / "bad.py").write_text(example(page, "## Example"))
    (tmp_path / "good.py").write_text(example(page, "## Fix"))
    _, findings = run_json("bad.py", "good.py", cwd=tmp_path)
    assert {(f["path"], f["rule"]) for f in findings} == {("bad.py", rule.name)}
