"""Analysing one module: for each unit of its program, solve the dataflow, run the rules, and
place each finding once, at the offending call."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property

import libcst as cst
from libcst.metadata import MetadataWrapper, PositionProvider

from clipcheck.findings import Finding
from clipcheck.static.dataflow import ENTRY, ParamsState, around_loop, params_transfer, solve, transfer
from clipcheck.static.events import Event
from clipcheck.static.facts import UnitFacts
from clipcheck.static.program import Program, Unit
from clipcheck.static.rules import RULES, RawFinding, Rule

PSEUDO_OPTIMIZER = "*"


class ModuleAnalysis:
    def __init__(self, module: cst.Module, rules: Sequence[Rule] = RULES) -> None:
        self.module = module
        self.rules = rules
        self.program = Program(module)
        self._init_params: dict[int, ParamsState] = {}

    def raw_findings(self, unit: Unit) -> list[RawFinding]:
        facts = self.facts(unit)
        if facts is None:
            return []
        return [f for rule in self.rules for f in rule.check(facts)]

    def facts(self, unit: Unit) -> UnitFacts | None:
        cfg = self.program.graph(unit)
        events = cfg.events()
        if not events:
            return None
        keys = {k for _, e in events if e.optimizers for k in e.optimizers} or {PSEUDO_OPTIMIZER}
        linkage = _linkage(events)
        targets = {node: _targets(event, frozenset(keys), linkage) for node, event in events}

        def step_for(key: str):
            return lambda node, event, state: (
                transfer(node, event, state) if key in targets[node] else state)

        states = {k: solve(cfg, [ENTRY], step_for(k), around_loop) for k in sorted(keys)}
        params = solve(cfg, [self._params_entry(unit)], params_transfer)
        return UnitFacts(cfg, self.program.names, targets, states, params, self.line_of)

    def _params_entry(self, unit: Unit) -> ParamsState:
        """Methods start with the parameter generators ``__init__`` stored and consumed."""
        init = self.program.init_unit(unit)
        if init is None or init.function is None:
            return ParamsState()
        memo = id(init.function)
        if memo not in self._init_params:
            self._init_params[memo] = ParamsState()  # recursion guard
            facts = self.facts(init)
            state = ParamsState()
            if facts is not None:
                for s in facts.params[facts.cfg.exit]:
                    state = ParamsState(state.generators | s.generators, state.consumed | s.consumed)
            keep = lambda names: frozenset(n for n in names if n.startswith("self."))  # noqa: E731
            self._init_params[memo] = ParamsState(keep(state.generators), keep(state.consumed))
        return self._init_params[memo]

    # -- findings -------------------------------------------------------------------------------
    @cached_property
    def _positions(self) -> dict[cst.CSTNode, object]:
        wrapper = MetadataWrapper(self.module, unsafe_skip_copy=True)
        return dict(wrapper.resolve(PositionProvider))

    def line_of(self, node: cst.CSTNode) -> int:
        return self._positions[node].start.line  # type: ignore[attr-defined]

    def findings(self, path: str) -> list[Finding]:
        raw = [f for unit in self.program.units for f in self.raw_findings(unit)]
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


def _linkage(events: list[tuple[int, Event]]) -> dict[str, frozenset[str]]:
    """The modules each optimizer was built from, as the events that name it recorded."""
    linkage: dict[str, frozenset[str]] = {}
    for _, event in events:
        for key in event.optimizers or ():
            linkage[key] = linkage.get(key, frozenset()) | event.optimizer_models
    return linkage


def _targets(event: Event, keys: frozenset[str], linkage: dict[str, frozenset[str]]) -> frozenset[str]:
    """The optimizers an event is about: named ones, those built from the modules it
    touches (plus those whose modules are unknown), or all of them."""
    if event.optimizers:
        return event.optimizers
    if event.models:
        related = frozenset(
            k for k in keys
            if not linkage.get(k) or any(_same_module(m, o) for m in event.models for o in linkage[k])
        )
        return related or keys
    return keys


def _same_module(a: str, b: str) -> bool:
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")
