"""The options of the release stages: ``export``, ``verify``, the signature every bundle reader
checks, and ``evaluate``'s and ``run``'s gates."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, make_dataclass
from pathlib import Path

from ..errors import CnnpipeError
from ..formats import BASE_FORMATS, FORMATS, VARIANT_FLAGS, flag_help
from ..formats.base import Format
from ..verification.signing import Trust, check_key
from ..verification.timelimit import DEFAULT_TIMEOUT, TIMEOUT_HELP, check_timeout
from .fields import DEVICES_HERE, GATE_ON, LAYOUTS, check_choice, check_finite, gate_on_option, option, parse_batch_sizes

FORMAT_CHOICES = (*BASE_FORMATS, "all")
_SPDX = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+-]{0,63}")  # one SPDX license id (LicenseRef-… included)


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
    max_int8_drop: float = option(1.0, "Points of top-1 accuracy --int8 may lose against the fp32 network (0-100): the "
                                  "quantization ladder stops at the first recipe within it on the validation split and "
                                  "certifies it on the test split; none within it: no int8 file, exit 1.", "--max-int8-drop")
    gate_on: str = gate_on_option()
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

    def validate(self) -> None:
        """Every usage error these options can hold, before any work."""
        check_finite(self)
        check_choice(self.gate_on, GATE_ON, "--gate-on")
        if not 0 <= self.max_int8_drop <= 100:
            raise CnnpipeError(f"--max-int8-drop is a number of accuracy points from 0 to 100, not {self.max_int8_drop}")
        self.chosen()

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
            spec.require(writing=True)
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

    def validate(self) -> None:
        """A usage error when the public key given is not a readable PEM public key."""
        if self.public_key is not None:
            check_key(Path(self.public_key), "--public-key")

    def trust(self, native: bool = False) -> Trust:
        """The trust these options give (``native``: load native code even from an unsigned bundle)."""
        self.validate()
        return Trust(Path(self.public_key) if self.public_key else None, self.require_signature, native)


@dataclass(frozen=True)
class VerdictOptions:
    """The key ``verify`` signs its verdict with."""

    sign_key: str | None = option(None, "Sign the verdict with this private key (PEM, see cnnpipe keygen): verify writes "
                                  "verify/*.intoto.json, an in-toto statement of the bundle's files and the verdict in "
                                  "a DSSE envelope, which publish and sign accept as proof.", "--sign-key")

    def validate(self) -> None:
        """A usage error when the key given is not a readable file."""
        if self.sign_key is not None:
            check_key(Path(self.sign_key), "--sign-key")


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
    gate_on: str = gate_on_option()

    def validate(self) -> None:
        """Every usage error these options can hold, before any work."""
        check_finite(self)
        check_choice(self.gate_on, GATE_ON, "--gate-on")
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

    def batch_size_list(self) -> tuple[int, ...]:
        """The batch sizes as integers; a usage error when they are not."""
        return parse_batch_sizes(self.batch_sizes)

    def provider_list(self) -> tuple[str, ...]:
        """The devices asked for; a usage error naming an unknown one."""
        chosen = tuple(p.strip() for p in self.providers.split(",") if p.strip())
        unknown = sorted(set(chosen) - set(DEVICES_HERE)) or ([""] if not chosen else [])
        if unknown:
            raise CnnpipeError(f"unknown provider {unknown[0]!r}; use {', '.join(DEVICES_HERE)}")
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
    gate_on: str = gate_on_option()

    def validate(self) -> None:
        """Refuse gate options that make no sense, before any work is done."""
        check_finite(self)
        check_choice(self.gate_on, GATE_ON, "--gate-on")
        if self.min_accuracy is not None and not 0.0 <= self.min_accuracy <= 1.0:
            raise CnnpipeError(f"--min-accuracy is a fraction between 0 and 1, not {self.min_accuracy}")
        if self.max_regression is not None and (self.against is None or self.max_regression < 0):
            raise CnnpipeError("--max-regression takes a number of points >= 0 and needs --against REF")
