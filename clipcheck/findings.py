"""The record every output shares: one finding at one place, or a file that could not be analysed."""

from __future__ import annotations

from dataclasses import dataclass

UNANALYSABLE_CODE = "CC000"
UNANALYSABLE_NAME = "unanalysable-file"


@dataclass(frozen=True)
class Finding:
    path: str
    line: int
    column: int
    end_line: int
    end_column: int
    code: str
    rule: str
    message: str
    fix: dict[str, object] | None = None

    @property
    def unanalysable(self) -> bool:
        return self.code == UNANALYSABLE_CODE


def unanalysable(path: str, reason: str, line: int = 1, column: int = 1) -> Finding:
    """The CC000 finding for a file that could not be analysed, with the reason."""
    return Finding(path, line, column, line, column, UNANALYSABLE_CODE, UNANALYSABLE_NAME, reason)
