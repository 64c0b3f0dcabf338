"""AOTInductor packages: a ``torch.export`` program compiled to native code, and loading one safely.

The package holds a shared library built for this machine's platform and CPU
instructions; loading it on another platform, or on a CPU without those instructions, is
refused with the reason, never tried.
"""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path
from typing import Any

from ..errors import CnnpipeError, ExportFailed, LoadFailed, first_line
from ..fs import write_through_memory
from .archive import check_sizes
from .base import META_FILE, ExportContext, Format, LoadContext, Runner, Tolerance, quiet, register, same_meta, torch_runner


def compile_package(program: Any, path: Path, meta: dict[str, str]) -> dict[str, str]:
    """Compile ``program`` into an AOTInductor package at ``path`` with ``meta`` embedded as
    ``cnnpipe.json`` (needs a C++ compiler); returns what it was compiled for."""
    import torch

    try:
        with quiet():
            import torch._inductor as inductor

            write_through_memory(path, lambda f: inductor.aoti_compile_and_package(
                program, package_path=f,
                # freezing folds the weights in as constants, so convolutions run on prepacked weights
                inductor_configs={"freezing": True, "aot_inductor.metadata": {"cnnpipe.json": json.dumps(meta)}},
            ))
            built = inductor.aoti_load_package(str(path)).get_metadata()
    except Exception as e:  # compiler missing or failing, unsupported op: all mean "no package"
        raise ExportFailed(f"AOTInductor compile failed (it needs a C++ compiler such as g++): {first_line(e)}") from e
    return {
        "platform": f"{built.get('AOTI_PLATFORM', '')}-{built.get('AOTI_MACHINE', '')}",
        "device": built.get("AOTI_DEVICE_KEY", ""), "cpu_isa": built.get("AOTI_CPU_ISA", "").lower(),
        "torch": torch.__version__,
    }


def load_package(path: Path, compiled_for: dict[str, str]) -> tuple[Any, dict[str, str]]:
    """The package at ``path`` and its embedded metadata, loaded only where this CPU runs the
    instructions ``compiled_for`` (from model.json) names."""
    with quiet():
        import torch._inductor as inductor
        from torch._inductor.cpu_vec_isa import valid_vec_isa_list

        here = {str(v) for v in valid_vec_isa_list()}
    built_on, this = compiled_for.get("platform", ""), f"{sys.platform}-{platform.machine()}"
    if built_on != this:
        raise CnnpipeError(f"{path.name} was compiled for {built_on}, and this machine is {this}")
    isa = compiled_for.get("cpu_isa", "")
    if isa and isa not in here:
        raise CnnpipeError(f"{path.name} was compiled for CPU instructions '{isa}', which this machine lacks; "
                           "export --aoti on the kind of machine that will run it")
    check_sizes(path, "AOTInductor package")
    try:
        with quiet():
            package = inductor.aoti_load_package(str(path))
    except Exception as e:  # a package from another torch, platform or device
        raise LoadFailed(f"{path.name}: torch cannot load it ({first_line(e)})") from e
    return package, package.get_metadata()


def write_aoti(ctx: ExportContext, path: Path) -> dict[str, Any]:
    """The pt2 program compiled by AOTInductor for this machine; records what it was compiled for."""
    return {"compiled_for": compile_package(ctx.exported(), path, ctx.meta)}


def load_aoti(path: Path, device: str, ctx: LoadContext) -> Runner:
    """The package, loaded only where this CPU has the instructions model.json says it needs."""
    compiled_for = ctx.variant.get("compiled_for", {})
    package, built = load_package(path, compiled_for)
    problems = same_meta(built.get(META_FILE), ctx, "AOTInductor metadata")
    if built.get("AOTI_CPU_ISA", "").lower() != compiled_for.get("cpu_isa", ""):
        problems.append(f"{path.name} holds code for '{built.get('AOTI_CPU_ISA', '')}', model.json says "
                        f"'{compiled_for.get('cpu_isa', '')}'")
    return torch_runner(package, device, problems)


register(
    Format(
        "pt2-aoti", "model.aoti.pt2", "AOTInductor", "aoti", write_aoti, load_aoti,
        {"cpu": Tolerance(1e-4, 1e-4, 1.0, None)}, parent="pt2", flag="aoti", native=True, packages=("torch",),
        flag_help="model.aoti.pt2 (the pt2 program compiled by AOTInductor; needs a C++ compiler)",
        snippet="""AOTInductor package (`model.aoti.pt2`: native code for this bundle's platform and CPU, see `model.json`):

```python
import torch
package = torch._inductor.aoti_load_package("model.aoti.pt2")  # runs native code: load only a bundle you trust
logits = package(torch.from_numpy(x)).numpy()
```

Worth shipping for a consumer with PyTorch or C++ but no ONNX runtime, or on CUDA. On a CPU it
runs at about eager PyTorch's speed (its convolutions are the same oneDNN kernels): prefer
`model.onnx` or the OpenVINO IR there.""",
    ),
)
