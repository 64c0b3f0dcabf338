"""Options declared once: the same flags and defaults on every command that takes them,
``--config FILE`` on each of them, and ``--root`` before or after the command."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import typer

from cnnpipe.cli.app import app
from cnnpipe.options import (
    BenchOptions,
    DownloadOptions,
    EvaluateOptions,
    ExportOptions,
    GateOptions,
    GcOptions,
    PredictOptions,
    PublishOptions,
    TrainConfig,
    VerifyOptions,
)
from cnnpipe.options.commands import RunOptions

from conftest import assert_clean_error, choices_of, cli_env, cnnpipe, cnnpipe_here, cnnpipe_json

COMMANDS = typer.main.get_command(app).commands
GROUPS = {"train": [TrainConfig], "export": [ExportOptions], "verify": [VerifyOptions], "evaluate": [EvaluateOptions],
          "run": [TrainConfig, ExportOptions, VerifyOptions, GateOptions, RunOptions], "download": [DownloadOptions],
          "bench": [BenchOptions], "predict": [PredictOptions], "publish": [PublishOptions], "gc": [GcOptions]}


def _params(command: str) -> dict[str, object]:
    return {p.name: p for p in COMMANDS[command].params}


@pytest.mark.parametrize("command", sorted(GROUPS))
def test_each_option_field_is_an_option_with_the_dataclass_default(command: str):
    params = _params(command)
    for cls in GROUPS[command]:
        for f in (f for f in dataclasses.fields(cls) if "cli" in f.metadata):
            default = f.default if f.default is not dataclasses.MISSING else list(f.default_factory())
            got = params[f.name].default
            got = [getattr(g, "value", g) for g in got] if isinstance(got, list) else getattr(got, "value", got)
            assert got == default, (command, f.name)
            choices = f.metadata["cli"].choices
            if choices:
                assert choices_of(params[f.name]) == list(choices), (command, f.name)


def test_every_command_takes_root_and_config_after_its_name():
    for name, command in COMMANDS.items():
        if name == "keygen":  # writes a key pair to --out and touches no store
            continue
        opts = {o for p in command.params for o in p.opts}
        assert {"--root", "--config"} <= opts, name


def test_root_after_the_command_and_config_files_for_train_export_and_verify(tmp_path: Path):
    root, elsewhere = tmp_path / "store", tmp_path / "cwd"
    elsewhere.mkdir()
    root.mkdir()
    (tmp_path / "train.toml").write_text('epochs = 1\nname = "fromfile"\nbatch-size = 128\n')
    (tmp_path / "export.toml").write_text('format = ["onnx", "safetensors"]\n')
    (tmp_path / "verify.toml").write_text('samples = 16\nbatch-sizes = "1,3"\n')

    def run(*args: str) -> dict:
        import json
        import subprocess
        import sys

        proc = subprocess.run([sys.executable, "-m", "cnnpipe", *args, "--root", str(root), "--json"], cwd=elsewhere,
                              env=cli_env(), capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    assert cnnpipe(root, "download").returncode == 0
    trained = run("train", "--config", str(tmp_path / "train.toml"), "--epochs", "2")
    assert trained["ref"] == "fromfile@v1" and trained["epochs_run"] == 2  # the command line beats the file
    exported = run("export", "fromfile", "--config", str(tmp_path / "export.toml"))
    assert exported["formats"] == ["onnx", "safetensors"]
    verified = run("verify", "fromfile", "--config", str(tmp_path / "verify.toml"))
    assert verified["passed"] and verified["images"] == 16 and verified["batch_sizes"] == [1, 3]
    assert not list(elsewhere.iterdir())  # everything went under --root, nothing into the working folder

    (tmp_path / "typo.toml").write_text("epochz = 1\n")
    assert_clean_error(cnnpipe_here(root, "export", "fromfile", "--config", str(tmp_path / "typo.toml")), 2,
                       "unknown option 'epochz'")


def test_run_passes_every_option_through(tmp_path: Path):
    result = cnnpipe_json(tmp_path, "run", "--epochs", "1", "--format", "onnx", "--int8", "--calibration-images", "24",
                          "--batch-sizes", "1,5", "--samples", "20", "--gate-on", "point")
    assert result["verify"]["batch_sizes"] == [1, 5] and result["verify"]["images"] == 20
    # one --gate-on, given to export's int8 limit and verify's gates (20 images could not decide a bound)
    assert result["export"]["quantization"]["onnx-int8"]["gate_on"] == "point"
    assert {f["bounds"]["top1_agreement"]["gate_on"] for f in result["verify"]["formats"]} == {"point"}
    variants = (tmp_path / "exports/lenet5/v1/model.json").read_text()
    assert "24 training images" in variants
