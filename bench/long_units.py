"""Whether one long training function costs time in proportion to its length.

    python bench/long_units.py [--blocks N] [--rounds R]

The 5 MB test in ``tests/test_workers.py`` is made of many small functions; a cost that grows
with the square of one function's length shows only in a long one. Each shape below repeats
one training iteration ``N`` and then ``2 N`` times inside a single function (``--blocks``,
default 800), but the last, which chains ``N`` helpers across the module, each calling the
next (a cost that grows with the square of the depth of calls shows only there); ``clipcheck
check --no-cache`` runs on each file (this working tree's clipcheck, the median of
``--rounds`` runs, default 3). Doubling the length should about
double the time: the bench prints each size's seconds and their ratio, measured in the same
run. A ratio near 4 is a cost that grows with the square of the length (each time includes
clipcheck's start-up, about 0.4 s, which pulls a linear ratio below 2). Progress goes to
standard error, results to standard output.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# One training iteration each, indented for a function's body (``{i}`` makes names its own).
SHAPES: dict[str, str] = {
    "in order": ("    loss{i} = model(x[{i}]).sum()\n    loss{i}.backward()\n"
                 "    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)\n"
                 "    opt.step()\n    opt.zero_grad()\n"),
    "misordered": ("    opt.zero_grad()\n    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)\n"
                   "    loss{i} = model(x[{i}]).sum()\n    loss{i}.backward()\n    opt.step()\n"),
    "branches": ("    if flags[{i}]:\n        loss = model(x[{i}]).sum()\n        loss.backward()\n"
                 "        opt.step()\n    else:\n        opt.zero_grad()\n"),
    "mixed precision": ("    with torch.autocast('cuda'):\n        loss{i} = model(x[{i}]).sum()\n"
                        "    scaler.scale(loss{i}).backward()\n"
                        "    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)\n"
                        "    scaler.step(opt)\n    scaler.update()\n    opt.zero_grad()\n"),
}
HEADER = "import torch\n\nscaler = torch.amp.GradScaler()\n\n\ndef train(model, opt, x, flags):\n"
# One helper per block instead, at the top level, each calling the next; the last trains.
CHAIN = "chain of helpers"
SHAPES[CHAIN] = "\n\ndef helper{i}(opt, loss):\n    helper{next}(opt, loss)\n"
CHAIN_END = "\n\ndef helper{i}(opt, loss):\n    loss.backward()\n    opt.step()\n"


def source(shape: str, blocks: int) -> str:
    """A module whose one function repeats ``shape``'s iteration ``blocks`` times (for the
    chain, whose ``blocks`` helpers each call the next)."""
    if shape == CHAIN:
        helpers = "".join(SHAPES[CHAIN].format(i=i, next=i + 1) for i in range(blocks))
        return "import torch\n" + helpers + CHAIN_END.format(i=blocks)
    return HEADER + "".join(SHAPES[shape].format(i=i) for i in range(blocks))


def seconds(path: Path) -> float:
    """Wall seconds of one cold check of ``path``."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "clipcheck", "check", "--no-cache", "--exit-zero", "-q", str(path)]
    started = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, check=False)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"clipcheck failed on {path} (exit {result.returncode}):\n"
                         f"{result.stderr.decode()[-2000:]}")
    return elapsed


def measure(blocks: int, rounds: int, progress: Callable[[str], None]) -> list[tuple[str, float, float]]:
    """Each shape's median seconds at ``blocks`` and at twice as many."""
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for shape in SHAPES:
            medians = []
            for size in (blocks, 2 * blocks):
                path = Path(folder) / f"{shape.replace(' ', '_')}_{size}.py"
                path.write_text(source(shape, size))
                medians.append(statistics.median(seconds(path) for _ in range(rounds)))
                progress(f"[long_units] {shape}, {size} blocks: {medians[-1]:.2f} s")
            rows.append((shape, medians[0], medians[1]))
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--blocks", type=int, default=800, help="iterations in the shorter function")
    parser.add_argument("--rounds", type=int, default=3, help="runs per file (the median counts)")
    args = parser.parse_args(argv)
    rows = measure(args.blocks, args.rounds, lambda line: print(line, file=sys.stderr, flush=True))
    print(f"{'shape':18s} {args.blocks:>6d} blocks {2 * args.blocks:>6d} blocks   ratio")
    for shape, short, long in rows:
        print(f"{shape:18s} {short:>11.2f} s {long:>11.2f} s   x{long / short:.2f}")
    print("x2 is linear; x4 grows with the square of the function's length")
    return 0


if __name__ == "__main__":
    sys.exit(main())
