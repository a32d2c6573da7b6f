"""The errors the runtime guard raises. Each names the rule (the static rules' names where one
exists), the optimizer step it concerns and the file:line of the offending call."""

from __future__ import annotations


class GradientOrderError(RuntimeError):
    """Training called backward, clip, unscale, zero-grad or step in an order that trains wrong."""

    rule = "gradient-order"

    def __init__(self, message: str, *, step: int, location: str | None) -> None:
        self.step = step
        self.location = location
        where = f" at {location}" if location else ""
        super().__init__(f"[{self.rule}] step {step}{where}: {message}")


class ClipBeforeBackwardError(GradientOrderError):
    rule = "clip-before-backward"


class ClipAfterStepError(GradientOrderError):
    rule = "clip-after-step"


class StepBeforeBackwardError(GradientOrderError):
    rule = "step-before-backward"


class ForeignGradientsError(GradientOrderError):
    rule = "foreign-gradients"


class ClipInsideAccumulationError(GradientOrderError):
    rule = "clip-inside-accumulation"


class ZeroGradBeforeStepError(GradientOrderError):
    rule = "zero-grad-before-step"


class MissingZeroGradError(GradientOrderError):
    rule = "missing-zero-grad"


class ClipScaledGradientsError(GradientOrderError):
    rule = "clip-scaled-gradients"


class StepBypassesScalerError(GradientOrderError):
    rule = "step-bypasses-scaler"


class UnscaleTwiceError(GradientOrderError):
    rule = "unscale-twice"


class MissingScalerUpdateError(GradientOrderError):
    rule = "missing-scaler-update"


class BackwardAfterUnscaleError(GradientOrderError):
    rule = "backward-after-unscale"


class MissingClipError(GradientOrderError):
    rule = "missing-clip"


class PartialClipError(GradientOrderError):
    rule = "partial-clip"


class MaxNormExceededError(GradientOrderError):
    rule = "max-norm-exceeded"
