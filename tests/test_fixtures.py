"""Every fixture's ``# expect:`` markers agree exactly with what the CLI reports."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest
from conftest import FIXTURES, ROOT, run_json

EXPECT = re.compile(r"#\s*expect:\s*([a-z0-9, -]+?)\s*$")
FIXTURE_FILES = sorted(FIXTURES.rglob("*.py"))


def expected_findings(path: Path) -> Counter[tuple[int, str]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    if lines and EXPECT.search(lines[0]) and EXPECT.search(lines[0]).group(1) == "none":
        return Counter()
    expected: Counter[tuple[int, str]] = Counter()
    for number, line in enumerate(lines, start=1):
        match = EXPECT.search(line)
        if match:
            for name in match.group(1).split(","):
                expected[(number, name.strip())] += 1
    return expected


@pytest.fixture(scope="module")
def reported() -> dict[str, Counter[tuple[int, str]]]:
    _, findings = run_json(str(FIXTURES.relative_to(ROOT)))
    by_path: dict[str, Counter[tuple[int, str]]] = {}
    for f in findings:
        by_path.setdefault(str(f["path"]), Counter())[(int(f["line"]), str(f["rule"]))] += 1
    return by_path


def test_every_fixture_declares_its_expectation() -> None:
    assert FIXTURE_FILES
    for path in FIXTURE_FILES:
        first = path.read_text(encoding="utf-8").splitlines()[0]
        has_markers = bool(expected_findings(path))
        assert has_markers or "expect: none" in first, f"{path} has no # expect: marker"


@pytest.mark.parametrize("path", FIXTURE_FILES, ids=lambda p: str(p.relative_to(FIXTURES)))
def test_fixture(path: Path, reported: dict[str, Counter[tuple[int, str]]]) -> None:
    got = reported.get(str(path.relative_to(ROOT)), Counter())
    assert got == expected_findings(path)


def test_every_rule_has_bad_and_good_fixtures() -> None:
    from clipcheck.static.rules import RULES

    for rule in RULES:
        folder = FIXTURES / rule.name
        bad = [p for p in folder.glob("bad_*.py") if rule.name in p.read_text(encoding="utf-8")]
        good = list(folder.glob("good_*.py"))
        assert len(bad) >= 3 and len(good) >= 3, rule.name
