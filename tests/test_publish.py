"""Publishing a verified bundle to a real MLflow registry (``mlflow server``, SQLite, on 127.0.0.1)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cnnpipe.data.imagefolder import decode_all
from cnnpipe.stages.predict import preprocess
from mlflowserver import mlflow_server
from test_bundle import write_pngs

from conftest import assert_clean_error, cnnpipe, cnnpipe_json


@pytest.fixture(scope="module")
def tracking(tmp_path_factory: pytest.TempPathFactory):
    with mlflow_server(tmp_path_factory.mktemp("mlflow")) as uri:
        yield uri


def test_publish_then_load_from_the_registry_and_predict(root_copy: Path, tracking: str, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch):
    import mlflow
    from mlflow import MlflowClient

    pipeline_root = root_copy  # other tests' verify runs with failing gates add reports to the shared root
    assert cnnpipe_json(pipeline_root, "verify", "lenet5", "--samples", "64")["passed"]
    first = cnnpipe_json(pipeline_root, "publish", "lenet5", "--mlflow", tracking, "--alias", "champion")
    assert first["created"] and first["version"] == "1"
    again = cnnpipe_json(pipeline_root, "publish", "lenet5@v1", "--mlflow", tracking, "--alias", "champion")
    assert not again["created"] and again["version"] == "1"  # found by its sha256 tag, not duplicated

    client = MlflowClient(tracking_uri=tracking)
    versions = client.search_model_versions("name = 'lenet5'")
    assert [v.version for v in versions] == ["1"]
    manifest = pipeline_root / "exports/lenet5/v1/manifest.json"
    tags = versions[0].tags
    import hashlib
    assert tags["cnnpipe.bundle_sha256"] == hashlib.sha256(manifest.read_bytes()).hexdigest()
    bundle_manifest = json.loads(manifest.read_text())
    assert tags["cnnpipe.weights_sha256"] == bundle_manifest["results"]["weights_sha256"]
    model_json = json.loads((pipeline_root / "exports/lenet5/v1/model.json").read_text())
    assert tags["cnnpipe.dataset_hash"] == model_json["dataset"]["hash"]
    assert tags["cnnpipe.verify"] == "passed" and float(tags["cnnpipe.test_accuracy"]) > 0.5
    assert client.get_model_version_by_alias("lenet5", "champion").version == "1"
    artifacts = {a.path for a in client.list_artifacts(versions[0].run_id, "bundle")}
    assert {"bundle/model.onnx", "bundle/manifest.json", "bundle/README.md"} <= artifacts

    # Served from the registry, it answers like cnnpipe predict on the same image files.
    indices = list(range(24))
    paths = write_pngs(pipeline_root, indices, tmp_path / "pngs")
    predicted = cnnpipe_json(pipeline_root, "predict", *map(str, paths), "--bundle", "lenet5", "--top-k", "1")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking)
    served = mlflow.pyfunc.load_model("models:/lenet5@champion")
    onnx_model = mlflow.onnx.load_model("models:/lenet5@champion")
    meta = {p.key: p.value for p in onnx_model.metadata_props}
    channels, size, _ = json.loads(meta["input_shape"])
    images = decode_all([(p, 0) for p in paths], size, channels).images
    logits = served.predict(preprocess(images, meta))
    logits = np.asarray(next(iter(logits.values())) if isinstance(logits, dict) else logits)
    classes = json.loads(meta["classes"])
    assert [classes[i] for i in logits.argmax(1)] == [p["top"][0]["class"] for p in predicted["predictions"]]


def test_publish_refuses_an_unverified_bundle_and_a_missing_server(root_copy: Path, tracking: str):
    exported = cnnpipe_json(root_copy, "export", "lenet5", "--format", "onnx")
    assert_clean_error(cnnpipe(root_copy, "publish", exported["ref"], "--mlflow", tracking), 1, "has never been verified")
    reports = root_copy / "exports/lenet5/v1/verify"
    newest = sorted(reports.glob("*.json"))[-1]
    failed = json.loads(newest.read_text()) | {"passed": False}
    (reports / ("99999999T999999999999Z-host-1.json")).write_text(json.dumps(failed))
    assert_clean_error(cnnpipe(root_copy, "publish", "lenet5@v1", "--mlflow", tracking), 1, "did not pass")
    cnnpipe_json(root_copy, "verify", exported["ref"])
    assert_clean_error(cnnpipe(root_copy, "publish", exported["ref"], "--mlflow", "http://127.0.0.1:9"), 2,
                       "cannot reach the tracking server")
