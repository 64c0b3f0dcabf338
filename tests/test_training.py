"""Training options, schedules, early stopping, resume after SIGKILL, and DDP on 2 processes."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cnnpipe.options import DownloadOptions, TrainConfig
from cnnpipe.stages.download import download
from cnnpipe.stages.train import train
from cnnpipe.training.optim import make_schedule

from conftest import assert_clean_error, cli_env, cnnpipe, cnnpipe_here, cnnpipe_json


def _lrs(schedule: str, **kw) -> list[float]:
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = make_schedule(opt, schedule, 1.0, steps_per_epoch=10, epochs=4, **kw)
    out = []
    for _ in range(40):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_schedules_warm_up_then_decay_as_named():
    cosine = _lrs("cosine", warmup_epochs=1, step_size=1, gamma=0.1)
    assert cosine[0] == pytest.approx(0.1) and cosine[9] == pytest.approx(1.0)
    assert cosine[10] == pytest.approx(1.0) and cosine[25] == pytest.approx(0.5 * (1 + math.cos(math.pi * 15 / 30)))
    assert cosine[-1] < 0.01
    step = _lrs("step", warmup_epochs=0, step_size=1, gamma=0.5)
    assert step[0] == step[9] == 1.0 and step[10] == 0.5 and step[39] == 0.125
    assert set(_lrs("none", warmup_epochs=0, step_size=1, gamma=0.1)) == {1.0}
    onecycle = _lrs("onecycle", warmup_epochs=1, step_size=1, gamma=0.1)
    assert max(onecycle) == pytest.approx(1.0) and onecycle.index(max(onecycle)) in (9, 10) and onecycle[-1] < 1e-3


@pytest.fixture(scope="module")
def sample_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sample")
    download("mnist-sample", DownloadOptions(plots=False), root)
    return root


def test_early_stopping_stops_when_validation_stops_improving(sample_root: Path):
    result = train(TrainConfig(epochs=6, lr=1e-12, patience=2, name="stale"), sample_root)
    assert result.stopped_early and result.epochs_run == 3 and result.best_epoch == 1
    assert [h["epoch"] for h in result.history] == [1, 2, 3]


def test_options_are_resolved_and_recorded(sample_root: Path):
    result = train(
        TrainConfig(arch="cnn-small", epochs=1, optimizer="sgd", lr=0.05, nesterov=True, schedule="step",
                    label_smoothing=0.1, grad_clip=1.0, name="recorded", device="cpu"),
        sample_root,
    )
    recorded = json.loads((Path(result.path) / "train.json").read_text())["config"]
    assert recorded["optimizer"] == "sgd" and recorded["nesterov"] and recorded["weight_decay"] == 0.0
    assert recorded["batch_size"] == 64 and recorded["label_smoothing"] == 0.1 and recorded["precision"] == "fp32"
    assert result.val_accuracy > 0.5


def _weights(root: Path, name: str) -> bytes:
    return (root / f"models/{name}/v1/weights.safetensors").read_bytes()


def test_a_killed_run_resumes_to_the_same_weights(sample_root: Path, tmp_path: Path):
    args = ["train", "--model", "dropout-cnn", "--epochs", "2", "--batch-size", "128", "--deterministic", "--device", "cpu"]
    assert cnnpipe(sample_root, *args, "--name", "whole").returncode == 0

    proc = subprocess.Popen(
        [sys.executable, "-m", "cnnpipe", "--root", str(sample_root), *args, "--name", "cut"],
        env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    runs = sample_root / "models/cut/.runs"
    deadline = time.monotonic() + 240
    while not list(runs.glob("*/checkpoint.pt")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list(runs.glob("*/checkpoint.pt")), "the run never checkpointed"
    assert not (sample_root / "models/cut/v1").exists()

    resumed = cnnpipe_json(sample_root, "train", "--resume", "cut")
    assert resumed["ref"] == "cut@v1" and resumed["resumed_from"]
    assert [h["epoch"] for h in resumed["history"]] == [1, 2]
    assert _weights(sample_root, "cut") == _weights(sample_root, "whole")
    assert not list(runs.glob("*"))  # the finished run's folder is gone
    assert_clean_error(cnnpipe_here(sample_root, "train", "--resume", "cut"), 2, "no interrupted training run")


def test_a_hostile_checkpoint_is_refused(sample_root: Path, tmp_path: Path):
    run = sample_root / "models/evil/.runs/x"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"arch": "lenet5", "name": "evil"}))

    class Exploit:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    torch.save({"model": Exploit()}, run / "checkpoint.pt")
    assert_clean_error(cnnpipe_here(sample_root, "train", "--resume", str(run)), 2, "cannot resume from it")
    assert not (tmp_path / "pwned").exists()


def test_two_processes_with_gloo_make_a_normal_model_version(sample_root: Path):
    proc = cnnpipe(sample_root, "train", "--nproc", "2", "--epochs", "1", "--name", "ddp", "--device", "cpu", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["ref"] == "ddp@v1" and result["world_size"] == 2 and result["val_accuracy"] > 0.8
    manifest = json.loads((sample_root / "models/ddp/v1/manifest.json").read_text())
    assert manifest["lineage"]["config"]["world_size"] == 2
    assert sorted(p.name for p in (sample_root / "models/ddp").iterdir() if p.name.startswith("v")) == ["v1"]
    evaluated = cnnpipe_json(sample_root, "evaluate", "ddp")
    assert evaluated["accuracy"] > 0.8


def test_a_run_that_explodes_is_committed_with_a_warning_or_refused_by_max_val_loss(sample_root: Path):
    exploded = cnnpipe_json(sample_root, "train", "--epochs", "1", "--optimizer", "sgd", "--lr", "50", "--name", "boom")
    assert exploded["warnings"] and "training exploded" in exploded["warnings"][0]
    assert json.loads((sample_root / "models/boom/v1/train.json").read_text())["warnings"] == exploded["warnings"]
    cnnpipe_json(sample_root, "evaluate", "boom")
    assert "**Warning:** the best epoch's validation loss" in (sample_root / "models/boom/v1/eval/test/v1/README.md").read_text()
    refused = cnnpipe(sample_root, "train", "--epochs", "1", "--optimizer", "sgd", "--lr", "50", "--name", "boom2",
                      "--max-val-loss", "5")
    assert_clean_error(refused, 1, "is above --max-val-loss 5; nothing was committed")
    assert not (sample_root / "models/boom2/v1").exists()
    fine = cnnpipe_json(sample_root, "train", "--epochs", "1", "--name", "fine", "--max-val-loss", "5")
    assert fine["warnings"] == [] and fine["ref"] == "fine@v1"


class _StopAtEpoch:
    """A progress that interrupts the run as epoch ``epoch`` starts, as Ctrl-C would."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def start_epoch(self, epoch: int, epochs: int, steps: int) -> None:
        if epoch == self.epoch:
            raise KeyboardInterrupt

    def advance(self, *args) -> None:
        pass

    def end_epoch(self, record: dict) -> None:
        pass


def test_sparse_validation_and_checkpoints_resume_exactly(sample_root: Path):
    """--val-every and --checkpoint-every: validated epochs only are candidates, and a run cut after its
    last checkpoint resumes from it (the epoch after lost, trained again) to the uninterrupted weights."""
    config = TrainConfig(arch="fc2", epochs=3, batch_size=128, deterministic=True, device="cpu",
                         val_every=2, checkpoint_every=2, cutout=6)
    whole = train(TrainConfig(**{**config.__dict__, "name": "sparse-whole"}), sample_root)
    assert [("val_accuracy" in h) for h in whole.history] == [False, True, True]
    assert whole.best_epoch in (2, 3) and set(whole.parts) == {"setup_s", "val_s", "checkpoint_s", "commit_s"}
    cut = TrainConfig(**{**config.__dict__, "name": "sparse-cut"})
    with pytest.raises(KeyboardInterrupt):
        train(cut, sample_root, progress=_StopAtEpoch(3))
    saved = torch.load(next((sample_root / "models/sparse-cut/.runs").glob("*/checkpoint.pt")), weights_only=True)
    assert saved["epoch"] == 2
    resumed = train(cut, sample_root, resume="sparse-cut")
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    assert _weights(sample_root, "sparse-cut") == _weights(sample_root, "sparse-whole")


def test_a_recipe_sets_only_the_options_left_at_their_defaults():
    fast = TrainConfig(arch="resnet18", recipe="fast", lr=0.05, epochs=3).resolved()
    assert (fast.lr, fast.epochs) == (0.05, 3)  # the user's own values stay
    assert (fast.batch_size, fast.schedule, fast.cutout, fast.compile_mode) == (512, "onecycle", 8, "reduce-overhead")
    assert TrainConfig(arch="resnet18", recipe="fast", epochs=8, cutout=0).resolved().epochs == 8  # given, = default
    assert TrainConfig(arch="resnet18", recipe="fast", cutout=0).resolved().cutout == 0
    assert TrainConfig(arch="resnet18", recipe="fast").resolved().epochs > 8
    assert TrainConfig(arch="resnet18").resolved().schedule == "cosine"  # no recipe: the network's


def test_cutout_blanks_one_square_per_image_clipped_at_the_border():
    from cnnpipe.data.batches import cutout

    x = torch.ones(64, 3, 10, 10)
    out = cutout(x, 4, torch.Generator().manual_seed(0))
    blank = (out == 0).all(1)  # every channel of a blanked pixel
    assert (out[:, 0] == 0).equal(blank) and ((out == 0) | (out == 1)).all()
    sizes = blank.flatten(1).sum(1)
    assert sizes.max() == 16 and sizes.min() >= 4  # a whole 4x4 square, or its part inside the image
    rows, cols = blank.any(2).sum(1), blank.any(1).sum(1)
    assert (rows * cols == sizes).all()  # a rectangle, not scattered pixels
