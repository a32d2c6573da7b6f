"""Step time of guarded vs unguarded training, measured in the same run.

    python bench/runtime_overhead.py [--rounds N] [--threads T] [--gpu-only]
    python bench/runtime_overhead.py --cost [--baseline REV] [--rounds N]

For each model, blocks of steps run interleaved (baseline, order-only guard, guard with
max_norm), and the script prints the median over rounds of each guarded block's time per step
(on the CPU its median step) divided by the baseline block's next to it. CPU models: a small
MLP and a ~10M-parameter transformer; on a CUDA machine also the MLP and a ~100M-parameter
transformer under autocast (bf16, and fp16 with a GradScaler; fused and foreach AdamW), whose
host-device syncs are then counted unguarded and guarded (``--gpu-only`` skips the CPU models).

``--cost`` measures what the guard adds per step (zero-grad, backward, clip, step), as a fixed
part and a part per parameter tensor, in ``max_norm`` and in order-only mode: models of 2 and
of 256 tiny tensors, each step timed alone, unguarded and guarded (see ``added_us_per_step``).
With ``--baseline REV`` the guard of that git revision (checked out with ``git worktree`` and
imported beside the current one) is measured in the same rounds, and the ratios are printed.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import clipcheck.runtime as rt

Step = Callable[[], None]


def mlp(device: str) -> tuple[torch.nn.Module, Callable[[], torch.Tensor]]:
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 128),
                                torch.nn.ReLU(), torch.nn.Linear(128, 10)).to(device)
    x = torch.randn(32, 64, device=device)
    return model, lambda: model(x).square().mean()


def transformer(device: str, d_model: int, layers: int, tokens: tuple[int, int]) -> tuple[
        torch.nn.Module, Callable[[], torch.Tensor]]:
    layer = torch.nn.TransformerEncoderLayer(d_model, nhead=d_model // 64, dim_feedforward=4 * d_model,
                                             batch_first=True, dropout=0.0)
    model = torch.nn.TransformerEncoder(layer, layers, enable_nested_tensor=False).to(device)
    x = torch.randn(*tokens, d_model, device=device)
    return model, lambda: model(x).square().mean()


def make_step(model: torch.nn.Module, loss: Callable[[], torch.Tensor], opt: torch.optim.Optimizer) -> Step:
    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss().backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return step


def timed_block(step: Step, steps: int, device: str, guard: Callable[[], rt.Guard | None]) -> float:
    """Seconds per step under ``guard``: on the CPU the median step (a stall on a shared
    machine lands in one step, not in the block); on a GPU, whose steps run asynchronously,
    the block's time per step between two synchronizations. The guard's first step, which
    hooks its parameters, is not a per-step cost and is not timed."""
    active = guard()
    step()
    if device == "cuda":
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
        per_step = (time.perf_counter() - start) / steps
    else:
        times = []
        for _ in range(steps):
            begin = time.perf_counter()
            step()
            times.append(time.perf_counter() - begin)
        per_step = statistics.median(times)
    if active is not None:
        active.close()
    return per_step


def measure(name: str, model: torch.nn.Module, opt: torch.optim.Optimizer, step: Step, device: str,
            steps: int, rounds: int, scaler: torch.amp.GradScaler | None = None) -> None:
    """Prints the median over ``rounds`` of each guarded block's time per step divided by the
    unguarded block's of the same round."""
    variants: dict[str, Callable[[], rt.Guard | None]] = {
        "baseline": lambda: None,
        "order only": lambda: rt.guard(opt, max_norm=None, scaler=scaler),
        "max_norm=1.0": lambda: rt.guard(opt, max_norm=1.0, scaler=scaler, check_every=100),
    }
    for _ in range(3):
        step()  # warm-up
    times: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(rounds):
        order = list(variants) if r % 2 == 0 else list(reversed(variants))
        for key in order:
            times[key].append(timed_block(step, steps, device, variants[key]))
    base = times["baseline"]
    params = sum(p.numel() for p in model.parameters())
    line = f"{name:<46} {params / 1e6:7.2f}M params  baseline {statistics.median(base) * 1e3:8.3f} ms/step"
    for key in ("order only", "max_norm=1.0"):
        ratios = [g / b for g, b in zip(times[key], base, strict=True)]
        line += f"  {key}: x{statistics.median(ratios):.3f}"
    print(line, flush=True)


def measure_fp32(name: str, build: Callable[[], tuple[torch.nn.Module, Callable[[], torch.Tensor]]],
                 device: str, steps: int, rounds: int) -> None:
    torch.manual_seed(0)
    model, loss = build()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    measure(name, model, opt, make_step(model, loss, opt), device, steps, rounds)


# Mixed precision on a GPU: (autocast dtype, GradScaler), and the AdamW implementations.
PRECISIONS = {"bf16": (torch.bfloat16, False), "fp16+GradScaler": (torch.float16, True)}
ADAMW_IMPLEMENTATIONS = ("fused", "foreach")


def amp_training(device: str, precision: str, implementation: str) -> tuple[
        torch.nn.Module, torch.optim.Optimizer, torch.amp.GradScaler | None, Step]:
    """A ~100M-parameter transformer trained under autocast, clipped every step (after
    ``scaler.unscale_`` with a GradScaler), with fused or foreach AdamW."""
    dtype, scaled = PRECISIONS[precision]
    torch.manual_seed(0)
    model, loss = transformer(device, 768, 14, (8, 512))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=implementation == "fused",
                            foreach=implementation == "foreach")
    scaler = torch.amp.GradScaler(device) if scaled else None

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=dtype):
            value = loss()
        if scaler is None:
            value.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        else:
            scaler.scale(value).backward()
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            scaler.step(opt)
            scaler.update()
    return model, opt, scaler, step


SYNC_CALLS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize")


def syncs_warned(step: Step, steps: int) -> int:
    """Host-device synchronizations in ``steps`` steps, as ``set_sync_debug_mode("warn")``
    reports them (one warning each)."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for _ in range(steps):
                step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    return sum("synchroniz" in str(w.message) for w in caught)


def syncs_profiled(step: Step, steps: int) -> int:
    """Synchronizing CUDA runtime calls in ``steps`` steps, as the profiler records them."""
    torch.cuda.synchronize()
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as profile:
        for _ in range(steps):
            step()
    torch.cuda.synchronize()
    return sum(1 for event in profile.events() if event.name in SYNC_CALLS)


def count_syncs(opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None, step: Step,
                steps: int = 100, profiled: int = 10) -> str:
    """Syncs unguarded and under each guard: ``steps`` steps in warn mode, then ``profiled``
    steps under the profiler, each with ``check_every`` set to the steps counted, so that the
    one read of the device counter a queued norm check needs falls inside. A guard's first
    step hooks its parameters and is not counted; ``close()`` is outside the count."""
    columns = []
    for label, max_norm in (("unguarded", None), ("order only", None), ("max_norm", 1.0)):
        counts = []
        for count, counted in ((syncs_warned, steps), (syncs_profiled, profiled)):
            active = (rt.guard(opt, max_norm=max_norm, scaler=scaler, check_every=counted)
                      if label != "unguarded" else None)
            step()
            counts.append(count(step, counted))
            if active is not None:
                active.close()
        columns.append(f"{label} {counts[0]}/{counts[1]}")
    return f"syncs in {steps} steps (warn mode) / in {profiled} steps (profiler): " + ", ".join(columns)


def measure_amp(device: str, steps: int, rounds: int) -> None:
    """The ~100M transformer in each precision and AdamW implementation: the overhead of each,
    then (on a GPU) the syncs of each."""
    configurations = [(precision, implementation) for precision in PRECISIONS
                      for implementation in ADAMW_IMPLEMENTATIONS]
    for precision, implementation in configurations:
        model, opt, scaler, step = amp_training(device, precision, implementation)
        measure(f"100M transformer {precision} {implementation} ({device})", model, opt, step, device,
                steps, rounds, scaler=scaler)
    if device != "cuda":
        return
    for precision, implementation in configurations:
        model, opt, scaler, step = amp_training(device, precision, implementation)
        print(f"100M transformer {precision} {implementation}: {count_syncs(opt, scaler, step)}", flush=True)


TENSOR_COUNTS = (2, 256)
MODES = {"max_norm=1.0": 1.0, "order only": None}
ROOT = Path(__file__).resolve().parent.parent
GuardFactory = Callable[..., Any]  # a Guard class: (optimizer, max_norm=..., check_every=...)


def tiny_layers(tensors: int) -> tuple[torch.nn.Module, Callable[[], torch.Tensor]]:
    """Many tiny parameter tensors whose forward and backward cost little per tensor (one
    ``stack``), so that what the guard adds per tensor stands out from the step's own cost."""
    model = torch.nn.ParameterList([torch.nn.Parameter(torch.randn(4)) for _ in range(tensors)])
    params = list(model)
    return model, lambda: torch.stack(params).square().sum()


def added_us_per_step(guards: dict[str, GuardFactory], tensors: int, max_norm: float | None,
                      rounds: int, steps: int = 20) -> dict[str, float]:
    """Microseconds each guard adds to one step of a model with ``tensors`` parameter tensors.

    Each round runs a block of steps unguarded and one under each guard, in an order that
    rotates, each step timed alone; a block counts its median step, and a guard's cost is the
    median over the rounds of its block minus the unguarded block of the same round. On a
    shared machine a stall lands in one step, not in every step of a block, and the blocks
    compared are milliseconds apart, not minutes."""
    torch.manual_seed(0)
    model, loss = tiny_layers(tensors)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    step = make_step(model, loss, opt)
    for _ in range(5):
        step()

    def under(side: str | None) -> Callable[[], Any]:
        return lambda: guards[side](opt, max_norm=max_norm, check_every=100) if side else None

    sides: list[str | None] = [None, *guards]
    differences: dict[str, list[float]] = {name: [] for name in guards}
    for r in range(rounds):
        shift = r % len(sides)
        order = sides[shift:] + sides[:shift]
        times = {side: timed_block(step, steps, "cpu", under(side)) for side in order}
        for name in guards:
            differences[name].append(times[name] - times[None])
    return {name: statistics.median(d) * 1e6 for name, d in differences.items()}


def load_guard(source_root: Path) -> GuardFactory:
    """The ``Guard`` class of the clipcheck at ``source_root``, imported beside the current one
    (its modules are taken out of ``sys.modules`` again, and keep their own globals)."""
    current = {name: module for name, module in sys.modules.items() if name.split(".")[0] == "clipcheck"}
    for name in current:
        del sys.modules[name]
    sys.path.insert(0, str(source_root))
    try:
        guard_class: GuardFactory = importlib.import_module("clipcheck.runtime").Guard
    finally:
        sys.path.remove(str(source_root))
        for name in [n for n in sys.modules if n.split(".")[0] == "clipcheck"]:
            del sys.modules[name]
        sys.modules.update(current)
    return guard_class


def compare_cost(baseline: str | None, rounds: int) -> None:
    """Fixed and per-tensor cost of the guard (and of the one at ``baseline``, in the same
    process), in both modes: the line through the added cost at the smallest and the largest
    model (the fixed part is nearly the cost at 2 tensors, the slope the cost of each tensor
    more)."""
    guards: dict[str, GuardFactory] = {"current": rt.Guard}
    with tempfile.TemporaryDirectory() as folder:
        worktree = Path(folder) / "baseline"
        if baseline is not None:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(worktree),
                            baseline], check=True)
        try:
            if baseline is not None:
                guards[baseline] = load_guard(worktree)
            few, many = TENSOR_COUNTS
            print(f"guard cost per step (cpu, 1 thread; models of {few} and {many} tiny tensors, "
                  f"{rounds} and {max(rounds // 3, 1)} rounds):")
            for mode, max_norm in MODES.items():
                at_few = added_us_per_step(guards, few, max_norm, rounds)
                at_many = added_us_per_step(guards, many, max_norm, max(rounds // 3, 1))
                costs = {}
                for name in guards:
                    per_tensor = (at_many[name] - at_few[name]) / (many - few)
                    costs[name] = (at_few[name] - few * per_tensor, per_tensor)
                    print(f"  {mode:<13} {name:<12} fixed {costs[name][0]:7.1f} us   "
                          f"per tensor {per_tensor:6.2f} us", flush=True)
                if baseline is not None:
                    (f0, t0), (f1, t1) = costs[baseline], costs["current"]
                    print(f"  {mode:<13} ratio current/{baseline}: fixed x{f1 / f0:.2f}   "
                          f"per tensor x{t1 / t0:.2f}", flush=True)
        finally:
            if baseline is not None:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(worktree)],
                               check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=None,
                        help="rounds of interleaved blocks (default 9; with --cost, 60)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cost", action="store_true", help="fixed and per-tensor cost of the guard")
    parser.add_argument("--baseline", default=None, help="with --cost: a git revision to compare against")
    parser.add_argument("--gpu-only", action="store_true", help="skip the CPU models")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.cost:
        compare_cost(args.baseline, args.rounds or 60)
        return
    args.rounds = args.rounds or 9
    print(f"torch {torch.__version__}, {args.threads} thread(s), median of {args.rounds} interleaved rounds")
    if torch.cuda.is_available():
        print(f"device: {torch.cuda.get_device_name()}", flush=True)
    if not args.gpu_only:
        measure_fp32("small MLP (cpu)", lambda: mlp("cpu"), "cpu", 200, args.rounds)
        measure_fp32("10M transformer (cpu)", lambda: transformer("cpu", 384, 6, (2, 64)), "cpu", 5,
                     args.rounds)
    if torch.cuda.is_available():
        measure_fp32("small MLP fp32 (cuda)", lambda: mlp("cuda"), "cuda", 200, args.rounds)
        measure_amp("cuda", 20, args.rounds)
    else:
        print("no CUDA device: the GPU models and the sync counts were skipped")

if __name__ == "__main__":
    main()
