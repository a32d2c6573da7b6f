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


def assignment_targets(stmt: cst.CSTNode) -> list[tuple[cst.BaseExpression, cst.BaseExpression]]:
    """(target, value) pairs of an assignment; tuple targets are paired element-wise when
    the value is a tuple too, else each element is paired with the whole value."""
    if isinstance(stmt, cst.Assign):
        targets = [t.target for t in stmt.targets]
        value: cst.BaseExpression | None = stmt.value
    elif isinstance(stmt, cst.AnnAssign):
        targets = [stmt.target]
        value = stmt.value
    else:
        return []
    if value is None:
        return []
    pairs: list[tuple[cst.BaseExpression, cst.BaseExpression]] = []
    for target in targets:
        if isinstance(target, (cst.Tuple, cst.List)):
            elements = [e.value for e in target.elements]
            if isinstance(value, (cst.Tuple, cst.List)) and len(value.elements) == len(elements):
                pairs.extend(zip(elements, [e.value for e in value.elements], strict=True))
            else:
                pairs.extend((e, value) for e in elements)
        else:
            pairs.append((target, value))
    return pairs


def returns(body: object) -> Iterator[cst.Return]:
    for stmt in body:  # type: ignore[attr-defined]
        if isinstance(stmt, cst.SimpleStatementLine):
            yield from (small for small in stmt.body if isinstance(small, cst.Return))
        elif isinstance(stmt, cst.BaseCompoundStatement) and not isinstance(
            stmt, (cst.FunctionDef, cst.ClassDef)
        ):
            yield from returns(nested_statements(stmt))
