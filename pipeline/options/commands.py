"""The options of the commands that read or fill the stores around the release stages:
``download``, ``evaluate``, ``bench``, ``predict``, ``kit``, ``publish`` and ``gc``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..data.catalog import CATALOG
from ..data.resize import FOLDER_SIZE, MAX_SIZE, MIN_SIZE, check_size
from ..errors import CnnpipeError
from ..formats import FORMATS
from ..store.version import check_name
from ..verification.signing import check_key
from ..verification.timelimit import DEFAULT_TIMEOUT, TIMEOUT_HELP, check_timeout
from .fields import (
    DEVICES,
    DEVICES_HERE,
    SPLITS,
    check_batch_size,
    check_choice,
    check_finite,
    check_seed,
    option,
    parse_batch_sizes,
)
from .release import ExportOptions, GateOptions, VerifyOptions
from .training import TrainConfig

SIZE_HELP = (f"Resize images to SIZE x SIZE ({MIN_SIZE} to {MAX_SIZE}) on import, for networks made for larger "
             f"inputs (default: the dataset's own size; {FOLDER_SIZE} for imagefolder).")
MIRROR_HELP = "Base URL or folder to fetch from instead of the official URLs (also CNNPIPE_MIRROR)."
MAX_THREADS = 1024
MAX_AGE_HOURS = 24 * 366 * 10


@dataclass(frozen=True)
class DownloadOptions:
    """How ``download`` fetches a standard dataset or imports a folder of images (``imagefolder``)."""

    mirror: str | None = option(None, MIRROR_HELP)
    val_size: int | None = option(None, "Validation images held out of train (standard datasets; default 5000).",
                                  "--val-size")
    seed: int = option(0, "Seed of the validation (and image folder) split.")
    refresh: bool = option(False, "Fetch again even if an intact version exists.")
    plots: bool = option(True, "Write samples.png and classes.png into the version.")
    dataset_name: str | None = option(None, "With imagefolder: the dataset's name.", "--name")
    size: int | None = option(None, SIZE_HELP)
    channels: int = option(3, "With imagefolder: 1 (grayscale) or 3 (RGB).")
    val_fraction: float = option(0.1, "With imagefolder: validation share when the folder has no val/.", "--val-fraction")
    test_fraction: float = option(0.2, "With imagefolder: test share when the folder has no train/ and test/.",
                                  "--test-fraction")
    skip_bad: bool = option(False, "With imagefolder: leave unreadable images out (listed) instead of failing.", "--skip-bad")
    flip: bool = option(True, "With imagefolder: horizontal flips are valid augmentation.")
    follow_symlinks: bool = option(False, "With imagefolder: read images that symbolic links lead to outside PATH "
                                   "(refused by default).", "--follow-symlinks")
    test_from: str = option("train", "With imagefolder, for train/ and val/ without test/: where the test split comes "
                            "from: train (a stratified hold-out of train/) or val (val/ is the test split and "
                            "validation is held out of train/).", "--test-from", choices=("train", "val"))

    @property
    def folder_size(self) -> int:
        """The side an image folder is resized to."""
        return self.size or FOLDER_SIZE

    def validate(self) -> None:
        """Usage errors common to both kinds of download."""
        check_finite(self)
        check_seed(self.seed)
        if self.size is not None:
            check_size(self.size)

    def validate_folder(self) -> None:
        """Usage errors of an image-folder import, before any image is read."""
        self.validate()
        if self.dataset_name is None:
            raise CnnpipeError("usage: cnnpipe download imagefolder PATH --name NAME")
        check_name(self.dataset_name, "dataset name")
        if self.channels not in (1, 3):
            raise CnnpipeError(f"--channels must be 1 or 3, not {self.channels}")
        if not (0 < self.val_fraction < 1 and 0 <= self.test_fraction < 1 and self.val_fraction + self.test_fraction < 1):
            raise CnnpipeError("--val-fraction and --test-fraction must be fractions that leave images to train on")
        check_choice(self.test_from, ("train", "val"), "--test-from")


@dataclass(frozen=True)
class EvaluateOptions(GateOptions):
    """Where ``evaluate`` runs, on which split, and its gates."""

    split: str = option("test", "Split to evaluate on.", choices=SPLITS)
    batch_size: int = option(256, "Inference batch size.", "--batch-size")
    device: str = option("auto", "auto: CUDA when present, else CPU.", choices=DEVICES)
    plots: bool = option(True, "Draw confusion.png, per_class.png and misclassified.png into the evaluation.")

    def validate(self) -> None:
        """Every usage error these options can hold, before any work."""
        check_choice(self.split, SPLITS, "--split")
        check_choice(self.device, DEVICES, "--device")
        check_batch_size(self.batch_size, "--batch-size")
        super().validate()


@dataclass(frozen=True)
class BenchOptions:
    """What ``bench`` times and for how long."""

    batch_sizes: str = option("1,256", "Comma-separated batch sizes.", "--batch-sizes")
    seconds: float = option(2.0, "Time spent per runtime and batch size.")
    threads: int | None = option(None, "CPU threads for every runtime (default: torch's).")
    timeout: float = option(DEFAULT_TIMEOUT, TIMEOUT_HELP)

    def batch_size_list(self) -> tuple[int, ...]:
        """The batch sizes as integers; a usage error when they are not."""
        return parse_batch_sizes(self.batch_sizes)

    def validate(self) -> None:
        """Every usage error these options can hold, before any work."""
        check_finite(self)
        self.batch_size_list()
        if self.seconds <= 0:
            raise CnnpipeError(f"--seconds must be positive, not {self.seconds}")
        if self.threads is not None and not 0 <= self.threads <= MAX_THREADS:
            raise CnnpipeError(f"--threads must be between 0 (torch's default) and {MAX_THREADS}, not {self.threads}")
        check_timeout(self.timeout)


@dataclass(frozen=True)
class PredictOptions:
    """How ``predict`` classifies image files."""

    top_k: int = option(3, "Classes to show per image.", "--top-k", "-k")
    provider: str = option("cpu", "onnxruntime provider: cpu or cuda.")
    batch_size: int = option(256, "Images decoded and run per batch.", "--batch-size")
    timeout: float = option(DEFAULT_TIMEOUT, TIMEOUT_HELP)

    def validate(self) -> None:
        """Every usage error these options can hold, before any work."""
        check_finite(self)
        if self.top_k < 1:
            raise CnnpipeError("--top-k must be at least 1")
        check_batch_size(self.batch_size, "--batch-size")
        if self.provider not in DEVICES_HERE:
            raise CnnpipeError(f"unknown provider {self.provider!r}; use {', '.join(DEVICES_HERE)}")
        check_timeout(self.timeout)


KIT_FORMATS = tuple(name for name, f in FORMATS.items() if f.kit)  # the formats check.py runs without torch
MAX_KIT_IMAGES = 10_000


@dataclass(frozen=True)
class KitOptions:
    """What ``kit`` writes for a deployer to re-verify a bundle on their device."""

    out: str = option("", "Folder to write the kit into; it must not exist.", "--out")
    formats: tuple[str, ...] = option(
        (), "Format to put in the kit (repeatable; default: every format of the bundle that check.py runs without "
        "torch: " + ", ".join(KIT_FORMATS) + ").", "--format", "-f", choices=KIT_FORMATS, multiple=True)
    images: int = option(32, f"Real test images in the kit, as image files and as input tensors (1 to {MAX_KIT_IMAGES:,}).")
    sign_key: str | None = option(None, "Sign the kit with this private key (PEM): required when the bundle is signed, "
                                  "and then it must be the bundle's key; check.py --public-key checks it.", "--sign-key")
    timeout: float = option(DEFAULT_TIMEOUT, TIMEOUT_HELP)

    def validate(self) -> None:
        """Every usage error these options can hold, before any work."""
        check_finite(self)
        if not self.out:
            raise CnnpipeError("--out DIR is required: the folder to write the kit into")
        if not 1 <= self.images <= MAX_KIT_IMAGES:
            raise CnnpipeError(f"--images must be from 1 to {MAX_KIT_IMAGES:,}, not {self.images}")
        if Path(self.out).exists() or Path(self.out).is_symlink():
            raise CnnpipeError(f"--out {self.out}: already exists; a kit is never written over anything (choose another --out)")
        if self.sign_key is not None:
            check_key(Path(self.sign_key), "--sign-key")
        check_timeout(self.timeout)


@dataclass(frozen=True)
class PublishOptions:
    """Where ``publish`` registers a verified bundle."""

    mlflow: str = option("", "MLflow tracking server (http://host:5000, or a database URI) whose registry receives it.",
                         "--mlflow", envvar="MLFLOW_TRACKING_URI")
    alias: str | None = option(None, "Point this alias (e.g. champion) at the version once it is complete.")
    registered_model: str | None = option(None, "Registered model name (default: the bundle's name).", "--registered-model")
    public_key: str | None = option(None, "Public key (PEM) a passed verification statement of this bundle (verify "
                                    "--sign-key) must verify with; without it, publish verifies the bundle itself.",
                                    "--public-key")

    def validate(self) -> None:
        """Every usage error these options can hold, before any work."""
        if not self.mlflow.strip():
            raise CnnpipeError("--mlflow must name a tracking server, e.g. http://127.0.0.1:5000")
        if self.public_key is not None:
            check_key(Path(self.public_key), "--public-key")
        for flag, value in (("--alias", self.alias), ("--registered-model", self.registered_model)):
            if value is not None:
                check_name(value, flag)


@dataclass(frozen=True)
class GcOptions:
    """What ``gc`` may remove."""

    older_than: float = option(24.0, f"Hours an abandoned upload must be old before it is removed (0 to {MAX_AGE_HOURS}): "
                               "a live writer's upload is younger than that.", "--older-than")

    def validate(self) -> None:
        """A usage error for an age out of bounds."""
        check_finite(self)
        if not 0 <= self.older_than <= MAX_AGE_HOURS:
            raise CnnpipeError(f"--older-than must be a number of hours from 0 to {MAX_AGE_HOURS}, not {self.older_than}")


@dataclass(frozen=True)
class RunOptions:
    """What ``run`` does around the stages' own options: the records of train, export, verify and
    the gates, and the options that belong to the run itself."""

    mirror: str | None = option(None, MIRROR_HELP)
    size: int | None = option(None, "Standard datasets: " + SIZE_HELP)
    skip_train: bool = option(False, "Release the newest version of the model --name (default from --model) as it is, "
                              "e.g. weights brought in with `cnnpipe import`: evaluate, export, verify.", "--skip-train")
    train: TrainConfig = field(default_factory=TrainConfig)
    export: ExportOptions = field(default_factory=ExportOptions)
    verify: VerifyOptions = field(default_factory=VerifyOptions)
    gates: GateOptions = field(default_factory=GateOptions)

    def validate(self) -> None:
        """Every stage's usage errors before any work (the training config as far as it is set; the
        stage resolves it from the network's recipe)."""
        self.train.validate()
        self.gates.validate()
        self.export.validate()
        self.verify.validate()
        if self.size is not None and (self.skip_train or self.train.dataset not in CATALOG):
            raise CnnpipeError("--size resizes a standard dataset on download; "
                               f"{'a trained model' if self.skip_train else self.train.dataset} keeps the size it was stored at")
