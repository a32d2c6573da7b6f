"""The guard's code runs eagerly under ``torch.compile``, and costs nothing extra without it.

A function dynamo may trace (an interception a compiled training step calls) starts with
``if tracing(): return untraced(...)``, ``untraced`` being its ``torch.compiler.disable``
version: while dynamo traces the call, ``tracing()`` is folded to true, so the call becomes a
graph break and the function runs eagerly, with compilation off for everything it calls.
Otherwise ``tracing()`` is one call that returns false, far cheaper than the disable wrapper
(a few microseconds per call). ``eager`` does this for functions off the per-step path; the
per-step ones write the two lines themselves, which saves a wrapper's frame per call.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import torch

F = TypeVar("F", bound=Callable[..., Any])

# One call that returns False (``is_compiling`` makes two); dynamo folds it to True.
tracing: Callable[[], bool] = getattr(torch.compiler, "is_dynamo_compiling", torch.compiler.is_compiling)


def eager(fn: F) -> F:
    """``fn``, hidden from dynamo (see above)."""
    untraced = torch.compiler.disable(fn)

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        if tracing():
            return untraced(*args, **kwargs)
        return fn(*args, **kwargs)

    return call  # type: ignore[return-value]
