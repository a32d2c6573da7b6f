"""GPU-only checks (skipped without CUDA): the guarded step adds no host-device sync, the
fused-optimizer + GradScaler path is understood, and a guard never closed gives the model's
memory back."""

from __future__ import annotations

import gc

import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA device", allow_module_level=True)

import clipcheck.runtime as rt  # noqa: E402


def make(fused: bool = False):
    torch.manual_seed(0)
    layers = [torch.nn.Linear(256, 1024), torch.nn.GELU(), torch.nn.Linear(1024, 256)]
    model = torch.nn.Sequential(*layers).cuda()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=fused)
    x = torch.randn(64, 256, device="cuda")
    return model, opt, x


def test_guarded_steps_make_no_host_sync() -> None:
    model, opt, x = make()
    with rt.guard(opt, max_norm=1.0, check_every=10_000) as guard:
        for step in range(20):
            if step == 3:  # after warm-up allocations
                torch.cuda.set_sync_debug_mode("error")
            opt.zero_grad(set_to_none=True)
            model(x).square().mean().backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        torch.cuda.set_sync_debug_mode("default")
    assert guard.steps == 20


def test_value_check_makes_no_host_sync() -> None:
    """Grads changed after the clip force the on-device norm check: still no sync per step."""
    model, opt, x = make()
    guard = rt.guard(opt, max_norm=1.0, check_every=10_000)
    for step in range(10):
        if step == 3:
            torch.cuda.set_sync_debug_mode("error")
        opt.zero_grad(set_to_none=True)
        model(x).square().mean().backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        for p in model.parameters():
            p.grad.mul_(0.5)
        opt.step()
    torch.cuda.set_sync_debug_mode("default")
    guard.close()


def test_fused_adam_with_scaler() -> None:
    model, opt, x = make(fused=True)
    scaler = torch.amp.GradScaler("cuda")
    with rt.guard(opt, max_norm=1.0, scaler=scaler, check_every=1) as guard:
        for _ in range(10):
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=torch.float16):
                loss = model(x).float().square().mean()
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            scaler.step(opt)
            scaler.update()
    assert guard.steps == 10


def train_unclosed(steps: int = 3) -> None:
    """A model trained under a guard that is never closed, everything dropped on return."""
    model, opt, x = make()
    rt.guard(opt, max_norm=1.0, check_every=10_000)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        model(x).square().mean().backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()


def test_an_unclosed_guard_gives_the_memory_back() -> None:
    train_unclosed()  # first, what CUDA keeps for good (cuBLAS workspaces): not the guard's
    gc.collect()
    baseline = torch.cuda.memory_allocated()
    train_unclosed()
    gc.collect()
    assert torch.cuda.memory_allocated() == baseline
