"""The ordering rules (CC1xx): where clip, zero-grad, backward and step stand relative to
each other. Each reads the facts of a unit and yields findings; none walks syntax."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from clipcheck.static.cfg import Node
from clipcheck.static.dataflow import HAS_FRESH, NO_NODE, STALE, USED, ZEROED, Clip, Grads, OptState
from clipcheck.static.events import Event, EventKind, Origin
from clipcheck.static.facts import UnitFacts
from clipcheck.static.rules.base import (
    RawFinding,
    Rule,
    label,
    lines,
    origins,
    plural,
    step_phrase,
    subject,
)


class ClipBeforeBackward(Rule):
    code = "CC101"

    def check(self, facts: UnitFacts) -> Iterator[RawFinding]:
        """Each clip on its own: every path from it to a step runs a backward pass first."""
        for step, step_event in facts.events(EventKind.STEP):
            states = [s for k in facts.surely(step) for s in facts.steady(step, k)]
            for clip in origins(states, "clip_at"):
                through = [s for s in states if s.clip_at == clip]
                if all(s.clip in (Clip.EARLY, Clip.STALE) and s.grads in HAS_FRESH - {Grads.UNKNOWN}
                       and not s.guessed for s in through):
                    backward = max(s.grads_at for s in through)
                    # A clip and then a backward, no step between: whoever steps next, the
                    # function alone shows the mistake, so it stands without a caller.
                    yield self.finding(facts.event(clip), self._message(facts, clip, backward, step_event),
                                       anchor=facts.event(backward))

    @staticmethod
    def _message(facts: UnitFacts, clip: int, backward: int, step: Event) -> str:
        clip_event = facts.event(clip)
        if step.origin is Origin.LIGHTNING:
            return (
                f"{label(clip_event)} runs inside `training_step`, but under automatic "
                "optimization Lightning runs backward only after `training_step` returns: the "
                "clip sees no gradients for this batch and the step applies unclipped ones. "
                "Set `gradient_clip_val` on the Trainer, or clip in `configure_gradient_clipping`."
            )
        return (
            f"{subject(facts, clip_event)} clips before the backward pass of this update "
            f"({lines([facts.line(backward)])}): {step_phrase(facts, step)} "
            "applies gradients that were never clipped. Clip after backward, right before step."
        )


class ClipAfterStep(Rule):
    code = "CC102"

    def check(self, facts: UnitFacts) -> Iterator[RawFinding]:
        for clip, event in facts.events(EventKind.CLIP):
            if not facts.always(clip, lambda s: s.grads in (Grads.USED, Grads.ZEROED_USED)):
                continue
            steps = origins((s for k in facts.surely(clip) for s in facts.steady(clip, k)), "step_at")
            anchor = facts.event(steps[0]) if len(steps) == 1 else None
            yield self.finding(event, anchor=anchor, message=(
                f"{subject(facts, event)} clips after the optimizer {plural(len(steps), 'step')} at "
                f"{lines(facts.line(s) for s in steps)}: that update already used the unclipped "
                "gradients, and the clipped ones are discarded by the next zero-grad. Move the clip "
                "between backward and step."
            ))


class StepBeforeBackward(Rule):
    code = "CC103"

    EMPTY = frozenset({Grads.NONE, *USED, *ZEROED})

    def check(self, facts: UnitFacts) -> Iterator[RawFinding]:
        backwards = [n for n, e in facts.events(EventKind.BACKWARD)]
        for step, event in facts.events(EventKind.STEP):
            if not facts.always(step, lambda s: s.grads in self.EMPTY and s.grads_at != NO_NODE):
                continue  # a step before anything touched the gradients has none: a no-op
            if facts.always(step, lambda s: s.cleared):
                continue  # every gradient is ``None`` (``zero_grad()``'s default): the step skips them all
            later = [b for b in backwards if b in facts.reachable_from(step)]
            if not later:
                continue
            line = min(facts.line(b) for b in later)
            yield self.finding(event, (
                f"{subject(facts, event)} steps before the backward pass at line {line} has produced "
                "this update's gradients: it applies zeroed or already-used gradients, and the "
                "fresh ones arrive after the step. Call backward first, then step."
            ))


class ZeroGradBeforeStep(Rule):
    code = "CC104"

    def check(self, facts: UnitFacts) -> Iterator[RawFinding]:
        for step, step_event in facts.events(EventKind.STEP):
            yield from self._window_discarded(facts, step, step_event)
            if not facts.always(step, lambda s: s.grads is Grads.KILLED):
                continue
            states = [s for k in facts.targets[step] for s in facts.steady(step, k)]
            for zero in origins(states, "grads_at"):
                backward = max(s.killed_backward for s in states if s.grads_at == zero)
                yield self.finding(facts.event(zero), (
                    f"{subject(facts, facts.event(zero))} zeroes the gradients that the backward pass "
                    f"at line {facts.line(backward)} just computed, before "
                    f"{step_phrase(facts, step_event)} uses them: the update sees nothing. "
                    "Zero the gradients before backward (or after step), never between."
                ), step_event)

    def _window_discarded(self, facts: UnitFacts, step: int, step_event: Event) -> Iterator[RawFinding]:
        """A zero-grad that runs while an accumulation window's gradients wait for their step."""
        states = [s for k in facts.surely(step) for s in facts.before(step, k) if not s.guessed]
        for zero in origins(states, "discarded_at"):
            yield self.finding(facts.event(zero), (
                f"{subject(facts, facts.event(zero))} runs on micro-batches that do not update, "
                "throwing away the gradients accumulated for the next step "
                f"({step_phrase(facts, step_event)}): each update sees only the last micro-batch, "
                "so accumulation silently does nothing. Zero the gradients only right after the "
                "step, inside the branch that updates."
            ), step_event)


class MissingZeroGrad(Rule):
    code = "CC105"

    def check(self, facts: UnitFacts) -> Iterator[RawFinding]:
        for step, _ in facts.events(EventKind.STEP):
            for key in facts.targets[step]:
                for backward in origins((s for s in facts.before(step, key)
                                          if s.grads in STALE and not s.guessed), "grads_at"):
                    arriving = facts.before(backward, key)
                    if any(s.guessed and s.grads in USED for s in arriving):
                        continue  # a zero-grad may run between the step and here
                    if not self._unzeroed_path(facts, backward, step, arriving):
                        continue
                    used_by = origins((s for s in arriving if s.grads in USED),
                                       "grads_at")
                    event = facts.event(backward)
                    yield self.finding(event, (
                        f"{subject(facts, event)} accumulates onto the gradients that the "
                        f"{plural(len(used_by), 'step')} at {lines(facts.line(s) for s in used_by)} "
                        "already applied: "
                        "nothing zeroes them in between, so every update re-applies all earlier "
                        "gradients. Call `optimizer.zero_grad()` once per update."
                    ))

    def _unzeroed_path(self, facts: UnitFacts, backward: int, step: int,
                       arriving: frozenset[OptState]) -> bool:
        """Whether the used gradients reach ``backward`` on a path no zero-grad excuses. A
        zero-grad that resets what ``step`` used on another path excuses it when it stands in
        the innermost loop around the backward and the used gradients came round that same
        loop (the engine may not tell two tests of one condition apart); a zero-grad only in
        an enclosing loop (once per epoch, around a loop over batches) does not, nor one
        inside a loop that the used gradients entered from before it (a new phase)."""
        zeroes = [s.grads_at for s in arriving if self._zeroed_for(facts, s, step)]
        if not zeroes:
            return True
        loop = next(iter(facts.cfg.loops_around(backward)), None)
        if loop is None:
            return False
        cfg = facts.cfg
        inside = [z for z in zeroes if loop in cfg.loops_around(z)]
        used = [s.grads_at for s in arriving if s.grads in USED and not s.guessed]
        if all(loop in cfg.loops_around(u) for u in used):
            return not inside
        # Used gradients entered the loop from before it: only a zero-grad that comes before
        # the backward in the loop's body (``if j == 0: zero_grad()``) may meet them first.
        return not any(backward in cfg.reachable_from(z, avoiding=lambda n: n.id == loop) for z in inside)

    @staticmethod
    def _zeroed_for(facts: UnitFacts, state: OptState, step: int) -> bool:
        """A zero-grad that resets what ``step`` used: not one that runs only on a path that
        skips the rest of the iteration, nor one behind an accumulation boundary when the
        step runs on every micro-batch (unless the optimizer itself skips those steps)."""
        if state.grads not in ZEROED or state.grads_at in facts.cfg.skips:
            return False
        return (not facts.at_boundary(state.grads_at) or facts.at_boundary(step)
                or facts.event(step).gated)


class ForeignGradients(Rule):
    code = "CC107"

    def check(self, facts: UnitFacts) -> Iterator[RawFinding]:
        """At each step: on every path, this optimizer's own backward joined gradients that
        another loss's backward left when another optimizer stepped, with no zero-grad of this
        optimizer in between. Code that freezes parameters or toggles optimizers changes what a
        backward reaches: such a unit is left alone."""
        if any(True for _ in facts.events(EventKind.FREEZE)):
            return
        for step, _ in facts.events(EventKind.STEP):
            for key in facts.surely(step):
                states = facts.steady(step, key)
                if not states or not all(s.joined_at != NO_NODE and not s.guessed for s in states):
                    continue
                for joined in origins(states, "joined_at"):
                    event = facts.event(joined)
                    others = origins((s for s in states if s.joined_at == joined), "foreign_at")
                    if self._joint(facts, key, joined, others):
                        continue
                    yield self.finding(event, (
                        f"{subject(facts, event)} adds onto gradients that the backward pass at "
                        f"{lines(facts.line(o) for o in others)} (another loss, for another "
                        f"optimizer's step) left on `{key}`'s parameters, and nothing zeroes them "
                        f"in between: {step_phrase(facts, facts.event(step))} applies both losses. "
                        "Zero this optimizer's gradients right before its own backward, or keep the "
                        "other loss out of these parameters (`.detach()`, `requires_grad_(False)`)."
                    ))


    @staticmethod
    def _joint(facts: UnitFacts, key: str, joined: int, others: list[int]) -> bool:
        """Both losses reach both sets of parameters (an encoder and a generator trained
        together on a joint loss, then the generator on one more): one objective split in two
        backwards, not one network's loss leaking into the other's update."""
        cfg = facts.cfg
        stepped: set[str] = set()  # the optimizers that stepped on the other loss in between
        for other in others:
            after = cfg.reachable_from(other, avoiding=_is_node(joined))
            for step, event in facts.events(EventKind.STEP):
                back = cfg.reachable_from(step, avoiding=_is_node(other))
                if step in after and joined in back:
                    stepped |= {k for k in event.optimizers or ()
                                if k != key and other in facts.reached.get(k, ())}
        return bool(stepped) and all(joined in facts.reached[k] for k in stepped)


def _is_node(node: int) -> Callable[[Node], bool]:
    return lambda n: n.id == node


class ClipInsideAccumulation(Rule):
    code = "CC106"

    def check(self, facts: UnitFacts) -> Iterator[RawFinding]:
        for clip, event in facts.events(EventKind.CLIP):
            keys = facts.surely(clip)
            if facts.at_boundary(clip):
                continue  # clips once per window, on the micro-batch that updates
            if not keys or not all(
                any(s.clip is Clip.STALE and s.pending and not s.guessed for s in facts.before(clip, k))
                for k in keys
            ):
                continue
            yield self.finding(event, (
                f"{subject(facts, event)} runs on every micro-batch while gradients accumulate: each "
                "clip rescales a partial sum, so early micro-batches are shrunk again and again "
                "and the step sees a distorted average. Clip once, after the last backward and "
                "right before step (inside the branch that steps)."
            ))
