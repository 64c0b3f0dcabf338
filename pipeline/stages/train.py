"""Stage 2: train a network on a dataset version; keep the epoch best on validation."""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from cnnpipe.data.batches import DeviceBatches, StreamBatches, batch_order
from cnnpipe.data.loading import load_dataset
from cnnpipe.engine import Progress, batched_logits, train_epoch
from cnnpipe.errors import CnnpipeError
from cnnpipe.modelfile import MODEL_JSON, WEIGHTS, describe, resolve_device
from cnnpipe.nets import build, get_net
from cnnpipe.provenance import environment, lineage
from cnnpipe.report import plot_curves
from cnnpipe.store import Workspace, check_name, write_json


@dataclass
class TrainConfig:
    """Everything that decides a training run (recorded in ``train.json``)."""

    arch: str = "lenet5"
    dataset: str = "mnist-sample"
    name: str | None = None
    epochs: int = 8
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0
    device: str = "auto"
    compile: str = "auto"
    augment: bool = True
    loader: str = "auto"
    workers: int = 2
    eval_batch_size: int = 1000

    def validate(self) -> None:
        """Raise a usage error for a value no run could use."""
        get_net(self.arch)
        check_name(self.name or self.arch, "model name")
        if self.epochs < 1:
            raise CnnpipeError(f"--epochs must be at least 1, not {self.epochs}")
        if self.batch_size < 1 or self.eval_batch_size < 1:
            raise CnnpipeError(f"--batch-size must be at least 1, not {self.batch_size}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise CnnpipeError(f"--lr must be a positive number, not {self.lr}")
        if self.compile not in ("auto", "on", "off"):
            raise CnnpipeError(f"--compile must be auto, on or off, not {self.compile!r}")
        if self.loader not in ("auto", "device", "stream"):
            raise CnnpipeError(f"--loader must be auto, device or stream, not {self.loader!r}")
        if self.workers < 0:
            raise CnnpipeError(f"--workers must be 0 or more, not {self.workers}")


@dataclass
class TrainResult:
    """The model version written and how training went."""

    ref: str
    path: str
    best_epoch: int
    val_accuracy: float
    val_loss: float
    params: int
    device: str
    compiled: bool
    compile_s: float
    train_s: float
    images_per_s: float
    history: list[dict[str, Any]] = field(default_factory=list)


def _train_source(dataset: Any, config: TrainConfig, device: torch.device) -> DeviceBatches | StreamBatches:
    """The training split on the device when it fits (or ``--loader device``), else streamed."""
    images, labels = dataset.arrays("train", mmap=True)
    stream = config.loader == "stream" or (config.loader == "auto" and not fits_in_memory(images.nbytes, device))
    if stream:
        return StreamBatches(images, labels, device, config.workers)
    return DeviceBatches(images, labels, device)


def fits_in_memory(nbytes: int, device: torch.device) -> bool:
    """Whether ``nbytes`` takes at most a quarter of the device's free memory."""
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
    else:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return nbytes <= free // 4


def train(config: TrainConfig, root: Path = Path("."), progress: Progress | None = None) -> TrainResult:
    """Train ``config.arch`` on ``config.dataset`` and commit the best-on-validation weights."""
    config.validate()
    ws = Workspace(root)
    dataset = load_dataset(ws.data.resolve(config.dataset))
    device = resolve_device(config.device)
    compiled = config.compile == "on" or (config.compile == "auto" and device.type == "cuda")
    name = config.name or config.arch
    info = dataset.info

    torch.manual_seed(config.seed)
    model = build(config.arch, info["channels"], info["height"], len(dataset.classes))
    model = model.to(device, memory_format=torch.channels_last)
    step_model = torch.compile(model) if compiled else model
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, fused=True)
    generator = torch.Generator().manual_seed(config.seed)
    train_source = _train_source(dataset, config, device)
    if len(train_source) < config.batch_size and compiled:
        raise CnnpipeError(
            f"--batch-size {config.batch_size} is larger than the training split ({len(train_source)} images)"
        )
    augmentation = info["augment"] if config.augment else {"crop_padding": 0, "flip": False}
    x_val, y_val = dataset.split("val")
    mean, std = info["mean"], info["std"]

    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {"epoch": 0, "val_accuracy": -1.0}
    compile_s = train_s = 0.0
    images = 0
    for epoch in range(1, config.epochs + 1):
        order = batch_order(len(train_source), config.batch_size, compiled, generator)
        if progress is not None:
            progress.start_epoch(epoch, config.epochs, len(order))
        stats = train_epoch(
            step_model, optimizer, train_source.batches(order), mean, std, augmentation, generator, progress
        )
        if not math.isfinite(stats.loss):
            raise CnnpipeError(
                f"training loss became {stats.loss} in epoch {epoch}; no version was written. "
                "Lower --lr or check the data"
            )
        if epoch == 1 and compiled:
            compile_s = stats.first_step_s
        train_s += stats.seconds - (compile_s if epoch == 1 else 0.0)
        images += stats.images
        t0 = time.perf_counter()
        logits = batched_logits(step_model, x_val, mean, std, config.eval_batch_size, device)
        val_loss = F.cross_entropy(logits, y_val).item()
        val_acc = (logits.argmax(1) == y_val).float().mean().item()
        record = {
            "epoch": epoch,
            "train_loss": stats.loss,
            "train_accuracy": stats.accuracy,
            "val_loss": val_loss,
            "val_accuracy": val_acc,
            "lr": optimizer.param_groups[0]["lr"],
            "train_s": stats.seconds,
            "val_s": time.perf_counter() - t0,
            "images_per_s": stats.images / stats.seconds,
        }
        history.append(record)
        if progress is not None:
            progress.end_epoch(record)
        if val_acc > best["val_accuracy"]:
            best = {
                "epoch": epoch,
                "val_accuracy": val_acc,
                "val_loss": val_loss,
                "state": {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()},
            }

    model_desc = describe(config.arch, name, model, dataset)
    resolved = asdict(config) | {
        "name": name, "device": device.type, "compile": compiled, "augmentation": augmentation,
        "loader": type(train_source).__name__,
    }
    with ws.models.draft(name) as draft:
        save_file(best["state"], draft.path / WEIGHTS, metadata={"arch": config.arch})
        write_json(draft.path / MODEL_JSON, model_desc)
        write_json(
            draft.path / "train.json",
            {
                "config": resolved,
                "best_epoch": best["epoch"],
                "timings": {"compile_s": compile_s, "train_s": train_s, "images": images},
                "environment": environment(),
            },
        )
        (draft.path / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))
        plot_curves(history, draft.path / "curves.png", title=f"{name} on {dataset.version.ref}")
        results = {
            "best_epoch": best["epoch"],
            "val_accuracy": best["val_accuracy"],
            "val_loss": best["val_loss"],
            "params": model_desc["params"],
        }
        version = draft.commit(
            stage="train",
            roles={
                WEIGHTS: "weights", MODEL_JSON: "description", "train.json": "config",
                "history.jsonl": "history", "curves.png": "plot",
            },
            lineage=lineage([dataset.version], resolved, seed=config.seed, dataset_hash=dataset.dataset_hash),
            results=results,
        )
    return TrainResult(
        ref=version.ref,
        path=str(version.path),
        best_epoch=best["epoch"],
        val_accuracy=best["val_accuracy"],
        val_loss=best["val_loss"],
        params=model_desc["params"],
        device=device.type,
        compiled=compiled,
        compile_s=compile_s,
        train_s=train_s,
        images_per_s=images / train_s if train_s > 0 else 0.0,
        history=history,
    )
