"""Text for people: each finding with its message and the offending line under a caret
(``concise``: one line per finding)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from clipcheck.engine import Report

BOLD, RED = "1", "31"


def _style(text: str, *codes: str) -> str:
    """``text`` in a terminal's colours (ANSI SGR codes), reset after it."""
    return f"\x1b[{';'.join(codes)}m{text}\x1b[0m"


def _files(count: int) -> str:
    return f"{count} file{'s' if count != 1 else ''}"


def found(report: Report) -> str:
    """``Found 3 problems (647 files checked).``, zero included."""
    errors = sum(1 for f in report.findings if f.unanalysable)
    problems = len(report.findings) - errors
    text = f"Found {problems} problem{'s' if problems != 1 else ''}"
    if errors:
        text += f" and {_files(errors)} that could not be analysed"
    return f"{text} ({_files(report.checked)} checked)."


def summary(report: Report) -> str:
    """The last line of text output: what was found, and in how many files."""
    return found(report) if report.findings else f"All checks passed: {_files(report.checked)}."


def to_text(report: Report, color: bool) -> str:
    lines: list[str] = []
    for f in report.findings:
        head = f"{f.place}: {f.code} {f.rule}"
        lines.append(_style(head, BOLD) if color else head)
        lines.append(f"  {f.message}")
        if f.fix is not None:
            how = "--fix" if f.fix.get("applicability") == "safe" else "--fix --unsafe-fixes"
            lines.append(f"  fix ({f.fix.get('applicability')}, {how}): {f.fix.get('message')}")
        text = None if f.unanalysable else report.line_text(f)
        if text is not None:
            text = text.rstrip("\n").expandtabs(1)
            width = (f.end_column if f.end_line == f.line else len(text) + 1) - f.column
            lines.append(f"  {f.line:>4} | {text}")
            caret = " " * (f.column - 1) + "^" * max(width, 1)
            lines.append("       | " + (_style(caret, RED) if color else caret))
        lines.append("")
    lines.append(summary(report))
    return "\n".join(lines)


def to_concise(report: Report, color: bool) -> str:
    lines = []
    for f in report.findings:
        code = _style(f.code, RED, BOLD) if color else f.code
        lines.append(f"{f.place}: {code} {f.message}")
    lines.append(summary(report))
    return "\n".join(lines)
