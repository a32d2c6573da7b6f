"""PyTorch's own training vocabulary, as data: what clips, what runs backward, which classes
are optimizers, schedulers and scalers.

The recognizer reads these rows; teaching clipcheck more of torch means adding rows here.
"""

from __future__ import annotations

from typing import NamedTuple

import libcst as cst

from clipcheck.static.frameworks.naming import is_optimizer_class, is_scaler_class, is_scheduler_class


class Threshold(NamedTuple):
    """Where a clipping call takes its threshold: keyword name and positional index."""

    keyword: str
    position: int


# Functions that clip gradients, by qualified name -> where their threshold is passed.
CLIP_FUNCTIONS: dict[str, Threshold] = {
    f"{module}.{function}": Threshold(keyword, 1)
    for module in ("torch.nn.utils", "torch.nn.utils.clip_grad")
    for function, keyword in (
        ("clip_grad_norm_", "max_norm"),
        ("clip_grad_norm", "max_norm"),
        ("clip_grad_value_", "clip_value"),
        ("clip_grads_with_norm_", "max_norm"),
    )
}

def argument(call: cst.Call, threshold: Threshold) -> cst.BaseExpression | None:
    """The expression a call passes where ``threshold`` says it is taken."""
    positional = [a for a in call.args if a.keyword is None and not a.star]
    for arg in call.args:
        if arg.keyword is not None and arg.keyword.value == threshold.keyword:
            return arg.value
    if 0 <= threshold.position < len(positional):
        return positional[threshold.position].value
    return None


# Functions that run a backward pass, by qualified name.
BACKWARD_FUNCTIONS = frozenset({"torch.autograd.backward"})
# ... and those whose gradients stay in a distributed autograd context (one per iteration,
# read by ``DistributedOptimizer.step(context_id)``), never in ``.grad``.
CONTEXT_BACKWARD_FUNCTIONS = frozenset({"torch.distributed.autograd.backward"})

# Methods that run a backward pass on whatever they are called on (a loss, an
# ``accelerator``, a DeepSpeed engine, a LightningModule under manual optimization).
BACKWARD_METHODS = frozenset({"backward", "manual_backward"})

# Framework methods that clip, by method name -> threshold when the first argument is the
# parameters (accelerate, Fabric) ...
CLIP_METHODS_WITH_PARAMETERS: dict[str, Threshold] = {
    "clip_grad_norm_": Threshold("max_norm", 1),
    "clip_grad_value_": Threshold("clip_value", 1),
}
# ... and when the receiver owns the parameters (FSDP1's ``model.clip_grad_norm_(1.0)``).
CLIP_METHODS_ON_MODULE: dict[str, Threshold] = {
    "clip_grad_norm_": Threshold("max_norm", 0),
}
# In-place tensor methods that, called on ``p.grad`` (or ``p.grad.data``), clip it by hand.
HAND_CLIP_METHODS = frozenset({"clamp_", "clip_", "mul_"})
# ... that zero it.
HAND_ZERO_METHODS = frozenset({"zero_"})
# ... and that overwrite it with values of their own.
HAND_WRITE_METHODS = frozenset({"fill_", "copy_"})

# Methods and functions that return a parameter generator (exhausted after one pass).
PARAMETER_GENERATOR_METHODS = frozenset({"parameters", "named_parameters"})
PARAMETER_GENERATOR_FUNCTIONS = frozenset(
    {"filter", "map", "itertools.chain", "itertools.chain.from_iterable", "itertools.islice"}
)
# Calls known to leave gradients alone, whatever they are passed: builtins that build or read
# collections, and the constructors of optimizers and schedulers (by class, see below).
_GRADIENT_NEUTRAL_CALLS = frozenset({
    "list", "tuple", "set", "dict", "sum", "len", "zip", "enumerate", "iter", "next", "sorted",
    "reversed", "filter", "map", "any", "all", "min", "max", "id", "type", "isinstance", "print",
    "repr", "str", "callable", "hasattr", "getattr", "itertools.chain", "itertools.chain.from_iterable",
    "itertools.islice",
})


def leaves_gradients(qualified: str | None) -> bool:
    """Whether a call, by its (qualified) name, is known not to touch any ``.grad``."""
    if qualified is None:
        return False
    return (qualified in _GRADIENT_NEUTRAL_CALLS or is_optimizer_class(qualified)
            or is_scheduler_class(qualified) or is_scaler_class(qualified))


# Builtins that look at an object without iterating it.
NON_CONSUMING_CALLS = frozenset({"id", "type", "isinstance", "print", "repr", "str", "callable"})

