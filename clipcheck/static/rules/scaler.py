"""The mixed-precision rules (CC2xx): a GradScaler's scaled gradients, its per-optimizer record
(unscaled, stepped) and its update. Each reads facts only."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from clipcheck.static.cfg import Node
from clipcheck.static.dataflow import HAS_FRESH, Clip, Grads, OptState, Scale, Stage
from clipcheck.static.events import Amp, Event, EventKind, Origin
from clipcheck.static.facts import UnitFacts
from clipcheck.static.rules.base import RawFinding, Rule, label, lines, origins, subject

STILL_SCALED = frozenset({Scale.SCALED, Scale.FRAMEWORK})


ScalerEvent = tuple[int, Event, str, frozenset[OptState]]


def _through_scaler(facts: UnitFacts, *kinds: EventKind) -> Iterator[ScalerEvent]:
    """Each GradScaler event of ``kinds``, with each optimizer object it names and the states
    that reach it for that optimizer."""
    for node, event in facts.events(*kinds):
        if event.amp is Amp.SCALER:
            for key in facts.exact(node):
                yield node, event, key, facts.steady(node, key)


def _clips_scaled(state: OptState) -> bool:
    return state.scale in STILL_SCALED and state.grads in HAS_FRESH and not state.guessed


def _never(facts: UnitFacts, key: str, kind: EventKind, amp: Amp = Amp.SCALER) -> bool:
    """No event of ``kind`` through the scaler (``unscale_``, ``scaler.step``) concerns the
    optimizer ``key`` anywhere in the unit: a path that scales has no configuration in which
    the code unscales or steps through the scaler."""
    return key not in facts.concerned(kind, amp)


def _some_path(facts: UnitFacts, node: int, test: Callable[[OptState], bool], kind: EventKind) -> bool:
    """``test`` holds on some path to ``node``, and the unit never unscales (``kind``) or steps
    through the scaler for any optimizer the event surely concerns."""
    keys = facts.surely(node)
    return bool(keys) and all(_never(facts, k, kind) for k in keys) and any(
        test(s) for k in keys for s in facts.steady(node, k))


def _updates_or_fails(node: Node) -> bool:
    return node.failed or (node.event is not None and node.event.kind is EventKind.SCALER_UPDATE)


class ClipScaledGradients(Rule):
    code = "CC201"

    def check(self, facts: UnitFacts) -> Iterator[RawFinding]:
        for clip, event in facts.events(EventKind.CLIP):
            if event.amp is Amp.FRAMEWORK:
                continue  # ``accelerator.clip_grad_norm_`` unscales first
            if facts.always(clip, _clips_scaled) or _some_path(facts, clip, _clips_scaled, EventKind.UNSCALE):
                states = [s for k in facts.surely(clip) for s in facts.steady(clip, k) if _clips_scaled(s)]
                yield self.finding(event, self._message(facts, event, states))
        yield from self._before_scaler_step(facts)

    def _before_scaler_step(self, facts: UnitFacts) -> Iterator[RawFinding]:
        """A helper that clips and then steps through the scaler, with no ``unscale_`` in
        between: wrong where its caller handed it scaled gradients."""
        for _, event, _, states in _through_scaler(facts, EventKind.STEP):
            clips = origins(states, "clip_at")
            if len(clips) == 1 and states and all(
                    s.clip is Clip.DONE and s.grads is Grads.UNKNOWN and s.scale is Scale.NONE
                    and s.stage is not Stage.UNSCALED and not s.guessed for s in states):
                clip = facts.event(clips[0])
                if clip.amp is not Amp.FRAMEWORK:
                    # Whether the gradients came in scaled is the caller's to show: the finding
                    # stands (inside the helper) only where a caller of the module shows it.
                    yield RawFinding(self, clip, self._message(facts, clip, [], event), implied=True)

    @staticmethod
    def _message(facts: UnitFacts, clip: Event, states: list[OptState], step: Event | None = None) -> str:
        backwards = origins(states, "scale_at")
        if any(s.scale is Scale.FRAMEWORK for s in states):
            return (
                f"{subject(facts, clip)} clips gradients that `accelerator.backward` "
                f"({lines(facts.line(b) for b in backwards)}) left multiplied by the fp16 loss "
                "scale: the threshold binds on gradients thousands of times too large, so every "
                "update is shrunk to almost nothing. Use `accelerator.clip_grad_norm_(...)`, "
                "which unscales first."
            )
        where = (f"the scaled backward at {lines(facts.line(b) for b in backwards)}" if backwards
                 else f"{label(step)} at line {facts.line_of(step.node)}" if step is not None
                 else "the scaled backward")
        return (
            f"{subject(facts, clip)} clips gradients that are still multiplied by the GradScaler's "
            f"loss scale (no `scaler.unscale_(optimizer)` between {where} and the clip): the "
            "threshold binds on gradients about 65,536 times too large, so every update is "
            "shrunk to almost nothing and training crawls. Call `scaler.unscale_(optimizer)` "
            "right before the clip."
        )


class StepBypassesScaler(Rule):
    code = "CC202"

    def check(self, facts: UnitFacts) -> Iterator[RawFinding]:
        for step, event in facts.events(EventKind.STEP):
            if event.amp is not Amp.NONE or event.gated or event.wrapper or event.origin is not Origin.SOURCE:
                continue
            if not _some_path(facts, step, _scaled_for_step, EventKind.STEP):
                continue  # a unit that steps through the scaler somewhere steps directly only without it
            states = [s for k in facts.surely(step) for s in facts.steady(step, k) if _scaled_for_step(s)]
            scaled = [b for b in origins(states, "scale_at")
                      if facts.event(b).kind is EventKind.BACKWARD]
            since = f" since the scaled backward at {lines(facts.line(b) for b in scaled)}" if scaled else ""
            yield self.finding(event, (
                f"{subject(facts, event)} steps on gradients of a scaled loss{since}, bypassing the "
                "GradScaler: the update applies gradients still multiplied by the loss scale (or, "
                "after `unscale_`, steps even when they overflowed to inf/NaN), and the scale never "
                "adapts. Step through `scaler.step(optimizer)`, then call `scaler.update()`."
            ))


def _scaled_for_step(state: OptState) -> bool:
    return state.scale in (Scale.SCALED, Scale.UNSCALED) and not state.guessed


class UnscaleTwice(Rule):
    code = "CC203"

    def check(self, facts: UnitFacts) -> Iterator[RawFinding]:
        for node, event, _, reaching in _through_scaler(facts, EventKind.UNSCALE):
            states = [s for s in reaching if not s.guessed]
            again = [s for s in states if s.stage is Stage.UNSCALED]
            # Some path: an earlier micro-batch of a window unscaled (not where the code
            # unscales behind a boundary test: two tests the engine cannot correlate).
            every_micro_batch = node not in facts.cfg.behind_boundary and any(s.pending for s in again)
            if not again or not (len(again) == len(states) or every_micro_batch):
                continue
            earlier = [n for n in origins(again, "stage_at") if n != node]
            before = "micro-batch" if any(s.pending for s in again) else "iteration"
            yield self.finding(event, (
                f"{subject(facts, event)} unscales gradients that "
                + (f"`unscale_` at {lines(facts.line(n) for n in earlier)} already unscaled"
                   if earlier else f"an earlier {before}'s `unscale_` already unscaled")
                + ", with no `scaler.update()` in between: GradScaler raises `RuntimeError: "
                "unscale_() has already been called on this optimizer since the last update()`. "
                "Under gradient accumulation, unscale (and clip) only on the micro-batch that "
                "steps, right before `scaler.step`."
            ))
        yield from self._wrapper_and_inner(facts)

    def _wrapper_and_inner(self, facts: UnitFacts) -> Iterator[RawFinding]:
        """``scaler.unscale_(opt.optimizer)`` then ``scaler.step(opt)``: the scaler's record for
        the wrapper says "not unscaled", so its step divides the same gradients again."""
        for _, event, key, states in _through_scaler(facts, EventKind.STEP):
            unscales = origins(states, "scale_at")
            if not (states and len(unscales) == 1 and all(
                    s.scale is Scale.UNSCALED and not s.guessed for s in states)):
                continue
            unscale = facts.event(unscales[0])
            if unscale.kind is EventKind.UNSCALE and key not in (unscale.optimizers or {key}):
                yield self.finding(unscale, (
                    f"{subject(facts, unscale)} unscales through a different object than "
                    f"{label(event)} (line {facts.line_of(event.node)}) steps: GradScaler keeps "
                    "its record per optimizer object, so the step unscales the same gradients "
                    "a second time, silently shrinking every update by the loss scale. Pass the "
                    "same optimizer object to `unscale_` and `step`."
                ), event)


class MissingScalerUpdate(Rule):
    code = "CC204"

    def check(self, facts: UnitFacts) -> Iterator[RawFinding]:
        """A scaler call that a loop of the function brings back to after ``scaler.step``
        with no ``update()`` on the way (nor an error's path through a handler)."""
        cfg = facts.cfg
        missing: dict[int | None, tuple[int, Event]] = {}  # per loop: its last update-less step
        for node, event, _, reaching in _through_scaler(facts, EventKind.STEP, EventKind.UNSCALE):
            if not facts.in_own_loop(node):
                continue
            states = [s for s in reaching if s.stage is Stage.STEPPED and s.looped and not s.guessed]
            for stepped in origins(states, "stage_at"):
                again = cfg.reachable_from(stepped, through_exit=False, avoiding=_updates_or_fails)
                loop = cfg.loop_of.get(stepped)
                if node in again and stepped >= missing.get(loop, (-1, event))[0]:
                    missing[loop] = (stepped, event)
        for stepped, event in missing.values():  # one finding per loop, even with two optimizers
            step = facts.event(stepped)
            yield self.finding(step, (
                f"{subject(facts, step)} is not followed by `scaler.update()` before the "
                f"next {label(event)} of the loop: the next scaler call raises "
                "`RuntimeError` (GradScaler allows one step per update), and the loss scale "
                "never adapts. Call `scaler.update()` once per iteration, after the last "
                "`scaler.step(...)`."
            ))
