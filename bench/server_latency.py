"""How fast the language server answers an editor, measured over stdio with pygls' own client.

    python bench/server_latency.py [--starts N] [--edits N]

1. Start-up, medians of ``--starts`` launches (default 5): from launching the server to its
   answer to ``initialize``, and to the first diagnostics of ``examples/train.py`` opened right
   after ``initialized`` (LibCST imported and the warm-up analysis done by then).
2. Re-analysis of a generated 2,000-line training script (models, data sets, metrics,
   checkpoints, five training loops, one of them clipping before backward), opened once and
   then edited ``--edits`` times (default 20), alternately inside a training loop (the clip
   moved before the backward pass and back: the finding comes and goes) and in model code.
   For each edit: the time from sending ``didChange`` to receiving that version's diagnostics,
   which includes the server's debounce, and the same less the debounce. Then the analysis
   alone, in this process, as the server runs it (``documents.analyse`` after the server's
   warm-up) on the same texts: this is the re-analysis that must stay under 300 ms. Edits
   that leave the finding in the script are reported apart from those that leave it clean:
   a finding costs its positions and its fix.

The server runs as ``python -m clipcheck server`` with this interpreter. Results go to
standard output; nothing here is timed by the tests.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import time
from pathlib import Path

from lsprotocol import types
from pygls.lsp.client import LanguageClient

from clipcheck.server.documents import Part, Snapshot, analyse
from clipcheck.server.lsp import DEBOUNCE_SECONDS, warm_up

ROOT = Path(__file__).resolve().parent.parent
SERVER = [sys.executable, "-m", "clipcheck", "server"]
SMALL = ROOT / "examples" / "train.py"
SCRIPT_LINES = 2000
WAIT = 120.0  # seconds for any one answer before the bench gives up

HEADER = '''"""Training a family of image classifiers: models, data, metrics, checkpoints and loops."""

import argparse
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.cuda.amp import GradScaler, autocast
from torch.nn.utils import clip_grad_norm_
from torch.utils.data import DataLoader, Dataset
'''

# One experiment's models, data and helpers; repeated with other names up to the length wanted.
EXPERIMENT = '''

class Block{i}(nn.Module):
    """A residual block of width {width}."""

    def __init__(self, width: int = {width}, dropout: float = 0.1) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, width * 4)
        self.fc2 = nn.Linear(width * 4, width)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        h = F.gelu(self.fc1(h))
        h = self.dropout(self.fc2(h))
        return x + h


class Net{i}(nn.Module):
    """A stack of Block{i}s with a classification head."""

    def __init__(self, d_in: int = 784, depth: int = 4, n_classes: int = 10) -> None:
        super().__init__()
        self.embed = nn.Linear(d_in, {width})
        self.blocks = nn.ModuleList(Block{i}() for _ in range(depth))
        self.head = nn.Linear({width}, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x.flatten(1))
        for block in self.blocks:
            h = block(h)
        return self.head(h)


class Dataset{i}(Dataset):
    """Synthetic samples for experiment {i}, reproducible from a seed."""

    def __init__(self, size: int = 1024, d_in: int = 784, seed: int = {i}) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.x = torch.randn(size, d_in, generator=generator)
        self.y = torch.randint(0, 10, (size,), generator=generator)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[index], self.y[index]


def loader_{i}(batch_size: int = 64, workers: int = 0) -> DataLoader:
    return DataLoader(Dataset{i}(), batch_size=batch_size, shuffle=True, num_workers=workers)


def accuracy_{i}(logits: torch.Tensor, labels: torch.Tensor, k: int = 1) -> float:
    top = logits.topk(k, dim=-1).indices
    return (top == labels.unsqueeze(-1)).any(dim=-1).float().mean().item()


def save_{i}(model: nn.Module, path: Path, epoch: int, metrics: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({{"model": model.state_dict(), "epoch": epoch, "metrics": metrics}}, path)
    path.with_suffix(".json").write_text(json.dumps(metrics, indent=2))


def cosine_lr_{i}(step: int, total: int, base: float = 3e-4, warmup: int = 100) -> float:
    if step < warmup:
        return base * step / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1.0 + math.cos(math.pi * progress))


@torch.no_grad()
def evaluate_{i}(model: nn.Module, loader: DataLoader) -> dict:
    model.eval()
    total, correct, seen = 0.0, 0.0, 0
    for images, labels in loader:
        logits = model(images)
        total += F.cross_entropy(logits, labels, reduction="sum").item()
        correct += accuracy_{i}(logits, labels) * len(labels)
        seen += len(labels)
    model.train()
    return {{"loss": total / seen, "accuracy": correct / seen}}
'''

LOOPS = '''

def train_plain(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer, epochs: int) -> None:
    for _ in range(epochs):
        for images, labels in loader:
            optimizer.zero_grad()
            loss = F.cross_entropy(model(images), labels)
            loss.backward()
            clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()


def train_amp(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer, epochs: int) -> None:
    scaler = GradScaler()
    for _ in range(epochs):
        for images, labels in loader:
            optimizer.zero_grad()
            with autocast():
                loss = F.cross_entropy(model(images), labels)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            clip_grad_norm_(model.parameters(), 1.0)
            scaler.step(optimizer)
            scaler.update()


def train_accumulated(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer,
                      accum: int = 4) -> None:
    optimizer.zero_grad()
    for i, (images, labels) in enumerate(loader):
        loss = F.cross_entropy(model(images), labels) / accum
        loss.backward()
        if (i + 1) % accum == 0:
            clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad()


def finetune(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer) -> None:
    for images, labels in loader:
        optimizer.zero_grad()
        clip_grad_norm_(model.parameters(), 1.0)
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=3e-4)
    args = parser.parse_args()
    model = Net0()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    train_plain(model, loader_0(), optimizer, args.epochs)
    train_amp(model, loader_0(), optimizer, args.epochs)
    train_accumulated(model, loader_0(), optimizer)
    finetune(model, loader_0(), optimizer)
    print(evaluate_0(model, loader_0()))


if __name__ == "__main__":
    main()
'''
CLIP = "        clip_grad_norm_(model.parameters(), 1.0)\n"
LOSS = "        loss = F.cross_entropy(model(images), labels)\n        loss.backward()\n"
MISTAKE, MENDED = CLIP + LOSS, LOSS + CLIP
MODEL_EDIT = ("dropout: float = 0.1", "dropout: float = 0.2")


def training_script(lines: int = SCRIPT_LINES) -> str:
    """A training script of about ``lines`` lines: experiments' models, data and helpers, then
    the training loops (the last one, ``finetune``, clips before backward)."""
    parts = [HEADER]
    count = HEADER.count("\n") + LOOPS.count("\n")
    while count < lines:
        number = len(parts) - 1
        block = EXPERIMENT.format(i=number, width=128 * (1 + number % 4))
        parts.append(block)
        count += block.count("\n")
    return "".join(parts) + LOOPS


def edited(text: str, number: int) -> str:
    """The script after edit ``number``: odd edits toggle the mistake in ``finetune`` (the
    finding comes and goes), even ones toggle a default in the first model's code."""
    if number % 2:
        return text.replace(MENDED, MISTAKE) if MENDED in text else text.replace(MISTAKE, MENDED)
    old, new = MODEL_EDIT if MODEL_EDIT[0] in text else MODEL_EDIT[::-1]
    return text.replace(old, new, 1)


class Client(LanguageClient):
    """pygls' client, keeping the diagnostics it is sent for the bench to wait on."""

    def __init__(self) -> None:
        super().__init__("clipcheck-bench", "1")
        self.published: asyncio.Queue[types.PublishDiagnosticsParams] = asyncio.Queue()

    async def diagnostics(self, uri: str, version: int | None = None) -> list[types.Diagnostic]:
        while True:
            params = await asyncio.wait_for(self.published.get(), WAIT)
            if params.uri == uri and (version is None or params.version == version):
                return list(params.diagnostics)


def _record(client: Client, params: types.PublishDiagnosticsParams) -> None:
    client.published.put_nowait(params)


async def started(folder: Path) -> tuple[Client, float]:
    """A running, initialized server and the seconds from launch to its ``initialize`` answer."""
    client = Client()
    client.feature(types.TEXT_DOCUMENT_PUBLISH_DIAGNOSTICS)(_record)
    began = time.perf_counter()
    await client.start_io(*SERVER, cwd=str(folder))
    await asyncio.wait_for(client.initialize_async(types.InitializeParams(
        capabilities=types.ClientCapabilities(), root_uri=folder.as_uri())), WAIT)
    answered = time.perf_counter() - began
    client.initialized(types.InitializedParams())
    return client, answered


async def stopped(client: Client) -> None:
    await asyncio.wait_for(client.shutdown_async(None), WAIT)
    client.exit(None)
    await client.stop()


def open_document(client: Client, path: Path, text: str) -> None:
    client.text_document_did_open(types.DidOpenTextDocumentParams(types.TextDocumentItem(
        uri=path.as_uri(), language_id="python", version=1, text=text)))


async def one_start() -> tuple[float, float]:
    """Seconds from launch to the ``initialize`` answer and to the first diagnostics."""
    began = time.perf_counter()
    client, answered = await started(ROOT)
    open_document(client, SMALL, SMALL.read_text())
    await client.diagnostics(SMALL.as_uri())
    first = time.perf_counter() - began
    await stopped(client)
    return answered, first


async def edits(count: int) -> list[tuple[str, float]]:
    """For each edit, the text edited to and the seconds from the edit to its diagnostics."""
    path = ROOT / "bench" / "generated_training_script.py"  # never written: only its name is used
    text = training_script()
    client, _ = await started(ROOT)
    open_document(client, path, text)
    await client.diagnostics(path.as_uri())
    timed = []
    for number in range(1, count + 1):
        text = edited(text, number)
        began = time.perf_counter()
        client.text_document_did_change(types.DidChangeTextDocumentParams(
            types.VersionedTextDocumentIdentifier(uri=path.as_uri(), version=number + 1),
            [types.TextDocumentContentChangeWholeDocument(text=text)]))
        await client.diagnostics(path.as_uri(), number + 1)
        timed.append((text, time.perf_counter() - began))
    await stopped(client)
    return timed


def in_process(texts: list[str]) -> list[float]:
    """Seconds of each analysis as the server runs it, after the server's warm-up."""
    warm_up()
    path = ROOT / "bench" / "generated_training_script.py"
    seconds = []
    for text in texts:
        snapshot = Snapshot(path.as_uri(), path, (Part(path.as_uri(), text, None),))
        began = time.perf_counter()
        analyse(snapshot)
        seconds.append(time.perf_counter() - began)
    return seconds


def summary(name: str, seconds: list[float]) -> str:
    ms = sorted(s * 1000 for s in seconds)
    p90 = ms[min(len(ms) - 1, round(0.9 * (len(ms) - 1)))]
    return (f"{name}: median {statistics.median(ms):.0f} ms, p90 {p90:.0f} ms, max {ms[-1]:.0f} ms "
            f"(n={len(ms)})")


def report_edits(timed: list[tuple[str, float]]) -> None:
    """The edits' timings, apart for the texts that keep the finding and those without one
    (only a finding makes the analysis compute positions and a fix)."""
    analysed = in_process([text for text, _ in timed])
    for name, wanted in (("with the finding", True), ("without a finding", False)):
        kept = [i for i, (text, _) in enumerate(timed) if (MISTAKE in text) is wanted]
        stdio = [timed[i][1] for i in kept]
        print(f"  edits leaving the script {name}:")
        print("    " + summary("edit to diagnostics over stdio", stdio))
        print("    " + summary(f"the same less the {DEBOUNCE_SECONDS * 1000:.0f} ms debounce",
                               [s - DEBOUNCE_SECONDS for s in stdio]))
        print("    " + summary("analysis alone, in-process", [analysed[i] for i in kept]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--starts", type=int, default=5)
    parser.add_argument("--edits", type=int, default=20)
    args = parser.parse_args()
    load = ", ".join(f"{n:.1f}" for n in os.getloadavg())
    print(f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores, load average {load}, "
          f"Python {platform.python_version()}, server: {' '.join(SERVER)}", flush=True)
    starts = [asyncio.run(one_start()) for _ in range(args.starts)]
    print(summary("start-up to the initialize answer", [s[0] for s in starts]))
    print(summary(f"start-up to the first diagnostics of {SMALL.relative_to(ROOT)}", [s[1] for s in starts]))
    text = training_script()
    print(f"re-analysis of a {text.count(chr(10))}-line training script ({len(text):,} characters):")
    report_edits(asyncio.run(edits(args.edits)))


if __name__ == "__main__":
    main()
