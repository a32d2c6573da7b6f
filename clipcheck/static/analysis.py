"""Analysing one module: for each unit of its program, solve the dataflow, run the rules, and
place each finding once, at the offending call."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from functools import cached_property

import libcst as cst
from libcst.metadata import CodePosition, CodeRange
from libcst.metadata.position_provider import PositionProvidingCodegenState

from clipcheck.findings import Finding, unanalysable
from clipcheck.static.bindings import PART
from clipcheck.static.cfg import Node
from clipcheck.static.dataflow import (
    DRIVER_ENTRY,
    ENTRY,
    OptState,
    ParamsState,
    Strength,
    another_step,
    around_loop,
    assume,
    params_transfer,
    solve,
    transfer,
    widened,
)
from clipcheck.static.events import Event, EventKind, Origin
from clipcheck.static.facts import UnitFacts
from clipcheck.static.fixing import FixPlanner
from clipcheck.static.frameworks.custom import NONE as NO_CUSTOM_VOCABULARY
from clipcheck.static.frameworks.custom import Vocabulary
from clipcheck.static.program import Program, Unit
from clipcheck.static.rules import RULES, RawFinding, Rule

# What each fixable rule's fix does with the finding's anchor.
MOVE_AFTER_ANCHOR = "CC101"  # the clip goes right after the backward pass
MOVE_BEFORE_ANCHOR = "CC102"  # the clip goes right before the step
WRAP_ANCHOR_IN_LIST = "CC302"  # the stored generator becomes a list

PSEUDO_OPTIMIZER = "*"
# Events that name the modules whose gradients they touch.
MODULE_EVENTS = frozenset({EventKind.ZERO_GRAD, EventKind.GRAD_WRITE, EventKind.CLIP, EventKind.NEW_MODULE})


def analyse_text(text: str, shown: str, rules: Sequence[str] | None = None,
                 custom: Vocabulary = NO_CUSTOM_VOCABULARY, whole: str | None = None) -> list[Finding]:
    """Findings for a program's text that CPython parses (LibCST may still refuse it), by the
    rules whose codes ``rules`` lists (all by default); ``whole`` is the file's own text when
    ``text`` is the screen's reduction of it."""
    try:
        module = parse_trusted(text)
    except cst.ParserSyntaxError as failure:
        return [unanalysable(shown, f"syntax error: {failure.message}", failure.raw_line,
                             failure.raw_column + 1)]
    chosen = RULES if rules is None else tuple(r for r in RULES if r.code in rules)
    try:
        return ModuleAnalysis(module, chosen, custom, whole, text).findings(shown)
    except RecursionError:
        return [unanalysable(shown, "the file nests too deeply to analyse")]


def parse_trusted(text: str) -> cst.Module:
    """LibCST's tree of a text that CPython has accepted, built without LibCST's checks. LibCST
    validates every node it builds (``CSTNode.__post_init__``) to catch trees put together
    wrong by hand; a tree its parser builds from valid Python needs no such check (LibCST's
    own comment there says so), and the checks cost a sixth of the parse. Nodes built by
    hand meanwhile, in another thread, go unchecked as well."""
    with _UNCHECKED:  # one parse at a time, or a thread could restore the unchecked hook
        original = cst.CSTNode.__post_init__
        cst.CSTNode.__post_init__ = _unchecked  # type: ignore[method-assign, assignment]
        try:
            return cst.parse_module(text)
        finally:
            cst.CSTNode.__post_init__ = original  # type: ignore[method-assign]


_UNCHECKED = threading.Lock()


def positions(module: cst.Module) -> Mapping[cst.CSTNode, CodeRange]:
    """Every node's range, as ``MetadataWrapper(module).resolve(PositionProvider)`` gives it, at
    a third of the cost: the wrapper also walks the whole tree for providers that need a
    visit (the position provider needs none, only the module's code generation), and the
    provider's bookkeeping builds two position objects and a generator per node."""
    state = _PositionState(module)
    module._codegen(state)  # what PositionProvider runs
    return _Ranges(state.ranges)


Place = tuple[int, int]  # line (from 1), column (from 0)


class _PositionState(PositionProvidingCodegenState):
    """LibCST's ``PositionProvidingCodegenState``, recording ``(start, end)`` pairs of plain
    tuples in ``ranges`` (a node's syntactic range where its code generation records one, else
    the range of all its code), which ``_Ranges`` turns into ``CodeRange``s when asked."""

    ranges: dict[cst.CSTNode, tuple[Place, Place]]
    starts: list[Place]

    def __init__(self, module: cst.Module) -> None:
        super().__init__(default_indent=module.default_indent, default_newline=module.default_newline,
                         provider=None)  # type: ignore[arg-type]  # it records into ``ranges``
        self.ranges, self.starts = {}, []

    def _update_position(self, value: str) -> None:
        if "\n" in value or "\r" in value:
            super()._update_position(value)
        else:
            self.column += len(value)

    def before_codegen(self, node: cst.CSTNode) -> None:
        self.starts.append((self.line, self.column))

    def after_codegen(self, node: cst.CSTNode) -> None:
        start = self.starts.pop()
        if node not in self.ranges:  # a syntactic range recorded meanwhile stands
            self.ranges[node] = (start, (self.line, self.column))

    # LibCST's code generation only enters what this returns: any context manager will do.
    def record_syntactic_position(  # type: ignore[override]
            self, node: cst.CSTNode, *, start_node: cst.CSTNode | None = None,
            end_node: cst.CSTNode | None = None) -> _Syntactic:
        return _Syntactic(self, node, start_node, end_node)


class _Syntactic:
    """Records a node's syntactic range around the generation of its code (LibCST's
    ``record_syntactic_position``, without a generator)."""

    __slots__ = ("end_node", "node", "start", "start_node", "state")

    def __init__(self, state: _PositionState, node: cst.CSTNode, start_node: cst.CSTNode | None,
                 end_node: cst.CSTNode | None) -> None:
        self.state, self.node, self.start_node, self.end_node = state, node, start_node, end_node

    def __enter__(self) -> None:
        self.start = (self.state.line, self.state.column)

    def __exit__(self, *_: object) -> None:
        ranges = self.state.ranges
        start = ranges[self.start_node][0] if self.start_node is not None else self.start
        end = ranges[self.end_node][1] if self.end_node is not None else (self.state.line, self.state.column)
        ranges[self.node] = (start, end)


class _Ranges(Mapping[cst.CSTNode, CodeRange]):
    """The recorded ranges, as ``CodeRange``s."""

    def __init__(self, ranges: dict[cst.CSTNode, tuple[Place, Place]]) -> None:
        self.ranges = ranges

    def __getitem__(self, node: cst.CSTNode) -> CodeRange:
        (line, column), (end_line, end_column) = self.ranges[node]
        return CodeRange(CodePosition(line, column), CodePosition(end_line, end_column))

    def __iter__(self) -> Iterator[cst.CSTNode]:
        return iter(self.ranges)

    def __len__(self) -> int:
        return len(self.ranges)


def _unchecked(node: cst.CSTNode) -> None:
    """``CSTNode.__post_init__`` without the validation, which is all it does."""


class ModuleAnalysis:
    def __init__(self, module: cst.Module, rules: Sequence[Rule] = RULES,
                 custom: Vocabulary = NO_CUSTOM_VOCABULARY, code: str | None = None,
                 text: str | None = None) -> None:
        self.module = module
        self.text = module.code if text is None else text  # the module's own (LibCST's round trip)
        self.code = self.text if code is None else code  # the whole file's, for the fixes
        self.rules = rules
        self.program = Program(module, custom)
        self._init_params: dict[cst.FunctionDef, ParamsState] = {}

    def raw_findings(self, unit: Unit) -> list[RawFinding]:
        facts = self.facts(unit)
        if facts is None:
            return []
        rules = self.rules if not facts.widened else [r for r in self.rules if not r.reads_paths]
        return [f for rule in rules for f in rule.check(facts)]

    def facts(self, unit: Unit) -> UnitFacts | None:
        cfg = self.program.graph(unit)
        events = cfg.events()
        if not events:
            return None
        keys = frozenset(k for _, e in events if e.optimizers for k in e.optimizers) or frozenset(
            {PSEUDO_OPTIMIZER})
        linkage = _linkage(events, keys)
        targets = {node: _targets(event, frozenset(keys), linkage) for node, event in events}
        # The backwards whose loss visibly flows into each optimizer's parameters.
        reached = {k: frozenset(n for n, e in events if e.kind is EventKind.BACKWARD
                                and _related(e.models, linkage.get(k)) is True) for k in keys}

        def step_for(key: str) -> Callable[[Node, OptState], Iterable[OptState]]:
            def step(node: Node, state: OptState) -> Iterable[OptState]:
                if node.on_path:
                    assumed = assume(node, state)
                    if assumed is None:
                        return ()
                    state = assumed
                event = node.event
                strength = targets.get(node.id, {}).get(key)
                if event is None:
                    return (state,)
                if strength is None:
                    if event.kind is EventKind.STEP and event.origin is Origin.SOURCE:
                        return (another_step(state, reached[key]),)
                    return (state,)
                return transfer(node.id, event, state, strength, discards=discards(node),
                                exact=event.names_itself(key), reaches=node.id in reached[key])
            return step

        def discards(node: Node) -> bool:
            """Whether a zero-grad here would throw a window's gradients away: not one behind
            the boundary test (it starts a window), nor one behind any other test (the
            engine does not know which micro-batches take it: ``if j == 0``, a skipped bad
            batch), nor an accelerate-prepared optimizer's (it acts on boundaries only)."""
            event = node.event
            return not (node.id in cfg.boundary or cfg.guards.get(node.id)
                        or (event is not None and event.gated))

        # A unit that runs its own training loop starts with nothing pending.
        entry = DRIVER_ENTRY if cfg.trains() else ENTRY
        states = {k: solve(cfg, [entry], step_for(k), around_loop, widened) for k in sorted(keys)}
        params = solve(cfg, [self._params_entry(unit)], params_transfer)
        return UnitFacts(cfg, self.program.names, targets, states, params, self.line_of,
                         self.module.code_for_node, reached)

    def _params_entry(self, unit: Unit) -> ParamsState:
        """Methods start with the parameter generators ``__init__`` stored and consumed."""
        init = self.program.init_unit(unit)
        if init is None or init.function is None:
            return ParamsState()
        memo = init.function
        if memo not in self._init_params:
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
    def _positions(self) -> Mapping[cst.CSTNode, CodeRange]:
        return positions(self.module)

    def line_of(self, node: cst.CSTNode) -> int:
        return self._positions[node].start.line

    @cached_property
    def _planner(self) -> FixPlanner:
        return FixPlanner(self.module, self._positions, self.code, self.text)

    def _fix(self, finding: RawFinding) -> dict[str, object] | None:
        """The edit ``--fix`` would make for this finding, where it is certain."""
        anchor, code = finding.anchor, finding.rule.code
        if anchor is None:
            return None
        if code in (MOVE_AFTER_ANCHOR, MOVE_BEFORE_ANCHOR):
            return self._planner.move(finding.event, anchor, after=code == MOVE_AFTER_ANCHOR)
        if code == WRAP_ANCHOR_IN_LIST:
            return self._planner.wrap_in_list(anchor)
        return None

    def findings(self, path: str) -> list[Finding]:
        raw = [f for unit in self.program.units for f in self.raw_findings(unit)]
        # A finding that rests on a caller's implied step stands where a caller shows it.
        shown = {(f.rule.code, f.event.identity[i:]) for f in raw if not f.implied
                 for i in range(1, len(f.event.identity))}
        raw = [f for f in raw if not f.implied or (f.rule.code, f.event.identity) in shown]
        reported = {f.event.identity for f in raw}
        seen: set[tuple[str, int]] = set()
        out: list[Finding] = []
        for f in raw:
            identity = f.event.identity
            if any(identity[i:] in reported for i in range(1, len(identity))):
                continue  # the helper itself shows a mistake at this event, and reports it there
            location = f.event.location
            if (f.rule.code, id(location)) in seen:
                continue
            seen.add((f.rule.code, id(location)))
            where = self._positions[location]
            out.append(Finding(
                path, where.start.line, where.start.column + 1,
                where.end.line, where.end.column + 1,
                f.rule.code, f.rule.name, f.message, self._fix(f),
            ))
        return sorted(out, key=lambda x: (x.line, x.column, x.code))


def _linkage(events: list[tuple[int, Event]], keys: frozenset[str]) -> dict[str, frozenset[str]]:
    """The modules each optimizer was built from, as the events that name it recorded. When
    the unit has one optimizer, built from what it cannot see, and its module events all name
    the same whole modules, those are the optimizer's: the unit trains one model."""
    linkage: dict[str, frozenset[str]] = {}
    shared: dict[str, frozenset[str]] = {}  # from events on several optimizers at once
    for _, event in events:
        for key in event.optimizers or ():
            found = linkage if len(event.optimizers or ()) == 1 else shared
            found[key] = found.get(key, frozenset()) | event.optimizer_models
    for key, models in shared.items():  # ``for opt in (opt_g, opt_d):`` mixes their modules
        if not linkage.get(key):
            linkage[key] = models
    named = {e.models for _, e in events if e.models and e.kind in MODULE_EVENTS and e.certain}
    if len(keys) == 1 and not any(linkage.values()) and len(named) == 1:
        models = named.pop()
        if all("." not in m.removeprefix("self.") for m in models):  # whole models, not parts
            return dict.fromkeys(keys, models)
    return linkage


def _targets(event: Event, keys: frozenset[str], linkage: dict[str, frozenset[str]]) -> dict[str, Strength]:
    """The optimizers an event applies to, and how surely. An uncertain event (code the engine
    cannot see, handed some modules' parameters) only may, and only for optimizers that can
    share parameters with what it was handed."""
    targets = _event_targets(event, keys, linkage)
    if event.certain:
        return targets
    return {k: Strength.MAY for k in targets if _related(event.models, linkage.get(k)) is not False}


def _event_targets(event: Event, keys: frozenset[str], linkage: dict[str, frozenset[str]]
                   ) -> dict[str, Strength]:
    """The optimizers an event applies to, and how surely.

    A named optimizer: surely. A backward pass: surely, except for optimizers over modules
    its loss visibly does not flow from (possibly), and surely for the only optimizer there
    is. An event on some modules' gradients (``model.zero_grad()``, a ``.grad`` written by
    hand, a clip of ``model.parameters()``): surely for an optimizer over those modules (or
    parts of them; for a clip, any of them); possibly for every other optimizer, since names
    alone cannot prove two modules apart, and zeroing a submodule or a filtered selection of
    parameters only resets part of a model's gradients."""
    if event.optimizers:
        # A wrapper and the optimizer it holds (``opt`` and ``opt.optimizer``) are one update.
        held = {k for k in keys for o in event.optimizers if k.startswith(o + ".") or o.startswith(k + ".")}
        named = dict.fromkeys(event.optimizers | held, Strength.MUST)
        linked = frozenset().union(*(linkage.get(o, frozenset()) for o in event.optimizers))
        if event.kind is EventKind.STEP and _whole(linked):
            # Another optimizer over the same modules or parts of them (a new phase's optimizer,
            # a probe's over the head) finds the gradients this step used: the same tensors.
            named.update((k, Strength.MUST) for k in keys - named.keys()
                         if _whole(linkage.get(k, frozenset())) and _covers(linked, linkage[k]))
        if event.kind is EventKind.ZERO_GRAD:
            # Zeroing one optimizer's gradients zeroes any other's over the same parameters
            # (two optimizers of one layer): unless their modules are visibly apart, it may.
            for k in keys - named.keys():
                if _related(linked, linkage.get(k)) is not False:
                    named[k] = Strength.MAY
        return named
    if event.kind is EventKind.BACKWARD:
        only = len(keys) == 1
        if event.restricted:  # ``backward(inputs=...)`` reaches those parameters and no others
            return {k: Strength.MUST for k in keys if _related(event.models, linkage.get(k)) is not False}
        return {k: Strength.MUST if only or _related(event.models, linkage.get(k)) is not False
                else Strength.MAY for k in keys}
    if event.models is None:
        return dict.fromkeys(keys, Strength.MUST)
    if event.kind is EventKind.CLIP:  # a clip of some of an optimizer's parameters is a clip
        return {k: Strength.MUST if _related(event.models, linkage.get(k)) else Strength.MAY for k in keys}
    # Two networks each handed whole to an optimizer are apart unless one visibly holds the
    # other: ``netD.zero_grad()`` leaves the generator's optimizer alone.
    return {k: Strength.MUST if _covers(event.models, linkage.get(k)) else Strength.MAY for k in keys
            if not _apart(event.models, linkage.get(k))}


def _related(models: frozenset[str] | None, linked: frozenset[str] | None) -> bool | None:
    """Whether modules touched by an event share parameters with those an optimizer updates;
    ``None`` when either side is unknown."""
    if not models or not linked:
        return None
    return any(_within(m, o) or _within(o, m) for m in models for o in linked)


def _whole(models: frozenset[str]) -> bool:
    """Some modules, each whole (not a filtered selection of its parameters)."""
    return bool(models) and not any(m.endswith(PART) for m in models)


def _apart(models: frozenset[str], linked: frozenset[str] | None) -> bool:
    """Whole modules on both sides, none within another."""
    return _whole(models) and _whole(linked or frozenset()) and _related(models, linked) is False


def _covers(models: frozenset[str], linked: frozenset[str] | None) -> bool:
    """Whether the event's modules hold every module the optimizer updates."""
    return bool(models and linked) and all(any(_within(o, m) for m in models) for o in linked or ())


def _within(inner: str, outer: str) -> bool:
    """``model.encoder`` is within ``model``; ``self.model`` in a method is the ``model`` that
    ``__init__`` stored, and everything of ``self`` is within ``self``."""
    if outer == "self":
        return inner == "self" or inner.startswith("self.")
    inner, outer = inner.removeprefix("self."), outer.removeprefix("self.")
    return inner == outer or inner.startswith(outer + ".")
