"""Split.source_index: every loader records each train/val row's position in its source
training pool, and a label file over that pool (`noise.kind: file`) reaches train AND
validation rows of every dataset through it.

Where the fixture writes an image's pool position into its pixels (CIFAR pickles, PNG
folders: tests/image_fixtures.py), the expected position is read back from the pixels, so
the check does not trust the loader's own bookkeeping."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from filterkd_ray import InputError
from filterkd_ray.data import load_dataset, split_holdout
from filterkd_ray.data.images import _sklearn_digits, decode_images, scan_folder
from filterkd_ray.data.noise import apply_noise
from filterkd_ray.data.toy import make_toy
from image_fixtures import read_stamp, write_cifar10, write_cifar100, write_imagefolder


def check_partition(ds, pool_size: int, expect_cover=None) -> None:
    """int64 indices, disjoint train/val, inside the pool; covering `expect_cover` if given."""
    tr, va = ds.train.source_index, ds.val.source_index
    assert tr.dtype == np.int64 and va.dtype == np.int64
    assert (len(tr), len(va)) == (len(ds.train), len(ds.val))
    assert ds.test.source_index is None
    assert ds.source_size == pool_size
    both = np.concatenate([tr, va])
    assert len(np.unique(both)) == len(both)                 # disjoint, no repeats
    assert both.min() >= 0 and both.max() < pool_size
    if expect_cover is not None:
        assert np.array_equal(np.sort(both), np.sort(expect_cover))


# --------------------------------------------------------------------------- loaders

@pytest.mark.parametrize("subset", [None, 6])
def test_cifar10_source_index_is_the_pickle_row(tmp_path, subset):
    src = write_cifar10(tmp_path, per_batch=20)              # 100 pool images
    ds = load_dataset("cifar10", root=str(tmp_path), val_fraction=0.2, split_seed=3,
                      subset_per_class=subset)
    check_partition(ds, 100, np.arange(100) if subset is None else None)
    for split in (ds.train, ds.val):
        assert np.array_equal(split.source_index, read_stamp(split.x))
        assert np.array_equal(split.y, src["y_train"][split.source_index])
    if subset is not None:   # at most 6 per class of the pool, nothing else
        counts = np.bincount(src["y_train"][np.concatenate([ds.train.source_index,
                                                            ds.val.source_index])])
        assert counts.max() <= 6 and len(ds.train) + len(ds.val) < 100


def test_cifar100_source_index_is_the_pickle_row(tmp_path):
    src = write_cifar100(tmp_path, n_train=120, n_test=20)
    ds = load_dataset("cifar100", root=str(tmp_path), val_fraction=0.25, split_seed=1)
    check_partition(ds, 120, np.arange(120))
    for split in (ds.train, ds.val):
        assert np.array_equal(split.source_index, read_stamp(split.x))
        assert np.array_equal(split.y, src["y_train"][split.source_index])


@pytest.mark.parametrize("subset", [None, 4])
def test_imagefolder_source_index_is_scan_folder_order(tmp_path, subset):
    write_imagefolder(tmp_path, classes=("zebra", "ant", "moth"), per_class=7)   # 21 images
    ds = load_dataset("imagefolder", root=str(tmp_path), val_fraction=0.3, split_seed=2,
                      subset_per_class=subset, cache=False)
    check_partition(ds, 21, np.arange(21) if subset is None else None)
    files, labels, _ = scan_folder(tmp_path / "train")
    for split in (ds.train, ds.val):
        # Decoding the pool file at source_index[i] gives row i, pixel for pixel.
        assert np.array_equal(decode_images([files[i] for i in split.source_index]), split.x)
        assert np.array_equal(split.source_index, read_stamp(split.x))
        assert np.array_equal(split.y, labels[split.source_index])
    if subset is not None:
        assert len(ds.train) + len(ds.val) == 12


def test_imagefolder_own_val_folder_has_no_source_index(tmp_path):
    write_imagefolder(tmp_path, per_class=5, splits=("train", "val", "test"))
    ds = load_dataset("imagefolder", root=str(tmp_path), subset_per_class=3, cache=False)
    assert ds.val.source_index is None and ds.test.source_index is None
    assert ds.source_size == 15 and len(ds.train) == 9
    assert np.array_equal(ds.train.source_index, read_stamp(ds.train.x))


def _tiny_png_tree(root: Path, wnids=("n03", "n01", "n02"), per_class=6) -> Path:
    """A tiny-imagenet-200 tree whose training images are PNGs stamped with their expected
    pool position (sorted wnid, then sorted file name): the JPEG fixture's flat colours
    cannot tell two images of a class apart."""
    base = root / "tiny-imagenet-200"
    (base / "val" / "images").mkdir(parents=True)
    (base / "wnids.txt").write_text("\n".join(wnids) + "\n")
    rng = np.random.default_rng(0)
    pos = 0
    for w in sorted(wnids):
        d = base / "train" / w / "images"
        d.mkdir(parents=True)
        for i in range(per_class):
            img = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
            img[0, :3, 0] = (pos // 65536, (pos // 256) % 256, pos % 256)
            Image.fromarray(img).save(d / f"{w}_{i:02d}.png")
            pos += 1
    rows = []
    for j, w in enumerate(wnids):
        Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(base / "val" / "images" / f"v{j}.png")
        rows.append(f"v{j}.png\t{w}\n")
    (base / "val" / "val_annotations.txt").write_text("".join(rows))
    return base


@pytest.mark.parametrize("subset", [None, 4])
def test_tinyimagenet_source_index_is_sorted_wnid_then_file(tmp_path, subset):
    _tiny_png_tree(tmp_path)                                   # 18 pool images, 6 per class
    ds = load_dataset("tinyimagenet", root=str(tmp_path), val_fraction=0.25, split_seed=4,
                      subset_per_class=subset, cache=False)
    check_partition(ds, 18, np.arange(18) if subset is None else None)
    for split in (ds.train, ds.val):
        assert np.array_equal(split.source_index, read_stamp(split.x))
        assert np.array_equal(split.y, split.source_index // 6)   # class = sorted wnid


def _digits_raw():
    images, target = _sklearn_digits()
    return np.rint(images * (255.0 / 16.0)).astype(np.uint8)[:, None], target.astype(np.int64)


@pytest.mark.parametrize("subset", [None, 30])
def test_digits_source_index_is_the_sklearn_row(subset):
    x, y = _digits_raw()
    ds = load_dataset("digits", val_fraction=0.2, split_seed=7, subset_per_class=subset)
    _, held_out_test = split_holdout(len(y), 0.2, 0)        # digits' fixed test hold-out
    check_partition(ds, 1797, np.setdiff1d(np.arange(1797), held_out_test)
                    if subset is None else None)
    for split in (ds.train, ds.val):
        assert np.array_equal(split.x, x[split.source_index])
        assert np.array_equal(split.y, y[split.source_index])
        assert not np.isin(split.source_index, held_out_test).any()
    if subset is not None:
        assert len(ds.train) + len(ds.val) == 300


def test_toy_pool_is_train_then_val_as_drawn():
    ds = load_dataset("toy", n_train=40, n_val=10, n_test=30, seed=3)
    check_partition(ds, 50, np.arange(50))
    assert np.array_equal(ds.train.source_index, np.arange(40))
    assert np.array_equal(ds.val.source_index, np.arange(40, 50))
    draw = make_toy(80, seed=3)
    for split in (ds.train, ds.val):
        assert np.array_equal(split.x, draw.x[split.source_index])


# --------------------------------------------------------------------------- file noise

def flipped_labels(y: np.ndarray, k: int, positions: np.ndarray) -> np.ndarray:
    out = y.copy()
    out[positions] = (y[positions] + 1) % k
    return out


@pytest.mark.parametrize("subset", [None, 5])
def test_imagefolder_file_over_the_pool_labels_train_and_val(tmp_path, subset):
    write_imagefolder(tmp_path / "d", classes=("a", "b", "c"), per_class=8)     # 24 images
    files, clean, _ = scan_folder(tmp_path / "d" / "train")
    flips = np.arange(0, 24, 4)                                   # known pool positions
    labels = flipped_labels(clean, 3, flips)
    f = tmp_path / "labels.csv"                                   # scan_folder's order
    f.write_text("".join(f"{v}\n" for v in labels))
    ds = load_dataset("imagefolder", root=str(tmp_path / "d"), val_fraction=0.25,
                      split_seed=1, subset_per_class=subset, cache=False)
    out = apply_noise(ds, 0.0, "file", 0, path=str(f))
    seen_flips = 0
    for name in ("train", "val"):
        split = getattr(out, name)
        pos = read_stamp(split.x)                                # from the pixels
        assert np.array_equal(split.labels, labels[pos]), name
        assert np.array_equal(split.y, clean[pos])               # clean labels untouched
        assert np.array_equal(split.flipped, np.isin(pos, flips))
        seen_flips += int(split.flipped.any())
    assert seen_flips == 2                                       # both splits got flips
    assert out.test.y_noisy is None


def test_digits_file_over_sklearn_order_labels_train_and_val(tmp_path):
    _, y = _digits_raw()
    flips = np.arange(3, 1797, 9)                                 # ~11%, known positions
    labels = flipped_labels(y, 10, flips)
    f = tmp_path / "digits_human.pt"                              # CIFAR-N's layout
    torch.save({"clean_label": y, "worse_label": labels}, f)
    ds = load_dataset("digits", val_fraction=0.2, split_seed=2, subset_per_class=40)
    out = apply_noise(ds, 0.0, "file", 0, path=str(f), key="worse_label")
    x_all, _ = _digits_raw()
    for name in ("train", "val"):
        split, orig = getattr(out, name), getattr(ds, name)
        src = orig.source_index
        assert np.array_equal(split.x, x_all[src])                # the rows are those images
        assert np.array_equal(split.labels, labels[src]), name
        assert np.array_equal(split.flipped, np.isin(src, flips))
        assert split.flipped.any()
    # A .npy over the same order, with no clean labels, maps identically.
    np.save(tmp_path / "l.npy", labels)
    again = apply_noise(ds, 0.0, "file", 0, path=str(tmp_path / "l.npy"))
    assert np.array_equal(again.val.labels, out.val.labels)


def test_toy_file_over_pool_labels_val_and_train_length_file_still_train_only(tmp_path):
    ds = load_dataset("toy", n_train=200, n_val=50, n_test=20, seed=0)
    pool_y = np.concatenate([ds.train.y, ds.val.y])
    labels = flipped_labels(pool_y, 3, np.arange(0, 250, 5))
    np.save(tmp_path / "pool.npy", labels)
    out = apply_noise(ds, 0.0, "file", 0, path=str(tmp_path / "pool.npy"))
    assert np.array_equal(out.train.labels, labels[:200])
    assert np.array_equal(out.val.labels, labels[200:])
    # Exactly len(train) labels (not the pool size): row i gets label i, val stays clean.
    np.save(tmp_path / "train.npy", labels[:200])
    out = apply_noise(ds, 0.0, "file", 0, path=str(tmp_path / "train.npy"))
    assert np.array_equal(out.train.labels, labels[:200]) and out.val.y_noisy is None


def test_own_val_folder_keeps_clean_labels_under_a_pool_file(tmp_path):
    write_imagefolder(tmp_path / "d", per_class=6, splits=("train", "val", "test"))
    _, clean, _ = scan_folder(tmp_path / "d" / "train")
    labels = flipped_labels(clean, 3, np.array([0, 7, 13]))
    np.save(tmp_path / "l.npy", labels)
    ds = load_dataset("imagefolder", root=str(tmp_path / "d"), cache=False)
    out = apply_noise(ds, 0.0, "file", 0, path=str(tmp_path / "l.npy"))
    assert np.array_equal(out.train.labels, labels[read_stamp(out.train.x)])
    assert out.val.y_noisy is None


def test_wrong_length_and_wrong_order_name_the_file(tmp_path):
    ds = load_dataset("digits", val_fraction=0.2, split_seed=0)
    _, y = _digits_raw()
    np.save(tmp_path / "short.npy", y[:1000])
    with pytest.raises(InputError, match=r"short\.npy: holds 1000 labels .* source training "
                                         r"set \(1797\)"):
        apply_noise(ds, 0.0, "file", 0, path=str(tmp_path / "short.npy"))
    # Right length, another order: the alignment check still catches it.
    np.save(tmp_path / "shuffled.npy", y[np.random.default_rng(0).permutation(1797)])
    with pytest.raises(InputError, match=r"shuffled\.npy: .* does not match"):
        apply_noise(ds, 0.0, "file", 0, path=str(tmp_path / "shuffled.npy"))
    torch.save({"clean_label": y[::-1].copy(), "worse_label": y}, tmp_path / "rev.pt")
    with pytest.raises(InputError, match=r"rev\.pt: its clean_label disagrees"):
        apply_noise(ds, 0.0, "file", 0, path=str(tmp_path / "rev.pt"), key="worse_label")


def test_synthetic_noise_keeps_source_index_and_unknown_pool_size_needs_every_index(tmp_path):
    ds = load_dataset("toy", n_train=60, n_val=20, n_test=10, seed=1)
    out = apply_noise(ds, 0.3, "symmetric", 0)
    assert out.train.source_index is ds.train.source_index
    assert out.val.source_index is ds.val.source_index
    # A loader that records source_index but not source_size: a file covering every
    # recorded index is read over the source set; one that does not cover them is refused.
    from dataclasses import replace
    from filterkd_ray.data import Split
    sub = replace(ds, source_size=None,
                  train=Split(x=ds.train.x[::2], y=ds.train.y[::2],
                              source_index=ds.train.source_index[::2]),
                  val=Split(x=ds.val.x[:5], y=ds.val.y[:5], source_index=ds.val.source_index[:5]))
    pool_y = np.concatenate([ds.train.y, ds.val.y])
    labels = flipped_labels(pool_y, 3, np.arange(0, 80, 3))
    np.save(tmp_path / "all.npy", labels)
    got = apply_noise(sub, 0.0, "file", 0, path=str(tmp_path / "all.npy"))
    assert np.array_equal(got.train.labels, labels[0:60:2])
    assert np.array_equal(got.val.labels, labels[60:65])
    np.save(tmp_path / "cut.npy", labels[:50])
    with pytest.raises(InputError, match=r"cut\.npy: holds 50 labels"):
        apply_noise(sub, 0.0, "file", 0, path=str(tmp_path / "cut.npy"))
