"""SARIF 2.1.0 for code scanning: rule metadata with each rule page as help, repository-relative
URIs, and fingerprints that survive lines moving (path, rule, the offending line's text and
its occurrence)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from clipcheck import __version__
from clipcheck.catalogue import CATALOGUE
from clipcheck.docs import rule_doc
from clipcheck.engine import Report
from clipcheck.findings import UNANALYSABLE_CODE, UNANALYSABLE_NAME, Finding
from clipcheck.suppressions import UNUSED_CODE, UNUSED_NAME

SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"


def _repository_root() -> Path:
    """The git work tree around the current folder (URIs are relative to it), or the folder."""
    try:
        out = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True,
                             timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return Path.cwd()
    return Path(out.stdout.strip()) if out.returncode == 0 and out.stdout.strip() else Path.cwd()


def _uri(path: str, root: Path) -> str:
    absolute = Path(os.path.abspath(path))
    try:
        return absolute.relative_to(root).as_posix()
    except ValueError:
        return absolute.as_uri()


def _descriptors() -> list[dict[str, object]]:
    rules: list[dict[str, object]] = []
    for rule in CATALOGUE:
        page = rule_doc(rule)
        rules.append({"id": rule.code, "name": rule.name, "shortDescription": {"text": rule.summary},
                      "help": {"text": page, "markdown": page},
                      "defaultConfiguration": {"level": "error"}})
    rules.append({"id": UNANALYSABLE_CODE, "name": UNANALYSABLE_NAME,
                  "shortDescription": {"text": "a file clipcheck could not analyse"},
                  "defaultConfiguration": {"level": "error"}})
    rules.append({"id": UNUSED_CODE, "name": UNUSED_NAME,
                  "shortDescription": {"text": "a suppression comment that suppressed nothing"},
                  "defaultConfiguration": {"level": "warning"}})
    return rules


def _fingerprint(finding: Finding, uri: str, line_text: str, occurrence: int) -> str:
    """Stable across runs from anywhere in the repository and across lines moving."""
    key = f"{uri}\0{finding.cell}\0{finding.code}\0{line_text.strip()}\0{occurrence}"
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def _result(finding: Finding, index: int, uri: str, fingerprint: str) -> dict[str, object]:
    region = {"startLine": finding.line, "startColumn": finding.column, "endLine": finding.end_line,
              "endColumn": max(finding.end_column, finding.column)}
    artifact = {"uri": uri, "uriBaseId": "%SRCROOT%"}
    location: dict[str, object] = {"physicalLocation": {"artifactLocation": artifact, "region": region}}
    if finding.cell is not None:
        location["message"] = {"text": f"cell {finding.cell}"}
    result: dict[str, object] = {
        "ruleId": finding.code, "ruleIndex": index,
        "level": "warning" if finding.code == UNUSED_CODE else "error",
        "message": {"text": finding.message}, "locations": [location],
        "partialFingerprints": {"clipcheck/v1": fingerprint},
    }
    if finding.fix is not None:
        result["fixes"] = [_fix(finding.fix, artifact)]
    return result


def _region(edit: dict[str, Any]) -> dict[str, object]:
    """The region an edit replaces; in a notebook, lines of the cell its message names, as a
    finding's location is."""
    region: dict[str, object] = {
        "startLine": edit["location"]["row"], "startColumn": edit["location"]["column"],
        "endLine": edit["end_location"]["row"], "endColumn": edit["end_location"]["column"]}
    if "cell" in edit:
        region["message"] = {"text": f"cell {edit['cell']}"}
    return region


def _fix(fix: dict[str, object], artifact: dict[str, str]) -> dict[str, object]:
    """The JSON ``fix`` as a SARIF fix: each edit replaces a region (empty: an insertion)."""
    replacements = [{"deletedRegion": _region(e), "insertedContent": {"text": e["content"]}}
                    for e in fix["edits"]]  # type: ignore[attr-defined]
    return {"description": {"text": f"{fix['message']} ({fix['applicability']})"},
            "artifactChanges": [{"artifactLocation": artifact, "replacements": replacements}]}


def to_sarif(findings: Sequence[Finding], report: Report) -> str:
    root = _repository_root()
    descriptors = _descriptors()
    index = {str(d["id"]): i for i, d in enumerate(descriptors)}
    seen: dict[tuple[str, int | None, str, str], int] = {}
    results = []
    for f in findings:
        text, uri = report.line_text(f) or "", _uri(f.path, root)
        key = (uri, f.cell, f.code, text.strip())
        seen[key] = seen.get(key, 0) + 1
        results.append(_result(f, index[f.code], uri, _fingerprint(f, uri, text, seen[key])))
    log = {
        "$schema": SCHEMA, "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {"name": "clipcheck", "version": __version__, "rules": descriptors}},
            "originalUriBaseIds": {"%SRCROOT%": {"uri": root.as_uri() + "/"}},
            "results": results,
        }],
    }
    return json.dumps(log, indent=2)
