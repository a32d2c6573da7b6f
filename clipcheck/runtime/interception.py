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
import sys
import weakref
from collections.abc import Callable
from types import CodeType
from typing import TYPE_CHECKING, Any

import torch

from clipcheck.runtime.eager import eager, tracing
from clipcheck.runtime.location import user_location

if TYPE_CHECKING:
    from clipcheck.runtime.guard import Guard

# Guards by the id of their optimizer. A guard holds its optimizer weakly, and a finalizer
# drops the entry when the optimizer goes (before its id can be reused), so this plain dict
# keeps nothing alive and is cheaper on the hot path than a WeakKeyDictionary.
_guards: dict[int, Guard] = {}
_undo: list[Callable[[], None]] = []


def register(guard: Guard, optimizer: torch.optim.Optimizer) -> None:
    if guard_of(optimizer) is not None:
        raise ValueError("this optimizer already has a clipcheck guard")
    _guards[id(optimizer)] = guard  # first: a finalizer running meanwhile must see it
    if not _undo:
        _patch_all()
    # A guard never closed goes with its optimizer.
    weakref.finalize(optimizer, _forget, id(optimizer), weakref.ref(guard))


def unregister(guard: Guard) -> None:
    for key, registered in list(_guards.items()):
        if registered is guard:
            del _guards[key]
    _release()


def _forget(key: int, guard_ref: weakref.ref[Guard]) -> None:
    """The optimizer is gone: its guard lets go of the parameters (see ``Guard.release``)."""
    guard = guard_ref()
    if guard is not None:
        guard.release()
        if _guards.get(key) is guard:
            del _guards[key]
    _release()


def _release() -> None:
    """Once no optimizer is guarded any more, put back what was patched."""
    if not _guards:
        while _undo:
            _undo.pop()()


def guard_of(optimizer: object) -> Guard | None:
    guard = _guards.get(id(optimizer))
    return guard if guard is not None and guard.optimizer_ref() is optimizer else None


def several_guarded() -> bool:
    """More than one optimizer is guarded (gradients can be foreign to one of them)."""
    return len(_guards) > 1


def open_guards() -> list[Guard]:
    """Every guard not closed whose optimizer is alive; a copy: a finalizer run by the garbage
    collector may drop a guard from the registry meanwhile."""
    return list(_guards.values())


def guards_of(ids: set[int], settle: bool = True) -> list[Guard]:
    """The guards owning any of the parameters whose ids are given (set operations in C: a
    clip or a zero-grad of many tensors costs little per tensor). ``settle``: see
    :meth:`Guard.sync_params`."""
    owners = []
    # A copy (see open_guards); a loop, not a comprehension: no frame of its own on 3.11.
    for guard in list(_guards.values()):
        if guard.needs_sync:
            guard.sync_params(settle)  # a parameter unfrozen since the last step is this guard's too
        if not guard.param_ids.isdisjoint(ids):
            owners.append(guard)
    return owners


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


def _patch_all() -> None:
    _replace(torch.optim.Optimizer, "zero_grad", lambda f: _zero_grad(f, _optimizer_guards))
    _replace(torch.nn.Module, "zero_grad", lambda f: _zero_grad(f, _module_guards))
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
    accelerator = getattr(sys.modules.get("accelerate.accelerator"), "Accelerator", None)
    if isinstance(accelerator, type) and "clip_grad_norm_" in accelerator.__dict__:
        _replace(accelerator, "clip_grad_norm_", _accelerate_clip)


def _fsdp1_class() -> type | None:
    if not torch.distributed.is_available():
        return None
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel
    except ImportError:
        return None
    return FullyShardedDataParallel


def _torch_disable_code() -> CodeType | None:
    """The code of the wrapper torch puts around its own functions hidden from dynamo
    (``torch._compile._disable_dynamo``), if this torch has it."""
    try:
        from torch._compile import _disable_dynamo
        wrapper = _disable_dynamo(lambda: None)
    except (ImportError, AttributeError, TypeError):
        return None
    return getattr(wrapper, "__code__", None) if hasattr(wrapper, "__wrapped__") else None


_TORCH_DISABLE_CODE = _torch_disable_code()


def _zero_grad(original: Callable[..., Any], owners: Callable[[Any], list[Guard]]) -> Callable[..., Any]:
    """``zero_grad``, told to the guards ``owners`` finds for the object zeroed."""
    # torch's own ``Optimizer.zero_grad`` is hidden from dynamo: this wrapper is too (its
    # ``untraced`` twin), so inside it the function torch wraps does the same work without the
    # cost of torch's wrapper (about ten calls).
    run = original
    if _TORCH_DISABLE_CODE is not None and getattr(original, "__code__", None) is _TORCH_DISABLE_CODE:
        run = original.__wrapped__  # type: ignore[attr-defined]

    @functools.wraps(original, updated=())  # not torch's dynamo attributes: this one has its own
    def zero_grad(self: Any, set_to_none: bool = True) -> None:
        if tracing():  # a compiled training step: run eagerly (see eager.py)
            untraced(self, set_to_none)
            return
        if _guards:
            for guard in owners(self):
                guard.zeroing()
        run(self, set_to_none)

    untraced = torch.compiler.disable(zero_grad)
    return zero_grad


def wrapped_optimizer(optimizer: object) -> torch.optim.Optimizer | None:
    """The torch optimizer behind a framework's wrapper (accelerate's ``AcceleratedOptimizer``,
    Lightning's ``LightningOptimizer``, any object exposing the one it wraps as ``.optimizer``
    or ``._optimizer``), the optimizer itself, or ``None``."""
    seen = optimizer
    for _ in range(8):  # accelerate's wrapper is an Optimizer subclass that never set up hooks
        inner = next((getattr(seen, a) for a in ("optimizer", "_optimizer")
                      if getattr(seen, a, None) is not None), None)
        if inner is None:
            return seen if isinstance(seen, torch.optim.Optimizer) else None
        seen = inner
    return None


def _optimizer_guards(optimizer: torch.optim.Optimizer) -> list[Guard]:
    # A wrapper that inherits ``zero_grad`` from torch (Lightning's ``LightningOptimizer``
    # subclasses the class of the optimizer it wraps) zeroes the wrapped optimizer.
    guard = guard_of(optimizer) or guard_of(wrapped_optimizer(optimizer))
    return [guard] if guard is not None else []


def _module_guards(module: torch.nn.Module) -> list[Guard]:
    # A zero-grad may come before this step's unfreezing: the clip and the step sync again.
    return guards_of(set(map(id, module.parameters())), settle=False)


def _clipping(parameters: Any, max_norm: float | None, clip: Callable[..., Any], *args: Any) -> Any:
    """Tell the guards owning ``parameters`` (a tensor or an iterable of them) about the clip
    ``clip(params, *args)`` around it, ``params`` being them as a list."""
    params = [parameters] if isinstance(parameters, torch.Tensor) else list(parameters)
    ids = set(map(id, params))
    guards = guards_of(ids)
    if not guards:
        return clip(params, *args)
    # The walk to the user's line starts at the caller of the clip function that called this.
    location = user_location(sys._getframe(2))
    for guard in guards:
        guard.before_clip(ids, max_norm, location)
    result = clip(params, *args)
    for guard in guards:
        guard.after_clip(max_norm)
    return result


def _clip_with_norm(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def clip(parameters: Any, max_norm: float, total_norm: torch.Tensor, foreach: bool | None = None) -> None:
        if tracing():  # a compiled training step: run eagerly (see eager.py)
            untraced(parameters, max_norm, total_norm, foreach)
            return
        if math.isinf(max_norm):  # ``clip_grad_norm_(ps, inf)`` only measures the norm
            original(parameters, max_norm, total_norm, foreach)
            return
        _clipping(parameters, float(max_norm), original, max_norm, total_norm, foreach)

    untraced = torch.compiler.disable(clip)
    return clip


def _clip_value(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    @eager  # a compiled training step calls it eagerly
    def clip_grad_value_(parameters: Any, clip_value: float, foreach: bool | None = None) -> None:
        _clipping(parameters, None, original, clip_value, foreach)

    return clip_grad_value_


def _fsdp_clip(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    @eager  # a compiled training step calls it eagerly
    def clip_grad_norm_(self: torch.nn.Module, max_norm: float, *args: Any, **kwargs: Any) -> Any:
        def clip(_: list[torch.Tensor], *rest: Any) -> Any:
            return original(self, *rest, **kwargs)

        return _clipping(self.parameters(), float(max_norm), clip, max_norm, *args)

    return clip_grad_norm_


def _accelerate_clip(original: Callable[..., Any]) -> Callable[..., Any]:
    """accelerate's ``Accelerator.clip_grad_norm_`` hands torch only the parameters that have a
    gradient: a clip before the first backward never reaches torch's clip, so it is told to
    the guards here (a clip that does reach torch's is seen there, once)."""
    @functools.wraps(original)
    @eager  # a compiled training step calls it eagerly
    def clip_grad_norm_(self: Any, parameters: Any, max_norm: float, *args: Any, **kwargs: Any) -> Any:
        if not _guards or isinstance(parameters, torch.Tensor):
            return original(self, parameters, max_norm, *args, **kwargs)
        params = list(parameters)  # a generator is read once: accelerate gets the list
        if any(p.grad is not None for p in params) or math.isinf(max_norm):
            return original(self, params, max_norm, *args, **kwargs)
        return _clipping(params, float(max_norm), lambda _: original(self, params, max_norm, *args, **kwargs))

    return clip_grad_norm_


def _scaler_unscale(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    @eager  # a compiled training step calls it eagerly
    def unscale_(self: torch.amp.GradScaler, optimizer: torch.optim.Optimizer) -> None:
        guard = guard_of(optimizer)
        if guard is not None and self.is_enabled() and not guard.inside_scaler_step:
            guard.before_unscale(self, user_location())
        original(self, optimizer)

    return unscale_


def _scaler_step(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    @eager  # a compiled training step calls it eagerly
    def step(self: torch.amp.GradScaler, optimizer: torch.optim.Optimizer, *args: Any, **kwargs: Any) -> Any:
        guard = guard_of(optimizer)
        if guard is None or not self.is_enabled():  # a disabled scaler just calls step()
            return original(self, optimizer, *args, **kwargs)
        return guard.scaler_step(self, functools.partial(original, self, optimizer, *args, **kwargs))

    return step


def _scaler_update(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    @eager  # a compiled training step calls it eagerly
    def update(self: torch.amp.GradScaler, new_scale: Any = None) -> None:
        original(self, new_scale)
        for guard in list(_guards.values()):
            if guard.scaler is self:
                guard.after_scaler_update()

    return update
