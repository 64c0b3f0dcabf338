"""Verify runs nothing it judges in its own process: the confinement itself, the workers, and hostile
files (a TorchScript file that writes, a pt2 archive with a foreign member) through the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import pytest

from cnnpipe.errors import CnnpipeError
from cnnpipe.verification.sandbox import landlock_abi
from cnnpipe.verification.worker import Workers

from conftest import cli_env, cnnpipe, resign

needs_landlock = pytest.mark.skipif(not landlock_abi(), reason="this kernel has no Landlock")


@needs_landlock
def test_a_confined_process_writes_only_its_scratch_reads_only_what_it_was_given_and_has_no_network(tmp_path: Path):
    scratch, given, secret = tmp_path / "scratch", tmp_path / "given", tmp_path / "secret"
    for folder in (scratch, given, secret):
        folder.mkdir()
    (given / "f").write_text("given")
    (secret / "f").write_text("secret")
    probe = textwrap.dedent(f"""
        import socket, sys
        from pathlib import Path
        from cnnpipe.verification.sandbox import confine
        confine([Path(p) for p in ("/usr", "/lib", "/lib64", "/proc", "/dev", sys.prefix, sys.base_prefix,
                                   {str(given)!r})], [Path({str(scratch)!r})])
        def attempt(what, action):
            try:
                action()
                print(what, "allowed")
            except OSError:
                print(what, "refused")
        attempt("read given", lambda: open({str(given / 'f')!r}).read())
        attempt("read secret", lambda: open({str(secret / 'f')!r}).read())
        attempt("write scratch", lambda: open({str(scratch / 'out')!r}, "w").write("x"))
        attempt("write given", lambda: open({str(given / 'out')!r}, "w").write("x"))
        attempt("write elsewhere", lambda: open({str(tmp_path / 'out')!r}, "w").write("x"))
        attempt("tcp", lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        attempt("udp", lambda: socket.socket(socket.AF_INET6, socket.SOCK_DGRAM))
        attempt("unix", lambda: socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).close())
    """)
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    outcome = dict(line.rsplit(" ", 1) for line in proc.stdout.splitlines())
    assert outcome == {"read given": "allowed", "read secret": "refused", "write scratch": "allowed",
                       "write given": "refused", "write elsewhere": "refused", "tcp": "refused", "udp": "refused",
                       "unix": "allowed"}
    assert not (given / "out").exists() and not (tmp_path / "out").exists()


def test_a_worker_may_write_its_own_proc_entry_only_where_gpu_device_nodes_are(tmp_path: Path, monkeypatch):
    """The CUDA driver's init fails (error 304) in a confined worker that cannot write /proc/self (seen on an
    H200: tests/test_gpu.py); a machine without GPU device nodes keeps /proc/self read-only."""
    from cnnpipe.verification import worker

    node = tmp_path / "nvidia0"
    node.touch()
    monkeypatch.setattr(worker, "GPU_DEVICES", (str(tmp_path / "nvidia*"),))
    assert worker._gpu_writable() == [node, Path("/proc/self")]
    monkeypatch.setattr(worker, "GPU_DEVICES", (str(tmp_path / "none*"),))
    assert worker._gpu_writable() == []


def test_a_worker_that_aborts_exits_or_hangs_is_a_reason_and_the_parent_goes_on():
    with Workers() as workers:
        with pytest.raises(CnnpipeError, match="killed by SIGABRT"):
            workers.run(os.abort, (), 60, "abort", ())
        with pytest.raises(CnnpipeError, match=r"sys.exit\(3\)"):
            workers.run(sys.exit, (3,), 60, "exit", ())
        start = time.monotonic()
        with pytest.raises(CnnpipeError, match="did not finish within 2 s"):
            workers.run(time.sleep, (120,), 2, "sleep", ())
        assert time.monotonic() - start < 30
        assert workers.run(sorted, ([3, 1, 2],), 60, "sorted", ()) == [1, 2, 3]  # the next worker is as good as new
        if landlock_abi():  # another process's environment (a CI token) is out of a confined worker's reach
            with pytest.raises(PermissionError):
                workers.run(Path.read_bytes, (Path(f"/proc/{os.getpid()}/environ"),), 60, "environ", ())


def test_a_stage_that_ends_before_its_fork_server_is_ready_does_not_wait_for_it(tmp_path: Path):
    """The fork server holds the stage's stdout: a verify refused at once must not end only when the
    server has imported the runtimes (here: never)."""
    (tmp_path / "endless_import.py").write_text("import time\ntime.sleep(3600)\n")
    script = ("from cnnpipe.verification import worker\nworker.PRELOAD.append('endless_import')\n"
              "with worker.Workers():\n    pass\nprint('done')")
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=cli_env() | {"PYTHONPATH": str(tmp_path)},
                          capture_output=True, text=True, timeout=120)
    assert (proc.returncode, proc.stdout.strip()) == (0, "done"), proc.stderr


def _wrapped_torchscript(bundle: Path) -> None:
    """Replace the bundle's TorchScript file with another program that answers exactly like it."""
    import torch

    extra = {"cnnpipe.json": ""}
    inner = torch.jit.load(str(bundle / "model.torchscript.pt"), _extra_files=extra)

    class Wrapper(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x) + 0.0

    torch.jit.save(torch.jit.script(Wrapper()), str(bundle / "model.torchscript.pt"), _extra_files=extra)
    resign(bundle, "model.torchscript.pt")


WATCH = """
import importlib.abc, sys, traceback
class Watch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and sys.argv[0].endswith("__main__.py"):  # the CLI's process, not its workers
            with open({marker!r}, "a") as out:
                out.write("".join(traceback.format_stack()))
        return None
sys.meta_path.insert(0, Watch())
"""


def test_a_torchscript_program_that_is_not_cnnpipes_is_not_loaded(root_copy: Path, tmp_path: Path):
    """...and verify's own process never imports torch (so no torch.load or torch.jit can run there)."""
    bundle = root_copy / "exports/lenet5/v1"
    _wrapped_torchscript(bundle)
    marker, hook = tmp_path / "torch-imported", tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(WATCH.format(marker=str(marker)))
    path = os.pathsep.join(p for p in (str(hook), os.environ.get("PYTHONPATH")) if p)
    proc = cnnpipe(root_copy, "verify", "lenet5", "--samples", "16", "--json", env={"PYTHONPATH": path})
    assert proc.returncode == 1, proc.stderr
    assert not marker.exists(), marker.read_text()[-3000:]
    row = {r["format"]: r for r in json.loads(proc.stdout)["formats"]}["torchscript"]
    assert row["reasons"][0].startswith("unauthenticated: model.torchscript.pt can run code"), row
    assert row["accuracy"] is None  # judged without being loaded
    assert any("differs from a re-export" in r for r in row["reasons"]), row


def test_a_pt2_archive_with_a_foreign_member_fails_unread(root_copy: Path):
    bundle = root_copy / "exports/lenet5/v1"
    with zipfile.ZipFile(bundle / "model.pt2", "a") as archive:
        archive.writestr("archive/data/aotinductor/model/evil.so", b"\x7fELF not really")
    resign(bundle, "model.pt2")
    proc = cnnpipe(root_copy, "verify", "lenet5", "--samples", "16", "--trust-native", "--json")
    assert proc.returncode == 1, proc.stderr
    row = {r["format"]: r for r in json.loads(proc.stdout)["formats"]}["pt2"]
    assert "member 'archive/data/aotinductor/model/evil.so' is not part of a torch.export program" in row["reasons"][0]


def test_a_pickled_weight_in_a_pt2_config_is_refused(tmp_path: Path):
    from cnnpipe.errors import LoadFailed
    from cnnpipe.formats.archive import check_pt2

    path = tmp_path / "model.pt2"
    config = {"config": {"w": {"path_name": "weight_0", "use_pickle": True}}}
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data/weights/model_weights_config.json", json.dumps(config))
        archive.writestr("archive/data/weights/weight_0", b"\x80\x02cos\nsystem\n.")
    with pytest.raises(LoadFailed, match="'w' in archive/data/weights/model_weights_config.json is stored as a pickle"):
        check_pt2(path)


def test_sign_refuses_a_bundle_that_fails_verify(root_copy: Path, tmp_path: Path):
    import onnx
    from onnx import numpy_helper

    bundle = root_copy / "exports/lenet5/v1"
    assert cnnpipe(root_copy, "keygen", "--out", str(tmp_path / "keys")).returncode == 0
    graph = onnx.load(str(bundle / "model.onnx"))
    weight = graph.graph.initializer[0]
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) + 0.01, weight.name))
    onnx.save(graph, str(bundle / "model.onnx"))
    resign(bundle, "model.onnx")
    proc = cnnpipe(root_copy, "sign", "lenet5", "--key", str(tmp_path / "keys/cnnpipe-signing.key"))
    assert proc.returncode == 1 and "refusing to sign a bundle that fails verify (onnx:" in proc.stderr, proc.stderr
    assert not (bundle / "bundle.sig").exists()
