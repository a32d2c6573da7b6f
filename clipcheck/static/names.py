"""Name resolution through a module's imports and module-level aliases.

LibCST's ``QualifiedNameProvider`` costs several times a bare parse; clipcheck only needs to know
what the roots of dotted names were imported as, so it reads the import statements and the
module-level assignments itself.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Iterable
from typing import NamedTuple

import libcst as cst

from clipcheck.static.syntax import assignment_targets, nested_statements


def dotted(expr: cst.BaseExpression) -> str | None:
    """``a.b.c`` for a chain of names and attributes, ``None`` for anything else."""
    # ``type() is``, not ``isinstance``: these classes have no subclasses, and LibCST's
    # ``isinstance`` goes through ``ABCMeta``, several times slower, on a hot path.
    if type(expr) is cst.Name:
        return expr.value
    if type(expr) is cst.Attribute:
        base = dotted(expr.value)
        return None if base is None else f"{base}.{expr.attr.value}"
    return None


def _module_path(node: cst.BaseExpression | None) -> str:
    if node is None:
        return ""
    return dotted(node) or ""


INFINITY_MODULES = frozenset({"math", "torch", "np", "numpy"})


def numeric_literal(expr: cst.BaseExpression) -> float | None:
    """The value of a number literal, possibly negated, or ``None``; ``float("inf")`` and
    ``math.inf`` (``torch.inf``, ``np.inf``) are infinite."""
    if isinstance(expr, (cst.Integer, cst.Float)):
        try:
            return float(ast.literal_eval(expr.value))
        except (OverflowError, ValueError):  # an integer too large for a float
            return math.inf
    if (isinstance(expr, cst.Attribute) and expr.attr.value == "inf" and isinstance(expr.value, cst.Name)
            and expr.value.value in INFINITY_MODULES):
        return math.inf
    if (isinstance(expr, cst.Call) and isinstance(expr.func, cst.Name) and expr.func.value == "float"
            and len(expr.args) == 1 and isinstance(expr.args[0].value, cst.SimpleString)):
        try:
            return float(expr.args[0].value.evaluated_value)
        except ValueError:
            return None
    if isinstance(expr, cst.UnaryOperation) and isinstance(expr.operator, (cst.Minus, cst.Plus)):
        inner = numeric_literal(expr.expression)
        if inner is None:
            return None
        return -inner if isinstance(expr.operator, cst.Minus) else inner
    return None


class ModuleNames(NamedTuple):
    """What the names of one module refer to, as far as its own text tells."""

    aliases: dict[str, str]
    constants: dict[str, float]
    functions: dict[str, cst.FunctionDef]
    classes: dict[str, cst.ClassDef]

    @classmethod
    def of(cls, module: cst.Module) -> ModuleNames:
        names = cls({}, {}, {}, {})
        collector = _ImportCollector(names.aliases)
        collector.collect(module.body)
        assigned = dict.fromkeys(collector.rebound, 2)  # ``global X`` in a function rebinds X
        for stmt in module.body:
            if isinstance(stmt, cst.FunctionDef):
                names.functions[stmt.name.value] = stmt
            elif isinstance(stmt, cst.ClassDef):
                names.classes[stmt.name.value] = stmt
            elif isinstance(stmt, cst.SimpleStatementLine):
                for small in stmt.body:
                    names._module_assignment(small, assigned)
            else:
                names._count_nested(stmt, assigned)
        for name, count in assigned.items():
            if count > 1:
                names.constants.pop(name, None)
        return names

    def _count_nested(self, stmt: cst.CSTNode, assigned: dict[str, int]) -> None:
        """Assignments inside module-level ``if``/``for``/``with``/``try`` blocks rebind names
        too (``if __name__ == "__main__": MAX_NORM = args.max_norm``)."""
        for inner in nested_statements(stmt):
            if isinstance(inner, cst.SimpleStatementLine):
                for small in inner.body:
                    for target, _ in assignment_targets(small):
                        if isinstance(target, cst.Name):
                            assigned[target.value] = assigned.get(target.value, 0) + 2
            elif not isinstance(inner, (cst.FunctionDef, cst.ClassDef)):
                self._count_nested(inner, assigned)

    def _module_assignment(self, small: cst.BaseSmallStatement, assigned: dict[str, int]) -> None:
        for target, value in assignment_targets(small):
            if not isinstance(target, cst.Name):
                continue
            name = target.value
            assigned[name] = assigned.get(name, 0) + 1
            number = numeric_literal(value)
            if number is not None:
                self.constants[name] = number
                continue
            source = dotted(value)
            if source is not None and source.split(".")[0] in self.aliases:
                self.aliases[name] = self.qualify(value) or source

    def qualify(self, expr: cst.BaseExpression) -> str | None:
        """The dotted name with its root replaced by what it was imported as."""
        name = dotted(expr)
        if name is None:
            return None
        root, _, rest = name.partition(".")
        target = self.aliases.get(root)
        if target is None:
            return name
        return f"{target}.{rest}" if rest else target

    def is_imported(self, expr: cst.BaseExpression) -> bool:
        name = dotted(expr)
        return name is not None and name.split(".")[0] in self.aliases

    def number(self, expr: cst.BaseExpression) -> float | None:
        """A literal number, or a module constant bound once to one."""
        if isinstance(expr, cst.Name):
            return self.constants.get(expr.value)
        return numeric_literal(expr)


class _ImportCollector:
    """Every import in the module, wherever it stands, binds its name to a dotted path."""

    def __init__(self, aliases: dict[str, str]) -> None:
        self.aliases = aliases
        self.rebound: set[str] = set()

    def collect(self, body: Iterable[cst.CSTNode]) -> None:
        """Walks statements only (imports and ``global`` are statements), never expressions:
        a LibCST visitor would rebuild every node of the module on its way."""
        for stmt in body:
            if isinstance(stmt, cst.SimpleStatementLine):
                for small in stmt.body:
                    if isinstance(small, cst.Global):
                        self._global(small)
                    elif isinstance(small, cst.Import):
                        self._import(small)
                    elif isinstance(small, cst.ImportFrom):
                        self._import_from(small)
            elif isinstance(stmt, cst.BaseCompoundStatement):
                self.collect(nested_statements(stmt))

    def _global(self, node: cst.Global) -> None:
        self.rebound.update(n.name.value for n in node.names)

    def _import(self, node: cst.Import) -> None:
        for alias in node.names:
            path = _module_path(alias.name)
            if alias.asname is not None and isinstance(alias.asname.name, cst.Name):
                self.aliases[alias.asname.name.value] = path
            else:
                root = path.split(".")[0]
                self.aliases[root] = root

    def _import_from(self, node: cst.ImportFrom) -> None:
        if node.relative or isinstance(node.names, cst.ImportStar):
            return
        module = _module_path(node.module)
        for alias in node.names:
            imported = _module_path(alias.name)
            local = imported
            if alias.asname is not None and isinstance(alias.asname.name, cst.Name):
                local = alias.asname.name.value
            self.aliases[local] = f"{module}.{imported}"

