"""JSON for machines: one array of finding objects (the contract's shape), or one object per
line."""

from __future__ import annotations

import json
from collections.abc import Sequence

from clipcheck.findings import Finding


def to_json(findings: Sequence[Finding]) -> str:
    return json.dumps([f.as_dict() for f in findings], indent=2)


def to_json_lines(findings: Sequence[Finding]) -> str:
    return "\n".join(json.dumps(f.as_dict()) for f in findings)
