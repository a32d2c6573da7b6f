"""A module as the analysis sees it: its units, scopes, classes, helper graphs, and the policy
that decides which helper calls are expanded in place."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import NamedTuple

import libcst as cst

from clipcheck.static.bindings import Bindings, ClassInfo, Kind, Scope, collect_bindings
from clipcheck.static.cfg import Cfg, CfgBuilder, Edge
from clipcheck.static.events import Event, EventKind, Origin
from clipcheck.static.frameworks import lightning, registered
from clipcheck.static.frameworks.custom import NONE as NO_CUSTOM_VOCABULARY
from clipcheck.static.frameworks.custom import Vocabulary
from clipcheck.static.names import ModuleNames
from clipcheck.static.recognizer import Inline, Recognizer
from clipcheck.static.syntax import nested_statements, statements


class Unit(NamedTuple):
    """A function (or the module's top level) analysed on its own."""

    body: Sequence[cst.BaseStatement]
    scope: Scope
    function: cst.FunctionDef | None = None
    cls: ClassInfo | None = None


class Program:
    def __init__(self, module: cst.Module, custom: Vocabulary = NO_CUSTOM_VOCABULARY) -> None:
        self.module = module
        self.custom = custom
        self.names = ModuleNames.of(module)
        self.bindings = Bindings(self.names)
        # Every ``def`` of the top level, also inside ``if __name__ == "__main__":`` and the like.
        self.module_scope = Scope({}, functions={f.name.value: f for f in _defs(module.body)})
        collect_bindings(module.body, self.bindings, self.module_scope.names, None, self.module_scope)
        self.scopes: dict[cst.FunctionDef, Scope] = {}
        self.classes: dict[str, ClassInfo] = {}
        self.units: list[Unit] = [Unit(module.body, self.module_scope)]
        self._discover(module.body, self.module_scope, None)
        self._graphs: dict[cst.FunctionDef, Cfg] = {}
        # Functions a framework calls once per batch, and whether it zeroes between calls.
        self.process_functions = {name: zeroes for framework in registered()
                                  for name, zeroes in framework.process_functions(self.names, module).items()}
        self._building: set[cst.FunctionDef] = set()

    # -- structure ------------------------------------------------------------------------------
    def _discover(self, body: Iterable[cst.CSTNode], parent: Scope, cls: ClassInfo | None) -> None:
        for stmt in body:
            if isinstance(stmt, cst.FunctionDef):
                scope = self._scope(stmt, parent, cls)
                self.units.append(Unit(statements(stmt.body), scope, stmt, cls))
                self._discover(statements(stmt.body), scope, cls)
            elif isinstance(stmt, cst.ClassDef):
                info = self._class(stmt)
                self._discover(statements(stmt.body), parent, info)
            elif isinstance(stmt, cst.BaseCompoundStatement):
                self._discover(nested_statements(stmt), parent, cls)

    def _scope(self, fn: cst.FunctionDef, parent: Scope, cls: ClassInfo | None) -> Scope:
        params = frozenset(p.name.value for p in (*fn.params.params, *fn.params.kwonly_params,
                                                  *fn.params.posonly_params))
        scope = Scope({}, parent, cls, {f.name.value: f for f in _defs(statements(fn.body))}, params,
                      fn.body)
        collect_bindings(statements(fn.body), self.bindings, scope.names, None, scope)
        self.scopes[fn] = scope
        return scope

    def _class(self, node: cst.ClassDef) -> ClassInfo:
        methods = {f.name.value: f for f in statements(node.body) if isinstance(f, cst.FunctionDef)}
        info = ClassInfo(node, methods)
        for base in node.bases:
            qualified = self.names.qualify(base.value) or ""
            local = self.classes.get(qualified)
            if local is not None:
                info.bases.append(local)
                info.is_lightning |= local.is_lightning
            info.is_lightning |= qualified in lightning.LIGHTNING_MODULE_CLASSES
        for method in methods.values():
            collect_bindings(statements(method.body), self.bindings, {}, info.attrs, None)
        info.manual_optimization = lightning.declares_manual_optimization(
            info.attr("self.automatic_optimization"), methods.get(lightning.AUTOMATIC_OPTIMIZATION))
        self.classes[node.name.value] = info
        return info

    def init_unit(self, unit: Unit) -> Unit | None:
        """The ``__init__`` of a method's class, as a unit (``None`` for ``__init__`` itself)."""
        cls = unit.cls
        if cls is None or unit.function is None or unit.function.name.value == "__init__":
            return None
        init = cls.method("__init__")
        if init is None or init not in self.scopes:
            return None
        return Unit(statements(init.body), self.scopes[init], init, cls)

    # -- graphs ---------------------------------------------------------------------------------
    def graph(self, unit: Unit) -> Cfg:
        """The unit's graph, with the events a framework or an unseen caller runs around it.

        A function without a training loop of its own that runs once per batch (a framework's
        per-batch hook, or one that steps behind an accumulation boundary) is one iteration of
        its caller's loop. Any other function that leaves a backward pass's gradients for its
        caller is checked as if the caller stepped right after it returns."""
        function = unit.function
        before, after = lightning.automatic_optimization_events(function, unit.cls)
        if function is None:
            return self._build(unit.scope, unit.body, before, after)
        own = self._graph(function)
        driven = self.process_functions.get(function.name.value) if unit.cls is None else None
        per_batch = not own.trains() and (
            lightning.runs_per_batch(function.name.value, in_class=unit.cls is not None,
                                     lightning=unit.cls is not None and unit.cls.is_lightning)
            or own.steps_at_boundary() or driven is not None)
        if not per_batch and not before and not after:
            if not _leaves_update_open(own):
                return own
            after = [Event(EventKind.STEP, function, "optimizer.step()", origin=Origin.CALLER)]
        cfg = self._build(unit.scope, unit.body, before, after)
        if per_batch:
            cfg.close_as_iteration(None if driven is False else Event(
                EventKind.ZERO_GRAD, function, "optimizer.zero_grad()", origin=Origin.CALLER))
        return cfg

    def expansion(self, inline: Inline, caller: Recognizer) -> Recognizer | None:
        """The recognizer for a helper's body at one call, or ``None`` to leave the call
        unexpanded (a helper without training events)."""
        chain = caller.chain if inline.dynamic else (*caller.chain, inline.call)
        if isinstance(inline.callee, cst.Lambda):
            return Recognizer(self.module, self.names, self.bindings, caller.scope,
                              caller.arguments, chain, caller.local_suffix, self.custom)
        scope = self.scopes.get(inline.callee)
        # An optimizer or scaler handed over makes a helper's calls on it events, whatever
        # the parameter is called (``def update(o): o.step()``).
        carries = any(a.kind in (Kind.OPTIMIZER, Kind.SCALER) for a in inline.arguments.values())
        if scope is None or not (carries or self._may_have_events(inline.callee)):
            return None
        arguments = dict(inline.arguments)
        if scope.parent is not self.module_scope and scope.parent is not None:
            arguments = {**caller.arguments, **caller.enclosed(scope), **arguments}
        return Recognizer(self.module, self.names, self.bindings, scope, arguments, chain,
                          local_suffix=f"@{id(inline.call)}", custom=self.custom)

    def _may_have_events(self, fn: cst.FunctionDef) -> bool:
        """Whether a helper has training events of its own (or through what it calls);
        expanding the others at every call would only cost time. A helper still being built
        (a call cycle) adds nothing."""
        if fn in self._building:
            return False
        return bool(self._graph(fn).events())

    def _graph(self, fn: cst.FunctionDef) -> Cfg:
        """The graph of a function on its own, built once."""
        if fn not in self._graphs:
            self._building.add(fn)
            try:
                self._graphs[fn] = self._build(self.scopes[fn], statements(fn.body))
            finally:
                self._building.discard(fn)
        return self._graphs[fn]

    def _build(self, scope: Scope, body: Sequence[cst.BaseStatement],
               before: Sequence[Event] = (), after: Sequence[Event] = ()) -> Cfg:
        recognizer = Recognizer(self.module, self.names, self.bindings, scope, custom=self.custom)
        return CfgBuilder(recognizer, self.expansion).build(body, before, after)


def _leaves_update_open(cfg: Cfg) -> bool:
    """A function that runs one backward pass but never steps (nor calls what may step)."""
    kinds = {e.kind for _, e in cfg.events()}
    return (EventKind.BACKWARD in kinds and not kinds & {EventKind.STEP, EventKind.UNKNOWN_GRADS}
            and not cfg.trains(Edge.ACCUMULATE))


def _defs(body: Iterable[cst.CSTNode]) -> Iterator[cst.FunctionDef]:
    for stmt in body:
        if isinstance(stmt, cst.FunctionDef):
            yield stmt
        elif isinstance(stmt, cst.BaseCompoundStatement) and not isinstance(stmt, cst.ClassDef):
            yield from _defs(nested_statements(stmt))
