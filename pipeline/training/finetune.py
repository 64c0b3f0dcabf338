"""Fine-tuning: start from other weights, re-initialise the head, freeze the backbone.

The head is the module that produces the logits: the last module with parameters whose
output, on a batch of 2, has the shape of the logits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CnnpipeError
from ..nets.modelfile import WEIGHTS, read_safetensors, read_state
from ..nets.pretrained import Pretrained, load_pretrained
from ..nets.sources import parse
from ..options.training import TrainConfig
from ..store.workspace import Workspace

WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")  # an --init-from that names a file, not a version


def find_head(model: nn.Module, example: torch.Tensor) -> str:
    """The name of the module that produces ``model``'s logits."""
    produced: list[str] = []
    hooks = [
        module.register_forward_hook(lambda _m, _i, out, name=name: produced.append(name))
        for name, module in model.named_modules()
        if name and any(True for _ in module.parameters(recurse=False))
    ]
    was_training = model.training
    try:
        with torch.no_grad():
            logits = model.eval()(example)
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    modules = dict(model.named_modules())
    for name in reversed(produced):
        weight = getattr(modules[name], "weight", None)
        if isinstance(weight, torch.Tensor) and weight.shape[0] == logits.shape[1]:
            return name
    raise CnnpipeError("cannot find the module that produces the logits (no layer with one output per class)")


def initial_state(ref: str, root: Path) -> dict[str, torch.Tensor]:
    """The weights ``--init-from`` names: a model version in the store, or a weights file."""
    path = Path(ref)
    if path.is_file():
        return read_state(path)
    if not path.exists() and (path.suffix in WEIGHT_SUFFIXES or "/" in ref):
        raise CnnpipeError(f"--init-from {ref}: no such file (give a weights file that exists, or a model version "
                           "NAME, NAME@vN)")
    version = Workspace(root).models.resolve(ref)
    version.rehash()
    return read_safetensors(version.file(WEIGHTS))


def apply_init(model: nn.Module, state: dict[str, Any], head: str | None, where: str, reset: bool = True) -> None:
    """Load ``state`` into ``model``; with ``reset`` the parameters of ``head`` are left freshly initialised,
    without it a head of another shape is a usage error giving both shapes and the fix."""
    from ..nets.modelfile import load_state

    own = model.state_dict()
    if not reset or head is None:
        heads = sorted((k for k in state.keys() & own.keys() if head and k.startswith(head + ".")),
                       key=lambda k: (not k.endswith(".weight"), k))
        for key in heads:
            if tuple(state[key].shape) != tuple(own[key].shape):
                raise CnnpipeError(f"{where}: {key} is {list(state[key].shape)} in the file and {list(own[key].shape)} "
                                   "here: add --reset-head")
        load_state(model, state, where, shown=10)
        return
    kept = {k: v for k, v in state.items() if not k.startswith(head + ".")}
    load_state(model, kept | {k: v for k, v in own.items() if k.startswith(head + ".")}, where, shown=10)


def freeze_all_but(model: nn.Module, head: str) -> int:
    """Stop gradients everywhere but in ``head``; returns the parameters left trainable."""
    trainable = 0
    for name, param in model.named_parameters():
        param.requires_grad = name.startswith(head + ".")
        trainable += param.numel() if param.requires_grad else 0
    return trainable


def fine_tune(model: nn.Module, cfg: TrainConfig, root: Path,
              example: torch.Tensor) -> tuple[str | None, Pretrained | None]:
    """``--pretrained``/``--weights``, ``--init-from``, ``--reset-head`` and ``--freeze-backbone``: what was
    done, naming the head, and the published weights started from."""
    if not (cfg.init_from or cfg.freeze_backbone or cfg.starts_pretrained):
        return None, None
    try:
        head: str | None = find_head(model, example)
    except CnnpipeError:  # only --init-from without --reset-head does without a head (it names one in errors)
        if cfg.reset_head or cfg.freeze_backbone or cfg.starts_pretrained:
            raise
        head = None
    done, pretrained = [], None
    if cfg.starts_pretrained:
        state, pretrained = load_pretrained(parse(cfg.arch), cfg.weights, example.shape[1], example.shape[-1])
        apply_init(model, state, head, pretrained.name)
        size = example.shape[-1]
        done.append(f"started from {pretrained.library}'s {pretrained.name}, head {head!r} re-initialised" + (
            f" (the weights were trained at {pretrained.size}x{pretrained.size}, this dataset is {size}x{size}: "
            f"`cnnpipe download NAME --size {pretrained.size}` matches them)" if size < pretrained.size else ""))
    if cfg.init_from:
        apply_init(model, initial_state(cfg.init_from, root), head, cfg.init_from, cfg.reset_head)
        done.append(f"started from {cfg.init_from}" + (f", head {head!r} re-initialised" if cfg.reset_head else ""))
    if cfg.freeze_backbone and head is not None:
        trainable = freeze_all_but(model, head)
        done.append(f"backbone frozen, only {head!r} trains ({trainable:,} parameters)")
    return "; ".join(done), pretrained
