"""Every option of every command, fed a table of bad values: exit 2, one line, no traceback, nothing written.

The commands run in-process through the console entry point (``cnnpipe.cli.main``), on an empty
root, with a reference that does not exist where a command needs one, so a value that is in
fact acceptable still ends in a one-line usage error and no command does real work. Values
that can never be right for the option's type (text or NaN for a number) must be refused by
name, which proves the option is checked and not masked by the missing reference.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import typer

from cnnpipe.cli.app import app, main

BAD = ["", "-1", "0", "99999999999999999999", "1e309", "nan", "text"]
# what each command needs besides the option under test, chosen to fail after the options are checked
PLACEHOLDERS = {
    "download": ["nosuch"], "import": ["nosuch.pt"], "evaluate": ["nosuch"], "export": ["nosuch"],
    "verify": ["nosuch"], "bench": ["nosuch"], "show": ["nosuch"], "predict": ["nosuch.png", "--bundle", "nosuch"],
    "run": ["--dataset", "nosuch"], "train": [], "models": ["--model", "nosuch"], "ls": [],
    "sign": ["nosuch", "--key", "nosuch.key"], "keygen": [], "gc": [], "kit": ["nosuch", "--out", "kitdir"],
    "publish": ["nosuch", "--mlflow", "http://127.0.0.1:9"],
}
# options for which every value of the table is a valid one: a folder's name
ANY_NAME = {("keygen", "--out")}
COMMANDS = typer.main.get_command(app).commands


def _options(command: str) -> list[tuple[str, type]]:
    params = COMMANDS[command].params
    return [(p.opts[0], p.type_descriptor.annotation) for p in params
            if p.param_type_name == "option" and not p.is_flag and p.opts[0] != "--help"]


def _cnnpipe(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    sys.argv = ["cnnpipe", *argv]
    with pytest.raises(SystemExit) as exit_info:
        main()
    return exit_info.value.code, capsys.readouterr().err


def test_the_table_covers_every_command():
    assert set(PLACEHOLDERS) == set(COMMANDS)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_option_refuses_bad_values_in_one_line(
    command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    root, cwd = tmp_path / "root", tmp_path / "cwd"
    root.mkdir()
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", sys.argv)
    problems = []
    for flag, kind in _options(command):
        if (command, flag) in ANY_NAME:
            continue
        for value in BAD:
            argv = ["--root", str(root), command, *PLACEHOLDERS[command], flag, value]
            if flag == "--root":
                argv = [command, *PLACEHOLDERS[command], flag, value]
            code, err = _cnnpipe(argv, capsys)
            lines = err.strip().splitlines()
            named = kind in (int, float) and value in ("text", "nan", "") and flag not in err
            if code != 2 or len(lines) != 1 or not lines[0].startswith("error:") or "Traceback" in err or named:
                problems.append((flag, value, code, err.strip()[-300:]))
            if any(root.iterdir()) or any(cwd.iterdir()):
                problems.append((flag, value, "wrote", sorted(p.name for p in [*root.iterdir(), *cwd.iterdir()])))
                break
    assert not problems, "\n".join(map(str, problems))
