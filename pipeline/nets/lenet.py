"""LeNet-5 as in the seed tutorial: padding 2 on the first conv so 28x28 digits fit."""

from __future__ import annotations

import torch
from torch import nn

from cnnpipe.errors import CnnpipeError
from cnnpipe.nets.registry import register


class LeNet5(nn.Module):
    """conv 6@5x5 (pad 2) → pool → conv 16@5x5 → pool → fc 120 → 84 → classes."""

    def __init__(self, channels: int = 1, size: int = 28, num_classes: int = 10):
        super().__init__()
        side = (size // 2 - 4) // 2
        if side < 1:
            raise CnnpipeError(f"lenet5 needs inputs of at least 10x10 pixels, not {size}x{size}")
        self.features = nn.Sequential(
            nn.Conv2d(channels, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Linear(16 * side * side, 120), nn.ReLU(),
            nn.Linear(120, 84), nn.ReLU(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


@register("lenet5", source="LeNet-5 MNIST tutorial", channels=1, size=28, dataset="mnist-sample")
def lenet5(channels: int, size: int, num_classes: int) -> nn.Module:
    return LeNet5(channels, size, num_classes)
