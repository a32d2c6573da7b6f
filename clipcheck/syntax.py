"""Small helpers over LibCST statement structure."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import libcst as cst

_CLAUSES = (cst.If, cst.Else, cst.ExceptHandler, cst.ExceptStarHandler, cst.Finally, cst.MatchCase)


def statements(suite: cst.BaseSuite) -> Sequence[cst.BaseStatement]:
    """The statements of a suite; a one-line suite (``if x: a; b``) becomes one line."""
    if isinstance(suite, cst.IndentedBlock):
        return suite.body
    assert isinstance(suite, cst.SimpleStatementSuite)
    return [cst.SimpleStatementLine(body=suite.body)]


def nested_statements(stmt: cst.BaseCompoundStatement | cst.CSTNode) -> Iterator[cst.BaseStatement]:
    """Every statement directly inside a compound statement's blocks (all its clauses)."""
    for child in stmt.children:
        if isinstance(child, cst.BaseSuite):
            yield from statements(child)
        elif isinstance(child, _CLAUSES):
            yield from nested_statements(child)
