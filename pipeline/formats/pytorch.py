"""PyTorch's own files: the ``torch.export`` program (pt2), TorchScript (legacy), and safetensors
weights loaded into a freshly built network. torch is imported by each function, not here."""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

from ..fs import write_through_memory
from .archive import check_pt2, check_sizes
from .base import (
    FP32,
    META_FILE,
    ExportContext,
    Format,
    LoadContext,
    Runner,
    Tolerance,
    needs_device,
    quiet,
    register,
    same_meta,
    torch_runner,
)


def write_pt2(ctx: ExportContext, path: Path) -> None:
    """A ``torch.export`` program with a dynamic batch axis, the metadata as an extra file."""
    import torch

    program = ctx.exported()
    with quiet():
        write_through_memory(path, lambda f: torch.export.save(program, f, extra_files={META_FILE: json.dumps(ctx.meta)}))


def load_pt2(path: Path, device: str, ctx: LoadContext) -> Runner:
    """The program, after ``check_pt2`` found nothing in the archive that torch would unpickle or load as code."""
    import torch

    check_pt2(path)
    extra = {META_FILE: ""}
    with quiet():
        module = torch.export.load(str(path), extra_files=extra).module()
    return torch_runner(module, device, same_meta(extra[META_FILE], ctx, "pt2 extra file"))


def write_safetensors(ctx: ExportContext, path: Path) -> None:
    """The weights, with the metadata as safetensors ``__metadata__``."""
    from ..nets.modelfile import save_weights

    save_weights(ctx.model.state_dict(), path, ctx.meta)


def load_safetensors(path: Path, device: str, ctx: LoadContext) -> Runner:
    """A freshly built network on ``device`` with the file's weights."""
    from safetensors import safe_open

    from ..nets.modelfile import build_from, load_weights

    needs_device(device)
    model = build_from(ctx.desc, path.parent, ctx.trust_code)
    load_weights(model, path)
    model.eval().to(device)
    with safe_open(str(path), framework="pt") as f:
        problems = [] if f.metadata() == ctx.meta else ["safetensors __metadata__ differs from model.json"]
    return torch_runner(model, device, problems)


def write_torchscript(ctx: ExportContext, path: Path) -> None:
    """A traced TorchScript module; the metadata rides along as an extra file."""
    import torch

    with quiet():
        traced = torch.jit.trace(ctx.model, ctx.example)
        write_through_memory(path, lambda f: torch.jit.save(traced, f, _extra_files={META_FILE: json.dumps(ctx.meta)}))


def load_torchscript(path: Path, device: str, ctx: LoadContext) -> Runner:
    import torch

    needs_device(device)
    check_sizes(path, "TorchScript archive")
    extra = {META_FILE: ""}
    with quiet():  # TorchScript is deprecated, still asked for
        module = torch.jit.load(str(path), map_location=device, _extra_files=extra).eval()
    return torch_runner(module, device, same_meta(extra[META_FILE], ctx, "TorchScript extra file"))


DEBUG_MEMBER = re.compile(r"[^/]+/(.*\.debug_pkl|\.data/serialization_id)")


def same_torchscript(shipped: Path, fresh: Path) -> bool:
    """Whether two TorchScript archives hold the same members with the same bytes, but for their debug
    members: the source ranges and Python call stack of the tracing (with the install's paths), and the
    random serialization id. The code, constants and tensors must be byte-identical. Nothing is loaded."""
    with zipfile.ZipFile(shipped) as a, zipfile.ZipFile(fresh) as b:
        kept = [{i.filename: (i.file_size, i.CRC) for i in z.infolist() if not DEBUG_MEMBER.fullmatch(i.filename)}
                for z in (a, b)]
        return kept[0] == kept[1] and all(a.read(n) == b.read(n) for n in kept[1])


register(
    Format(
        "pt2", "model.pt2", "torch.export", "pt2", write_pt2, load_pt2, {"cpu": FP32}, reexported=True, runs_code=True,
        packages=("torch",),
        snippet="""pt2 (`torch.export` program):

```python
import torch
model = torch.export.load("model.pt2").module()
logits = model(torch.from_numpy(x))
```""",
    ),
    Format(
        "safetensors", "model.safetensors", "torch (fresh model)", "pytorch eager", write_safetensors,
        load_safetensors,
        {"cpu": FP32, "cuda": Tolerance(1e-3, 1e-3, 1.0, None)},  # cuDNN convolutions use TF32 by default
        devices=("cpu", "cuda"), reexported=True, packages=("safetensors",),
        snippet="""safetensors (weights into a freshly built network):

```python
import torch
from safetensors.torch import load_file
{build}
model.load_state_dict(load_file("model.safetensors"))
logits = model.eval()(torch.from_numpy(x))
```""",
    ),
    Format(
        "torchscript", "model.torchscript.pt", "torch.jit", "torchscript", write_torchscript, load_torchscript,
        {"cpu": FP32}, legacy=True, packages=("torch",), reexported=True, fresh=True, same=same_torchscript, runs_code=True,
        snippet="""TorchScript (legacy: deprecated upstream; prefer pt2):

```python
import torch
model = torch.jit.load("model.torchscript.pt").eval()
logits = model(torch.from_numpy(x))
```""",
    ),
)
