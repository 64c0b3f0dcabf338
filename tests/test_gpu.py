"""The CUDA path on a real GPU: compiled bf16 training, resume, verify and bench on CUDA.

Every test here skips on a machine without CUDA (CI has none); they ran on a lent GPU
machine, and benchmarks/RESULTS.md records where and when.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import cli_env, cnnpipe, cnnpipe_json

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _ort_cuda() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


@pytest.fixture(scope="module")
def cuda_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cuda")
    assert cnnpipe(root, "download", "--no-plots").returncode == 0
    return root


@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_compiled_bf16_training_on_cuda(cuda_root: Path, mode: str):
    name = f"compiled-{mode}"
    result = cnnpipe_json(
        cuda_root, "train", "--device", "cuda", "--compile", "on", "--compile-mode", mode, "--precision", "bf16",
        "--epochs", "3", "--name", name,
    )
    assert (result["device"], result["compiled"], result["precision"]) == ("cuda", True, "bf16")
    assert result["compile_s"] > 0 and result["images_per_s"] > 0
    assert result["val_accuracy"] > 0.85, result["history"]
    evaluated = cnnpipe_json(cuda_root, "evaluate", name, "--device", "cuda")
    assert evaluated["accuracy"] > 0.85



def test_the_fast_recipe_validates_and_checkpoints_sparsely_on_cuda(cuda_root: Path):
    result = cnnpipe_json(cuda_root, "train", "--model", "resnet18", "--recipe", "fast", "--epochs", "8", "--name", "fast")
    assert (result["device"], result["compiled"], result["precision"]) == ("cuda", True, "bf16")
    assert [h["epoch"] for h in result["history"] if "val_accuracy" in h] == [4, 8]
    assert result["val_accuracy"] > 0.85, result["history"]
    assert set(result["parts"]) == {"setup_s", "val_s", "checkpoint_s", "commit_s"}

_INTERRUPT = """
import sys
from pathlib import Path
from cnnpipe.options.training import TrainConfig
from cnnpipe.stages.train import train

class StopAtEpoch2:
    def start_epoch(self, epoch, epochs, steps):
        if epoch == 2:
            raise KeyboardInterrupt
    def advance(self, *args): pass
    def end_epoch(self, record): pass

try:
    train(TrainConfig(arch="dropout-cnn", epochs=3, batch_size=128, deterministic=True, compile="off",
                      device="cuda", name=sys.argv[2]), Path(sys.argv[1]), progress=StopAtEpoch2())
except KeyboardInterrupt:
    sys.exit(130)
"""


def test_a_run_interrupted_on_cuda_resumes_to_the_same_weights(cuda_root: Path):
    args = ["train", "--model", "dropout-cnn", "--epochs", "3", "--batch-size", "128", "--deterministic",
            "--compile", "off", "--device", "cuda"]
    assert cnnpipe(cuda_root, *args, "--name", "whole").returncode == 0
    proc = subprocess.run([sys.executable, "-c", _INTERRUPT, str(cuda_root), "cut"], env=cli_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 130, proc.stderr
    assert list((cuda_root / "models/cut/.runs").glob("*/checkpoint.pt"))

    resumed = cnnpipe_json(cuda_root, "train", "--resume", "cut")
    assert resumed["device"] == "cuda" and [h["epoch"] for h in resumed["history"]] == [1, 2, 3]
    whole = (cuda_root / "models/whole/v1/weights.safetensors").read_bytes()
    assert (cuda_root / "models/cut/v1/weights.safetensors").read_bytes() == whole  # dropout's CUDA RNG resumed


def test_verify_and_bench_on_cuda(pipeline_root: Path):
    proc = cnnpipe(pipeline_root, "verify", "lenet5", "--providers", "cpu,cuda", "--samples", "256", "--json")
    report = json.loads(proc.stdout)
    rows = {(r["format"], r["runtime"]): r for r in report["formats"]}
    fresh = rows[("safetensors", "torch (fresh model)[cuda]")]
    assert fresh["passed"] and fresh["top1_agreement"] == 1.0 and fresh["max_abs_diff"] < 1e-3
    onnx = rows[("onnx", "onnxruntime[cuda]")]
    if _ort_cuda():  # onnxruntime-gpu with its CUDA libraries: every row passes on the provider asked for
        assert proc.returncode == 0 and report["passed"], proc.stderr
        assert onnx["providers"][0] == "CUDAExecutionProvider" and onnx["passed"]
    else:  # the CPU build: the CUDA rows fail with the reason, never a silent CPU run
        assert proc.returncode == 1 and not onnx["passed"]
        assert all(r["passed"] for (_, runtime), r in rows.items() if not runtime.startswith("onnxruntime[cuda"))

    bench = cnnpipe_json(pipeline_root, "bench", "lenet5", "--seconds", "0.2", "--batch-sizes", "1,256")
    runtimes = {r["runtime"] for r in bench["rows"]}
    assert "pytorch eager (cuda)" in runtimes
    assert ("onnxruntime (cuda)" in runtimes) == _ort_cuda()
    assert all(r["images_per_s"] > 0 for r in bench["rows"])


def test_a_pretrained_torchvision_network_fine_tunes_compiled_on_cuda_and_verifies_there(cuda_root: Path, tmp_path: Path):
    """Issue 25's GPU check: --pretrained through torchvision's cache (seeded), compiled bf16 training, and the
    CUDA row of the fresh model within float32 tolerances (PyTorch's TF32 convolutions failed it once)."""
    import torchvision

    checkpoint = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    checkpoint.parent.mkdir(parents=True)
    torch.save(torchvision.models.resnet18().state_dict(), checkpoint)
    env = {"TORCH_HOME": str(tmp_path)}
    trained = cnnpipe_json(cuda_root, "train", "--model", "torchvision:resnet18", "--pretrained", "--device", "cuda",
                           "--compile", "on", "--epochs", "2", "--name", "tuned", env=env)
    assert (trained["device"], trained["compiled"]) == ("cuda", True) and "IMAGENET1K_V1" in trained["fine_tune"]
    assert cnnpipe(cuda_root, "export", "tuned", "--format", "safetensors").returncode == 0
    report = json.loads(cnnpipe(cuda_root, "verify", "tuned", "--providers", "cpu,cuda", "--samples", "256", "--json").stdout)
    rows = {r["runtime"]: r for r in report["formats"]}
    assert rows["torch (fresh model)[cuda]"]["passed"], rows["torch (fresh model)[cuda]"]["reasons"]
