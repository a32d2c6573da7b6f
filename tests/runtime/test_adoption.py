"""The guard turned on the natural way must never break a working script: frozen and late
parameters, framework wrappers, disabled scalers, norm measurements, no-op steps; and it must
not keep what it watches alive."""

from __future__ import annotations

import gc
import importlib
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from conftest import marked_line  # noqa: E402

import clipcheck.runtime as rt  # noqa: E402
from clipcheck.runtime import interception  # noqa: E402


def line_of(marker: str) -> str:
    return marked_line(Path(__file__), marker)


def backbone_and_head(seed: int = 0) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    return torch.randn(32, 8), torch.randn(32, 1)


def finetune(model, opt, steps: int = 4, clip_all: bool = True) -> None:
    x, y = batch()
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        params = model.parameters() if clip_all else model[2].parameters()
        torch.nn.utils.clip_grad_norm_(params, 1.0)  # <- clip
        opt.step()


def frozen_model(guarded: bool) -> list[torch.Tensor]:
    model = backbone_and_head()
    model[0].requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)  # holds the frozen backbone too
    if guarded:
        with rt.guard(opt, max_norm=1.0, check_every=1):
            finetune(model, opt)
    else:
        finetune(model, opt)
    return [p.detach().clone() for p in model.parameters()]


def test_frozen_parameters_are_silent_and_bit_identical() -> None:
    guarded, plain = frozen_model(True), frozen_model(False)
    assert all(torch.equal(a, b) for a, b in zip(guarded, plain, strict=True))


def test_unfrozen_parameters_are_picked_up_and_checked() -> None:
    model = backbone_and_head()
    model[0].requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    with rt.guard(opt, max_norm=1.0, check_every=1) as guard:
        finetune(model, opt, steps=2)
        model[0].requires_grad_(True)  # progressive unfreezing
        finetune(model, opt, steps=2)
        assert len(guard.params) == 4
        with pytest.raises(rt.PartialClipError) as caught:
            finetune(model, opt, steps=1, clip_all=False)
    assert caught.value.location == line_of("clip")


def test_unfreezing_after_a_module_zero_grad_is_checked_at_once() -> None:
    model = backbone_and_head()
    model[0].requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x, y = batch()
    with rt.guard(opt, max_norm=1.0, check_every=1):
        finetune(model, opt, steps=1)
        model.zero_grad()
        model[0].requires_grad_(True)  # unfrozen after this iteration's zero-grad
        torch.nn.functional.mse_loss(model(x), y).backward()
        with pytest.raises(rt.PartialClipError):
            torch.nn.utils.clip_grad_norm_(model[2].parameters(), 1.0)


def test_added_param_groups_are_picked_up() -> None:
    model = backbone_and_head()
    opt = torch.optim.SGD(model[2].parameters(), lr=1e-2)
    with rt.guard(opt, max_norm=1.0, check_every=1) as guard:
        finetune(model, opt, steps=1)
        opt.add_param_group({"params": list(model[0].parameters()), "lr": 1e-3})
        finetune(model, opt, steps=2)
        assert len(guard.params) == 4
        with pytest.raises(rt.PartialClipError):
            finetune(model, opt, steps=1, clip_all=False)


def test_parameters_added_by_hand_are_picked_up() -> None:
    model = backbone_and_head()
    opt = torch.optim.SGD(model[2].parameters(), lr=1e-2)
    with rt.guard(opt, max_norm=1.0, check_every=1) as guard:
        finetune(model, opt, steps=1)
        opt.param_groups[0]["params"].extend(model[0].parameters())  # no add_param_group
        finetune(model, opt, steps=1)
        assert len(guard.params) == 4
        with pytest.raises(rt.PartialClipError):
            finetune(model, opt, steps=1, clip_all=False)


class Wrapper:
    """What frameworks hand out: an object that steps a torch optimizer it holds."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer

    def step(self) -> None:
        self.optimizer.step()

    def zero_grad(self) -> None:
        self.optimizer.zero_grad()


def test_wrappers_are_guarded_through_what_they_wrap() -> None:
    model = backbone_and_head()
    opt = Wrapper(torch.optim.SGD(model.parameters(), lr=1e-2))
    with rt.guard(opt, max_norm=1.0, check_every=1) as guard:
        finetune(model, opt)
    assert guard.steps == 4
    with pytest.raises(TypeError, match="neither is one"):
        rt.guard(object())


def test_accelerate_prepared_optimizer() -> None:
    accelerate = pytest.importorskip("accelerate")
    accelerator = accelerate.Accelerator(cpu=True, gradient_accumulation_steps=2)
    model = backbone_and_head()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    model, opt = accelerator.prepare(model, opt)
    x, y = batch()
    with rt.guard(opt, max_norm=1.0, check_every=1) as guard:
        for _ in range(4):
            with accelerator.accumulate(model):
                accelerator.backward(torch.nn.functional.mse_loss(model(x), y))
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                opt.zero_grad()
    assert guard.steps == 2
    with pytest.raises(rt.ZeroGradBeforeStepError) as caught, rt.guard(opt, check_every=1):
        for _ in range(2):
            accelerator.backward(torch.nn.functional.mse_loss(model(x), y))
            opt.zero_grad()  # <- accelerate-zero
            opt.step()
    assert caught.value.location == line_of("accelerate-zero")


def test_accelerate_clip_before_the_first_backward_is_named_at_the_clip() -> None:
    """accelerate's clip hands torch only parameters that have a gradient, so before the first
    backward torch's clip never runs: the guard still names the misplaced clip, in this file."""
    accelerate = pytest.importorskip("accelerate")
    accelerator = accelerate.Accelerator(cpu=True)
    model = backbone_and_head()
    model, opt = accelerator.prepare(model, torch.optim.SGD(model.parameters(), lr=1e-2))
    x, y = batch()
    with pytest.raises(rt.ClipBeforeBackwardError) as caught, rt.guard(opt, max_norm=1.0, check_every=1):
        for _ in range(2):
            accelerator.clip_grad_norm_(model.parameters(), 1.0)  # <- accelerate-clip-first
            accelerator.backward(torch.nn.functional.mse_loss(model(x), y))
            opt.step()
            opt.zero_grad()
    assert caught.value.step == 1
    assert caught.value.location == line_of("accelerate-clip-first")


def test_no_false_alarms_on_correct_code() -> None:
    model = backbone_and_head()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    idle = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    x, y = batch()
    with rt.guard(opt, max_norm=1.0, scaler=scaler, check_every=1), rt.guard(idle, check_every=1):
        for _ in range(3):
            opt.zero_grad()
            scaler.scale(torch.nn.functional.mse_loss(model(x), y)).backward()
            scaler.unscale_(opt)
            scaler.unscale_(opt)  # a disabled scaler does nothing, twice or not
            torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf"))  # only measures
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            scaler.step(opt)
            scaler.update()
            idle.step()  # no parameter of it has a gradient: a no-op
        torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf"))  # after the step: a reading


def test_forgotten_scaler_update_is_named() -> None:
    model = backbone_and_head()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu")
    x, y = batch()
    with pytest.raises(rt.MissingScalerUpdateError), rt.guard(opt, scaler=scaler, check_every=1):
        for _ in range(2):
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = torch.nn.functional.mse_loss(model(x), y)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            scaler.step(opt)


def scaled_steps_without_update(model, opt, scaler, unscale: bool) -> None:
    x, y = batch()
    for _ in range(2):
        opt.zero_grad()
        scaler.scale(torch.nn.functional.mse_loss(model(x), y)).backward()
        if unscale:
            scaler.unscale_(opt)  # <- unscale-after-no-update
        scaler.step(opt)  # <- step-after-no-update


def test_forgotten_scaler_update_is_named_under_install() -> None:
    """``install()`` attaches at the first step, after its unscale_: the scaler's own record
    says that no update() followed, and the guard names it before torch refuses the unscale_."""
    model = backbone_and_head()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    rt.install(check_every=1)
    try:
        with pytest.raises(rt.MissingScalerUpdateError) as caught:
            scaled_steps_without_update(model, opt, torch.amp.GradScaler("cpu"), unscale=True)
    finally:
        rt.uninstall(check=False)
    assert caught.value.location == line_of("unscale-after-no-update")


def test_forgotten_scaler_update_without_unscale_is_named_at_the_step() -> None:
    model = backbone_and_head()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu")
    with pytest.raises(rt.MissingScalerUpdateError) as caught, rt.guard(opt, scaler=scaler):
        scaled_steps_without_update(model, opt, scaler, unscale=False)
    assert caught.value.location == line_of("step-after-no-update")


def trained_refs(guard: Callable[[torch.optim.Optimizer], object] | None = None,
                 ) -> tuple[list[weakref.ref[Any]], object]:
    """Weak references to a model trained for a few steps under a learning-rate scheduler:
    the model, each of its parameters, the optimizer and the scheduler. ``guard(optimizer)``
    is called first, and what it returns is handed back; the rest is dropped."""
    model = backbone_and_head()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    kept = guard(opt) if guard is not None else None
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1)
    finetune(model, opt, steps=3)
    scheduler.step()
    return [weakref.ref(o) for o in (model, opt, scheduler, *model.parameters())], kept


def test_an_unclosed_guard_keeps_nothing_alive() -> None:
    refs, _ = trained_refs(lambda opt: rt.guard(opt, max_norm=1.0, check_every=1))
    gc.collect()
    assert all(ref() is None for ref in refs)
    assert not interception._undo  # nothing left guarded: the patches are gone too


def test_a_guard_kept_after_its_optimizer_holds_no_parameter() -> None:
    """The parameters go with the optimizer even while the guard is kept, and the guard can
    still be closed (``clipcheck run`` keeps its guards to the end for their last check)."""
    refs, guard = trained_refs(lambda opt: rt.guard(opt, max_norm=1.0))
    gc.collect()
    assert all(ref() is None for ref in refs)
    assert isinstance(guard, rt.Guard) and guard.steps == 3
    guard.close()


def test_install_frees_each_folds_parameters_before_uninstall() -> None:
    rt.install(check_every=1)
    try:
        for _ in range(3):  # three folds, a new model and optimizer each
            refs, _ = trained_refs()
            gc.collect()
            assert all(ref() is None for ref in refs)
    finally:
        assert rt.uninstall() == 9


def test_closing_keeps_a_later_libraries_patch() -> None:
    model = backbone_and_head()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    guard = rt.guard(opt)
    ours = torch.optim.Optimizer.zero_grad

    def theirs(self, set_to_none=True):
        return ours(self, set_to_none)

    torch.optim.Optimizer.zero_grad = theirs
    try:
        guard.close()
        assert torch.optim.Optimizer.zero_grad is theirs
    finally:
        torch.optim.Optimizer.zero_grad = ours.__wrapped__


def test_guard_stays_a_submodule_name() -> None:
    module = importlib.import_module("clipcheck.runtime.guard")
    assert module.Guard is rt.Guard
    model = backbone_and_head()
    with rt.guard(torch.optim.SGD(model.parameters(), lr=1e-2)) as guard:
        assert isinstance(guard, module.Guard)
