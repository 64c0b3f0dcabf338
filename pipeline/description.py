"""The model description (``model.json``): what a consumer needs to rebuild a network and feed it.

On disk it stays plain JSON; in code it is a frozen record, read once and checked, so a
malformed or hostile ``model.json`` is one clear error instead of a ``KeyError`` later.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import CnnpipeError

if TYPE_CHECKING:
    from .store.version import Version

MODEL_JSON = "model.json"

NORMALIZE = "x = (pixel / 255 - mean) / std, per channel"


@dataclass(frozen=True)
class InputSpec:
    """The input a network takes: float32 NCHW, pixels scaled to [0, 1] then normalized per channel."""

    channels: int
    height: int
    width: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    layout: str = "NCHW"
    dtype: str = "float32"
    pixel_range: tuple[float, float] = (0.0, 1.0)
    normalize: str = NORMALIZE

    @property
    def shape(self) -> list[int]:
        """``[channels, height, width]``."""
        return [self.channels, self.height, self.width]

    def to_json(self) -> dict[str, Any]:
        return {
            "layout": self.layout, "channels": self.channels, "height": self.height, "width": self.width,
            "dtype": self.dtype, "pixel_range": list(self.pixel_range), "mean": list(self.mean), "std": list(self.std),
            "normalize": self.normalize,
        }


@dataclass(frozen=True)
class ModelDescription:
    """A trained network: architecture, store name, parameter count, classes, input and dataset."""

    arch: str
    name: str
    params: int
    classes: tuple[str, ...]
    input: InputSpec
    dataset_ref: str
    dataset_hash: str
    source: dict[str, Any] | None = None  # where the code of a network outside the registry comes from
    weights: dict[str, Any] | None = None  # the published weights training started from (--pretrained)

    def to_json(self) -> dict[str, Any]:
        """The ``model.json`` layout."""
        return {
            "arch": self.arch, "name": self.name, "params": self.params, "classes": list(self.classes),
            "input": self.input.to_json(), "dataset": {"ref": self.dataset_ref, "hash": self.dataset_hash},
        } | ({"source": self.source} if self.source else {}) | ({"weights": self.weights} if self.weights else {})

    @classmethod
    def from_json(cls, data: Any, where: str = "model.json") -> ModelDescription:
        """The description in ``data`` (parsed ``model.json``; extra keys are ignored); a usage error if malformed."""
        try:
            if not _names(data["classes"]):
                raise TypeError("'classes' is not a list of names")
            for key in ("input", "dataset"):
                if not isinstance(data[key], dict):
                    raise TypeError(f"{key!r} is not an object")
            inp = data["input"]
            spec = InputSpec(
                channels=int(inp["channels"]), height=int(inp["height"]), width=int(inp["width"]),
                mean=tuple(float(m) for m in inp["mean"]), std=tuple(float(s) for s in inp["std"]),
                layout=str(inp.get("layout", "NCHW")), dtype=str(inp.get("dtype", "float32")),
                pixel_range=tuple(float(p) for p in inp.get("pixel_range", (0.0, 1.0))),  # type: ignore[arg-type]
                normalize=str(inp.get("normalize", NORMALIZE)),
            )
            desc = cls(
                arch=str(data["arch"]), name=str(data["name"]), params=int(data["params"]),
                classes=tuple(str(c) for c in data["classes"]), input=spec,
                dataset_ref=str(data["dataset"]["ref"]), dataset_hash=str(data["dataset"]["hash"]),
                source=dict(data["source"]) if data.get("source") else None,
                weights=dict(data["weights"]) if data.get("weights") else None,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise CnnpipeError(f"{where}: not a cnnpipe model description ({type(e).__name__}: {e})") from None
        if min(spec.channels, spec.height, spec.width) < 1 or not len(spec.mean) == len(spec.std) == spec.channels:
            raise CnnpipeError(f"{where}: its input shape and normalization do not agree")
        return desc


def _names(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _table_of(kind: type) -> Callable[[Any], bool]:
    return lambda value: isinstance(value, dict) and all(isinstance(v, kind) for v in value.values())


# The fields of an export's model.json beyond the description that stages read, with the shape each must have.
BUNDLE_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "formats": (_names, "a list of format names"),
    "files": (_table_of(str), "a table of file names by format"),
    "metadata": (_table_of(str), "a table of strings"),
    "variants": (_table_of(dict), "a table of records by format"),
    "quantization": (_table_of(dict), "a table of the int8 ladder's reports by format"),
    "triton": (lambda v: _names(v) and len(v) in (0, 2), "an empty list or [config, model] file names"),
    "onnx_opset": (lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool)), "an integer"),
}


def bundle_problem(data: Any) -> str | None:
    """What is wrong with the shape of an export's ``model.json`` (None: nothing), naming the field, never
    quoting it; the description's own fields are ``ModelDescription.from_json``'s to check."""
    if not isinstance(data, dict):
        return f"a JSON {type(data).__name__}, not an object"
    for key, (fits, shape) in BUNDLE_FIELDS.items():
        if key in data and not fits(data[key]):
            return f"{key!r} is not {shape}"
    return None


def read_bundle_json(version: Version) -> dict[str, Any]:
    """An export's ``model.json`` whose fields have the shapes stages read; a usage error naming the first that
    does not."""
    data = version.read_json(MODEL_JSON)
    problem = bundle_problem(data)
    if problem is not None:
        raise CnnpipeError(f"{version.ref}: {MODEL_JSON}: {problem}; the bundle is damaged: export it again")
    return data


def read_description(version: Version) -> ModelDescription:
    """A version's ``model.json`` as a checked record."""
    return ModelDescription.from_json(version.read_json(MODEL_JSON), f"{version.ref}: {MODEL_JSON}")
