"""Image folders: mixed sizes and modes, a corrupt file, both layouts, and training on them."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import SHARED, assert_clean_error, cnnpipe, cnnpipe_here, cnnpipe_json

MODES = ["L", "RGB", "RGBA", "P"]


def _make_folder(folder: Path, classes: tuple[str, ...] = ("cat", "dog", "fox"), per_class: int = 12) -> None:
    rng = np.random.default_rng(0)
    for c, name in enumerate(classes):
        (folder / name).mkdir(parents=True)
        for i in range(per_class):
            size = (int(rng.integers(12, 80)), int(rng.integers(12, 80)))
            noise = rng.integers(0, 20, (size[1], size[0], 3), dtype=np.uint8)
            rgb = np.full((size[1], size[0], 3), 60 * c + 20, np.uint8) + noise
            img = Image.fromarray(rgb).convert(MODES[i % 4])
            img.save(folder / name / f"{i:03d}.{['png', 'jpg', 'bmp', 'webp'][i % 4] if MODES[i % 4] in ('L', 'RGB') else 'png'}")


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "pets"
    _make_folder(root)
    (root / "dog" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    (root / "dog" / "notes.txt").write_text("not an image extension: ignored")
    return root


def test_a_corrupt_image_fails_the_import_by_path_and_writes_nothing(folder: Path, tmp_path: Path):
    root = tmp_path / "store"
    root.mkdir()
    proc = cnnpipe(root, "download", "imagefolder", str(folder), "--name", "pets")
    assert_clean_error(proc, 2, "1 unreadable image(s)", "broken.jpg", "--skip-bad")
    assert not (root / "data" / "pets").exists() or not list((root / "data" / "pets").glob("v*"))


def test_skip_bad_imports_every_mode_and_size_then_trains(folder: Path, tmp_path: Path):
    root = tmp_path / "store"
    root.mkdir()
    result = cnnpipe_json(root, "download", "imagefolder", str(folder), "--name", "pets", "--skip-bad", "--size", "24")
    assert len(result["skipped"]) == 1 and "broken.jpg" in result["skipped"][0]
    assert {k: sum(v.values()) for k, v in result["counts"].items()} == {"train": 25, "val": 4, "test": 7}
    version = root / "data/pets/v1"
    info = json.loads((version / "dataset.json").read_text())
    assert info["classes"] == ["cat", "dog", "fox"] and (info["channels"], info["height"]) == (3, 24)
    assert info["source"]["layout"] == "class folders"
    images = np.load(version / "splits/train-images.npy")
    assert images.shape == (25, 3, 24, 24) and images.dtype == np.uint8
    labels = np.load(version / "splits/train-labels.npy")
    for c in range(3):  # each class was drawn around its own grey level: decoding kept it
        assert abs(images[labels == c].mean() - (60 * c + 29)) < 6
    inventory = json.loads((version / "sources.json").read_text())["sha256_by_split"]["all"]
    assert len(inventory) == 36 and all(len(sha) == 64 for sha in inventory.values())

    trained = cnnpipe_json(root, "train", "--dataset", "pets", "--epochs", "1", "--batch-size", "8")
    assert trained["ref"] == "lenet5@v1"
    manifest = json.loads((root / "models/lenet5/v1/manifest.json").read_text())
    assert manifest["lineage"]["dataset_hash"] == result["dataset_hash"]
    assert json.loads((root / "models/lenet5/v1/model.json").read_text())["input"]["channels"] == 3


def test_train_and_test_subfolders_are_kept_and_val_is_held_out_of_train(tmp_path: Path):
    src = tmp_path / "split"
    _make_folder(src / "train", per_class=10)
    _make_folder(src / "test", per_class=4)
    root = tmp_path / "store"
    root.mkdir()
    result = cnnpipe_json(root, "download", "imagefolder", str(src), "--name", "gray", "--channels", "1", "--size", "16")
    assert {k: sum(v.values()) for k, v in result["counts"].items()} == {"train": 27, "val": 3, "test": 12}
    assert np.load(root / "data/gray/v1/splits/test-images.npy").shape == (12, 1, 16, 16)


@pytest.mark.parametrize(("layout", "args", "sizes", "came"), [
    (("train", "val"), (), {"train": 30, "val": 12, "test": 8}, {"val": "val/", "test": "held out of train/ (8 images"}),
    (("train", "val"), ("--test-from", "val"), {"train": 34, "val": 4, "test": 12},
     {"test": "val/", "val": "held out of train/ (4 images"}),
    (("train", "valid", "test"), (), {"train": 38, "val": 12, "test": 12}, {"train": "train/", "val": "valid/", "test": "test/"}),
])
def test_the_layouts_people_have_import_and_say_where_each_split_came_from(tmp_path: Path, layout, args, sizes, came):
    """The transfer-learning tutorial's train/ + val/, and a labeling tool's train/ + valid/ + test/;
    .gif and .tif files are images too, and a file of another kind is listed, never dropped silently."""
    src = tmp_path / "photos"
    for part in layout:
        _make_folder(src / part, per_class=12 if part == "train" else 4)
    Image.new("RGB", (9, 9), "red").save(src / "train" / "cat" / "extra.gif")
    Image.new("RGB", (9, 9), "red").save(src / "train" / "dog" / "extra.tif")
    (src / "train" / "cat" / "notes.txt").write_text("not an image")
    proc = cnnpipe(tmp_path, "download", "imagefolder", str(src), "--name", "photos", "--no-plots", *args)
    assert proc.returncode == 0, proc.stderr
    for part, words in came.items():
        assert f"  {part}: {words}" in proc.stdout, proc.stdout
    assert "ignored train/cat/notes.txt: not an image extension" in proc.stdout
    split = json.loads((tmp_path / "data/photos/v1/split.json").read_text())
    assert split["sizes"] == sizes and all(split["from"][k].startswith(v) for k, v in came.items())


def test_test_from_val_needs_a_val_folder_and_no_test_folder(tmp_path: Path):
    src = tmp_path / "photos"
    _make_folder(src / "train", per_class=6)
    _make_folder(src / "test", per_class=2)
    proc = cnnpipe_here(tmp_path, "download", "imagefolder", str(src), "--name", "p", "--test-from", "val")
    assert_clean_error(proc, 2, "--test-from val: the folder has its own test/")


CIFAR_JPEG = SHARED / "cifar10-jpeg.tar.gz"


TRAIN_PER_CLASS, TEST_PER_CLASS = 20, 8  # a slice: the whole folder's import is benchmarks/cifar10_jpeg.py


@pytest.mark.skipif(not CIFAR_JPEG.is_file(), reason="../shared/datasets/cifar10-jpeg.tar.gz is not here")
def test_a_slice_of_the_cifar10_jpeg_folder_imports_as_its_splits_and_trains(tmp_path: Path):
    """The real pre-split folder (train/ and test/, ten classes of JPEGs), the first images of each class."""
    keep = {"train": TRAIN_PER_CLASS, "test": TEST_PER_CLASS}
    with tarfile.open(CIFAR_JPEG) as tar:
        for member in tar:
            parts = member.name.split("/")  # cifar10-jpeg/SPLIT/CLASS/NNNN.jpg
            if member.isfile() and len(parts) == 4 and int(Path(parts[3]).stem) < keep[parts[1]]:
                tar.extract(member, tmp_path / "src", filter="data")
    root = tmp_path / "store"
    root.mkdir()
    result = cnnpipe_json(root, "download", "imagefolder", str(tmp_path / "src/cifar10-jpeg"), "--name", "cifar10-jpeg")
    counts = {k: sum(v.values()) for k, v in result["counts"].items()}
    assert counts["test"] == 10 * TEST_PER_CLASS and counts["train"] + counts["val"] == 10 * TRAIN_PER_CLASS
    assert counts["val"] > 0 and result["counts"]["test"]["airplane"] == TEST_PER_CLASS  # val carved from train/
    assert sorted(result["counts"]["test"]) == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                                                "horse", "ship", "truck"]
    trained = cnnpipe_json(root, "train", "--dataset", "cifar10-jpeg", "--epochs", "1", "--batch-size", "32")
    assert trained["ref"] == "lenet5@v1" and 0.0 <= trained["val_accuracy"] <= 1.0


def _png_with_chunk(image: Image.Image, kind: bytes, payload: bytes) -> bytes:
    import io
    import struct
    import zlib

    buf = io.BytesIO()
    image.save(buf, "PNG")
    data = buf.getvalue()
    at = data.find(b"IDAT") - 4
    chunk = struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)
    return data[:at] + chunk + data[at:]


def test_wide_rotated_corrupt_and_huge_images_are_decoded_one_way(tmp_path: Path):
    import importlib.util

    from cnnpipe.data.imagefolder import load_image

    folder = tmp_path / "imgs"
    for name in ("turned", "wide"):
        (folder / name).mkdir(parents=True)
    half = np.zeros((16, 16), np.uint8)
    half[:, :8] = 255  # white left half, as stored
    exif = Image.Exif()
    exif[0x0112] = 3  # orientation: rotated 180 degrees, so upright the white half is on the right
    for i in range(6):
        Image.fromarray(half).save(folder / "turned" / f"{i}.png", exif=exif)
        Image.fromarray(np.full((16, 16), 30000, np.uint16)).save(folder / "wide" / f"{i}.png")  # 16-bit grey
    (folder / "wide" / "exif.png").write_bytes(_png_with_chunk(Image.fromarray(half), b"eXIf", b"garbage!"))
    Image.new("L", (8000, 8000)).save(folder / "wide" / "huge.png")  # 64 megapixels

    proc = cnnpipe(tmp_path, "download", "imagefolder", str(folder), "--name", "imgs", "--size", "16", "--channels", "1",
                   "--skip-bad", "--no-plots", "--json")
    assert proc.returncode == 0, proc.stderr
    assert "Warning" not in proc.stderr and "Traceback" not in proc.stderr
    skipped = json.loads(proc.stdout)["skipped"]
    assert any("exif.png: SyntaxError" in s for s in skipped)  # the EXIF parser's error is a bad image like any other
    assert any("huge.png" in s and "over the limit of 50,000,000 pixels" in s for s in skipped)
    version = tmp_path / "data/imgs/v1/splits"
    images = np.concatenate([np.load(version / f"{p}-images.npy") for p in ("train", "val", "test")])
    labels = np.concatenate([np.load(version / f"{p}-labels.npy") for p in ("train", "val", "test")])
    assert abs(float(images[labels == 1].mean()) - 30000 / 257) < 1  # scaled, not clipped at 255
    upright = images[labels == 0][:, 0]
    assert upright[:, :, 8:].mean() > 250 and upright[:, :, :8].mean() < 5  # EXIF orientation applied

    spec = importlib.util.spec_from_file_location("onnx_predict", Path(__file__).parents[1] / "examples/onnx_predict.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    for path in (folder / "turned" / "0.png", folder / "wide" / "0.png"):  # predict decodes with load_image too
        assert np.array_equal(example.load(path, 1, 16), load_image(path, 16, 1))


def test_partial_layouts_empty_classes_and_symlinks_out_are_refused(tmp_path: Path):
    def folder(name: str, layout: dict[str, int]) -> Path:
        for rel, count in layout.items():
            (tmp_path / name / rel).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(tmp_path / name / rel / f"{i}.png")
        return tmp_path / name

    cases = [
        (folder("twoval", {"train/a": 4, "val/a": 2, "valid/a": 2}), "both val/ and valid/ hold the val split"),
        (folder("onlytrain", {"train/a": 4, "train/b": 4}), "holds train/; a pre-split folder needs"),
        (folder("mixed", {"train/a": 4, "test/a": 2, "cat": 3}), "beside class folders ['cat']"),
        (folder("empty", {"a": 4, "b": 0}), "an empty class folder"),
    ]
    outside = folder("elsewhere", {"b": 3})
    link = folder("linked", {"a": 4})
    (link / "b").symlink_to(outside / "b")
    cases.append((link, "a symbolic link to a folder outside"))
    single = folder("filelink", {"a": 4, "b": 3})
    (single / "b" / "stray.png").symlink_to(outside / "b" / "0.png")
    cases.append((single, f"{single / 'b' / 'stray.png'}: a symbolic link to outside"))
    nested = folder("nested", {"a": 4, "b": 3})
    (nested / "b" / "more").symlink_to(outside / "b")  # a link to a folder, inside a class folder: named itself
    cases.append((nested, f"{nested / 'b' / 'more'}: a symbolic link to outside"))
    for path, message in cases:
        assert_clean_error(cnnpipe_here(tmp_path, "download", "imagefolder", str(path), "--name", path.name), 2, message)
    assert not (tmp_path / "data").exists()  # nothing was imported
    followed = cnnpipe_json(tmp_path, "download", "imagefolder", str(link), "--name", "linked", "--follow-symlinks",
                            "--no-plots")
    assert sum(followed["counts"]["train"].values()) + sum(followed["counts"]["test"].values()) >= 6


def test_plots_of_many_classes_stay_bounded_and_every_stage_draws_none_on_request(tmp_path: Path):
    """120 classes: each plot shows at most 40 of them (so its size is bounded); train and evaluate take
    --no-plots, and a bundle exported from an evaluation without plots still verifies."""
    from cnnpipe.evaluation.plots import MAX_CLASSES

    folder = tmp_path / "many"
    rng = np.random.default_rng(0)
    for c in range(120):
        (folder / f"class{c:03d}").mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(folder / f"class{c:03d}" / f"{i}.png")
    root = tmp_path / "store"
    root.mkdir()
    cnnpipe_json(root, "download", "imagefolder", str(folder), "--name", "many", "--size", "8", "--val-fraction", "0.25",
                 "--test-fraction", "0.25")
    version = root / "data/many/v1"
    for plot, limit in (("samples.png", (900, 3200)), ("classes.png", (2400, 600))):
        with Image.open(version / plot) as img:
            assert img.width <= limit[0] and img.height <= limit[1], (plot, img.size)
    train = cnnpipe_json(root, "train", "--dataset", "many", "--model", "fc2", "--epochs", "1", "--no-plots")
    assert not (Path(train["path"]) / "curves.png").exists()
    drawn = cnnpipe_json(root, "evaluate", "fc2")
    with Image.open(Path(drawn["path"]) / "confusion.png") as img:
        assert max(img.size) <= 1400, img.size  # 40 of 120 classes
    bare = cnnpipe_json(root, "evaluate", "fc2", "--no-plots")
    assert not list(Path(bare["path"]).glob("*.png")) and "](confusion.png)" not in (Path(bare["path"]) / "README.md").read_text()
    assert MAX_CLASSES < 120
    assert cnnpipe(root, "export", "fc2", "--format", "onnx").returncode == 0
    verified = cnnpipe(root, "verify", "fc2", "--samples", "8", "--batch-sizes", "1,8")
    assert verified.returncode == 0, verified.stderr
