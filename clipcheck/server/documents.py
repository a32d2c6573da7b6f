"""What the language server analyses, and what it tells about a finding, without pygls: a
buffer's findings under the settings the command line would use for its path, the lines a
message names, the ``# noqa`` edit that silences a finding, and a rule's hover text."""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path

from clipcheck import suppressions
from clipcheck.catalogue import BY_CODE
from clipcheck.config import ConfigError, Overrides, Resolver
from clipcheck.docs import rule_doc, rule_doc_path
from clipcheck.engine import Task, check_text, run_task
from clipcheck.findings import Finding, unanalysable
from clipcheck.sources import source_lines


@dataclass(frozen=True)
class Part:
    """A text the editor shows: a whole document, or one cell of a notebook (``code`` tells a
    Python cell from a markdown cell or a cell in another language)."""

    uri: str
    text: str
    version: int | None
    code: bool = True


@dataclass(frozen=True)
class Snapshot:
    """A document as it stood when its analysis began: its path on disk (``None`` for an
    unsaved buffer) and its parts; a notebook has one part per cell, in order."""

    key: str  # the document's (or notebook's) URI
    path: Path | None
    parts: tuple[Part, ...]
    notebook: bool = False

    @property
    def signature(self) -> tuple[tuple[str, str, bool], ...]:
        """Equal for two snapshots whose analysis must be equal (settings aside)."""
        return tuple((p.uri, p.text, p.code) for p in self.parts)

    @property
    def shown(self) -> str:
        return str(self.path) if self.path is not None else self.key


@dataclass(frozen=True)
class Analysis:
    """A snapshot's findings, by the URI of the part each one is in."""

    snapshot: Snapshot
    findings: dict[str, list[Finding]]


def analyse(snapshot: Snapshot) -> Analysis:
    """The findings the command line would report for the snapshot's text at its path, with
    the configuration read afresh (an edited ``pyproject.toml`` counts at once); nothing for
    a path the configuration excludes. A configuration that cannot be used is one CC000."""
    try:
        resolver = Resolver(Overrides())
        settings = resolver.for_path(snapshot.path)
        if snapshot.path is not None and resolver.excluded(snapshot.path):
            return Analysis(snapshot, {})
    except ConfigError as error:
        return _placed(snapshot, [unanalysable(snapshot.shown, f"cannot use the configuration: {error}")])
    rules = tuple(r.code for r in settings.rules_for(snapshot.path))
    unused = settings.reports_unused(snapshot.path)  # CC900, where the configuration selects it
    try:
        if snapshot.notebook:
            data = _notebook_json(snapshot.parts).encode()
            found = run_task(Task(snapshot.shown, None, data, rules, settings.vocabulary,
                                  report_unused=unused)).findings
        else:
            text = snapshot.parts[0].text
            found = check_text(text, snapshot.shown, rules, settings.vocabulary, unused)
    except Exception as error:  # a bug must not silence the buffer: the CLI's workers say so too
        found = [unanalysable(snapshot.shown, f"clipcheck failed on this buffer (a bug): {error!r}")]
    return _placed(snapshot, found)


def _notebook_json(parts: tuple[Part, ...]) -> str:
    """The cells as a notebook file, so that the engine masks IPython's syntax and numbers the
    cells (markdown included) as it does for an ``.ipynb`` on disk."""
    cells = [{"cell_type": "code" if p.code else "markdown", "source": p.text} for p in parts]
    return json.dumps({"cells": cells, "nbformat": 4, "nbformat_minor": 5, "metadata": {}})


def _placed(snapshot: Snapshot, found: list[Finding]) -> Analysis:
    """The findings by the URI of their part: a notebook's by cell (a finding without one, such
    as a configuration error, at the first code cell)."""
    if not snapshot.notebook:
        return Analysis(snapshot, {snapshot.key: found} if found else {})
    first = next((i for i, p in enumerate(snapshot.parts, start=1) if p.code), None)
    by_uri: dict[str, list[Finding]] = {}
    for finding in found:
        cell = finding.cell or first
        if cell is not None and 0 < cell <= len(snapshot.parts):
            by_uri.setdefault(snapshot.parts[cell - 1].uri, []).append(finding)
    return Analysis(snapshot, by_uri)


@dataclass(frozen=True)
class Mention:
    """A line a message names (``the step at line 25``): the phrase, the line, and its cell
    (``None``: the finding's own part)."""

    label: str
    line: int
    cell: int | None = None


_NUMBER = r"\d+(?: of cell \d+)?"
# ``line 12``, ``lines 12 and 30``; in a notebook ``line 4 of cell 2`` for another cell's line.
_LINES = re.compile(rf"\blines? {_NUMBER}(?:, {_NUMBER})*(?: and {_NUMBER})?")
_PLACE = re.compile(r"(\d+)(?: of cell (\d+))?")
# Where the phrase naming a line begins: the message's start, punctuation, or a conjunction.
_PHRASE_START = re.compile(r".*(?:[:;,(]\s*|\b(?:that|before|after|between|onto|while|when)\s+)", re.DOTALL)


def mentions(message: str) -> list[Mention]:
    """The lines a finding's message names, each with the phrase that names it: ``the step at
    line 25``, ``the backward pass of this update (line 14)``."""
    found: list[Mention] = []
    for match in _LINES.finditer(message):
        label = _phrase(message, match.start(), match.group())
        for place in _PLACE.finditer(match.group()):
            cell = place.group(2)
            found.append(Mention(label, int(place.group(1)), int(cell) if cell is not None else None))
    return found


def _phrase(message: str, start: int, lines: str) -> str:
    before = message[:start]
    parenthesised = before.endswith("(")
    if parenthesised:
        before = before[:-1].rstrip()
    opening = _PHRASE_START.match(before)
    lead = before[opening.end():] if opening is not None else before
    return f"{lead} ({lines})" if parenthesised else f"{lead}{lines}"


_NOQA_CODES = re.compile(r"#\s*noqa\s*:\s*[A-Za-z]+[0-9]+(?:\s*,?\s*[A-Za-z]+[0-9]+)*", re.IGNORECASE)


def noqa_line(text: str, finding: Finding) -> str | None:
    """The finding's line with a ``# noqa`` comment that silences it: its code added to the
    line's ``# noqa: ...`` list, or a new comment at the end. ``None`` where no comment can go
    there (a line continued by a backslash, or inside a string): the new text is checked with
    the same reading of comments that the linter applies."""
    lines = source_lines(text)
    if not 0 < finding.line <= len(lines):
        return None
    line = lines[finding.line - 1]
    listed = _NOQA_CODES.search(line)
    if listed is not None:
        new = f"{line[:listed.end()]}, {finding.code}{line[listed.end():]}"
    else:
        body = line.rstrip()
        new = f"{body}  # noqa: {finding.code}" if body else f"# noqa: {finding.code}"
    lines[finding.line - 1] = new
    comment = suppressions.parse("\n".join(lines) + "\n").get(finding.line)
    return new if comment is not None and comment.covers(finding) else None


def rule_page_uri(code: str) -> str | None:
    """The rule's page as a file URI (the pages ship inside the package), for an editor's link."""
    rule = BY_CODE.get(code)
    return rule_doc_path(rule).as_uri() if rule is not None else None


@functools.cache
def hover_text(code: str) -> str | None:
    """Markdown for a hover on a finding: the rule's code, name and summary, and why the mistake
    matters (its page's "Why it is bad" section)."""
    rule = BY_CODE.get(code)
    if rule is None:
        return None
    why = _section(rule_doc(rule), "Why it is bad")
    return f"**{rule.code} {rule.name}**: {rule.summary}.\n\n{why}\n\nMore: `clipcheck explain {rule.code}`"


def _section(page: str, title: str) -> str:
    """The text under a ``## title`` heading of a rule page, up to the next heading."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", page, re.MULTILINE | re.DOTALL)
    return match.group(1).strip() if match is not None else ""
