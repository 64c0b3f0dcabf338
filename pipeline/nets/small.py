"""The small networks of the seed tutorials, each adapting to channels, size and classes."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import CnnpipeError
from .registry import SMALL_NET_RECIPE, register


def _side(size: int, steps: list[tuple[int, int]], name: str, minimum: int) -> int:
    """Spatial side after ``(conv_shrink, pool)`` steps; a clear error when the input is too small."""
    side = size
    for shrink, pool in steps:
        side = (side - shrink) // pool
    if side < 1:
        raise CnnpipeError(f"{name} needs inputs of at least {minimum}x{minimum} pixels, not {size}x{size}")
    return side


class LeNet5(nn.Module):
    """LeNet-5: conv 6@5x5 (pad 2) → pool → conv 16@5x5 → pool → fc 120 → 84 → classes."""

    def __init__(self, channels: int, size: int, num_classes: int):
        super().__init__()
        side = _side(size, [(0, 2), (4, 2)], "lenet5", 10)
        self.features = nn.Sequential(
            nn.Conv2d(channels, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Linear(16 * side * side, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


class TutorialCNN(nn.Module):
    """The PyTorch CIFAR-10 tutorial net: conv 6@5x5 → pool → conv 16@5x5 → pool → fc 120 → 84."""

    def __init__(self, channels: int, size: int, num_classes: int):
        super().__init__()
        side = _side(size, [(4, 2), (4, 2)], "tutorial-cnn", 14)
        self.features = nn.Sequential(
            nn.Conv2d(channels, 6, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Linear(16 * side * side, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


class SimpleNet(nn.Module):
    """conv 16@3x3 (pad 1) → pool → conv 32@3x3 (pad 1) → pool → one fc."""

    def __init__(self, channels: int, size: int, num_classes: int):
        super().__init__()
        side = _side(size, [(0, 2), (0, 2)], "simplenet", 4)
        self.features = nn.Sequential(
            nn.Conv2d(channels, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.fc = nn.Linear(32 * side * side, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.features(x), 1))


class FC2Layer(nn.Module):
    """The fully connected baseline: input → n_hidden → n_hidden → classes (logits, no log-softmax)."""

    def __init__(self, channels: int, size: int, num_classes: int, n_hidden: int = 8):
        super().__init__()
        self.network = nn.Sequential(
            nn.Flatten(), nn.Linear(channels * size * size, n_hidden), nn.ReLU(),
            nn.Linear(n_hidden, n_hidden), nn.ReLU(), nn.Linear(n_hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)


class SmallCNN(nn.Module):
    """The parameter-matched CNN: conv n@5x5 → pool → conv n@5x5 → pool → fc 50 → classes."""

    def __init__(self, channels: int, size: int, num_classes: int, n_feature: int = 6):
        super().__init__()
        side = _side(size, [(4, 2), (4, 2)], "cnn-small", 16)
        self.features = nn.Sequential(
            nn.Conv2d(channels, n_feature, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(n_feature, n_feature, 5), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Linear(n_feature * side * side, 50), nn.ReLU(), nn.Linear(50, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


class CNN3(nn.Module):
    """Three blocks of 5x5 convs (pad 2): 16 → pool → 32, 32 → pool → 64 → fc."""

    def __init__(self, channels: int, size: int, num_classes: int):
        super().__init__()
        side = _side(size, [(0, 2), (0, 2)], "cnn3", 4)
        self.features = nn.Sequential(
            nn.Conv2d(channels, 16, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 5, padding=2), nn.ReLU(), nn.Conv2d(32, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(),
        )
        self.fc = nn.Linear(64 * side * side, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.features(x), 1))


class DropoutCNN(nn.Module):
    """conv 32 → 64 → 128 (3x3, pad 1, each pooled), dropout 0.25, fc 256, dropout, fc."""

    def __init__(self, channels: int, size: int, num_classes: int, p: float = 0.25):
        super().__init__()
        side = _side(size, [(0, 2), (0, 2), (0, 2)], "dropout-cnn", 8)
        layers: list[nn.Module] = []
        for cin, cout in ((channels, 32), (32, 64), (64, 128)):
            layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        self.features = nn.Sequential(*layers, nn.Dropout(p))
        self.classifier = nn.Sequential(
            nn.Linear(128 * side * side, 256), nn.ReLU(), nn.Dropout(p), nn.Linear(256, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


MNIST = {"channels": 1, "size": 28, "dataset": "mnist-sample", "recipe": SMALL_NET_RECIPE}
CIFAR = {"channels": 3, "size": 32, "dataset": "cifar10", "recipe": SMALL_NET_RECIPE}

register("lenet5", source="LeNet-5 MNIST tutorial (padding 2 for 28x28)", **MNIST)(LeNet5)
register("tutorial-cnn", source="PyTorch 'Training a classifier' CIFAR-10 tutorial", **CIFAR)(TutorialCNN)
register("simplenet", source="SimpleNet CIFAR-10 tutorial", **CIFAR)(SimpleNet)
register("fc2", source="FC2Layer(n_hidden=8), the parameter-matched MLP of the convnet tutorial", **MNIST)(FC2Layer)
register("cnn-small", source="CNN(n_feature=6), the parameter-matched convnet tutorial", **MNIST)(SmallCNN)
register("cnn3", source="3-block CNN MNIST tutorial (16 | 32,32 | 64, 5x5)", **MNIST)(CNN3)
register("dropout-cnn", source="dropout CNN MNIST tutorial (32-64-128 3x3, dropout 0.25)", **MNIST)(DropoutCNN)
