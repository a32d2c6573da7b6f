"""Text for people: each finding with its message and the offending line under a caret."""

from __future__ import annotations

from collections.abc import Sequence

import click

from clipcheck.findings import Finding


def to_text(findings: Sequence[Finding], sources: dict[str, list[str]], color: bool) -> str:
    lines: list[str] = []
    for f in findings:
        head = f"{f.path}:{f.line}:{f.column}: {f.code} {f.rule}"
        lines.append(click.style(head, bold=True) if color else head)
        lines.append(f"  {f.message}")
        source = sources.get(f.path, [])
        if not f.unanalysable and 0 < f.line <= len(source):
            text = source[f.line - 1].rstrip("\n").expandtabs(1)
            width = (f.end_column if f.end_line == f.line else len(text) + 1) - f.column
            lines.append(f"  {f.line:>4} | {text}")
            caret = " " * (f.column - 1) + "^" * max(width, 1)
            lines.append("       | " + (click.style(caret, fg="red") if color else caret))
        lines.append("")
    errors = sum(1 for f in findings if f.unanalysable)
    problems = len(findings) - errors
    summary = f"Found {problems} problem{'s' if problems != 1 else ''}"
    if errors:
        summary += f" and {errors} file{'s' if errors != 1 else ''} that could not be analysed"
    lines.append(summary + "." if findings else "All checks passed.")
    return "\n".join(lines)
