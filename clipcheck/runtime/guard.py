"""The runtime guard: proves, step by step, that an optimizer saw fresh, unscaled, clipped
gradients.

Ordering is integer bookkeeping on the host: every event (a parameter's gradient accumulated,
a zero-grad, a clip, an unscale, a step) stamps a global clock, and each rule is a comparison
of stamps. With several optimizers guarded, a step also marks the gradients it leaves on the
others' parameters: a backward adding onto them before they are zeroed makes them foreign (two
losses in one update). The value check (the total gradient norm, unscaled, is at most
``max_norm``) is enqueued on the gradients' device and only read every ``check_every`` steps,
so a guarded step adds no host-device synchronisation. When an intercepted clip covered every
gradient and nothing touched them since, the value check is skipped altogether.
"""

from __future__ import annotations

import functools
import itertools
import operator
import threading
import weakref
from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from clipcheck.runtime import errors, interception
from clipcheck.runtime.eager import tracing
from clipcheck.runtime.location import user_location

_CLOCK = itertools.count(1)
_grad_of = operator.attrgetter("grad")
_params_of = operator.itemgetter("params")
_requires_grad = operator.attrgetter("requires_grad")
_is_tensor = functools.partial(operator.is_not, None)
_is = operator.is_


def _version(grad: torch.Tensor) -> int:
    """A DTensor's own ``_version`` never moves: its local shard's does."""
    local = getattr(grad, "_local_tensor", None)
    return int((local if local is not None else grad)._version)


# A plain tensor's version, read in C (no Python frame per tensor).
_plain_version: Callable[[torch.Tensor], int] = operator.attrgetter("_version")


class _Snapshot:
    """Each parameter's gradient (weakly) and its version, in parameter order: what a later
    check compares with. Without ``None`` gradients it is built and compared in C (CPython
    hands out one weak reference per tensor, so equal references mean the same tensor; a
    ``None`` gradient cannot be weakly referenced, and takes the slower path)."""

    __slots__ = ("refs", "versions")

    def __init__(self, grads: list[torch.Tensor | None], version: Callable[[torch.Tensor], int]) -> None:
        self.refs: list[weakref.ref[torch.Tensor] | None]
        self.versions: list[int]
        try:
            self.refs = list(map(weakref.ref, grads))  # type: ignore[arg-type]
        except TypeError:
            self.refs = [None if g is None else weakref.ref(g) for g in grads]
            self.versions = [-1 if g is None else version(g) for g in grads]
        else:
            self.versions = list(map(version, grads))  # type: ignore[arg-type]

    def holds(self, grads: list[torch.Tensor | None], version: Callable[[torch.Tensor], int]) -> bool:
        """The very same gradients, untouched since."""
        if len(grads) != len(self.refs):
            return False
        try:
            return (all(map(_is, map(weakref.ref, grads), self.refs))  # type: ignore[arg-type]
                    and list(map(version, grads)) == self.versions)  # type: ignore[arg-type]
        except TypeError:
            return all(r is None if g is None else r is not None and r() is g and version(g) == v
                       for g, r, v in zip(grads, self.refs, self.versions, strict=True))

    def accumulated_once(self, index: int, grad: torch.Tensor | None,
                         version: Callable[[torch.Tensor], int]) -> bool:
        """Parameter ``index``'s gradient is the one snapshotted, with exactly one more
        accumulation in it."""
        ref = self.refs[index] if index < len(self.refs) else None
        return (ref is not None and grad is not None and ref() is grad
                and version(grad) == self.versions[index] + 1)


class _Accumulation(NamedTuple):
    """A backward's accumulation that a step's check may blame: its line, and the parameter's
    gradient it added onto (weakly)."""

    site: str | None
    position: int  # the parameter's, in the guard's list
    grad: weakref.ref[torch.Tensor]

    def stands(self, params: list[torch.Tensor]) -> bool:
        """The parameter still holds that gradient: no zero by hand (``p.grad = None``) since."""
        grad = self.grad()
        return grad is not None and self.position < len(params) and params[self.position].grad is grad


class _Stranded(NamedTuple):
    """Gradients another optimizer's step left on a guard's parameters."""

    by: weakref.ref[Guard]  # the guard of the optimizer that stepped
    at: int  # its step's stamp
    left: _Snapshot  # the gradients it left in place


def _stepped_since_update(scaler: torch.amp.GradScaler, optimizer: torch.optim.Optimizer | None) -> bool:
    """The scaler's own record (private to torch, read defensively): ``scaler.step(optimizer)``
    ran, and ``scaler.update()`` has not run since."""
    states = getattr(scaler, "_per_optimizer_states", None)
    state = states.get(id(optimizer)) if isinstance(states, dict) else None
    stage = state.get("stage") if isinstance(state, dict) else None
    return getattr(stage, "name", None) == "STEPPED"


def torch_optimizer(optimizer: object) -> torch.optim.Optimizer:
    """The torch optimizer ``optimizer`` is or wraps; a ``TypeError`` for anything else."""
    found = interception.wrapped_optimizer(optimizer)
    if found is None:
        raise TypeError(f"clipcheck guards torch optimizers; {type(optimizer).__name__} neither is one "
                        "nor exposes the one it wraps (as .optimizer or ._optimizer)")
    return found


def _tolerance(grads: list[torch.Tensor]) -> float:
    """Clipping overshoots ``max_norm`` by rounding: about one ulp of the lowest precision."""
    eps = max((torch.finfo(g.dtype).eps for g in grads if g.dtype.is_floating_point), default=0.0)
    return max(1e-5, 4 * eps)


class Guard:
    """Checks the order of training events for one optimizer (and optionally its GradScaler),
    and that every step's gradients were clipped to ``max_norm``.

    Use as a context manager, or call :meth:`close` at the end of training. ``max_norm=None``
    checks the order only. ``check_every`` is how many steps pass between reads of the
    device-side violation counter (one host-device sync each); ``1`` checks every step.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        max_norm: float | None = None,
        scaler: torch.amp.GradScaler | None = None,
        check_every: int = 100,
        *,
        attached_mid_step: bool = False,
    ) -> None:
        if max_norm is not None and max_norm <= 0:
            raise ValueError(f"max_norm must be positive, got {max_norm}")
        if check_every < 1:
            raise ValueError(f"check_every must be at least 1, got {check_every}")
        optimizer = torch_optimizer(optimizer)
        # Weak: a guard that is never closed must not keep the optimizer (and its model) alive.
        self.optimizer_ref = weakref.ref(optimizer)
        self.max_norm = max_norm
        self.scaler = scaler if scaler is not None and scaler.is_enabled() else None
        self.check_every = check_every
        # The hooked parameters and their ids; ``needs_sync``: the parameters may have changed
        # since the last ``sync_params()``. The interception reads these to find a clip's or a
        # module zero-grad's guards.
        self.params: list[torch.Tensor] = []
        self.param_ids: set[int] = set()
        self.needs_sync = True
        self._frozen: list[torch.Tensor] = []
        self._group_sizes: list[int] = []
        self._version = _plain_version
        self.steps = 0
        self.inside_scaler_step = False
        self._thread = threading.get_ident()
        self._t_acc = self._t_zero = self._t_clip = self._t_unscale = self._t_step = 0
        # Where the zero-grad, clip and unscale that a later error may blame were called. The
        # zero-grad's is looked up only when it discards a backward's gradients (its walk up the
        # stack would cost every step otherwise); a step's, only when it goes unclipped.
        self._zero_site: str | None = None
        self._clip_site: str | None = None
        self._unscale_site: str | None = None
        self._unscaled = False
        self._stepped = False
        self._skip_check = attached_mid_step
        self._stale_backward: _Accumulation | None = None
        self._unclipped_step: tuple[int, str | None] | None = None
        self._used: _Snapshot | None = None
        self._clipped: _Snapshot | None = None
        self._vouched = False
        # Foreign gradients: a backward left gradients on this optimizer's parameters, another
        # optimizer stepped (``_stranded``), and a backward added onto them before this
        # optimizer was zeroed (``_foreign``: the first backward's line, and the joining one).
        # ``_opening``: the next accumulation notes its backward's line, the first of a new
        # update's (from the first zero-grad or step on, only while another optimizer is
        # guarded: foreign gradients need one, and finding a line walks the stack).
        self._opening = True
        self._first_backward: str | None = None
        self._stranded: _Stranded | None = None
        self._foreign: tuple[str | None, _Accumulation] | None = None
        # The accumulation hook has more to do than stamp the clock (see ``_rewatch``).
        self._watching = True
        self._in_closure = False  # a step's closure is running (Lightning, LBFGS)
        self._violations: torch.Tensor | None = None
        self._first_violation: torch.Tensor | None = None
        self._worst_ratio: torch.Tensor | None = None
        self._handles: list[Any] = [optimizer.register_step_pre_hook(self._pre_step)]
        self._closed = False
        interception.register(self, optimizer)
        self.sync_params()

    @property
    def optimizer(self) -> torch.optim.Optimizer | None:
        """The guarded optimizer, or ``None`` once it has been garbage-collected."""
        return self.optimizer_ref()

    def sync_params(self, settle: bool = True) -> None:
        """Hook the optimizer's trainable parameters not hooked yet: parameters frozen until now
        (``requires_grad=False`` has no gradient hook) and parameters or groups added since
        (``add_param_group``, or by hand). Cheap when nothing changed, and done once between
        two steps by the first clip or step (``settle``); an earlier zero-grad syncs without
        settling, so unfreezing after it is still seen."""
        if not self.needs_sync:
            return
        self.needs_sync = not settle
        optimizer = self.optimizer_ref()
        if optimizer is None:
            return
        groups = optimizer.param_groups
        sizes = list(map(len, map(_params_of, groups)))
        if sizes == self._group_sizes and not any(map(_requires_grad, self._frozen)):
            return
        self._group_sizes = sizes
        self._frozen = []
        for group in groups:
            for param in group["params"]:
                if id(param) in self.param_ids:
                    continue
                if not param.requires_grad:
                    self._frozen.append(param)
                    continue
                self.param_ids.add(id(param))
                self._handles.append(param.register_post_accumulate_grad_hook(
                    self._accumulate_hook(len(self.params))))
                self.params.append(param)
                if hasattr(param, "_local_tensor") or hasattr(param.grad, "_local_tensor"):
                    self._version = _version

    # -- context manager ----------------------------------------------------------------------
    def __enter__(self) -> Guard:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        self.close(check=kind is None)

    def close(self, check: bool = True) -> None:
        """Stop guarding; with ``check``, read the device counters one last time (and raise)."""
        if self._closed:
            return
        self._closed = True
        self.release()
        interception.unregister(self)
        if check:
            self._raise_unclipped()
            self.check()

    def release(self) -> None:
        """Let go of the parameters: their hooks and the guard's lists of them (once the
        optimizer is gone, or at ``close()``). A hook holds the guard, and autograd holds the
        hook where the garbage collector cannot see it: while the hooks stay, the parameters
        the guard lists would outlive the model. The device counters stay for ``close()``."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.params = []
        self.param_ids = set()
        self._frozen = []
        self._group_sizes = []
        self._used = self._clipped = None
        self._watching = False

    # -- events -------------------------------------------------------------------------------
    def _accumulate_hook(self, index: int) -> Callable[[torch.Tensor], None]:
        # Runs in the eager autograd engine, also for compiled models (AccumulateGrad is not
        # traced), so it needs no dynamo boundary (see eager.py) on every parameter.
        # Compiled autograd, which would trace it, is not supported.
        def accumulated(param: torch.Tensor) -> None:
            self._t_acc = next(_CLOCK)
            if self._watching:
                self._watch(index, param)

        return accumulated

    def _watch(self, index: int, param: torch.Tensor) -> None:
        """What an accumulation tells beyond its time, on the backward's own thread: it adds
        onto the gradient the last step used (missing-zero-grad), it is the first of this
        update (its line, for foreign-gradients), or it adds onto gradients another
        optimizer's step left behind (foreign-gradients)."""
        grad = param.grad
        assert grad is not None  # the hook runs once the gradient is accumulated
        site = None
        used = self._used
        if (used is not None and self._stale_backward is None
                and used.accumulated_once(index, grad, self._version)):
            # Only this accumulation touched the gradient the last step used.
            site = user_location(thread=self._thread)
            self._stale_backward = _Accumulation(site, index, weakref.ref(grad))
        if self._opening:
            self._opening = False
            self._first_backward = site or user_location(thread=self._thread)
        elif self._adds_to_stranded(index, grad):
            joined = _Accumulation(site or user_location(thread=self._thread), index, weakref.ref(grad))
            self._foreign = (self._first_backward, joined)
        self._rewatch()

    def _adds_to_stranded(self, index: int, grad: torch.Tensor) -> bool:
        """This accumulation adds onto the very gradient another optimizer's step left on the
        parameter (one accumulation more: a zero by hand, ``p.grad = None`` or ``zero_()``,
        makes it another tensor or another version)."""
        stranded = self._stranded
        return (stranded is not None and self._foreign is None
                and stranded.left.accumulated_once(index, grad, self._version))

    def _rewatch(self) -> None:
        """Whether the accumulation hook must call ``_watch`` (kept as one flag, so that the
        hook of a correct loop tests one attribute)."""
        self._watching = ((self._used is not None and self._stale_backward is None) or self._opening
                          or (self._stranded is not None and self._foreign is None))

    def _new_update(self) -> None:
        """A zero-grad or a step: the next backward starts what this optimizer's next step
        applies. It runs twice a step, so it sets the hook's flag itself: ``_rewatch`` with
        nothing stranded."""
        self._stranded = self._foreign = self._first_backward = None
        self._opening = opening = interception.several_guarded()
        self._watching = opening or (self._used is not None and self._stale_backward is None)

    def _strand_others(self) -> None:
        """This step leaves alone the gradients a backward put on other guarded optimizers'
        parameters: a later backward that adds onto them before their optimizer is zeroed
        mixes two losses (unless it reaches this optimizer too, see ``_check_foreign``)."""
        for guard in interception.open_guards():
            # ``guard`` holds gradients of a backward since its last zero-grad or step.
            if (guard is not self and guard._stranded is None
                    and guard._t_acc > guard._t_zero and guard._t_acc > guard._t_step):
                left = _Snapshot(list(map(_grad_of, guard.params)), guard._version)
                guard._stranded = _Stranded(weakref.ref(self), self._t_step, left)
                guard._rewatch()

    def zeroing(self) -> None:
        """A zero-grad of (some of) this guard's gradients is about to run."""
        if self._unclipped_step is not None:
            self._raise_unclipped()
        # A zero-grad after a backward and before any step: if a step follows, it is to blame.
        self._zero_site = user_location() if self._t_acc > self._t_step else None
        self._t_zero = next(_CLOCK)
        self._used = None  # what the last step used is going: no backward can accumulate into it
        self._stale_backward = None  # what the stale backward added goes before any step
        self._clipped = None
        self._new_update()

    def before_clip(self, covered: set[int], max_norm: float | None, location: str | None) -> None:
        """A clip of the parameters whose ids are ``covered`` is about to run (the parameters
        were synced when the clip asked whose they are)."""
        t_acc, t_step, t_zero = self._t_acc, self._t_step, self._t_zero
        backward_since_step = t_acc > t_step
        # A clip inside a step's closure, ahead of the backward the closure runs (a clip in
        # Lightning's training_step under automatic optimization), spoils the update in
        # progress, not the last one: the step's check names it clip-before-backward.
        after_step = not backward_since_step and not self._in_closure
        if self._unclipped_step is not None:
            step, step_location = self._unclipped_step
            self._unclipped_step = None
            if after_step:
                raise errors.ClipAfterStepError(
                    f"this clip runs after optimizer.step() (step {step}, at {step_location}): that "
                    "update already used unclipped gradients. Clip between backward() and step().",
                    step=step, location=location)
            self._missing_clip(step, step_location)
        if self.steps and after_step and t_step > t_zero:
            raise errors.ClipAfterStepError(
                "this clip runs after optimizer.step() and before any new backward(): that update "
                "already used unclipped gradients. Clip between backward() and step().",
                step=self.steps, location=location)
        if t_acc > self._t_clip > t_step and self._t_clip > t_zero:
            raise errors.ClipInsideAccumulationError(
                f"gradients were already clipped since the last step (at {self._clip_site}) "
                "and a backward() has accumulated more since: clipping every micro-batch rescales "
                "partial sums. Clip once, after the last backward() and right before step().",
                step=self.steps + 1, location=location)
        if (self.scaler is not None and self.scaler.is_enabled() and backward_since_step
                and not self._unscaled):
            raise errors.ClipScaledGradientsError(
                "the gradients are still multiplied by the GradScaler's scale: the clip compares "
                "scaled gradients with max_norm, so it clips far too hard (or, after an overflow, "
                "not at all). Call scaler.unscale_(optimizer) before clipping.",
                step=self.steps + 1, location=location)
        if max_norm is not None and self.max_norm is not None and max_norm > self.max_norm:
            raise errors.MaxNormExceededError(
                f"clip_grad_norm_ uses max_norm={max_norm:g}, above the guard's max_norm="
                f"{self.max_norm:g}.", step=self.steps + 1, location=location)
        missed = 0 if self.param_ids.issubset(covered) else sum(
            1 for p in self.params if id(p) not in covered and p.grad is not None)
        if missed:
            raise errors.PartialClipError(
                f"the clip leaves out {missed} parameter(s) of this optimizer that have gradients: "
                "those reach step() unclipped. Clip all of the optimizer's parameters at once.",
                step=self.steps + 1, location=location)
        self._clip_site = location

    def after_clip(self, max_norm: float | None) -> None:
        self._t_clip = next(_CLOCK)
        # What the step's value check can skip: a clip to the guard's max_norm or less (a
        # larger one has raised already) vouches for the gradients it leaves, until they change.
        vouches = max_norm is not None and self.max_norm is not None and max_norm <= self.max_norm
        self._clipped = _Snapshot(list(map(_grad_of, self.params)), self._version) if vouches else None

    def _check_scaler_updated(self, scaler: torch.amp.GradScaler, refused: str,
                              locate: Callable[[], str | None]) -> None:
        """Raise unless ``scaler.update()`` ran since the last ``scaler.step(optimizer)``, by the
        guard's own record and by the scaler's (a guard that ``install()`` started at a step
        missed that step's unscale_). ``refused``: the call torch would refuse."""
        if not (self._unscaled and self._t_step > self._t_unscale) and not _stepped_since_update(
                scaler, self.optimizer_ref()):
            return
        raise errors.MissingScalerUpdateError(
            "scaler.update() did not run after the last step: the scale never adapts (and torch "
            f"refuses this {refused}). Call scaler.update() once after each scaler.step(optimizer).",
            step=self.steps + 1, location=locate())

    def before_unscale(self, scaler: torch.amp.GradScaler, location: str | None) -> None:
        if self.scaler is None:
            self.scaler = scaler
        self._check_scaler_updated(scaler, "unscale_", lambda: location)
        if self._unscaled:
            raise errors.UnscaleTwiceError(
                f"scaler.unscale_(optimizer) already ran for this step (at {self._unscale_site}); "
                "a second call raises in torch and would divide by the scale twice. Unscale once, "
                "right before clipping.", step=self.steps + 1, location=location)
        self._unscaled = True
        self._t_unscale = next(_CLOCK)
        self._unscale_site = location

    def after_scaler_update(self) -> None:
        self._unscaled = False

    def scaler_step(self, scaler: torch.amp.GradScaler, step: Callable[[], Any]) -> Any:
        """``scaler.step(optimizer)``, run by ``step()``: the optimizer's own step runs inside,
        or, after an inf or nan, not at all (then no optimizer hook runs, and the step is booked
        as skipped here)."""
        if self.scaler is None:
            self.scaler = scaler
        self._check_scaler_updated(scaler, "step", user_location)
        self.inside_scaler_step = True
        self._stepped = False
        try:
            result = step()
        finally:
            self.inside_scaler_step = False
        if not self._stepped:
            grads = list(map(_grad_of, self.params))
            self._check_order(any(map(_is_tensor, grads)), user_location)
            self._finish_step(grads)
        return result

    def _pre_step(self, optimizer: torch.optim.Optimizer, args: tuple[Any, ...],
                  kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        """Checks the step about to run and books it (no post-step hook: one call per step).
        A step that raises inside torch is booked all the same; the error reaches the user."""
        if tracing():  # a compiled training step: run eagerly (see eager.py)
            return _untraced_pre_step(self, optimizer, args, kwargs)
        if self.needs_sync:
            self.sync_params()
        self._stepped = True  # the optimizer's own step runs (scaler.step did not skip it)
        # ``args`` starts with the optimizer itself; ``step()`` mostly comes without a closure.
        closure = (kwargs.get("closure", args[1] if len(args) > 1 else None)
                   if kwargs or len(args) > 1 else None)
        if closure is None:
            grads = self._check_step(user_location)
            if grads is not None:
                self._finish_step(grads)
            return None
        booked = False
        # The checks run inside the optimizer's step, from the closure: the step's own line
        # is the one to name, looked up now.
        location = user_location()

        def checked_closure() -> Any:
            # The closure runs backward inside the step (Lightning, LBFGS, which runs it
            # several times): each run is checked, the step is booked once.
            nonlocal booked
            self._in_closure = True
            try:
                result = closure()
            finally:
                self._in_closure = False
            grads = self._check_step(lambda: location)
            if grads is not None and not booked:
                booked = True
                self._finish_step(grads)
            return result

        if "closure" in kwargs:
            return args, {**kwargs, "closure": checked_closure}
        return (args[0], checked_closure, *args[2:]), kwargs

    # -- checks -------------------------------------------------------------------------------
    # A check names the line of the call it runs in (a clip, the step) only when it raises: it
    # looks it up then, with ``user_location()`` or the step's ``locate()``.
    def _check_step(self, locate: Callable[[], str | None]) -> list[torch.Tensor | None] | None:
        """Raises on a mistake; the gradients the step uses, or ``None`` when it changes
        nothing (and so is not booked). ``locate()``: the step's line."""
        grads = list(map(_grad_of, self.params))
        if self._skip_check:
            self._skip_check = False
            return grads
        has_grad = any(map(_is_tensor, grads))
        if self._t_acc <= self._t_step and not has_grad:
            # No gradient at all and no backward since the last step (an optimizer whose
            # parameters took no part this time): torch's step changes nothing.
            return None
        if self.scaler is not None and not self.inside_scaler_step:
            raise errors.StepBypassesScalerError(
                "optimizer.step() is called directly while a GradScaler scales the loss: the "
                "gradients are still scaled and inf/nan steps are not skipped. Use "
                "scaler.step(optimizer) followed by scaler.update().",
                step=self.steps + 1, location=locate())
        self._check_order(has_grad, locate)
        if self.max_norm is not None:
            if self._t_clip <= self._t_step:
                self._unclipped_step = (self.steps + 1, locate())
            else:
                # An intercepted clip to max_norm or less covered every gradient, and none
                # changed since: no value check needed.
                clipped = self._clipped
                self._vouched = clipped is not None and clipped.holds(grads, self._version)
                if not self._vouched:
                    self._enqueue_norm_check()
        return grads

    def _check_order(self, has_grad: bool, locate: Callable[[], str | None]) -> None:
        """The order of this step's events; ``has_grad``: any of the optimizer's parameters has
        a gradient; ``locate()``: the step's line."""
        step = self.steps + 1
        t_acc, t_step = self._t_acc, self._t_step
        if self._unclipped_step is not None:
            self._raise_unclipped()
        if t_acc <= t_step:
            zeroed = self._t_zero > t_step
            raise errors.StepBeforeBackwardError(
                "no backward() ran since " + ("the previous step" if self.steps else "the guard started")
                + (" and zero_grad() ran since" if zeroed else "")
                + ": this step applies " + ("zeroed" if zeroed else "the previous step's")
                + " gradients. Call backward() before step().", step=step, location=locate())
        zeroed_after_backward = self._t_zero > t_acc
        if zeroed_after_backward or not has_grad:
            raise errors.ZeroGradBeforeStepError(
                "the gradients were zeroed after backward() and before this step"
                + (f" (zero_grad() at {self._zero_site})" if zeroed_after_backward else "")
                + ": the update sees nothing. Zero before backward() or after step().",
                step=step, location=self._zero_site if zeroed_after_backward else locate())
        # A stale or foreign accumulation counts while its gradient is still the parameter's.
        stale = self._stale_backward
        if stale is not None and stale.stands(self.params):
            raise errors.MissingZeroGradError(
                f"this backward() accumulated into the gradients step {self.steps} already applied: "
                "no zero_grad() ran in between, so this step re-applies them. Call "
                "optimizer.zero_grad() once per update.", step=step, location=stale.site)
        if self._foreign is not None and self._foreign[1].stands(self.params):
            self._check_foreign(step)
        # Before backward-after-unscale: accelerate's clip unscales inside the user's clip call.
        if t_step < self._t_clip < t_acc:
            raise errors.ClipBeforeBackwardError(
                f"backward() ran after this clip, before the step at {locate()}: the step "
                "applies gradients the clip never saw. Clip once, after the last backward() and "
                "right before step().", step=step, location=self._clip_site)
        if t_step < self._t_unscale < t_acc:
            raise errors.BackwardAfterUnscaleError(
                f"backward() ran after scaler.unscale_(optimizer) (at {self._unscale_site}): "
                "the new gradients are still scaled when step() runs. Unscale after the last backward().",
                step=step, location=locate())

    def _check_foreign(self, step: int) -> None:
        """Raise for gradients of two backwards with another optimizer's step between them,
        unless a backward since that step reached the other optimizer's parameters too: then
        both losses train both (a joint objective in two backwards, as the static CC107 treats
        it)."""
        assert self._foreign is not None and self._stranded is not None
        first, joined = self._foreign
        other = self._stranded.by()
        if other is not None and other._t_acc > self._stranded.at:
            return
        raise errors.ForeignGradientsError(
            "this backward() added onto the gradients that an earlier backward()"
            + (f" (at {first})" if first else "") + " left on this optimizer's parameters, and "
            "another optimizer stepped in between: this step applies the other loss's gradients "
            "too. Zero this optimizer's gradients right before its own backward(), or keep the "
            "other loss out of its parameters (requires_grad_(False) on them during the other "
            "backward, or detach).", step=step, location=joined.site)

    def _raise_unclipped(self) -> None:
        if self._unclipped_step is not None:
            step, location = self._unclipped_step
            self._unclipped_step = None
            self._missing_clip(step, location)

    def _missing_clip(self, step: int, location: str | None) -> None:
        raise errors.MissingClipError(
            f"this step ran on gradients that were never clipped (the guard expects "
            f"max_norm={self.max_norm:g}). Call clip_grad_norm_ between backward() (and "
            "scaler.unscale_) and step().", step=step, location=location)

    def _enqueue_norm_check(self) -> None:
        """Queue, on the gradients' device, a comparison of the unscaled total norm with max_norm."""
        assert self.max_norm is not None
        grads = [p.grad for p in self.params if p.grad is not None]
        if not grads:
            return
        norm = torch.nn.utils.get_total_norm(grads, 2.0)
        if hasattr(norm, "full_tensor"):
            norm = norm.full_tensor()  # FSDP2 / DTensor: the global norm (a collective)
        norm = norm.float()
        # Reached only after a clip (a clip before unscale_ has already raised), so the
        # gradients are unscaled here, on every path including fused optimizers.
        bad = ~(norm <= self.max_norm * (1 + _tolerance(grads)))
        found_inf = getattr(self.optimizer, "found_inf", None)
        if isinstance(found_inf, torch.Tensor):  # a fused optimizer skips this step on device
            bad = bad & (found_inf.to(norm.device) == 0)
        if self._violations is None:
            device = norm.device
            self._violations = torch.zeros((), dtype=torch.int32, device=device)
            self._first_violation = torch.full((), -1, dtype=torch.int64, device=device)
            self._worst_ratio = torch.zeros((), dtype=torch.float32, device=device)
        assert self._first_violation is not None and self._worst_ratio is not None
        step = torch.full((), self.steps + 1, dtype=torch.int64, device=norm.device)
        self._violations.add_(bad.to(torch.int32))
        self._first_violation.copy_(torch.where(bad & (self._first_violation < 0), step,
                                                self._first_violation))
        ratio = torch.where(bad, norm / self.max_norm, torch.zeros_like(norm))
        torch.maximum(self._worst_ratio, ratio, out=self._worst_ratio)

    def check(self) -> None:
        """Read the device-side violation counters (one sync) and raise if any step broke
        ``max_norm``."""
        if self._violations is None:
            return
        assert self._first_violation is not None and self._worst_ratio is not None
        count = int(self._violations.item())
        if count:
            first, worst = int(self._first_violation.item()), float(self._worst_ratio.item())
            self._violations.zero_()
            self._first_violation.fill_(-1)
            self._worst_ratio.zero_()
            raise errors.MaxNormExceededError(
                f"{count} step(s) ran with a total gradient norm above max_norm={self.max_norm:g} "
                f"(first at step {first}, worst {worst:.3g} x max_norm): the gradients were not "
                "clipped, or were changed after the clip.", step=first, location=None)

    def _finish_step(self, grads: list[torch.Tensor | None]) -> None:
        """Book the step that used ``grads``."""
        self.steps += 1
        self._t_step = next(_CLOCK)
        self.needs_sync = True  # parameters may be unfrozen or added before the next step
        self._stale_backward = None
        # What the step used: the clip's snapshot when it vouched for these very gradients.
        clipped = self._clipped
        self._used = clipped if self._vouched and clipped is not None else _Snapshot(grads, self._version)
        self._vouched = False
        self._clipped = None
        self._new_update()
        if self._opening:  # another optimizer is guarded
            self._strand_others()
        if self._violations is not None and self.steps % self.check_every == 0:
            self.check()


_untraced_pre_step = torch.compiler.disable(Guard._pre_step)
