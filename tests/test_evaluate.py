"""Evaluation through the CLI: metrics.json, plots, the model card, comparison and gates."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from PIL import Image

from conftest import assert_clean_error, cnnpipe, cnnpipe_json

METRICS_KEYS = {
    "schema", "model", "dataset", "split", "images", "accuracy", "top5_accuracy", "loss", "ece",
    "mean_confidence", "macro", "weighted", "per_class", "confusion", "misclassified", "comparison", "gates",
    "accuracy_interval",
}
PLOTS = ("confusion.png", "per_class.png", "misclassified.png")


def assert_plot(path: Path) -> None:
    """A valid PNG of a plausible size for a readable plot."""
    assert 10_000 < path.stat().st_size < 2_000_000, (path, path.stat().st_size)
    with Image.open(path) as img:
        assert img.format == "PNG" and img.width >= 400 and img.height >= 300, (path, img.size)
        img.verify()


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_run_writes_metrics_plots_and_a_model_card_into_model_and_bundle(root_copy: Path, pipeline_run: dict):
    evaluation = root_copy / "models/lenet5/v1/eval/test/v1"
    metrics = json.loads((evaluation / "metrics.json").read_text())
    assert set(metrics) == METRICS_KEYS and metrics["schema"] == "cnnpipe.metrics/1"
    assert metrics["images"] == 2000 and metrics["accuracy"] > 0.9 and 0 < metrics["ece"] < 0.2
    assert metrics["top5_accuracy"] >= metrics["accuracy"]
    assert len(metrics["misclassified"]) == min(32, round(2000 * (1 - metrics["accuracy"])))
    confusion = (evaluation / "confusion.csv").read_text().splitlines()
    assert confusion[0].split(",")[1:] == [str(d) for d in range(10)] and len(confusion) == 11
    for plot in PLOTS:
        assert_plot(evaluation / plot)

    bundle = root_copy / "exports/lenet5/v1"
    card = (bundle / "README.md").read_text()
    meta = front_matter(card)
    assert front_matter((evaluation / "README.md").read_text()) == meta
    (result,) = meta["model-index"][0]["results"]
    assert result["dataset"]["name"] == "mnist-sample@v1" and result["dataset"]["split"] == "test"
    values = {m["type"]: m["value"] for m in result["metrics"]}
    assert values["accuracy"] == round(metrics["accuracy"], 6)
    assert values["f1"] == round(metrics["macro"]["f1"], 6)
    model = json.loads((bundle / "model.json").read_text())
    for needle in ("61,706", model["dataset"]["hash"], "## Limitations", "## How to load each export",
                   "onnxruntime", "torch.jit.load", "load_file"):
        assert needle in card, needle
    for plot in (*PLOTS, "curves.png"):
        assert f"]({plot})" in card and (bundle / plot).is_file()
    assert json.loads((bundle / "metrics.json").read_text()) == metrics
    assert pipeline_run["verify"]["passed"]  # the verify that run ended with covered the card and plots
    hashed = {f["path"] for f in json.loads((bundle / "manifest.json").read_text())["files"]}
    assert {"README.md", "metrics.json", *PLOTS} <= hashed


def test_the_per_class_table_is_on_screen_worst_first(root_copy: Path):
    proc = cnnpipe(root_copy, "evaluate", "lenet5")
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((root_copy / "models/lenet5/v1/eval/test/v2/metrics.json").read_text())
    worst = min(metrics["per_class"], key=lambda c: c["accuracy"])
    rows = [line for line in proc.stdout.splitlines() if line.startswith("│")]
    assert len(rows) == 10 and rows[0].split("│")[1].strip() == worst["class"]
    for column in ("precision", "recall", "f1", "support"):
        assert column in proc.stdout


def test_accuracy_floor_is_a_gate_and_the_evaluation_is_kept(root_copy: Path):
    proc = cnnpipe(root_copy, "evaluate", "lenet5", "--min-accuracy", "0.9999", "--json")
    assert_clean_error(proc, 1, "gate failed: min_accuracy")
    result = json.loads(proc.stdout)
    assert result["passed"] is False and result["gates"][0]["limit"] == 0.9999
    low, high = result["accuracy_interval"]  # 95% Wilson: the gate fails on the whole interval, not by chance
    assert low < result["accuracy"] < high < 0.9999 and result["gates"][0]["bound"]["verdict"] == "fail"
    kept = json.loads((Path(result["path"]) / "metrics.json").read_text())
    assert kept["gates"] == result["gates"]
    assert cnnpipe_json(root_copy, "evaluate", "lenet5", "--min-accuracy", "0.5")["passed"] is True


def test_comparison_gate_fails_a_model_that_got_worse(root_copy: Path):
    worse = cnnpipe_json(root_copy, "train", "--epochs", "1", "--lr", "1e-5")
    assert worse["ref"] == "lenet5@v2"
    proc = cnnpipe(root_copy, "evaluate", "lenet5@v2", "--against", "lenet5@v1", "--max-regression", "5", "--json")
    assert_clean_error(proc, 1, "gate failed: max_regression", "against lenet5@v1")
    comparison = json.loads(proc.stdout)["comparison"]
    assert comparison["against"] == "lenet5@v1" and comparison["delta_points"] < -5
    assert len(comparison["per_class"]) == 10
    same = cnnpipe_json(root_copy, "evaluate", "lenet5@v1", "--against", "lenet5@v1", "--max-regression", "0",
                        "--gate-on", "point")
    assert same["passed"] and all(r["delta_points"] == 0 for r in same["comparison"]["per_class"])
    human = cnnpipe(root_copy, "evaluate", "lenet5@v2", "--against", "lenet5@v1")
    assert human.returncode == 0 and "Δ points" in human.stdout  # no limit given: report only


def test_run_compares_against_the_version_before_it_trains(root_copy: Path):
    # lenet5 is v1 here; the gate must compare the new v2 with v1, not with itself.
    proc = cnnpipe(root_copy, "run", "--epochs", "1", "--lr", "1e-5", "--against", "lenet5", "--max-regression", "1")
    assert_clean_error(proc, 1, "gate failed: max_regression", "against lenet5@v1")
    assert (root_copy / "models/lenet5/v2").is_dir() and not (root_copy / "exports/lenet5/v2").exists()
    assert "worst classes first" in proc.stdout and "Δ points" in proc.stdout  # the per-class table
