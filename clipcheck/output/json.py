"""JSON for machines: one array of finding objects (the contract's shape)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict

from clipcheck.findings import Finding


def to_json(findings: Sequence[Finding]) -> str:
    return json.dumps([asdict(f) for f in findings], indent=2)
