"""Output that fits: tables at 80, 100 and 120 columns never cut a format name, a number's exponent or a
header; help shows bracketed text; output off a terminal is not hard-wrapped; ls shows verify's verdict."""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from rich.console import Console

from cnnpipe.cli.render import render_verify

from conftest import cnnpipe, cnnpipe_here


def _verdict(pipeline_run: dict) -> SimpleNamespace:
    """The run's verify result with rows for onnx-fp16 and onnx-int8 added (the names a cut would merge)."""
    verify = copy.deepcopy(pipeline_run["verify"])
    onnx = next(f for f in verify["formats"] if f["format"] == "onnx")
    for name, diff in (("onnx-fp16", 1.234e-3), ("onnx-int8", 0.5678)):
        verify["formats"].append(onnx | {"format": name, "max_abs_diff": diff})
    verify["formats"] = [SimpleNamespace(**f) for f in verify["formats"]]
    return SimpleNamespace(**verify)


@pytest.mark.parametrize("width", [80, 100, 120])
def test_the_verify_table_shows_every_name_number_and_header_whole_at_any_width(pipeline_run: dict, width: int):
    result = _verdict(pipeline_run)
    out = io.StringIO()
    render_verify(Console(file=out, width=width, color_system=None), result)
    text = out.getvalue()
    assert "…" not in text and max(map(len, text.splitlines())) <= width
    for row in result.formats:
        assert f" {row.format} " in text or f"format: {row.format}\n" in text
        assert format(row.max_abs_diff, ".1e") in text
    for header in ("runtime", "verdict", "max abs", "p99 abs", "atol/rtol", "top-1 agree", "Δ points"):
        assert header in text


def test_help_shows_bracketed_text_as_written(tmp_path: Path):
    proc = cnnpipe_here(tmp_path, "verify", "--help", env={"COLUMNS": "250"})
    assert "a [min-agreement] table" in proc.stdout


def test_output_off_a_terminal_is_never_hard_wrapped_and_ls_shows_the_newest_verdict(root_copy: Path):
    reports = sorted(p for p in (root_copy / "exports/lenet5/v1/verify").glob("*.json") if not p.name.endswith(".intoto.json"))
    newest = "passed" if json.loads(reports[-1].read_text())["passed"] else "FAILED"  # other tests verify the shared root too
    proc = cnnpipe(root_copy, "ls")
    assert proc.returncode == 0, proc.stderr
    assert f"verify {newest}" in proc.stdout  # (the table may be split in two: the row is in one part)
    listing = json.loads(cnnpipe(root_copy, "ls", "--json").stdout)
    assert listing["exports"]["lenet5"][0]["verify"].startswith(f"verify {newest} ")
    long = cnnpipe(root_copy, "download", "--no-plots")  # its mean and std: one line however long
    line = next(x for x in long.stdout.splitlines() if "dataset hash" in x)
    assert "mean [" in line and "std [" in line and line.rstrip().endswith("]")


def test_export_and_verify_report_each_step_on_stderr_but_not_under_json_unless_asked(root_copy: Path):
    quiet = cnnpipe(root_copy, "export", "lenet5", "--format", "onnx", "--format", "pt2", "--json")
    assert quiet.returncode == 0 and "export: onnx" not in quiet.stderr
    plain = cnnpipe(root_copy, "export", "lenet5", "--format", "onnx")  # stderr not a terminal: a CI log asks for them
    assert plain.returncode == 0 and "export: onnx" not in plain.stderr
    asked = cnnpipe(root_copy, "export", "lenet5", "--format", "onnx", "--format", "pt2", "--json", "--progress")
    assert asked.returncode == 0 and json.loads(asked.stdout)["formats"] == ["onnx", "pt2"]
    assert "export: onnx (1/2)" in asked.stderr and "export: pt2 (2/2)" in asked.stderr
    shown = cnnpipe(root_copy, "verify", "lenet5@v2", "--samples", "8", "--progress")  # stderr is no terminal here
    assert shown.returncode == 0, shown.stderr
    assert "verify: onnx on cpu (1/2), batch sizes 1, 2, 7, 64" in shown.stderr and "verify: pt2 on cpu (2/2)" in shown.stderr


def test_the_training_bar_moves_at_least_once_a_second_whatever_the_step_time():
    import time

    import torch

    from cnnpipe.training.engine import train_epoch

    class Slow(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(4, 2)

        def forward(self, x):
            time.sleep(0.35)
            return self.fc(x.flatten(1))

    class Recorder:
        def __init__(self):
            self.calls: list[int] = []

        def advance(self, steps, images, loss, accuracy):
            self.calls.append(steps)

    model, recorder = Slow(), Recorder()
    batches = [(torch.zeros(2, 1, 2, 2, dtype=torch.uint8), torch.zeros(2, dtype=torch.long)) for _ in range(8)]
    train_epoch(model, torch.optim.SGD(model.parameters(), lr=0.1), batches, [0.5], [0.5],
                {"crop_padding": 0, "flip": False}, torch.Generator(), recorder, report_every=20)
    assert sum(recorder.calls) == 8 and len(recorder.calls) >= 3  # 8 steps of 0.35 s: a report every 3 steps
