"""Options declared once: the choice sets, and option dataclasses whose fields carry their help.

A field made with ``option(...)`` is a command-line option of every command that takes its
dataclass (the CLI expands the dataclass into one ``--flag`` per field) and a key of a
``--config`` TOML file; the library takes the same dataclass. Fields made without it
(plain defaults) are library-only.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field, make_dataclass
from pathlib import Path
from typing import Any

from .errors import CnnpipeError
from .formats import BASE_FORMATS, FORMATS, VARIANT_FLAGS, flag_help
from .formats.base import Format
from .store.version import check_name
from .verification.signing import Trust, check_key
from .verification.timelimit import DEFAULT_TIMEOUT, TIMEOUT_HELP, check_timeout

DEVICES = ("auto", "cpu", "cuda")
PROVIDERS = ("cpu", "cuda")
COMPILE = ("auto", "on", "off")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")
PRECISIONS = ("auto", "fp32", "bf16")
LOADERS = ("auto", "device", "stream")
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("none", "step", "cosine", "onecycle")
SPLITS = ("test", "val")
LAYOUTS = ("flat", "triton")
FORMAT_CHOICES = (*BASE_FORMATS, "all")


@dataclass(frozen=True)
class Cli:
    """How a field appears on the command line."""

    help: str
    flags: tuple[str, ...] = ()  # default: --field-name
    choices: tuple[str, ...] | None = None
    multiple: bool = False  # a repeatable option; the field holds a tuple


def option(default: Any, help: str, *flags: str, choices: tuple[str, ...] | None = None, multiple: bool = False) -> Any:
    """A dataclass field that is also a command-line option and a config-file key."""
    cli = Cli(help, flags, choices, multiple)
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


_SPDX = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+-]{0,63}")  # one SPDX license id (LicenseRef-… included)
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


@dataclass
class TrainConfig:
    """Everything that decides a training run (recorded, resolved, in ``train.json``).

    ``None`` means the network's recipe: Adam 1e-3 for the small nets, SGD 0.1 with
    weight decay 5e-4 and a cosine schedule for ``vgg11-bn`` and ``resnet18``.
    """

    arch: str = option("lenet5", "Architecture to train (see `cnnpipe models`).", "--model", "-m")
    dataset: str = option("mnist-sample", "Dataset version to train on (NAME, NAME@vN or a path).", "--dataset", "-d")
    name: str | None = option(None, "Name of the model in the store (default: the architecture).")
    epochs: int = option(8, "Training epochs.")
    batch_size: int | None = option(None, "Training batch size (default: the network's recipe).", "--batch-size")
    optimizer: str | None = option(None, "Optimizer (default: the network's recipe).", choices=OPTIMIZERS)
    lr: float | None = option(None, "Peak learning rate (default: the recipe's).", "--lr")
    momentum: float = option(0.9, "SGD momentum.")
    nesterov: bool = option(False, "SGD with Nesterov momentum.")
    weight_decay: float | None = option(None, "Weight decay (default: the recipe's).", "--weight-decay")
    schedule: str | None = option(None, "Learning-rate schedule (default: the recipe's).", choices=SCHEDULES)
    warmup_epochs: float = option(0.0, "Linear learning-rate warm-up, in epochs.", "--warmup-epochs")
    step_size: int | None = option(None, "step schedule: epochs between decays (default epochs/3).", "--step-size")
    gamma: float = option(0.1, "step schedule: decay factor.")
    label_smoothing: float = option(0.0, "Label smoothing of the cross-entropy.", "--label-smoothing")
    grad_clip: float | None = option(None, "Clip the gradient norm to this value.", "--grad-clip")
    patience: int | None = option(None, "Stop after this many epochs without a better validation accuracy.")
    seed: int = option(0, "Seed for weights init and shuffling.")
    device: str = option("auto", "auto: CUDA when present, else CPU.", choices=DEVICES)
    compile: str = option("auto", "torch.compile: auto compiles on CUDA only.", choices=COMPILE)
    compile_mode: str = option("default", "torch.compile mode (reduce-overhead: CUDA graphs).", "--compile-mode",
                               choices=COMPILE_MODES)
    precision: str = option("auto", "auto: bf16 autocast on CUDA.", choices=PRECISIONS)
    deterministic: bool = option(False, "torch.use_deterministic_algorithms(True).")
    augment: bool = option(True, "Use the dataset's augmentation (random crop, flips where valid).")
    loader: str = option("auto", "device: the split on the device; stream: memory-mapped through a DataLoader; "
                         "auto: device when it fits.", choices=LOADERS)
    workers: int = option(2, "DataLoader workers when streaming.")
    init_from: str | None = option(None, "Start from these weights: a model version (NAME, NAME@vN, a path) or a "
                                   ".safetensors/checkpoint file.", "--init-from")
    reset_head: bool = option(False, "With --init-from: re-initialise the module that produces the logits "
                              "(needed when the class count differs).", "--reset-head")
    freeze_backbone: bool = option(False, "Train only the module that produces the logits.", "--freeze-backbone")
    eval_batch_size: int = 1000

    def resolved(self) -> TrainConfig:
        """A copy with every ``None`` filled from the network's recipe; raises on unusable values."""
        from .nets.registry import SMALL_NET_RECIPE, get_net
        from .nets.sources import default_name, parse

        recipe = get_net(self.arch).recipe if parse(self.arch).kind == "registry" else SMALL_NET_RECIPE
        out = TrainConfig(**asdict(self))
        out.name = self.name or default_name(self.arch)
        for key in ("batch_size", "optimizer", "lr", "weight_decay", "schedule"):
            if getattr(out, key) is None:
                setattr(out, key, recipe[key])
        out.step_size = self.step_size or max(1, self.epochs // 3)
        out._check()
        return out

    def _check(self) -> None:
        check_name(self.name or "", "model name")
        for key, value in asdict(self).items():
            if isinstance(value, float) and not math.isfinite(value):
                raise CnnpipeError(f"--{key.replace('_', '-')} must be a finite number, not {value}")
        check_seed(self.seed)
        checks = [
            (1 <= self.epochs <= MAX_EPOCHS, f"--epochs must be between 1 and {MAX_EPOCHS:,}, not {self.epochs}"),
            (self.batch_size >= 1 and self.eval_batch_size >= 1, f"--batch-size must be at least 1, not {self.batch_size}"),
            (self.lr > 0 and math.isfinite(self.lr), f"--lr must be a positive number, not {self.lr}"),
            (self.weight_decay >= 0, f"--weight-decay must be 0 or more, not {self.weight_decay}"),
            (0 <= self.warmup_epochs < self.epochs, f"--warmup-epochs must be in [0, epochs), not {self.warmup_epochs}"),
            (0 <= self.label_smoothing < 1, f"--label-smoothing must be in [0, 1), not {self.label_smoothing}"),
            (self.grad_clip is None or self.grad_clip > 0, f"--grad-clip must be positive, not {self.grad_clip}"),
            (self.patience is None or self.patience >= 1, f"--patience must be at least 1, not {self.patience}"),
            (self.workers >= 0, f"--workers must be 0 or more, not {self.workers}"),
            (not self.reset_head or self.init_from is not None,
             "--reset-head re-initialises what --init-from loaded: add --init-from"),
        ]
        for ok, message in checks:
            if not ok:
                raise CnnpipeError(message)
        for key, choices in TRAIN_CHOICES.items():
            check_choice(getattr(self, key), choices, "--" + key.replace("_", "-"))


TRAIN_CHOICES = {
    "optimizer": OPTIMIZERS, "schedule": SCHEDULES, "device": DEVICES, "compile": COMPILE,
    "compile_mode": COMPILE_MODES, "precision": PRECISIONS, "loader": LOADERS,
}


@dataclass(frozen=True)
class _ExportChoices:
    """What ``export`` writes, but for the variant flags (``ExportOptions`` adds one per flag of the format table)."""

    formats: tuple[str, ...] = option(
        ("all",), "Export format (repeatable): " + ", ".join(BASE_FORMATS) + " (torchscript is legacy), or all (every "
        "format whose runtime is installed).",
        "--format", "-f", choices=FORMAT_CHOICES, multiple=True,
    )
    opset: int | None = option(None, "ONNX opset (default: the exporter's).")
    layout: str = option("flat", "triton: also write a Triton model repository under triton/.", choices=LAYOUTS)
    calibration: int = option(256, "Training images that calibrate --int8.", "--calibration-images")
    license: str | None = option(None, "License of the model, an SPDX id (MIT, Apache-2.0, CC-BY-4.0...), written "
                                 "into the model card's metadata.", "--license")
    sign_key: str | None = option(None, "Sign the bundle with this private key (PEM, see cnnpipe keygen): it gets "
                                  "bundle.sig, which verify, predict and bench check with --public-key.", "--sign-key")

    @property
    def flags(self) -> dict[str, bool]:
        """The variant flags by name, as the format table's ``flag`` fields name them."""
        return {flag: getattr(self, flag) for flag in VARIANT_FLAGS}

    @property
    def everything(self) -> bool:
        """Whether ``all`` (or nothing) was asked for: every format whose runtime is installed."""
        return not self.formats or "all" in self.formats

    @property
    def not_installed(self) -> dict[str, str]:
        """The base formats ``all`` leaves out because their runtime is not installed, with their pip extra."""
        if not self.everything:
            return {}
        return {f: FORMATS[f].extra[1] for f in BASE_FORMATS if FORMATS[f].extra and not FORMATS[f].installed}

    def chosen(self) -> list[Format]:
        """The records to write, in table order: the base formats asked for, then the variants
        flagged; a usage error for any combination that cannot be written (checked before work)."""
        asked = {f for f in BASE_FORMATS if FORMATS[f].installed} if self.everything else set(self.formats)
        unknown = sorted(asked - set(BASE_FORMATS))
        if unknown:
            raise CnnpipeError(f"unknown export format {unknown[0]!r}; use {', '.join(BASE_FORMATS)} or all")
        check_choice(self.layout, LAYOUTS, "--layout")
        if self.layout == "triton" and "onnx" not in asked:
            raise CnnpipeError("--layout triton holds the ONNX file: add --format onnx")
        if self.calibration < 1:
            raise CnnpipeError(f"--calibration-images must be at least 1, not {self.calibration}")
        flags = self.flags
        chosen = [spec for spec in FORMATS.values() if (spec.parent is None and spec.name in asked)
                  or (spec.flag and flags.get(spec.flag) and spec.parent in asked)]
        for flag in (f for f, on in flags.items() if on):
            parents = [spec.parent for spec in FORMATS.values() if spec.flag == flag]
            if not any(spec.flag == flag for spec in chosen):
                raise CnnpipeError(f"--{flag} derives from the {' or '.join(map(str, parents))} file: "
                                   f"add --format {parents[0]}")
        for spec in chosen:
            if spec.needs and spec.needs not in asked:
                raise CnnpipeError(f"--format {spec.name} is converted from the {spec.needs} file: add --format {spec.needs}")
            spec.require()
        if self.sign_key is not None:
            check_key(Path(self.sign_key), "--sign-key")
        if self.license is not None and not _SPDX.fullmatch(self.license):
            raise CnnpipeError(f"--license must be an SPDX license id such as MIT or Apache-2.0, not {self.license!r}")
        return chosen


# One boolean option per variant flag of the format table (--fp16, --int8, --aoti): a new variant's
# record brings its flag, help text and config-file key with it.
ExportOptions = make_dataclass(
    "ExportOptions", [(flag, bool, option(False, flag_help(flag), f"--{flag}")) for flag in VARIANT_FLAGS],
    bases=(_ExportChoices,), frozen=True,
)
ExportOptions.__module__ = __name__
ExportOptions.__doc__ = "What ``export`` writes: base formats, the variants flagged, the opset, layout, license and signing key."


@dataclass(frozen=True)
class SignatureOptions:
    """The key a bundle's signature must verify with before anything of the bundle is loaded."""

    public_key: str | None = option(None, "Public key (PEM) the bundle's signature (bundle.sig) must verify with "
                                    "before anything of the bundle is loaded; exit 1 when it does not.", "--public-key")
    require_signature: bool = option(False, "Refuse to run without --public-key (for release jobs).", "--require-signature")

    def trust(self, native: bool = False) -> Trust:
        """The trust these options give (``native``: load native code even from an unsigned bundle)."""
        if self.public_key is not None:
            check_key(Path(self.public_key), "--public-key")
        return Trust(Path(self.public_key) if self.public_key else None, self.require_signature, native)


@dataclass(frozen=True)
class VerifyOptions:
    """How ``verify`` judges a bundle; tolerances left None take each format's default."""

    batch_sizes: str = option("1,2,7,64", "Comma-separated batch sizes to verify at.", "--batch-sizes")
    samples: int = option(512, "Number of real test images to verify on.")
    full: bool = option(False, "Verify on the whole test split instead of --samples images.", "--full")
    atol: float | None = option(None, "Absolute logit tolerance for every format (default per format and device: see README).")
    rtol: float | None = option(None, "Relative logit tolerance (times |reference logit|) for every format.")
    min_agreement: str | None = option(
        None, "Minimum top-1 agreement with PyTorch (0-1): one value for every format, or FORMAT=VALUE pairs "
        "(onnx-int8=0.995,all=1.0; all: the formats not named). In --config, a [min-agreement] table.", "--min-agreement")
    providers: str = option(
        "cpu", "Devices to verify on: cpu, cuda or cpu,cuda (onnxruntime's provider, and the network rebuilt from safetensors)."
    )
    timeout: float = option(DEFAULT_TIMEOUT, TIMEOUT_HELP)

    def check(self) -> None:
        """Every usage error these options can hold, before any work."""
        self.batch_size_list(), self.provider_list(), self.agreement_by_format()
        check_timeout(self.timeout)
        if not self.full and self.samples < 1:
            raise CnnpipeError(f"--samples must be at least 1, not {self.samples}")

    def agreement_by_format(self) -> dict[str, float]:
        """``--min-agreement`` by format name ("all": every format not named); a usage error for an
        unknown format or a value that is not a number from 0 to 1."""
        table: dict[str, float] = {}
        for part in (self.min_agreement or "").split(","):
            if not part.strip():
                continue
            name, _, value = part.rpartition("=")
            name = name.strip() or "all"
            if name != "all" and name not in FORMATS:
                raise CnnpipeError(f"--min-agreement names an unknown format {name!r}; use {', '.join(FORMATS)} or all")
            try:
                number = float(value)
            except ValueError:
                number = math.nan
            if not 0 <= number <= 1:
                raise CnnpipeError("--min-agreement must be a finite number from 0 to 1 (or FORMAT=VALUE pairs), "
                                   f"not {part.strip()!r}")
            table[name] = number
        return table

    def overrides(self, fmt: str) -> dict[str, float | None]:
        """The tolerances given for ``fmt``, each replacing the format's default (None: keep it)."""
        table = self.agreement_by_format()
        return {"atol": self.atol, "rtol": self.rtol, "min_agreement": table.get(fmt, table.get("all"))}
        if not self.full and self.samples < 1:
            raise CnnpipeError(f"--samples must be at least 1, not {self.samples}")

    def batch_size_list(self) -> tuple[int, ...]:
        """The batch sizes as integers; a usage error when they are not."""
        return parse_batch_sizes(self.batch_sizes)

    def provider_list(self) -> tuple[str, ...]:
        """The devices asked for; a usage error naming an unknown one."""
        chosen = tuple(p.strip() for p in self.providers.split(",") if p.strip())
        unknown = sorted(set(chosen) - set(PROVIDERS)) or ([""] if not chosen else [])
        if unknown:
            raise CnnpipeError(f"unknown provider {unknown[0]!r}; use {', '.join(PROVIDERS)}")
        return chosen


@dataclass(frozen=True)
class GateOptions:
    """The release gates of ``evaluate`` and ``run``."""

    min_accuracy: float | None = option(None, "Gate: exit 1 when test accuracy is below this fraction.", "--min-accuracy")
    against: str | None = option(None, "Model version to compare with on the same images (per-class differences).")
    max_regression: float | None = option(
        None, "Gate with --against: exit 1 when accuracy drops by more than this many points, overall or for any class.",
        "--max-regression",
    )
