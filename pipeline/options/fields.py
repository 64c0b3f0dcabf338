"""How an option is declared once: the ``option(...)`` field, the choice sets, and the checks
every options record's ``validate()`` shares.

A field made with ``option(...)`` is a command-line option of every command that takes its
dataclass (the CLI expands the dataclass into one ``--flag`` per field) and a key of a
``--config`` TOML file; the library takes the same dataclass. Fields made without it
(plain defaults) are library-only.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Any

from ..errors import CnnpipeError

DEVICES = ("auto", "cpu", "cuda")
DEVICES_HERE = ("cpu", "cuda")  # devices a runtime is asked to run on (verify, predict)
COMPILE = ("auto", "on", "off")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")
PRECISIONS = ("auto", "fp32", "bf16")
LOADERS = ("auto", "device", "stream")
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("none", "step", "cosine", "onecycle")
SPLITS = ("test", "val")
LAYOUTS = ("flat", "triton")
GATE_ON = ("bound", "point")
GATE_ON_HELP = ("How an accuracy-type gate is decided: bound (its 95% interval must be within the limit; a sample "
                "too small to decide fails and says how many images would) or point (the estimate alone).")
@dataclass(frozen=True)
class Cli:
    """How a field appears on the command line."""

    help: str
    flags: tuple[str, ...] = ()  # default: --field-name
    choices: tuple[str, ...] | None = None
    multiple: bool = False  # a repeatable option; the field holds a tuple
    envvar: str | None = None  # an environment variable that gives the option when the command line does not


def option(default: Any, help: str, *flags: str, choices: tuple[str, ...] | None = None, multiple: bool = False,
           envvar: str | None = None) -> Any:
    """A dataclass field that is also a command-line option and a config-file key."""
    cli = Cli(help, flags, choices, multiple, envvar)
    if isinstance(default, (list, tuple)):
        return field(default_factory=lambda: tuple(default), metadata={"cli": cli})
    return field(default=default, metadata={"cli": cli})


def gate_on_option() -> Any:
    """The ``--gate-on`` field: one flag where a command takes several records that declare it."""
    return option("bound", GATE_ON_HELP, "--gate-on", choices=GATE_ON)


MAX_BATCH = 1 << 20  # a batch of over a million images is a typo whatever the input; memory bounds it further


def parse_batch_sizes(text: str) -> tuple[int, ...]:
    """``"1,2,7"`` as positive integers up to MAX_BATCH; a usage error naming the text otherwise."""
    try:
        sizes = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise CnnpipeError(f"--batch-sizes must be comma-separated integers, not {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise CnnpipeError("--batch-sizes must be positive integers")
    check_batch_size(max(sizes), "--batch-sizes")
    return sizes


def check_batch_size(size: int, flag: str) -> None:
    """A usage error for a batch size under 1 or over MAX_BATCH."""
    if not 1 <= size <= MAX_BATCH:
        raise CnnpipeError(f"{flag} must be between 1 and {MAX_BATCH:,}, not {size:,}")


def available_memory() -> int:
    """Bytes of memory this machine can still give (MemAvailable where the kernel says it)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


BATCH_MEMORY_FACTOR = 8  # a batch's inputs, its copies and activations: several times the float32 inputs


def check_batch_memory(size: int, shape: list[int] | tuple[int, ...], flag: str) -> None:
    """A usage error when one batch of ``size`` float32 inputs of ``shape`` (C, H, W) would not fit in the
    memory available (BATCH_MEMORY_FACTOR times the inputs), naming the largest batch that would."""
    if not all(isinstance(d, int) and d > 0 for d in shape):
        return  # a malformed shape is its reader's error to name
    per_image = 4 * math.prod(shape) * BATCH_MEMORY_FACTOR
    free = available_memory()
    if size * per_image > free:
        raise CnnpipeError(f"{flag} {size:,} needs about {size * per_image / 2**30:,.1f} GiB for {'x'.join(map(str, shape))} "
                           f"inputs and this machine has {free / 2**30:,.1f} GiB available: use at most "
                           f"{max(1, free // per_image):,}")


MAX_EPOCHS = 100_000  # a bound that catches a typo: at one second an epoch, over a day
MAX_SEED = 2**63 - 1  # torch and numpy generators both take seeds in [0, 2^63)


def check_seed(seed: int, flag: str = "--seed") -> None:
    """A usage error unless ``seed`` is one every generator cnnpipe seeds accepts."""
    if not 0 <= seed <= MAX_SEED:
        raise CnnpipeError(f"{flag} must be between 0 and 2^63-1, not {seed}")


def check_choice(value: Any, choices: tuple[str, ...], flag: str) -> None:
    """A usage error naming the allowed values, for library callers who bypass the CLI's checks."""
    if value not in choices:
        raise CnnpipeError(f"{flag} must be one of {', '.join(choices)}, not {value!r}")


def flag_of(record_type: type, name: str) -> str:
    """The command-line flag of field ``name`` of an options dataclass (``--field-name`` by default)."""
    for f in dataclasses.fields(record_type):
        if f.name == name and "cli" in f.metadata and f.metadata["cli"].flags:
            return f.metadata["cli"].flags[0]
    return "--" + name.replace("_", "-")


def check_finite(record: Any) -> None:
    """A usage error naming the flag of the first option of ``record`` that is NaN or infinite
    (no option means anything by them)."""
    for f in dataclasses.fields(record):
        value = getattr(record, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise CnnpipeError(f"{flag_of(type(record), f.name)} must be a finite number, not {value}")
