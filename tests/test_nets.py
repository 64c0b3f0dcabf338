"""The registry: the seeds' parameter counts, adaptation to other inputs, clear refusals."""

from __future__ import annotations

import pytest
import torch

from cnnpipe.errors import CnnpipeError
from cnnpipe.nets.registry import build, net_names, param_count

SEED_COUNTS = {
    ("lenet5", 1, 28): 61_706,
    ("tutorial-cnn", 3, 32): 62_006,
    ("simplenet", 3, 32): 25_578,
    ("fc2", 1, 28): 6_442,
    ("cnn-small", 1, 28): 6_422,
    ("cnn3", 1, 28): 121_514,
    ("dropout-cnn", 1, 28): 390_410,
    ("vgg11-bn", 3, 32): 9_231_114,
    ("resnet18", 3, 32): 11_173_962,
}


def test_every_registered_network_is_pinned():
    assert sorted(name for name, _, _ in SEED_COUNTS) == net_names()


@pytest.mark.parametrize("name, channels, size", list(SEED_COUNTS))
def test_parameter_counts_match_the_seeds(name: str, channels: int, size: int):
    model = build(name, channels, size, 10)
    assert param_count(model) == SEED_COUNTS[(name, channels, size)]
    out = model.eval()(torch.zeros(2, channels, size, size))
    assert out.shape == (2, 10)


@pytest.mark.parametrize("name", net_names())
def test_networks_adapt_to_rgb_32_and_to_three_classes(name: str):
    out = build(name, 3, 32, 3).eval()(torch.zeros(1, 3, 32, 32))
    assert out.shape == (1, 3)


@pytest.mark.parametrize("name, size", [("vgg11-bn", 28), ("lenet5", 8), ("cnn-small", 12), ("resnet18", 4)])
def test_inputs_a_network_cannot_take_are_refused_clearly(name: str, size: int):
    with pytest.raises(CnnpipeError, match=f"{name} needs"):
        build(name, 1, size, 10)


def test_a_network_name_registered_twice_fails():
    from cnnpipe.nets.registry import register

    with pytest.raises(ValueError, match="'lenet5' is already registered"):
        register("lenet5", source="test", channels=1, size=28, dataset="mnist", recipe={})(lambda c, s, n: None)
