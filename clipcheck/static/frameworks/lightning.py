"""Lightning and Fabric: trainer thresholds, LightningModule hooks, ``clip_gradients``, and the
steps Lightning runs itself under automatic optimization."""

from __future__ import annotations

from typing import TYPE_CHECKING

import libcst as cst

from clipcheck.static.events import Event, EventKind, Origin
from clipcheck.static.frameworks import Framework, register
from clipcheck.static.frameworks.torch import Threshold, argument
from clipcheck.static.syntax import returns as _returns
from clipcheck.static.syntax import statements

if TYPE_CHECKING:
    from clipcheck.static.bindings import Binding, ClassInfo
    from clipcheck.static.recognizer import Item, Recognizer

# Lightning's ``self.clip_gradients(optimizer, gradient_clip_val=...)`` and Fabric's
# ``fabric.clip_gradients(model, optimizer, max_norm=...)``: the optimizer is an argument.
CLIP_GRADIENTS_METHOD = "clip_gradients"
CLIP_GRADIENTS_THRESHOLDS = (
    Threshold("gradient_clip_val", 1),
    Threshold("max_norm", -1),
    Threshold("clip_val", -1),
)

# Keyword arguments of trainer constructors that set a clipping threshold.
TRAINER_CLIP_KEYWORDS = frozenset({"gradient_clip_val"})
TRAINER_CLASSES = frozenset(
    {
        "lightning.Trainer",
        "lightning.pytorch.Trainer",
        "pytorch_lightning.Trainer",
        "lightning.pytorch.trainer.Trainer",
        "pytorch_lightning.trainer.Trainer",
    }
)

LIGHTNING_MODULE_CLASSES = frozenset(
    {
        "lightning.LightningModule",
        "lightning.pytorch.LightningModule",
        "lightning.pytorch.core.LightningModule",
        "lightning.pytorch.core.module.LightningModule",
        "pytorch_lightning.LightningModule",
        "pytorch_lightning.core.LightningModule",
        "pytorch_lightning.core.module.LightningModule",
        "pytorch_lightning.core.lightning.LightningModule",
    }
)
# The LightningModule method after whose return Lightning runs backward and step itself.
LIGHTNING_AUTOMATIC_STEP_METHOD = "training_step"
# The switch between automatic and manual optimization: an attribute or a property.
AUTOMATIC_OPTIMIZATION = "automatic_optimization"
# Methods a trainer calls once per batch, in any class (Fabric-style trainers too)...
PER_BATCH_METHODS = frozenset({"training_step", "train_step"})
# ... and the per-batch hooks of LightningModules and Callbacks (``on_train_batch_end``...).
PER_BATCH_HOOKS = frozenset({
    "on_before_backward", "on_after_backward", "on_before_optimizer_step", "on_before_zero_grad",
    "optimizer_step", "optimizer_zero_grad", "configure_gradient_clipping", "backward",
})
BACKWARD_HOOK = "backward"
# The method by which a module builds its own optimizer (Lightning's hook, minGPT's and
# nanoGPT's convention).
CONFIGURE_OPTIMIZERS = "configure_optimizers"
# Calls a LightningModule makes to fetch its optimizers.
OPTIMIZER_GETTERS = frozenset({"optimizers", "optimizer"})



@register
class Lightning(Framework):
    """``Trainer(gradient_clip_val=...)``, and ``clip_gradients`` of a LightningModule or of
    Fabric."""

    def function(self, recognizer: Recognizer, call: cst.Call, qualified: str) -> list[Item] | None:
        if qualified not in TRAINER_CLASSES:
            return None
        for arg in call.args:
            if arg.keyword is not None and arg.keyword.value in TRAINER_CLIP_KEYWORDS:
                return [recognizer.event(EventKind.CLIP_CONFIG, call, call.func, threshold=arg.value,
                                         threshold_name=arg.keyword.value)]
        return []

    def method(self, recognizer: Recognizer, call: cst.Call, receiver: cst.BaseExpression,
               method: str, positional: list[cst.BaseExpression]) -> list[Item] | None:
        from clipcheck.static.bindings import Kind

        if method != CLIP_GRADIENTS_METHOD:
            return None
        optimizer = next((a for a in positional if recognizer.kind(a) is Kind.OPTIMIZER), None)
        # Lightning's ``self.clip_gradients(opt, 0.5)`` may pass the threshold by position;
        # Fabric's ``fabric.clip_gradients(model, opt, max_norm=...)`` only by keyword.
        by_position = isinstance(receiver, cst.Name) and receiver.value == "self"
        threshold = None
        for candidate in CLIP_GRADIENTS_THRESHOLDS:
            candidate = candidate if by_position else candidate._replace(position=-1)
            if argument(call, candidate) is not None:
                threshold = candidate
                break
        return recognizer.clip(call, threshold, **recognizer.about(optimizer))


def automatic_optimization_events(
    function: cst.FunctionDef | None, cls: ClassInfo | None
) -> tuple[list[Event], list[Event]]:
    """The events Lightning runs around ``training_step`` under automatic optimization: it
    zeroes before the method and runs backward and step after it returns."""
    if (function is None or cls is None or not cls.is_lightning or cls.manual_optimization
            or function.name.value != LIGHTNING_AUTOMATIC_STEP_METHOD):
        return [], []

    def implied(kind: EventKind, label: str) -> Event:
        return Event(kind, function, label, origin=Origin.LIGHTNING)

    return (
        [implied(EventKind.ZERO_GRAD, "optimizer.zero_grad()")],
        [implied(EventKind.BACKWARD, "loss.backward()"), implied(EventKind.STEP, "optimizer.step()")],
    )


def runs_per_batch(name: str, in_class: bool, lightning: bool = False) -> bool:
    """Whether a function of this name is one iteration of a training loop it does not show
    (``backward`` only as a LightningModule's hook: elsewhere it is a class's own backward)."""
    if name in PER_BATCH_METHODS:
        return True
    if name == BACKWARD_HOOK and not lightning:
        return False
    return in_class and (name in PER_BATCH_HOOKS or (
        name.startswith("on_") and name.endswith(("_batch_start", "_batch_end")) and "train" in name))


def declares_manual_optimization(attribute: Binding | None, method: cst.FunctionDef | None) -> bool:
    """``self.automatic_optimization = False``, or a property override that returns ``False``."""
    if attribute is not None and any(_is_false(v) for v in attribute.values):
        return True
    if method is None or not any(
        isinstance(d.decorator, cst.Name) and d.decorator.value == "property" for d in method.decorators
    ):
        return False
    returns = [r for r in _returns(statements(method.body)) if r.value is not None]
    return bool(returns) and all(_is_false(r.value) for r in returns)  # type: ignore[arg-type]


def _is_false(value: cst.BaseExpression) -> bool:
    return isinstance(value, cst.Name) and value.value == "False"
