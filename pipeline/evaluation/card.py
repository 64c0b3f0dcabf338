"""The model card: ``README.md`` generated from a model version's own artifacts.

It opens with Hugging Face model-card front matter (``model-index`` results), then
describes the network, its training, its evaluation with the plots beside it, its
limitations, and how to load each export format.
"""

from __future__ import annotations

import json
from typing import Any

from .. import __version__
from ..description import ModelDescription
from ..errors import printable
from ..formats import load_snippets

PLOTS = {
    "curves.png": "Training curves",
    "confusion.png": "Confusion matrix",
    "per_class.png": "Per-class scores",
    "misclassified.png": "Most confident mistakes",
}


PLOT_FILES = ("confusion.png", "per_class.png", "misclassified.png")  # an evaluation's plots
CARD_FILES = ("README.md", "metrics.json", "curves.png", *PLOT_FILES)  # the card and what it shows, in a bundle

def _q(value: Any) -> str:
    """A YAML scalar: JSON strings and numbers are valid YAML."""
    return json.dumps(value)


def _round(values: tuple[float, ...]) -> list[float]:
    return [round(v, 4) for v in values]


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def front_matter(desc: ModelDescription, metrics: dict[str, Any] | None, split: str, license: str | None = None) -> str:
    """Hugging Face model-card metadata: the license given, the dataset by its Hub id where one is
    known, and a ``model-index`` of the evaluation results (no metrics are declared without one)."""
    from ..data.catalog import CATALOG

    dataset = desc.dataset_ref.split("@")[0]
    spec = CATALOG.get(dataset)
    hub_id = spec.hub_id if spec is not None else None
    lines = [
        "---",
        *([f"license: {_q(license.lower())}"] if license else []),  # the Hub lists SPDX ids in lower case
        "library_name: cnnpipe",
        "pipeline_tag: image-classification",
        "tags: [image-classification, cnnpipe, pytorch, onnx, " + desc.arch + "]",
        *([f"datasets: [{_q(hub_id)}]"] if hub_id else []),
        *(["metrics: [accuracy, f1]"] if metrics is not None else []),
    ]
    if metrics is not None:
        results = [("accuracy", metrics["accuracy"], f"{split} accuracy"),
                   ("f1", metrics["macro"]["f1"], f"{split} macro F1")]
        if metrics["top5_accuracy"] is not None:
            results.append(("top_5_accuracy", metrics["top5_accuracy"], f"{split} top-5 accuracy"))
        lines += [
            "model-index:",
            f"- name: {_q(desc.name)}",
            "  results:",
            "  - task:",
            "      type: image-classification",
            "      name: Image Classification",
            "    dataset:",
            f"      name: {_q(desc.dataset_ref)}",
            f"      type: {_q(hub_id or dataset)}",
            f"      split: {split}",
            "    metrics:",
        ]
        for kind, value, name in results:
            lines += [f"    - type: {kind}", f"      value: {round(value, 6)}", f"      name: {_q(name)}"]
    return "\n".join(lines + ["---", ""])


def _load_snippets(desc: ModelDescription, formats: list[str] | None) -> str:
    inp = desc.input
    shape = f"(N, {inp.channels}, {inp.height}, {inp.width})"
    snippets = "\n\n".join(_complete(text, desc) for text in load_snippets(desc, formats))
    mode = "grayscale" if inp.channels == 1 else "RGB"
    return f"""Every format takes float32 `{shape}` batches (NCHW) made as
`x = (pixel / 255 - mean) / std` per channel, with mean {_round(inp.mean)} and std {_round(inp.std)},
and returns one logit per class in the order of `classes` in `model.json`
(`model.json` holds mean and std at full precision). Each snippet below runs as written in the
bundle's folder: it reads `image.png`, decodes it as cnnpipe does (upright by its EXIF
orientation, {mode}, resized to {inp.width}x{inp.height} with Pillow's bilinear filter), runs the
model and prints the top class; it needs numpy, Pillow and the format's runtime, not cnnpipe
(the safetensors one builds the network with its own library{"" if desc.source else ", here cnnpipe's registry"}).

{snippets}

Image files straight from the bundle: `cnnpipe predict IMAGE... --bundle BUNDLE`, or cnnpipe's
`examples/onnx_predict.py`, which needs only onnxruntime, numpy and Pillow.
"""


def image_code(desc: ModelDescription) -> str:
    """Python lines that read ``image.png`` into the batch ``x`` exactly as cnnpipe feeds the network."""
    inp = desc.input
    mode = "L" if inp.channels == 1 else "RGB"
    return "\n".join([
        "import numpy as np",
        "from PIL import Image, ImageOps",
        f"classes = {json.dumps(list(desc.classes))}",
        f"mean = np.array({json.dumps(list(inp.mean))}, dtype=np.float32).reshape(1, -1, 1, 1)",
        f"std = np.array({json.dumps(list(inp.std))}, dtype=np.float32).reshape(1, -1, 1, 1)",
        'with Image.open("image.png") as img:',
        f'    img = ImageOps.exif_transpose(img).convert("{mode}")',
        f"    if img.size != ({inp.width}, {inp.height}):",
        f"        img = img.resize(({inp.width}, {inp.height}), Image.Resampling.BILINEAR)",
        "    pixels = np.asarray(img, dtype=np.uint8)",
        f"x = (pixels.reshape(1, {inp.height}, {inp.width}, {inp.channels}).transpose(0, 3, 1, 2).astype(np.float32)"
        " / np.float32(255.0) - mean) / std",
    ])


def _complete(text: str, desc: ModelDescription) -> str:
    """A format's snippet as a whole program: the image's decoding first, the top class printed last."""
    start = text.index("```python\n") + len("```python\n")
    end = text.index("\n```", start)
    code = f"{image_code(desc)}\n{text[start:end]}\nprint(classes[int(logits.argmax())])"
    return text[:start] + code + text[end:]


def _origin(source: dict[str, Any]) -> str:
    """Where a network outside the registry comes from, for the card."""
    what = {"torchvision": "torchvision", "timm": "timm", "file": "the user's file", "module": "the module"}[source["kind"]]
    parts = [f"{what} `{source['name']}`"]
    if source.get("factory"):
        parts.append(f"factory `{source['factory']}`")
    if source.get("distribution"):
        parts.append(source["distribution"])
    if source.get("sha256"):
        parts.append(f"code sha256 `{source['sha256'][:16]}…`")
    return ", ".join(parts)


def _bundle_files(bundle: dict[str, Any]) -> list[str]:
    """What each model file of a bundle is: its format, runtime and, for a variant, how it was derived."""
    from ..formats import FORMATS

    rows = ["## Files in this bundle", "", "| file | format | runs in | made |", "| --- | --- | --- | --- |"]
    for fmt in bundle["formats"]:
        spec, variant = FORMATS[fmt], bundle.get("variants", {}).get(fmt)
        made = "exported"
        if spec.parent:
            made = f"from `{FORMATS[spec.parent].file}`: " + md_text(json.dumps(variant, sort_keys=True))
        rows.append(f"| `{' + '.join(spec.files)}` | {fmt} | {md_text(spec.runtime)} | {made} |")
    for rel in bundle.get("triton", []):
        rows.append(f"| `{rel}` | Triton model repository | Triton Inference Server (onnxruntime backend) | "
                    "a copy of `model.onnx` and its config |")
    return [*rows, ""]


def _quantization(reports: dict[str, Any]) -> list[str]:
    """What the int8 ladder chose (or why it wrote nothing), with the drop and its 95% bound."""
    rows = ["## Quantization", ""]
    for fmt, r in reports.items():
        tried = ", ".join(f"{t['rung']} ({t['drop']['point']:+.2f}, bound {t['drop']['high']:.2f})"
                          for t in r.get("tried", []) if "drop" in t)
        if r.get("chosen") and r.get("certified"):
            t, kept = r["test"], ", ".join(f"`{md_text(n)}`" for n in r["float_nodes"]) or "none"
            rows.append(f"- {fmt}: recipe **{md_text(r['chosen'])}**, calibrated on {r['calibration_images']} training "
                        f"images (sha256 `{r['calibration_sha256'][:16]}…`); layers kept in float: {kept}. On the test "
                        f"split: accuracy {t['accuracy']:.4f} against fp32's {t['fp32_accuracy']:.4f}, a drop of "
                        f"{t['point']:.2f} points (95% interval {t['low']:.2f} to {t['high']:.2f}; limit "
                        f"{r['limit_points']:g}, judged on its {r['gate_on']}).")
        elif r.get("chosen"):
            rows.append(f"- {fmt}: not shipped: recipe {md_text(r['chosen'])} kept the accuracy within "
                        f"{r['limit_points']:g} points on the validation split but not on the test split (drop "
                        f"{r['test']['point']:.2f} points, 95% bound {r['test']['high']:.2f}).")
        else:
            rows.append(f"- {fmt}: not shipped: no recipe kept the accuracy within {r['limit_points']:g} points.")
        rows.append(f"  Recipes tried on the validation split (drop in points, 95% bound): {tried}.")
    return [*rows, ""]


def md_text(text: str) -> str:
    """``text`` safe inside a Markdown table cell or sentence: control characters shown escaped
    (a newline would end the row), ``|`` and Markdown's punctuation escaped."""
    return "".join("\\" + c if c in "\\`*_[]<>|#" else c for c in printable(text))


def _model_and_training(ref: str, desc: ModelDescription, train: dict[str, Any]) -> list[str]:
    from ..nets.registry import get_net  # imports torch: a card is written by export and made again by verify's reference worker

    origin = get_net(desc.arch).source if desc.source is None else _origin(desc.source)
    inp = desc.input
    classes = desc.classes
    return [
        f"# {ref}",
        "",
        f"A `{desc.arch}` image classifier for {len(classes)} classes, trained and packaged by "
        f"cnnpipe {__version__} on the dataset `{desc.dataset_ref}`.",
        "",
        "## Model",
        "",
        "| | |",
        "| --- | --- |",
        f"| architecture | `{desc.arch}`, from: {origin} |",
        f"| parameters | {desc.params:,} |",
        f"| input | {inp.channels}x{inp.height}x{inp.width} {inp.layout} float32, "
        f"pixels in [0, 1] normalized with mean {_round(inp.mean)} and std {_round(inp.std)} |",
        f"| classes | {', '.join(map(md_text, classes))} |",
    ] + _weights_row(desc.weights) + [""] + _training(desc, train)


def _weights_row(weights: dict[str, Any] | None) -> list[str]:
    """The card's row naming the published weights training started from (``--pretrained``)."""
    if not weights:
        return []
    def code(key: str) -> str:  # a code span shows its text as is: only a backtick, a bar or a control character could break it
        return "`" + "".join(c for c in str(weights.get(key, "")) if c.isprintable() and c not in "`|") + "`"

    return [f"| started from | {code('library')} weights {code('name')} (file {code('file')}, sha256 {code('sha256')}), "
            "head re-initialised for these classes |"]


def _training(desc: ModelDescription, train: dict[str, Any]) -> list[str]:
    if "imported_from" in train:  # weights trained elsewhere
        source = train["imported_from"]
        return ["## Training", "", f"Not trained by cnnpipe: the weights were imported from `{source['file']}` "
                f"(sha256 `{source['sha256']}`) for the dataset `{desc.dataset_ref}`.", ""]
    cfg = train["config"]
    return [
        "## Training",
        "",
        "| | |",
        "| --- | --- |",
        f"| dataset | `{desc.dataset_ref}`, hash `{desc.dataset_hash}` |",
        f"| optimizer | {cfg['optimizer']}, lr {cfg['lr']:g}, weight decay {cfg['weight_decay']:g}, "
        f"schedule {cfg['schedule']}, batch {cfg['batch_size']} |",
        f"| epochs | {train['epochs_run']} run, best on validation: {train['best_epoch']}"
        f"{' (stopped early)' if train['stopped_early'] else ''} |",
        f"| augmentation | {json.dumps(cfg['augmentation']) if cfg['augmentation'] else 'none'} |",
        f"| seed | {cfg['seed']} ({'deterministic' if cfg['deterministic'] else 'not deterministic'}) |",
        f"| device | {cfg['device']}, {cfg['precision']}{', compiled' if cfg['compiled'] else ''} |",
        "",
    ] + [f"**Warning:** {md_text(w)}." for w in train.get("warnings", [])] + ([""] if train.get("warnings") else [])


def _interval(bounds: Any) -> str:
    if isinstance(bounds, list) and len(bounds) == 2 and all(isinstance(b, (int, float)) for b in bounds):
        return f"{_fmt(bounds[0])} – {_fmt(bounds[1])}"
    return "n/a"


def _evaluation(metrics: dict[str, Any], split: str, plots: list[str]) -> list[str]:
    lines = [
        f"## Evaluation ({split} split, {metrics['images']:,} images)",
        "",
        "| metric | value |",
        "| --- | ---: |",
        f"| accuracy | {_fmt(metrics['accuracy'])} |",
        f"| accuracy, 95% interval (Wilson) | {_interval(metrics.get('accuracy_interval'))} |",
        f"| top-5 accuracy | {_fmt(metrics['top5_accuracy'])} |",
        f"| macro precision / recall / F1 | {_fmt(metrics['macro']['precision'])} / "
        f"{_fmt(metrics['macro']['recall'])} / {_fmt(metrics['macro']['f1'])} |",
        f"| weighted F1 | {_fmt(metrics['weighted']['f1'])} |",
        f"| mean cross-entropy | {_fmt(metrics['loss'])} |",
        f"| expected calibration error (15 bins) | {_fmt(metrics['ece'])} |",
        "",
        "Per class, worst accuracy first:",
        "",
        "| class | support | accuracy | 95% interval | precision | recall | F1 |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    lines += [
        f"| {md_text(c['class'])} | {c['support']} | {_fmt(c['accuracy'])} | {_interval(c.get('accuracy_interval'))} | "
        f"{_fmt(c['precision'])} | "
        f"{_fmt(c['recall'])} | {_fmt(c['f1'])} |"
        for c in sorted(metrics["per_class"], key=lambda c: (c["accuracy"] is None, c["accuracy"] or 0.0))
    ]
    lines.append("")
    return lines + [f"![{PLOTS[p]}]({p})\n" for p in PLOTS if p in plots]


def _limitations(desc: ModelDescription, metrics: dict[str, Any], split: str) -> list[str]:
    inp, classes = desc.input, desc.classes
    worst = sorted((c for c in metrics["per_class"] if c["support"]), key=lambda c: c["accuracy"])
    return [
        "## Limitations",
        "",
        f"- These figures hold for the {split} split of `{desc.dataset_ref}` only "
        f"({metrics['images']:,} images). Images from another source, camera or resolution may score lower.",
        f"- The weakest class is {md_text(worst[0]['class'])} at {worst[0]['accuracy']:.2%} accuracy."
        if worst else "- No class had test images.",
        f"- The model always answers one of its {len(classes)} classes, even for an image that "
        "belongs to none of them.",
        f"- Its confidences are off by {metrics['ece']:.2%} on average (ECE); do not read them as "
        "probabilities without checking calibration.",
        f"- Inputs must be resized to {inp.height}x{inp.width} with {inp.channels} channel(s), "
        "as the training images were.",
        "",
    ]


def model_card(
    ref: str,
    desc: ModelDescription,
    train: dict[str, Any],
    metrics: dict[str, Any] | None,
    split: str,
    plots: list[str],
    bundle: dict[str, Any] | None = None,
    license: str | None = None,
) -> str:
    """The card of model version ``ref``; ``plots`` are the image files beside it; ``bundle`` (an
    export's ``model.json`` records: formats, files, variants, Triton files) adds a table of its files."""
    lines = [front_matter(desc, metrics, split, license), *_model_and_training(ref, desc, train)]
    if bundle is not None:
        lines += _bundle_files(bundle) + (_quantization(bundle["quantization"]) if bundle.get("quantization") else [])
    if metrics is None:
        lines += ["## Evaluation", "", "Not evaluated yet: evaluate the model to fill this in.", ""]
    else:
        lines += _evaluation(metrics, split, plots) + _limitations(desc, metrics, split)
    lines += ["## How to load each export", "", _load_snippets(desc, bundle["formats"] if bundle else None)]
    return "\n".join(lines)
