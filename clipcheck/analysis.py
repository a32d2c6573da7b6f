"""Analysing one module: find its units, build their graphs, run the dataflow and the rules."""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property

import libcst as cst
from libcst.metadata import MetadataWrapper, PositionProvider

from clipcheck import vocabulary as vocab
from clipcheck.cfg import Cfg, CfgBuilder
from clipcheck.dataflow import ENTRY, ParamsState, around_loop, params_transfer, solve, transfer
from clipcheck.events import (
    Binding,
    Bindings,
    ClassInfo,
    Event,
    EventKind,
    Inline,
    Kind,
    Recognizer,
    Scope,
    collect_bindings,
)
from clipcheck.facts import UnitFacts
from clipcheck.names import ModuleNames
from clipcheck.rules import RULES, RawFinding, Rule
from clipcheck.syntax import nested_statements, statements

# Words without which a file cannot contain a training event: files lacking all of them are
# only checked for syntax (by CPython's faster parser), never analysed.
RELEVANT_WORDS = ("backward", "step", "grad", "parameters", "scale")
PSEUDO_OPTIMIZER = "*"


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


@dataclass
class Unit:
    """A function (or the module's top level) analysed on its own."""

    body: Sequence[cst.BaseStatement]
    scope: Scope
    function: cst.FunctionDef | None = None
    cls: ClassInfo | None = None


def might_train(source: str) -> bool:
    return any(word in source for word in RELEVANT_WORDS)


def analyse_source(source: str, path: str, rules: Sequence[Rule] = RULES) -> list[Finding]:
    """Findings for one file's text. Raises ``libcst.ParserSyntaxError`` (or ``SyntaxError``
    for a file without training code) if it does not parse."""
    if not might_train(source):
        ast.parse(source, path)
        return []
    return ModuleAnalysis(cst.parse_module(source), rules).findings(path)


class ModuleAnalysis:
    def __init__(self, module: cst.Module, rules: Sequence[Rule] = RULES) -> None:
        self.module = module
        self.rules = rules
        self.names = ModuleNames.of(module)
        self.bindings = Bindings(self.names)
        self.module_scope = Scope({}, functions=dict(self.names.functions))
        collect_bindings(module.body, self.bindings, self.module_scope.names, None, self.module_scope)
        self.scopes: dict[cst.FunctionDef, Scope] = {}
        self.classes: dict[str, ClassInfo] = {}
        self.units: list[Unit] = [Unit(module.body, self.module_scope)]
        self._discover(module.body, self.module_scope, None)
        self._init_params: dict[int, ParamsState] = {}
        self._graphs: dict[cst.FunctionDef, Cfg] = {}
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
        scope = Scope({}, parent, cls, {f.name.value: f for f in _defs(statements(fn.body))})
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
            info.is_lightning |= qualified in vocab.LIGHTNING_MODULE_CLASSES
        for method in methods.values():
            collect_bindings(statements(method.body), self.bindings, {}, info.attrs, None)
        info.manual_optimization = _is_false(info.attr("self.automatic_optimization"))
        self.classes[node.name.value] = info
        return info

    # -- per unit -------------------------------------------------------------------------------
    def _recognizer_for(self, inline: Inline, caller: Recognizer) -> Recognizer | None:
        chain = (*caller.chain, inline.call)
        if isinstance(inline.callee, cst.Lambda):
            return Recognizer(self.module, self.names, self.bindings, caller.scope,
                              caller.arguments, chain)
        scope = self.scopes.get(inline.callee)
        if scope is None or not self._may_have_events(inline.callee):
            return None
        arguments = dict(inline.arguments)
        if scope.parent is not self.module_scope and scope.parent is not None:
            arguments = {**caller.arguments, **arguments}  # a closure sees its caller's names
        return Recognizer(self.module, self.names, self.bindings, scope, arguments, chain,
                          local_suffix=f"@{id(inline.call)}")

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
        recognizer = Recognizer(self.module, self.names, self.bindings, scope)
        return CfgBuilder(recognizer, self._recognizer_for).build(body, before, after)

    def _lightning_events(self, unit: Unit) -> tuple[list[Event], list[Event]]:
        """Under automatic optimization Lightning zeroes before ``training_step`` and runs
        backward and step after it returns."""
        cls, fn = unit.cls, unit.function
        if (fn is None or cls is None or not cls.is_lightning or cls.manual_optimization
                or fn.name.value != vocab.LIGHTNING_AUTOMATIC_STEP_METHOD):
            return [], []

        def synthetic(kind: EventKind, label: str) -> Event:
            return Event(kind, fn, label, synthetic="lightning")

        return (
            [synthetic(EventKind.ZERO_GRAD, "optimizer.zero_grad()")],
            [synthetic(EventKind.BACKWARD, "loss.backward()"),
             synthetic(EventKind.STEP, "optimizer.step()")],
        )

    def raw_findings(self, unit: Unit) -> list[RawFinding]:
        facts = self.facts(unit)
        if facts is None:
            return []
        return [f for rule in self.rules for f in rule.check(facts)]

    def facts(self, unit: Unit) -> UnitFacts | None:
        before, after = self._lightning_events(unit)
        if unit.function is not None and not before and not after:
            cfg = self._graph(unit.function)
        else:
            cfg = self._build(unit.scope, unit.body, before, after)
        events = cfg.events()
        if not events:
            return None
        keys = {k for _, e in events if e.optimizers for k in e.optimizers} or {PSEUDO_OPTIMIZER}
        linkage = {k: self._linkage(k, unit.scope) for k in keys}
        targets = {node: _targets(event, frozenset(keys), linkage) for node, event in events}

        def step_for(key: str):
            return lambda node, event, state: (
                transfer(node, event, state) if key in targets[node] else state)

        states = {k: solve(cfg, [ENTRY], step_for(k), around_loop) for k in sorted(keys)}
        params = solve(cfg, [self._params_entry(unit)], params_transfer)
        return UnitFacts(cfg, self.names, targets, states, params, self.line_of)

    def _linkage(self, key: str, scope: Scope) -> frozenset[str]:
        binding = scope.lookup(key)
        if binding is None or binding.kind is not Kind.OPTIMIZER:
            return frozenset()
        return binding.models

    def _params_entry(self, unit: Unit) -> ParamsState:
        """Methods start with the parameter generators ``__init__`` stored and consumed."""
        cls = unit.cls
        if cls is None or unit.function is None or unit.function.name.value == "__init__":
            return ParamsState()
        init = cls.method("__init__")
        if init is None or init not in self.scopes:
            return ParamsState()
        if id(init) not in self._init_params:
            self._init_params[id(init)] = ParamsState()  # recursion guard
            facts = self.facts(Unit(statements(init.body), self.scopes[init], init, cls))
            state = ParamsState()
            if facts is not None:
                for s in facts.params[facts.cfg.exit]:
                    state = ParamsState(state.generators | s.generators, state.consumed | s.consumed)
            keep = lambda names: frozenset(n for n in names if n.startswith("self."))  # noqa: E731
            self._init_params[id(init)] = ParamsState(keep(state.generators), keep(state.consumed))
        return self._init_params[id(init)]

    # -- findings -------------------------------------------------------------------------------
    @cached_property
    def _positions(self) -> dict[cst.CSTNode, object]:
        wrapper = MetadataWrapper(self.module, unsafe_skip_copy=True)
        return dict(wrapper.resolve(PositionProvider))

    def line_of(self, node: cst.CSTNode) -> int:
        return self._positions[node].start.line  # type: ignore[attr-defined]

    def findings(self, path: str) -> list[Finding]:
        raw = [f for unit in self.units for f in self.raw_findings(unit)]
        reported = {(f.rule.code, f.event.identity) for f in raw}
        seen: set[tuple[str, int]] = set()
        out: list[Finding] = []
        for f in raw:
            identity = f.event.identity
            if any((f.rule.code, identity[i:]) in reported for i in range(1, len(identity))):
                continue  # the helper itself shows this mistake, and reports it there
            location = f.event.location
            if (f.rule.code, id(location)) in seen:
                continue
            seen.add((f.rule.code, id(location)))
            where = self._positions[location]
            out.append(Finding(
                path, where.start.line, where.start.column + 1,  # type: ignore[attr-defined]
                where.end.line, where.end.column + 1,  # type: ignore[attr-defined]
                f.rule.code, f.rule.name, f.message,
            ))
        return sorted(out, key=lambda x: (x.line, x.column, x.code))


def _targets(event: Event, keys: frozenset[str], linkage: dict[str, frozenset[str]]) -> frozenset[str]:
    """The optimizers an event is about: named ones, those built from the modules it
    touches (plus those whose modules are unknown), or all of them."""
    if event.optimizers:
        return event.optimizers
    if event.models:
        related = frozenset(
            k for k in keys
            if not linkage[k] or any(_same_module(m, o) for m in event.models for o in linkage[k])
        )
        return related or keys
    return keys


def _same_module(a: str, b: str) -> bool:
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")


def _defs(body: Iterable[cst.CSTNode]) -> Iterator[cst.FunctionDef]:
    for stmt in body:
        if isinstance(stmt, cst.FunctionDef):
            yield stmt
        elif isinstance(stmt, cst.BaseCompoundStatement) and not isinstance(stmt, cst.ClassDef):
            yield from _defs(nested_statements(stmt))


def _is_false(binding: Binding | None) -> bool:
    return binding is not None and any(
        isinstance(v, cst.Name) and v.value == "False" for v in binding.values)
