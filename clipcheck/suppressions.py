"""Suppression comments on the line a finding points at: ``# noqa`` (all rules),
``# noqa: CC101, CC105`` (codes; other tools' codes are left alone) and
``# clipcheck: ignore[clip-before-backward, CC102]`` (names or codes)."""

from __future__ import annotations

import io
import re
import tokenize
from collections.abc import Sequence
from typing import NamedTuple

from clipcheck.config import ConfigError, rules_matching
from clipcheck.findings import Finding

_CODE_LIST = r"[A-Za-z]+[0-9]+(?:\s*,?\s*[A-Za-z]+[0-9]+)*"
_NOQA = re.compile(r"#\s*" + "noqa" + r"(?![\w-])(?:\s*:\s*(?P<codes>" + _CODE_LIST + "))?", re.IGNORECASE)
_IGNORE = re.compile(r"#\s*clipcheck\s*:\s*ignore\[(?P<rules>[^\]]*)\]")
_OUR_CODE = re.compile(r"^CC\d{3}$", re.IGNORECASE)

UNUSED_CODE = "CC900"
UNUSED_NAME = "unused-suppression"


class Suppression(NamedTuple):
    line: int
    column: int
    codes: frozenset[str] | None  # None: every rule (a bare noqa comment)
    text: str
    used: set[str]  # the codes it suppressed: filled as findings are matched

    def covers(self, finding: Finding) -> bool:
        return self.codes is None or finding.code in self.codes


def _codes(entries: Sequence[str]) -> frozenset[str]:
    """Codes of the entries naming a clipcheck rule (an unknown entry names none)."""
    found: set[str] = set()
    for entry in entries:
        try:
            found.update(r.code for r in rules_matching(entry))
        except ConfigError:
            continue
    return frozenset(found)


def _entries(text: str) -> list[str]:
    return [part.strip() for part in re.split(r"[,\s]+", text) if part.strip()]


def parse(source: str) -> dict[int, Suppression]:
    """The suppression comment of each line, by line number (comments only, never strings)."""
    found: dict[int, Suppression] = {}
    if _IGNORE.search(source) is None and _NOQA.search(source) is None:
        return found  # no comment can hold one (a comment is part of the text): no tokenizing
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (tokenize.TokenError, SyntaxError, IndentationError):
        return found
    for token in tokens:
        if token.type != tokenize.COMMENT:
            continue
        line, column = token.start
        ignore = _IGNORE.search(token.string)
        noqa = _NOQA.search(token.string)
        if ignore is not None:
            named = _codes(_entries(ignore.group("rules")))
            found[line] = Suppression(line, column + 1, named, token.string, set())
        elif noqa is not None:
            listed = noqa.group("codes")
            codes = None if listed is None else _codes([c for c in _entries(listed) if _OUR_CODE.match(c)])
            if codes is None or codes or listed is None:
                found[line] = Suppression(line, column + 1, codes, token.string, set())
    return found


def apply(findings: list[Finding], suppressions: dict[int, Suppression]) -> list[Finding]:
    """The findings no comment on their line suppresses (CC000 is never suppressed)."""
    kept: list[Finding] = []
    for finding in findings:
        suppression = suppressions.get(finding.line)
        if suppression is not None and not finding.unanalysable and suppression.covers(finding):
            suppression.used.add(finding.code)
            continue
        kept.append(finding)
    return kept


def unused(path: str, suppressions: dict[int, Suppression]) -> list[Finding]:
    """A finding for each suppression of clipcheck codes that suppressed nothing (a bare
    ``# noqa`` may be there for another tool and is not reported)."""
    out: list[Finding] = []
    for s in suppressions.values():
        if s.codes is None:
            continue
        idle = sorted(s.codes - s.used)
        if idle:
            out.append(Finding(path, s.line, s.column, s.line, s.column + len(s.text), UNUSED_CODE,
                               UNUSED_NAME, f"unused suppression of {', '.join(idle)}: no such finding on "
                               "this line. Remove it (it would hide a future finding here)."))
    return out
