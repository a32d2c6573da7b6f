"""The rules, one family per file; each reads facts only. Their pages live in
``rules/<name>.md`` at the top of the repository (shipped as ``clipcheck/docs``)."""

from __future__ import annotations

from clipcheck.static.rules.base import RawFinding, Rule
from clipcheck.static.rules.ordering import (
    ClipAfterStep,
    ClipBeforeBackward,
    ClipInsideAccumulation,
    ForeignGradients,
    MissingZeroGrad,
    StepBeforeBackward,
    ZeroGradBeforeStep,
)
from clipcheck.static.rules.scaler import (
    ClipScaledGradients,
    MissingScalerUpdate,
    StepBypassesScaler,
    UnscaleTwice,
)
from clipcheck.static.rules.sharded import ClipBypassesDeepspeed, FsdpNeedsModuleClip, NoSyncMissesForward
from clipcheck.static.rules.values import ExhaustedParameters, NonPositiveMaxNorm

RULES: tuple[Rule, ...] = (
    ClipBeforeBackward(),
    ClipAfterStep(),
    StepBeforeBackward(),
    ZeroGradBeforeStep(),
    MissingZeroGrad(),
    ClipInsideAccumulation(),
    ForeignGradients(),
    ClipScaledGradients(),
    StepBypassesScaler(),
    UnscaleTwice(),
    MissingScalerUpdate(),
    NonPositiveMaxNorm(),
    ExhaustedParameters(),
    FsdpNeedsModuleClip(),
    ClipBypassesDeepspeed(),
    NoSyncMissesForward(),
)

__all__ = ["RULES", "RawFinding", "Rule"]
