"""The sharded and distributed rules (CC4xx): FSDP1, DeepSpeed engines and DDP's ``no_sync``.
Each reads facts only."""

from __future__ import annotations

from collections.abc import Iterator

from clipcheck.static.dataflow import HAS_FRESH, Grads
from clipcheck.static.events import Amp, EventKind
from clipcheck.static.facts import UnitFacts
from clipcheck.static.frameworks import deepspeed, fsdp
from clipcheck.static.rules.base import RawFinding, Rule, label, subject

# A test around the clip that reads these tells FSDP runs apart (``if isinstance(model, FSDP)``).
FSDP_WORDS = ("fsdp", "fullyshard", "fully_shard")


class FsdpNeedsModuleClip(Rule):
    code = "CC401"
    reads_paths = False

    def check(self, facts: UnitFacts) -> Iterator[RawFinding]:
        for clip, event in facts.events(EventKind.CLIP):
            if event.wrapper != fsdp.WRAPPER:
                continue
            tests = facts.cfg.guards.get(clip, ())
            if any(word in facts.code_of(t).lower() for t in tests for word in FSDP_WORDS):
                continue  # the clip runs only where the code has told FSDP apart
            yield self.finding(event, (
                f"{subject(facts, event)} clips the parameters of a model wrapped in "
                "`FullyShardedDataParallel`: the torch function sees only this rank's shard, so "
                "each rank computes a different norm and clips by a different factor. Call the "
                "wrapper's own `model.clip_grad_norm_(max_norm)`, which reduces the norm across "
                "ranks."
            ))


class ClipBypassesDeepspeed(Rule):
    code = "CC402"

    def check(self, facts: UnitFacts) -> Iterator[RawFinding]:
        engines = {k for _, e in facts.events(EventKind.STEP) if e.wrapper == deepspeed.WRAPPER
                   for k in e.optimizers or ()}
        for clip, event in facts.events(EventKind.CLIP):
            if event.amp is Amp.FRAMEWORK:
                continue
            for key in set(facts.surely(clip)) & engines:
                if all(s.grads in HAS_FRESH - {Grads.UNKNOWN} and not s.guessed
                       for s in facts.steady(clip, key)) and facts.steady(clip, key):
                    yield self.finding(event, (
                        f"{subject(facts, event)} clips the gradients of the DeepSpeed engine "
                        f"`{key}` by hand between its backward and its step: the engine owns loss "
                        "scaling, gradient partitions and accumulation, so this clips scaled or "
                        "partial gradients (or nothing at all). Set `\"gradient_clipping\"` in the "
                        "DeepSpeed config to the threshold you want (older releases default it to 0, "
                        "off; those since June 2026 to 1.0) and drop the clip."
                    ))
                    break


class NoSyncMissesForward(Rule):
    code = "CC403"
    reads_paths = False

    def check(self, facts: UnitFacts) -> Iterator[RawFinding]:
        for _, event in facts.events(EventKind.LATE_NO_SYNC):
            yield self.finding(event, (
                f"{label(event)} wraps only the backward pass: DDP decides in the forward pass "
                "whether the next backward all-reduces, and that forward ran outside the block, so "
                "gradients are still synchronised on every micro-batch. Put the forward pass "
                "(the model call that makes the loss) inside the `with` block too."
            ))
