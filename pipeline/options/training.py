"""The options of ``train`` (and of ``run``'s training stage)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ..errors import CnnpipeError
from ..store.version import check_name
from .fields import (
    COMPILE,
    COMPILE_MODES,
    DEVICES,
    LOADERS,
    MAX_EPOCHS,
    OPTIMIZERS,
    PRECISIONS,
    SCHEDULES,
    check_choice,
    check_finite,
    check_seed,
    option,
)

# Named recipes: the options a recipe sets when the user gives none (one place for each recipe).
RECIPES: dict[str, dict[str, Any]] = {
    # SGD-Nesterov OneCycle, label smoothing, cutout, CUDA graphs; validation and checkpoints off the hot loop
    # (benchmarks/RESULTS.md, "GPU: the fast recipe").
    "fast": {  # ResNet18 on cifar10-jpeg: 91.4% test accuracy, 79.5 s wall with a cold compile on an H200
        "epochs": 80, "batch_size": 512, "optimizer": "sgd", "nesterov": True, "lr": 0.2, "weight_decay": 5e-4,
        "schedule": "onecycle", "label_smoothing": 0.1, "cutout": 8, "compile_mode": "reduce-overhead",
        "val_every": 4, "checkpoint_every": 12,
    },
}


@dataclass
class TrainConfig:
    """Everything that decides a training run (recorded, resolved, in ``train.json``).

    ``None`` means: the named ``recipe``'s value (``RECIPES``) if it has one, else the network's
    recipe (Adam 1e-3 for the small nets, SGD 0.1 with weight decay 5e-4 and a cosine schedule
    for ``vgg11-bn`` and ``resnet18``), else ``BASE_DEFAULTS``.
    """

    arch: str = option("lenet5", "Architecture to train (see `cnnpipe models`).", "--model", "-m")
    dataset: str = option("mnist-sample", "Dataset version to train on (NAME, NAME@vN or a path).", "--dataset", "-d")
    name: str | None = option(None, "Name of the model in the store (default: the architecture).")
    recipe: str | None = option(None, "A named set of defaults for the options not given: fast = a short "
                                "schedule with CUDA graphs, sparse validation and checkpoints (see README).",
                                choices=tuple(RECIPES))
    epochs: int | None = option(None, "Training epochs (default: the recipe's, else 8).")
    batch_size: int | None = option(None, "Training batch size (default: the network's recipe).", "--batch-size")
    optimizer: str | None = option(None, "Optimizer (default: the network's recipe).", choices=OPTIMIZERS)
    lr: float | None = option(None, "Peak learning rate (default: the recipe's).", "--lr")
    momentum: float = option(0.9, "SGD momentum.")
    nesterov: bool | None = option(None, "SGD with Nesterov momentum (default: the recipe's, else off).")
    weight_decay: float | None = option(None, "Weight decay (default: the recipe's).", "--weight-decay")
    schedule: str | None = option(None, "Learning-rate schedule (default: the recipe's).", choices=SCHEDULES)
    warmup_epochs: float = option(0.0, "Linear learning-rate warm-up, in epochs.", "--warmup-epochs")
    step_size: int | None = option(None, "step schedule: epochs between decays (default epochs/3).", "--step-size")
    gamma: float = option(0.1, "step schedule: decay factor.")
    label_smoothing: float | None = option(None, "Label smoothing of the cross-entropy (default: the recipe's, "
                                           "else 0).", "--label-smoothing")
    cutout: int | None = option(None, "Blank a random square of this side in each training image (default: the "
                                "recipe's, else 0: none).")
    grad_clip: float | None = option(None, "Clip the gradient norm to this value.", "--grad-clip")
    patience: int | None = option(None, "Stop after this many validations without a better validation accuracy.")
    val_every: int | None = option(None, "Validate every N-th epoch and the last; the best is chosen among those "
                                   "(default: the recipe's, else 1).", "--val-every")
    checkpoint_every: int | None = option(None, "Checkpoint every N-th epoch and the last, written in the background; "
                                          "an interrupted run resumes from the last one, losing at most N-1 epochs "
                                          "(default: the recipe's, else 1).", "--checkpoint-every")
    seed: int = option(0, "Seed for weights init and shuffling.")
    device: str = option("auto", "auto: CUDA when present, else CPU.", choices=DEVICES)
    compile: str = option("auto", "torch.compile: auto compiles on CUDA only.", choices=COMPILE)
    compile_mode: str | None = option(None, "torch.compile mode (reduce-overhead: CUDA graphs; default: the "
                                      "recipe's, else default).", "--compile-mode", choices=COMPILE_MODES)
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
    pretrained: bool = option(False, "Start a torchvision:NAME or timm:NAME network from the library's default "
                              "pretrained weights (its own loader and cache), the head re-initialised for the dataset's "
                              "classes, inputs normalized with the weights' mean and std.")
    weights: str | None = option(None, "Pretrained weights to start from (implies --pretrained): a torchvision weights "
                                 "name (IMAGENET1K_V1) or a timm tag (resnet10t.a1_in1k).")
    plots: bool = option(True, "Draw curves.png into the version (with run: every stage's plots).")
    max_val_loss: float | None = option(None, "Gate: commit nothing (exit 1) when the best epoch's validation loss "
                                        "is above this.", "--max-val-loss")
    dataset_stats: bool = option(False, "With --pretrained: normalize with the dataset's mean and std instead of the "
                                 "weights' own.", "--dataset-stats")
    eval_batch_size: int = 1000

    def resolved(self) -> TrainConfig:
        """A copy with every ``None`` filled (the named recipe, the network's, the base defaults); raises on
        unusable values."""
        from ..nets.registry import SMALL_NET_RECIPE, get_net
        from ..nets.sources import default_name, parse

        recipe = get_net(self.arch).recipe if parse(self.arch).kind == "registry" else SMALL_NET_RECIPE
        out = TrainConfig(**asdict(self))
        out.name = self.name or default_name(self.arch)
        if self.recipe is not None:
            check_choice(self.recipe, tuple(RECIPES), "--recipe")
        named = RECIPES.get(self.recipe or "", {})
        for key in RECIPE_FIELDS + tuple(BASE_DEFAULTS):
            if getattr(out, key) is None:
                setattr(out, key, named.get(key, recipe.get(key, BASE_DEFAULTS.get(key))))
        out.step_size = self.step_size or max(1, out.epochs // 3)
        out.validate()
        return out

    @property
    def starts_pretrained(self) -> bool:
        """Whether training starts from a library's published weights (``--pretrained`` or ``--weights``)."""
        return self.pretrained or self.weights is not None

    def validate(self) -> None:
        """Every usage error the config can hold, before any work; a field left None (the network's
        recipe fills it, see ``resolved``) is checked once resolved."""
        if self.name is not None:
            check_name(self.name, "model name")
        check_finite(self)
        check_seed(self.seed)
        unset = {k for k in RECIPE_FIELDS + tuple(BASE_DEFAULTS) if getattr(self, k) is None}
        checks = [
            ("epochs" in unset or 1 <= self.epochs <= MAX_EPOCHS,
             f"--epochs must be between 1 and {MAX_EPOCHS:,}, not {self.epochs}"),
            ("batch_size" in unset or self.batch_size >= 1, f"--batch-size must be at least 1, not {self.batch_size}"),
            (self.eval_batch_size >= 1, f"eval_batch_size must be at least 1, not {self.eval_batch_size}"),
            ("lr" in unset or self.lr > 0, f"--lr must be a positive number, not {self.lr}"),
            ("weight_decay" in unset or self.weight_decay >= 0, f"--weight-decay must be 0 or more, not {self.weight_decay}"),
            (0 <= self.warmup_epochs < (self.epochs or MAX_EPOCHS),
             f"--warmup-epochs must be in [0, epochs), not {self.warmup_epochs}"),
            ("label_smoothing" in unset or 0 <= self.label_smoothing < 1,
             f"--label-smoothing must be in [0, 1), not {self.label_smoothing}"),
            (self.grad_clip is None or self.grad_clip > 0, f"--grad-clip must be positive, not {self.grad_clip}"),
            (self.max_val_loss is None or self.max_val_loss > 0, f"--max-val-loss must be positive, not {self.max_val_loss}"),
            (self.patience is None or self.patience >= 1, f"--patience must be at least 1, not {self.patience}"),
            (self.workers >= 0, f"--workers must be 0 or more, not {self.workers}"),
            ("cutout" in unset or self.cutout >= 0, f"--cutout must be 0 or more, not {self.cutout}"),
            ("val_every" in unset or self.val_every >= 1, f"--val-every must be at least 1, not {self.val_every}"),
            ("checkpoint_every" in unset or self.checkpoint_every >= 1,
             f"--checkpoint-every must be at least 1, not {self.checkpoint_every}"),
            (not self.reset_head or self.init_from is not None,
             "--reset-head re-initialises what --init-from loaded: add --init-from"),
            (not (self.starts_pretrained and self.init_from), "--pretrained and --init-from both name starting weights: "
             "use one"),
            (not self.starts_pretrained or self.arch.startswith(("torchvision:", "timm:")),
             f"--pretrained and --weights take torchvision:NAME or timm:NAME, not --model {self.arch}"),
            (self.weights is None or self.weights.strip() != "", "--weights must name the weights (a torchvision "
             "weights name such as IMAGENET1K_V1, or a timm tag), not an empty string"),
            (not self.dataset_stats or self.starts_pretrained, "--dataset-stats chooses the normalization of "
             "--pretrained weights: add --pretrained"),
        ]
        for ok, message in checks:
            if not ok:
                raise CnnpipeError(message)
        for key, choices in TRAIN_CHOICES.items():
            if key not in unset:
                check_choice(getattr(self, key), choices, "--" + key.replace("_", "-"))


# What an option left unset is when neither the named recipe nor the network's has it.
BASE_DEFAULTS: dict[str, Any] = {
    "epochs": 8, "nesterov": False, "label_smoothing": 0.0, "cutout": 0, "compile_mode": "default",
    "val_every": 1, "checkpoint_every": 1,
}
RECIPE_FIELDS = ("batch_size", "optimizer", "lr", "weight_decay", "schedule")  # None: the network's recipe decides
TRAIN_CHOICES = {
    "optimizer": OPTIMIZERS, "schedule": SCHEDULES, "device": DEVICES, "compile": COMPILE,
    "compile_mode": COMPILE_MODES, "precision": PRECISIONS, "loader": LOADERS,
}
