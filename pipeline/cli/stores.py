"""Commands that read or tidy the stores: models, gc, ls, show."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

import typer

from ..options.commands import GcOptions
from .plumbing import JsonOpt, call, emit, options_command, out, root_of


class StoreName(str, Enum):
    models = "models"
    exports = "exports"
    data = "data"


@options_command
def models(
    ctx: typer.Context,
    dataset: Annotated[str | None, typer.Option("--dataset", "-d", help="Count parameters for this "
        "dataset's input (a standard name needs no download).")] = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Show this architecture only: NAME, "
        "torchvision:NAME, timm:NAME, FILE.py:FACTORY or module:FACTORY (built, and checked on the input).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """List every registered network (or one --model) with its parameter count for a dataset's input shape."""
    from ..stages.models import list_models
    from .render import render_models

    result = call(lambda: list_models(dataset, root_of(ctx), model))
    emit(as_json, result, lambda r: render_models(out, r))


@options_command
def collect_garbage(ctx: typer.Context, options: GcOptions, as_json: JsonOpt = False) -> None:
    """Remove what killed writers left: drafts no live process owns (a local root), or versions claimed
    but never completed and unfinished uploads (object storage)."""
    from ..stages.inventory import collect_garbage as collect

    result = call(lambda: collect(options, root_of(ctx)))
    emit(as_json, result, lambda r: out.print("\n".join(r["removed"]) or "nothing to remove", highlight=False))


@options_command
def list_stores(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """List what the data, models and exports stores hold."""
    from ..stages.inventory import list_stores as listing
    from .render import render_ls

    result = call(lambda: listing(root_of(ctx)))
    emit(as_json, result, lambda r: render_ls(out, r))


@options_command
def show(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="NAME, NAME@vN, NAME@latest or a path.")],
    store: Annotated[StoreName, typer.Option(help="Which store NAME refers to.")] = StoreName.models,
    as_json: JsonOpt = False,
) -> None:
    """Show one version's manifest: files, lineage, environment and results."""
    from ..store.workspace import Workspace
    from .render import render_show

    version = call(lambda: getattr(Workspace(root_of(ctx)), store.value).resolve(ref))
    emit(as_json, version.manifest, lambda m: render_show(out, version.path, m))
