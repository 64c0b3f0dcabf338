"""ExecuTorch: the network lowered to the XNNPACK delegate (``.pte``), run by the runtime's Python bindings."""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path
from typing import Any

from ..errors import CnnpipeError, first_line
from .base import META_KEY, ExportContext, Format, LoadContext, Runner, Tolerance, native_quiet, quiet, register
from .xnnpack_patterns import unmatchable_patterns_skipped

PTE_MAX_BATCH = 64  # an ExecuTorch program's memory is planned for batches up to this; larger ones run in parts



def write_executorch(ctx: ExportContext, path: Path) -> dict[str, Any]:
    """An ExecuTorch program lowered to the XNNPACK delegate, its memory planned for batches up to
    PTE_MAX_BATCH (exported from an example of that batch: with a smaller one the delegate plans
    for fewer); the metadata is a constant method."""
    import torch

    with quiet():  # importing executorch logs a torch warning
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import ExecutorchBackendConfig, to_edge_transform_and_lower
        from executorch.exir.passes.sym_shape_eval_pass import ConstraintBasedSymShapeEvalPass

    example = ctx.example[:1].expand(PTE_MAX_BATCH, *ctx.example.shape[1:]).contiguous()
    with quiet():
        program = torch.export.export(ctx.model, (example,),
                                      dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=PTE_MAX_BATCH)},))
        with unmatchable_patterns_skipped():
            lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()],
                                                  constant_methods={META_KEY: json.dumps(ctx.meta)})
        buffer = lowered.to_executorch(ExecutorchBackendConfig(sym_shape_eval_pass=ConstraintBasedSymShapeEvalPass())).buffer
    check_batches(buffer, ctx.example[:1])
    path.write_bytes(buffer)
    return {"delegate": "XNNPACK", "max_batch": PTE_MAX_BATCH}


def check_batches(buffer: bytes, one: Any) -> None:
    """Run the program at batch 1 and at PTE_MAX_BATCH before it is written: a lowering that fixed the batch
    to its example's is a one-line error here, not a bundle that fails verify."""
    with native_quiet(), quiet():
        forward = runtime().get().load_program(buffer).load_method("forward")
        for batch in (1, PTE_MAX_BATCH):
            try:
                forward.execute([one.expand(batch, *one.shape[1:]).contiguous()])
            except Exception as e:  # noqa: BLE001 - the runtime raises RuntimeError or its own errors
                raise CnnpipeError(f"model.pte does not run at batch size {batch} ({type(e).__name__}: {first_line(e)}): "
                                   "ExecuTorch's lowering fixed the batch; export the other formats without "
                                   "executorch") from None


def runtime() -> Any:
    """ExecuTorch's ``Runtime`` class, imported without its export toolchain where that works.

    ``executorch.runtime`` imports ``executorch.exir`` (and with it ``torch._dynamo``: about 6 s of
    every process that loads a ``.pte``) only for the class of one warning, in ``exir._warnings``.
    That small module is loaded on its own for the import and the stand-in package removed after,
    so a later ``import executorch.exir`` (an export in the same process) is the real one. Any
    change upstream that breaks this falls back to the plain import.
    """
    if "executorch.runtime" in sys.modules or "executorch.exir" in sys.modules:
        from executorch.runtime import Runtime

        return Runtime
    try:
        package = importlib.util.find_spec("executorch.exir").submodule_search_locations[0]
        spec = importlib.util.spec_from_file_location("executorch.exir._warnings", Path(package) / "_warnings.py")
        warnings_module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(warnings_module)
    except Exception:  # noqa: BLE001 - another layout upstream: the plain, slower import
        from executorch.runtime import Runtime

        return Runtime
    stand_in = types.ModuleType("executorch.exir")
    stand_in.__path__ = [package]
    stand_in._warnings = warnings_module
    sys.modules.update({"executorch.exir": stand_in, "executorch.exir._warnings": warnings_module})
    try:
        from executorch.runtime import Runtime
    finally:
        for name in ("executorch.exir", "executorch.exir._warnings"):
            sys.modules.pop(name, None)
        import executorch

        executorch.__dict__.pop("exir", None)
    return Runtime


def load_executorch(path: Path, device: str, ctx: LoadContext) -> Runner:
    """The ``.pte`` in the ExecuTorch runtime's Python bindings; batches over its planned size run in parts."""
    import torch

    with native_quiet(), quiet():
        program = runtime().get().load_program(str(path))
        forward = program.load_method("forward")
        found = program.load_method(META_KEY).execute([])[0] if META_KEY in program.method_names else "{}"
    limit = int(ctx.variant.get("max_batch", PTE_MAX_BATCH))

    def call(x: Any) -> Any:
        with native_quiet():
            return torch.cat([forward.execute([x[i:i + limit]])[0] for i in range(0, len(x), limit)])

    problems = [] if json.loads(found) == ctx.meta else [f"{path.name}: ExecuTorch metadata differs from model.json"]
    return Runner(prepare=lambda x: torch.from_numpy(x), call=call, to_numpy=lambda y: y.numpy(), problems=problems)


register(
    Format(
        "executorch", "model.pte", "executorch (xnnpack)", "executorch", write_executorch, load_executorch,
        {"cpu": Tolerance(1e-4, 1e-4, 1.0, None)}, extra=("executorch", "executorch"), packages=("executorch",),
        reexported=True, fresh=True,
        snippet=f"""ExecuTorch (`model.pte`, XNNPACK delegate; batches of 1 to {PTE_MAX_BATCH}):

```python
import torch
from executorch.runtime import Runtime
forward = Runtime.get().load_program("model.pte").load_method("forward")
logits = forward.execute([torch.from_numpy(x)])[0]
```""",
    ),
)
