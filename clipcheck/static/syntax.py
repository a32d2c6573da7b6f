"""Small helpers over LibCST statement structure."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Iterator, Sequence

import libcst as cst

_FIELD_ORDER: dict[type[cst.CSTNode], tuple[str, ...]] = {}


class _FieldRecorder(cst.CSTVisitor):
    """Records the fields a node's own visit walks, in order, without entering them."""

    def __init__(self) -> None:
        self.fields: list[str] = []

    def on_visit(self, node: cst.CSTNode) -> bool:
        return False

    def on_visit_attribute(self, node: cst.CSTNode, attribute: str) -> None:
        self.fields.append(attribute)


def _field_order(node: cst.CSTNode) -> tuple[str, ...]:
    """The fields whose nodes LibCST's ``children`` lists, in its order, but those whose
    declared type holds no code (``whitespace_after: SimpleWhitespace``, ``lpar:
    Sequence[LeftParen]``, ``value: str``): read once per node class, from one visit of its
    first node."""
    recorder = _FieldRecorder()
    node._visit_and_replace_children(recorder)
    declared = {f.name: f.type for f in dataclasses.fields(node)}
    # A field visited only when set (an f-string's ``format_spec``) goes last, where LibCST
    # visits it; ``tests/test_screen.py`` compares the result with ``children`` itself.
    fields = dict.fromkeys([*recorder.fields, *declared])
    return tuple(name for name in fields if _may_hold_code(declared[name]))


def _may_hold_code(declared: object) -> bool:
    """Whether a field of this declared type can hold a node with code: a node class that is
    not trivia, one inside a sequence, union or optional, or a type named only by a string."""
    if isinstance(declared, type):
        return _holds_code(declared)
    if isinstance(declared, (str, typing.ForwardRef)):
        return True
    if typing.get_origin(declared) is typing.Literal:
        return False
    return any(_may_hold_code(arg) for arg in typing.get_args(declared))


def children(node: cst.CSTNode) -> list[cst.CSTNode]:
    """``node.children`` without its cost, and without the nodes that hold no code (whitespace,
    comments, punctuation, operators): LibCST computes that property by rebuilding the node
    through a visitor, which made it the analysis's largest expense."""
    order = _FIELD_ORDER.get(type(node))
    if order is None:
        order = _FIELD_ORDER[type(node)] = _field_order(node)
    found: list[cst.CSTNode] = []
    holds_code = _HOLDS_CODE
    for name in order:
        value = getattr(node, name)
        kind = type(value)
        if kind is tuple or kind is list:
            found.extend(v for v in value if holds_code.get(type(v)) or _holds_code(type(v)))
        elif holds_code.get(kind) or _holds_code(kind):
            found.append(value)
    return found


# Nodes that hold no code: whitespace and comments, punctuation and operators.
_TRIVIA_MODULES = frozenset({"libcst._nodes.whitespace", "libcst._nodes.op"})
_TRIVIA_CLASSES = (cst.LeftParen, cst.RightParen, cst.LeftSquareBracket, cst.RightSquareBracket,
                   cst.LeftCurlyBrace, cst.RightCurlyBrace)
_HOLDS_CODE: dict[type, bool] = {}


def trivia(kind: type) -> bool:
    """A node class whose nodes hold no code."""
    return kind.__module__ in _TRIVIA_MODULES or issubclass(kind, _TRIVIA_CLASSES)


def _holds_code(kind: type) -> bool:
    """A node class, other than trivia, decided once per class. ``CSTNode`` is an abstract base
    class: ``issubclass(str, CSTNode)`` looks through every one of its hundreds of subclasses
    before it says no, where its place in the class's own bases says it at once (LibCST's
    nodes are all its subclasses by inheritance)."""
    known = _HOLDS_CODE.get(kind)
    if known is None:
        known = _HOLDS_CODE[kind] = cst.CSTNode in kind.__mro__ and not trivia(kind)
    return known


_SUITES = (cst.IndentedBlock, cst.SimpleStatementSuite)
_CLAUSES = (cst.If, cst.Else, cst.ExceptHandler, cst.ExceptStarHandler, cst.Finally, cst.MatchCase)


def statements(suite: cst.BaseSuite) -> Sequence[cst.BaseStatement]:
    """The statements of a suite; a one-line suite (``if x: a; b``) becomes one line."""
    if type(suite) is cst.IndentedBlock:
        return suite.body  # type: ignore[attr-defined]
    assert isinstance(suite, cst.SimpleStatementSuite)
    return [cst.SimpleStatementLine(body=suite.body)]


def nested_statements(stmt: cst.BaseCompoundStatement | cst.CSTNode) -> Iterator[cst.BaseStatement]:
    """Every statement directly inside a compound statement's blocks (all its clauses)."""
    for child in children(stmt):
        kind = type(child)
        if kind in _SUITES:
            yield from statements(child)  # type: ignore[arg-type]
        elif kind in _CLAUSES:
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


def rebound_names(node: cst.CSTNode) -> frozenset[str]:
    """Names that ``node`` rebinds other than by plain assignment: augmented assignment,
    ``for`` and comprehension targets, ``with ... as``, ``except ... as``, the walrus,
    ``global``/``nonlocal`` and ``del``."""
    found: set[str] = set()

    def names(target: cst.CSTNode | None) -> None:
        if isinstance(target, cst.Name):
            found.add(target.value)
        elif target is not None:
            for child in children(target):
                names(child)

    def walk(current: cst.CSTNode) -> None:
        if isinstance(current, (cst.AugAssign, cst.For, cst.CompFor)):
            names(current.target)
        elif isinstance(current, cst.WithItem) and current.asname is not None:
            names(current.asname.name)
        elif isinstance(current, cst.ExceptHandler) and current.name is not None:
            names(current.name.name)
        elif isinstance(current, cst.NamedExpr):
            names(current.target)
        elif isinstance(current, (cst.Global, cst.Nonlocal)):
            found.update(n.name.value for n in current.names)
        elif isinstance(current, cst.Del):
            names(current.target)
        for child in children(current):
            walk(child)

    walk(node)
    return frozenset(found)
