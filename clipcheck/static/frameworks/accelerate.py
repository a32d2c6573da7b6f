"""Hugging Face accelerate: the ``Accelerator``'s backward and clips, and the micro-batches on
which a prepared optimizer really steps.

A prepared optimizer (``AcceleratedOptimizer``) steps and zeroes only while
``accelerator.sync_gradients`` is true; inside ``with accelerator.accumulate(model):`` that is
the last micro-batch of each window. ``accelerator.clip_grad_norm_`` unscales first;
``accelerator.backward`` scales the loss under fp16 mixed precision, which the script must
show at the ``Accelerator`` for a plain clip to be known wrong (the same script also runs in
bf16 or fp32, where a plain clip is right).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import libcst as cst

from clipcheck.static.events import Amp, EventKind
from clipcheck.static.frameworks import Context, Framework, register
from clipcheck.static.frameworks.torch import CLIP_METHODS_WITH_PARAMETERS

if TYPE_CHECKING:
    from clipcheck.static.bindings import Kind
    from clipcheck.static.recognizer import Item, Recognizer

# ``accelerator.sync_gradients`` (and ``GradientState.sync_gradients``): true only on the
# micro-batch that ends an accumulation window, where prepared optimizers step and zero.
SYNC_FLAGS = frozenset({"sync_gradients"})

# ``accelerator.prepare(model, optimizer, loader, scheduler)`` returns its arguments, wrapped,
# in the same order: each position keeps its kind.
PREPARE_METHODS = frozenset({"prepare"})

ACCELERATOR_CLASSES = frozenset({"accelerate.Accelerator", "accelerate.accelerator.Accelerator"})
ACCUMULATE_METHOD = "accumulate"
UNSCALE_METHOD = "unscale_gradients"
FP16 = "fp16"


def _fp16(recognizer: Recognizer, accelerator: cst.BaseExpression) -> bool:
    """The accelerator is visibly built with ``mixed_precision="fp16"``."""
    _, binding = recognizer.binding(accelerator)
    return binding is not None and any(
        isinstance(v, cst.Call) and any(
            a.keyword is not None and a.keyword.value == "mixed_precision"
            and isinstance(a.value, cst.SimpleString) and a.value.evaluated_value == FP16
            for a in v.args)
        for v in binding.values)


@register
class Accelerate(Framework):
    def constructed(self, qualified: str, call: cst.Call) -> Kind | None:
        from clipcheck.static.bindings import Kind

        return Kind.ACCELERATOR if qualified in ACCELERATOR_CLASSES else None

    def method(self, recognizer: Recognizer, call: cst.Call, receiver: cst.BaseExpression,
               method: str, positional: list[cst.BaseExpression]) -> list[Item] | None:
        from clipcheck.static.bindings import Kind

        if recognizer.kind(receiver) is not Kind.ACCELERATOR:
            return None
        if method == "backward" and _fp16(recognizer, receiver):
            return [recognizer.backward(call, call.func, *positional[:1], amp=Amp.FRAMEWORK)]
        if method == UNSCALE_METHOD:  # every prepared optimizer's, or the one it is handed
            handed = positional[:1] or [a.value for a in call.args if a.keyword is not None
                                        and a.keyword.value == "optimizer"]
            about = recognizer.about(handed[0]) if handed else {}
            return [recognizer.event(EventKind.UNSCALE, call, call.func, amp=Amp.FRAMEWORK, **about)]
        threshold = CLIP_METHODS_WITH_PARAMETERS.get(method)
        if threshold is not None and (positional or call.args):
            params = positional[0] if positional else None
            return recognizer.clip(call, threshold, amp=Amp.FRAMEWORK, **recognizer.clipped(params))
        return None

    def context(self, recognizer: Recognizer, expr: cst.BaseExpression,
                body: Sequence[cst.BaseStatement]) -> Context | None:
        from clipcheck.static.bindings import Kind

        if not (isinstance(expr, cst.Call) and isinstance(expr.func, cst.Attribute)
                and expr.func.attr.value == ACCUMULATE_METHOD
                and recognizer.kind(expr.func.value) is Kind.ACCELERATOR):
            return None
        key = recognizer.key(expr.func.value)
        return Context(sync_flag=f"{key}.{next(iter(SYNC_FLAGS))}") if key else None
