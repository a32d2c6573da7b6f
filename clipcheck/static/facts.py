"""What the dataflow established about one unit: the only thing rules read."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import libcst as cst

from clipcheck.static.cfg import Cfg
from clipcheck.static.dataflow import OptState, ParamsState, Strength
from clipcheck.static.events import Amp, Event, EventKind
from clipcheck.static.names import ModuleNames


@dataclass(eq=False)
class UnitFacts:
    """The CFG of a unit, the optimizers it concerns and the states reaching each node."""

    cfg: Cfg
    names: ModuleNames
    targets: dict[int, dict[str, Strength]]
    states: dict[str, list[frozenset[OptState]]]
    params: list[frozenset[ParamsState]]
    line_of: Callable[[cst.CSTNode], int]
    code_of: Callable[[cst.CSTNode], str]
    # The backward passes whose loss visibly flows into each optimizer's parameters.
    reached: dict[str, frozenset[int]] = field(default_factory=dict)
    _reachable: dict[int, set[int]] = field(default_factory=dict)
    _own_loops: set[int] | None = None
    _events: list[tuple[int, Event]] | None = None
    _concerned: dict[tuple[EventKind, Amp], frozenset[str]] = field(default_factory=dict)

    def event(self, node: int) -> Event:
        event = self.cfg.nodes[node].event
        assert event is not None
        return event

    def events(self, *kinds: EventKind) -> Iterator[tuple[int, Event]]:
        if self._events is None:
            self._events = self.cfg.events()
        for node, event in self._events:
            if event.kind in kinds:
                yield node, event

    def concerned(self, kind: EventKind, amp: Amp) -> frozenset[str]:
        """The optimizers some event of ``kind`` made through ``amp`` concerns (surely or
        maybe), found once per unit: rules ask it of every event."""
        if (kind, amp) not in self._concerned:
            self._concerned[kind, amp] = frozenset(
                k for n, e in self.events(kind) if e.amp is amp for k in self.targets.get(n, {}))
        return self._concerned[kind, amp]

    @property
    def widened(self) -> bool:
        """Some path was merged away past the dataflow's limit: what the states say along the
        paths is incomplete, so no rule that decides on them may report in this unit."""
        return any(s.widened for per_node in self.states.values() for states in per_node for s in states)

    def before(self, node: int, key: str) -> frozenset[OptState]:
        """Every state of ``key``'s gradients that reaches ``node`` along some path."""
        return self.states[key][node]

    def steady(self, node: int, key: str) -> frozenset[OptState]:
        """The states that reach ``node`` once the training loop has gone round (all states
        when it is not in one): the first iteration's unknown start must not mask a mistake
        that every later iteration makes."""
        states = self.states[key][node]
        looped = frozenset(s for s in states if s.looped)
        return looped or states

    def surely(self, node: int) -> list[str]:
        """The optimizers the event at ``node`` surely concerns (not those it only may)."""
        return [k for k, strength in self.targets.get(node, {}).items() if strength is Strength.MUST]

    def exact(self, node: int) -> list[str]:
        """The optimizers the event at ``node`` surely concerns and names itself."""
        event = self.event(node)
        return [k for k in self.surely(node) if event.names_itself(k)]

    def always(self, node: int, test: Callable[[OptState], bool]) -> bool:
        """``test`` holds on every path, for every optimizer the event at ``node`` surely
        concerns (and there is one)."""
        keys = self.surely(node)
        return bool(keys) and all(
            self.steady(node, k) and all(test(s) for s in self.steady(node, k)) for k in keys
        )

    def checked_before(self, node: int, name: str) -> bool:
        """An ``if`` around the event at ``node`` reads ``name`` (``if MAX_NORM > 0: clip``)."""
        return name in self.cfg.guarded_by(node)

    def at_boundary(self, node: int) -> bool:
        """The event runs only on the micro-batch that updates (behind a boundary test)."""
        return node in self.cfg.boundary

    def line(self, node: int) -> int:
        """The line of the event at ``node`` itself (inside a helper when it was expanded)."""
        return self.line_of(self.event(node).node)

    def in_own_loop(self, node: int) -> bool:
        """Whether the event at ``node`` runs again in a loop of the unit's own source."""
        if self._own_loops is None:
            self._own_loops = self.cfg.on_own_loops()
        return node in self._own_loops

    def reachable_from(self, node: int) -> set[int]:
        if node not in self._reachable:
            self._reachable[node] = self.cfg.reachable_from(node)
        return self._reachable[node]
