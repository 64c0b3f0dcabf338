"""Optimizers and learning-rate schedules by name, stepped once per training step."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import CnnpipeError
from ..options.fields import OPTIMIZERS, SCHEDULES


def make_optimizer(
    model: nn.Module, name: str, lr: float, weight_decay: float, momentum: float, nesterov: bool
) -> torch.optim.Optimizer:
    """Adam, AdamW or SGD (momentum, Nesterov); fused kernels where the device has them."""
    params = [p for p in model.parameters() if p.requires_grad]  # a frozen backbone is left out
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
    if name == "sgd":
        if nesterov and momentum <= 0:
            raise CnnpipeError("--nesterov needs a positive --momentum")
        fused = params[0].is_cuda  # one multi-tensor kernel per step on CUDA
        return torch.optim.SGD(
            params, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay, fused=fused or None
        )
    raise CnnpipeError(f"unknown optimizer {name!r}; use {', '.join(OPTIMIZERS)}")


def make_schedule(
    optimizer: torch.optim.Optimizer,
    name: str,
    lr: float,
    steps_per_epoch: int,
    epochs: int,
    warmup_epochs: float,
    step_size: int,
    gamma: float,
) -> torch.optim.lr_scheduler.LRScheduler:
    """A per-step schedule: linear warm-up, then constant, step decay or cosine; or OneCycle."""
    total = steps_per_epoch * epochs
    warmup = min(int(round(warmup_epochs * steps_per_epoch)), total - 1)
    if name == "onecycle":
        pct = warmup / total if warmup else 0.25
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=total, pct_start=max(pct, 1e-3))
    if name not in SCHEDULES:
        raise CnnpipeError(f"unknown schedule {name!r}; use {', '.join(SCHEDULES)}")

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if name == "step":
            return gamma ** (step // (step_size * steps_per_epoch))
        if name == "cosine":
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
