"""The event IR: one thing that changes (or reads) the state of the gradients at one place.

A backward pass, a clip, a step, a zero-grad, and the bookkeeping around them. The recognizer
(:mod:`clipcheck.static.recognizer`) finds them; the CFG orders them; the dataflow reads them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import libcst as cst



class Origin(enum.Enum):
    """Where an event comes from: the source text, or a framework that runs it unseen."""

    SOURCE = "source"
    LIGHTNING = "lightning"  # Lightning's automatic optimization around ``training_step``
    CALLER = "caller"        # the unseen caller of a unit: it steps after it, or zeroes between calls


class Consumer(enum.Enum):
    """What receives a stored parameter generator, when the receiver matters to a rule."""

    NONE = "none"
    CLIP = "clip"
    OPTIMIZER = "optimizer"


class Amp(enum.Enum):
    """How loss scaling (mixed precision) takes part in an event."""

    NONE = "none"
    # A ``GradScaler``: a backward of ``scaler.scale(loss)``, ``scaler.step(optimizer)``,
    # ``scaler.unscale_`` and ``scaler.update()``.
    SCALER = "scaler"
    # A framework that scales and unscales on its own: accelerate's backward under fp16, a
    # prepared optimizer or a DeepSpeed engine that steps through its scaler, a clip that
    # unscales first (``accelerator.clip_grad_norm_``).
    FRAMEWORK = "framework"


class EventKind(enum.Enum):
    CREATE_OPTIMIZER = "create-optimizer"
    NEW_MODULE = "new-module"        # a module built afresh: its parameters hold no gradients
    ZERO_GRAD = "zero-grad"
    GRAD_WRITE = "grad-write"        # ``p.grad`` overwritten by hand: what the step sees now
    UNKNOWN_GRADS = "unknown-grads"  # code the engine cannot see may change the gradients
    BACKWARD = "backward"
    UNSCALE = "unscale"
    CLIP = "clip"
    STEP = "step"
    SCALER_UPDATE = "scaler-update"
    CLIP_CONFIG = "clip-config"
    PARAMS_BIND = "params-bind"
    PARAMS_USE = "params-use"
    # ``with model.no_sync():`` around a backward whose forward pass ran before the block.
    LATE_NO_SYNC = "late-no-sync"
    # Code that changes which parameters receive gradients (``requires_grad_``, Lightning's
    # ``toggle_optimizer``): what a backward reaches is no longer what its loss flows from.
    FREEZE = "freeze"


@dataclass(eq=False)
class Event:
    """One training event at one place in the source.

    ``chain`` holds the helper calls (outermost first) through which the event was reached
    from the unit being analysed; findings point at ``location``, the first of them.
    ``optimizers`` names the optimizers the event is about; when it is ``None``, ``models``
    names the modules whose parameters it touches, and ``None`` there means "all of them".
    ``optimizer_models`` are the modules the named optimizer was built from, when visible.
    """

    kind: EventKind
    node: cst.CSTNode
    label: str
    chain: tuple[cst.CSTNode, ...] = ()
    optimizers: frozenset[str] | None = None
    optimizer_models: frozenset[str] = frozenset()
    models: frozenset[str] | None = None
    threshold: cst.BaseExpression | None = None
    threshold_name: str = ""
    name: str = ""
    generator: bool = False
    consumer: Consumer = Consumer.NONE
    origin: Origin = Origin.SOURCE
    certain: bool = True  # False: code the engine cannot see may do this (a weak update)
    gated: bool = False   # the optimizer skips steps and zero-grads off accumulation boundaries
    amp: Amp = Amp.NONE
    clears: bool = False      # a zero-grad that sets the gradients to ``None`` (the default)
    restricted: bool = False  # a backward limited to ``inputs=``: it reaches nothing else
    # The framework that wraps the module the event is about: ``fsdp1`` for a clip of an FSDP1
    # module's parameters, ``deepspeed`` for an engine's step.
    wrapper: str = ""

    def names_itself(self, key: str) -> bool:
        """Whether the event is about optimizer ``key`` itself (or names none): a GradScaler
        keys its record by that very object, not a wrapper of it or one it holds."""
        return self.optimizers is None or key in self.optimizers

    @property
    def location(self) -> cst.CSTNode:
        return self.chain[0] if self.chain else self.node

    @property
    def identity(self) -> tuple[cst.CSTNode, ...]:
        """The path from the unit down to the event: equal for the same mistake."""
        return (*self.chain, self.node)
