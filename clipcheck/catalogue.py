"""The rules by code, kebab name and summary: what configuration, output and documentation
need without the static engine (whose rule classes take their name and summary from here)."""

from __future__ import annotations

from typing import NamedTuple


class RuleInfo(NamedTuple):
    code: str
    name: str
    summary: str


CATALOGUE: tuple[RuleInfo, ...] = (
    RuleInfo("CC101", "clip-before-backward",
             "gradients are clipped before the backward pass that feeds the step"),
    RuleInfo("CC102", "clip-after-step",
             "gradients are clipped after the step already applied them"),
    RuleInfo("CC103", "step-before-backward",
             "the optimizer steps before the backward pass that should feed it"),
    RuleInfo("CC104", "zero-grad-before-step",
             "gradients are zeroed between backward and step"),
    RuleInfo("CC105", "missing-zero-grad",
             "a backward pass accumulates onto gradients a step already used"),
    RuleInfo("CC106", "clip-inside-accumulation",
             "gradients are clipped on every micro-batch of an accumulation"),
    RuleInfo("CC107", "foreign-gradients",
             "a backward adds onto gradients another loss left on this optimizer's parameters"),
    RuleInfo("CC201", "clip-scaled-gradients",
             "gradients are clipped while still multiplied by the loss scale"),
    RuleInfo("CC202", "step-bypasses-scaler",
             "the loss was scaled but the optimizer steps directly, not through the scaler"),
    RuleInfo("CC203", "unscale-twice",
             "the same gradients are unscaled twice before one step"),
    RuleInfo("CC204", "missing-scaler-update",
             "scaler.step runs in a loop that never calls scaler.update()"),
    RuleInfo("CC301", "non-positive-max-norm",
             "a clipping threshold is zero or negative"),
    RuleInfo("CC302", "exhausted-parameters",
             "a parameter generator is reused after it was consumed"),
    RuleInfo("CC401", "fsdp-needs-module-clip",
             "an FSDP1 model is clipped with torch.nn.utils, which sees only the local shard"),
    RuleInfo("CC402", "clip-bypasses-deepspeed",
             "a DeepSpeed engine's gradients are clipped by hand"),
    RuleInfo("CC403", "no-sync-misses-forward",
             "DDP's no_sync() wraps the backward but not the forward pass"),
)
BY_CODE: dict[str, RuleInfo] = {r.code: r for r in CATALOGUE}
