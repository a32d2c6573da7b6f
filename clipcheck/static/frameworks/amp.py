"""Mixed precision with a ``GradScaler`` (``torch.amp``, ``torch.cuda.amp``, ``torch.cpu.amp``,
FSDP's ``ShardedGradScaler``): the scaled backward, ``unscale_``, ``scaler.step`` and
``update()``.

A scaler counts as scaling unless it is built with a literal ``enabled=False``; one handed in
as a parameter, stored where the module does not show, or enabled by a flag scales (the code
must be right in the configuration where it does). An object that is visibly something else
(a project's own ``NativeScaler`` wrapper) is not read as a GradScaler.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import libcst as cst

from clipcheck.static.events import Amp, EventKind
from clipcheck.static.frameworks import Framework, register
from clipcheck.static.frameworks.torch import is_scaler_class

if TYPE_CHECKING:
    from clipcheck.static.recognizer import Item, Recognizer

SCALE_METHOD = "scale"
SCALER_METHODS = frozenset({"unscale_", "update", "step"})


def _disabled(call: cst.Call) -> bool:
    """``GradScaler(enabled=False)``."""
    return any(a.keyword is not None and a.keyword.value == "enabled"
               and isinstance(a.value, cst.Name) and a.value.value == "False" for a in call.args)


def scales(recognizer: Recognizer, scaler: cst.BaseExpression) -> bool:
    """Whether ``scaler`` is a GradScaler that scales: some value it may hold is one not built
    with ``enabled=False`` (``GradScaler() if amp else None`` too), or nothing shows what it
    holds."""
    from clipcheck.static.bindings import Kind

    if recognizer.kind(scaler) is not Kind.SCALER:
        return False
    owner, binding = recognizer.binding(scaler)
    if binding is None or not binding.values:
        return True
    found = False
    for value in binding.values:
        for option in (value.body, value.orelse) if isinstance(value, cst.IfExp) else (value,):
            if isinstance(option, cst.Name) and option.value == "None":
                continue
            if isinstance(option, (cst.Name, cst.Attribute)):
                found = True  # ``self.scaler = scaler``: what was handed in, so it scales
                continue
            if not isinstance(option, cst.Call) or not owner.names.is_imported(option.func):
                return False  # something the engine cannot read as a GradScaler
            if not is_scaler_class(owner.names.qualify(option.func) or ""):
                return False
            found = found or not _disabled(option)
    return found


def scaled_loss(recognizer: Recognizer, loss: cst.BaseExpression, depth: int = 0) -> bool:
    """``scaler.scale(loss)``, or a local name bound only to such calls."""
    if isinstance(loss, cst.Call):
        func = loss.func
        return (isinstance(func, cst.Attribute) and func.attr.value == SCALE_METHOD
                and scales(recognizer, func.value))
    if isinstance(loss, cst.Name) and depth < 2:
        binding = recognizer.scope.lookup(loss.value) if loss.value not in recognizer.arguments else None
        values = binding.values if binding is not None else ()
        return bool(values) and all(scaled_loss(recognizer, v, depth + 1) for v in values)
    return False


@register
class GradScalerFramework(Framework):
    def method(self, recognizer: Recognizer, call: cst.Call, receiver: cst.BaseExpression,
               method: str, positional: list[cst.BaseExpression]) -> list[Item] | None:
        if method == "backward" and scaled_loss(recognizer, receiver):
            return [recognizer.backward(call, call.func, receiver, amp=Amp.SCALER)]
        if method not in SCALER_METHODS or not scales(recognizer, receiver):
            return None
        optimizer = positional[0] if positional else None
        if method == "step":
            return recognizer.steps(call, optimizer, positional[1:], amp=Amp.SCALER)
        if method == "update":
            return [recognizer.event(EventKind.SCALER_UPDATE, call, call.func, amp=Amp.SCALER)]
        return [recognizer.event(EventKind.UNSCALE, call, call.func, amp=Amp.SCALER,
                                 **recognizer.about(optimizer))]
