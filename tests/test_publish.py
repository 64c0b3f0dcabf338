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

from conftest import assert_clean_error, cnnpipe, cnnpipe_here, cnnpipe_json, resign


@pytest.fixture(scope="module")
def tracking(tmp_path_factory: pytest.TempPathFactory):
    with mlflow_server(tmp_path_factory.mktemp("mlflow")) as uri:
        yield uri


def test_publish_then_load_from_the_registry_and_predict(root_copy: Path, tracking: str, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch):
    import mlflow
    from mlflow import MlflowClient

    pipeline_root = root_copy  # other tests' verify runs with failing gates add reports to the shared root
    keys = _keys(tmp_path / "keys")
    verdict = cnnpipe_json(pipeline_root, "verify", "lenet5", "--samples", "64", "--sign-key", keys["key"])
    assert verdict["passed"] and verdict["statement"].endswith(".intoto.json")
    first = cnnpipe_json(pipeline_root, "publish", "lenet5", "--mlflow", tracking, "--alias", "champion",
                         "--public-key", keys["pub"])
    assert first["created"] and first["version"] == "1"
    assert first["tags"]["cnnpipe.verify_proof"] == "statement:" + Path(verdict["statement"]).name
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


def _keys(folder: Path) -> dict[str, str]:
    proc = cnnpipe(folder.parent, "keygen", "--out", str(folder))
    assert proc.returncode == 0, proc.stderr
    return {"key": str(folder / "cnnpipe-signing.key"), "pub": str(folder / "cnnpipe-signing.pub")}


def test_publish_needs_a_statement_that_verifies_or_runs_verify_itself(root_copy: Path, tracking: str, tmp_path: Path):
    from mlflow import MlflowClient

    keys, other = _keys(tmp_path / "keys"), _keys(tmp_path / "other")
    bundle = root_copy / "exports/lenet5/v1"
    publish = ["publish", "lenet5", "--mlflow", tracking, "--registered-model", "refused", "--public-key", keys["pub"]]
    reports = [json.loads(p.read_text()) for p in (bundle / "verify").glob("*.json")]
    assert any(r["passed"] for r in reports)  # `run` left a passed, unsigned report (other tests may add theirs)
    assert_clean_error(cnnpipe_here(root_copy, *publish), 1, "no passed verification statement verifies")
    cnnpipe_json(root_copy, "verify", "lenet5", "--samples", "32", "--sign-key", other["key"])
    assert_clean_error(cnnpipe_here(root_copy, *publish), 1, "does not verify with")
    cnnpipe_json(root_copy, "verify", "lenet5", "--samples", "32", "--sign-key", keys["key"])
    card = bundle / "README.md"
    card.write_text(card.read_text() + "\npip install a-helpful-package\n")
    resign(bundle, "README.md")
    assert_clean_error(cnnpipe_here(root_copy, *publish), 1, "signed for other files (README.md, manifest.json)")
    # Without a key, publish verifies the bundle itself: a tampered ONNX weight fails it.
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(bundle / "model.onnx"))
    weight = graph.graph.initializer[0]
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * 1.5, weight.name))
    onnx.save(graph, str(bundle / "model.onnx"))
    resign(bundle, "model.onnx")
    assert_clean_error(cnnpipe_here(root_copy, *publish[:-2]), 1, "verify failed")
    assert not MlflowClient(tracking_uri=tracking).search_registered_models("name = 'refused'")  # nothing was sent
    assert_clean_error(cnnpipe_here(root_copy, "publish", "lenet5", "--mlflow", "http://127.0.0.1:9"), 2,
                       "cannot reach the tracking server")


def test_a_signed_statement_round_trips_and_refuses_another_bundle(root_copy: Path, tmp_path: Path):
    keys, other = _keys(tmp_path / "keys"), _keys(tmp_path / "other")
    assert cnnpipe_json(root_copy, "export", "lenet5", "--format", "onnx", "--sign-key", keys["key"])["ref"] == "lenet5@v2"
    signed = cnnpipe_json(root_copy, "verify", "lenet5@v2", "--samples", "16", "--sign-key", keys["key"])
    statement = Path(signed["statement"])
    envelope = json.loads(statement.read_text())
    assert envelope["payloadType"] == "application/vnd.in-toto+json" and len(envelope["signatures"]) == 1
    checked = cnnpipe_json(root_copy, "verify", "lenet5@v2", "--samples", "16", "--public-key", keys["pub"])
    assert [(s["file"], s["valid"], s["passed"]) for s in checked["statements"]] == [(statement.name, True, True)]
    import base64

    payload = json.loads(base64.b64decode(envelope["payload"]))
    assert payload["predicate"]["version"] == 2 and payload["predicate"]["bundle"] == "lenet5@v2"
    import torch  # the reference worker's torch, named by a verify whose own process imports none

    assert payload["predicate"]["environment"]["torch"] == torch.__version__
    assert {s["name"] for s in payload["subject"]} >= {"model.onnx", "manifest.json", "model.json"}
    # the same statement copied beside another bundle names other files
    copy = root_copy / "exports/lenet5/v1/verify" / statement.name
    copy.write_bytes(statement.read_bytes())
    from cnnpipe.store.workspace import Workspace
    from cnnpipe.verification.statement import check_statements

    v1 = Workspace(root_copy).exports.resolve("lenet5@v1")
    assert [r["reason"] for r in check_statements(v1, Path(keys["pub"])) if r["file"] == statement.name][0].startswith(
        "signed for other files")
    # one changed byte of the payload, or another key: refused
    envelope["payload"] = base64.b64encode(base64.b64decode(envelope["payload"]).replace(b'"passed": false', b'"passed": true')
                                           .replace(b"lenet5@v2", b"lenet5@v1")).decode()
    copy.write_text(json.dumps(envelope))
    assert not any(r["valid"] for r in check_statements(v1, Path(keys["pub"])) if r["file"] == statement.name)
    v2 = Workspace(root_copy).exports.resolve("lenet5@v2")
    assert not any(r["valid"] for r in check_statements(v2, Path(other["pub"])))
    # latest moved back to v1: said on stderr; refused where a signature is required
    (root_copy / "exports/lenet5/latest").write_text("v1\n")
    proc = cnnpipe(root_copy, "verify", "lenet5", "--samples", "16", "--require-signature", "--public-key", keys["pub"])
    assert_clean_error(proc, 2, "lenet5: latest names v1, but v2 is its newest complete version")
