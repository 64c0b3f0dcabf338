"""VGG11 with BatchNorm and the CIFAR ResNet18, as in kuangliu/pytorch-cifar."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CnnpipeError
from .registry import SGD_RECIPE, register

VGG11 = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]


class VGG(nn.Module):
    """3x3 conv + BatchNorm + ReLU blocks with max-pools; the 512-channel 1x1 map feeds one fc."""

    def __init__(self, channels: int, size: int, num_classes: int, cfg: list = VGG11):
        super().__init__()
        pools = cfg.count("M")
        if size >> pools < 1 or size % (1 << pools):
            raise CnnpipeError(f"vgg11-bn needs square inputs whose side is a multiple of {1 << pools} (e.g. 32), not {size}")
        layers: list[nn.Module] = []
        cin = channels
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(cin, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                cin = v
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1))
        self.classifier = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """CIFAR ResNet18: 3x3 stem, no max-pool, BasicBlock [2,2,2,2], global average pool."""

    def __init__(self, channels: int, size: int, num_classes: int):
        super().__init__()
        if size < 8:
            raise CnnpipeError(f"resnet18 needs inputs of at least 8x8 pixels, not {size}x{size}")
        self.conv1 = nn.Conv2d(channels, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        layers = []
        cin = 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers.append(nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


register("vgg11-bn", source="VGG11 with BatchNorm, kuangliu/pytorch-cifar", channels=3, size=32,
         dataset="cifar10", recipe=SGD_RECIPE)(VGG)
register("resnet18", source="CIFAR ResNet18, kuangliu/pytorch-cifar", channels=3, size=32,
         dataset="cifar10", recipe=SGD_RECIPE)(ResNet18)
