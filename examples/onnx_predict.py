"""Classify images with a cnnpipe bundle's model.onnx using only onnxruntime, numpy and Pillow.

Everything it needs comes from the metadata embedded in the ONNX file: class names,
input shape, mean and std, and the input name. No torch, no cnnpipe.

    pip install onnxruntime numpy pillow
    python onnx_predict.py exports/lenet5/v1/model.onnx digit.png [more.png ...]

Prints one JSON line per image: {"path", "class", "probability", "probabilities"}.
"""

import json
import sys

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps


def to_8bit(img):
    """16-bit and 32-bit integer images scaled to 8 bits (65535 -> 255); float images from [0, 1]
    (or [0, max] above 1): as cnnpipe does, where Pillow's convert would clip at 255."""
    arr = np.asarray(img)
    if img.mode == "F":
        top = float(np.nanmax(arr)) if arr.size else 1.0
        scaled = np.nan_to_num(arr, nan=0.0) * (255.0 / max(top, 1.0) if top > 1.0 else 255.0)
    else:
        scaled = arr.astype(np.float64) / 257.0
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), "L")


def load(path, channels, size):
    """Decode to uint8 C x size x size as cnnpipe imports images: upright by EXIF orientation,
    wide (16-bit, float) images scaled, grayscale or RGB, bilinear resize."""
    with Image.open(path) as img:
        img.load()
        img = ImageOps.exif_transpose(img)
        if img.mode == "P" and "transparency" in img.info:
            img = img.convert("RGBA")
        if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
            img = to_8bit(img)
        img = img.convert("L" if channels == 1 else "RGB")
        if img.size != (size, size):
            img = img.resize((size, size), Image.Resampling.BILINEAR)
        arr = np.asarray(img, dtype=np.uint8)
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1)


def main(model_path, image_paths):
    session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    channels, height, _ = json.loads(meta["input_shape"])
    classes = json.loads(meta["classes"])
    mean = np.asarray(json.loads(meta["mean"]), dtype=np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(json.loads(meta["std"]), dtype=np.float32).reshape(1, -1, 1, 1)
    batch = np.stack([load(p, channels, height) for p in image_paths])
    x = (batch.astype(np.float32) / np.float32(255.0) - mean) / std
    logits = session.run(None, {meta["input_name"]: x})[0]
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    for path, p in zip(image_paths, probs):
        best = int(p.argmax())
        print(json.dumps({"path": path, "class": classes[best], "probability": float(p[best]),
                          "probabilities": [float(v) for v in p]}))


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2:])
