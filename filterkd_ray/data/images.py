"""Real image datasets, decoded once into uint8 [N, C, H, W] arrays.

Why decode once: the engine keeps the whole split on the training device as uint8 and
augments batches there (data/augment.py), so the per-epoch input cost is one gather and a
few tensor ops, with no PIL and no loader workers (benchmarks/pipeline_throughput.py).

Loaders (`data.name` in a spec; `data.options` are the keyword arguments below):

- `cifar10`, `cifar100`: torchvision's python-pickle format under `root`
  (`root/cifar-10-batches-py/data_batch_1..5, test_batch, batches.meta`;
  `root/cifar-100-python/train, test, meta`, fine labels). `root` may also be the batches
  folder itself. `download: true` calls torchvision's downloader; nothing else downloads.
- `tinyimagenet`: the standard `tiny-imagenet-200` tree (`wnids.txt`,
  `train/<wnid>/images/*.JPEG`, `val/images/*.JPEG` + `val/val_annotations.txt`, read in
  place, nothing is moved; an already re-folded `val/<wnid>/...` works too). Its labelled
  val set serves as the test split; validation is held out of train.
- `imagefolder`: `root/train/<class>/*` with optional `root/val/<class>/*` and
  `root/test/<class>/*`. With val/ and test/ both present each is used as such; with only
  test/, validation is held out of train; with only val/, val/ serves as test (the
  Tiny-ImageNet convention) and validation is held out of train.
- `digits`: scikit-learn's bundled 8x8 digits (1,797 images, no download), as 1x8x8 uint8
  images (0..16 scaled to 0..255); `image_size` upsamples them (e.g. 32 for the ResNets).
  It has no test split of its own: `test_fraction` of it is held out with a fixed seed, so
  the test images never change with `split_seed`. No augmentation by default (a flipped
  digit is another digit, and a 4-pixel shift is half of an 8x8 image).

Common options: `val_fraction` (held out of the training pool by `split_holdout`, seeded by
`split_seed`; ignored when the folder has its own val/), `subset_per_class` (a seeded random
k per class of the training pool, taken *before* the validation hold-out and before any
decoding, so a CPU experiment decodes only what it uses; the draw is nested: a smaller k is
a subset of a larger one with the same seed), `test_subset_per_class` (the same for test,
and for an own val/, with the fixed seed 0 so every run is scored on the same images),
`image_size` (square resize at decode time), `augment` (what the engine applies to train
batches: "crop_flip", "crop_flip_cutout" or "none").

Sample order is stable: pickle order for CIFAR, sorted class then sorted file name for
folders. Train rows, and validation rows held out of the training pool, record
`Split.source_index`: their position in the *source* training set (`Dataset.source_size`
images), i.e. the CIFAR pickle order (50,000), `scan_folder`'s order of `root/train/`
(sorted class folder, then sorted file name) for `imagefolder`, sorted wnid then sorted
file name for `tinyimagenet` (100,000), and scikit-learn's order for `digits` (1,797, the
test hold-out included). A per-sample label file (`noise.kind: file`) lists its labels in
that order. An own `val/` folder gets none: it is not part of the training pool.

Decoded folder arrays are cached in `root/.filterkd_cache/` when `root` is
writable (`cache: false` turns it off); the cache key covers every file's name, size and
modification time, so an edited folder is decoded afresh.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np

from filterkd_ray import InputError
from filterkd_ray.data import Dataset, Split, register_dataset, split_holdout
from filterkd_ray.data.augment import AUGMENTS

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
CACHE_DIR = ".filterkd_cache"
CACHE_VERSION = 1
TEST_SEED = 0   # fixed seed for test subsets and digits' test hold-out

# Per-channel statistics in [0, 1] units (DeviceData.prepare divides by 255 first).
CIFAR10_STATS = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
CIFAR100_STATS = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
TINYIMAGENET_STATS = ((0.4802, 0.4481, 0.3975), (0.2770, 0.2691, 0.2821))


# --------------------------------------------------------------------------- checks

def _check_options(name: str, val_fraction, subset_per_class, test_subset_per_class,
                   image_size, augment, need_val_fraction: bool = True, split_seed=0) -> None:
    where = f"data.options ({name})"
    if isinstance(split_seed, bool) or not isinstance(split_seed, int) or split_seed < 0:
        raise InputError(f"{where}.split_seed: {split_seed!r} must be a non-negative integer")
    if not isinstance(val_fraction, (int, float)) or not 0.0 <= val_fraction < 1.0:
        raise InputError(f"{where}.val_fraction: {val_fraction!r} is outside [0, 1)")
    if need_val_fraction and val_fraction == 0.0:
        raise InputError(f"{where}.val_fraction: 0 leaves no validation split, which selection "
                         "(best epoch, Filter-KD snapshot, search objective) needs; use e.g. 0.1")
    for key, v in (("subset_per_class", subset_per_class),
                   ("test_subset_per_class", test_subset_per_class), ("image_size", image_size)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise InputError(f"{where}.{key}: {v!r} must be a positive integer or null")
    if augment not in AUGMENTS:
        raise InputError(f"{where}.augment: {augment!r}; choose one of {list(AUGMENTS)}")


def _need_root(name: str, root, hint: str) -> Path:
    if root is None or root == "":
        raise InputError(f"data.options.root: dataset {name!r} needs a root folder ({hint})")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise InputError(f"data.options.root: {path} is not a folder; {hint}")
    return path


# --------------------------------------------------------------------------- selection

def per_class_subset(y: np.ndarray, k: int | None, seed: int) -> np.ndarray:
    """Sorted indices of a seeded random k per class (all of a class with fewer than k).

    One permutation per class, cut at k: a smaller k picks a subset of a larger one."""
    if k is None:
        return np.arange(len(y))
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        keep.append(idx[rng.permutation(len(idx))[:k]])
    return np.sort(np.concatenate(keep)) if keep else np.arange(0)


class _Pool:
    """A split before decoding: its labels, and how to get the images of chosen rows.

    `source[i]` is row i's index in the source set of `source_size` images (default: the
    pool itself, in order); digits' pool is the sklearn set minus its test hold-out."""

    def __init__(self, y: np.ndarray, fetch: Callable[[np.ndarray], np.ndarray],
                 source: np.ndarray | None = None, source_size: int | None = None):
        self.y = np.asarray(y, np.int64)
        self.fetch = fetch
        self.source = np.arange(len(self.y)) if source is None else np.asarray(source, np.int64)
        self.source_size = len(self.y) if source_size is None else int(source_size)


def _array_pool(x: np.ndarray, y, source=None, source_size=None) -> _Pool:
    return _Pool(y, lambda idx: x[idx], source, source_size)


def _resize_array(x: np.ndarray, size: int | None) -> np.ndarray:
    """Square bilinear resize (antialiased when shrinking) of uint8 [N, C, H, W]."""
    if size is None or x.shape[-2:] == (size, size) or len(x) == 0:
        return np.ascontiguousarray(x)
    import torch
    import torch.nn.functional as F
    out = []
    for i in range(0, len(x), 4096):   # bounded float32 memory
        t = torch.from_numpy(np.ascontiguousarray(x[i:i + 4096])).float()
        t = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False,
                          antialias=True)
        out.append(t.round_().clamp_(0, 255).to(torch.uint8).numpy())
    return np.concatenate(out)


def _assemble(name: str, classes: list[str], train: _Pool, test: _Pool, val: _Pool | None, *,
              val_fraction: float, split_seed: int, subset_per_class, test_subset_per_class,
              image_size, augment: str, stats) -> Dataset:
    pool_idx = per_class_subset(train.y, subset_per_class, split_seed)
    pool_x = _resize_array(train.fetch(pool_idx), image_size)
    pool_y = train.y[pool_idx]
    # Composed: subset row -> pool row -> source image, so a label file over the original
    # training set reaches train and held-out val rows whatever subset was drawn.
    pool_src = train.source[pool_idx]
    if val is None:
        tr, va = split_holdout(len(pool_idx), val_fraction, split_seed)
        train_split = Split(x=pool_x[tr], y=pool_y[tr], source_index=pool_src[tr])
        val_split = Split(x=pool_x[va], y=pool_y[va], source_index=pool_src[va])
    else:   # an own val/ folder is not from the training pool: no source index
        train_split = Split(x=pool_x, y=pool_y, source_index=pool_src)
        vi = per_class_subset(val.y, test_subset_per_class, TEST_SEED)
        val_split = Split(x=_resize_array(val.fetch(vi), image_size), y=val.y[vi])
    ti = per_class_subset(test.y, test_subset_per_class, TEST_SEED)
    test_split = Split(x=_resize_array(test.fetch(ti), image_size), y=test.y[ti])
    shapes = {s.x.shape[1:] for s in (train_split, val_split, test_split) if len(s)}
    if len(shapes) > 1:
        raise InputError(f"data ({name}): splits have different image shapes {sorted(shapes)}; "
                         "set data.options.image_size to resize them all")
    mean, std = stats if stats is not None else channel_stats(train_split.x)
    return Dataset(name=name, num_classes=len(classes), train=train_split, val=val_split,
                   test=test_split, mean=tuple(mean), std=tuple(std), augment=augment,
                   classes=list(classes), source_size=train.source_size)


def channel_stats(x: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 [N, C, H, W] in [0, 1] units (float64 sums)."""
    if len(x) == 0:
        raise InputError("data: the training split is empty; check root and subset options")
    c = x.shape[1]
    s = np.zeros(c)
    s2 = np.zeros(c)
    for i in range(0, len(x), 4096):
        chunk = x[i:i + 4096].astype(np.float64) / 255.0
        s += chunk.sum((0, 2, 3))
        s2 += (chunk ** 2).sum((0, 2, 3))
    n = len(x) * x.shape[2] * x.shape[3]
    mean = s / n
    std = np.sqrt(np.maximum(s2 / n - mean ** 2, 1e-12))
    return tuple(float(v) for v in mean), tuple(float(max(v, 1e-3)) for v in std)


# --------------------------------------------------------------------------- CIFAR

def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="latin1")
    except FileNotFoundError:
        raise InputError(f"{path}: missing; the CIFAR folder is incomplete, re-extract the "
                         "archive or pass data.options.download: true") from None
    except Exception as err:  # noqa: BLE001 (any unpickling failure means a bad file)
        raise InputError(f"{path}: not a readable CIFAR pickle ({type(err).__name__}); "
                         "re-extract the archive or pass data.options.download: true") from None


def _cifar_batches(path: Path, files: list[str], label_key: str) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for name in files:
        entry = _unpickle(path / name)
        if "data" not in entry or label_key not in entry:
            raise InputError(f"{path / name}: no 'data'/{label_key!r} entries; is this the "
                             "python version of the dataset (not the binary one)?")
        data = np.asarray(entry["data"], dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(entry[label_key]):
            raise InputError(f"{path / name}: expected data [n, 3072] with n labels; got "
                             f"{data.shape} and {len(entry[label_key])} labels")
        xs.append(data.reshape(-1, 3, 32, 32))
        ys.append(np.asarray(entry[label_key], np.int64))
    return np.concatenate(xs), np.concatenate(ys)


def _load_cifar(kind: str, root, download: bool, **opts) -> Dataset:
    ten = kind == "cifar10"
    folder = "cifar-10-batches-py" if ten else "cifar-100-python"
    hint = (f"point it at the folder holding {folder}/ (torchvision's python format), "
            "or pass data.options.download: true")
    if root is None or root == "":
        raise InputError(f"data.options.root: dataset {kind!r} needs a root folder ({hint})")
    root = Path(root).expanduser()
    if download:
        import torchvision
        cls = torchvision.datasets.CIFAR10 if ten else torchvision.datasets.CIFAR100
        for train in (True, False):
            cls(str(root), train=train, download=True)
    path = root if (root / ("batches.meta" if ten else "meta")).is_file() else root / folder
    if not path.is_dir():
        raise InputError(f"data.options.root: {path} not found; {hint}")
    if ten:
        meta_file, names_key, label_key = "batches.meta", "label_names", "labels"
        train_files, test_files = [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"]
    else:
        meta_file, names_key, label_key = "meta", "fine_label_names", "fine_labels"
        train_files, test_files = ["train"], ["test"]
    classes = [str(c) for c in _unpickle(path / meta_file).get(names_key, [])]
    if len(classes) != (10 if ten else 100):
        raise InputError(f"{path / meta_file}: expected {10 if ten else 100} names under "
                         f"{names_key!r}; got {len(classes)}")
    x_tr, y_tr = _cifar_batches(path, train_files, label_key)
    x_te, y_te = _cifar_batches(path, test_files, label_key)
    for split, y in (("train", y_tr), ("test", y_te)):
        if len(y) and (y.min() < 0 or y.max() >= len(classes)):
            raise InputError(f"{path}: {split} labels outside [0, {len(classes)})")
    return _assemble(kind, classes, _array_pool(x_tr, y_tr), _array_pool(x_te, y_te), None,
                     stats=CIFAR10_STATS if ten else CIFAR100_STATS, **opts)


@register_dataset("cifar10")
def load_cifar10(root: str | None = None, download: bool = False, val_fraction: float = 0.1,
                 split_seed: int = 0, subset_per_class: int | None = None,
                 test_subset_per_class: int | None = None, image_size: int | None = None,
                 augment: str = "crop_flip") -> Dataset:
    """CIFAR-10 from torchvision's python pickles (50k train, 10k test, 32x32)."""
    _check_options("cifar10", val_fraction, subset_per_class, test_subset_per_class,
                   image_size, augment, split_seed=split_seed)
    return _load_cifar("cifar10", root, download, val_fraction=val_fraction,
                       split_seed=split_seed, subset_per_class=subset_per_class,
                       test_subset_per_class=test_subset_per_class, image_size=image_size,
                       augment=augment)


@register_dataset("cifar100")
def load_cifar100(root: str | None = None, download: bool = False, val_fraction: float = 0.1,
                  split_seed: int = 0, subset_per_class: int | None = None,
                  test_subset_per_class: int | None = None, image_size: int | None = None,
                  augment: str = "crop_flip") -> Dataset:
    """CIFAR-100 (fine labels) from torchvision's python pickles."""
    _check_options("cifar100", val_fraction, subset_per_class, test_subset_per_class,
                   image_size, augment, split_seed=split_seed)
    return _load_cifar("cifar100", root, download, val_fraction=val_fraction,
                       split_seed=split_seed, subset_per_class=subset_per_class,
                       test_subset_per_class=test_subset_per_class, image_size=image_size,
                       augment=augment)


# --------------------------------------------------------------------------- image files

def _is_image(p: Path) -> bool:
    return p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMG_EXTENSIONS


def _image_files(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if _is_image(p)), key=lambda p: p.name)


def scan_folder(split_dir: Path) -> tuple[list[Path], np.ndarray, list[str]]:
    """`split_dir/<class>/*` -> (files, labels, classes); classes and files sorted by name."""
    classes = sorted(d.name for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise InputError(f"{split_dir}: no class folders; expected {split_dir}/<class>/<image>")
    files, labels = [], []
    for c, name in enumerate(classes):
        found = _image_files(split_dir / name)
        if not found:
            raise InputError(f"{split_dir / name}: empty class folder (no {'/'.join(IMG_EXTENSIONS)} "
                             "images); add images or remove the folder")
        files += found
        labels += [c] * len(found)
    return files, np.asarray(labels, np.int64), classes


def _decode_one(path: Path, size: int | None) -> np.ndarray:
    from PIL import Image
    try:
        with Image.open(path) as im:
            im.load()   # the full decode: a truncated file raises here, not later
            im = im.convert("L" if im.mode in ("1", "L", "LA", "I", "I;16", "F") else "RGB")
            if size is not None and im.size != (size, size):
                im = im.resize((size, size), Image.BILINEAR)
            return np.asarray(im, dtype=np.uint8)
    except (OSError, SyntaxError, ValueError) as err:
        raise InputError(f"{path}: unreadable or truncated image ({err}); replace or delete "
                         "the file") from None


def decode_images(files: list[Path], size: int | None = None,
                  workers: int | None = None) -> np.ndarray:
    """Decode image files (PIL, a thread pool) into uint8 [N, C, H, W], in the given order.

    Grayscale images stay 1-channel unless the set mixes in colour images, which makes
    every image RGB. Sizes must agree unless `size` resizes them."""
    if not files:
        return np.zeros((0, 3, size or 1, size or 1), np.uint8)
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        arrays = list(pool.map(lambda p: _decode_one(p, size), files, chunksize=64))
    shapes = {a.shape[:2] for a in arrays}
    if len(shapes) > 1:
        sizes = sorted(f"{w}x{h}" for h, w in shapes)[:4]
        raise InputError(f"{files[0].parent.parent}: images differ in size ({', '.join(sizes)}, ...); "
                         "set data.options.image_size to resize them")
    colour = any(a.ndim == 3 for a in arrays)
    h, w = arrays[0].shape[:2]
    out = np.empty((len(arrays), 3 if colour else 1, h, w), np.uint8)
    for i, a in enumerate(arrays):
        out[i] = a.transpose(2, 0, 1) if a.ndim == 3 else a[None]
    return out


def _cache_key(files: list[Path], size: int | None) -> str:
    h = hashlib.sha1(json.dumps([CACHE_VERSION, size]).encode())
    for p in files:
        st = p.stat()
        h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def cached_decode(files: list[Path], size: int | None, cache_root: Path | None) -> np.ndarray:
    """decode_images, through `cache_root/.filterkd_cache/<key>.npy` when that is writable."""
    if cache_root is None or not files:
        return decode_images(files, size)
    cache = cache_root / CACHE_DIR / f"{_cache_key(files, size)}.npy"
    if cache.is_file():
        try:
            x = np.load(cache)
            if x.dtype == np.uint8 and x.ndim == 4 and len(x) == len(files):
                return x
        except (OSError, ValueError):
            pass   # a damaged cache file is decoded afresh and overwritten
    x = decode_images(files, size)
    try:
        cache.parent.mkdir(exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.save(f, x)
        os.replace(tmp, cache)   # atomic: concurrent loaders never read half a file
    except OSError:
        pass   # read-only root: the cache is optional
    return x


def _file_pool(files: list[Path], labels: np.ndarray, size, cache_root) -> _Pool:
    """Decoding is deferred until the rows are chosen, and resizing happens in PIL."""
    return _Pool(labels, lambda idx: cached_decode([files[i] for i in idx], size, cache_root))


def _check_same_classes(where: Path, classes: list[str], train_classes: list[str]) -> None:
    if classes != train_classes:
        missing = sorted(set(train_classes) - set(classes))
        extra = sorted(set(classes) - set(train_classes))
        raise InputError(f"{where}: classes differ from train's (missing {missing[:5]}, extra "
                         f"{extra[:5]}); every split needs the same class folders")


@register_dataset("imagefolder")
def load_imagefolder(root: str | None = None, val_fraction: float = 0.1, split_seed: int = 0,
                     subset_per_class: int | None = None,
                     test_subset_per_class: int | None = None, image_size: int | None = None,
                     augment: str = "crop_flip", cache: bool = True) -> Dataset:
    """`root/train/<class>/*` plus `root/test/` and/or `root/val/` (see the module doc)."""
    _check_options("imagefolder", val_fraction, subset_per_class, test_subset_per_class,
                   image_size, augment, need_val_fraction=False, split_seed=split_seed)
    hint = "expected root/train/<class>/<image> and root/test/<class>/<image> (or root/val/)"
    root = _need_root("imagefolder", root, hint)
    if not (root / "train").is_dir():
        raise InputError(f"{root / 'train'}: not found; {hint}")
    files, labels, classes = scan_folder(root / "train")
    has_val, has_test = (root / "val").is_dir(), (root / "test").is_dir()
    if not has_val and not has_test:
        raise InputError(f"{root}: no test/ or val/ folder; {hint}")
    cache_root = root if cache else None
    pools = {}
    for split in ("val", "test"):
        if (root / split).is_dir():
            f, y, c = scan_folder(root / split)
            _check_same_classes(root / split, c, classes)
            pools[split] = _file_pool(f, y, image_size, cache_root)
    own_val = pools["val"] if has_val and has_test else None
    if own_val is None:
        _check_options("imagefolder", val_fraction, None, None, None, augment)
    test = pools["test"] if has_test else pools["val"]
    return _assemble("imagefolder", classes, _file_pool(files, labels, image_size, cache_root),
                     test, own_val, val_fraction=val_fraction, split_seed=split_seed,
                     subset_per_class=subset_per_class,
                     test_subset_per_class=test_subset_per_class, image_size=image_size,
                     augment=augment, stats=None)


# --------------------------------------------------------------------------- Tiny-ImageNet

def _tiny_val(val_dir: Path, classes: list[str]) -> tuple[list[Path], np.ndarray]:
    """val/images + val_annotations.txt (the archive's layout), or a re-folded val/<wnid>/."""
    ann = val_dir / "val_annotations.txt"
    index = {c: i for i, c in enumerate(classes)}
    if ann.is_file():
        files, labels = [], []
        for n, line in enumerate(ann.read_text().splitlines(), 1):
            if not line.strip():
                continue
            parts = line.split("\t")
            if len(parts) < 2 or parts[1] not in index:
                raise InputError(f"{ann}:{n}: expected '<file>\\t<wnid>...' with a wnid from "
                                 f"wnids.txt; got {line[:60]!r}")
            path = val_dir / "images" / parts[0]
            if not path.is_file():
                raise InputError(f"{path}: listed in {ann.name} but missing; re-extract val/")
            files.append(path)
            labels.append(index[parts[1]])
        order = sorted(range(len(files)), key=lambda i: files[i].name)   # stable index
        return [files[i] for i in order], np.asarray(labels, np.int64)[order]
    # Re-folded by a script (e.g. the official repo's): val/<wnid>/images/* or val/<wnid>/*.
    files, labels = [], []
    for c, wnid in enumerate(classes):
        d = val_dir / wnid
        d = d / "images" if (d / "images").is_dir() else d
        if not d.is_dir():
            raise InputError(f"{val_dir}: neither val_annotations.txt nor a folder for class "
                             f"{wnid}; re-extract tiny-imagenet-200")
        found = _image_files(d)
        files += found
        labels += [c] * len(found)
    # Sorted by file name as in the annotated layout: re-folding never renumbers samples.
    order = sorted(range(len(files)), key=lambda i: files[i].name)
    return [files[i] for i in order], np.asarray(labels, np.int64)[order]


@register_dataset("tinyimagenet")
def load_tinyimagenet(root: str | None = None, val_fraction: float = 0.1, split_seed: int = 0,
                      subset_per_class: int | None = None,
                      test_subset_per_class: int | None = None, image_size: int | None = None,
                      augment: str = "crop_flip", cache: bool = True) -> Dataset:
    """Tiny-ImageNet-200 (100k train, 64x64, 200 classes); its labelled val set is the test split."""
    _check_options("tinyimagenet", val_fraction, subset_per_class, test_subset_per_class,
                   image_size, augment, split_seed=split_seed)
    hint = "point it at tiny-imagenet-200/ (holding wnids.txt, train/, val/) or its parent"
    root = _need_root("tinyimagenet", root, hint)
    if not (root / "wnids.txt").is_file() and (root / "tiny-imagenet-200").is_dir():
        root = root / "tiny-imagenet-200"
    if not (root / "wnids.txt").is_file():
        raise InputError(f"{root / 'wnids.txt'}: not found; {hint}")
    classes = sorted({w.strip() for w in (root / "wnids.txt").read_text().split() if w.strip()})
    if not (root / "train").is_dir():
        raise InputError(f"{root / 'train'}: not found; {hint}")
    train_dirs = sorted(d.name for d in (root / "train").iterdir() if d.is_dir())
    if train_dirs != classes:
        missing = sorted(set(classes) - set(train_dirs))
        extra = sorted(set(train_dirs) - set(classes))
        raise InputError(f"{root / 'train'}: class folders differ from wnids.txt (missing "
                         f"{missing[:5]}, extra {extra[:5]}); re-extract tiny-imagenet-200")
    files, labels = [], []
    for c, wnid in enumerate(classes):
        d = root / "train" / wnid
        d = d / "images" if (d / "images").is_dir() else d
        found = _image_files(d)
        if not found:
            raise InputError(f"{d}: empty class folder; re-extract tiny-imagenet-200")
        files += found
        labels += [c] * len(found)
    if not (root / "val").is_dir():
        raise InputError(f"{root / 'val'}: not found; {hint}")
    val_files, val_labels = _tiny_val(root / "val", classes)
    cache_root = root if cache else None
    return _assemble("tinyimagenet", classes,
                     _file_pool(files, np.asarray(labels), image_size, cache_root),
                     _file_pool(val_files, val_labels, image_size, cache_root), None,
                     val_fraction=val_fraction, split_seed=split_seed,
                     subset_per_class=subset_per_class,
                     test_subset_per_class=test_subset_per_class, image_size=image_size,
                     augment=augment, stats=TINYIMAGENET_STATS)


# --------------------------------------------------------------------------- digits

def _sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    """(images [1797, 8, 8] in 0..16, labels). Reads the CSV bundled with scikit-learn
    directly (0.5 s) instead of importing sklearn.datasets (~5 s on a busy 2-core machine);
    falls back to the importer if the file ever moves."""
    import importlib.util
    spec = importlib.util.find_spec("sklearn")
    csv = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz" if spec else None
    if csv is not None and csv.is_file():
        a = np.loadtxt(csv, delimiter=",")
        return a[:, :-1].reshape(-1, 8, 8), a[:, -1]
    from sklearn.datasets import load_digits as sk_digits
    d = sk_digits()
    return d.images, d.target


@register_dataset("digits")
def load_digits(val_fraction: float = 0.1, test_fraction: float = 0.2, split_seed: int = 0,
                subset_per_class: int | None = None, image_size: int | None = None,
                augment: str = "none") -> Dataset:
    """scikit-learn's 8x8 digits as 1x8x8 uint8 images (or upsampled to image_size)."""
    _check_options("digits", val_fraction, subset_per_class, None, image_size, augment,
                   split_seed=split_seed)
    if not isinstance(test_fraction, (int, float)) or not 0.0 < test_fraction < 1.0:
        raise InputError(f"data.options (digits).test_fraction: {test_fraction!r} is outside (0, 1)")
    images, target = _sklearn_digits()
    x = np.rint(images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    y = target.astype(np.int64)
    rest, test = split_holdout(len(y), test_fraction, TEST_SEED)
    # Source index = the row in sklearn's order (all 1,797), so a label file for digits has
    # one label per sklearn digit; its test rows are never read.
    return _assemble("digits", [str(c) for c in range(10)],
                     _array_pool(x[rest], y[rest], source=rest, source_size=len(y)),
                     _array_pool(x[test], y[test]), None, val_fraction=val_fraction,
                     split_seed=split_seed, subset_per_class=subset_per_class,
                     test_subset_per_class=None, image_size=image_size, augment=augment,
                     stats=None)
