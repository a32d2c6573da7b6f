"""Checking sources: read, decode, parse, analyse, suppress. Returns findings and never prints;
every input that cannot be analysed becomes a CC000 finding with its reason, and the run goes on."""

from __future__ import annotations

import ast
import functools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import libcst as cst

from clipcheck import notebooks, suppressions
from clipcheck.config import Resolver
from clipcheck.findings import Finding, in_cell, unanalysable
from clipcheck.fixes import fix_text, unified_diff, write_whole
from clipcheck.sources import Source, Unreadable, decode, discover, read_bytes
from clipcheck.static.analysis import ModuleAnalysis
from clipcheck.static.frameworks.custom import NONE as NO_CUSTOM_VOCABULARY
from clipcheck.static.frameworks.custom import Vocabulary
from clipcheck.static.rules import RULES, Rule

# Words without which a file cannot contain a training event: files lacking all of them are
# only checked for syntax, never analysed.
RELEVANT_WORDS = ("backward", "step", "grad", "parameters", "scale")


@dataclass
class Report:
    """The findings of a run, sorted; the lines of each file (or notebook cell) that has some,
    for text output; how many sources were checked."""

    findings: list[Finding] = field(default_factory=list)
    lines: dict[tuple[str, int | None], list[str]] = field(default_factory=dict)
    checked: int = 0
    fixed: int = 0  # fixes written
    diffs: list[str] = field(default_factory=list)  # with --diff: the fixes not written

    def line_text(self, finding: Finding) -> str | None:
        lines = self.lines.get((finding.path, finding.cell), [])
        return lines[finding.line - 1] if 0 < finding.line <= len(lines) else None


def might_train(source: str) -> bool:
    return any(word in source for word in RELEVANT_WORDS)


def _syntax_error(source: str, shown: str) -> tuple[str, int, int] | None:
    """CPython's verdict first: the exact position of a syntax error, and a cheap refusal of
    pathological nesting (before LibCST's recursive parser sees it)."""
    try:
        compile(source, shown, "exec", ast.PyCF_ONLY_AST, dont_inherit=True)
    except SyntaxError as error:
        return f"syntax error: {error.msg}", error.lineno or 1, error.offset or 1
    except (RecursionError, MemoryError):
        return "the file nests too deeply to analyse", 1, 1
    except ValueError as error:  # e.g. a null byte
        return f"cannot be parsed: {error}", 1, 1
    return None


def analyse_source(source: str, shown: str, rules: Sequence[Rule] = RULES,
                   custom: Vocabulary = NO_CUSTOM_VOCABULARY) -> list[Finding]:
    """Findings for one program's text (syntax errors included, as CC000)."""
    error = _syntax_error(source, shown)
    if error is not None:
        return [unanalysable(shown, *error)]
    if not might_train(source) or not rules:
        return []
    try:
        module = cst.parse_module(source)
    except cst.ParserSyntaxError as failure:
        return [unanalysable(shown, f"syntax error: {failure.message}", failure.raw_line,
                             failure.raw_column + 1)]
    except RecursionError:
        return [unanalysable(shown, "the file nests too deeply to analyse")]
    try:
        return ModuleAnalysis(module, rules, custom).findings(shown)
    except RecursionError:
        return [unanalysable(shown, "the file nests too deeply to analyse")]


@dataclass
class Checked:
    """One source's findings, the lines to show them with, and its suppression comments."""

    findings: list[Finding]
    lines: dict[int | None, list[str]]
    suppressions: dict[int, suppressions.Suppression]
    # Where a finding on the analysed text belongs (a notebook's cell); others stay put.
    relocate: Callable[[Finding], Finding] = lambda finding: finding


# "line 12", "lines 12 and 30", "lines 3, 12 and 30" in a message: the program's lines.
_LINES = re.compile(r"\blines? \d+(?:, \d+)*(?: and \d+)?")


def _cell_lines(match: re.Match[str], *, nb: notebooks.Program, cell: int) -> str:
    """A message's program line numbers as notebook places (``line 4 of cell 2`` when the
    line is in another cell than the finding's)."""
    def place(number: re.Match[str]) -> str:
        other, line = nb.place(int(number.group()))
        return str(line) if other == cell else f"{line} of cell {other}"

    return re.sub(r"\d+", place, match.group())


# One source's analysis: its text in, its findings out (with its name, rules and vocabulary bound).
Analyse = Callable[[str], list[Finding]]


def _in_notebook(finding: Finding, nb: notebooks.Program) -> Finding:
    """A finding on the notebook's program, placed in its cell (messages too)."""
    cell, line = nb.place(finding.line)
    end_cell, end_line = nb.place(finding.end_line)
    message = _LINES.sub(functools.partial(_cell_lines, nb=nb, cell=cell), finding.message)
    return replace(in_cell(finding, cell, line, end_line if end_cell == cell else line), message=message)


def _check_notebook(text: str, shown: str, analyse: Analyse) -> Checked:
    try:
        nb = notebooks.program(text)
    except notebooks.BrokenNotebook as error:
        return Checked([unanalysable(shown, str(error))], {}, {})
    comments = suppressions.parse(nb.text)
    kept = suppressions.apply(analyse(nb.text), comments)
    lines: dict[int | None, list[str]] = {cell: text for cell, text in nb.cells.items()}
    relocate = functools.partial(_in_notebook, nb=nb)
    return Checked([relocate(f) for f in kept], lines, comments, relocate)


@dataclass(frozen=True)
class Fixing:
    """What ``--fix``/``--diff`` asked for: unsafe fixes too, and whether to only show them."""

    unsafe: bool = False
    diff: bool = False


def _fix(source: Source, text: str, encoding: str, analyse: Analyse, fixing: Fixing,
         report: Report) -> tuple[str, list[Finding]]:
    """Make the fixes in ``text``; write the file (or, with ``diff``, keep the diff). The text
    the findings are then reported on, and its findings."""
    fixed, count, findings = fix_text(text, analyse, fixing.unsafe)
    if not count:
        return text, findings
    if source.path is None or fixing.diff:
        if source.path is not None:
            report.diffs.append(unified_diff(text, fixed, source.shown))
        return text, analyse(text)  # nothing written: the findings are those of the text as it is
    try:
        write_whole(source.path, fixed.encode(encoding))
    except (OSError, UnicodeEncodeError) as error:
        raise Unreadable(f"cannot write the fixed file (left unchanged): {error}") from None
    report.fixed += count
    return fixed, findings


def check_source(source: Source, analyse: Analyse, fixing: Fixing | None = None,
                 report: Report | None = None) -> Checked:
    """Findings for one source (or its CC000), with its lines and suppression comments; with
    ``fixing``, after its fixes (notebooks and standard input are never rewritten)."""
    try:
        data = read_bytes(source)
        if source.is_notebook:
            try:
                return _check_notebook(data.decode("utf-8-sig"), source.shown, analyse)
            except UnicodeDecodeError:
                raise Unreadable("not a notebook: not UTF-8") from None
        text, encoding = decode(data)
        if fixing is not None and report is not None:
            text, found = _fix(source, text, encoding, analyse, fixing, report)
        else:
            found = analyse(text)
    except Unreadable as reason:
        return Checked([unanalysable(source.shown, str(reason))], {}, {})
    comments = suppressions.parse(text)
    return Checked(suppressions.apply(found, comments), {None: text.splitlines()}, comments)


def check(paths: Sequence[str], resolver: Resolver, force_exclude: bool = False,
          report_unused: bool = False, stdin_name: str | None = None, fixing: Fixing | None = None) -> Report:
    """Every source ``paths`` name, each with the settings in effect for it (standard input's
    by the name it is given)."""
    report = Report()
    for source in discover(paths, resolver.excluded, force_exclude, stdin_name):
        where = source.path if source.path is not None else Path(source.shown)
        settings = resolver.for_path(where)
        analyse = functools.partial(analyse_source, shown=source.shown, rules=settings.rules_for(where),
                                    custom=settings.vocabulary)
        checked = check_source(source, analyse, fixing, report)
        report.checked += source.missing is None
        found = checked.findings
        if report_unused:
            unused = suppressions.unused(source.shown, checked.suppressions)
            found = found + [checked.relocate(f) for f in unused]
        report.findings.extend(found)
        if found:
            for cell, lines in checked.lines.items():
                report.lines[(source.shown, cell)] = lines
    report.findings.sort(key=lambda f: (f.path, f.cell or 0, f.line, f.column, f.code))
    return report
