"""The typestate of gradients, propagated over a unit's CFG to a fixpoint.

Each optimizer is tracked on its own: its gradients move through :class:`Grads` states and
its clipping through :class:`Clip` states. The analysis is a powerset over these small
records, so a node knows every state that reaches it along some path; rules decide whether
they need a fact "on every path" or "on some path". The records are plain frozen dataclasses
so that further typestate (a GradScaler's stage, say) is one more field.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from typing import NamedTuple, TypeVar

from clipcheck.static.cfg import Cfg, Edge, Node
from clipcheck.static.events import Amp, Event, EventKind, Origin


class Grads(enum.Enum):
    UNKNOWN = "unknown"          # whatever the caller left (function entry)
    NONE = "none"                # no gradients yet, or zeroed with nothing pending
    FRESH = "fresh"              # backward ran since the last zero-grad or step
    FRESH_PREV = "fresh-prev"    # ... in an earlier iteration of the training loop
    KILLED = "killed"            # fresh gradients were zeroed before any step used them
    USED = "used"                # a step consumed them; not zeroed since
    USED_PREV = "used-prev"      # ... in an earlier iteration of the training loop
    ZEROED_USED = "zeroed-used"  # zeroed after this iteration's step consumed them
    ZEROED_PREV = "zeroed-prev"  # ... after a step of an earlier iteration
    STALE = "stale"              # a backward accumulated onto gradients a step already used
    STALE_PREV = "stale-prev"    # ... in an earlier iteration of the training loop


class Clip(enum.Enum):
    NONE = "none"          # not clipped since the last step or zero-grad
    EARLY = "early"        # clipped while no fresh gradients existed (before backward)
    LATE = "late"          # clipped after this iteration's step, before any backward
    DONE = "done"          # clipped after the last backward
    STALE = "stale"        # clipped, then another backward accumulated more gradients


class Scale(enum.Enum):
    """What loss scaling did to the gradients the next step will see."""

    NONE = "none"            # not scaled (or not known to be)
    SCALED = "scaled"        # a GradScaler's scaled loss made them: only ``scaler.step`` unscales
    UNSCALED = "unscaled"    # ... and ``scaler.unscale_`` has divided the scale out again
    FRAMEWORK = "framework"  # a framework scaled them (accelerate under fp16) and unscales itself


class Stage(enum.Enum):
    """A GradScaler's record for one optimizer object since its last ``update()``."""

    UNKNOWN = "unknown"    # whatever the caller left (function entry)
    READY = "ready"
    UNSCALED = "unscaled"  # ``unscale_`` ran: a second one raises
    STEPPED = "stepped"    # ``scaler.step`` ran: ``update()`` must come before the next


NO_NODE = -1


class OptState(NamedTuple):
    """The gradients of one optimizer along one path.

    ``grads_at`` is the node that caused ``grads`` (the backward, the zero-grad or the step);
    ``killed_backward`` the backward whose gradients a zero-grad discarded; ``clip_at`` the
    clip behind ``clip``. ``looped`` says the path went round a training loop at least once.
    ``guessed`` says the path assumes that an event which only may have applied did not reset
    the gradients (or that a clip which only may have applied did): no finding rests on it.

    ``cleared`` says the last zero-grad set the gradients to ``None`` and nothing has written
    them since: a step then skips every parameter. ``foreign_at`` is another loss's backward
    whose gradients stayed on this optimizer's parameters when another optimizer stepped
    (they belonged to that update); ``joined_at`` is this optimizer's own backward that then
    added onto them.

    Mixed precision: ``scale`` says whether the gradients are still loss-scaled (``scale_at``
    the event that last changed it: a scaled backward, an unscale, a reset); ``stage`` is the
    GradScaler's own record for this optimizer object (``stage_at`` the unscale or scaler step that set it).

    Gradient accumulation: ``pending`` says the gradients belong to a window that has not
    updated yet (the path skipped a step behind an accumulation boundary, or went round a loop
    that runs backward without stepping); ``discarded_at`` is a zero-grad that threw such
    gradients away before their step. ``step_at`` is the last step. ``path`` holds the value
    each tested atom took on this path, so that one iteration's two tests of the same flag
    agree.
    """

    grads: Grads = Grads.UNKNOWN
    grads_at: int = NO_NODE
    killed_backward: int = NO_NODE
    clip: Clip = Clip.NONE
    clip_at: int = NO_NODE
    looped: bool = False
    guessed: bool = False
    pending: bool = False
    discarded_at: int = NO_NODE
    step_at: int = NO_NODE
    path: frozenset[tuple[str, bool]] = frozenset()
    scale: Scale = Scale.NONE
    scale_at: int = NO_NODE
    stage: Stage = Stage.UNKNOWN
    stage_at: int = NO_NODE
    cleared: bool = False
    foreign_at: int = NO_NODE
    joined_at: int = NO_NODE
    # The path was merged with others past ``MAX_STATES``: its fields are defaults, not facts,
    # whatever happens after (a reset settles the gradients, not the rest), so no finding of
    # the unit may rest on its states.
    widened: bool = False


ENTRY = OptState()
# The entry of a function that runs its own training loop: nothing is pending there yet.
DRIVER_ENTRY = OptState(grads=Grads.NONE, stage=Stage.READY)

_BACKWARD = {
    Grads.UNKNOWN: Grads.FRESH, Grads.NONE: Grads.FRESH, Grads.FRESH: Grads.FRESH,
    Grads.FRESH_PREV: Grads.FRESH, Grads.KILLED: Grads.FRESH, Grads.USED: Grads.STALE,
    Grads.USED_PREV: Grads.STALE,
    Grads.ZEROED_USED: Grads.FRESH, Grads.ZEROED_PREV: Grads.FRESH, Grads.STALE: Grads.STALE,
    Grads.STALE_PREV: Grads.STALE,
}
_ZERO = {
    Grads.UNKNOWN: Grads.NONE, Grads.NONE: Grads.NONE, Grads.FRESH: Grads.KILLED,
    Grads.FRESH_PREV: Grads.KILLED, Grads.KILLED: Grads.KILLED, Grads.USED: Grads.ZEROED_USED,
    Grads.USED_PREV: Grads.ZEROED_PREV,
    Grads.ZEROED_USED: Grads.ZEROED_USED, Grads.ZEROED_PREV: Grads.ZEROED_PREV, Grads.STALE: Grads.KILLED,
    Grads.STALE_PREV: Grads.ZEROED_PREV,
}
_AROUND_LOOP = {
    Grads.FRESH: Grads.FRESH_PREV, Grads.USED: Grads.USED_PREV, Grads.STALE: Grads.STALE_PREV,
    Grads.ZEROED_USED: Grads.ZEROED_PREV,
}
STALE = frozenset({Grads.STALE, Grads.STALE_PREV})
USED = frozenset({Grads.USED, Grads.USED_PREV})
ZEROED = frozenset({Grads.ZEROED_USED, Grads.ZEROED_PREV})
FRESH = frozenset({Grads.FRESH, Grads.FRESH_PREV})
HAS_FRESH = frozenset({Grads.UNKNOWN, *FRESH, *STALE})


class Strength(enum.Enum):
    """How surely an event applies to one optimizer's gradients."""

    MUST = "must"  # it does: a strong update
    MAY = "may"    # it might (which parameters it touches is unknown): a weak update


def transfer(node: int, event: Event, state: OptState, strength: Strength = Strength.MUST,
             discards: bool = True, exact: bool = True, reaches: bool = False) -> set[OptState]:
    """The states after ``event`` (at CFG node ``node``) for an optimizer it applies to. A weak
    update keeps the state it would have changed; a backward that only may have touched these
    gradients leaves them unknown rather than fresh or stale, so no rule can build on it. A
    zero-grad that surely runs where it ``discards`` (not where a window starts) throws pending
    gradients away. A GradScaler keys its record by optimizer object: only an event that names
    this very optimizer (``exact``), not a wrapper or the optimizer it holds, moves it. A
    backward that ``reaches`` these parameters visibly may join another loss's gradients."""
    if strength is Strength.MUST:
        after = _foreign(node, event, _strong(node, event, state), reaches)
        if exact:
            after = _scaler_stage(node, event, after)
        if (discards and event.kind is EventKind.ZERO_GRAD and event.origin is not Origin.CALLER
                and state.pending and not state.guessed and state.grads in FRESH):
            after = after._replace(discarded_at=node)
        return {after}
    if event.kind is EventKind.BACKWARD:
        return {state, _unknown(node, state)}
    if event.kind is EventKind.CLIP:
        return {state, _strong(node, event, state)._replace(guessed=True)}
    strong = _foreign(node, event, _strong(node, event, state), reaches)
    if exact:
        strong = _scaler_stage(node, event, strong)
    return {state._replace(guessed=True), strong}


def _scaler_stage(node: int, event: Event, state: OptState) -> OptState:
    """The GradScaler's record after ``event``: ``unscale_`` and ``scaler.step`` mark it,
    ``update()`` (and a new optimizer) clears it."""
    kind = event.kind
    if kind is EventKind.UNSCALE and event.amp is Amp.SCALER:
        return state._replace(stage=Stage.UNSCALED, stage_at=node)
    if kind is EventKind.STEP and event.amp is Amp.SCALER:
        return state._replace(stage=Stage.STEPPED, stage_at=node)
    if kind in (EventKind.SCALER_UPDATE, EventKind.CREATE_OPTIMIZER):
        return state._replace(stage=Stage.READY, stage_at=node)
    return state


def _scaled(node: int, event: Event, state: OptState) -> OptState:
    """What loss scaling did to the gradients after ``event``."""
    kind = event.kind
    if kind is EventKind.BACKWARD:
        if event.amp is Amp.SCALER:
            return state._replace(scale=Scale.SCALED, scale_at=node)
        if event.amp is Amp.FRAMEWORK and state.scale is not Scale.SCALED:
            return state._replace(scale=Scale.FRAMEWORK, scale_at=node)
        return state
    unscales = kind is EventKind.UNSCALE or (kind is EventKind.CLIP and event.amp is Amp.FRAMEWORK)
    if unscales and state.scale is Scale.SCALED:
        return state._replace(scale=Scale.UNSCALED, scale_at=node)
    if unscales and state.scale is Scale.FRAMEWORK:  # the framework's own step will not unscale again
        return state._replace(scale=Scale.NONE, scale_at=node)
    if kind in RESETS and state.scale is not Scale.NONE:
        return state._replace(scale=Scale.NONE, scale_at=node)
    return state


# Events that write the gradients (a step on cleared ones leaves them ``None``).
_WRITES = frozenset({EventKind.ZERO_GRAD, EventKind.GRAD_WRITE, EventKind.BACKWARD, EventKind.UNKNOWN_GRADS,
                     EventKind.NEW_MODULE})

# Events that, when they surely apply, settle the gradients whatever was guessed before.
RESETS = frozenset({EventKind.ZERO_GRAD, EventKind.GRAD_WRITE, EventKind.STEP, EventKind.UNKNOWN_GRADS,
                    EventKind.NEW_MODULE})


def _unknown(node: int, state: OptState) -> OptState:
    return state._replace(grads=Grads.UNKNOWN, grads_at=node, killed_backward=NO_NODE, cleared=False,
                   foreign_at=NO_NODE, joined_at=NO_NODE)


def another_step(state: OptState, reached: frozenset[int]) -> OptState:
    """Another optimizer steps: fresh gradients that a loss left here (its backward, in
    ``reached``, visibly flowed into these parameters) belonged to that update."""
    if (state.grads is Grads.FRESH and not state.guessed and state.foreign_at == NO_NODE
            and state.grads_at in reached):
        return state._replace(foreign_at=state.grads_at)
    return state


def _foreign(node: int, event: Event, state: OptState, reaches: bool) -> OptState:
    """This optimizer's own backward (one that visibly ``reaches`` its parameters) adding onto
    another loss's gradients; anything that resets the gradients forgets them."""
    if event.kind in RESETS:
        return state._replace(foreign_at=NO_NODE, joined_at=NO_NODE) if state.foreign_at != NO_NODE else state
    if event.kind is EventKind.BACKWARD and state.foreign_at != NO_NODE and state.joined_at == NO_NODE:
        return state._replace(joined_at=node) if reaches else state._replace(guessed=True)
    return state


def _strong(node: int, event: Event, state: OptState) -> OptState:
    state = _scaled(node, event, state)
    kind = event.kind
    cleared = state.cleared if kind not in _WRITES else (
        (kind is EventKind.ZERO_GRAD and event.clears) or kind is EventKind.NEW_MODULE)
    if cleared != state.cleared:
        state = state._replace(cleared=cleared)
    if kind in RESETS:
        # What the next step sees starts here: only this zero-grad can have discarded it.
        state = state._replace(guessed=False, pending=False, discarded_at=NO_NODE)
    if kind is EventKind.UNKNOWN_GRADS:
        return _unknown(node, state)
    if kind is EventKind.GRAD_WRITE:
        # Gradients written by hand are exactly what the step will see: nothing stale or
        # killed survives, and a clip before the write clipped something else.
        return state._replace(grads=Grads.FRESH, grads_at=node, killed_backward=NO_NODE,
                       clip=_clip_after_zero(state.clip))
    if kind is EventKind.BACKWARD:
        grads = _BACKWARD[state.grads]
        keeps_origin = grads is Grads.STALE and state.grads in STALE
        return state._replace(grads=grads, grads_at=state.grads_at if keeps_origin else node,
                       clip=Clip.STALE if state.clip is Clip.DONE else state.clip)
    if kind is EventKind.ZERO_GRAD:
        grads = _ZERO[state.grads]
        if grads is Grads.KILLED and event.origin is Origin.CALLER:
            grads = Grads.NONE  # the caller zeroes between two updates, not inside one
        if grads is state.grads:
            # Gradients surely none from here on (not merely untouched since the entry).
            at = node if state.grads is Grads.NONE and state.grads_at == NO_NODE else state.grads_at
            return state._replace(clip=_clip_after_zero(state.clip), grads_at=at)
        killed = state.grads_at if grads is Grads.KILLED else NO_NODE
        return state._replace(grads=grads, grads_at=node, killed_backward=killed,
                       clip=_clip_after_zero(state.clip))
    if kind is EventKind.CLIP:
        if state.grads in HAS_FRESH:
            clip = Clip.DONE
        elif state.grads in (Grads.USED, Grads.ZEROED_USED):
            clip = Clip.LATE
        else:
            clip = Clip.EARLY
        return state._replace(clip=clip, clip_at=node)
    if kind is EventKind.STEP and state.cleared:  # every gradient is ``None``: nothing is applied
        return state._replace(clip=Clip.NONE, clip_at=NO_NODE)
    if kind is EventKind.STEP:
        return state._replace(grads=Grads.USED, grads_at=node, killed_backward=NO_NODE,
                       clip=Clip.NONE, clip_at=NO_NODE, step_at=node, discarded_at=NO_NODE)
    if kind is EventKind.CREATE_OPTIMIZER:
        # A new optimizer leaves the gradients its parameters hold where they are; only a
        # function's first one, over parameters nothing has touched yet, finds none.
        if state.grads is Grads.UNKNOWN:
            return state._replace(grads=Grads.NONE, grads_at=node)
        return state
    if kind is EventKind.NEW_MODULE:
        return state._replace(grads=Grads.NONE, grads_at=node, killed_backward=NO_NODE, clip=Clip.NONE,
                       clip_at=NO_NODE)
    return state


def _clip_after_zero(clip: Clip) -> Clip:
    return clip if clip in (Clip.EARLY, Clip.LATE) else Clip.NONE


def around_loop(state: OptState, edge: Edge) -> OptState:
    """Crossing a loop's back edge. Every loop forgets the values tests took. Round a training
    loop, what was fresh or used now comes from a past iteration (so a clip here belongs to the
    next update, not the last one), and a zero-grad that discarded fresh gradients is no longer
    "before this step"; round a loop that runs backward without stepping, fresh gradients are
    pending for the step after it."""
    if edge is Edge.LOOP:
        return state._replace(path=frozenset()) if state.path else state
    grads = _AROUND_LOOP.get(state.grads, state.grads)
    pending = state.pending or (edge is Edge.ACCUMULATE and state.grads in FRESH)
    return state._replace(grads=grads, looped=True, pending=pending, path=frozenset())


def assume(node: Node, state: OptState) -> OptState | None:
    """The state after a branch's start: the value its test takes joins the path, and a state
    whose path already gave that test the other value cannot take this branch (``None``); the
    side of an accumulation boundary that does not update leaves fresh gradients pending."""
    path = state.path
    if node.forget:
        path = frozenset(f for f in path if f[0] not in node.forget)
    if node.sets is not None:
        path = frozenset(f for f in path if f[0] != node.sets[0]) | {node.sets}
    if node.assume is not None:
        atom, value = node.assume
        if (atom, not value) in path:
            return None
        path = path | {node.assume}
    pending = (state.pending and not node.closes_window) or (node.skips_update and state.grads in FRESH)
    if path is state.path and pending is state.pending:
        return state
    return state._replace(path=path, pending=pending)


S = TypeVar("S")
MAX_STATES = 64


def widened(state: OptState) -> OptState:
    """What survives a widening: nothing about the gradients or the path, and no finding rests
    on it or on what follows from it."""
    return OptState(looped=state.looped, guessed=True, widened=True)


def solve(
    cfg: Cfg,
    entry: Iterable[S],
    step: Callable[[Node, S], Iterable[S]],
    back: Callable[[S, Edge], S] = lambda s, _: s,
    widen: Callable[[S], S] | None = None,
) -> list[frozenset[S]]:
    """The set of states reaching each node (before its event), to a fixpoint. ``step`` gives
    the states after a node (more than one for a weak update, none for a path that cannot
    take a branch); ``back`` maps states across a loop's back edge. Each state is pushed
    through a node once: only states new at a node travel on (states are independent of each
    other). Past ``MAX_STATES`` at one node, ``widen`` (when given) replaces what arrives by
    what is known without the details: many weak updates in a row cannot blow the analysis up."""
    states: list[set[S]] = [set() for _ in cfg.nodes]
    pending: list[set[S]] = [set() for _ in cfg.nodes]
    states[cfg.entry] = set(entry)
    pending[cfg.entry] = set(entry)
    work = [cfg.entry]
    while work:
        node_id = work.pop()
        fresh, pending[node_id] = pending[node_id], set()
        if not fresh:
            continue
        node = cfg.nodes[node_id]
        out = fresh
        if node.event is not None or node.on_path:
            out = {after for s in fresh for after in step(node, s)}
        for succ, edge in node.succs:
            incoming = out if edge is Edge.FORWARD else {back(s, edge) for s in out}
            new = incoming - states[succ]
            if new and widen is not None and len(states[succ]) + len(new) > MAX_STATES:
                new = {widen(s) for s in new} - states[succ]
            if new:
                states[succ] |= new
                pending[succ] |= new
                work.append(succ)
    return [frozenset(s) for s in states]


class ParamsState(NamedTuple):
    """Stored parameter generators: which names may hold one, and which may be exhausted."""

    generators: frozenset[str] = frozenset()
    consumed: frozenset[str] = frozenset()


def params_transfer(node: Node, state: ParamsState) -> tuple[ParamsState]:
    event = node.event
    if event is None:
        return (state,)
    if event.kind is EventKind.PARAMS_BIND:
        generators = state.generators - {event.name}
        if event.generator:
            generators |= {event.name}
        return (ParamsState(generators, state.consumed - {event.name}),)
    if event.kind is EventKind.PARAMS_USE and event.name in state.generators:
        return (ParamsState(state.generators, state.consumed | {event.name}),)
    return (state,)
