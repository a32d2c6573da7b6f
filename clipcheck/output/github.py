"""GitHub Actions workflow commands: one ``::error`` annotation per finding (errors first:
GitHub shows only the first few annotations of each kind per step)."""

from __future__ import annotations

from collections.abc import Sequence

from clipcheck.findings import Finding
from clipcheck.suppressions import UNUSED_CODE


def _data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _property(text: str) -> str:
    return _data(text).replace(":", "%3A").replace(",", "%2C")


def to_github(findings: Sequence[Finding]) -> str:
    ordered = sorted(findings, key=lambda f: f.code == UNUSED_CODE)  # stable: errors first
    lines = []
    for f in ordered:
        level = "warning" if f.code == UNUSED_CODE else "error"
        where = f" (cell {f.cell})" if f.cell is not None else ""
        properties = (f"file={_property(f.path)},line={f.line},col={f.column},endLine={f.end_line},"
                      f"endColumn={f.end_column},title={_property(f'{f.code} {f.rule}{where}')}")
        lines.append(f"::{level} {properties}::{_data(f.message)}")
    return "\n".join(lines)
