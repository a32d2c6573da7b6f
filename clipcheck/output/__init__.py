"""Output formats, by name: each turns a run's report into the text the command prints."""

from __future__ import annotations

from collections.abc import Callable

from clipcheck.engine import Report
from clipcheck.output.github import to_github
from clipcheck.output.json import to_json, to_json_lines
from clipcheck.output.sarif import to_sarif
from clipcheck.output.text import to_concise, to_text

# (report, whether to colour) -> what to print
Emitter = Callable[[Report, bool], str]

FORMATS: dict[str, Emitter] = {
    "text": to_text,
    "concise": to_concise,
    "json": lambda report, _color: to_json(report.findings),
    "json-lines": lambda report, _color: to_json_lines(report.findings),
    "github": lambda report, _color: to_github(report.findings),
    "sarif": lambda report, _color: to_sarif(report.findings, report),
}
