"""The ``cnnpipe`` application: the commands in the order ``--help`` lists them, and the entry point."""

from __future__ import annotations

import sys
import warnings
from typing import Annotated, NoReturn

import typer
from rich.markup import escape
from typer._click.exceptions import ClickException, NoArgsIsHelpError  # typer's own click (>= 0.29)

from ..errors import EXIT_USAGE, RollbackWarning
from ..verification.timelimit import finish
from . import bundles, interrupt, release, stores
from .plumbing import ROOT_HELP, err, out, root_path

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Train, evaluate, export and verify small CNN image classifiers as versioned release bundles.",
)


@app.callback()
def _main(
    ctx: typer.Context,
    root: Annotated[str, typer.Option(envvar="CNNPIPE_ROOT", help=ROOT_HELP)] = ".",
) -> None:
    ctx.obj = {"root": root_path(root)}


COMMANDS = {
    "download": release.download, "train": release.train, "import": release.import_model,
    "evaluate": release.evaluate, "export": release.export, "verify": release.verify, "run": release.run,
    "predict": bundles.predict, "bench": bundles.bench, "kit": bundles.kit, "keygen": bundles.keygen, "publish": bundles.publish,
    "sign": bundles.sign, "models": stores.models, "gc": stores.collect_garbage, "ls": stores.list_stores,
    "show": stores.show,
}
for _name, _command in COMMANDS.items():
    app.command(_name)(_command)


def _warning(message: Warning | str, category: type[Warning], *args: object, **kwargs: object) -> None:
    """cnnpipe's own warnings as one line on stderr; others as Python prints them."""
    if issubclass(category, RollbackWarning):
        err.print(f"[bold yellow]warning:[/] {escape(str(message))}", highlight=False, soft_wrap=True)
    else:
        _python_warning(message, category, *args, **kwargs)


_python_warning = warnings.showwarning


def main() -> NoReturn:
    """Console-script entry point: click's usage errors are one line too; a format's work left
    running past ``--timeout`` cannot be joined, so the process then ends without it."""
    interrupt.install()
    warnings.showwarning = _warning
    try:
        code = app(prog_name="cnnpipe", standalone_mode=False)
    except NoArgsIsHelpError as e:
        out.print(e.format_message(), highlight=False, markup=False)
        code = EXIT_USAGE
    except ClickException as e:
        hint = f" (see {e.ctx.command_path} --help)" if getattr(e, "ctx", None) else ""
        err.print(f"[bold red]error:[/] {escape(' '.join(e.format_message().split()) + hint)}",
                  highlight=False, soft_wrap=True)
        code = e.exit_code
    except typer.Abort:
        err.print("[bold red]interrupted[/]")
        code = 130
    code = code if isinstance(code, int) else 0
    finish(code)
    sys.exit(code)
