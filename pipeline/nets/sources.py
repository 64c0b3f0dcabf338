"""Architectures as references: the registry's names, torchvision and timm models, and the user's code.

``--model`` takes ``NAME`` (cnnpipe's registry), ``torchvision:NAME``, ``timm:NAME``,
``PATH.py:FACTORY`` or ``package.module:FACTORY``. A factory receives what its signature
asks for among ``num_classes``, ``in_channels`` and ``image_size`` and returns an
``nn.Module`` that returns logits. The source is recorded in ``model.json`` so any later
stage rebuilds the same network; a user's file is copied into the version, and code
stored in a version runs again only with ``trust_code``.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import shutil
import sys
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CnnpipeError, first_line
from .libraries import family_args, min_timm_size, timm_model, torchvision_model
from .registry import build, get_net

CODE_DIR = "code"  # where a version keeps its copy of the user's file
FACTORY_ARGS = ("num_classes", "in_channels", "image_size")


@dataclass(frozen=True)
class ArchSource:
    """Where a network's code comes from (``model.json``'s ``source``)."""

    kind: str  # registry, torchvision, timm, file or module
    name: str  # the registry, torchvision or timm name; the module; or the file's name
    factory: str | None = None
    sha256: str | None = None  # of the code file, for file and module
    file: str | None = None  # for file: its copy inside the version, relative to it
    distribution: str | None = None  # "torchvision 0.29.2", "timm 1.0.31", a module's distribution

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ArchSource:
        return cls(**{k: data.get(k) for k in ("kind", "name", "factory", "sha256", "file", "distribution")})

    @property
    def runs_user_code(self) -> bool:
        """Whether rebuilding runs the user's code: a file kept inside the version, or a module
        (both need ``trust_code`` and their recorded sha256)."""
        return self.kind in ("file", "module")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def default_name(arch: str) -> str:
    """The store name a model gets when none is given: the registry name, the torchvision/timm name,
    the file's stem or the module's last part."""
    if ":" not in arch:
        return arch
    prefix, _, rest = arch.partition(":")
    target = rest if prefix in ("torchvision", "timm") else arch.rpartition(":")[0]
    stem = Path(target).stem if target.endswith(".py") else target.split(".")[-1]
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in stem) or "model"


def parse(arch: str) -> ArchSource:
    """The source ``arch`` names, before anything is imported or run."""
    prefix, _, rest = arch.partition(":")
    if not rest:
        get_net(arch)  # an unknown registry name is an error here, with the known ones listed
        return ArchSource("registry", arch)
    if prefix in ("torchvision", "timm"):
        return ArchSource(prefix, rest)
    target, _, factory = arch.rpartition(":")
    if not factory.isidentifier():
        raise CnnpipeError(f"--model {arch!r}: the factory after ':' must be a Python name")
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise CnnpipeError(f"--model {arch!r}: no such file {target}")
        return ArchSource("file", path.name, factory, file=str(path))  # hashed when it is loaded
    if not all(part.isidentifier() for part in target.split(".")):
        raise CnnpipeError(f"--model {arch!r}: use NAME, torchvision:NAME, timm:NAME, FILE.py:FACTORY or module:FACTORY")
    return ArchSource("module", target, factory)


def _load_file(path: Path, factory: str) -> Any:
    module_name = f"cnnpipe_user_{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise CnnpipeError(f"{path}: not a Python file that can be imported")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # the user's code may raise anything
        raise CnnpipeError(f"{path}: importing it failed ({type(e).__name__}: {first_line(e)})") from None
    if not callable(getattr(module, factory, None)):
        raise CnnpipeError(f"{path}: has no factory function {factory!r}")
    return getattr(module, factory)


def _load_module(name: str, factory: str) -> tuple[Any, Path, str | None]:
    try:
        module = importlib.import_module(name)
    except Exception as e:  # ImportError, or the module's own code failing
        raise CnnpipeError(f"cannot import module {name!r} ({type(e).__name__}: {first_line(e)})") from None
    if not callable(getattr(module, factory, None)):
        raise CnnpipeError(f"module {name!r} has no factory function {factory!r}")
    top = name.split(".")[0]
    dists = metadata.packages_distributions().get(top, [])
    version = f"{dists[0]} {metadata.version(dists[0])}" if dists else None
    return getattr(module, factory), Path(module.__file__ or ""), version


def _call_factory(fn: Any, where: str, channels: int, size: int, classes: int) -> nn.Module:
    offered = {"num_classes": classes, "in_channels": channels, "image_size": size}
    try:
        wanted = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        wanted = {}
    kwargs = {k: v for k, v in offered.items() if k in wanted}
    try:
        model = fn(**kwargs)
    except Exception as e:  # the user's factory may raise anything
        raise CnnpipeError(f"{where}: the factory raised {type(e).__name__}: {first_line(e)}") from None
    if not isinstance(model, nn.Module):
        raise CnnpipeError(f"{where}: the factory returned {type(model).__name__}, not a torch.nn.Module")
    return model


def min_size(source: ArchSource) -> int | None:
    """The smallest input side the architecture's publisher lists (torchvision's weights metadata, timm's
    pretrained config), if any."""
    if source.kind == "timm":
        return min_timm_size(source.name)
    if source.kind != "torchvision":
        return None
    import torchvision

    return max((w.meta.get("min_size", (1, 1))[0] for w in torchvision.models.get_model_weights(source.name)),
               default=None)


def _check_logits(model: nn.Module, source: ArchSource, where: str, channels: int, size: int, classes: int) -> None:
    """The network maps a batch of 2 inputs to ``[2, classes]`` logits."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, channels, size, size))
    except Exception as e:  # a network that cannot take the dataset's input
        least = min_size(source)
        needs = f"{source.kind} lists {least}x{least} as its smallest input; " if least and least > size else ""
        if not needs and (least := _smallest_size(source, channels, size, classes)):
            needs = f"the smallest of the sizes tried that it takes is {least}x{least}; "
        raise CnnpipeError(
            f"{where} cannot take the dataset's {channels}x{size}x{size} input ({type(e).__name__}: {first_line(e)}); "
            f"{needs}store the dataset at a larger size with `cnnpipe download NAME --size {least if needs else 'N'}`"
        ) from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or list(out.shape) != [2, classes]:
        shape = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise CnnpipeError(f"{where} returns {shape} for a batch of 2, not [2, {classes}] logits")


PROBED_SIZES = (16, 24, 32, 48, 64, 96, 128, 160, 224, 299)  # sides tried for a library network that refuses the dataset's


def _smallest_size(source: ArchSource, channels: int, size: int, classes: int) -> int | None:
    """The smallest of ``PROBED_SIZES`` above ``size`` at which a torchvision or timm network builds and
    answers a batch of 2 (a user's code is not run again for this), or None."""
    if source.kind not in ("torchvision", "timm"):
        return None
    for side in (s for s in PROBED_SIZES if s > size):
        try:
            model, _ = _build(source, Path("."), channels, side, classes)
            with torch.no_grad():
                model.eval()(torch.zeros(2, channels, side, side))
            return side
        except Exception:  # noqa: BLE001 - any refusal means: not this size
            continue
    return None


def build_arch(arch: str, channels: int, size: int, classes: int) -> tuple[nn.Module, ArchSource]:
    """Build the network ``arch`` names (running the user's code if it names some) and its source record."""
    source = parse(arch)
    if source.kind == "registry":
        return build(arch, channels, size, classes), source
    model, source = _build(source, Path(source.file or "."), channels, size, classes)
    _check_logits(model, source, f"--model {arch}", channels, size, classes)
    return model, source


def _build(source: ArchSource, file: Path, channels: int, size: int, classes: int) -> tuple[nn.Module, ArchSource]:
    if source.kind == "torchvision":
        model, dist = torchvision_model(source.name, channels, size, classes)
        return model, ArchSource("torchvision", source.name, distribution=dist)
    if source.kind == "timm":
        model, dist = timm_model(source.name, channels, size, classes)
        return model, ArchSource("timm", source.name, distribution=dist)
    assert source.factory is not None
    if source.kind == "file":
        fn = _load_file(file, source.factory)
        model = _call_factory(fn, f"{file}:{source.factory}", channels, size, classes)
        return model, ArchSource("file", source.name, source.factory, _sha256(file), f"{CODE_DIR}/{source.name}")
    fn, path, dist = _load_module(source.name, source.factory)
    if not path.is_file():
        raise CnnpipeError(f"module {source.name!r} has no source file: cnnpipe records the sha256 of a module's "
                           "file to rebuild the network from it later; use FILE.py:FACTORY")
    model = _call_factory(fn, f"{source.name}:{source.factory}", channels, size, classes)
    return model, ArchSource("module", source.name, source.factory, _sha256(path), distribution=dist)


def build_code(source: ArchSource, arch: str, channels: int, size: int, classes: int) -> str:
    """Python lines that build ``model`` (random weights, as ``_build`` does) with the network's own library,
    for a model card: torchvision, timm, the bundle's copy of the user's file, else cnnpipe's registry."""
    if source.kind == "torchvision":
        extra = "".join(f", {k}={v!r}" for k, v in family_args(source.name, size).items())
        lines = ["import torchvision",
                 f"model = torchvision.models.get_model({source.name!r}, weights=None, num_classes={classes}{extra})"]
        if channels != 3:  # cnnpipe's first-convolution swap (libraries.adapt_first_conv), written out
            lines += ["for parent in model.modules():  # the first 3-channel convolution takes "
                      f"{channels} channel(s), as cnnpipe built it",
                      "    hit = next(((n, c) for n, c in parent.named_children() "
                      "if isinstance(c, torch.nn.Conv2d) and c.in_channels == 3), None)",
                      "    if hit:",
                      "        n, c = hit",
                      f"        setattr(parent, n, torch.nn.Conv2d({channels}, c.out_channels, c.kernel_size, c.stride, "
                      f"c.padding, c.dilation, c.groups if c.groups == 1 else {channels}, c.bias is not None, "
                      "c.padding_mode))",
                      "        break"]
        return "\n".join(lines)
    if source.kind == "timm":
        args = f"{source.name!r}, pretrained=False, num_classes={classes}, in_chans={channels}"
        return ("import timm\n"
                f"try:\n    model = timm.create_model({args}, img_size={size})\n"
                f"except TypeError:  # a network that takes no input size (a CNN)\n    model = timm.create_model({args})")
    if source.kind == "file" and source.file and source.factory:
        return ("import importlib.util, inspect  # the network's code, shipped in the bundle (its sha256 is in model.json)\n"
                f"spec = importlib.util.spec_from_file_location('network', {source.file!r})\n"
                "module = importlib.util.module_from_spec(spec)\n"
                "spec.loader.exec_module(module)\n"
                f"factory = module.{source.factory}\n"
                f"offered = {{'num_classes': {classes}, 'in_channels': {channels}, 'image_size': {size}}}\n"
                "model = factory(**{k: v for k, v in offered.items() if k in inspect.signature(factory).parameters})")
    return ("from cnnpipe.nets.sources import build_arch  # cnnpipe's own network definitions\n"
            f"model = build_arch({arch!r}, {channels}, {size}, {classes})[0]")


def store_code(arch: str, source: ArchSource, folder: Path) -> dict[str, str]:
    """Copy the user's file that built the network into ``folder`` (a version draft) as it was when
    it built it; returns the copy's manifest role (nothing for other sources)."""
    if not source.file:
        return {}
    copy = folder / source.file
    copy.parent.mkdir(parents=True, exist_ok=True)
    original = arch.rpartition(":")[0]
    shutil.copyfile(original, copy)
    if _sha256(copy) != source.sha256:
        raise CnnpipeError(f"{original} changed after it built the network; run the command again")
    return {source.file: "code"}


def rebuild(source: ArchSource, arch: str, version_dir: Path, channels: int, size: int, classes: int,
            trust_code: bool = False) -> nn.Module:
    """The network a version's ``source`` record describes, refusing code that is missing, changed or
    untrusted: a file must lie in the version's ``code/`` folder, and a file or module must have the
    sha256 recorded when it built the network, checked before it is imported."""
    if source.kind == "registry":
        return build(arch, channels, size, classes)
    file = Path(".")
    if source.runs_user_code:
        where = f"{version_dir.parent.name}@{version_dir.name}"
        if not source.sha256:
            raise CnnpipeError(f"{where}: model.json records no sha256 for the network's code {source.name!r}; "
                               "it is not rebuilt from unrecorded code (train or import it again)")
        file = _stored_file(source, version_dir) if source.kind == "file" else _module_file(source.name)
        if _sha256(file) != source.sha256:
            raise CnnpipeError(f"{file}: the model's code changed since it was recorded (sha256 differs)")
        if not trust_code:
            what = f"code stored in it ({source.file})" if source.kind == "file" else f"the module {source.name!r} ({file})"
            raise CnnpipeError(f"{where}: its network is defined by {what}; rebuilding it runs that code: "
                               "pass --trust-code if you trust it")
    model, found = _build(source, file, channels, size, classes)
    if source.kind == "module" and found.sha256 != source.sha256:
        raise CnnpipeError(f"module {source.name!r} changed since the model was trained (its file's sha256 differs)")
    return model


def _stored_file(source: ArchSource, version_dir: Path) -> Path:
    """The version's copy of the user's file: ``code/NAME`` exactly, a regular file inside the version."""
    expected = f"{CODE_DIR}/{Path(source.name).name}"
    if source.file != expected or source.name != Path(source.name).name:
        raise CnnpipeError(f"{version_dir}: model.json names the code {source.file!r}, not a file of its {CODE_DIR}/ "
                           "folder; refusing to run it")
    file = version_dir / expected
    if file.is_symlink() or not file.is_file():
        raise CnnpipeError(f"{version_dir}: the model's code {source.file} is missing")
    return file


def _module_file(name: str) -> Path:
    """Where ``import name`` would find the module's source, found without importing anything."""
    from importlib.machinery import PathFinder

    search: list[str] | None = None
    spec = None
    for depth in range(1, len(name.split(".")) + 1):
        spec = PathFinder.find_spec(".".join(name.split(".")[:depth]), search)
        if spec is None:
            raise CnnpipeError(f"cannot find module {name!r} on the Python path")
        search = list(spec.submodule_search_locations or [])
    if spec is None or not spec.origin or not Path(spec.origin).is_file():
        raise CnnpipeError(f"module {name!r} has no source file whose sha256 could be checked")
    return Path(spec.origin)
