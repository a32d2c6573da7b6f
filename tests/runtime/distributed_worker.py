"""Two gloo ranks on CPU run guarded DDP and FSDP2 loops; each case prints one result line.

Run by tests/runtime/test_distributed.py under a hard timeout."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel as DDP

import clipcheck.runtime as rt


def model_and_data(rank: int) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
    torch.manual_seed(100 + rank)
    return model, torch.randn(16, 8) * 10, torch.randn(16, 1) * 10


def train(model, opt, x, y, *, zero=True, clip_first=False, accumulate=1, steps=4) -> None:
    for i in range(steps * accumulate):
        if zero and i % accumulate == 0:
            opt.zero_grad()
        if clip_first:
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        sync = (i + 1) % accumulate == 0
        ctx = model.no_sync() if isinstance(model, DDP) and not sync else torch.enable_grad()
        with ctx:
            torch.nn.functional.mse_loss(model(x), y).backward()
        if sync:
            if not clip_first:
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()


def case(name: str, rank: int, run: Callable[[], None], expected: type[Exception] | None) -> None:
    try:
        run()
        outcome = None
    except rt.GradientOrderError as error:
        outcome = type(error)
    verdict = "ok" if outcome is expected else f"FAIL got {outcome} expected {expected}"
    print(f"rank {rank} {name} {verdict}", flush=True)


def ddp_cases(rank: int) -> None:
    for bucket_view in (False, True):
        def guarded(bucket_view: bool = bucket_view, **kwargs) -> Callable[[], None]:
            def run() -> None:
                model, x, y = model_and_data(rank)
                ddp = DDP(model, gradient_as_bucket_view=bucket_view)
                opt = torch.optim.SGD(ddp.parameters(), lr=0.01)
                with rt.guard(opt, max_norm=1.0, check_every=1):
                    train(ddp, opt, x, y, **kwargs)
            return run

        tag = f"ddp-bucket-view={bucket_view}"
        case(f"{tag}-correct", rank, guarded(), None)
        case(f"{tag}-no-sync-accumulation", rank, guarded(accumulate=2), None)
        case(f"{tag}-missing-zero-grad", rank, guarded(zero=False), rt.MissingZeroGradError)
        case(f"{tag}-clip-before-backward", rank, guarded(clip_first=True), rt.ClipBeforeBackwardError)


def fsdp2_cases(rank: int) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    # On the CPU, also where CUDA is available (a mesh left to its default takes the GPU).
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))

    def run(clip: bool) -> Callable[[], None]:
        def body() -> None:
            model, x, y = model_and_data(rank)
            for layer in model:
                if isinstance(layer, torch.nn.Linear):
                    fully_shard(layer, mesh=mesh)
            fully_shard(model, mesh=mesh)
            opt = torch.optim.SGD(model.parameters(), lr=0.01)
            with rt.guard(opt, max_norm=1.0 if clip else None, check_every=1):
                for _ in range(3):
                    opt.zero_grad()
                    torch.nn.functional.mse_loss(model(x), y).backward()
                    if clip:
                        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                    opt.step()
        return body

    case("fsdp2-correct", rank, run(clip=True), None)
    case("fsdp2-order-only", rank, run(clip=False), None)


def worker(rank: int, world: int, port: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        ddp_cases(rank)
        fsdp2_cases(rank)
        dist.barrier()
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    mp.spawn(worker, args=(2, sys.argv[1]), nprocs=2, join=True)
