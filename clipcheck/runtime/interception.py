"""Seeing zero-grad, clip and GradScaler calls, wherever they come from.

Patches are made once, at class or module level (so models, optimizers and scalers stay
picklable), and dispatch through weak registries to the guards that own the objects involved.
Clipping is intercepted at ``torch.nn.utils.clip_grad._clip_grads_with_norm_``, which
``clip_grad_norm_`` looks up at call time: callers that imported ``clip_grad_norm_`` before the
guard existed (Lightning, accelerate, the HF Trainer) are seen too.
"""

from __future__ import annotations

import functools
import math
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from clipcheck.runtime.location import user_location

if TYPE_CHECKING:
    from clipcheck.runtime.guard import Guard

_optimizers: weakref.WeakKeyDictionary[torch.optim.Optimizer, Guard] = weakref.WeakKeyDictionary()
_undo: list[Callable[[], None]] = []
# The same guards, weakly, for iterating on the hot path (a list of references iterates much
# faster than a WeakSet or a WeakKeyDictionary's values).
_guards: list[weakref.ref[Guard]] = []


def register(guard: Guard, optimizer: torch.optim.Optimizer) -> None:
    if optimizer in _optimizers:
        raise ValueError("this optimizer already has a clipcheck guard")
    _optimizers[optimizer] = guard  # first: a finalizer running meanwhile must see it
    _guards.append(weakref.ref(guard))
    if not _undo:
        _patch_all()
    weakref.finalize(optimizer, _release)  # a guard never closed goes with its optimizer


def unregister(guard: Guard) -> None:
    optimizer = guard.optimizer
    if optimizer is not None and _optimizers.get(optimizer) is guard:
        del _optimizers[optimizer]
    _guards[:] = [r for r in _guards if r() is not None and r() is not guard]
    _release()


def _release() -> None:
    """Once no optimizer is guarded any more, put back what was patched (an optimizer being
    collected right now already counts as gone)."""
    _guards[:] = [r for r in _guards if r() is not None]
    if not any(ref() is not None for ref in _optimizers.keyrefs()):
        while _undo:
            _undo.pop()()


def guard_of(optimizer: object) -> Guard | None:
    return _optimizers.get(optimizer)  # type: ignore[call-overload]


def guards_of(ids: set[int]) -> list[Guard]:
    """The guards owning any of the parameters whose ids are given (set operations in C: a
    clip or a zero-grad of many tensors costs little per tensor)."""
    return [g for g in map(weakref.ref.__call__, _guards) if g is not None and not g.owns_none_of(ids)]


def _replace(owner: Any, name: str, make: Callable[[Any], Any]) -> None:
    """Patch ``owner.name``; undoing it restores the original only while the patch is still
    ours (a library that patched it later keeps its own)."""
    original = owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)
    patched = make(original)
    setattr(owner, name, patched)

    def undo() -> None:
        current = owner.__dict__.get(name) if isinstance(owner, type) else getattr(owner, name, None)
        if current is patched:
            setattr(owner, name, original)

    _undo.append(undo)


def _as_list(parameters: Any) -> list[torch.Tensor]:
    if isinstance(parameters, torch.Tensor):
        return [parameters]
    return list(parameters)


def _patch_all() -> None:
    _replace(torch.optim.Optimizer, "zero_grad", _optimizer_zero_grad)
    _replace(torch.nn.Module, "zero_grad", _module_zero_grad)
    clip_grad = torch.nn.utils.clip_grad
    with_norm = clip_grad._clip_grads_with_norm_
    _replace(clip_grad, "_clip_grads_with_norm_", _clip_with_norm)
    if torch.nn.utils.clip_grads_with_norm_ is with_norm:
        _replace(torch.nn.utils, "clip_grads_with_norm_", lambda _: clip_grad._clip_grads_with_norm_)
    by_value = clip_grad.clip_grad_value_
    _replace(clip_grad, "clip_grad_value_", _clip_value)
    if torch.nn.utils.clip_grad_value_ is by_value:
        _replace(torch.nn.utils, "clip_grad_value_", lambda _: clip_grad.clip_grad_value_)
    scaler = torch.amp.GradScaler
    _replace(scaler, "unscale_", _scaler_unscale)
    _replace(scaler, "step", _scaler_step)
    _replace(scaler, "update", _scaler_update)
    fsdp = _fsdp1_class()
    if fsdp is not None:
        _replace(fsdp, "clip_grad_norm_", _fsdp_clip)


def _fsdp1_class() -> type | None:
    if not torch.distributed.is_available():
        return None
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel
    except ImportError:
        return None
    return FullyShardedDataParallel


def _zeroing(guards: list[Guard], run: Callable[[], None]) -> None:
    """Tell ``guards`` about a zero-grad around ``run``, the zero-grad itself."""
    location = user_location() if guards else None
    for guard in guards:
        guard.before_zero(location)
    run()
    for guard in guards:
        guard.after_zero()


def _optimizer_zero_grad(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    @torch.compiler.disable
    def zero_grad(self: torch.optim.Optimizer, set_to_none: bool = True) -> None:
        guard = _optimizers.get(self)
        _zeroing([guard] if guard is not None else [], lambda: original(self, set_to_none))

    return zero_grad


def _module_zero_grad(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    @torch.compiler.disable
    def zero_grad(self: torch.nn.Module, set_to_none: bool = True) -> None:
        guards = guards_of(set(map(id, self.parameters()))) if _guards else []
        _zeroing(guards, lambda: original(self, set_to_none))

    return zero_grad


def _clipping(params: list[torch.Tensor], max_norm: float | None, run: Callable[[], Any]) -> Any:
    """Tell the guards owning ``params`` about a clip around ``run``, the clip itself."""
    ids = set(map(id, params))
    guards = guards_of(ids)
    location = user_location() if guards else None
    for guard in guards:
        guard.before_clip(ids, max_norm, location)
    result = run()
    for guard in guards:
        guard.after_clip(max_norm)
    return result


def _clip_with_norm(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def clip(parameters: Any, max_norm: float, total_norm: torch.Tensor, foreach: bool | None = None) -> None:
        params = _as_list(parameters)
        if math.isinf(max_norm):  # ``clip_grad_norm_(ps, inf)`` only measures the norm
            original(params, max_norm, total_norm, foreach)
            return
        _clipping(params, float(max_norm), lambda: original(params, max_norm, total_norm, foreach))

    return clip


def _clip_value(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def clip_grad_value_(parameters: Any, clip_value: float, foreach: bool | None = None) -> None:
        params = _as_list(parameters)
        _clipping(params, None, lambda: original(params, clip_value, foreach))

    return clip_grad_value_


def _fsdp_clip(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def clip_grad_norm_(self: torch.nn.Module, max_norm: float, *args: Any, **kwargs: Any) -> Any:
        return _clipping(list(self.parameters()), float(max_norm),
                         lambda: original(self, max_norm, *args, **kwargs))

    return clip_grad_norm_


def _scaler_unscale(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def unscale_(self: torch.amp.GradScaler, optimizer: torch.optim.Optimizer) -> None:
        guard = _optimizers.get(optimizer)
        if guard is not None and self.is_enabled() and not guard.inside_scaler_step:
            guard.before_unscale(self, user_location())
        original(self, optimizer)

    return unscale_


def _scaler_step(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def step(self: torch.amp.GradScaler, optimizer: torch.optim.Optimizer, *args: Any, **kwargs: Any) -> Any:
        guard = _optimizers.get(optimizer)
        if guard is None or not self.is_enabled():  # a disabled scaler just calls step()
            return original(self, optimizer, *args, **kwargs)
        with guard.scaler_step(self, user_location()):
            return original(self, optimizer, *args, **kwargs)

    return step


def _scaler_update(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def update(self: torch.amp.GradScaler, new_scale: Any = None) -> None:
        original(self, new_scale)
        for guard in list(_optimizers.values()):
            if guard.scaler is self:
                guard.after_scaler_update()

    return update
