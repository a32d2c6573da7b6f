"""Step time of guarded vs unguarded training, measured in the same run.

    python bench/runtime_overhead.py [--rounds N] [--threads T]

For each model, blocks of steps run interleaved (baseline, order-only guard, guard with
max_norm), and the script prints the median over rounds of each guarded block's time divided
by the baseline block's time next to it. CPU models: a small MLP and a ~10M-parameter
transformer; on a CUDA machine also a ~100M-parameter transformer, checked for zero host syncs
per guarded step.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
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
