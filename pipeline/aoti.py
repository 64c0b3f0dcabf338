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

import torch

from .errors import CnnpipeError, first_line
from .formats import quiet
from .store import write_through_memory


def compile_package(program: Any, path: Path, meta: dict[str, str]) -> dict[str, str]:
    """Compile ``program`` into an AOTInductor package at ``path`` with ``meta`` embedded as
    ``cnnpipe.json`` (needs a C++ compiler); returns what it was compiled for."""
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
        raise CnnpipeError(f"AOTInductor compile failed (it needs a C++ compiler such as g++): {first_line(e)}") from None
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
    try:
        with quiet():
            package = inductor.aoti_load_package(str(path))
    except Exception as e:  # a package from another torch, platform or device
        raise CnnpipeError(f"{path.name}: torch cannot load it ({first_line(e)})") from None
    return package, package.get_metadata()
