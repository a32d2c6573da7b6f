"""DeepSpeed: ``engine, optimizer, loader, scheduler = deepspeed.initialize(...)``.

The engine's ``backward`` is a backward pass; its ``step`` steps (through the engine's own
loss scaler), zeroes the gradients and skips both off gradient-accumulation boundaries, so an
engine loop needs no ``zero_grad`` of its own. Clipping belongs to the engine too
(``gradient_clipping`` in its config): a clip by hand sees partitioned, possibly still scaled
gradients.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import libcst as cst

from clipcheck.static.events import Amp, EventKind
from clipcheck.static.frameworks import Framework, register
from clipcheck.static.names import dotted

if TYPE_CHECKING:
    from clipcheck.static.bindings import Binding, Bindings, Scope
    from clipcheck.static.recognizer import Item, Recognizer

INITIALIZE_FUNCTIONS = frozenset({"deepspeed.initialize"})
WRAPPER = "deepspeed"


@register
class DeepSpeed(Framework):
    def unpacked(self, qualified: str, call: cst.Call, count: int, bindings: Bindings,
                 scope: Scope | None) -> list[Binding] | None:
        from clipcheck.static.bindings import Binding, Kind

        if qualified not in INITIALIZE_FUNCTIONS or count > 4:
            return None
        # The engine wraps the ``model=`` it was handed; its optimizer updates that model.
        models = bindings.owners(call, scope) | frozenset(
            name for a in call.args if a.keyword is not None and a.keyword.value == "model"
            for name in (dotted(a.value),) if name is not None)
        kinds = (Kind.ENGINE, Kind.OPTIMIZER, Kind.OTHER, Kind.SCHEDULER)
        return [Binding(kind, models, (call,) if kind is Kind.ENGINE else (), constructed=True)
                for kind in kinds[:count]]

    def method(self, recognizer: Recognizer, call: cst.Call, receiver: cst.BaseExpression,
               method: str, positional: list[cst.BaseExpression]) -> list[Item] | None:
        from clipcheck.static.bindings import Kind

        if recognizer.kind(receiver) is not Kind.ENGINE:
            return None
        about = {**recognizer.about(receiver), "gated": True, "wrapper": WRAPPER}
        if method == "step":
            return [recognizer.event(EventKind.STEP, call, call.func, amp=Amp.FRAMEWORK, **about),
                    recognizer.event(EventKind.ZERO_GRAD, call, call.func, **about)]
        if method == "zero_grad":
            return [recognizer.event(EventKind.ZERO_GRAD, call, call.func, **about)]
        return None

