"""Stores on object storage, end to end through the CLI against a real S3 API (moto's server) on 127.0.0.1."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from s3server import BUCKET, client, keys, s3_server

from conftest import assert_clean_error, cli_env

URL = f"s3://{BUCKET}/ci"


def s3cli(aws: dict[str, str], cache: Path, *args: str, root: str = URL, cwd: Path | None = None,
          env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``cnnpipe --root ROOT ARGS`` as a machine whose local cache is ``cache`` would run it."""
    cwd = cwd or cache.parent
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.run([sys.executable, "-m", "cnnpipe", "--root", root, *args], cwd=cwd,
                          env=cli_env() | aws | {"CNNPIPE_CACHE": str(cache)} | (env or {}),
                          capture_output=True, text=True, timeout=600)


def s3json(aws: dict[str, str], cache: Path, *args: str) -> dict:
    proc = s3cli(aws, cache, *args, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def aws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    with s3_server(tmp_path_factory.mktemp("moto") / "server.log") as env:
        yield env


@pytest.fixture(scope="module")
def released(aws: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The whole pipeline run once against the bucket, as a CI runner would."""
    machine = tmp_path_factory.mktemp("runner-a")
    proc = s3cli(aws, machine / "cache", "run", "--epochs", "1", "--format", "onnx", "--format", "safetensors")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return aws


def test_run_on_s3_then_verify_from_another_machine(released: dict[str, str], tmp_path: Path):
    objects = keys(released, "ci/")
    for store, name in [("data", "mnist-sample"), ("models", "lenet5"), ("exports", "lenet5")]:
        assert f"ci/{store}/{name}/v1/manifest.json" in objects
        assert client(released).get_object(Bucket=BUCKET, Key=f"ci/{store}/{name}/latest")["Body"].read() == b"v1\n"
    assert any(k.startswith("ci/models/lenet5/v1/eval/test/v1/") for k in objects)  # the nested evaluation store
    assert any(k.startswith("ci/exports/lenet5/v1/verify/") for k in objects)  # run's verify report

    # A second machine: an empty cache and another working directory, nothing local.
    other = tmp_path / "runner-b" / "cache"
    verdict = s3json(released, other, "verify", "lenet5")
    assert verdict["passed"] and verdict["bundle"] == "lenet5@v1"
    assert (other.parent / "cnnpipe").exists() is False and not any(p for p in other.parent.iterdir() if p != other)
    reports = [k for k in keys(released, "ci/exports/lenet5/v1/verify/") if k.endswith(".json")]
    assert len(reports) == 2, reports  # its report was published beside run's
    listing = s3json(released, tmp_path / "runner-c" / "cache", "ls")
    assert [v["version"] for v in listing["exports"]["lenet5"]] == [1]

    # A file changed in the bucket is caught on the next machine that reads it.
    s3 = client(released)
    body = s3.get_object(Bucket=BUCKET, Key="ci/exports/lenet5/v1/model.onnx")["Body"].read()
    s3.put_object(Bucket=BUCKET, Key="ci/exports/lenet5/v1/model.onnx", Body=body + b"\0")
    try:
        proc = s3cli(released, tmp_path / "runner-d" / "cache", "verify", "lenet5")
        assert_clean_error(proc, 2, "model.onnx", "sha256 does not match")
    finally:
        s3.put_object(Bucket=BUCKET, Key="ci/exports/lenet5/v1/model.onnx", Body=body)


def test_four_machines_train_one_name_at_once(released: dict[str, str], tmp_path: Path):
    procs = [subprocess.Popen(
        [sys.executable, "-m", "cnnpipe", "--root", URL, "train", "--epochs", "1", "--name", "racer", "--json"],
        cwd=tmp_path, env=cli_env() | released | {"CNNPIPE_CACHE": str(tmp_path / f"machine-{i}")},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(4)]
    results = [(proc.communicate(timeout=600), proc.returncode) for proc in procs]
    assert all(code == 0 for _, code in results), [err[-2000:] for (_, err), _ in results]
    refs = sorted(json.loads(out)["ref"] for (out, _), _ in results)
    assert refs == ["racer@v1", "racer@v2", "racer@v3", "racer@v4"]
    objects = keys(released, "ci/models/racer/")
    assert all(f"ci/models/racer/v{n}/manifest.json" in objects for n in range(1, 5))
    latest = client(released).get_object(Bucket=BUCKET, Key="ci/models/racer/latest")["Body"].read()
    assert latest == b"v4\n"  # it only ever moved forward
    for n in range(1, 5):
        assert s3json(released, tmp_path / "reader", "show", f"racer@v{n}")["version"] == n


def test_a_writer_killed_mid_upload_leaves_no_version_and_gc_removes_it(released: dict[str, str], tmp_path: Path):
    s3 = client(released)
    prefix = "ci/exports/lenet5/"
    before = set(keys(released, prefix))
    for _ in range(8):
        proc = subprocess.Popen(
            [sys.executable, "-m", "cnnpipe", "--root", URL, "export", "lenet5", "--format", "onnx",
             "--format", "torchscript", "--format", "safetensors"],
            cwd=tmp_path, env=cli_env() | released | {"CNNPIPE_CACHE": str(tmp_path / "cache")},
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        partial = None
        while proc.poll() is None and partial is None:
            new = {k for k in (o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", []))
                   if k not in before and "/.claims/" not in k}
            if new and not any(k.endswith("/manifest.json") for k in new):
                proc.send_signal(signal.SIGKILL)
                partial = new
            time.sleep(0.005)
        proc.wait(timeout=60)
        if partial:
            break
        before = set(keys(released, prefix))  # it finished first: try again
    assert partial, "no attempt was caught mid-upload"
    version = sorted(partial)[0].split("/")[3]
    assert not any(k.startswith(f"{prefix}{version}/manifest.json") for k in keys(released, prefix))

    reader = tmp_path / "reader"
    listing = s3json(released, reader, "ls")
    assert f"v{version[1:]}" not in {f"v{v['version']}" for v in listing["exports"]["lenet5"]}
    latest = s3.get_object(Bucket=BUCKET, Key=f"{prefix}latest")["Body"].read().decode().strip()
    assert latest != version

    # The next write takes the next number and succeeds; the young leftovers stay until they are old enough.
    exported = s3json(released, tmp_path / "cache", "export", "lenet5", "--format", "onnx")
    assert int(exported["ref"].split("@v")[1]) > int(version[1:])
    assert s3json(released, reader, "gc")["removed"] == []
    assert any(k.startswith(f"{prefix}{version}/") for k in keys(released, prefix))
    removed = s3json(released, reader, "gc", "--older-than", "0")["removed"]
    assert f"{URL}/exports/lenet5/{version}/" in removed
    assert not any(k.startswith(f"{prefix}{version}/") for k in keys(released, prefix))
    assert f"{prefix}.claims/{version}" in keys(released, prefix)  # its number is never handed out again
    assert s3json(released, tmp_path / "fresh", "verify", exported["ref"])["passed"]



def test_gc_on_object_storage_removes_an_abandoned_evaluation_nested_in_a_model_version(released: dict[str, str],
                                                                                       tmp_path: Path):
    """A claimed evaluation whose writer died before its manifest (``models/NAME/vN/eval/SPLIT/vK/``)."""
    s3 = client(released)
    store = "ci/models/lenet5/v1/eval/test/"
    s3.put_object(Bucket=BUCKET, Key=f"{store}.claims/v90", Body=b"")
    s3.put_object(Bucket=BUCKET, Key=f"{store}v90/metrics.json", Body=b"{}")
    removed = s3json(released, tmp_path / "reader", "gc", "--older-than", "0")["removed"]
    assert f"{URL}/models/lenet5/v1/eval/test/v90/" in removed
    assert not any(k.startswith(f"{store}v90/") for k in keys(released, store))
    assert any(k.startswith(f"{store}v1/manifest.json") for k in keys(released, store))  # the finished one stays

def test_bad_roots_are_one_line_and_write_nothing(aws: dict[str, str], tmp_path: Path):
    shim = tmp_path / "no-s3fs"
    shim.mkdir()
    (shim / "s3fs.py").write_text("raise ImportError('No module named s3fs')\n")
    cases = [
        ("s3://no-such-bucket/x", {}, ["bucket 'no-such-bucket' does not exist"]),
        (URL, {"AWS_SECRET_ACCESS_KEY": "wrong"}, ["access denied", "credentials"]),
        (URL, {"AWS_ENDPOINT_URL": "http://127.0.0.1:9"}, ["cannot reach the store", "Could not connect"]),
        (URL, {"PYTHONPATH": str(shim)}, ["s3:// needs s3fs, which is not installed", "cnnpipe[s3]"]),
        ("gs://team/x", {}, ["gs:// is not supported"]),
    ]
    before = keys(aws, "")
    for root, env, needles in cases:
        cache = tmp_path / "cache"
        proc = s3cli(aws, cache, "train", "--epochs", "1", root=root, env=env)
        assert_clean_error(proc, 2, f"--root {root}", *needles)
        assert not cache.exists(), root
    assert keys(aws, "") == before
