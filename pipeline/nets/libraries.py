"""torchvision's and timm's classification networks, built for a dataset (``torchvision:NAME``, ``timm:NAME``)."""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Callable
from typing import Any

from torch import nn

from ..errors import CnnpipeError, first_line


def close_names(name: str, known: list[str]) -> str:
    """``; did you mean …?`` with up to three known names close to ``name``, or nothing."""
    near = difflib.get_close_matches(name, known, n=3)
    return f"; did you mean {', '.join(near)}?" if near else ""


# builder arguments some torchvision families need, by builder module: ViTs take the input size
# (default 224); GoogLeNet and Inception v3 without auxiliary heads return plain logits in training
TORCHVISION_ARGS: dict[str, Callable[[int], dict[str, Any]]] = {
    "torchvision.models.vision_transformer": lambda size: {"image_size": size},
    "torchvision.models.googlenet": lambda size: {"aux_logits": False},
    "torchvision.models.inception": lambda size: {"aux_logits": False},
}


def family_args(name: str, size: int) -> dict[str, Any]:
    """The builder arguments torchvision network ``name`` needs at input side ``size`` (TORCHVISION_ARGS)."""
    import torchvision

    family = TORCHVISION_ARGS.get(torchvision.models.get_model_builder(name).__module__)
    return family(size) if family else {}


def torchvision_model(name: str, channels: int, size: int, classes: int) -> tuple[nn.Module, str]:
    import torchvision

    known = torchvision.models.list_models(module=torchvision.models)
    if name not in known:
        raise CnnpipeError(f"unknown torchvision classification model {name!r}{close_names(name, known)}")
    with warnings.catch_warnings():  # inception_v3 and googlenet warn about a future default on every build
        warnings.simplefilter("ignore", FutureWarning)
        try:
            model = torchvision.models.get_model(name, weights=None, num_classes=classes, **family_args(name, size))
        except Exception as e:  # a builder that refuses the input size, e.g. a ViT's patch size
            raise CnnpipeError(f"torchvision could not build {name} for {channels}x{size}x{size} input "
                               f"({type(e).__name__}: {first_line(e)})") from None
    if channels != 3:
        adapt_first_conv(model, channels)
    return model, f"torchvision {torchvision.__version__}"


def adapt_first_conv(model: nn.Module, channels: int) -> None:
    """Replace the first 3-channel convolution by one taking ``channels`` inputs (same geometry)."""
    for parent in model.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, nn.Conv2d) and child.in_channels == 3:
                setattr(parent, child_name, nn.Conv2d(
                    channels, child.out_channels, child.kernel_size, child.stride, child.padding, child.dilation,
                    child.groups if child.groups == 1 else channels, child.bias is not None, child.padding_mode,
                ))
                return
    raise CnnpipeError(f"cannot adapt {type(model).__name__} to {channels}-channel input: no 3-channel convolution")


def timm_model(name: str, channels: int, size: int, classes: int) -> tuple[nn.Module, str]:
    """A timm model for the dataset, built at its size where the model takes ``img_size`` (ViTs, LeViT)."""
    try:
        import timm
    except ImportError:
        raise CnnpipeError('timm is not installed: pip install -e ".[timm]"') from None
    known = timm.list_models()
    if name.partition(".")[0] not in known:
        raise CnnpipeError(f"unknown timm model {name!r}{close_names(name, known)}")
    try:
        model = create_timm(name, size, pretrained=False, num_classes=classes, in_chans=channels)
    except Exception as e:  # a model that refuses the size, e.g. a ViT's patch size
        least = min_timm_size(name)
        raise CnnpipeError(f"timm could not build {name} for {channels}x{size}x{size} input ({type(e).__name__}: "
                           f"{first_line(e)})" + (f"; it takes at least {least}x{least}" if least else "")) from None
    return model, f"timm {timm.__version__}"


def create_timm(name: str, size: int, **args: Any) -> nn.Module:
    """``timm.create_model(name, **args)`` at input side ``size`` where the model takes ``img_size`` (ViTs,
    LeViT; pretrained position embeddings are resampled), as it is where it takes none (a CNN)."""
    import timm

    try:
        return timm.create_model(name, img_size=size, **args)
    except TypeError as e:
        if "img_size" not in str(e):
            raise
        return timm.create_model(name, **args)


def min_timm_size(name: str) -> int | None:
    """The smallest input side timm's pretrained config lists for ``name`` (``min_input_size``), if any."""
    import timm

    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except RuntimeError:
        return None
    least = getattr(cfg, "min_input_size", None) if cfg is not None else None
    return int(least[-1]) if least else None
