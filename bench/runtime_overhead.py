"""Step time of guarded vs unguarded training, measured in the same run.

    python bench/runtime_overhead.py [--rounds N] [--threads T]
    python bench/runtime_overhead.py --cost [--baseline REV] [--rounds N]

For each model, blocks of steps run interleaved (baseline, order-only guard, guard with
max_norm), and the script prints the median over rounds of each guarded block's time divided
by the baseline block's time next to it. CPU models: a small MLP and a ~10M-parameter
transformer; on a CUDA machine also a ~100M-parameter transformer, checked for zero host syncs
per guarded step.

``--cost`` measures what the guard adds per step (zero-grad, backward, clip, step), as a fixed
part and a part per parameter tensor, in ``max_norm`` and in order-only mode: models of 2 and
of 256 tiny tensors, each step timed alone, unguarded and guarded (see ``added_us_per_step``).
With ``--baseline REV`` the same measurement runs, interleaved, against the guard of that git
revision (checked out with ``git worktree``), and the ratios are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

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
    active = guard()
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    if active is not None:
        active.close()
    return elapsed / steps


def measure(name: str, build: Callable[[], tuple[torch.nn.Module, Callable[[], torch.Tensor]]],
            device: str, steps: int, rounds: int) -> None:
    torch.manual_seed(0)
    model, loss = build()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    step = make_step(model, loss, opt)
    variants: dict[str, Callable[[], rt.Guard | None]] = {
        "baseline": lambda: None,
        "order only": lambda: rt.guard(opt, max_norm=None),
        "max_norm=1.0": lambda: rt.guard(opt, max_norm=1.0, check_every=100),
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
    line = f"{name:<28} {params / 1e6:7.2f}M params  baseline {statistics.median(base) * 1e3:8.3f} ms/step"
    for key in ("order only", "max_norm=1.0"):
        ratios = [g / b for g, b in zip(times[key], base, strict=True)]
        line += f"  {key}: x{statistics.median(ratios):.3f}"
    print(line, flush=True)


def syncs_per_step(device: str) -> None:
    model, loss = transformer(device, 768, 12, (8, 128))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    step = make_step(model, loss, opt)
    for _ in range(3):
        step()
    with rt.guard(opt, max_norm=1.0, check_every=10_000):
        torch.cuda.set_sync_debug_mode("error")
        try:
            for _ in range(10):
                step()
            print("cuda: 10 guarded steps ran with set_sync_debug_mode('error'): 0 syncs per step")
        finally:
            torch.cuda.set_sync_debug_mode("default")


TENSOR_COUNTS = (2, 256)
ROOT = Path(__file__).resolve().parent.parent


def tiny_layers(tensors: int) -> tuple[torch.nn.Module, Callable[[], torch.Tensor]]:
    """Many tiny parameter tensors whose forward and backward cost little per tensor (one
    ``stack``), so that what the guard adds per tensor stands out from the step's own cost."""
    model = torch.nn.ParameterList([torch.nn.Parameter(torch.randn(4)) for _ in range(tensors)])
    params = list(model)
    return model, lambda: torch.stack(params).square().sum()


def added_us_per_step(tensors: int, max_norm: float | None, pairs: int, steps: int = 20) -> float:
    """Microseconds the guard adds to one step of a model with ``tensors`` parameter tensors.

    Blocks of steps run in pairs (unguarded, guarded; which goes first alternates), each step
    timed alone; a block counts its median step, and the result is the median over the pairs
    of the guarded block's minus the unguarded one's. On a shared machine a stall lands in one
    step, not in every step of a block, so medians of single steps stay put where block
    totals do not."""
    torch.manual_seed(0)
    model, loss = tiny_layers(tensors)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    step = make_step(model, loss, opt)
    for _ in range(5):
        step()
    clock = time.perf_counter_ns

    def block(guarded: bool) -> float:
        guard = rt.Guard(opt, max_norm=max_norm, check_every=100) if guarded else None
        step()  # the guard's first step syncs its parameters: not a per-step cost
        times = []
        for _ in range(steps):
            start = clock()
            step()
            times.append(clock() - start)
        if guard is not None:
            guard.close()
        return statistics.median(times)

    differences = []
    for i in range(pairs):
        if i % 2:
            plain, guarded = block(False), block(True)
        else:
            guarded, plain = block(True), block(False)
        differences.append(guarded - plain)
    return statistics.median(differences) / 1e3


def fixed_and_per_tensor(max_norm: float | None) -> tuple[float, float]:
    """The line through the added cost at the smallest and the largest model: the fixed part
    is nearly the cost at 2 tensors, the slope the cost of each tensor more."""
    few, many = TENSOR_COUNTS
    at_few = added_us_per_step(few, max_norm, pairs=60)
    at_many = added_us_per_step(many, max_norm, pairs=20)
    per_tensor = (at_many - at_few) / (many - few)
    return at_few - few * per_tensor, per_tensor


MODES = {"max_norm=1.0": 1.0, "order only": None}
Cost = dict[str, tuple[float, float]]  # mode -> (fixed us, us per tensor)


def cost_of(source_root: Path) -> Cost:
    """The guard's cost as the clipcheck at ``source_root`` measures it, in a fresh process."""
    env = {**os.environ, "PYTHONPATH": str(source_root)}
    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--cost-json"], env=env,
                         cwd=source_root, capture_output=True, text=True, check=True).stdout
    measured = json.loads(out.strip().splitlines()[-1])
    return {mode: (fixed, per_tensor) for mode, (fixed, per_tensor) in measured.items()}


def compare_cost(baseline: str | None, rounds: int) -> None:
    sides: dict[str, list[Cost]] = {"current": []}
    with tempfile.TemporaryDirectory() as folder:
        worktree = Path(folder) / "baseline"
        if baseline is not None:
            sides[baseline] = []
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(worktree),
                            baseline], check=True)
        try:
            for r in range(rounds):
                order = list(sides) if r % 2 == 0 else list(reversed(sides))
                for side in order:
                    sides[side].append(cost_of(ROOT if side == "current" else worktree))
        finally:
            if baseline is not None:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(worktree)],
                               check=False)
    print(f"guard cost per step (cpu, 1 thread, median of {rounds} rounds; tensors {TENSOR_COUNTS}):")
    for mode in MODES:
        medians = {side: (statistics.median(run[mode][0] for run in runs),
                          statistics.median(run[mode][1] for run in runs)) for side, runs in sides.items()}
        for side, (fixed, per_tensor) in medians.items():
            print(f"  {mode:<13} {side:<12} fixed {fixed:7.1f} us   per tensor {per_tensor:6.2f} us")
        if baseline is not None:
            (f0, t0), (f1, t1) = medians[baseline], medians["current"]
            print(f"  {mode:<13} ratio current/{baseline}: fixed x{f1 / f0:.2f}   per tensor x{t1 / t0:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cost", action="store_true", help="fixed and per-tensor cost of the guard")
    parser.add_argument("--baseline", default=None, help="with --cost: a git revision to compare against")
    parser.add_argument("--cost-json", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.cost_json:
        print(json.dumps({mode: fixed_and_per_tensor(max_norm) for mode, max_norm in MODES.items()}))
        return
    if args.cost:
        compare_cost(args.baseline, args.rounds)
        return
    print(f"torch {torch.__version__}, {args.threads} thread(s), median of {args.rounds} interleaved rounds")
    measure("small MLP (cpu)", lambda: mlp("cpu"), "cpu", 200, args.rounds)
    measure("10M transformer (cpu)", lambda: transformer("cpu", 384, 6, (2, 64)), "cpu", 5, args.rounds)
    if torch.cuda.is_available():
        measure("small MLP (cuda)", lambda: mlp("cuda"), "cuda", 200, args.rounds)
        measure("100M transformer (cuda)", lambda: transformer("cuda", 768, 12, (8, 512)), "cuda", 20,
                args.rounds)
        syncs_per_step("cuda")
    else:
        print("no CUDA device: the GPU model and the sync check were skipped")


if __name__ == "__main__":
    main()
