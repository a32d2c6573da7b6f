"""Checking sources: read, decode, parse, analyse, suppress. Returns findings and never prints;
every input that cannot be analysed becomes a CC000 finding with its reason, and the run goes on."""

from __future__ import annotations

import codecs
import functools
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from clipcheck import suppressions
from clipcheck.cache import Cache, key
from clipcheck.config import Resolver
from clipcheck.findings import Finding, in_cell, unanalysable
from clipcheck.fixes import (
    ChangedMeanwhile,
    Fixes,
    apply_edits,
    apply_edits_by_cell,
    fix_text,
    unified_diff,
    write_whole,
)
from clipcheck.screen import screen
from clipcheck.sources import Unreadable, decode, discover, read_bytes, source_lines
from clipcheck.static.frameworks.custom import NONE as NO_CUSTOM_VOCABULARY
from clipcheck.static.frameworks.custom import Vocabulary
from clipcheck.workers import DEFAULT_LIMITS, Failure, Limits, Pool, Progress, usable_cores

if TYPE_CHECKING:  # notebooks are imported when one is checked
    from clipcheck import notebooks


@dataclass(eq=False)
class Report:
    """The findings of a run, sorted; the lines of each file (or notebook cell) that has some,
    for text output; how many sources were checked."""

    findings: list[Finding] = field(default_factory=list)
    lines: dict[tuple[str, int | None], list[str]] = field(default_factory=dict)
    checked: int = 0
    fixed: int = 0  # fixes written
    diffs: list[str] = field(default_factory=list)  # with --diff: the fixes not written
    notes: list[str] = field(default_factory=list)  # paths skipped, and why

    def line_text(self, finding: Finding) -> str | None:
        lines = self.lines.get((finding.path, finding.cell), [])
        return lines[finding.line - 1] if 0 < finding.line <= len(lines) else None


def analyse_source(source: str, shown: str, rules: Sequence[str] | None = None,
                   custom: Vocabulary = NO_CUSTOM_VOCABULARY, runs_as_a_file: bool = True) -> list[Finding]:
    """Findings for one program's text (syntax errors included, as CC000), by the rules whose
    codes ``rules`` lists (all by default); ``runs_as_a_file``: not a stub nor a notebook's
    cells joined (:func:`clipcheck.screen.screen`). LibCST and the analysis are imported only
    for a text the screen lets through."""
    screened = screen(source, shown, custom.words, runs_as_a_file=runs_as_a_file)
    if screened.error is not None:
        return [unanalysable(shown, *screened.error)]
    if screened.text is None or rules == ():
        return []
    from clipcheck.static.analysis import analyse_text

    return analyse_text(screened.text, shown, rules, custom, whole=source)


class Checked(NamedTuple):
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


def _in_cells(text: str, nb: notebooks.Program, cell: int) -> str:
    """A message's program lines as the lines of ``cell`` (and of other cells, named)."""
    return _LINES.sub(functools.partial(_cell_lines, nb=nb, cell=cell), text)


def _cell_fix(fix: dict[str, object], nb: notebooks.Program, cell: int) -> dict[str, object] | None:
    """A fix on the notebook's program as edits of its cells, described in the cell's lines;
    ``None`` where an edit has no certain place in a cell."""
    edits = [nb.cell_edit(edit) for edit in fix["edits"]]  # type: ignore[attr-defined]
    if any(edit is None for edit in edits):
        return None
    return {**fix, "message": _in_cells(str(fix["message"]), nb, cell), "edits": edits}


def _in_notebook(finding: Finding, nb: notebooks.Program) -> Finding:
    """A finding on the notebook's program, placed in its cell (messages and fixes too)."""
    cell, line = nb.place(finding.line)
    end_cell, end_line = nb.place(finding.end_line)
    fix = _cell_fix(finding.fix, nb, cell) if finding.fix is not None else None
    return in_cell(finding, cell, line, end_line if end_cell == cell else line)._replace(
        message=_in_cells(finding.message, nb, cell), fix=fix)


def _check_notebook(text: str, shown: str, analyse: Analyse, report_unused: bool) -> Checked:
    from clipcheck import notebooks

    try:
        nb = notebooks.program(text)
    except notebooks.BrokenNotebook as error:
        return Checked([unanalysable(shown, str(error))], {}, {})
    found = analyse(nb.text)
    comments = suppressions.parse(nb.text) if found or report_unused else {}
    kept = suppressions.apply(found, comments)
    lines: dict[int | None, list[str]] = {cell: text for cell, text in nb.cells.items()}
    relocate = functools.partial(_in_notebook, nb=nb)
    broken = [unanalysable(shown, f"cell {e.cell} is not Python: {e.message}", e.line, e.column)._replace(
        cell=e.cell) for e in nb.errors]
    return Checked(broken + [relocate(f) for f in kept], lines, comments, relocate)


def _check_python(text: str, analyse: Analyse, report_unused: bool) -> Checked:
    found = analyse(text)
    if not found and not report_unused:
        # Comments are read (a tokenizer's pass), and the lines that show findings split, only
        # where a finding or an unused suppression can come of them.
        return Checked([], {}, {})
    comments = suppressions.parse(text)
    return Checked(suppressions.apply(found, comments), {None: source_lines(text)}, comments)


def check_text(text: str, shown: str, rules: Sequence[str] | None = None,
               custom: Vocabulary = NO_CUSTOM_VOCABULARY, report_unused: bool = False) -> list[Finding]:
    """A Python text's findings as a run reports them: suppressions applied and, with
    ``report_unused``, the comments that suppress nothing. For a text already decoded (an
    editor's buffer), which a PEP 263 coding line must not reinterpret."""
    analyse = functools.partial(analyse_source, shown=shown, rules=rules, custom=custom)
    checked = _check_python(text, analyse, report_unused)
    idle = suppressions.unused(shown, checked.suppressions) if report_unused else []
    return checked.findings + idle


class Fixing(NamedTuple):
    """What ``--fix``/``--diff`` asked for: unsafe fixes too, and whether to only show them."""

    unsafe: bool = False
    diff: bool = False


class Task(NamedTuple):
    """One source as a worker receives it: its bytes, and the settings in effect for it."""

    shown: str
    path: Path | None  # ``None``: standard input, never rewritten
    data: bytes
    rules: tuple[str, ...]
    custom: Vocabulary = NO_CUSTOM_VOCABULARY
    fixing: Fixing | None = None
    report_unused: bool = False

    @property
    def notebook(self) -> bool:  # standard input named ``x.ipynb`` is one too
        return self.shown.endswith(".ipynb")

    @property
    def cache_key(self) -> str:
        """Everything the result depends on; with ``--fix`` there is no cached result."""
        return key(self.data, self.shown, self.rules, self.custom, self.report_unused)


class Outcome(NamedTuple):
    """A task's findings, the lines to show them with (none without findings), the fixes
    written and the diff of those not written."""

    findings: list[Finding]
    lines: dict[int | None, list[str]]
    fixed: int = 0
    diff: str | None = None


def _fix_cells(text: str, fixes: Fixes) -> tuple[str, int]:
    """A notebook's text with the fixes made in its cells, and how many were made."""
    from clipcheck import notebooks

    sources = notebooks.sources(text)
    edited, applied = apply_edits_by_cell(sources, fixes)
    changed = {cell: edited[cell] for cell in sources if edited[cell] != sources[cell]}
    return notebooks.rewrite(text, changed), applied


def _cells_diff(before: str, after: str, shown: str) -> str:
    """A notebook's fixes as one unified diff per changed cell (``a/nb.ipynb:cell 3``)."""
    from clipcheck import notebooks

    old, new = notebooks.sources(before), notebooks.sources(after)
    return "".join(unified_diff(old[cell], new[cell], f"{shown}:cell {cell}") for cell in old
                   if old[cell] != new[cell])


def _fix(task: Task, text: str, encoding: str,
         check: Callable[[str], Checked]) -> tuple[str, int, str | None]:
    """Make the fixes of the findings no comment suppresses in ``text`` (a notebook's in its
    cells); write the file (or, with ``diff``, keep the diff). The text then to report on, the
    fixes written and the diff."""
    assert task.fixing is not None
    fixed, count, _ = fix_text(text, lambda current: check(current).findings, task.fixing.unsafe,
                               _fix_cells if task.notebook else apply_edits)
    if not count:
        return text, 0, None
    if task.path is None or task.fixing.diff:  # nothing written: report on the text as it is
        diff = (_cells_diff if task.notebook else unified_diff)(text, fixed, task.shown)
        return text, 0, diff if task.path is not None else None
    try:
        write_whole(task.path, fixed.encode(encoding), task.data)
    except ChangedMeanwhile:
        raise Unreadable("the file changed while clipcheck fixed it: left as it is now, "
                         "run the fix again") from None
    except (OSError, UnicodeEncodeError) as error:
        raise Unreadable(f"cannot write the fixed file (left unchanged): {error}") from None
    return fixed, count, None


def _notebook_text(data: bytes) -> tuple[str, str]:
    """A notebook's text, and the encoding that writes it back (a byte-order mark kept)."""
    try:
        return data.decode("utf-8-sig"), "utf-8-sig" if data.startswith(codecs.BOM_UTF8) else "utf-8"
    except UnicodeDecodeError:
        raise Unreadable("not a notebook: not UTF-8") from None


def run_task(task: Task) -> Outcome:
    """A worker's job: one source's findings (or its CC000), suppressions applied; with
    fixing, after its fixes (standard input is never rewritten)."""
    analyse = functools.partial(analyse_source, shown=task.shown, rules=task.rules, custom=task.custom,
                                runs_as_a_file=not (task.notebook or task.shown.endswith(".pyi")))
    fixed, diff = 0, None
    unused = task.report_unused
    checker = (functools.partial(_check_notebook, shown=task.shown, analyse=analyse, report_unused=unused)
               if task.notebook else functools.partial(_check_python, analyse=analyse, report_unused=unused))
    check = functools.lru_cache(maxsize=1)(checker)  # fixing ends by checking the text it leaves
    try:
        text, encoding = _notebook_text(task.data) if task.notebook else decode(task.data)
        if task.fixing is not None:
            text, fixed, diff = _fix(task, text, encoding, check)
        checked = check(text)
    except Unreadable as reason:
        checked = Checked([unanalysable(task.shown, str(reason))], {}, {})
    findings = checked.findings
    if unused:
        idle = suppressions.unused(task.shown, checked.suppressions)
        findings = findings + [checked.relocate(f) for f in idle]
    return Outcome(findings, checked.lines if findings else {}, fixed, diff)


def _add(report: Report, shown: str, findings: list[Finding], lines: dict[int | None, list[str]]) -> None:
    report.findings.extend(findings)
    for cell, text in lines.items():
        report.lines[(shown, cell)] = text


def check(paths: Sequence[str], resolver: Resolver, force_exclude: bool = False,
          report_unused: bool = False, stdin_name: str | None = None, fixing: Fixing | None = None,
          jobs: int | None = None, cache: Cache | None = None, limits: Limits = DEFAULT_LIMITS,
          progress: Progress | None = None) -> Report:
    """Every source ``paths`` name, each with the settings in effect for it (standard input's
    by the name it is given), analysed in ``jobs`` worker processes (default: the usable
    cores) and, without fixing, looked up in and stored to ``cache``. ``progress`` is told
    how many sources are done, of how many, as each analysis ends (cached ones count as done)."""
    report = Report()
    tasks: list[Task] = []
    keys: list[str | None] = []  # each task's cache key, hashed once
    hits = 0  # sources found in the cache

    def analysed() -> Iterator[Task]:
        """The sources to analyse, each read as the workers take it, so that reading overlaps
        their work (those in the cache reported on the way)."""
        nonlocal hits
        for source in discover(paths, resolver.excluded, force_exclude, stdin_name):
            if source.skipped is not None:
                report.notes.append(f"{source.shown}: skipped, {source.skipped}")
                continue
            report.checked += source.missing is None
            try:
                data = read_bytes(source)
            except Unreadable as reason:
                report.findings.append(unanalysable(source.shown, str(reason)))
                continue
            where = source.path if source.path is not None else Path(source.shown)
            settings = resolver.for_path(where)
            task = Task(source.shown, source.path, data, tuple(r.code for r in settings.rules_for(where)),
                        settings.vocabulary, fixing, report_unused or settings.reports_unused(where))
            name = task.cache_key if cache is not None and fixing is None else None
            hit = cache.get(name) if cache is not None and name is not None else None
            if hit is not None:
                _add(report, task.shown, *hit)
                hits += 1
            else:
                tasks.append(task)
                keys.append(name)
                yield task

    told = (0, 0)  # what ``progress`` was last told

    def tell(done: int, total: int) -> None:
        nonlocal told
        told = (hits + done, hits + total)
        assert progress is not None
        progress(*told)

    pool = Pool(run_task, jobs or usable_cores(), limits, size=lambda task: len(task.data))
    results = pool.map(analysed(), None if progress is None else tell)
    final = (hits + len(tasks),) * 2
    if progress is not None and hits and told != final:
        progress(*final)  # sources found in the cache after the last result
    for task, name, result in zip(tasks, keys, results, strict=True):
        if isinstance(result, Failure):
            _add(report, task.shown, [unanalysable(task.shown, result.reason)], {})
            continue
        _add(report, task.shown, result.findings, result.lines)
        report.fixed += result.fixed
        if result.diff is not None:
            report.diffs.append(result.diff)
        if cache is not None and name is not None:
            cache.put(name, result.findings, result.lines)
    report.findings.sort(key=lambda f: (f.path, f.cell or 0, f.line, f.column, f.code))
    return report
