"""Output formats, by name: each turns the sorted findings into the text the command prints."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from clipcheck.findings import Finding
from clipcheck.output.json import to_json
from clipcheck.output.text import to_text

# (findings, source lines by path, whether to colour) -> what to print
Emitter = Callable[[Sequence[Finding], dict[str, list[str]], bool], str]

FORMATS: dict[str, Emitter] = {
    "text": to_text,
    "json": lambda findings, _sources, _color: to_json(findings),
}
