"""Stage 2: train a network on a dataset version; keep the epoch best on validation.

A run checkpoints after every ``--checkpoint-every``-th epoch into
``models/<name>/.runs/<run>/checkpoint.pt`` (tensors and plain types only, read back with
``weights_only=True``, written in a background thread); an interrupted or diverged run resumes
from there with ``--resume``, exactly as it would have gone on. The version is committed at the end
and the run folder removed. Under ``torchrun`` every rank trains its shard of each batch
(DDP: gloo on CPU, nccl on CUDA); only rank 0 writes anything.
"""

from __future__ import annotations

import math
import os
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..data.batches import DeviceBatches, StreamBatches, batch_count, batch_order
from ..data.loading import Dataset, load_dataset
from ..description import MODEL_JSON
from ..errors import CnnpipeError, first_line
from ..evaluation.plots import plot_curves
from ..fs import dumps, write_json
from ..nets.modelfile import WEIGHTS, describe, resolve_device, save_weights
from ..nets.pretrained import Pretrained, input_stats
from ..nets.registry import param_count
from ..nets.sources import ArchSource, build_arch, store_code
from ..options.training import TrainConfig
from ..store.provenance import environment, lineage
from ..store.workspace import Workspace
from ..training.engine import Progress, batched_logits, train_epoch
from ..training.finetune import fine_tune
from ..training.health import check_max_val_loss, warnings_of
from ..training.optim import make_optimizer, make_schedule
from ..training.placement import distributed, eval_batch_size, train_source
from ..training.runs import CheckpointWriter, find_run, load_run, run_folder, snapshot


@dataclass
class TrainResult:
    """The model version written and how training went (``ref`` is empty on ranks other than 0)."""

    ref: str
    path: str
    best_epoch: int
    val_accuracy: float
    val_loss: float
    params: int
    device: str
    compiled: bool
    precision: str
    compile_s: float
    train_s: float
    images_per_s: float
    epochs_run: int
    stopped_early: bool
    resumed_from: str | None
    world_size: int
    history: list[dict[str, Any]] = field(default_factory=list)
    fine_tune: str | None = None  # what --init-from, --reset-head and --freeze-backbone did
    warnings: list[str] = field(default_factory=list)  # an exploded run, committed all the same (training/health)
    parts: dict[str, float] = field(default_factory=dict)  # seconds outside the training steps: setup, val, checkpoint, commit


def train(
    config: TrainConfig,
    root: Path = Path("."),
    progress: Progress | None = None,
    resume: str | None = None,
) -> TrainResult:
    """Train ``config.arch`` on ``config.dataset`` and commit the best-on-validation weights.

    ``resume`` (a model name or a run folder) continues an interrupted run from its last
    checkpoint with the run's own config; ``config`` is then ignored.
    """
    with ExitStack() as stack:
        return _train(config, root, progress, resume, stack)


@dataclass
class _Run:
    """Everything one training run works with, set up once from its resolved config."""

    cfg: TrainConfig
    dataset: Dataset
    arch_source: ArchSource
    fine_tune: str | None  # what --pretrained, --init-from, --reset-head and --freeze-backbone did
    pretrained: Pretrained | None
    mean: list[float]  # the input normalization: the dataset's, or the pretrained weights' own
    std: list[float]
    rank: int
    world: int
    device: torch.device
    compiled: bool
    bf16: bool
    model: torch.nn.Module
    step_model: torch.nn.Module  # the model wrapped for DDP and compiled, as the steps call it
    source: DeviceBatches | StreamBatches
    drop_last: bool
    optimizer: torch.optim.Optimizer
    schedule: Any
    generator: torch.Generator
    x_val: torch.Tensor
    y_val: torch.Tensor
    val_batch: int


@dataclass
class _State:
    """What a checkpoint carries from epoch to epoch."""

    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(
        default_factory=lambda: {"epoch": 0, "val_accuracy": -1.0, "val_loss": float("nan"), "state": None}
    )
    timings: dict[str, Any] = field(default_factory=lambda: {
        "compile_s": 0.0, "train_s": 0.0, "images": 0, "val_s": 0.0, "checkpoint_s": 0.0})
    stale: int = 0
    epoch: int = 0


def _setup(cfg: TrainConfig, ws: Workspace) -> _Run:
    """Dataset, device, network, optimizer and schedule of a run; refuses a batch size that cannot work."""
    dataset = load_dataset(ws.data.resolve(cfg.dataset))
    rank, world, dist_device = distributed(cfg.device)
    device = dist_device or resolve_device(cfg.device)
    compiled = cfg.compile == "on" or (cfg.compile == "auto" and device.type == "cuda")
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    elif device.type == "cuda":  # cuDNN times its algorithms for each shape once, then keeps the fastest
        torch.backends.cudnn.benchmark = True
    if cfg.batch_size % world:
        raise CnnpipeError(f"--batch-size {cfg.batch_size} must divide evenly over {world} processes")
    info = dataset.info
    if cfg.cutout > min(info["height"], info["width"]):
        raise CnnpipeError(f"--cutout {cfg.cutout} is larger than the {info['height']}x{info['width']} images")
    torch.manual_seed(cfg.seed)
    model, arch_source = build_arch(cfg.arch, info["channels"], info["height"], len(dataset.classes))
    tuned, pretrained = fine_tune(model, cfg, ws.root, torch.zeros(2, info["channels"], info["height"], info["width"]))
    mean, std = (info["mean"], info["std"]) if pretrained is None or cfg.dataset_stats else \
        map(list, input_stats(pretrained, info["channels"]))
    model = model.to(device, memory_format=torch.channels_last)
    wrapped: torch.nn.Module = model
    if world > 1:
        wrapped = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    source = train_source(dataset, cfg, device)
    drop_last = compiled or world > 1
    steps_per_epoch = batch_count(len(source), cfg.batch_size, drop_last)
    if steps_per_epoch == 0:
        raise CnnpipeError(f"--batch-size {cfg.batch_size} is larger than the training split ({len(source)} images)")
    optimizer = make_optimizer(model, cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.momentum, cfg.nesterov)
    schedule = make_schedule(
        optimizer, cfg.schedule, cfg.lr, steps_per_epoch, cfg.epochs, cfg.warmup_epochs, cfg.step_size, cfg.gamma
    )
    x_val, y_val = dataset.split("val")
    if isinstance(source, DeviceBatches):  # the validation split fits beside it: no copies per epoch
        x_val = x_val.to(device)
    return _Run(
        cfg, dataset, arch_source, tuned, pretrained, mean, std, rank, world, device, compiled, bf16, model,
        torch.compile(wrapped, mode=cfg.compile_mode) if compiled else wrapped, source, drop_last, optimizer, schedule,
        torch.Generator().manual_seed(cfg.seed), x_val, y_val, eval_batch_size(len(y_val), cfg.eval_batch_size),
    )


def _restore(run: _Run, saved: dict[str, Any]) -> _State:
    """Model, optimizer, schedule, sampler and RNG state from a checkpoint; one that lacks a field or
    holds one of the wrong type is refused before training goes on."""
    try:
        return _restore_fields(run, saved)
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as e:
        raise CnnpipeError(f"the checkpoint cannot be resumed: a missing or malformed field "
                           f"({type(e).__name__}: {first_line(e)}); train again without --resume") from None


def _restore_fields(run: _Run, saved: dict[str, Any]) -> _State:
    if not isinstance(saved, dict):
        raise TypeError(f"it holds a {type(saved).__name__}, not a dict of fields")
    run.model.load_state_dict(saved["model"])
    run.optimizer.load_state_dict(saved["optimizer"])
    run.schedule.load_state_dict(saved["schedule"])
    run.generator.set_state(saved["generator"])
    torch.set_rng_state(saved["torch_rng"])
    if run.device.type == "cuda" and "cuda_rng" in saved:  # dropout on CUDA draws from the device's generator
        torch.cuda.set_rng_state(saved["cuda_rng"], run.device)
    state = _State(saved["history"], saved["best"], saved["timings"], saved["stale"], saved["epoch"])
    kinds = {"history": list, "best": dict, "timings": dict, "stale": int, "epoch": int}
    for key, kind in kinds.items():
        if not isinstance(getattr(state, key), kind):
            raise TypeError(f"field {key!r} is a {type(getattr(state, key)).__name__}")
    return state


def _checkpoint(run: _Run, state: _State, writer: CheckpointWriter) -> None:
    """Snapshot the run to the CPU now and write it in the background."""
    t0 = time.perf_counter()
    writer.write(snapshot({
        "epoch": state.epoch, "model": {k: v.contiguous() for k, v in run.model.state_dict().items()},
        "optimizer": run.optimizer.state_dict(), "schedule": run.schedule.state_dict(),
        "generator": run.generator.get_state(), "torch_rng": torch.get_rng_state(),
        **({"cuda_rng": torch.cuda.get_rng_state(run.device)} if run.device.type == "cuda" else {}),
        "history": state.history, "timings": state.timings, "stale": state.stale,
    }) | {"best": state.best})  # already a CPU copy, replaced (never changed) when a better epoch comes
    state.timings["checkpoint_s"] = state.timings.get("checkpoint_s", 0.0) + time.perf_counter() - t0


def _diverged(what: str, epoch: int, run_dir: Path | None) -> None:
    """Stop a run that produced non-finite numbers: nothing is committed, the last good checkpoint stays."""
    kept = f"the last good checkpoint (epoch {epoch - 1}) is in {run_dir}" if epoch > 1 else "no epoch finished"
    raise CnnpipeError(
        f"{what} in epoch {epoch}; no version was written and {kept}. "
        "Lower the learning rate or weight decay (or clip the gradient norm) and train again"
    )


def _epoch(run: _Run, state: _State, epoch: int, progress: Progress | None, run_dir: Path | None) -> dict[str, Any]:
    """Train one epoch, validate, and record it in ``state``; a non-finite loss stops the run."""
    cfg, info, lead = run.cfg, run.dataset.info, run.rank == 0
    order = batch_order(len(run.source), cfg.batch_size, run.drop_last, run.generator)
    if run.world > 1:
        order = [b[run.rank :: run.world] for b in order]
    if progress is not None and lead:
        progress.start_epoch(epoch, cfg.epochs, len(order))
    augmentation = info["augment"] if cfg.augment else {"crop_padding": 0, "flip": False}
    stats = train_epoch(
        run.step_model, run.optimizer, run.source.batches(order), run.mean, run.std, augmentation, run.generator,
        progress if lead else None, schedule=run.schedule, label_smoothing=cfg.label_smoothing,
        grad_clip=cfg.grad_clip, bf16=run.bf16, cutout_size=cfg.cutout,
    )
    if not math.isfinite(stats.loss):
        _diverged(f"training loss became {stats.loss}", epoch, run_dir)
    timings = state.timings
    if epoch == 1 and run.compiled:
        timings["compile_s"] = stats.first_step_s
    timings["train_s"] += stats.seconds - (timings["compile_s"] if epoch == 1 else 0.0)
    timings["images"] += stats.images * run.world
    floats = {k: v for k, v in run.model.state_dict().items() if v.is_floating_point()}
    finite = torch.stack([torch.isfinite(v).all() for v in floats.values()]).tolist() if floats else []
    if not all(finite):
        _diverged(f"weights became NaN or Inf ({list(floats)[finite.index(False)]})", epoch, run_dir)
    record = {
        "epoch": epoch, "train_loss": stats.loss, "train_accuracy": stats.accuracy,
        "lr": run.optimizer.param_groups[0]["lr"], "train_s": stats.seconds,
        "images_per_s": stats.images * run.world / stats.seconds,
    }
    if epoch % cfg.val_every == 0 or epoch == cfg.epochs:
        record |= _validate(run, state, epoch, run_dir)
    state.history.append(record)
    state.epoch = epoch
    if progress is not None and lead:
        progress.end_epoch(record)
    return record


def _validate(run: _Run, state: _State, epoch: int, run_dir: Path | None) -> dict[str, Any]:
    """Validation's figures for the epoch's record; keeps the weights if they are the best so far.

    The uncompiled network answers: compiling a second (eval) graph would cost more than it saves.
    """
    t0 = time.perf_counter()
    logits = batched_logits(run.model, run.x_val, run.mean, run.std, run.val_batch, run.device, run.bf16)
    val_loss = F.cross_entropy(logits, run.y_val).item()
    if not math.isfinite(val_loss):
        _diverged(f"validation loss became {val_loss}", epoch, run_dir)
    val_acc = (logits.argmax(1) == run.y_val).float().mean().item()
    if val_acc > state.best["val_accuracy"]:
        weights = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in run.model.state_dict().items()}
        state.best = {"epoch": epoch, "val_accuracy": val_acc, "val_loss": val_loss, "state": weights}
        state.stale = 0
    else:
        state.stale += 1
    seconds = time.perf_counter() - t0
    state.timings["val_s"] = state.timings.get("val_s", 0.0) + seconds
    return {"val_loss": val_loss, "val_accuracy": val_acc, "val_max_abs_logit": logits.abs().max().item(),
            "val_s": seconds}


def _train(
    config: TrainConfig, root: Path, progress: Progress | None, resume: str | None, stack: ExitStack
) -> TrainResult:
    resumed: Path | None = None
    saved: dict[str, Any] | None = None
    if resume is not None:
        resumed = find_run(root, resume)
        config, saved = load_run(resumed)
    cfg = config.resolved()
    ws = Workspace(root)
    t0 = time.perf_counter()
    run = _setup(cfg, ws)
    state = _restore(run, saved) if saved is not None else _State()
    setup_s = time.perf_counter() - t0
    run_dir = stack.enter_context(run_folder(ws, cfg.name, config, resumed)) if run.rank == 0 else None
    writer = CheckpointWriter(run_dir) if run_dir is not None else None
    if writer is not None:
        stack.callback(writer.close)  # the last checkpoint is whole before the run folder is judged

    stopped_early = False
    for epoch in range(state.epoch + 1, cfg.epochs + 1):
        _epoch(run, state, epoch, progress, run_dir)
        stopped_early = cfg.patience is not None and state.stale >= cfg.patience
        if writer is not None and (epoch % cfg.checkpoint_every == 0 or epoch == cfg.epochs or stopped_early):
            _checkpoint(run, state, writer)
        if stopped_early:
            break
    if writer is not None:
        t0 = time.perf_counter()
        writer.close()
        state.timings["checkpoint_s"] = state.timings.get("checkpoint_s", 0.0) + time.perf_counter() - t0

    best, timings = state.best, state.timings
    result = TrainResult(
        ref="", path="", best_epoch=best["epoch"], val_accuracy=best["val_accuracy"], val_loss=best["val_loss"],
        params=param_count(run.model), device=run.device.type, compiled=run.compiled,
        precision="bf16" if run.bf16 else "fp32", compile_s=timings["compile_s"], train_s=timings["train_s"],
        images_per_s=timings["images"] / timings["train_s"] if timings["train_s"] > 0 else 0.0,
        epochs_run=state.epoch, stopped_early=stopped_early, resumed_from=str(resumed) if resumed else None,
        world_size=run.world, history=state.history, fine_tune=run.fine_tune,
        warnings=warnings_of(next((h for h in state.history if h["epoch"] == best["epoch"]), None),
                             len(run.dataset.classes)),
    )
    check_max_val_loss(best, cfg.max_val_loss)
    if run.rank != 0:
        dist.barrier()
        return result
    t0 = time.perf_counter()
    version = _commit(ws, cfg, run, best, state.history, timings, result)
    if run.world > 1:
        dist.barrier()
    result.ref, result.path = version.ref, str(version.path)
    result.parts = {"setup_s": setup_s, "val_s": timings.get("val_s", 0.0),
                    "checkpoint_s": timings.get("checkpoint_s", 0.0), "commit_s": time.perf_counter() - t0}
    return result


def _commit(
    ws: Workspace, cfg: TrainConfig, run: _Run, best: dict[str, Any],
    history: list[dict[str, Any]], timings: dict[str, Any], result: TrainResult,
) -> Any:
    """Write the best weights, description, records, curves (and the user's code) as the next model version."""
    name = cfg.name or cfg.arch
    dataset = run.dataset
    model_desc = describe(cfg.arch, name, run.model, dataset, run.arch_source, (run.mean, run.std),
                          run.pretrained.to_json() if run.pretrained else None)
    resolved = asdict(cfg) | {
        "device": result.device, "compiled": result.compiled, "precision": result.precision,
        "augmentation": dataset.info["augment"] if cfg.augment else None, "world_size": result.world_size,
    }
    with ws.models.draft(name) as draft:
        save_weights(best["state"], draft.path / WEIGHTS, {"arch": cfg.arch})
        write_json(draft.path / MODEL_JSON, model_desc.to_json())
        write_json(draft.path / "train.json", {
            "config": resolved, "best_epoch": best["epoch"], "epochs_run": result.epochs_run,
            "stopped_early": result.stopped_early, "resumed_from": result.resumed_from, "warnings": result.warnings,
            "timings": timings, "environment": environment(),
        })
        (draft.path / "history.jsonl").write_text("".join(dumps(r) + "\n" for r in history))
        if cfg.plots:
            plot_curves(history, draft.path / "curves.png", title=f"{name} on {dataset.version.ref}")
        code = store_code(cfg.arch, run.arch_source, draft.path)
        return draft.commit(
            stage="train",
            roles={
                WEIGHTS: "weights", MODEL_JSON: "description", "train.json": "config", "history.jsonl": "history",
            } | ({"curves.png": "plot"} if cfg.plots else {}) | code,
            lineage=lineage([dataset.version], resolved, seed=cfg.seed, dataset_hash=dataset.dataset_hash),
            results={
                "best_epoch": best["epoch"], "val_accuracy": best["val_accuracy"], "val_loss": best["val_loss"],
                "params": model_desc.params,
            },
        )
