"""The hot loops: one training epoch and batched inference over device-resident uint8 images."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from ..data.batches import augment, cutout
from ..data.loading import normalize


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
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    mean: list[float],
    std: list[float],
    augmentation: dict[str, Any],
    generator: torch.Generator,
    progress: Progress | None = None,
    schedule: torch.optim.lr_scheduler.LRScheduler | None = None,
    label_smoothing: float = 0.0,
    grad_clip: float | None = None,
    bf16: bool = False,
    report_every: int = 20,
    cutout_size: int = 0,
) -> EpochStats:
    """One pass over uint8 batches, augmented and normalized on their device.

    ``cutout_size`` blanks a random square of each normalized image. The schedule steps once per batch;
    the loss and accuracy are summed on the device and read back only every ``report_every`` steps or
    once a second (the bar moves at least that often), so the device is not synchronised per step.
    """
    model.train()
    loss_sum = correct = None
    seen = steps_since = 0
    start = reported = time.perf_counter()
    first_step_s = 0.0
    for step, (images, y) in enumerate(batches):
        x = normalize(augment(images, augmentation["crop_padding"], augmentation["flip"], generator), mean, std)
        if cutout_size:
            x = cutout(x, cutout_size, generator)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(x.contiguous(memory_format=torch.channels_last))
            loss = F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        if schedule is not None:
            schedule.step()
        batch_loss = loss.detach() * len(y)
        batch_correct = (logits.argmax(1) == y).sum()
        loss_sum = batch_loss if loss_sum is None else loss_sum + batch_loss
        correct = batch_correct if correct is None else correct + batch_correct
        seen += len(y)
        steps_since += 1
        if step == 0:
            first_step_s = time.perf_counter() - start
        if progress is not None and (steps_since == report_every or time.perf_counter() - reported >= 1.0):
            progress.advance(steps_since, seen, loss_sum.item() / seen, correct.item() / seen)
            steps_since, reported = 0, time.perf_counter()
    if seen == 0 or loss_sum is None or correct is None:
        return EpochStats(float("nan"), 0.0, 0, time.perf_counter() - start, first_step_s)
    total_loss, total_correct = loss_sum.item() / seen, correct.item() / seen
    if progress is not None and steps_since:
        progress.advance(steps_since, seen, total_loss, total_correct)
    return EpochStats(total_loss, total_correct, seen, time.perf_counter() - start, first_step_s)


@torch.no_grad()
def batched_logits(
    model: nn.Module,
    images: torch.Tensor,
    mean: list[float],
    std: list[float],
    batch_size: int,
    device: torch.device,
    bf16: bool = False,
) -> torch.Tensor:
    """float32 logits (on the CPU) for uint8 images, normalized batch by batch on ``device``."""
    model.eval()
    out = []
    for i in range(0, len(images), batch_size):
        x = normalize(images[i : i + batch_size].to(device, non_blocking=True), mean, std)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out.append(model(x.contiguous(memory_format=torch.channels_last)).float().cpu())
    return torch.cat(out) if out else torch.empty(0)
