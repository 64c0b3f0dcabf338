"""Stage 2: train a network on a dataset version; keep the epoch best on validation.

A run checkpoints after every epoch into ``models/<name>/.runs/<run>/checkpoint.pt``
(tensors and plain types only, read back with ``weights_only=True``); an interrupted or
diverged run resumes from there with ``--resume``. The version is committed at the end
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
from ..nets.pretrained import Pretrained, input_stats, load_pretrained
from ..nets.registry import param_count
from ..nets.sources import ArchSource, build_arch, parse, store_code
from ..options.training import TrainConfig
from ..store.provenance import environment, lineage
from ..store.workspace import Workspace
from ..training.engine import Progress, batched_logits, train_epoch
from ..training.finetune import apply_init, find_head, freeze_all_but, initial_state
from ..training.health import check_max_val_loss, warnings_of
from ..training.optim import make_optimizer, make_schedule
from ..training.placement import distributed, eval_batch_size, train_source
from ..training.runs import find_run, load_run, run_folder, save_checkpoint


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
    timings: dict[str, Any] = field(default_factory=lambda: {"compile_s": 0.0, "train_s": 0.0, "images": 0})
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
    if cfg.batch_size % world:
        raise CnnpipeError(f"--batch-size {cfg.batch_size} must divide evenly over {world} processes")
    info = dataset.info
    torch.manual_seed(cfg.seed)
    model, arch_source = build_arch(cfg.arch, info["channels"], info["height"], len(dataset.classes))
    fine_tune, pretrained = _fine_tune(model, cfg, ws.root, torch.zeros(2, info["channels"], info["height"], info["width"]))
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
        cfg, dataset, arch_source, fine_tune, pretrained, mean, std, rank, world, device, compiled, bf16, model,
        torch.compile(wrapped, mode=cfg.compile_mode) if compiled else wrapped, source, drop_last, optimizer, schedule,
        torch.Generator().manual_seed(cfg.seed), x_val, y_val, eval_batch_size(len(y_val), cfg.eval_batch_size),
    )


def _fine_tune(model: torch.nn.Module, cfg: TrainConfig, root: Path,
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


def _checkpoint(run: _Run, state: _State, run_dir: Path) -> None:
    save_checkpoint(run_dir, {
        "epoch": state.epoch, "model": {k: v.detach().cpu().contiguous() for k, v in run.model.state_dict().items()},
        "optimizer": run.optimizer.state_dict(), "schedule": run.schedule.state_dict(),
        "generator": run.generator.get_state(), "torch_rng": torch.get_rng_state(),
        **({"cuda_rng": torch.cuda.get_rng_state(run.device)} if run.device.type == "cuda" else {}),
        "history": state.history, "best": state.best, "timings": state.timings, "stale": state.stale,
    })


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
        grad_clip=cfg.grad_clip, bf16=run.bf16,
    )
    if not math.isfinite(stats.loss):
        _diverged(f"training loss became {stats.loss}", epoch, run_dir)
    timings = state.timings
    if epoch == 1 and run.compiled:
        timings["compile_s"] = stats.first_step_s
    timings["train_s"] += stats.seconds - (timings["compile_s"] if epoch == 1 else 0.0)
    timings["images"] += stats.images * run.world
    t0 = time.perf_counter()
    logits = batched_logits(run.step_model, run.x_val, run.mean, run.std, run.val_batch, run.device, run.bf16)
    val_loss = F.cross_entropy(logits, run.y_val).item()
    if not math.isfinite(val_loss):
        _diverged(f"validation loss became {val_loss}", epoch, run_dir)
    floats = {k: v for k, v in run.model.state_dict().items() if v.is_floating_point()}
    finite = torch.stack([torch.isfinite(v).all() for v in floats.values()]).tolist() if floats else []
    if not all(finite):
        _diverged(f"weights became NaN or Inf ({list(floats)[finite.index(False)]})", epoch, run_dir)
    val_acc = (logits.argmax(1) == run.y_val).float().mean().item()
    record = {
        "epoch": epoch, "train_loss": stats.loss, "train_accuracy": stats.accuracy,
        "val_loss": val_loss, "val_accuracy": val_acc, "val_max_abs_logit": logits.abs().max().item(),
        "lr": run.optimizer.param_groups[0]["lr"],
        "train_s": stats.seconds, "val_s": time.perf_counter() - t0,
        "images_per_s": stats.images * run.world / stats.seconds,
    }
    state.history.append(record)
    state.epoch = epoch
    if val_acc > state.best["val_accuracy"]:
        weights = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in run.model.state_dict().items()}
        state.best = {"epoch": epoch, "val_accuracy": val_acc, "val_loss": val_loss, "state": weights}
        state.stale = 0
    else:
        state.stale += 1
    if progress is not None and lead:
        progress.end_epoch(record)
    return record


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
    run = _setup(cfg, ws)
    state = _restore(run, saved) if saved is not None else _State()
    run_dir = stack.enter_context(run_folder(ws, cfg.name, config, resumed)) if run.rank == 0 else None

    stopped_early = False
    for epoch in range(state.epoch + 1, cfg.epochs + 1):
        _epoch(run, state, epoch, progress, run_dir)
        if run.rank == 0 and run_dir is not None:
            _checkpoint(run, state, run_dir)
        if cfg.patience is not None and state.stale >= cfg.patience:
            stopped_early = True
            break

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
    version = _commit(ws, cfg, run, best, state.history, timings, result)
    if run.world > 1:
        dist.barrier()
    result.ref, result.path = version.ref, str(version.path)
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
        plot_curves(history, draft.path / "curves.png", title=f"{name} on {dataset.version.ref}")
        code = store_code(cfg.arch, run.arch_source, draft.path)
        return draft.commit(
            stage="train",
            roles={
                WEIGHTS: "weights", MODEL_JSON: "description", "train.json": "config",
                "history.jsonl": "history", "curves.png": "plot",
            } | code,
            lineage=lineage([dataset.version], resolved, seed=cfg.seed, dataset_hash=dataset.dataset_hash),
            results={
                "best_epoch": best["epoch"], "val_accuracy": best["val_accuracy"], "val_loss": best["val_loss"],
                "params": model_desc.params,
            },
        )
