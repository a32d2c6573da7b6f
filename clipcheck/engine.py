"""Checking files: read, decode, parse, analyse. Returns findings and never prints; every input
that cannot be analysed becomes a CC000 finding with its reason, and the run goes on."""

from __future__ import annotations

import ast
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import libcst as cst

from clipcheck.findings import Finding, unanalysable
from clipcheck.sources import python_files
from clipcheck.static.analysis import ModuleAnalysis
from clipcheck.static.rules import RULES, Rule

# Words without which a file cannot contain a training event: files lacking all of them are
# only checked for syntax (by CPython's faster parser), never analysed.
RELEVANT_WORDS = ("backward", "step", "grad", "parameters", "scale")


@dataclass
class Report:
    """The findings of a run, sorted, and the lines of each file that has some (for text)."""

    findings: list[Finding] = field(default_factory=list)
    sources: dict[str, list[str]] = field(default_factory=dict)


def might_train(source: str) -> bool:
    return any(word in source for word in RELEVANT_WORDS)


def analyse_source(source: str, path: str, rules: Sequence[Rule] = RULES) -> list[Finding]:
    """Findings for one file's text. Raises ``libcst.ParserSyntaxError`` (or ``SyntaxError``
    for a file without training code) if it does not parse."""
    if not might_train(source):
        ast.parse(source, path)
        return []
    return ModuleAnalysis(cst.parse_module(source), rules).findings(path)


def check_file(path: Path, shown: str, rules: Sequence[Rule]) -> tuple[list[Finding], list[str]]:
    """Findings for one file (or its CC000), and its lines for the text report."""
    try:
        data = path.read_bytes()
    except OSError as error:
        return [unanalysable(shown, f"cannot read the file: {error.strerror or error}")], []
    try:
        source = data.decode("utf-8")
    except UnicodeDecodeError as error:
        return [unanalysable(shown, f"not UTF-8: byte 0x{data[error.start]:02x} at offset "
                                    f"{error.start} cannot be decoded")], []
    try:
        return analyse_source(source, shown, rules), source.splitlines()
    except cst.ParserSyntaxError as error:
        message = f"syntax error: {error.message}"
        return [unanalysable(shown, message, error.raw_line, error.raw_column + 1)], []
    except SyntaxError as error:
        message = f"syntax error: {error.msg}"
        return [unanalysable(shown, message, error.lineno or 1, error.offset or 1)], []
    except RecursionError:
        return [unanalysable(shown, "the file nests too deeply to analyse")], []


def check_paths(paths: Iterable[Path], rules: Sequence[Rule]) -> Report:
    """Every Python file under ``paths``, checked in order."""
    report = Report()
    for root in paths:
        for path in python_files(root):
            shown = str(path)
            file_findings, lines = check_file(path, shown, rules)
            report.findings.extend(file_findings)
            if file_findings:
                report.sources[shown] = lines
    report.findings.sort(key=lambda f: (f.path, f.line, f.column, f.code))
    return report
