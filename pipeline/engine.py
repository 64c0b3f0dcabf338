"""The hot loops: one training epoch and batched inference over device-resident uint8 images."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from cnnpipe.data.loading import normalize


class Progress(Protocol):
    """What a training loop reports; the CLI renders it as a progress bar."""

    def start_epoch(self, epoch: int, epochs: int, steps: int) -> None: ...
    def advance(self, steps: int, images: int, loss: float, accuracy: float) -> None: ...
    def end_epoch(self, record: dict) -> None: ...


@dataclass
class EpochStats:
    loss: float
    accuracy: float
    images: int
    seconds: float
    first_step_s: float


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    mean: list[float],
    std: list[float],
    batch_size: int,
    generator: torch.Generator,
    drop_last: bool,
    progress: Progress | None = None,
    report_every: int = 20,
) -> EpochStats:
    """One pass over shuffled device-resident data; syncs with the device every ``report_every`` steps."""
    model.train()
    n = len(images)
    order = torch.randperm(n, generator=generator).to(images.device)
    stop = n - n % batch_size if drop_last else n
    loss_sum = torch.zeros((), device=images.device)
    correct = torch.zeros((), device=images.device, dtype=torch.long)
    seen = steps_since = 0
    start = time.perf_counter()
    first_step_s = 0.0
    for i in range(0, stop, batch_size):
        idx = order[i : i + batch_size]
        x = normalize(images[idx], mean, std)
        y = labels[idx]
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach() * len(y)
        correct += (logits.argmax(1) == y).sum()
        seen += len(y)
        steps_since += 1
        if i == 0:
            first_step_s = time.perf_counter() - start
        if progress is not None and (steps_since == report_every or i + batch_size >= stop):
            progress.advance(steps_since, seen, loss_sum.item() / seen, correct.item() / seen)
            steps_since = 0
    total = loss_sum.item() / max(seen, 1)
    return EpochStats(total, correct.item() / max(seen, 1), seen, time.perf_counter() - start, first_step_s)


@torch.no_grad()
def batched_logits(
    model: nn.Module,
    images: torch.Tensor,
    mean: list[float],
    std: list[float],
    batch_size: int,
    device: torch.device,
) -> torch.Tensor:
    """float32 logits (on the CPU) for uint8 images, normalized batch by batch on ``device``."""
    model.eval()
    out = []
    for i in range(0, len(images), batch_size):
        x = normalize(images[i : i + batch_size].to(device, non_blocking=True), mean, std)
        out.append(model(x).float().cpu())
    return torch.cat(out) if out else torch.empty(0)
