"""What every command shares: the consoles, option records expanded into typer options (and a
``--config`` TOML file), ``--root``, and running a stage so that a problem is one line and its exit code."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import inspect
import os
import sys
import traceback
import typing
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from ..errors import EXIT_GATE, EXIT_INTERNAL, EXIT_USAGE, CnnpipeError, printable
from ..fs import STORAGE_ERRNOS, dumps
from ..progress import reporting
from ..store.remote import is_url, open_root

# in a terminal rich follows its width; elsewhere (a CI log, a pipe) COLUMNS where set, else wide enough that a
# table keeps its natural width, and a line of text is never wrapped
out = Console(width=None if sys.stdout.isatty() or "COLUMNS" in os.environ else 200, soft_wrap=not sys.stdout.isatty())
err = Console(stderr=True, width=None if sys.stderr.isatty() or "COLUMNS" in os.environ else 200,
              soft_wrap=not sys.stderr.isatty())
T = TypeVar("T")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout (progress goes to stderr).")]
ModelRef = Annotated[str, typer.Argument(help="Model version: NAME, NAME@latest, NAME@vN, or a path.")]
BundleRef = Annotated[str, typer.Argument(help="Export bundle: NAME, NAME@latest, NAME@vN, or a path.")]
TrustOpt = Annotated[bool, typer.Option(
    "--trust-code", help="Rebuild a network defined by the user's code stored in the version (that .py file runs).",
)]
TrustNativeOpt = Annotated[bool, typer.Option(
    "--trust-native", help="Load a format holding native code (the AOTInductor package) from a bundle whose "
    "signature was not verified with --public-key: its machine code runs.",
)]


def _choice_type(choices: tuple[str, ...]) -> type[Enum]:
    """An Enum typer shows and checks as a choice of ``choices``."""
    return Enum("Choice", {c: c for c in choices}, type=str)  # type: ignore[return-value]


def _option_params(cls: type) -> list[inspect.Parameter]:
    """One keyword parameter with its typer.Option per ``option(...)`` field of dataclass ``cls``."""
    hints = typing.get_type_hints(cls)
    params = []
    for f in dataclasses.fields(cls):
        cli = f.metadata.get("cli")
        if cli is None:
            continue
        annotation: Any = hints[f.name]
        default = f.default if f.default is not dataclasses.MISSING else list(f.default_factory())  # type: ignore[misc]
        if cli.choices:
            choice = _choice_type(cli.choices)
            annotation = list[choice] if cli.multiple else (choice | None if default is None else choice)
        info = typer.Option(*cli.flags, help=escape(cli.help), envvar=cli.envvar,  # help is text, not rich markup
                            show_default=default not in (None, ""))
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                        annotation=Annotated[annotation, info]))
    return params


def plain_value(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, list):
        return tuple(plain_value(v) for v in value)
    return value


def options_command(fn: Callable[..., None]) -> Callable[..., None]:
    """Expand every parameter annotated with an options dataclass into that dataclass's options,
    add ``--root`` and ``--config FILE``, and hand the function the dataclass instances back. A field
    that several of the dataclasses declare (``--gate-on``) is one option, given to each of them."""
    sig = inspect.signature(fn, eval_str=True)
    groups = {name: p.annotation for name, p in sig.parameters.items() if dataclasses.is_dataclass(p.annotation)}
    params: list[inspect.Parameter] = []
    for name, p in sig.parameters.items():
        if name in groups:
            params += [q for q in _option_params(groups[name]) if q.name not in {have.name for have in params}]
        elif params and params[-1].kind == inspect.Parameter.KEYWORD_ONLY:
            params.append(p.replace(kind=inspect.Parameter.KEYWORD_ONLY))
        else:
            params.append(p)
    params += [
        inspect.Parameter("root", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=RootOpt),
        inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=ConfigOpt),
    ]

    @functools.wraps(fn)
    def command(**kwargs: Any) -> None:
        kwargs.pop("root"), kwargs.pop("config")  # applied by their callbacks; NaN and Infinity: each record's validate()
        given = {f.name: kwargs.pop(f.name) for cls in groups.values() for f in dataclasses.fields(cls)
                 if "cli" in f.metadata and f.name in kwargs}
        for name, cls in groups.items():
            keys = [f.name for f in dataclasses.fields(cls) if "cli" in f.metadata]
            kwargs[name] = cls(**{k: plain_value(given[k]) for k in keys})
            call(kwargs[name].validate)  # a usage error in one line, before a stage (and torch) is imported
        fn(**kwargs)

    command.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    return command


MAX_CONFIG = 1 << 20  # bytes of a --config file: a few dozen options need a few KB


def config_defaults(path: Path, params: list[Any]) -> dict[str, Any]:
    """Read a TOML file of a command's options (``epochs = 8``, ``min-accuracy = 0.97``, ...) as
    Click defaults; an unknown key or unreadable file is a usage error naming it."""
    import tomllib

    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFIG + 1)
        if len(raw) > MAX_CONFIG:
            raise typer.BadParameter(f"{path}: over {MAX_CONFIG:,} bytes, not an options file")
        data = tomllib.loads(raw.decode())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise typer.BadParameter(f"{path}: not a readable TOML file ({e})") from None
    by_flag = {opt.lstrip("-").replace("-", "_"): p.name for p in params for opt in p.opts if opt.startswith("--")}
    for own in ("config", "root"):
        by_flag.pop(own, None)
    unknown = sorted(k for k in data if k.replace("-", "_") not in by_flag)
    if unknown:
        raise typer.BadParameter(f"{path}: unknown option {unknown[0]!r}; use this command's long option names (see --help)")
    # a table of values by format ([min-agreement]) is the option's FORMAT=VALUE form
    return {by_flag[k.replace("-", "_")]: ",".join(f"{n}={x}" for n, x in v.items()) if isinstance(v, dict) else v
            for k, v in data.items()}


def _load_config(ctx: typer.Context, value: Path | None) -> Path | None:
    if value is not None:
        ctx.default_map = (ctx.default_map or {}) | config_defaults(value, ctx.command.params)
    return value


def root_path(value: str) -> Path | str:
    if not value.strip():
        raise typer.BadParameter("must name a folder (the one that holds data/, models/ and exports/)")
    scheme, sep, rest = value.partition("://")
    if sep and scheme[:1].isalpha() and scheme.isalnum() and not rest.strip("/"):
        raise typer.BadParameter(f"{printable(value)} needs a bucket: {scheme}://bucket/prefix")
    return value.rstrip("/") if is_url(value) else Path(value)


def _set_root(ctx: typer.Context, value: str | None) -> str | None:
    if value is not None:  # given after the command: it wins over the one before it
        ctx.obj["root"] = root_path(value)
    return value


def root_of(ctx: typer.Context) -> Path:
    """The root folder: the one given, or the local mirror of an object-storage root (checked here)."""
    root = ctx.obj["root"]
    return open_root(root) if isinstance(root, str) else root


ROOT_HELP = ("Folder holding the data/, models/ and exports/ stores, or object storage: s3://bucket/prefix "
             "(also CNNPIPE_ROOT).")
RootOpt = Annotated[str | None, typer.Option("--root", help=ROOT_HELP, callback=_set_root, show_default=False)]
ConfigOpt = Annotated[Path | None, typer.Option(
    "--config", help="TOML file of this command's options (long names, e.g. epochs = 8); the command line wins.",
    is_eager=True, callback=_load_config, show_default=False,
)]


def plain(obj: Any) -> Any:
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj


def fail(e: CnnpipeError) -> NoReturn:
    """Print a user-fixable problem as one line on stderr and exit with its code."""
    err.print(f"[bold red]error:[/] {escape(printable(str(e)))}", highlight=False, soft_wrap=True)
    raise typer.Exit(e.exit_code) from None



def debug() -> None:
    """Under ``CNNPIPE_DEBUG=1``, print the exception being handled with its whole chain of causes."""
    if os.environ.get("CNNPIPE_DEBUG"):
        traceback.print_exc(chain=True)


def call(fn: Callable[[], T]) -> T:
    """Run a stage; a user-fixable problem becomes one line on stderr and its exit code."""
    try:
        return fn()
    except CnnpipeError as e:
        debug()  # the cause an exporter or runtime raised, which the one line names
        fail(e)
    except KeyboardInterrupt:
        err.print("[bold red]interrupted[/]; nothing partial was kept")
        raise typer.Exit(130) from None
    except Exception as e:  # a bug, or a store that cannot be written: one line either way
        if isinstance(e, OSError) and e.errno in STORAGE_ERRNOS:
            err.print(
                f"[bold red]error:[/] {'cannot access' if e.errno == errno.EACCES else 'cannot write'}: "
                f"{e.strerror} ({e.filename or 'the store'}); "
                "nothing partial was kept: free space or fix permissions, then run again",
                highlight=False, soft_wrap=True,
            )
            raise typer.Exit(EXIT_USAGE) from None
        debug()
        err.print(
            f"[bold red]internal error:[/] {type(e).__name__}: {escape(printable(str(e)))} "
            "(set CNNPIPE_DEBUG=1 for the traceback; please report it)",
            highlight=False, soft_wrap=True,
        )
        raise typer.Exit(EXIT_INTERNAL) from None


ProgressOpt = Annotated[bool | None, typer.Option(
    "--progress/--no-progress", help="Print each long step (a format exported, verified or timed) on stderr; "
    "default: where stderr is a terminal, and not with --json.", show_default=False)]


def steps(as_json: bool, asked: bool | None) -> contextlib.AbstractContextManager[None]:
    """Where the stage's progress lines go: stderr when it is a terminal (as the training bar) and not under
    ``--json``; ``--progress`` asks for them anywhere (a CI log), ``--no-progress`` never."""
    wanted = asked if asked is not None else not as_json and err.is_terminal
    return reporting((lambda line: err.print(line, highlight=False, markup=False, soft_wrap=True)) if wanted else None)


def emit(as_json: bool, result: Any, render: Callable[[Any], None]) -> None:
    if as_json:
        print(dumps(plain(result), indent=2, default=str))
    else:
        render(result)


def gate_failed(label: str, detail: str) -> NoReturn:
    """Print ``label: detail`` (a failed release gate) on stderr and exit 1."""
    err.print(f"[bold red]{label}:[/] {escape(detail)}", highlight=False, soft_wrap=True)
    raise typer.Exit(EXIT_GATE)


def gate_exit(result: Any) -> None:
    """Exit 1 naming each failed evaluation gate."""
    failed = [g for g in result.gates if not g.passed]
    for g in failed:
        err.print(f"[bold red]gate failed:[/] {g.gate}: {g.detail}", highlight=False)
    if failed:
        raise typer.Exit(EXIT_GATE)


