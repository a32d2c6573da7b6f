"""Output formats, by name: each turns a run's report into the text the command prints. A
format's module is imported only when it is asked for (SARIF's needs hashing and git)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from clipcheck.engine import Report

FORMATS = ("text", "concise", "json", "json-lines", "github", "sarif")


def emit(name: str, report: Report, color: bool) -> str:
    """What format ``name`` prints for ``report`` (``color``: with terminal colours, where the
    format has any)."""
    if name in ("text", "concise"):
        from clipcheck.output.text import to_concise, to_text

        return (to_text if name == "text" else to_concise)(report, color)
    if name in ("json", "json-lines"):
        from clipcheck.output.json import to_json, to_json_lines

        return (to_json if name == "json" else to_json_lines)(report.findings)
    if name == "github":
        from clipcheck.output.github import to_github

        return to_github(report.findings)
    if name == "sarif":
        from clipcheck.output.sarif import to_sarif

        return to_sarif(report.findings, report)
    raise ValueError(f"no output format {name!r}; the formats are {', '.join(FORMATS)}")
