"""Writers of tiny datasets in the real on-disk formats, for loader tests.

Each image carries its own identity in its pixels so a test can tell which source row a
loaded row came from: CIFAR rows store their index in pixels (0, 0, 0..2) (lossless pickles);
PNG folders store it likewise; JPEG images are flat colours per class (JPEG is lossy).
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from PIL import Image

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                 "ship", "truck"]


def stamp(x: np.ndarray, start: int = 0) -> np.ndarray:
    """Write each row's index (start + i) into channel 0, row 0, columns 0..2 (base 256)."""
    for i in range(len(x)):
        v = start + i
        x[i, 0, 0, :3] = (v // 65536, (v // 256) % 256, v % 256)
    return x


def read_stamp(x: np.ndarray) -> np.ndarray:
    px = x[:, 0, 0, :3].astype(np.int64)
    return px[:, 0] * 65536 + px[:, 1] * 256 + px[:, 2]


def _dump(path: Path, obj) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)   # the originals are Python 2 pickles


def write_cifar10(root: Path, per_batch: int = 20, n_test: int = 30, seed: int = 0) -> dict:
    """root/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}.

    Returns the arrays as written: x_train [5*per_batch, 3, 32, 32] (stamped 0..), y_train,
    x_test (stamped 0..), y_test."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    x_train = stamp(rng.integers(0, 256, (5 * per_batch, 3, 32, 32), dtype=np.uint8))
    y_train = rng.integers(0, 10, 5 * per_batch)
    x_test = stamp(rng.integers(0, 256, (n_test, 3, 32, 32), dtype=np.uint8))
    y_test = rng.integers(0, 10, n_test)
    for b in range(5):
        sl = slice(b * per_batch, (b + 1) * per_batch)
        _dump(folder / f"data_batch_{b + 1}",
              {"batch_label": f"training batch {b + 1} of 5",
               "labels": [int(v) for v in y_train[sl]],
               "data": x_train[sl].reshape(per_batch, -1),
               "filenames": [f"img_{i}.png" for i in range(sl.start, sl.stop)]})
    _dump(folder / "test_batch", {"batch_label": "testing batch 1 of 1",
                                  "labels": [int(v) for v in y_test],
                                  "data": x_test.reshape(n_test, -1),
                                  "filenames": [f"test_{i}.png" for i in range(n_test)]})
    _dump(folder / "batches.meta", {"num_cases_per_batch": per_batch,
                                    "label_names": CIFAR10_NAMES, "num_vis": 3072})
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test,
            "folder": folder}


def write_cifar100(root: Path, n_train: int = 300, n_test: int = 100, seed: int = 0) -> dict:
    """root/cifar-100-python/{train, test, meta} with fine and coarse labels."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    fine_names = [f"fine_{i:03d}" for i in range(100)]
    out = {"folder": folder, "fine_names": fine_names}
    for split, n in (("train", n_train), ("test", n_test)):
        x = stamp(rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8))
        fine = rng.integers(0, 100, n)
        _dump(folder / split, {"filenames": [f"{split}_{i}.png" for i in range(n)],
                               "batch_label": f"{split} batch", "fine_labels": [int(v) for v in fine],
                               "coarse_labels": [int(v) // 5 for v in fine],
                               "data": x.reshape(n, -1)})
        out[f"x_{split}"], out[f"y_{split}"] = x, fine
    _dump(folder / "meta", {"fine_label_names": fine_names,
                            "coarse_label_names": [f"coarse_{i}" for i in range(20)]})
    return out


def class_colour(c: int) -> tuple[int, int, int]:
    """A flat colour per class, far apart so JPEG noise can't confuse them."""
    return (40 * (c % 6) + 20, 60 * ((c // 6) % 4) + 20, 200 - 30 * (c % 5))


def _save(img: np.ndarray, path: Path, fmt: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))


def write_imagefolder(root: Path, classes=("cat", "dog", "emu"), per_class: int = 6,
                      splits=("train", "test"), size: int = 32, fmt: str = "PNG",
                      seed: int = 0) -> dict:
    """root/<split>/<class>/<class>_<i>.<ext>. PNG images are random and stamped with their
    sorted position in the split; JPEG images are flat class colours.

    Returns {split: (list of HWC uint8 arrays as written, in sorted order, labels)}."""
    rng = np.random.default_rng(seed)
    ext = {"PNG": "png", "JPEG": "jpg"}[fmt]
    out = {}
    for split in splits:
        arrays, labels, pos = [], [], 0
        for c, name in enumerate(sorted(classes)):
            for i in range(per_class):
                if fmt == "PNG":
                    img = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                    img[0, :3, 0] = (pos // 65536, (pos // 256) % 256, pos % 256)
                else:
                    img = np.empty((size, size, 3), np.uint8)
                    img[:] = class_colour(c)
                _save(img, Path(root) / split / name / f"{name}_{i:03d}.{ext}", fmt)
                arrays.append(img)
                labels.append(c)
                pos += 1
        out[split] = (arrays, np.asarray(labels))
    return out


def write_tinyimagenet(root: Path, wnids=("n02", "n01", "n03"), train_per_class: int = 5,
                       val_per_class: int = 3, size: int = 64, refold_val: bool = False) -> dict:
    """root/tiny-imagenet-200/ as the archive has it: wnids.txt (not sorted), words.txt,
    train/<wnid>/images/<wnid>_<i>.JPEG + <wnid>_boxes.txt, val/images/val_<j>.JPEG +
    val/val_annotations.txt (val images interleaved across classes), test/images/ (no labels).
    The first training image of the first wnid is grayscale, as some real ones are.
    Images are flat colours of their class's *sorted* position. refold_val writes val as
    val/<wnid>/images/ instead (what re-folding scripts produce)."""
    base = Path(root) / "tiny-imagenet-200"
    base.mkdir(parents=True, exist_ok=True)
    (base / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (base / "words.txt").write_text("".join(f"{w}\tthing {w}\n" for w in wnids))
    order = {w: i for i, w in enumerate(sorted(wnids))}
    for w in wnids:
        d = base / "train" / w
        boxes = []
        for i in range(train_per_class):
            img = np.empty((size, size, 3), np.uint8)
            img[:] = class_colour(order[w])
            grey = w == wnids[0] and i == 0
            _save(img[:, :, 0] if grey else img, d / "images" / f"{w}_{i}.JPEG", "JPEG")
            boxes.append(f"{w}_{i}.JPEG\t0\t0\t{size - 1}\t{size - 1}")
        (d / f"{w}_boxes.txt").write_text("\n".join(boxes) + "\n")
    val_rows = []
    j = 0
    for i in range(val_per_class):
        for w in wnids:
            img = np.empty((size, size, 3), np.uint8)
            img[:] = class_colour(order[w])
            name = f"val_{j}.JPEG"
            target = base / "val" / (f"{w}/images" if refold_val else "images") / name
            _save(img, target, "JPEG")
            val_rows.append((name, w))
            j += 1
    if not refold_val:
        (base / "val" / "val_annotations.txt").write_text(
            "".join(f"{n}\t{w}\t0\t0\t{size - 1}\t{size - 1}\n" for n, w in val_rows))
    _save(np.zeros((size, size, 3), np.uint8), base / "test" / "images" / "test_0.JPEG", "JPEG")
    # Expected val labels in the loader's order (sorted file name), as sorted-wnid classes.
    by_name = sorted(val_rows, key=lambda r: r[0])
    return {"base": base, "classes": sorted(wnids),
            "val_labels": np.asarray([order[w] for _, w in by_name])}
