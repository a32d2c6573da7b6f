"""A small classifier training script with three classic mistakes for clipcheck to find."""

import torch
from torch import nn
from torch.nn.utils import clip_grad_norm_

MAX_GRAD_NORM = 1.0


def build(d_in: int = 784, n_classes: int = 10) -> tuple[nn.Module, torch.optim.Optimizer]:
    model = nn.Sequential(nn.Linear(d_in, 256), nn.ReLU(), nn.Linear(256, n_classes))
    params = model.parameters()
    print(f"{sum(p.numel() for p in params):,} parameters")
    optimizer = torch.optim.AdamW(params, lr=3e-4)
    return model, optimizer


def train(model: nn.Module, optimizer: torch.optim.Optimizer, loader, epochs: int = 5) -> None:
    for epoch in range(epochs):
        for images, labels in loader:
            optimizer.zero_grad()
            clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
            loss = nn.functional.cross_entropy(model(images.flatten(1)), labels)
            loss.backward()
            optimizer.step()


def finetune(model: nn.Module, optimizer: torch.optim.Optimizer, loader, accum: int = 4) -> None:
    for i, (images, labels) in enumerate(loader):
        loss = nn.functional.cross_entropy(model(images.flatten(1)), labels) / accum
        loss.backward()
        clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
        if (i + 1) % accum == 0:
            optimizer.step()
            optimizer.zero_grad()
