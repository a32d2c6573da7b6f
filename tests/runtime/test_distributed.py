"""DDP and FSDP2 on two gloo ranks (CPU), in a subprocess under a hard timeout."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
torch_distributed = pytest.importorskip("torch.distributed")

CASES = [
    f"ddp-bucket-view={view}-{name}" for view in (False, True)
    for name in ("correct", "no-sync-accumulation", "missing-zero-grad", "clip-before-backward")
] + ["fsdp2-correct", "fsdp2-order-only"]


def free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


@pytest.mark.skipif(not torch_distributed.is_available(), reason="torch.distributed is not built")
def test_ddp_and_fsdp2_on_two_ranks() -> None:
    worker = Path(__file__).with_name("distributed_worker.py")
    try:
        result = subprocess.run([sys.executable, str(worker), free_port()], capture_output=True,
                                text=True, timeout=240, check=False)
    except subprocess.TimeoutExpired as expired:
        pytest.fail(f"the two-rank run hung: {expired.stdout!r} {expired.stderr!r}")
    # Both ranks share stdout, so their lines may interleave: look for each verdict as text.
    missing = [f"rank {r} {c} ok" for r in (0, 1) for c in CASES if f"rank {r} {c} ok" not in result.stdout]
    assert not missing, result.stdout + result.stderr[-3000:]
