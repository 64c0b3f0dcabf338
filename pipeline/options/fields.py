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


def parse_batch_sizes(text: str) -> tuple[int, ...]:
    """``"1,2,7"`` as positive integers; a usage error naming the text otherwise."""
    try:
        sizes = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise CnnpipeError(f"--batch-sizes must be comma-separated integers, not {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise CnnpipeError("--batch-sizes must be positive integers")
    return sizes


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
