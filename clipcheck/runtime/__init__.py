"""clipcheck's runtime companion: a guard that proves, on the model's own device, that every
optimizer step saw fresh, unscaled, clipped gradients.

    guard = clipcheck.runtime.guard(optimizer, max_norm=1.0, scaler=scaler)
    ...
    guard.close()          # or: with clipcheck.runtime.guard(...):

``install()`` guards every optimizer from its first step on, without editing the training code
(``clipcheck run script.py`` does this). torch is imported here only, never by the static pass.
"""

from __future__ import annotations

import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from clipcheck.runtime import interception
from clipcheck.runtime.eager import eager
from clipcheck.runtime.errors import (
    BackwardAfterUnscaleError,
    ClipAfterStepError,
    ClipBeforeBackwardError,
    ClipInsideAccumulationError,
    ClipScaledGradientsError,
    ForeignGradientsError,
    GradientOrderError,
    MaxNormExceededError,
    MissingClipError,
    MissingScalerUpdateError,
    MissingZeroGradError,
    PartialClipError,
    StepBeforeBackwardError,
    StepBypassesScalerError,
    UnscaleTwiceError,
    ZeroGradBeforeStepError,
)
from clipcheck.runtime.guard import Guard

__all__ = [
    "BackwardAfterUnscaleError", "ClipAfterStepError", "ClipBeforeBackwardError",
    "ClipInsideAccumulationError", "ClipScaledGradientsError", "ForeignGradientsError",
    "GradientOrderError", "Guard", "MaxNormExceededError", "MissingClipError",
    "MissingScalerUpdateError", "MissingZeroGradError", "PartialClipError", "StepBeforeBackwardError",
    "StepBypassesScalerError", "UnscaleTwiceError", "ZeroGradBeforeStepError", "guard", "install",
    "uninstall",
]


def guard(
    optimizer: object,
    max_norm: float | None = None,
    scaler: torch.amp.GradScaler | None = None,
    check_every: int = 100,
) -> Guard:
    """Guard one optimizer (a torch optimizer, or a framework's wrapper of one); create it
    before the first backward pass. ``max_norm=None`` (the default, as for ``clipcheck run``)
    checks the order of events only; a number also checks every step's gradient norm."""
    return Guard(optimizer, max_norm=max_norm, scaler=scaler, check_every=check_every)  # type: ignore[arg-type]


class _Installation:
    def __init__(self, max_norm: float | None, check_every: int) -> None:
        self.max_norm = max_norm
        self.check_every = check_every
        # Kept to the end, for the last check: a guard lets go of the parameters when its
        # optimizer goes, and keeps only its verdicts (a step left unclipped, device counters).
        self.guards: list[Guard] = []
        self.steps = 0
        self.handle = register_optimizer_step_pre_hook(self._attach)

    @eager
    def _attach(self, optimizer: torch.optim.Optimizer, args: object, kwargs: object) -> None:
        self.steps += 1
        if interception.guard_of(optimizer) is None:
            # Its hooks start now: this first step's backward was not seen, so it is not checked.
            self.guards.append(Guard(optimizer, self.max_norm, check_every=self.check_every,
                                     attached_mid_step=True))

    def close(self, check: bool) -> int:
        """Close every guard it started; the number of optimizer steps seen."""
        self.handle.remove()
        failures: list[GradientOrderError] = []
        for g in self.guards:
            try:
                g.close(check=check)
            except GradientOrderError as error:
                failures.append(error)
        if failures:
            raise failures[0]
        return self.steps


_installation: _Installation | None = None


def install(max_norm: float | None = None, check_every: int = 100) -> None:
    """Guard every optimizer of this process from its first ``step()`` on (that first step
    itself is not checked: its backward ran before the guard existed)."""
    global _installation
    if _installation is not None:
        raise RuntimeError("clipcheck.runtime.install() is already active")
    _installation = _Installation(max_norm, check_every)


def uninstall(check: bool = True) -> int:
    """Stop the global mode, closing (and, with ``check``, checking) its guards. Returns how
    many optimizer steps it saw (0: nothing was checked)."""
    global _installation
    installation, _installation = _installation, None
    if installation is None:
        return 0
    return installation.close(check)
