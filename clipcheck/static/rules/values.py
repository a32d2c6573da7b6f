"""The value rules (CC3xx): what is passed to a clip or an optimizer, not when it runs."""

from __future__ import annotations

from collections.abc import Iterator

import libcst as cst

from clipcheck.static.events import Consumer, EventKind
from clipcheck.static.facts import UnitFacts
from clipcheck.static.rules.base import RawFinding, Rule, label, subject


class NonPositiveMaxNorm(Rule):
    code = "CC301"
    reads_paths = False

    def check(self, facts: UnitFacts) -> Iterator[RawFinding]:
        for node, event in facts.events(EventKind.CLIP, EventKind.CLIP_CONFIG):
            if event.threshold is None:
                continue
            if isinstance(event.threshold, cst.Name) and facts.checked_before(node, event.threshold.value):
                continue  # ``if MAX_NORM > 0:`` around the clip: zero means "disabled" here
            value = facts.names.number(event.threshold)
            if value is None:
                continue
            lightning = event.threshold_name == "gradient_clip_val"
            # As written: ``max_norm=0.0``; a module constant with its value, ``(= -1.0)``.
            written = f"`{event.threshold_name}={facts.code_of(event.threshold)}`"
            if isinstance(event.threshold, cst.Name):
                written += f" (= {value!r})"
            if lightning and value < 0 and event.kind is EventKind.CLIP_CONFIG:
                yield self.finding(event, (
                    f"{written} is negative: Lightning skips clipping for "
                    "any value <= 0, so this run trains with no clipping at all. Use a positive "
                    "threshold (for example 1.0), or leave it unset to disable clipping openly."
                ))
            elif lightning and value <= 0 and event.kind is EventKind.CLIP:
                # On the Trainer, 0 is the documented "off"; a clip call written out is meant to clip.
                yield self.finding(event, (
                    f"{written} in {subject(facts, event)} is not positive: Lightning skips "
                    "clipping for any value <= 0, so this call clips nothing and the step applies "
                    "unclipped gradients. Use a positive threshold (for example 1.0)."
                ))
            elif not lightning and value <= 0:
                effect = "wipes every gradient" if value == 0 else (
                    "flips the sign of every gradient, turning descent into ascent"
                    if event.threshold_name == "max_norm" else "leaves an empty clamp range")
                yield self.finding(event, (
                    f"{written} in {subject(facts, event)} {effect}: the model "
                    "stops learning. Use a positive threshold (for example 1.0)."
                ))


class ExhaustedParameters(Rule):
    code = "CC302"
    reads_paths = False

    def check(self, facts: UnitFacts) -> Iterator[RawFinding]:
        for node, event in facts.events(EventKind.PARAMS_USE):
            if event.consumer is Consumer.NONE or event.chain:
                continue
            if not any(event.name in s.consumed for s in facts.params[node]):
                continue
            effect = (
                "the clip sees no parameters: it clips nothing and reports a norm of 0"
                if event.consumer is Consumer.CLIP else
                "the optimizer gets an empty parameter list (`ValueError: optimizer got an "
                "empty parameter list`, or a parameter group that trains nothing)"
            )
            bindings = [e for _, e in facts.events(EventKind.PARAMS_BIND)
                        if e.name == event.name and e.generator]
            yield self.finding(event, anchor=bindings[0] if len(bindings) == 1 else None, message=(
                f"`{event.name}` holds a generator (such as `model.parameters()`) that an "
                f"earlier use already consumed, so {label(event)} receives nothing: {effect}. "
                "Store `list(model.parameters())`, or call `model.parameters()` again here."
            ))
