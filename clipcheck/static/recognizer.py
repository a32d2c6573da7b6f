"""Recognising training events in LibCST expressions, in the order Python evaluates them.

Names resolve through the module's imports (:mod:`clipcheck.static.names`) and through what
receivers are bound to (:mod:`clipcheck.static.bindings`); what a call means comes from the
vocabulary of each framework (:mod:`clipcheck.static.frameworks`).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import NamedTuple

import libcst as cst

from clipcheck.static.bindings import PART, Binding, Bindings, Kind, Scope
from clipcheck.static.events import Amp, Consumer, Event, EventKind
from clipcheck.static.frameworks import Context, accelerate, lightning, naming, registered
from clipcheck.static.frameworks import torch as vocab
from clipcheck.static.frameworks.custom import NONE as NO_CUSTOM_VOCABULARY
from clipcheck.static.frameworks.custom import Vocabulary
from clipcheck.static.names import ModuleNames, dotted, numeric_literal
from clipcheck.static.syntax import assignment_targets, children, statements


class Argument(NamedTuple):
    """What a helper's parameter stands for at one call site."""

    key: str | None
    kind: Kind | None
    models: frozenset[str] = frozenset()  # when it is an optimizer: the modules it updates
    truth: bool | None = None             # passed as the literal ``True`` or ``False``
    gated: bool = False                   # an optimizer accelerate prepared
    # The value passed and the caller's recognizer, to tell (when a backward asks) which names
    # that value visibly comes from.
    source: tuple[Recognizer, cst.BaseExpression] | None = None

    def flows(self) -> frozenset[str]:
        if self.source is None:
            return frozenset()
        caller, value = self.source
        return caller.flows(value)


_NO_ARGUMENT = Argument(None, None)


class Inline(NamedTuple):
    """A call into code of the same module whose events happen at this point."""

    callee: cst.FunctionDef | cst.Lambda
    call: cst.CSTNode
    arguments: dict[str, Argument]
    # Resolved only by dynamic dispatch (a hook called on each element of a collection): the
    # call is no call site, findings stay inside the callee.
    dynamic: bool = False


class Branch(NamedTuple):
    """Items that run on only one of two paths: ``a if c else b``, the right side of
    ``and``/``or``."""

    then: list[Item]
    orelse: list[Item]


Item = Event | Inline | Branch


class BoundaryTest(enum.Enum):
    """A test that is true only on the micro-batch that updates (gradient accumulation)."""

    MODULO = "modulo"          # ``(i + 1) % accum_steps == 0`` (also used for logging)
    NAMED_FLAG = "named-flag"  # a name assigned from such a test: ``is_update = ...``
    SYNC_FLAG = "sync-flag"    # accelerate's ``accelerator.sync_gradients``


# Methods of ``torch.optim.Optimizer`` whose effect on gradients the vocabulary knows (``step``,
# ``zero_grad``) or that leave them alone; any other method called on an optimizer is unknown.
OPTIMIZER_METHODS = frozenset({
    "step", "zero_grad", "state_dict", "load_state_dict", "add_param_group", "register_step_pre_hook",
    "register_step_post_hook", "register_state_dict_pre_hook", "register_load_state_dict_post_hook",
})


# Calls that change which parameters receive gradients: ``p.requires_grad_(False)``, Lightning's
# ``toggle_optimizer``, the ``set_requires_grad(nets, False)`` helpers of GAN code bases.
FREEZE_METHODS = frozenset({"requires_grad_", "toggle_optimizer", "untoggle_optimizer", "set_requires_grad"})
REQUIRES_GRAD = "requires_grad"
REQUIRES_GRAD_METHOD = "requires_grad_"
# Calls that build a module from another one with its gradients.
COPYING_CALLS = frozenset({"copy.deepcopy", "deepcopy"})


# Method names whose meaning comes from a framework's vocabulary (or from ``nn.Module``): a
# class of the module that happens to define one does not make every such call its own.
NOT_RESOLVED_BY_NAME = OPTIMIZER_METHODS | vocab.BACKWARD_METHODS | frozenset(
    vocab.CLIP_METHODS_WITH_PARAMETERS) | frozenset(vocab.CLIP_METHODS_ON_MODULE) | frozenset({
        "forward", "update", "unscale_", "scale", "parameters", "named_parameters", "train", "eval",
        "to", "cuda", "cpu", "item", "clip_gradients", "apply", "run", "fit", "call",
    })


# Expressions that cannot be a closure (``scheduler.step(val_loss)`` passes data, not code).
_NOT_CALLABLE = (cst.Integer, cst.Float, cst.Imaginary, cst.BaseString, cst.Tuple, cst.List, cst.Dict,
                 cst.Set, cst.ListComp, cst.DictComp, cst.SetComp, cst.GeneratorExp, cst.BinaryOperation,
                 cst.UnaryOperation, cst.Comparison, cst.Subscript)


def _is_none(expr: cst.BaseExpression) -> bool:
    return isinstance(expr, cst.Name) and expr.value == "None"


def _is_zero(expr: cst.BaseExpression) -> bool:
    return isinstance(expr, cst.Integer) and expr.value == "0"


_UNKNOWN = object()
# The node classes :meth:`Recognizer._collect` treats apart (LibCST never subclasses them).
_COLLECTED_APART = frozenset({cst.Lambda, cst.FunctionDef, cst.ClassDef, cst.Assign, cst.AnnAssign,
                              cst.AugAssign,
                              cst.IfExp, cst.BooleanOperation, cst.Expr, cst.Call, cst.CompFor})


def _compare(left: object, operator: cst.BaseCompOp, right: object) -> bool | None:
    """``left <operator> right`` for known literals; ``None`` when not known."""
    if left is _UNKNOWN or right is _UNKNOWN:
        return None
    if isinstance(operator, (cst.Is, cst.IsNot)):
        return (left is right) == isinstance(operator, cst.Is) if right is None or left is None else None
    if isinstance(left, (str, bytes)) and isinstance(right, (str, bytes)):
        return {cst.Equal: left == right, cst.NotEqual: left != right}.get(type(operator))
    if not isinstance(left, (int, float)) or not isinstance(right, (int, float)):
        return None
    comparisons = {cst.Equal: left == right, cst.NotEqual: left != right, cst.GreaterThan: left > right,
                   cst.GreaterThanEqual: left >= right, cst.LessThan: left < right,
                   cst.LessThanEqual: left <= right}
    return comparisons.get(type(operator))


def _is_modulo(expr: cst.BaseExpression) -> bool:
    return isinstance(expr, cst.BinaryOperation) and isinstance(expr.operator, cst.Modulo)


def _loop_pairs(target: cst.BaseExpression | None,
                iterable: cst.BaseExpression | None) -> list[tuple[str, cst.BaseExpression]]:
    """Loop variables and the iterables they take items from: ``p`` from
    ``model.parameters()``, and ``a, b`` element-wise from ``zip(xs, ys)``."""
    if isinstance(target, cst.Name) and iterable is not None:
        return [(target.value, iterable)]
    if (isinstance(target, (cst.Tuple, cst.List)) and isinstance(iterable, cst.Call)
            and isinstance(iterable.func, cst.Name) and iterable.func.value == "zip"
            and len(target.elements) == len(iterable.args)):
        return [(e.value.value, a.value) for e, a in zip(target.elements, iterable.args, strict=True)
                if isinstance(e.value, cst.Name)]
    return []


def _names_in(target: cst.BaseExpression | None) -> list[cst.Name]:
    """The names a loop target binds: ``cb``, ``i, (x, y)``."""
    if isinstance(target, cst.Name):
        return [target]
    if isinstance(target, (cst.Tuple, cst.List)):
        return [n for e in target.elements for n in _names_in(e.value)]
    return []


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
        custom: Vocabulary = NO_CUSTOM_VOCABULARY,
    ) -> None:
        self.module = module
        self.custom = custom
        self.names = names
        self.bindings = bindings
        self.scope = scope
        self.arguments = arguments or {}
        self.chain = chain
        # An expanded helper's own locals are new objects at each call: suffixing their keys
        # keeps two calls' optimizers apart.
        self.local_suffix = local_suffix
        self.loop_owners: dict[str, frozenset[str]] = {}
        self.loop_names: set[str] = set()  # the loop variables of the loops around here
        # ``for opt in (opt_g, opt_d):``: the optimizers each loop variable stands for.
        self.loop_elements: dict[str, list[cst.BaseExpression]] = {}

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
        if isinstance(expr, cst.Call) and _call_name(expr) in lightning.OPTIMIZER_GETTERS:
            base = self.key(expr.func.value) if isinstance(expr.func, cst.Attribute) else None
            return f"{base}.{_call_name(expr)}()" if base else None
        return None

    def kind(self, expr: cst.BaseExpression) -> Kind | None:
        """Whether a receiver is an optimizer, a scheduler, a scaler...: by its binding when
        one is visible, by its name otherwise."""
        if type(expr) is cst.Call:  # (``type`` where ``isinstance`` would go through ABCMeta)
            if _call_name(expr) in lightning.OPTIMIZER_GETTERS:
                return Kind.OPTIMIZER
            return None
        if type(expr) is cst.Subscript:
            return self.kind(expr.value)
        root = expr
        while type(root) is cst.Attribute:
            root = root.value
        argument = self.arguments.get(root.value) if type(root) is cst.Name else None
        is_argument = argument is not None
        if argument is not None and type(expr) is cst.Name:
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
        if naming.name_says_scaler(last):
            return Kind.SCALER
        if naming.name_says_optimizer(last):
            return Kind.OPTIMIZER
        if naming.name_says_accelerator(last):
            return Kind.ACCELERATOR
        if naming.name_says_engine(last):
            return Kind.ENGINE
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
        """A dotted name of this scope in the unit's terms, as :meth:`key` names receivers."""
        root, dot, rest = owner.partition(".")
        argument = self.arguments.get(root)
        if argument is not None:
            root = argument.key if argument.key is not None else root
        elif self.local_suffix and root in self.scope.names:
            root += self.local_suffix
        return root + dot + rest

    def truth(self, test: cst.BaseExpression) -> bool | None:
        """The value of an ``if`` test when what it reads is known: a parameter this call
        passed a literal for (``first_step(zero_grad=True)``, ``clip(model, None)``), a module
        constant or a local one, compared with a literal (``max_norm > 0``, ``x is None``) or
        taken for its truth; ``None`` when it is not known."""
        if isinstance(test, cst.UnaryOperation) and isinstance(test.operator, cst.Not):
            inner = self.truth(test.expression)
            return None if inner is None else not inner
        if isinstance(test, cst.BooleanOperation):
            left, right = self.truth(test.left), self.truth(test.right)
            if isinstance(test.operator, cst.And):
                return False if False in (left, right) else (True if left and right else None)
            return True if True in (left, right) else (False if left is False and right is False else None)
        if isinstance(test, cst.Comparison) and len(test.comparisons) == 1:
            return _compare(self.literal(test.left), test.comparisons[0].operator,
                            self.literal(test.comparisons[0].comparator))
        if isinstance(test, cst.Name):
            if test.value in self.arguments and self.arguments[test.value].truth is not None:
                return self.arguments[test.value].truth
            value = self.literal(test)
            return None if value is _UNKNOWN else bool(value)
        return None

    def literal(self, expr: cst.BaseExpression) -> object:
        """The literal value (a number, a string, ``None``, ``True``/``False``) of what ``expr``
        holds here (``mode="valid"`` passed by keyword or by position), or ``_UNKNOWN``."""
        if isinstance(expr, cst.Name) and self.arguments.get(expr.value, _NO_ARGUMENT).kind is Kind.ABSENT:
            return None
        expr = self.passed(expr)
        if isinstance(expr, cst.SimpleString):
            return expr.evaluated_value
        if isinstance(expr, cst.Name) and expr.value in ("None", "True", "False"):
            return {"None": None, "True": True, "False": False}[expr.value]
        if isinstance(expr, cst.Name) and self._is_local(expr.value):
            return _UNKNOWN
        number = self.names.number(expr)
        return _UNKNOWN if number is None else number

    def passed(self, expr: cst.BaseExpression) -> cst.BaseExpression:
        """The expression that a parameter stands for (what the callers passed, through every
        level of helpers), or a local name's only value when that is a number literal; else
        ``expr`` itself."""
        if not isinstance(expr, cst.Name):
            return expr
        argument = self.arguments.get(expr.value)
        if argument is not None:
            if argument.source is None:
                return expr
            caller, value = argument.source
            return caller.passed(value)
        binding = self.scope.names.get(expr.value) if self.scope.parent is not None else None
        values = binding.values if binding is not None else ()
        if len(values) == 1 and self._constant(values[0]) and not self.scope.rebinds(expr.value):
            return values[0]
        return expr

    def _constant(self, expr: cst.BaseExpression) -> bool:
        """A number literal, or a module constant that no local name here shadows."""
        if isinstance(expr, cst.Name):
            return not self._is_local(expr.value) and self.names.number(expr) is not None
        return numeric_literal(expr) is not None

    def _is_local(self, name: str) -> bool:
        """A parameter or local variable of a function around here (it shadows the module's)."""
        return any(name in s.names or name in s.params for s in self.scope.chain() if s.parent is not None)

    def boundary_test(self, test: cst.BaseExpression, depth: int = 0) -> tuple[BoundaryTest, bool] | None:
        """Whether ``test`` tells accumulation boundaries apart, and whether it holds on them
        (``True``) or off them (``False``): a modulo test against zero (``== 0``, ``!= 0``),
        the sync flag, a local name assigned from one, their negation, or an ``and``/``or``
        with one of them on either side (a disjunction is usually the last-batch test)."""
        if isinstance(test, cst.UnaryOperation) and isinstance(test.operator, cst.Not):
            inner = self.boundary_test(test.expression, depth)
            return None if inner is None else (inner[0], not inner[1])
        if isinstance(test, cst.Attribute) and test.attr.value in accelerate.SYNC_FLAGS:
            return BoundaryTest.SYNC_FLAG, True
        if _is_modulo(test):  # ``if i % accum:`` holds off the boundary, ``not i % accum`` on it
            return BoundaryTest.MODULO, False
        if isinstance(test, cst.BooleanOperation):
            sides = (self.boundary_test(test.left, depth), self.boundary_test(test.right, depth))
            return next((side for side in sides if side is not None), None)
        if isinstance(test, cst.Comparison) and len(test.comparisons) == 1:
            compared = test.comparisons[0]
            if isinstance(compared.operator, (cst.Equal, cst.NotEqual)) and _is_zero(compared.comparator):
                holds = isinstance(compared.operator, cst.Equal)
                if _is_modulo(test.left):
                    return BoundaryTest.MODULO, holds
                # ``acc = (acc + 1) % n`` ... ``if acc == 0:``
                binding = self.scope.lookup(test.left.value) if isinstance(test.left, cst.Name) else None
                values = binding.values if binding is not None else ()
                if any(map(_is_modulo, values)) and all(_is_modulo(v) or isinstance(v, cst.Integer)
                                                        for v in values):
                    return BoundaryTest.MODULO, holds
        if isinstance(test, cst.Name) and test.value in self.arguments and depth < 2:
            # ``update_grad=(i + 1) % accum == 0`` handed to a helper that tests ``update_grad``
            passed = self.passed(test)
            found = self.boundary_test(passed, depth + 1) if passed is not test else None
            return (BoundaryTest.NAMED_FLAG, found[1]) if found is not None else None
        if isinstance(test, cst.Name) and depth < 2:
            binding = self.scope.lookup(test.value)
            for value in binding.values if binding is not None else ():
                found = self.boundary_test(value, depth + 1)
                if found is not None:
                    return BoundaryTest.NAMED_FLAG, found[1]
        return None

    def enclosed(self, inner: Scope) -> dict[str, Argument]:
        """The free names of a nested function (``inner``) that are this unit's locals, keyed
        as this recognizer keys them: a closure's ``optimizer.zero_grad()`` zeroes the
        optimizer of the expanded call that defined it."""
        if inner.parent is not self.scope or not self.local_suffix:
            return {}
        return {
            name: self._argument_value(cst.Name(name))
            for name in self.scope.names if name not in inner.names
        }

    def about(self, optimizer: cst.BaseExpression | None) -> dict[str, object]:
        """The ``optimizers`` and ``optimizer_models`` of an event on ``optimizer`` (on each
        optimizer a loop variable stands for)."""
        if isinstance(optimizer, cst.Name) and optimizer.value in self.loop_elements:
            each = [self.about(e) for e in self.loop_elements[optimizer.value]]
            return {"optimizers": frozenset().union(*(a["optimizers"] for a in each)),  # type: ignore[arg-type]
                    "optimizer_models": frozenset().union(*(a["optimizer_models"] for a in each)),  # type: ignore[arg-type]
                    "gated": all(a["gated"] for a in each)}
        key = self.key(optimizer) if optimizer is not None else None
        if key is None or optimizer is None:
            return {"certain": False}  # an optimizer, but which one is unknown
        return {"optimizers": frozenset({key}), "optimizer_models": self.optimizer_models(optimizer),
                "gated": self._gated(optimizer)}

    def _gated(self, optimizer: cst.BaseExpression) -> bool:
        """An optimizer accelerate prepared: it skips steps off accumulation boundaries."""
        if isinstance(optimizer, cst.Name) and optimizer.value in self.arguments:
            return self.arguments[optimizer.value].gated
        key = dotted(optimizer)
        binding = self.scope.lookup(key) if key else None
        return binding is not None and binding.gated

    def optimizer_models(self, optimizer: cst.BaseExpression) -> frozenset[str]:
        """The modules an optimizer was built from, in the unit's terms: resolved in this
        (possibly inlined) scope, so that linkage survives expansion."""
        if isinstance(optimizer, cst.Name) and optimizer.value in self.arguments:
            return self.arguments[optimizer.value].models
        key = dotted(optimizer)
        binding = self.scope.lookup(key) if key else None
        if binding is None or key is None:
            return frozenset()
        if binding.kind is Kind.OPTIMIZER:
            models = binding.models
        elif binding.kind is Kind.ENGINE:  # the engine is the module it updates
            models = binding.models | {key}
        else:  # built by a factory the engine cannot see: what it was handed
            models = frozenset(m for v in binding.values if isinstance(v, cst.Call) for m in self._handed(v))
        return frozenset(self._rename_owner(m) for m in models)

    def _handed(self, call: cst.Call) -> frozenset[str]:
        """The modules a call is handed: the owners of parameters it receives, else the plain
        names it receives (``build_optimizer(cfg, student)``) and the object a method is called
        on (``model.configure_optimizers(weight_decay, lr)``), not names that say they hold a
        hyperparameter."""
        owners = frozenset(o for a in call.args for o in self.bindings.owners(a.value, self.scope))
        if owners:
            return owners
        handed = [a.value for a in call.args]
        if isinstance(call.func, cst.Attribute) and call.func.attr.value == lightning.CONFIGURE_OPTIMIZERS:
            handed.append(call.func.value)  # ``model.configure_optimizers(weight_decay, lr)``
        return frozenset(k for v in handed if isinstance(v, (cst.Name, cst.Attribute))
                         for k in (dotted(v),)
                         if k is not None and not naming.name_says_setting(k.split(".")[-1]))

    def _argument_value(self, value: cst.BaseExpression) -> Argument:
        if _is_none(value):
            return Argument(None, Kind.ABSENT)
        kind = self.kind(value)
        models = self.optimizer_models(value) if kind is Kind.OPTIMIZER else frozenset()
        truth = {"True": True, "False": False}.get(value.value) if isinstance(value, cst.Name) else None
        gated = kind is Kind.OPTIMIZER and self._gated(value)
        return Argument(self.key(value), kind, models, truth, gated, (self, value))

    @contextmanager
    def loop_target(self, target: cst.BaseExpression | None,
                    iterable: cst.BaseExpression | None) -> Iterator[bool]:
        """Inside a ``for p in model.parameters()`` body, ``p.grad`` belongs to ``model``;
        inside ``for opt in (opt_g, opt_d):``, ``opt`` stands for each of them (the context
        says whether the loop fans out so)."""
        pairs = _loop_pairs(target, iterable)
        names = {n.value for n in _names_in(target)} - self.loop_names
        self.loop_names |= names
        saved = {name: self.loop_owners.get(name) for name, _ in pairs}
        for name, source in pairs:
            owners = self.owners(source)
            if owners is not None:
                self.loop_owners[name] = owners
        elements = self._optimizer_elements(iterable) if isinstance(target, cst.Name) else []
        name = target.value if isinstance(target, cst.Name) else ""
        outer = self.loop_elements.pop(name, None)  # an inner loop may reuse the name
        if elements:
            self.loop_elements[name] = elements
        try:
            yield bool(elements)
        finally:
            self.loop_names -= names
            self.loop_elements.pop(name, None)
            if outer is not None:
                self.loop_elements[name] = outer
            for name, previous in saved.items():
                self.loop_owners.pop(name, None)
                if previous is not None:
                    self.loop_owners[name] = previous

    def _optimizer_elements(self, iterable: cst.BaseExpression | None) -> list[cst.BaseExpression]:
        """The optimizers of a literal collection (``(opt_g, opt_d)``, or a name bound once to
        one), when every element is one."""
        if isinstance(iterable, cst.Name):
            binding = self.scope.lookup(iterable.value)
            values = binding.values if binding is not None else ()
            iterable = values[0] if len(values) == 1 else None
        if not isinstance(iterable, (cst.List, cst.Tuple)) or not iterable.elements:
            return []
        elements = [e.value for e in iterable.elements if not isinstance(e, cst.StarredElement)]
        if len(elements) != len(iterable.elements) or any(
                self.key(e) is None or self.kind(e) is not Kind.OPTIMIZER for e in elements):
            return []
        return elements

    def _grad_owner(self, param: cst.BaseExpression) -> frozenset[str]:
        """The modules owning ``param`` (a loop variable over their parameters); empty when
        unknown: a hand-written ``.grad`` of an unknown tensor may belong to any optimizer."""
        if isinstance(param, cst.Name):
            return self.loop_owners.get(param.value, frozenset())
        return frozenset()

    def event(self, kind: EventKind, node: cst.CSTNode, label_node: cst.CSTNode, **kw: object) -> Event:
        label = self.module.code_for_node(label_node)
        return Event(kind, node, label, chain=self.chain, **kw)  # type: ignore[arg-type]

    # -- expressions ------------------------------------------------------------------------
    def items(self, node: cst.CSTNode) -> list[Item]:
        """Events and helper calls of an expression (or simple statement), in evaluation order."""
        out: list[Item] = []
        self._collect(node, out)
        return out

    def _collect(self, node: cst.CSTNode, out: list[Item]) -> None:
        # A cheap test first: LibCST's ``isinstance`` goes through ``ABCMeta``.
        if type(node) in _COLLECTED_APART and self._collected_apart(node, out):
            return
        for child in children(node):
            self._collect(child, out)

    def _collected_apart(self, node: cst.CSTNode, out: list[Item]) -> bool:
        """Collects the nodes whose parts are not simply walked in order; ``False`` for a node
        that is (an expression statement that is not a call). Types are compared, not tested
        with ``isinstance`` (``ABCMeta``'s, slow): none of these classes has subclasses."""
        if type(node) in (cst.Lambda, cst.FunctionDef, cst.ClassDef):
            return True
        if type(node) is cst.Assign or type(node) is cst.AnnAssign or type(node) is cst.AugAssign:
            value = node.value
            if value is not None:
                self._collect(value, out)
            out.extend(self._assignment(node))
            return True
        if type(node) is cst.IfExp:
            self._collect(node.test, out)
            self._branch(self.items(node.body), self.items(node.orelse), out)
            return True
        if type(node) is cst.BooleanOperation:
            self._collect(node.left, out)
            self._branch(self.items(node.right), [], out)
            return True
        if type(node) is cst.Expr and type(node.value) is cst.Call:
            self._collect_call(node.value, out, statement=True)
            return True
        if type(node) is cst.Call:
            self._collect_call(node, out, statement=False)
            return True
        if type(node) is cst.CompFor:
            self._collect(node.iter, out)
            out.extend(self.iteration(node.iter, node))
            for child in children(node):
                if child is not node.iter:
                    self._collect(child, out)
            return True
        return False

    def _collect_call(self, call: cst.Call, out: list[Item], statement: bool) -> None:
        self._collect(call.func, out)
        for arg in call.args:
            self._collect(arg.value, out)
        out.extend(self._call(call, statement))

    @staticmethod
    def _branch(then: list[Item], orelse: list[Item], out: list[Item]) -> None:
        if then or orelse:
            out.append(Branch(then, orelse))

    def iteration(self, iterable: cst.BaseExpression, node: cst.CSTNode) -> list[Item]:
        """Iterating a stored parameter generator consumes it."""
        key = self._params_key(iterable)
        if key is None:
            return []
        return [self.event(EventKind.PARAMS_USE, node, iterable, name=key)]

    def _stored_generators(self, expr: cst.BaseExpression, depth: int = 0) -> list[str]:
        """The stored parameter generators an argument hands over: the name itself, or names
        inside the lists, tuples and param-group dicts it is built of
        (``[{"params": trainable, "lr": lr}]``)."""
        key = self._params_key(expr)
        if key is not None:
            return [key]
        if depth >= 2:
            return []
        if isinstance(expr, (cst.List, cst.Tuple)):
            return [k for e in expr.elements for k in self._stored_generators(e.value, depth + 1)]
        if isinstance(expr, cst.Dict):
            return [k for e in expr.elements if isinstance(e, cst.DictElement)
                    for k in self._stored_generators(e.value, depth + 1)]
        return []

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
            if param is not None:
                cleared = _is_none(value)
                out.append(self.event(EventKind.ZERO_GRAD if cleared else EventKind.GRAD_WRITE,
                                       node, node, models=self._grad_owner(param), clears=cleared))
                continue
            if isinstance(target, cst.Attribute) and target.attr.value == REQUIRES_GRAD:
                if self._trained(target.value):
                    out.append(self.event(EventKind.FREEZE, node, node))
                continue
            key = self.key(target)
            if key is None:
                continue
            binding = self.bindings.of_value(value, self.scope)
            if binding.kind is Kind.OPTIMIZER and binding.constructed:
                out.append(self.event(EventKind.CREATE_OPTIMIZER, node, value,
                                       optimizers=frozenset({key})))
            elif binding.kind is Kind.OTHER and self._builds_trained_module(target, value):
                out.append(self.event(EventKind.NEW_MODULE, node, value, models=frozenset({key})))
            existing = self.scope.lookup(dotted(target) or "")
            if existing is not None and existing.kind is Kind.PARAMETERS:
                out.append(self.event(EventKind.PARAMS_BIND, node, target, name=dotted(target),
                                       generator=binding.kind is Kind.PARAMETERS))
        return out

    def _trained(self, expr: cst.BaseExpression) -> bool:
        """A parameter of a module (``p`` in ``for p in D.parameters()``) or a module that an
        optimizer of this function updates, not any tensor (``interp.requires_grad_()``)."""
        if isinstance(expr, cst.Name) and self.loop_owners.get(expr.value):
            return True
        key = dotted(expr)
        return key is not None and key in self.bindings.optimized(self.scope)

    def _builds_trained_module(self, target: cst.BaseExpression, value: cst.BaseExpression) -> bool:
        """``model = Net(...)`` where an optimizer of this function (or of the class) updates
        ``model``: a module built afresh, not one wrapped or moved (``DDP(model)``,
        ``model.to(device)``, ``copy.deepcopy`` keep or copy its gradients)."""
        name = dotted(target)
        if name is None or not isinstance(value, cst.Call) or name not in self.bindings.optimized(self.scope):
            return False
        return (self.names.qualify(value.func) not in COPYING_CALLS
                and name not in self.bindings.flows_from(value, None))

    def _call(self, call: cst.Call, statement: bool = False) -> list[Item]:
        out: list[Item] = []
        func = call.func
        qualified = self.names.qualify(func) if self.names.is_imported(func) else None
        consumes = self._is_consumer(call, qualified)
        consumer_kind = Consumer.NONE
        if qualified is not None and qualified in vocab.CLIP_FUNCTIONS:
            consumer_kind = Consumer.CLIP
        elif qualified is not None and vocab.is_optimizer_class(qualified):
            consumer_kind = Consumer.OPTIMIZER
        if consumes:
            for arg in call.args:
                for key in self._stored_generators(arg.value):
                    out.append(self.event(EventKind.PARAMS_USE, call, func, name=key,
                                          consumer=consumer_kind))
        recognised = len(out)
        custom = self.custom.of_function(qualified) if self.custom.entries else None
        if custom is not None:
            return [*out, *self._custom(custom, call, call.args[0].value if call.args else None)]
        if qualified is not None:
            if qualified in vocab.CLIP_FUNCTIONS:
                params = call.args[0].value if call.args else None
                threshold = vocab.CLIP_FUNCTIONS[qualified]
                # Clipping by value is elementwise: the same on a shard as on the whole.
                wrapper = self._wrapper(params) if threshold.keyword == "max_norm" else ""
                out.extend(self.clip(call, threshold, **self.clipped(params), wrapper=wrapper))
                return out
            if qualified in vocab.CONTEXT_BACKWARD_FUNCTIONS:
                return out  # gradients kept in a distributed autograd context, not in .grad
            if qualified in vocab.BACKWARD_FUNCTIONS:
                out.append(self.backward(call, func, *(a.value for a in call.args[:1])))
                return out
            for framework in registered():
                found = framework.function(self, call, qualified)
                if found is not None:
                    return [*out, *found]
        if isinstance(func, cst.Attribute):
            out.extend(self._method_call(call, func))
        elif isinstance(func, cst.Name):
            target = self.scope.function(func.value)
            if target is not None:
                out.extend(self._inline(target, call, is_method=False))
        if len(out) == recognised and isinstance(func, cst.Name) and func.value in FREEZE_METHODS:
            out.append(self.event(EventKind.FREEZE, call, func))  # ``set_requires_grad(net_d, False)``
        if len(out) == recognised and qualified is None:
            # ``loss_scaler(loss, optimizer)`` on an instance of a class of the module.
            called = self._local_class_method(func, "__call__")
            if called is not None:
                out.extend(self._inline(called, call, is_method=True, instance=func))
        if statement and len(out) == recognised and not vocab.leaves_gradients(qualified or dotted(func)):
            out.extend(self._opaque(call))
        return out

    def _opaque(self, call: cst.Call) -> list[Item]:
        """A call statement the engine cannot see into, handed a module's parameters or an
        optimizer, may reset their gradients (``zero_grad(self.master_params)`` from another
        file): a may-event. A call whose value is used (``clip(amp.master_params(opt))``) is
        taken for a query."""
        out: list[Item] = []
        for arg in call.args:
            kind = self.kind(arg.value)
            if kind is Kind.SCALER:  # it may update the scaler
                out.append(self.event(EventKind.SCALER_UPDATE, call, call.func, certain=False))
            elif kind is Kind.OPTIMIZER:
                out.append(self.event(EventKind.ZERO_GRAD, call, call.func,
                                       **{**self.about(arg.value), "certain": False}))
            elif self._is_parameter_collection(arg.value):
                out.append(self.event(EventKind.ZERO_GRAD, call, call.func, models=self.owners(arg.value),
                                       certain=False))
        return out

    def _is_parameter_collection(self, expr: cst.BaseExpression, depth: int = 0) -> bool:
        """``model.parameters()``, or a name holding parameters (``self.params = list(...)``);
        not any expression that mentions them (``sum(p.numel() for p in ...)``). Names are
        followed a few assignments deep (``params = list(params)`` refers to itself)."""
        if isinstance(expr, cst.Call):
            func = expr.func
            return isinstance(func, cst.Attribute) and func.attr.value in vocab.PARAMETER_GENERATOR_METHODS
        key = dotted(expr)
        binding = self.scope.lookup(key) if key and depth < 3 else None
        if binding is None:
            return False
        return binding.kind is Kind.PARAMETERS or any(
            isinstance(v, cst.Call) and isinstance(v.func, cst.Name) and v.func.value in ("list", "tuple")
            and v.args and self._is_parameter_collection(v.args[0].value, depth + 1)
            for v in binding.values)

    def backward(self, call: cst.Call, func: cst.BaseExpression, *losses: cst.BaseExpression,
                 amp: Amp = Amp.NONE) -> Event:
        """A backward pass, with the names its loss visibly flows from (``None`` if none), or
        the modules whose parameters it is limited to (``loss.backward(inputs=...)``)."""
        inputs = next((a.value for a in call.args
                       if a.keyword is not None and a.keyword.value == "inputs"), None)
        if inputs is not None:
            reached = self.owners(inputs)
            return self.event(EventKind.BACKWARD, call, func, models=reached, amp=amp,
                              restricted=reached is not None)
        models = frozenset(n for loss in losses for n in self.flows(loss)) or None
        return self.event(EventKind.BACKWARD, call, func, models=models, amp=amp)

    def flows(self, value: cst.BaseExpression) -> frozenset[str]:
        """The names ``value`` visibly comes from, in the unit's terms, through what the
        callers passed for this helper's parameters."""
        names = self.bindings.flows_from(value, self.scope)
        passed = (self.arguments[n.split(".")[0]].flows() for n in names if n.split(".")[0] in self.arguments)
        return frozenset(self._rename_owner(n) for n in names).union(*passed)

    def _is_consumer(self, call: cst.Call, qualified: str | None) -> bool:
        name = qualified or (call.func.value if isinstance(call.func, cst.Name) else None)
        return name not in vocab.NON_CONSUMING_CALLS

    def clip(self, call: cst.Call, threshold: vocab.Threshold | None, **kw: object) -> list[Item]:
        """A clip; none when the threshold is infinite (``clip_grad_norm_(ps, float("inf"))``
        only measures the norm, the gradients stay as they are)."""
        value = vocab.argument(call, threshold) if threshold else None
        if value is not None:
            value = self.passed(value)  # ``clip(model, 0.0)`` into ``clip_grad_norm_(ps, max_norm)``
        if value is not None and self.names.number(value) == math.inf:
            return []
        return [self.event(EventKind.CLIP, call, call.func, threshold=value,
                            threshold_name=threshold.keyword if threshold else "", **kw)]

    def clipped(self, params: cst.BaseExpression | None) -> dict[str, object]:
        """The modules a clip of ``params`` touches; a name bound to different modules'
        parameters in different places (``params_to_clip = vae.parameters()`` in one branch,
        ``discriminator.parameters()`` in another) clips one of them, which is not sure."""
        models = self.owners(params)
        key = dotted(params) if params is not None else None
        binding = self.scope.lookup(key) if key else None
        if binding is not None and len({self.bindings.owners(v, self.scope) for v in binding.values}) > 1:
            return {"models": models, "certain": False}
        return {"models": models}

    def _wrapper(self, params: cst.BaseExpression | None) -> str:
        """The framework that wraps the module whose parameters ``params`` yields, when its
        binding shows it (``model = FSDP(model)``)."""
        for owner in self.bindings.owners(params, self.scope) if params is not None else ():
            name = self._wrapper_of(self.scope.lookup(owner.removesuffix(PART)))
            if name:
                return name
        return ""

    def module_wrapper(self, module: cst.BaseExpression) -> str:
        """The framework that visibly wraps ``module`` (``ddp``, ``fsdp1``), or ``""``."""
        return self._wrapper_of(self.binding(module)[1])

    def _wrapper_of(self, binding: Binding | None) -> str:
        for value in binding.values if binding is not None else ():
            for framework in registered():
                name = framework.wrapper(self.names, value)
                if name:
                    return name
        return ""

    def binding(self, expr: cst.BaseExpression) -> tuple[Recognizer, Binding | None]:
        """The binding of the object ``expr`` names, and the recognizer whose scope holds it:
        a helper's parameter is looked up where its caller passed it."""
        if isinstance(expr, cst.Name) and expr.value in self.arguments:
            source = self.arguments[expr.value].source
            return source[0].binding(source[1]) if source is not None else (self, None)
        key = dotted(expr)
        return self, self.scope.lookup(key) if key else None

    def context(self, expr: cst.BaseExpression, body: Sequence[cst.BaseStatement]) -> Context:
        """What ``with expr:`` means for training, as the frameworks tell."""
        for framework in registered():
            found = framework.context(self, expr, body)
            if found is not None:
                return found
        return Context()

    def _method_call(self, call: cst.Call, func: cst.Attribute) -> list[Item]:
        method = func.attr.value
        receiver = func.value
        positional = [a.value for a in call.args if a.keyword is None and not a.star]
        if isinstance(receiver, cst.Name) and receiver.value == "self" and self.scope.cls is not None:
            method_def = self.scope.cls.method(method)
            if method_def is not None:
                return self._inline(method_def, call, is_method=True)
        if self.custom.entries:
            custom = self.custom.of_method(self._constructors(receiver), method)
            if custom is not None:
                return self._custom(custom, call, positional[0] if positional else None)
        wrapper = self._local_class_method(receiver, method)
        if wrapper is not None:
            return self._inline(wrapper, call, is_method=True, instance=receiver)
        only = self._only_method(receiver, method)
        if only is not None:
            dynamic = isinstance(receiver, cst.Name) and receiver.value in self.loop_names
            return self._inline(only, call, is_method=True, instance=receiver, dynamic=dynamic)
        for framework in registered():
            found = framework.method(self, call, receiver, method, positional)
            if found is not None:
                return found
        if method in vocab.BACKWARD_METHODS:
            # ``loss.backward()``, ``accelerator.backward(loss)``, ``self.manual_backward(loss)``
            return [self.backward(call, func, receiver, *positional[:1])]
        if (method not in OPTIMIZER_METHODS and not self.names.is_imported(receiver)
                and self.kind(receiver) is Kind.OPTIMIZER):
            # ``optimizer.first_step(zero_grad=True)``: a method the engine cannot see may
            # step or reset this optimizer's gradients.
            return [self.event(EventKind.UNKNOWN_GRADS, call, func,
                                **{**self.about(receiver), "certain": False})]
        if method == "step":
            return self._step(call, func, positional)
        if method in FREEZE_METHODS and (method != REQUIRES_GRAD_METHOD or self._trained(receiver)):
            return [self.event(EventKind.FREEZE, call, func)]
        if method == "zero_grad":
            kind = self.kind(receiver)
            # ``set_to_none=True`` is the default of both ``Optimizer`` and ``Module``.
            clears = not any(isinstance(a.value, cst.Name) and a.value.value == "False" for a in call.args)
            if kind is Kind.OPTIMIZER:
                return [self.event(EventKind.ZERO_GRAD, call, func, clears=clears, **self.about(receiver))]
            if kind in (Kind.SCHEDULER, Kind.SCALER, Kind.ABSENT):
                return []
            key = self.key(receiver)
            return [self.event(EventKind.ZERO_GRAD, call, func, clears=clears,
                               models=frozenset({key}) if key else None)]
        if method in vocab.CLIP_METHODS_WITH_PARAMETERS:
            takes_params = len(positional) >= 2 or any(
                a.keyword is not None and a.keyword.value == "parameters" for a in call.args
            )
            if takes_params or method not in vocab.CLIP_METHODS_ON_MODULE:
                params = positional[0] if positional else None
                return self.clip(call, vocab.CLIP_METHODS_WITH_PARAMETERS[method], **self.clipped(params))
            key = self.key(receiver)
            return self.clip(call, vocab.CLIP_METHODS_ON_MODULE[method],
                               models=frozenset({key}) if key else None)
        param = _is_grad(receiver)
        if param is not None and method in vocab.HAND_CLIP_METHODS:
            return self.clip(call, None, models=self._grad_owner(param))
        if param is not None and method in vocab.HAND_ZERO_METHODS:
            return [self.event(EventKind.ZERO_GRAD, call, func, models=self._grad_owner(param))]
        if param is not None and method in vocab.HAND_WRITE_METHODS:
            return [self.event(EventKind.GRAD_WRITE, call, func, models=self._grad_owner(param))]
        return []

    def _constructors(self, receiver: cst.BaseExpression) -> frozenset[str]:
        """The qualified names of what built the object ``receiver`` names (``Trainer(...)``)."""
        key = dotted(receiver)
        binding = self.scope.lookup(key) if key else None
        if binding is None:
            return frozenset()
        return frozenset(self.names.qualify(v.func) or "" for v in binding.values
                         if isinstance(v, cst.Call) and self.names.is_imported(v.func))

    def _custom(self, kind: EventKind, call: cst.Call, subject: cst.BaseExpression | None) -> list[Item]:
        """An event of the project's own vocabulary, about ``subject`` (the loss, the
        parameters or the optimizer it was handed; ``None``: all of them)."""
        if kind is EventKind.BACKWARD:
            return [self.backward(call, call.func, *([subject] if subject is not None else []))]
        if kind is EventKind.CLIP:
            return self.clip(call, None, **self.clipped(subject))
        if subject is not None and self.kind(subject) is Kind.OPTIMIZER:
            return [self.event(kind, call, call.func, **self.about(subject))]
        models = self.owners(subject) if subject is not None else None
        return [self.event(kind, call, call.func, **({"models": models} if kind is EventKind.ZERO_GRAD
                                                        else self.about(None)))]

    def _step(self, call: cst.Call, func: cst.Attribute, positional: list[cst.BaseExpression]) -> list[Item]:
        """``optimizer.step([closure])``; a scaler the engine cannot read steps its optimizer
        as a plain one would."""
        kind = self.kind(func.value)
        if kind is Kind.SCALER:
            return self.steps(call, positional[0] if positional else None, positional[1:])
        if kind is Kind.OPTIMIZER:
            return self.steps(call, func.value, positional)
        return []

    def steps(self, call: cst.Call, optimizer: cst.BaseExpression | None, rest: list[cst.BaseExpression],
              **kw: object) -> list[Item]:
        """A step of ``optimizer``, its closure (the first of ``rest``, or ``closure=``) run
        first."""
        out: list[Item] = []
        closure = rest[0] if rest else next(
            (a.value for a in call.args if a.keyword is not None and a.keyword.value == "closure"),
            None,
        )
        if closure is not None and optimizer is not None:
            out.extend(self._closure(closure, optimizer))
        out.append(self.event(EventKind.STEP, call, call.func, **{**self.about(optimizer), **kw}))
        return out

    def _closure(self, closure: cst.BaseExpression, optimizer: cst.BaseExpression) -> list[Item]:
        """``optimizer.step(closure)`` runs the closure first. A closure the engine resolves (a
        ``def`` of the module, a lambda, ``functools.partial`` of one) is expanded; a literal is
        no closure at all; anything else (a parameter, a mock) may change the gradients in ways
        not visible here."""
        if isinstance(closure, cst.Lambda):
            return [Inline(closure, closure, {})]
        if isinstance(closure, _NOT_CALLABLE) or _is_none(closure):
            return []
        if isinstance(closure, cst.Call) and self._is_partial(closure) and closure.args:
            target = self._function(closure.args[0].value)
            if target is not None:
                return self._inline(target[0], closure, is_method=target[1], args=closure.args[1:])
        else:
            target = self._function(closure)
            if target is not None:
                return [Inline(target[0], closure, {})]
        return [self.event(EventKind.UNKNOWN_GRADS, closure, closure, **self.about(optimizer))]

    def _local_class_method(self, receiver: cst.BaseExpression, method: str) -> cst.FunctionDef | None:
        """``method`` of the module's class that ``receiver`` is visibly an instance of: a
        wrapper's ``step(loss)`` is a call of the wrapper, not ``Optimizer.step(closure)``. An
        optimizer class of the module keeps ``step`` and ``zero_grad`` as the vocabulary says;
        its other methods (SAM's ``first_step``) are followed."""
        _, binding = self.binding(receiver)  # a parameter: what its caller passed
        if binding is None:
            return None
        for name in self.bindings.constructors(binding):
            if method in OPTIMIZER_METHODS and self.bindings.is_optimizer_subclass(name):
                return None
            cls = self.names.classes.get(name)
            body = statements(cls.body) if cls is not None else ()
            found = next((f for f in body if isinstance(f, cst.FunctionDef) and f.name.value == method), None)
            if found is not None:
                return found
        return None

    def _only_method(self, receiver: cst.BaseExpression, method: str) -> cst.FunctionDef | None:
        """The method of that name when exactly one class of the module defines it, for a
        receiver whose class is not known (``trainer.run_batch(batch)``); never for the
        vocabulary's own names, whose meaning comes from the framework."""
        if (method in NOT_RESOLVED_BY_NAME or method.startswith("__") or self.names.is_imported(receiver)
                or (isinstance(receiver, cst.Name) and receiver.value == "self")
                or self.kind(receiver) is not None):
            return None
        found = [f for cls in self.names.classes.values() for f in statements(cls.body)
                 if type(f) is cst.FunctionDef and f.name.value == method]
        return found[0] if len(found) == 1 else None

    def _is_partial(self, call: cst.Call) -> bool:
        return (self.names.qualify(call.func) if self.names.is_imported(call.func) else None) in (
            "functools.partial",)

    def _function(self, expr: cst.BaseExpression) -> tuple[cst.FunctionDef, bool] | None:
        """The ``def`` a name or ``self.method`` stands for, and whether it is a method."""
        if isinstance(expr, cst.Name):
            found = self.scope.function(expr.value)
            return (found, False) if found is not None else None
        if (isinstance(expr, cst.Attribute) and isinstance(expr.value, cst.Name)
                and expr.value.value == "self" and self.scope.cls is not None):
            method = self.scope.cls.method(expr.attr.value)
            return (method, True) if method is not None else None
        return None

    def _inline(self, target: cst.FunctionDef, call: cst.Call, is_method: bool,
                args: Sequence[cst.Arg] | None = None,
                instance: cst.BaseExpression | None = None, dynamic: bool = False) -> list[Item]:
        """A call of a helper of the module, its parameters bound to what the call passes
        (``args``: those of a ``functools.partial``, when not the call's own; ``instance``: the
        object a method of another class is called on, which its ``self`` stands for)."""
        args = call.args if args is None else args
        params = [p for p in target.params.params]
        arguments: dict[str, Argument] = {}
        if is_method and params and params[0].name.value in ("self", "cls"):
            if instance is not None:
                arguments[params[0].name.value] = self._argument_value(instance)
            params = params[1:]
        positional = [a.value for a in args if a.keyword is None and not a.star]
        if any(a.star == "*" for a in args):
            positional = []  # positions after an unpacked sequence are unknown
        for param, value in zip(params, positional, strict=False):
            arguments[param.name.value] = self._argument_value(value)
        for arg in args:
            if arg.keyword is not None:
                arguments[arg.keyword.value] = self._argument_value(arg.value)
        starred = any(a.star for a in args)  # ``f(*a, **kw)``: what binds where is unknown
        for param in [*target.params.params, *target.params.kwonly_params]:
            if param.name.value in arguments or (param.default is None and not starred):
                continue
            absent = not starred and _is_none(param.default)  # type: ignore[arg-type]
            arguments[param.name.value] = Argument(None, Kind.ABSENT if absent else None)
        return [Inline(target, call, arguments, dynamic)]
