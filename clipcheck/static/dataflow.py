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
from dataclasses import dataclass, replace
from typing import TypeVar

from clipcheck.static.cfg import Cfg
from clipcheck.static.events import Event, EventKind


class Grads(enum.Enum):
    UNKNOWN = "unknown"          # whatever the caller left (function entry)
    NONE = "none"                # no gradients yet, or zeroed with nothing pending
    FRESH = "fresh"              # backward ran since the last zero-grad or step
    FRESH_PREV = "fresh-prev"    # ... in an earlier iteration of the training loop
    KILLED = "killed"            # fresh gradients were zeroed before any step used them
    USED = "used"                # a step consumed them; not zeroed since
    USED_PREV = "used-prev"      # ... in an earlier iteration of the training loop
    ZEROED_USED = "zeroed-used"  # zeroed after a step consumed them
    STALE = "stale"              # a backward accumulated onto gradients a step already used
    STALE_PREV = "stale-prev"    # ... in an earlier iteration of the training loop


class Clip(enum.Enum):
    NONE = "none"          # not clipped since the last step or zero-grad
    EARLY = "early"        # clipped while no fresh gradients existed (before backward)
    LATE = "late"          # clipped right after a step, before any backward
    DONE = "done"          # clipped after the last backward
    STALE = "stale"        # clipped, then another backward accumulated more gradients


NO_NODE = -1


@dataclass(frozen=True)
class OptState:
    """The gradients of one optimizer along one path.

    ``grads_at`` is the node that caused ``grads`` (the backward, the zero-grad or the step);
    ``killed_backward`` the backward whose gradients a zero-grad discarded; ``clip_at`` the
    clip behind ``clip``. ``looped`` says the path went round a training loop at least once.
    ``guessed`` says the path assumes that an event which only may have applied did not reset
    the gradients (or that a clip which only may have applied did): no finding rests on it.
    """

    grads: Grads = Grads.UNKNOWN
    grads_at: int = NO_NODE
    killed_backward: int = NO_NODE
    clip: Clip = Clip.NONE
    clip_at: int = NO_NODE
    looped: bool = False
    guessed: bool = False


ENTRY = OptState()

_BACKWARD = {
    Grads.UNKNOWN: Grads.FRESH, Grads.NONE: Grads.FRESH, Grads.FRESH: Grads.FRESH,
    Grads.FRESH_PREV: Grads.FRESH, Grads.KILLED: Grads.FRESH, Grads.USED: Grads.STALE,
    Grads.USED_PREV: Grads.STALE,
    Grads.ZEROED_USED: Grads.FRESH, Grads.STALE: Grads.STALE, Grads.STALE_PREV: Grads.STALE,
}
_ZERO = {
    Grads.UNKNOWN: Grads.NONE, Grads.NONE: Grads.NONE, Grads.FRESH: Grads.KILLED,
    Grads.FRESH_PREV: Grads.NONE, Grads.KILLED: Grads.KILLED, Grads.USED: Grads.ZEROED_USED,
    Grads.USED_PREV: Grads.ZEROED_USED,
    Grads.ZEROED_USED: Grads.ZEROED_USED, Grads.STALE: Grads.KILLED,
    Grads.STALE_PREV: Grads.ZEROED_USED,
}
_AROUND_LOOP = {
    Grads.FRESH: Grads.FRESH_PREV, Grads.USED: Grads.USED_PREV, Grads.STALE: Grads.STALE_PREV,
    Grads.KILLED: Grads.NONE,
}
STALE = frozenset({Grads.STALE, Grads.STALE_PREV})
USED = frozenset({Grads.USED, Grads.USED_PREV})
HAS_FRESH = frozenset({Grads.UNKNOWN, Grads.FRESH, Grads.FRESH_PREV, *STALE})


class Strength(enum.Enum):
    """How surely an event applies to one optimizer's gradients."""

    MUST = "must"  # it does: a strong update
    MAY = "may"    # it might (which parameters it touches is unknown): a weak update


def transfer(node: int, event: Event, state: OptState, strength: Strength = Strength.MUST) -> set[OptState]:
    """The states after ``event`` (at CFG node ``node``) for an optimizer it applies to. A weak
    update keeps the state it would have changed; a backward that only may have touched these
    gradients leaves them unknown rather than fresh or stale, so no rule can build on it."""
    if strength is Strength.MUST:
        return {_strong(node, event, state)}
    if event.kind is EventKind.BACKWARD:
        return {state, _unknown(node, state)}
    if event.kind is EventKind.CLIP:
        return {state, replace(_strong(node, event, state), guessed=True)}
    return {replace(state, guessed=True), _strong(node, event, state)}


# Events that, when they surely apply, settle the gradients whatever was guessed before.
RESETS = frozenset({EventKind.ZERO_GRAD, EventKind.GRAD_WRITE, EventKind.STEP, EventKind.UNKNOWN_GRADS,
                    EventKind.CREATE_OPTIMIZER})


def _unknown(node: int, state: OptState) -> OptState:
    return replace(state, grads=Grads.UNKNOWN, grads_at=node, killed_backward=NO_NODE)


def _strong(node: int, event: Event, state: OptState) -> OptState:
    kind = event.kind
    if kind in RESETS:
        state = replace(state, guessed=False)
    if kind is EventKind.UNKNOWN_GRADS:
        return _unknown(node, state)
    if kind is EventKind.GRAD_WRITE:
        # Gradients written by hand are exactly what the step will see: nothing stale or
        # killed survives, and a clip before the write clipped something else.
        return replace(state, grads=Grads.FRESH, grads_at=node, killed_backward=NO_NODE,
                       clip=_clip_after_zero(state.clip))
    if kind is EventKind.BACKWARD:
        grads = _BACKWARD[state.grads]
        keeps_origin = grads is Grads.STALE and state.grads in STALE
        return replace(state, grads=grads, grads_at=state.grads_at if keeps_origin else node,
                       clip=Clip.STALE if state.clip is Clip.DONE else state.clip)
    if kind is EventKind.ZERO_GRAD:
        grads = _ZERO[state.grads]
        if grads is state.grads:
            return replace(state, clip=_clip_after_zero(state.clip))
        killed = state.grads_at if grads is Grads.KILLED else NO_NODE
        return replace(state, grads=grads, grads_at=node, killed_backward=killed,
                       clip=_clip_after_zero(state.clip))
    if kind is EventKind.CLIP:
        if state.grads in HAS_FRESH:
            clip = Clip.DONE
        elif state.grads is Grads.USED:
            clip = Clip.LATE
        else:
            clip = Clip.EARLY
        return replace(state, clip=clip, clip_at=node)
    if kind is EventKind.STEP:
        return replace(state, grads=Grads.USED, grads_at=node, killed_backward=NO_NODE,
                       clip=Clip.NONE, clip_at=NO_NODE)
    if kind is EventKind.CREATE_OPTIMIZER:
        # A new optimizer: over parameters never seen, no gradients exist yet; over parameters
        # an earlier update used, what they hold is not known (they may be new ones too).
        if state.grads is Grads.UNKNOWN:
            return replace(state, grads=Grads.NONE, grads_at=node)
        if state.grads in (Grads.FRESH, Grads.FRESH_PREV):
            return state
        return _unknown(node, state)
    return state


def _clip_after_zero(clip: Clip) -> Clip:
    return clip if clip in (Clip.EARLY, Clip.LATE) else Clip.NONE


def around_loop(state: OptState) -> OptState:
    """Crossing a training loop's back edge: what was fresh or used now comes from a past
    iteration (so a clip here belongs to the next update, not the last one), and a zero-grad
    that discarded fresh gradients is no longer "before this step"."""
    grads = _AROUND_LOOP.get(state.grads, state.grads)
    if grads is state.grads and state.looped:
        return state
    return replace(state, grads=grads, looped=True)


S = TypeVar("S")
MAX_STATES = 64


def widened(state: OptState) -> OptState:
    """What survives a widening: nothing about the gradients, and no finding rests on it."""
    return OptState(looped=state.looped, guessed=True)


def solve(
    cfg: Cfg,
    entry: Iterable[S],
    step: Callable[[int, Event, S], Iterable[S]],
    back: Callable[[S], S] = lambda s: s,
    widen: Callable[[S], S] | None = None,
) -> list[frozenset[S]]:
    """The set of states reaching each node (before its event), to a fixpoint. ``step`` gives
    the states after an event (more than one for a weak update). Each state is pushed through a
    node once: only states new at a node travel on (states are independent of each other).
    Past ``MAX_STATES`` at one node, ``widen`` (when given) replaces what arrives by what is
    known without the details: many weak updates in a row cannot blow the analysis up."""
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
        event = node.event
        out = fresh
        if event is not None:
            out = {after for s in fresh for after in step(node_id, event, s)}
        for succ, is_back in node.succs:
            incoming = {back(s) for s in out} if is_back else out
            new = incoming - states[succ]
            if new and widen is not None and len(states[succ]) + len(new) > MAX_STATES:
                new = {widen(s) for s in new} - states[succ]
            if new:
                states[succ] |= new
                pending[succ] |= new
                work.append(succ)
    return [frozenset(s) for s in states]


@dataclass(frozen=True)
class ParamsState:
    """Stored parameter generators: which names may hold one, and which may be exhausted."""

    generators: frozenset[str] = frozenset()
    consumed: frozenset[str] = frozenset()


def params_transfer(node: int, event: Event, state: ParamsState) -> tuple[ParamsState]:
    if event.kind is EventKind.PARAMS_BIND:
        generators = state.generators - {event.name}
        if event.generator:
            generators |= {event.name}
        return (ParamsState(generators, state.consumed - {event.name}),)
    if event.kind is EventKind.PARAMS_USE and event.name in state.generators:
        return (ParamsState(state.generators, state.consumed | {event.name}),)
    return (state,)
