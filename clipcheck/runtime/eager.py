"""The guard's code runs eagerly under ``torch.compile``, and costs nothing extra without it."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import torch

F = TypeVar("F", bound=Callable[..., Any])


def eager(fn: F) -> F:
    """``fn``, hidden from dynamo. When dynamo traces a call to it (a compiled training step),
    ``torch.compiler.is_dynamo_compiling()`` is true there and the call goes to the
    ``torch.compiler.disable`` version: a graph break, then ``fn`` runs eagerly with
    compilation off for everything it calls. Without ``torch.compile``, ``fn`` runs directly,
    without the cost of the disable wrapper (a few microseconds per call)."""
    disabled = torch.compiler.disable(fn)
    # One call that returns False (``is_compiling`` makes two); dynamo folds it to True.
    is_compiling = getattr(torch.compiler, "is_dynamo_compiling", torch.compiler.is_compiling)

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        if is_compiling():
            return disabled(*args, **kwargs)
        return fn(*args, **kwargs)

    return call  # type: ignore[return-value]
