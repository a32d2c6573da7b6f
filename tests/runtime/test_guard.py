"""The runtime guard on real tiny training loops (CPU): every mistake raises the right error at
the offending line, and correct loops never raise and train bit for bit like unguarded ones."""

from __future__ import annotations

import copy
import pickle
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from conftest import marked_line  # noqa: E402

import clipcheck.runtime as rt  # noqa: E402


def line_of(marker: str) -> str:
    return marked_line(Path(__file__), marker)


def make(seed: int = 0, d: int = 8) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(d, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    x, y = torch.randn(32, d) * 10, torch.randn(32, 1) * 10
    return model, x, y


def loss_of(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.mse_loss(model(x), y)


# -- mistakes -----------------------------------------------------------------------------------

def clip_before_backward(model, opt, x, y):
    for _ in range(3):
        opt.zero_grad()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # <- clip-before-backward
        loss_of(model, x, y).backward()
        opt.step()


def clip_after_step(model, opt, x, y):
    for _ in range(3):
        opt.zero_grad()
        loss_of(model, x, y).backward()
        opt.step()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # <- clip-after-step


def zero_between(model, opt, x, y):
    for _ in range(3):
        loss_of(model, x, y).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.zero_grad()  # <- zero-grad-before-step
        opt.step()


def module_zero_between(model, opt, x, y):
    for _ in range(3):
        loss_of(model, x, y).backward()
        model.zero_grad()  # <- module-zero-grad
        opt.step()


def grads_set_to_none(model, opt, x, y):
    for _ in range(3):
        loss_of(model, x, y).backward()
        for p in model.parameters():
            p.grad = None
        opt.step()  # <- grads-none


def missing_zero(model, opt, x, y):
    for _ in range(3):
        loss_of(model, x, y).backward()  # <- missing-zero-grad
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()


def step_before_backward(model, opt, x, y):
    loss_of(model, x, y).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    for _ in range(3):
        opt.zero_grad(set_to_none=False)  # zeroed gradients: the step is not a no-op
        opt.step()  # <- step-before-backward
        loss_of(model, x, y).backward()


def never_clipped(model, opt, x, y):
    for _ in range(3):
        opt.zero_grad()
        loss_of(model, x, y).backward()
        opt.step()  # <- missing-clip


def partial_clip(model, opt, x, y):
    for _ in range(3):
        opt.zero_grad()
        loss_of(model, x, y).backward()
        torch.nn.utils.clip_grad_norm_(model[0].parameters(), 1.0)  # <- partial-clip
        opt.step()


def clip_every_microbatch(model, opt, x, y):
    for i in range(4):
        loss_of(model, x, y).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # <- accumulation
        if i % 2 == 1:
            opt.step()
            opt.zero_grad()


def larger_max_norm(model, opt, x, y):
    opt.zero_grad()
    loss_of(model, x, y).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)  # <- larger-max-norm
    opt.step()


def grads_changed_after_clip(model, opt, x, y):
    for _ in range(3):
        opt.zero_grad()
        loss_of(model, x, y).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        for p in model.parameters():
            p.grad.mul_(100.0)
        opt.step()


def clip_with_norm_before_backward(model, opt, x, y):
    """The public two-step clip, called by hand: the guard's own interception is the callee."""
    for _ in range(3):
        opt.zero_grad()
        params = list(model.parameters())
        norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
        torch.nn.utils.clip_grads_with_norm_(params, 1.0, norm)  # <- clip-with-norm
        loss_of(model, x, y).backward()
        opt.step()


def clip_value_after_step(model, opt, x, y):
    for _ in range(3):
        opt.zero_grad()
        loss_of(model, x, y).backward()
        opt.step()
        torch.nn.utils.clip_grad_value_(model.parameters(), 0.5)  # <- clip-value-after-step


MISTAKES: list[tuple[Callable[..., None], type[rt.GradientOrderError], str | None]] = [
    (clip_before_backward, rt.ClipBeforeBackwardError, "clip-before-backward"),
    (clip_after_step, rt.ClipAfterStepError, "clip-after-step"),
    (zero_between, rt.ZeroGradBeforeStepError, "zero-grad-before-step"),
    (module_zero_between, rt.ZeroGradBeforeStepError, "module-zero-grad"),
    (grads_set_to_none, rt.ZeroGradBeforeStepError, "grads-none"),
    (missing_zero, rt.MissingZeroGradError, "missing-zero-grad"),
    (step_before_backward, rt.StepBeforeBackwardError, "step-before-backward"),
    (never_clipped, rt.MissingClipError, "missing-clip"),
    (partial_clip, rt.PartialClipError, "partial-clip"),
    (clip_every_microbatch, rt.ClipInsideAccumulationError, "accumulation"),
    (larger_max_norm, rt.MaxNormExceededError, "larger-max-norm"),
    (grads_changed_after_clip, rt.MaxNormExceededError, None),
    (clip_with_norm_before_backward, rt.ClipBeforeBackwardError, "clip-with-norm"),
    (clip_value_after_step, rt.ClipAfterStepError, "clip-value-after-step"),
]


@pytest.mark.parametrize(("loop", "error", "marker"), MISTAKES, ids=lambda v: getattr(v, "__name__", ""))
def test_mistake_raises_at_the_offending_line(loop, error, marker) -> None:
    model, x, y = make()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with pytest.raises(error) as caught, rt.guard(opt, max_norm=1.0, check_every=1):
        loop(model, opt, x, y)
    assert caught.value.rule == error.rule
    assert f"[{error.rule}]" in str(caught.value)
    if marker is not None:
        assert caught.value.location == line_of(marker)


def test_each_call_is_named_at_its_own_line() -> None:
    """Lines are cached per code object and instruction: a clip from one line of a function
    never lends its line to a clip from another line of the same function."""
    model, x, y = make()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with pytest.raises(rt.ClipInsideAccumulationError) as caught, rt.guard(opt, max_norm=1.0):
        for step in range(3):
            opt.zero_grad()
            loss_of(model, x, y).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # <- first-clip
            if step == 2:
                loss_of(model, x, y).backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # <- second-clip
            opt.step()
    assert caught.value.location == line_of("second-clip")
    assert f"(at {line_of('first-clip')})" in str(caught.value)


def test_order_only_mode_ignores_unclipped_steps() -> None:
    model, x, y = make()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with rt.guard(opt, max_norm=None):
        never_clipped(model, opt, x, y)
    with pytest.raises(rt.ClipAfterStepError), rt.guard(opt, max_norm=None):
        clip_after_step(model, opt, x, y)


def test_deferred_value_check_reports_at_close() -> None:
    model, x, y = make()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    guard = rt.guard(opt, max_norm=1.0, check_every=1000)
    grads_changed_after_clip(model, opt, x, y)
    with pytest.raises(rt.MaxNormExceededError, match=r"3 step\(s\).*first at step 1"):
        guard.close()


# -- AMP ----------------------------------------------------------------------------------------

def amp_step(model, opt, scaler, x, y, *, unscale=True, via_scaler=True, unscale_twice=False):
    opt.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = loss_of(model, x, y)
    scaler.scale(loss).backward()
    if unscale:
        scaler.unscale_(opt)
    if unscale_twice:
        scaler.unscale_(opt)  # <- unscale-twice
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # <- amp-clip
    if via_scaler:
        scaler.step(opt)
    else:
        opt.step()  # <- bypass
    scaler.update()


@pytest.mark.parametrize(("kwargs", "error", "marker"), [
    ({"unscale": False}, rt.ClipScaledGradientsError, "amp-clip"),
    ({"via_scaler": False}, rt.StepBypassesScalerError, "bypass"),
    ({"unscale_twice": True}, rt.UnscaleTwiceError, "unscale-twice"),
])
def test_amp_mistakes(kwargs, error, marker) -> None:
    model, x, y = make()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu")
    with pytest.raises(error) as caught, rt.guard(opt, max_norm=1.0, scaler=scaler, check_every=1):
        for _ in range(2):
            amp_step(model, opt, scaler, x, y, **kwargs)
    assert caught.value.location == line_of(marker)


def test_backward_after_unscale() -> None:
    model, x, y = make()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu")
    with pytest.raises(rt.BackwardAfterUnscaleError), rt.guard(opt, max_norm=None, scaler=scaler):
        opt.zero_grad()
        scaler.scale(loss_of(model, x, y)).backward()
        scaler.unscale_(opt)
        scaler.scale(loss_of(model, x, y)).backward()
        scaler.step(opt)


def test_a_step_the_scaler_skips_is_named_at_the_users_line() -> None:
    """After an overflow ``scaler.step`` skips the optimizer's step: the guard books it on the
    way out of ``scaler.step`` and names that call, not a frame of the standard library."""
    model, x, y = make()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**127)  # the first scaled loss overflows
    with pytest.raises(rt.BackwardAfterUnscaleError) as caught, rt.guard(opt, scaler=scaler):
        opt.zero_grad()
        scaler.scale(loss_of(model, x, y) * 1e3).backward()
        scaler.unscale_(opt)
        scaler.scale(loss_of(model, x, y)).backward()
        scaler.step(opt)  # <- skipped-step
    assert caught.value.location == line_of("skipped-step")


class HandWrittenOptimizer(torch.optim.Optimizer):
    """An optimizer of the user's own that runs the closure in its step (as LBFGS does)."""

    def __init__(self, params) -> None:
        super().__init__(params, {"lr": 0.01})

    @torch.no_grad()
    def step(self, closure=None):
        with torch.enable_grad():
            loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.add_(p.grad, alpha=-group["lr"])
        return loss


def test_a_closure_step_is_named_at_the_step_call() -> None:
    model, x, y = make()
    opt = HandWrittenOptimizer(model.parameters())

    def closure():
        opt.zero_grad()
        loss = loss_of(model, x, y)
        loss.backward()
        return loss

    with pytest.raises(rt.MissingClipError) as caught, rt.guard(opt, max_norm=1.0):
        for _ in range(2):
            opt.step(closure)  # <- closure-step
    assert caught.value.location == line_of("closure-step")


def test_a_clip_in_a_closure_before_its_backward_is_clip_before_backward() -> None:
    """Under ``install()`` the first step goes unchecked; the second step's closure clips what
    the first step used, ahead of its own backward: the update it spoils is the one in
    progress, so it is not named clip-after-step."""
    model, x, y = make()
    opt = HandWrittenOptimizer(model.parameters())

    def closure():
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # <- closure-clip-first
        opt.zero_grad()
        loss = loss_of(model, x, y)
        loss.backward()
        return loss

    rt.install(check_every=1)
    try:
        with pytest.raises(rt.ClipBeforeBackwardError) as caught:
            for _ in range(3):
                opt.step(closure)
    finally:
        rt.uninstall(check=False)
    assert caught.value.location == line_of("closure-clip-first")


# -- correct loops: no error, and the same weights as without the guard ---------------------------

def plain(model, opt, x, y, steps=6):
    for _ in range(steps):
        opt.zero_grad()
        loss_of(model, x, y).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()


def keep_grad_tensors(model, opt, x, y, steps=6):
    for _ in range(steps):
        opt.zero_grad(set_to_none=False)
        loss_of(model, x, y).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()


def accumulation(model, opt, x, y, steps=8, accum=4):
    for i in range(steps):
        (loss_of(model, x[i::accum], y[i::accum]) / accum).backward()
        if (i + 1) % accum == 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad()


def zero_last_module(model, opt, x, y, steps=6):
    for _ in range(steps):
        loss_of(model, x, y).backward()
        torch.nn.utils.clip_grad_value_(model.parameters(), 0.01)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        model.zero_grad()


def lbfgs(model, opt, x, y, steps=3):
    def closure():
        opt.zero_grad()
        loss = loss_of(model, x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        return loss

    for _ in range(steps):
        opt.step(closure)


CORRECT = [
    (plain, torch.optim.SGD),
    (keep_grad_tensors, torch.optim.AdamW),
    (accumulation, torch.optim.SGD),
    (zero_last_module, torch.optim.Adam),
    (lbfgs, torch.optim.LBFGS),
]


def _train(loop, optimizer_class, guarded: bool, compile_model: bool = False) -> list[torch.Tensor]:
    model, x, y = make()
    opt = optimizer_class(model.parameters(), lr=0.01)
    run = torch.compile(model) if compile_model else model
    if guarded:
        with rt.guard(opt, max_norm=1.0, check_every=2):
            loop(run, opt, x, y)
    else:
        loop(run, opt, x, y)
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize(("loop", "optimizer_class"), CORRECT, ids=lambda v: getattr(v, "__name__", ""))
def test_correct_loop_is_silent_and_bit_identical(loop, optimizer_class) -> None:
    guarded = _train(loop, optimizer_class, guarded=True)
    plain_weights = _train(loop, optimizer_class, guarded=False)
    assert all(torch.equal(a, b) for a, b in zip(guarded, plain_weights, strict=True))


def test_amp_with_skipped_inf_steps() -> None:
    model, x, y = make()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    with rt.guard(opt, max_norm=1.0, scaler=scaler, check_every=1) as guard:
        for i in range(6):
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = loss_of(model, x, y) * (float("inf") if i == 2 else 1.0)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            scaler.step(opt)
            scaler.update()
    assert guard.steps == 6


def test_gan_two_optimizers() -> None:
    gen, z, _ = make(seed=1)
    disc = torch.nn.Sequential(torch.nn.Linear(1, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    opt_g = torch.optim.Adam(gen.parameters(), lr=1e-3)
    opt_d = torch.optim.Adam(disc.parameters(), lr=1e-3)
    real = torch.randn(32, 1)
    with rt.guard(opt_g, max_norm=1.0, check_every=1), rt.guard(opt_d, max_norm=1.0, check_every=1):
        for _ in range(4):
            opt_d.zero_grad()
            d_loss = disc(real).mean() - disc(gen(z).detach()).mean()
            d_loss.backward()
            torch.nn.utils.clip_grad_norm_(disc.parameters(), 1.0)
            opt_d.step()
            opt_g.zero_grad()
            g_loss = -disc(gen(z)).mean()
            g_loss.backward()
            torch.nn.utils.clip_grad_norm_(gen.parameters(), 1.0)
            opt_g.step()


def test_compiled_model_is_silent_and_bit_identical() -> None:
    guarded = _train(plain, torch.optim.SGD, guarded=True, compile_model=True)
    plain_weights = _train(plain, torch.optim.SGD, guarded=False, compile_model=True)
    assert all(torch.equal(a, b) for a, b in zip(guarded, plain_weights, strict=True))


def test_compiled_model_still_catches_mistakes() -> None:
    model, x, y = make()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with pytest.raises(rt.ZeroGradBeforeStepError), rt.guard(opt, max_norm=1.0):
        zero_between(torch.compile(model), opt, x, y)


def compiled_train_step(model, opt, x, y, steps=4, clip_first=False):
    """The whole step under ``torch.compile``: dynamo calls the guard's hooks eagerly."""
    @torch.compile(backend="aot_eager")  # traced by dynamo, no C++ toolchain needed
    def step():
        opt.zero_grad()
        loss = loss_of(model, x, y)
        if clip_first:
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # <- compiled-clip-first
        loss.backward()
        if not clip_first:
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    for _ in range(steps):
        step()


def test_compiled_train_step_is_silent_and_bit_identical() -> None:
    guarded = _train(compiled_train_step, torch.optim.AdamW, guarded=True)
    plain_weights = _train(compiled_train_step, torch.optim.AdamW, guarded=False)
    assert all(torch.equal(a, b) for a, b in zip(guarded, plain_weights, strict=True))


def test_compiled_train_step_still_catches_mistakes() -> None:
    model, x, y = make()
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    with pytest.raises(rt.ClipBeforeBackwardError) as caught, rt.guard(opt, max_norm=1.0):
        compiled_train_step(model, opt, x, y, clip_first=True)
    assert caught.value.location == marked_line(Path(__file__), "compiled-clip-first")


def test_guarded_zero_grad_runs_torchs_function_without_its_dynamo_wrapper() -> None:
    """The guard's zero-grad is hidden from dynamo by its own twin, so it calls the function
    torch wraps directly: torch's wrapper would add about ten calls to every guarded step."""
    model, _, _ = make()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    called: list[str] = []

    def watch(frame, event, arg) -> None:
        if event == "call":
            called.append(f"{frame.f_code.co_filename}:{frame.f_code.co_name}")

    with rt.guard(opt):
        sys.setprofile(watch)
        try:
            opt.zero_grad()
        finally:
            sys.setprofile(None)
    assert any(c.endswith("optimizer.py:zero_grad") for c in called), called
    assert not any("/_dynamo/" in c or c.endswith("_compile.py:inner") for c in called), called


def test_guarded_objects_stay_picklable() -> None:
    model, x, y = make()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu")
    with rt.guard(opt, max_norm=1.0, scaler=scaler):
        amp_step(model, opt, scaler, x, y)
        pickle.dumps(model)
        pickle.dumps(scaler)
        copy.deepcopy(opt.state_dict())


def test_install_guards_optimizers_created_later() -> None:
    rt.install(max_norm=1.0, check_every=1)
    try:
        model, x, y = make()
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        with pytest.raises(rt.ZeroGradBeforeStepError):
            zero_between(model, opt, x, y)
    finally:
        rt.uninstall(check=False)
    model, x, y = make()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    zero_between(model, opt, x, y)  # uninstalled: nothing is patched any more


def test_one_guard_per_optimizer() -> None:
    model, _, _ = make()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with rt.guard(opt), pytest.raises(ValueError, match="already has"):
        rt.guard(opt)
