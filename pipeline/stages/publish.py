"""Publish a verified bundle to an MLflow model registry (``cnnpipe publish REF --mlflow URI``).

The bundle's ONNX model is logged with MLflow's onnx flavor (so ``mlflow.pyfunc.load_model``
serves it with onnxruntime), with a signature and an input example made from real test images
preprocessed as the bundle's metadata says; every file of the bundle is logged beside it as an
artifact. The registered version carries the bundle's and the weights' sha256, the dataset hash,
the test metrics, the proof it was verified (a signed statement, or a verify run by publish) and the
git commit as tags; only the files the manifest lists are sent. Publishing is idempotent: a
version whose ``cnnpipe.bundle_sha256`` tag matches is found and reused, never duplicated, and
the alias moves only once the version is READY.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..description import read_bundle_json
from ..errors import CnnpipeError, NotVerified, first_line
from ..formats import FORMATS
from ..options.commands import PublishOptions
from ..store.version import MANIFEST, Version
from ..store.workspace import Workspace
from ..verification.statement import proven

TAG = "cnnpipe."  # prefix of every tag cnnpipe sets
BUNDLE_TAG = f"{TAG}bundle_sha256"
EXPERIMENT = "cnnpipe-publish"
EXAMPLE_IMAGES = 4
PROBE_TIMEOUT = 10.0  # seconds to reach the tracking server before anything is sent



@dataclass
class PublishResult:
    """The registered model version that holds the bundle."""

    bundle: str
    registered_model: str
    version: str
    alias: str | None
    created: bool
    model_uri: str
    tags: dict[str, str]


def proof(bundle: Version, options: PublishOptions, root: Path) -> dict[str, str]:
    """Why ``bundle`` may be published: a passed statement that verifies with ``--public-key`` and names
    its files, or (without a key) a verify run here that passed; ``NotVerified`` otherwise. A report
    file alone is never proof: anyone who can write the store can write one."""
    if options.public_key is not None:
        return {"by": "statement", "file": proven(bundle, Path(options.public_key))["file"]}
    from .verify import verify

    result = verify(bundle.ref, root=root)
    if not result.passed:
        raise NotVerified(f"{bundle.ref}: verify failed (report: {result.report_path}); fix what it names first")
    return {"by": "verify", "file": Path(result.report_path).name}


def _tags(bundle: Version, report: dict[str, str]) -> dict[str, str]:
    model = read_bundle_json(bundle)
    metrics = bundle.read_json("metrics.json") if bundle.lists("metrics.json") else {}
    git = bundle.manifest.get("lineage", {}).get("git") or {}
    tags = {
        BUNDLE_TAG: bundle.manifest_sha256,
        f"{TAG}bundle": bundle.ref,
        f"{TAG}weights_sha256": str(bundle.results.get("weights_sha256", "")),
        f"{TAG}dataset": str(model.get("dataset", {}).get("ref", "")),
        f"{TAG}dataset_hash": str(model.get("dataset", {}).get("hash", "")),
        f"{TAG}verify": "passed",
        f"{TAG}verify_proof": f"{report['by']}:{report['file']}",
        f"{TAG}git_commit": str(git.get("commit", "")) + ("-dirty" if git.get("dirty") else ""),
    }
    for key in ("accuracy", "top5_accuracy", "loss", "ece"):
        if isinstance(metrics.get(key), int | float) and math.isfinite(metrics[key]):
            tags[f"{TAG}test_{key}"] = f"{metrics[key]:.6g}"
    return tags


def _probe(uri: str) -> None:
    """Fail fast, in one line, when an HTTP tracking server cannot be reached (MLflow itself retries for minutes)."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=PROBE_TIMEOUT):
            pass
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise CnnpipeError(f"--mlflow {uri}: cannot reach the tracking server ({first_line(e)})") from None


def _example(bundle: Version, meta: dict[str, str]) -> np.ndarray:
    """The first test images of the bundle's dataset, preprocessed as its metadata says."""
    from .predict import preprocess

    model = read_bundle_json(bundle)
    channels, height, width = json.loads(meta["input_shape"])
    try:
        data = Workspace(bundle.path.parents[2]).data.resolve(model["dataset"]["ref"])
        images = np.load(data.file("splits/test-images.npy"), mmap_mode="r")[:EXAMPLE_IMAGES]
    except (CnnpipeError, KeyError, OSError, ValueError, EOFError):  # the dataset is elsewhere: a blank image stands in
        images = np.zeros((1, channels, height, width), dtype=np.uint8)
    return preprocess(np.ascontiguousarray(images), meta)


def publish(bundle_ref: str, options: PublishOptions, root: Path = Path(".")) -> PublishResult:
    """Register ``bundle_ref`` (verified) as a version of an MLflow registered model (``options.mlflow``); idempotent."""
    options.validate()
    tracking_uri, alias = options.mlflow, options.alias
    bundle = Workspace(root).exports.resolve(bundle_ref)
    bundle.rehash()
    _probe(tracking_uri)
    report = proof(bundle, options, root)
    name = options.registered_model or bundle.name
    try:
        import mlflow
        import onnx
        from mlflow import MlflowClient
        from mlflow.models import infer_signature
    except ImportError:
        raise CnnpipeError("publish needs MLflow: pip install 'cnnpipe[mlflow]'") from None
    tags = _tags(bundle, report)
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    logging.getLogger("mlflow").setLevel(logging.ERROR)  # its INFO lines and links are not ours to print
    try:
        found = client.search_model_versions(f"name = '{name}' and tags.`{BUNDLE_TAG}` = '{tags[BUNDLE_TAG]}'")
        created = not found
        if created:
            mlflow.set_tracking_uri(tracking_uri)
            mlflow.set_registry_uri(tracking_uri)
            onnx_path = bundle.file(FORMATS["onnx"].file)
            graph = onnx.load(str(onnx_path))
            meta = {p.key: p.value for p in graph.metadata_props}
            example = _example(bundle, meta)
            from ..formats.onnx import onnx_session

            logits = onnx_session(onnx_path, "cpu").run(None, {meta["input_name"]: example})[0]
            mlflow.set_experiment(EXPERIMENT)
            with contextlib.redirect_stdout(sys.stderr), mlflow.start_run(run_name=bundle.ref, tags=tags) as run:
                info = mlflow.onnx.log_model(graph, name="model", signature=infer_signature(example, logits),
                                             input_example=example, save_as_external_data=False)
                for rel in [MANIFEST, *(f["path"] for f in bundle.manifest["files"])]:  # what it lists, no link
                    path = bundle.path / MANIFEST if rel == MANIFEST else bundle.file(rel)
                    mlflow.log_artifact(str(path), artifact_path=str(Path("bundle", rel).parent))
                mlflow.log_metrics({k.removeprefix(f"{TAG}"): float(v) for k, v in tags.items() if "test_" in k})
            if not client.search_registered_models(f"name = '{name}'"):
                client.create_registered_model(name)
            version = client.create_model_version(name, info.model_uri, run_id=run.info.run_id, tags=tags,
                                                  model_id=info.model_id, await_creation_for=300)
        else:
            version = found[0]
        if version.status != "READY":
            raise CnnpipeError(f"--mlflow {tracking_uri}: {name} version {version.version} is {version.status}, "
                               "not READY; the alias was not moved")
        if alias:
            client.set_registered_model_alias(name, alias, version.version)
    except CnnpipeError:
        raise
    except Exception as e:  # noqa: BLE001 - MLflow's REST errors, a refused connection mid-way
        raise CnnpipeError(f"--mlflow {tracking_uri}: {type(e).__name__}: {first_line(e)}") from None
    return PublishResult(bundle=bundle.ref, registered_model=name, version=str(version.version), alias=alias,
                         created=created, model_uri=f"models:/{name}/{version.version}", tags=tags)
