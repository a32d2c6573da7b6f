"""What names hold: optimizers, schedulers, scalers, parameter generators, and the modules
whose parameters flow into them, derived from a module's assignments."""

from __future__ import annotations

import enum
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple, TypeVar

import libcst as cst

from clipcheck.static.frameworks import accelerate, lightning, registered
from clipcheck.static.frameworks import torch as vocab
from clipcheck.static.names import ModuleNames, dotted
from clipcheck.static.syntax import (
    assignment_targets,
    children,
    nested_statements,
    rebound_names,
    returns,
    statements,
)

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Kind(enum.Enum):
    """What a name is bound to, when its assignments tell."""

    OPTIMIZER = "optimizer"
    SCHEDULER = "scheduler"
    SCALER = "scaler"
    ACCELERATOR = "accelerator"  # accelerate's ``Accelerator`` (or a name that says it is one)
    ENGINE = "engine"            # a DeepSpeed engine: a module that steps, zeroes and clips itself
    PARAMETERS = "parameters"
    ABSENT = "absent"  # the literal ``None``: a helper called without an optimizer, say
    OTHER = "other"


class Binding(NamedTuple):
    kind: Kind
    models: frozenset[str] = frozenset()
    values: tuple[cst.BaseExpression, ...] = ()
    constructed: bool = False
    gated: bool = False  # prepared by accelerate: steps only on accumulation boundaries

    def merge(self, other: Binding) -> Binding:
        if self.kind == other.kind or other.kind is Kind.OTHER:
            kind = self.kind
        elif self.kind is Kind.OTHER:
            kind = other.kind
        else:
            kind = Kind.OTHER
        return Binding(
            kind,
            self.models | other.models,
            self.values + other.values,
            self.constructed or other.constructed,
            self.gated or other.gated,
        )


@dataclass(eq=False)
class ClassInfo:
    node: cst.ClassDef
    methods: dict[str, cst.FunctionDef]
    attrs: dict[str, Binding] = field(default_factory=dict)
    bases: list[ClassInfo] = field(default_factory=list)
    is_lightning: bool = False
    manual_optimization: bool = False

    def lineage(self) -> Iterator[ClassInfo]:
        """This class, then its bases of the same module, depth first (Python's lookup order
        for single inheritance)."""
        yield self
        for base in self.bases:
            yield from base.lineage()

    def method(self, name: str) -> cst.FunctionDef | None:
        return next((c.methods[name] for c in self.lineage() if name in c.methods), None)

    def attr(self, key: str) -> Binding | None:
        return next((c.attrs[key] for c in self.lineage() if key in c.attrs), None)


@dataclass(eq=False)
class Scope:
    """The bindings visible in one function (or the module), innermost first."""

    names: dict[str, Binding]
    parent: Scope | None = None
    cls: ClassInfo | None = None
    functions: dict[str, cst.FunctionDef] = field(default_factory=dict)
    params: frozenset[str] = frozenset()
    node: cst.CSTNode | None = None  # the function's body, for what assignments do not show
    _rebound: frozenset[str] | None = field(default=None, compare=False, repr=False)

    def rebinds(self, name: str) -> bool:
        """Whether the function rebinds ``name`` other than by plain assignment (``+=``,
        ``for``, ``with ... as``, walrus, ``global``/``nonlocal``, ``del``): then it is no
        constant. Found by one walk of the body, only when a constant is asked about."""
        if self.node is None:
            return False
        if self._rebound is None:
            self._rebound = rebound_names(self.node)
        return name in self._rebound

    def chain(self) -> Iterator[Scope]:
        """This scope, then the enclosing ones out to the module."""
        scope: Scope | None = self
        while scope is not None:
            yield scope
            scope = scope.parent

    def lookup(self, key: str) -> Binding | None:
        if key.startswith("self.") and self.cls is not None:
            found = self.cls.attr(key)
            if found is not None:
                return found
        return next((s.names[key] for s in self.chain() if key in s.names), None)

    def function(self, name: str) -> cst.FunctionDef | None:
        return next((s.functions[name] for s in self.chain() if name in s.functions), None)


class Bindings:
    """Derives :class:`Binding` values from assignments."""

    def __init__(self, names: ModuleNames) -> None:
        self.names = names
        self._returned: dict[str, list[tuple[Binding, ...]]] = {}
        self._owners: dict[tuple[int, int, int], frozenset[str]] = {}
        self._flows: dict[tuple[int, int, int], frozenset[str]] = {}
        self._through: dict[tuple[int, int, int], tuple[Binding, frozenset[str]]] = {}
        self._constructors: dict[int, tuple[Binding, tuple[str, ...]]] = {}
        self._optimized: dict[int, frozenset[str]] = {}

    def optimized(self, scope: Scope) -> frozenset[str]:
        """The modules that optimizers bound in ``scope`` (its enclosing scopes, its class)
        were built over. Memoised per scope."""
        found = self._optimized.get(id(scope))
        if found is None:
            bindings = [b for s in scope.chain() for b in s.names.values()]
            if scope.cls is not None:
                bindings += [b for c in scope.cls.lineage() for b in c.attrs.values()]
            found = frozenset(m for b in bindings if b.kind is Kind.OPTIMIZER for m in b.models)
            self._optimized[id(scope)] = found
        return found

    def of_value(self, value: cst.BaseExpression, scope: Scope | None) -> Binding:
        if isinstance(value, cst.GeneratorExp):
            return Binding(Kind.PARAMETERS, self.owners(value, scope), (value,))
        if isinstance(value, cst.Subscript):
            inner = self.of_value(value.value, scope)
            if inner.kind is Kind.OPTIMIZER:
                return Binding(Kind.OPTIMIZER, inner.models)
            return Binding(Kind.OTHER, values=(value,))
        if not isinstance(value, cst.Call):
            return Binding(Kind.OTHER, values=(value,))
        qualified = self.names.qualify(value.func) if self.names.is_imported(value.func) else None
        if qualified is not None:
            if vocab.is_scaler_class(qualified):
                return Binding(Kind.SCALER, values=(value,), constructed=True)
            for framework in registered():
                kind = framework.constructed(qualified, value)
                if kind is not None:
                    return Binding(kind, values=(value,), constructed=True)
            if vocab.is_scheduler_class(qualified):
                return Binding(Kind.SCHEDULER, constructed=True)
            if vocab.is_optimizer_class(qualified):
                return Binding(Kind.OPTIMIZER, self.owners(value, scope), constructed=True)
            if qualified in vocab.PARAMETER_GENERATOR_FUNCTIONS:
                return Binding(Kind.PARAMETERS, self.owners(value, scope), (value,))
        func = value.func
        if isinstance(func, cst.Name):
            if func.value in vocab.PARAMETER_GENERATOR_FUNCTIONS and not self.names.is_imported(func):
                return Binding(Kind.PARAMETERS, self.owners(value, scope), (value,))
            if self.builds_optimizer(func.value):
                return Binding(Kind.OPTIMIZER, self._argument_keys(value), constructed=True)
            if self.is_optimizer_subclass(func.value):
                return Binding(Kind.OPTIMIZER, self.owners(value, scope), (value,), constructed=True)
        if isinstance(func, cst.Attribute):
            method = func.attr.value
            if method in vocab.PARAMETER_GENERATOR_METHODS:
                owner = dotted(func.value)
                return Binding(Kind.PARAMETERS, frozenset({owner} if owner else ()), (value,))
            if method in lightning.OPTIMIZER_GETTERS:
                return Binding(Kind.OPTIMIZER)
            if method in accelerate.PREPARE_METHODS and len(value.args) == 1:
                return self._visible(value.args[0].value, {}, scope)._replace(gated=True)
        return Binding(Kind.OTHER, values=(value,))

    def _argument_keys(self, call: cst.Call) -> frozenset[str]:
        keys = (dotted(a.value) for a in call.args)
        return frozenset(k for k in keys if k is not None)

    def is_optimizer_subclass(self, class_name: str, depth: int = 0) -> bool:
        """A class of the module that derives from an optimizer (``class Lion(Optimizer)``):
        its instances step like any optimizer, whatever its own ``step`` does inside."""
        cls = self.names.classes.get(class_name)
        if cls is None or depth > 4:
            return False
        for base in cls.bases:
            qualified = self.names.qualify(base.value) or ""
            if vocab.is_optimizer_class(qualified) or qualified.split(".")[-1] == "Optimizer":
                return True
            if isinstance(base.value, cst.Name) and self.is_optimizer_subclass(base.value.value, depth + 1):
                return True
        return False

    def builds_optimizer(self, function_name: str) -> bool:
        """A module-level function that returns an optimizer it constructs."""
        return any(len(r) == 1 and r[0].kind is Kind.OPTIMIZER for r in self.returned(function_name))

    def returned(self, function_name: str) -> list[tuple[Binding, ...]]:
        """What a module-level function returns, per ``return``: one binding per element of a
        returned tuple (one for any other value), with the modules named as the function
        names them. Memoised; a function that calls itself adds nothing."""
        if function_name in self._returned:
            return self._returned[function_name]
        self._returned[function_name] = []
        fn = self.names.functions.get(function_name)
        found: list[tuple[Binding, ...]] = []
        if fn is not None:
            local: dict[str, Binding] = {}
            collect_bindings(statements(fn.body), self, local, None, None)
            for ret in returns(statements(fn.body)):
                if ret.value is None:
                    continue
                values = [e.value for e in ret.value.elements] if isinstance(
                    ret.value, (cst.Tuple, cst.List)) else [ret.value]
                found.append(tuple(self._visible(v, local, None) for v in values))
        self._returned[function_name] = found
        return found

    def unpacked(self, targets: list[cst.BaseExpression], value: cst.BaseExpression,
                 known: dict[str, Binding], scope: Scope | None) -> list[Binding] | None:
        """Bindings by position for ``a, b, c = call(...)`` when positions keep their kinds:
        accelerate's ``prepare(model, opt, ...)`` returns its arguments in order; a module
        function returns a tuple whose elements are known (its module names renamed to the
        targets and arguments at the same positions)."""
        if not isinstance(value, cst.Call):
            return None
        positional = [a.value for a in value.args if a.keyword is None and not a.star]
        func = value.func
        if isinstance(func, cst.Attribute) and func.attr.value in accelerate.PREPARE_METHODS:
            if len(positional) != len(targets):
                return None
            return [self._visible(arg, known, scope)._replace(gated=True) for arg in positional]
        qualified = self.names.qualify(func) if self.names.is_imported(func) else None
        for framework in registered() if qualified is not None else ():
            found = framework.unpacked(qualified, value, len(targets), self, scope)  # type: ignore[arg-type]
            if found is not None:
                return found
        if not isinstance(func, cst.Name) or func.value not in self.names.functions:
            return None
        shapes = [r for r in self.returned(func.value) if len(r) == len(targets)]
        fn = self.names.functions[func.value]
        if not shapes:  # only returns of the unpacked arity can reach this assignment
            return None
        renames = {p.name.value: dotted(a) for p, a in zip(fn.params.params, positional, strict=False)}
        for ret in returns(statements(fn.body)):
            if isinstance(ret.value, (cst.Tuple, cst.List)) and len(ret.value.elements) == len(targets):
                for element, target in zip(ret.value.elements, targets, strict=True):
                    if isinstance(element.value, cst.Name):
                        renames[element.value.value] = dotted(target)
        merged = [shapes[0][i] for i in range(len(targets))]
        for shape in shapes[1:]:
            merged = [m.merge(b) for m, b in zip(merged, shape, strict=True)]
        # The function's own expressions mean nothing in the caller's scope: only kinds and
        # (renamed) modules cross the call.
        return [b._replace(models=frozenset(_renamed(m, renames) for m in b.models), values=())
                for b in merged]

    def _visible(self, expr: cst.BaseExpression, known: dict[str, Binding], scope: Scope | None) -> Binding:
        """What ``expr`` holds: a binding among ``known`` (names being collected), else in
        ``scope``, else derived from the expression itself."""
        key = dotted(expr)
        found = known.get(key) if key else None
        if found is None and key is not None and scope is not None:
            found = scope.lookup(key)
        return found if found is not None else self.of_value(expr, scope)

    def flows_from(self, expr: cst.CSTNode, scope: Scope | None, depth: int = 0) -> frozenset[str]:
        """The dotted names a value is visibly computed from (called or passed), through local
        names, not through ``.detach()``: the modules a loss may send gradients to."""
        memo_key = (id(expr), id(scope), depth)
        known = self._flows.get(memo_key)
        if known is not None:
            return known
        found: set[str] = set()
        stack: list[cst.CSTNode] = [expr]
        while stack:
            node = stack.pop()
            if isinstance(node, (cst.Lambda, cst.FunctionDef, cst.ClassDef)):
                continue
            if (isinstance(node, cst.Call) and isinstance(node.func, cst.Attribute)
                    and node.func.attr.value in DETACHING_METHODS):
                continue
            if isinstance(node, (cst.Name, cst.Attribute)):
                key = dotted(node)
                if key is not None:
                    found.add(key)
                    binding = scope.lookup(key) if scope is not None and depth < 3 else None
                    if binding is not None and scope is not None:
                        found |= self._flows_through(binding, scope, depth + 1)
                    if isinstance(node, cst.Attribute):
                        stack.append(node.value)
                    continue
            stack.extend(children(node))
        result = frozenset(found)
        self._flows[memo_key] = result
        return result

    def constructors(self, binding: Binding) -> tuple[str, ...]:
        """The names called to make a binding's values (``Wrapper(opt)``: ``Wrapper``), in
        order, found once per binding."""
        def called() -> tuple[str, ...]:
            return tuple(v.func.value for v in binding.values
                         if isinstance(v, cst.Call) and isinstance(v.func, cst.Name))

        return _per_binding(self._constructors, id(binding), binding, called)

    def _flows_through(self, binding: Binding, scope: Scope, depth: int) -> frozenset[str]:
        """What all of a binding's values are computed from, found once per binding: a name
        assigned in each of many iterations of one long function would otherwise have every
        value joined again at each of its uses."""
        def flows() -> frozenset[str]:
            return frozenset().union(*(self.flows_from(value, scope, depth) for value in binding.values))

        return _per_binding(self._through, (id(binding), id(scope), depth), binding, flows)

    def owners(self, expr: cst.CSTNode, scope: Scope | None, depth: int = 0) -> frozenset[str]:
        """The modules whose ``.parameters()`` flow into ``expr`` (through local names too).

        Memoised per expression and scope: loops and helpers ask about the same iterables
        again and again, and following names through their assigned values is a tree walk."""
        memo_key = (id(expr), id(scope), depth)
        known = self._owners.get(memo_key)
        if known is not None:
            return known
        found: set[str] = set()
        for node in walk_code(expr):
            if isinstance(node, cst.Call) and isinstance(node.func, cst.Attribute):
                if node.func.attr.value in vocab.PARAMETER_GENERATOR_METHODS:
                    owner = dotted(node.func.value)
                    if owner is not None:
                        found.add(_unaliased(owner, scope))
            elif isinstance(node, (cst.Name, cst.Attribute)) and scope is not None and depth < 3:
                key = dotted(node)
                binding = scope.lookup(key) if key else None
                if binding is not None:
                    found |= binding.models
                    for value in binding.values:
                        found |= self.owners(value, scope, depth + 1)
        if _filters(expr):
            found = {part_of(owner) for owner in found}
        result = frozenset(found)
        self._owners[memo_key] = result
        return result


def _unaliased(name: str, scope: Scope | None, depth: int = 0) -> str:
    """The module a name stands for when it was bound once to another's (``model_without_ddp =
    model.module``, ``net = self.net``): so that the two are seen as one."""
    binding = scope.lookup(name) if scope is not None and depth < 2 else None
    values = binding.values if binding is not None else ()
    if len(values) == 1 and isinstance(values[0], (cst.Name, cst.Attribute)):
        target = dotted(values[0])
        if target is not None and target != name and not target.startswith(name + "."):
            return _unaliased(target, scope, depth + 1)
    return name


# A module name with this suffix stands for some of its parameters (a filtered selection).
PART = ".<part>"


def part_of(owner: str) -> str:
    return owner if owner.endswith(PART) else owner + PART


def _filters(expr: cst.CSTNode) -> bool:
    """A selection of what it iterates: ``[p for n, p in ... if "bn" in n]``, ``filter(...)``."""
    if isinstance(expr, (cst.ListComp, cst.SetComp, cst.GeneratorExp)):
        comp: cst.CompFor | None = expr.for_in
        while comp is not None:
            if comp.ifs:
                return True
            comp = comp.inner_for_in
        return False
    return isinstance(expr, cst.Call) and isinstance(expr.func, cst.Name) and expr.func.value == "filter"


DETACHING_METHODS = frozenset({"detach", "detach_", "item", "tolist", "numpy"})


def walk_code(node: cst.CSTNode) -> Iterator[cst.CSTNode]:
    """``node`` and everything inside it, except nested functions, lambdas and classes."""
    yield node
    for child in children(node):
        if not isinstance(child, (cst.Lambda, cst.FunctionDef, cst.ClassDef)):
            yield from walk_code(child)


def collect_bindings(
    body: object,
    bindings: Bindings,
    names: dict[str, Binding],
    attrs: dict[str, Binding] | None,
    scope: Scope | None,
) -> None:
    """Fill ``names`` (locals) and ``attrs`` (``self.x``) from the assignments in ``body``."""
    for stmt in body:  # type: ignore[attr-defined]
        if isinstance(stmt, (cst.FunctionDef, cst.ClassDef)):
            continue
        if isinstance(stmt, cst.SimpleStatementLine):
            for small in stmt.body:
                positions = _unpacking(small, bindings, names, scope)
                if positions is not None:
                    for target, binding in positions:
                        _store(target, binding, names, attrs)
                    continue
                for target, value in assignment_targets(small):
                    _bind(target, value, bindings, names, attrs, scope)
            continue
        if isinstance(stmt, cst.BaseCompoundStatement):
            collect_bindings(nested_statements(stmt), bindings, names, attrs, scope)


def _unpacking(small: cst.BaseSmallStatement, bindings: Bindings, names: dict[str, Binding],
               scope: Scope | None) -> list[tuple[cst.BaseExpression, Binding]] | None:
    """``a, b = call(...)`` with bindings by position, when the call tells them."""
    if not isinstance(small, cst.Assign) or len(small.targets) != 1:
        return None
    target = small.targets[0].target
    if not isinstance(target, (cst.Tuple, cst.List)):
        return None
    elements = [e.value for e in target.elements]
    found = bindings.unpacked(elements, small.value, names, scope)
    return None if found is None else list(zip(elements, found, strict=True))


def _renamed(name: str, renames: dict[str, str | None]) -> str:
    root, dot, rest = name.partition(".")
    new = renames.get(root)
    return name if new is None else new + dot + rest


def _bind(
    target: cst.BaseExpression,
    value: cst.BaseExpression,
    bindings: Bindings,
    names: dict[str, Binding],
    attrs: dict[str, Binding] | None,
    scope: Scope | None,
) -> None:
    _store(target, bindings.of_value(value, scope), names, attrs)


def _store(target: cst.BaseExpression, binding: Binding, names: dict[str, Binding],
           attrs: dict[str, Binding] | None) -> None:
    key = dotted(target)
    if key is None:
        return
    if key.startswith("self."):
        if attrs is not None:
            attrs[key] = attrs[key].merge(binding) if key in attrs else binding
    elif "." not in key:
        names[key] = names[key].merge(binding) if key in names else binding


def _per_binding(cache: dict[K, tuple[Binding, V]], key: K, binding: Binding, compute: Callable[[], V]) -> V:
    """``compute()`` for ``binding``, once: the binding is kept with its result, so that its
    ``id`` (in ``key``) is not another's while cached."""
    cached = cache.get(key)
    if cached is None or cached[0] is not binding:
        cached = cache[key] = (binding, compute())
    return cached[1]
