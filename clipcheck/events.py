"""Recognising training events in LibCST expressions.

An :class:`Event` is one thing that changes (or reads) the state of the gradients: a backward
pass, a clip, a step, a zero-grad, and the bookkeeping around them. :class:`Recognizer` finds
them in the order Python evaluates them, resolving names through the module's imports
(:mod:`clipcheck.names`) and through what receivers are bound to (:class:`Binding`).
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import libcst as cst

from clipcheck import vocabulary as vocab
from clipcheck.names import ModuleNames, dotted
from clipcheck.syntax import nested_statements, statements


class EventKind(enum.Enum):
    CREATE_OPTIMIZER = "create-optimizer"
    ZERO_GRAD = "zero-grad"
    BACKWARD = "backward"
    UNSCALE = "unscale"
    CLIP = "clip"
    STEP = "step"
    SCALER_UPDATE = "scaler-update"
    CLIP_CONFIG = "clip-config"
    PARAMS_BIND = "params-bind"
    PARAMS_USE = "params-use"


@dataclass(frozen=True, eq=False)
class Event:
    """One training event at one place in the source.

    ``chain`` holds the helper calls (outermost first) through which the event was reached
    from the unit being analysed; findings point at ``location``, the first of them.
    ``optimizers`` names the optimizers the event is about; when it is ``None``, ``models``
    names the modules whose parameters it touches, and ``None`` there means "all of them".
    """

    kind: EventKind
    node: cst.CSTNode
    label: str
    chain: tuple[cst.CSTNode, ...] = ()
    optimizers: frozenset[str] | None = None
    models: frozenset[str] | None = None
    threshold: cst.BaseExpression | None = None
    threshold_name: str = ""
    name: str = ""
    generator: bool = False
    consumer: str = ""
    synthetic: str = ""

    @property
    def location(self) -> cst.CSTNode:
        return self.chain[0] if self.chain else self.node

    @property
    def identity(self) -> tuple[cst.CSTNode, ...]:
        """The path from the unit down to the event: equal for the same mistake."""
        return (*self.chain, self.node)


class Kind(enum.Enum):
    """What a name is bound to, when its assignments tell."""

    OPTIMIZER = "optimizer"
    SCHEDULER = "scheduler"
    SCALER = "scaler"
    PARAMETERS = "parameters"
    OTHER = "other"


@dataclass(frozen=True)
class Binding:
    kind: Kind
    models: frozenset[str] = frozenset()
    values: tuple[cst.BaseExpression, ...] = ()
    constructed: bool = False

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
        )


@dataclass
class ClassInfo:
    node: cst.ClassDef
    methods: dict[str, cst.FunctionDef]
    attrs: dict[str, Binding] = field(default_factory=dict)
    bases: list[ClassInfo] = field(default_factory=list)
    is_lightning: bool = False
    manual_optimization: bool = False

    def method(self, name: str) -> cst.FunctionDef | None:
        if name in self.methods:
            return self.methods[name]
        for base in self.bases:
            found = base.method(name)
            if found is not None:
                return found
        return None

    def attr(self, key: str) -> Binding | None:
        if key in self.attrs:
            return self.attrs[key]
        for base in self.bases:
            found = base.attr(key)
            if found is not None:
                return found
        return None


@dataclass
class Scope:
    """The bindings visible in one function (or the module), innermost first."""

    names: dict[str, Binding]
    parent: Scope | None = None
    cls: ClassInfo | None = None
    functions: dict[str, cst.FunctionDef] = field(default_factory=dict)

    def lookup(self, key: str) -> Binding | None:
        if key.startswith("self.") and self.cls is not None:
            found = self.cls.attr(key)
            if found is not None:
                return found
        scope: Scope | None = self
        while scope is not None:
            if key in scope.names:
                return scope.names[key]
            scope = scope.parent
        return None

    def function(self, name: str) -> cst.FunctionDef | None:
        scope: Scope | None = self
        while scope is not None:
            if name in scope.functions:
                return scope.functions[name]
            scope = scope.parent
        return None


@dataclass(frozen=True)
class Argument:
    """What a helper's parameter stands for at one call site."""

    key: str | None
    kind: Kind | None


@dataclass(frozen=True)
class Inline:
    """A call into code of the same module whose events happen at this point."""

    callee: cst.FunctionDef | cst.Lambda
    call: cst.CSTNode
    arguments: dict[str, Argument]
    is_method: bool


@dataclass(frozen=True)
class Branch:
    """Items that run on only one of two paths: ``a if c else b``, the right side of
    ``and``/``or``."""

    then: list[Item]
    orelse: list[Item]


Item = Event | Inline | Branch


def _call_name(call: cst.Call) -> str | None:
    func = call.func
    if isinstance(func, cst.Attribute):
        return func.attr.value
    if isinstance(func, cst.Name):
        return func.value
    return None


def _is_grad(expr: cst.BaseExpression) -> cst.BaseExpression | None:
    """For ``p.grad`` or ``p.grad.data``, the ``p``."""
    if isinstance(expr, cst.Attribute) and expr.attr.value == "data":
        expr = expr.value
    if isinstance(expr, cst.Attribute) and expr.attr.value == "grad":
        return expr.value
    return None


def _argument(call: cst.Call, threshold: vocab.Threshold) -> cst.BaseExpression | None:
    positional = [a for a in call.args if a.keyword is None and not a.star]
    for arg in call.args:
        if arg.keyword is not None and arg.keyword.value == threshold.keyword:
            return arg.value
    if 0 <= threshold.position < len(positional):
        return positional[threshold.position].value
    return None


class Bindings:
    """Derives :class:`Binding` values from assignments."""

    def __init__(self, names: ModuleNames) -> None:
        self.names = names
        self._builders: dict[str, bool] = {}
        self._owners: dict[tuple[int, int, int], frozenset[str]] = {}

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
                return Binding(Kind.SCALER, constructed=True)
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
        if isinstance(func, cst.Attribute):
            method = func.attr.value
            if method in vocab.PARAMETER_GENERATOR_METHODS:
                owner = dotted(func.value)
                return Binding(Kind.PARAMETERS, frozenset({owner} if owner else ()), (value,))
            if method in vocab.OPTIMIZER_GETTERS:
                return Binding(Kind.OPTIMIZER)
        return Binding(Kind.OTHER, values=(value,))

    def _argument_keys(self, call: cst.Call) -> frozenset[str]:
        keys = (dotted(a.value) for a in call.args)
        return frozenset(k for k in keys if k is not None)

    def builds_optimizer(self, function_name: str) -> bool:
        """A module-level function that returns an optimizer it constructs."""
        if function_name in self._builders:
            return self._builders[function_name]
        self._builders[function_name] = False
        fn = self.names.functions.get(function_name)
        result = False
        if fn is not None:
            local: dict[str, Binding] = {}
            collect_bindings(statements(fn.body), self, local, None, None)
            for ret in _returns(statements(fn.body)):
                if ret.value is None:
                    continue
                if isinstance(ret.value, cst.Name):
                    binding = local.get(ret.value.value)
                else:
                    binding = self.of_value(ret.value, None)
                if binding is not None and binding.kind is Kind.OPTIMIZER:
                    result = True
        self._builders[function_name] = result
        return result

    def owners(self, expr: cst.CSTNode, scope: Scope | None, depth: int = 0) -> frozenset[str]:
        """The modules whose ``.parameters()`` flow into ``expr`` (through local names too).

        Memoised per expression and scope: loops and helpers ask about the same iterables
        again and again, and following names through their assigned values is a tree walk."""
        memo_key = (id(expr), id(scope), depth)
        known = self._owners.get(memo_key)
        if known is not None:
            return known
        self._owners[memo_key] = frozenset()  # a name assigned from itself adds nothing
        found: set[str] = set()
        for node in walk_code(expr):
            if isinstance(node, cst.Call) and isinstance(node.func, cst.Attribute):
                if node.func.attr.value in vocab.PARAMETER_GENERATOR_METHODS:
                    owner = dotted(node.func.value)
                    if owner is not None:
                        found.add(owner)
            elif isinstance(node, (cst.Name, cst.Attribute)) and scope is not None and depth < 3:
                key = dotted(node)
                binding = scope.lookup(key) if key else None
                if binding is not None:
                    found |= binding.models
                    for value in binding.values:
                        found |= self.owners(value, scope, depth + 1)
        result = frozenset(found)
        self._owners[memo_key] = result
        return result


def walk_code(node: cst.CSTNode) -> Iterator[cst.CSTNode]:
    """``node`` and everything inside it, except nested functions, lambdas and classes."""
    yield node
    for child in node.children:
        if not isinstance(child, (cst.Lambda, cst.FunctionDef, cst.ClassDef)):
            yield from walk_code(child)


def _returns(body: object) -> Iterator[cst.Return]:
    for stmt in body:  # type: ignore[attr-defined]
        if isinstance(stmt, cst.SimpleStatementLine):
            yield from (small for small in stmt.body if isinstance(small, cst.Return))
        elif isinstance(stmt, cst.BaseCompoundStatement) and not isinstance(
            stmt, (cst.FunctionDef, cst.ClassDef)
        ):
            yield from _returns(nested_statements(stmt))


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
                for target, value in assignment_targets(small):
                    _bind(target, value, bindings, names, attrs, scope)
            continue
        if isinstance(stmt, cst.BaseCompoundStatement):
            collect_bindings(nested_statements(stmt), bindings, names, attrs, scope)


def _bind(
    target: cst.BaseExpression,
    value: cst.BaseExpression,
    bindings: Bindings,
    names: dict[str, Binding],
    attrs: dict[str, Binding] | None,
    scope: Scope | None,
) -> None:
    key = dotted(target)
    if key is None:
        return
    binding = bindings.of_value(value, scope)
    if key.startswith("self."):
        if attrs is not None:
            attrs[key] = attrs[key].merge(binding) if key in attrs else binding
    elif "." not in key:
        names[key] = names[key].merge(binding) if key in names else binding


class Recognizer:
    """Finds the events of statements and expressions of one unit, in evaluation order."""

    def __init__(
        self,
        module: cst.Module,
        names: ModuleNames,
        bindings: Bindings,
        scope: Scope,
        arguments: dict[str, Argument] | None = None,
        chain: tuple[cst.CSTNode, ...] = (),
        local_suffix: str = "",
    ) -> None:
        self.module = module
        self.names = names
        self.bindings = bindings
        self.scope = scope
        self.arguments = arguments or {}
        self.chain = chain
        # An expanded helper's own locals are new objects at each call: suffixing their keys
        # keeps two calls' optimizers apart.
        self.local_suffix = local_suffix
        self.loop_owners: dict[str, frozenset[str]] = {}

    # -- naming -----------------------------------------------------------------------------
    def key(self, expr: cst.BaseExpression) -> str | None:
        """A stable name for a receiver, in terms of the unit being analysed."""
        if isinstance(expr, cst.Name):
            argument = self.arguments.get(expr.value)
            if argument is not None:
                return argument.key
            if self.local_suffix and expr.value in self.scope.names:
                return expr.value + self.local_suffix
            return expr.value
        if isinstance(expr, cst.Attribute):
            base = self.key(expr.value)
            return None if base is None else f"{base}.{expr.attr.value}"
        if isinstance(expr, cst.Subscript):
            base = self.key(expr.value)
            inner = self.module.code_for_node(expr.slice[0]) if len(expr.slice) == 1 else None
            return None if base is None or inner is None else f"{base}[{inner}]"
        if isinstance(expr, cst.Call) and _call_name(expr) in vocab.OPTIMIZER_GETTERS:
            base = self.key(expr.func.value) if isinstance(expr.func, cst.Attribute) else None
            return f"{base}.{_call_name(expr)}()" if base else None
        return None

    def kind(self, expr: cst.BaseExpression) -> Kind | None:
        """Whether a receiver is an optimizer, a scheduler, a scaler...: by its binding when
        one is visible, by its name otherwise."""
        if isinstance(expr, cst.Call):
            if _call_name(expr) in vocab.OPTIMIZER_GETTERS:
                return Kind.OPTIMIZER
            return None
        if isinstance(expr, cst.Subscript):
            return self.kind(expr.value)
        root = expr
        while isinstance(root, cst.Attribute):
            root = root.value
        argument = self.arguments.get(root.value) if isinstance(root, cst.Name) else None
        is_argument = argument is not None
        if argument is not None and isinstance(expr, cst.Name):
            if argument.kind not in (None, Kind.OTHER):
                return argument.kind
            return self._kind_by_name(expr.value) or (
                self._kind_by_name(argument.key) if argument.key else None
            )
        # Bindings are looked up under this scope's own names, the caller's for arguments.
        key = self.key(expr) if is_argument else dotted(expr)
        if key is None:
            return None
        binding = self.scope.lookup(key)
        if binding is not None and binding.kind is not Kind.OTHER:
            return binding.kind
        return self._kind_by_name(key)

    @staticmethod
    def _kind_by_name(key: str) -> Kind | None:
        last = key.split("[")[0].split(".")[-1]
        if vocab.name_says_scaler(last):
            return Kind.SCALER
        if vocab.name_says_optimizer(last):
            return Kind.OPTIMIZER
        return None

    def owners(self, expr: cst.BaseExpression | None) -> frozenset[str] | None:
        """Modules whose parameters ``expr`` yields, or ``None`` when that is not visible."""
        if expr is None:
            return None
        found = self.bindings.owners(expr, self.scope)
        if not found:
            return None
        return frozenset(self._rename_owner(o) for o in found)

    def _rename_owner(self, owner: str) -> str:
        root, _, rest = owner.partition(".")
        argument = self.arguments.get(root)
        if argument is None or argument.key is None:
            return owner
        return f"{argument.key}.{rest}" if rest else argument.key

    def _grad_owner(self, param: cst.BaseExpression) -> frozenset[str] | None:
        if isinstance(param, cst.Name):
            return self.loop_owners.get(param.value)
        return None

    def _event(self, kind: EventKind, node: cst.CSTNode, label_node: cst.CSTNode, **kw: object) -> Event:
        label = self.module.code_for_node(label_node)
        return Event(kind, node, label, chain=self.chain, **kw)  # type: ignore[arg-type]

    # -- expressions ------------------------------------------------------------------------
    def items(self, node: cst.CSTNode) -> list[Item]:
        """Events and helper calls of an expression (or simple statement), in evaluation order."""
        out: list[Item] = []
        self._collect(node, out)
        return out

    def _collect(self, node: cst.CSTNode, out: list[Item]) -> None:
        if isinstance(node, (cst.Lambda, cst.FunctionDef, cst.ClassDef)):
            return
        if isinstance(node, (cst.Assign, cst.AnnAssign, cst.AugAssign)):
            value = node.value
            if value is not None:
                self._collect(value, out)
            out.extend(self._assignment(node))
            return
        if isinstance(node, cst.IfExp):
            self._collect(node.test, out)
            self._branch(self.items(node.body), self.items(node.orelse), out)
            return
        if isinstance(node, cst.BooleanOperation):
            self._collect(node.left, out)
            self._branch(self.items(node.right), [], out)
            return
        if isinstance(node, cst.Call):
            self._collect(node.func, out)
            for arg in node.args:
                self._collect(arg.value, out)
            out.extend(self._call(node))
            return
        if isinstance(node, cst.CompFor):
            self._collect(node.iter, out)
            out.extend(self.iteration(node.iter, node))
            for child in node.children:
                if child is not node.iter:
                    self._collect(child, out)
            return
        for child in node.children:
            self._collect(child, out)

    @staticmethod
    def _branch(then: list[Item], orelse: list[Item], out: list[Item]) -> None:
        if then or orelse:
            out.append(Branch(then, orelse))

    def iteration(self, iterable: cst.BaseExpression, node: cst.CSTNode) -> list[Item]:
        """Iterating a stored parameter generator consumes it."""
        key = self._params_key(iterable)
        if key is None:
            return []
        return [self._event(EventKind.PARAMS_USE, node, iterable, name=key)]

    def _params_key(self, expr: cst.BaseExpression) -> str | None:
        if not isinstance(expr, (cst.Name, cst.Attribute)):
            return None
        key = dotted(expr)
        if key is None or (isinstance(expr, cst.Name) and expr.value in self.arguments):
            return None
        binding = self.scope.lookup(key)
        return key if binding is not None and binding.kind is Kind.PARAMETERS else None

    def _assignment(self, node: cst.Assign | cst.AnnAssign | cst.AugAssign) -> list[Item]:
        if isinstance(node, cst.AugAssign):
            return []
        out: list[Item] = []
        for target, value in assignment_targets(node):
            param = _is_grad(target)
            if param is not None and isinstance(value, cst.Name) and value.value == "None":
                out.append(self._event(EventKind.ZERO_GRAD, node, node,
                                       models=self._grad_owner(param)))
                continue
            key = self.key(target)
            if key is None:
                continue
            binding = self.bindings.of_value(value, self.scope)
            if binding.kind is Kind.OPTIMIZER and binding.constructed:
                out.append(self._event(EventKind.CREATE_OPTIMIZER, node, value,
                                       optimizers=frozenset({key})))
            existing = self.scope.lookup(dotted(target) or "")
            if existing is not None and existing.kind is Kind.PARAMETERS:
                out.append(self._event(EventKind.PARAMS_BIND, node, target, name=dotted(target),
                                       generator=binding.kind is Kind.PARAMETERS))
        return out

    def _call(self, call: cst.Call) -> list[Item]:
        out: list[Item] = []
        func = call.func
        qualified = self.names.qualify(func) if self.names.is_imported(func) else None
        consumes = self._is_consumer(call, qualified)
        consumer_kind = ""
        if qualified is not None and qualified in vocab.CLIP_FUNCTIONS:
            consumer_kind = "clip"
        elif qualified is not None and vocab.is_optimizer_class(qualified):
            consumer_kind = "optimizer"
        if consumes:
            for arg in call.args:
                key = self._params_key(arg.value)
                if key is not None:
                    out.append(self._event(EventKind.PARAMS_USE, call, func, name=key,
                                           consumer=consumer_kind))
        if qualified is not None:
            if qualified in vocab.CLIP_FUNCTIONS:
                params = call.args[0].value if call.args else None
                out.append(self._clip(call, vocab.CLIP_FUNCTIONS[qualified], models=self.owners(params)))
                return out
            if qualified in vocab.BACKWARD_FUNCTIONS:
                out.append(self._event(EventKind.BACKWARD, call, func))
                return out
            if qualified in vocab.TRAINER_CLASSES:
                out.extend(self._trainer(call))
                return out
        if isinstance(func, cst.Attribute):
            out.extend(self._method_call(call, func))
        elif isinstance(func, cst.Name):
            target = self.scope.function(func.value)
            if target is not None:
                out.extend(self._inline(target, call, is_method=False))
        return out

    def _is_consumer(self, call: cst.Call, qualified: str | None) -> bool:
        name = qualified or (call.func.value if isinstance(call.func, cst.Name) else None)
        return name not in vocab.NON_CONSUMING_CALLS

    def _clip(self, call: cst.Call, threshold: vocab.Threshold | None, **kw: object) -> Event:
        value = _argument(call, threshold) if threshold else None
        return self._event(EventKind.CLIP, call, call.func, threshold=value,
                           threshold_name=threshold.keyword if threshold else "", **kw)

    def _trainer(self, call: cst.Call) -> list[Item]:
        for arg in call.args:
            if arg.keyword is not None and arg.keyword.value in vocab.TRAINER_CLIP_KEYWORDS:
                return [self._event(EventKind.CLIP_CONFIG, call, call.func, threshold=arg.value,
                                    threshold_name=arg.keyword.value)]
        return []

    def _method_call(self, call: cst.Call, func: cst.Attribute) -> list[Item]:
        method = func.attr.value
        receiver = func.value
        positional = [a.value for a in call.args if a.keyword is None and not a.star]
        if isinstance(receiver, cst.Name) and receiver.value == "self" and self.scope.cls is not None:
            method_def = self.scope.cls.method(method)
            if method_def is not None:
                return self._inline(method_def, call, is_method=True)
        if method in vocab.BACKWARD_METHODS:
            return [self._event(EventKind.BACKWARD, call, func)]
        if method == "step":
            return self._step(call, func, positional)
        if method == "zero_grad":
            kind = self.kind(receiver)
            if kind is Kind.OPTIMIZER:
                key = self.key(receiver)
                return [self._event(EventKind.ZERO_GRAD, call, func,
                                    optimizers=frozenset({key}) if key else None)]
            if kind in (Kind.SCHEDULER, Kind.SCALER):
                return []
            key = self.key(receiver)
            return [self._event(EventKind.ZERO_GRAD, call, func,
                                models=frozenset({key}) if key else None)]
        if method in ("unscale_", "update") and self.kind(receiver) is Kind.SCALER:
            if method == "update":
                return [self._event(EventKind.SCALER_UPDATE, call, func)]
            key = self.key(positional[0]) if positional else None
            return [self._event(EventKind.UNSCALE, call, func,
                                optimizers=frozenset({key}) if key else None)]
        if method == vocab.CLIP_GRADIENTS_METHOD:
            return [self._clip_gradients(call, receiver)]
        if method in vocab.CLIP_METHODS_WITH_PARAMETERS:
            takes_params = len(positional) >= 2 or any(
                a.keyword is not None and a.keyword.value == "parameters" for a in call.args
            )
            if takes_params or method not in vocab.CLIP_METHODS_ON_MODULE:
                params = positional[0] if positional else None
                return [self._clip(call, vocab.CLIP_METHODS_WITH_PARAMETERS[method],
                                   models=self.owners(params))]
            key = self.key(receiver)
            return [self._clip(call, vocab.CLIP_METHODS_ON_MODULE[method],
                               models=frozenset({key}) if key else None)]
        param = _is_grad(receiver)
        if param is not None and method in vocab.HAND_CLIP_METHODS:
            return [self._clip(call, None, models=self._grad_owner(param))]
        if param is not None and method in vocab.HAND_ZERO_METHODS:
            return [self._event(EventKind.ZERO_GRAD, call, func, models=self._grad_owner(param))]
        return []

    def _clip_gradients(self, call: cst.Call, receiver: cst.BaseExpression) -> Event:
        optimizer = next(
            (a.value for a in call.args if a.keyword is None and self.kind(a.value) is Kind.OPTIMIZER),
            None,
        )
        key = self.key(optimizer) if optimizer is not None else None
        # Lightning's ``self.clip_gradients(opt, 0.5)`` may pass the threshold by position;
        # Fabric's ``fabric.clip_gradients(model, opt, max_norm=...)`` only by keyword.
        lightning = isinstance(receiver, cst.Name) and receiver.value == "self"
        threshold = None
        for candidate in vocab.CLIP_GRADIENTS_THRESHOLDS:
            candidate = candidate if lightning else replace(candidate, position=-1)
            if _argument(call, candidate) is not None:
                threshold = candidate
                break
        return self._clip(call, threshold, optimizers=frozenset({key}) if key else None)

    def _step(self, call: cst.Call, func: cst.Attribute, positional: list[cst.BaseExpression]) -> list[Item]:
        kind = self.kind(func.value)
        if kind is Kind.SCALER:
            key = self.key(positional[0]) if positional else None
            return [self._event(EventKind.STEP, call, func,
                                optimizers=frozenset({key}) if key else None)]
        if kind is not Kind.OPTIMIZER:
            return []
        out: list[Item] = []
        closure = positional[0] if positional else next(
            (a.value for a in call.args if a.keyword is not None and a.keyword.value == "closure"),
            None,
        )
        if closure is not None:
            out.extend(self._closure(closure))
        key = self.key(func.value)
        out.append(self._event(EventKind.STEP, call, func,
                               optimizers=frozenset({key}) if key else None))
        return out

    def _closure(self, closure: cst.BaseExpression) -> list[Item]:
        """``optimizer.step(closure)`` runs the closure, and with it a backward pass, first."""
        if isinstance(closure, cst.Lambda):
            return [Inline(closure, closure, {}, is_method=False)]
        target: cst.FunctionDef | None = None
        is_method = False
        if isinstance(closure, cst.Name):
            target = self.scope.function(closure.value)
        elif (isinstance(closure, cst.Attribute) and isinstance(closure.value, cst.Name)
              and closure.value.value == "self" and self.scope.cls is not None):
            target = self.scope.cls.method(closure.attr.value)
            is_method = True
        if target is not None:
            return [Inline(target, closure, {}, is_method=is_method)]
        return [self._event(EventKind.BACKWARD, closure, closure, synthetic="closure")]

    def _inline(self, target: cst.FunctionDef, call: cst.Call, is_method: bool) -> list[Item]:
        params = [p for p in target.params.params]
        if is_method and params and params[0].name.value in ("self", "cls"):
            params = params[1:]
        arguments: dict[str, Argument] = {}
        positional = [a.value for a in call.args if a.keyword is None and not a.star]
        for param, value in zip(params, positional, strict=False):
            arguments[param.name.value] = Argument(self.key(value), self.kind(value))
        for arg in call.args:
            if arg.keyword is not None:
                arguments[arg.keyword.value] = Argument(self.key(arg.value), self.kind(arg.value))
        for param in [*target.params.params, *target.params.kwonly_params]:
            if param.name.value not in arguments and param.default is not None:
                arguments[param.name.value] = Argument(None, None)
        return [Inline(target, call, arguments, is_method)]
