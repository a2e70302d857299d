"""Image loaders on the real on-disk formats (written by tests/image_fixtures.py), the real
CIFAR-10 JPEG copy when present, and every bad-input case the loaders promise to reject."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from filterkd_ray import InputError
from filterkd_ray.data import load_dataset
from filterkd_ray.data.images import CIFAR10_STATS, CIFAR100_STATS, per_class_subset
from filterkd_ray.data.noise import apply_noise
from filterkd_ray.spec import validate_spec
from image_fixtures import (CIFAR10_NAMES, class_colour, read_stamp, write_cifar10,
                                  write_cifar100, write_imagefolder, write_tinyimagenet)

SHARED_CIFAR10 = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "cifar10"


# --------------------------------------------------------------------------- CIFAR

def test_cifar10_pickles_load_exactly(tmp_path):
    src = write_cifar10(tmp_path)
    ds = load_dataset("cifar10", root=str(tmp_path), val_fraction=0.2, split_seed=3)
    assert ds.classes == CIFAR10_NAMES and ds.num_classes == 10
    assert (ds.mean, ds.std) == CIFAR10_STATS and ds.augment == "crop_flip"
    for split in (ds.train, ds.val, ds.test):
        assert split.x.dtype == np.uint8 and split.x.shape[1:] == (3, 32, 32)
        assert split.y.dtype == np.int64
    assert (len(ds.train), len(ds.val), len(ds.test)) == (80, 20, 30)
    # Every row is the pickled row it claims to be, in pickle order, label included.
    tr, va = read_stamp(ds.train.x), read_stamp(ds.val.x)
    assert np.all(np.diff(tr) > 0) and np.all(np.diff(va) > 0)
    assert not set(tr) & set(va) and sorted({*tr, *va}) == list(range(100))
    np.testing.assert_array_equal(ds.train.x, src["x_train"][tr])
    np.testing.assert_array_equal(ds.train.y, src["y_train"][tr])
    np.testing.assert_array_equal(ds.val.y, src["y_train"][va])
    np.testing.assert_array_equal(ds.test.x, src["x_test"])
    np.testing.assert_array_equal(ds.test.y, src["y_test"])
    # root may also be the batches folder itself.
    same = load_dataset("cifar10", root=str(src["folder"]), val_fraction=0.2, split_seed=3)
    np.testing.assert_array_equal(same.train.x, ds.train.x)


def test_cifar10_index_is_stable_and_split_seed_moves_only_the_holdout(tmp_path):
    write_cifar10(tmp_path)
    a = load_dataset("cifar10", root=str(tmp_path), split_seed=1)
    b = load_dataset("cifar10", root=str(tmp_path), split_seed=1)
    c = load_dataset("cifar10", root=str(tmp_path), split_seed=2)
    for s in ("train", "val", "test"):
        np.testing.assert_array_equal(getattr(a, s).x, getattr(b, s).x)
        np.testing.assert_array_equal(getattr(a, s).y, getattr(b, s).y)
    assert set(read_stamp(a.val.x)) != set(read_stamp(c.val.x))
    np.testing.assert_array_equal(a.test.x, c.test.x)


def test_cifar10_subsets_nested_resize_and_augment_option(tmp_path):
    src = write_cifar10(tmp_path, per_batch=40, n_test=60)

    def pool(ds):
        return np.concatenate([read_stamp(ds.train.x), read_stamp(ds.val.x)])

    ds = load_dataset("cifar10", root=str(tmp_path), subset_per_class=3, test_subset_per_class=2,
                      val_fraction=0.25)
    ids = pool(ds)
    assert np.bincount(src["y_train"][ids], minlength=10).tolist() == \
        np.minimum(np.bincount(src["y_train"], minlength=10), 3).tolist()
    np.testing.assert_array_equal(np.concatenate([ds.train.y, ds.val.y]), src["y_train"][ids])
    test_ids = read_stamp(ds.test.x)
    assert np.bincount(src["y_test"][test_ids], minlength=10).tolist() == \
        np.minimum(np.bincount(src["y_test"], minlength=10), 2).tolist()
    np.testing.assert_array_equal(ds.test.y, src["y_test"][test_ids])
    # Nested: a smaller k picks a subset of a larger one under the same seed.
    big = load_dataset("cifar10", root=str(tmp_path), subset_per_class=5, val_fraction=0.25)
    assert set(ids) < set(pool(big))
    small = load_dataset("cifar10", root=str(tmp_path), subset_per_class=3, val_fraction=0.25,
                         image_size=16, augment="none")
    assert small.train.x.shape[1:] == (3, 16, 16) and small.augment == "none"
    np.testing.assert_array_equal(small.train.y, ds.train.y)
    assert set(per_class_subset(src["y_train"], 2, 5)) <= set(per_class_subset(src["y_train"], 4, 5))


def test_cifar100_uses_fine_labels(tmp_path):
    src = write_cifar100(tmp_path)
    ds = load_dataset("cifar100", root=str(tmp_path), val_fraction=0.1)
    assert ds.num_classes == 100 and ds.classes == src["fine_names"]
    assert (ds.mean, ds.std) == CIFAR100_STATS
    tr = read_stamp(ds.train.x)
    np.testing.assert_array_equal(ds.train.y, src["y_train"][tr])
    np.testing.assert_array_equal(ds.test.y, src["y_test"])
    np.testing.assert_array_equal(ds.test.x, src["x_test"])


def test_noise_reaches_train_and_val_never_test(tmp_path):
    write_cifar10(tmp_path, per_batch=200, n_test=200)
    ds = load_dataset("cifar10", root=str(tmp_path), val_fraction=0.2)
    noisy = apply_noise(ds, 0.4, "symmetric", seed=7)
    for s in ("train", "val"):
        split = getattr(noisy, s)
        assert split.y_noisy is not None
        assert split.flipped.mean() == pytest.approx(0.4, abs=0.01)
        np.testing.assert_array_equal(split.y, getattr(ds, s).y)   # clean labels kept
    assert noisy.test.y_noisy is None and not noisy.test.flipped.any()
    np.testing.assert_array_equal(noisy.test.labels, ds.test.y)


# --------------------------------------------------------------------------- Tiny-ImageNet

def _colour_class(x: np.ndarray, n_classes: int) -> np.ndarray:
    """Nearest class colour of each (flat-coloured) image."""
    means = x.reshape(len(x), x.shape[1], -1).mean(-1)
    if x.shape[1] == 1:
        means = np.repeat(means, 3, 1)
    cols = np.asarray([class_colour(c) for c in range(n_classes)], float)
    return np.abs(means[:, None, :] - cols[None]).sum(-1).argmin(1)


@pytest.mark.parametrize("refold", [False, True])
def test_tinyimagenet_tree(tmp_path, refold):
    src = write_tinyimagenet(tmp_path, refold_val=refold)
    for root in (tmp_path, src["base"]):   # the parent or tiny-imagenet-200/ itself
        ds = load_dataset("tinyimagenet", root=str(root), val_fraction=0.2, cache=False)
        assert ds.classes == src["classes"] and ds.num_classes == 3
        assert ds.train.x.shape[1:] == (3, 64, 64)   # the grayscale JPEG became RGB
        assert len(ds.train) + len(ds.val) == 15 and len(ds.test) == 9
        np.testing.assert_array_equal(ds.test.y, src["val_labels"])   # val serves as test
        for split in (ds.train, ds.val, ds.test):
            colour = _colour_class(split.x, 3)
            grey = split.x[:, 0].astype(int) == split.x[:, 2].astype(int)
            keep = ~grey.all((1, 2))   # the grayscale image has no class colour
            np.testing.assert_array_equal(colour[keep], split.y[keep])


def test_tinyimagenet_cache_round_trip(tmp_path):
    src = write_tinyimagenet(tmp_path)
    a = load_dataset("tinyimagenet", root=str(tmp_path), image_size=32)
    cached = sorted((src["base"] / ".filterkd_cache").glob("*.npy"))
    assert len(cached) == 2 and a.train.x.shape[1:] == (3, 32, 32)
    b = load_dataset("tinyimagenet", root=str(tmp_path), image_size=32)
    np.testing.assert_array_equal(a.train.x, b.train.x)
    np.testing.assert_array_equal(a.test.x, b.test.x)
    # A changed image changes the key, so the folder is decoded afresh.
    img = src["base"] / "val" / "images" / "val_0.JPEG"
    Image.fromarray(np.full((64, 64, 3), 255, np.uint8)).save(img, "JPEG")
    c = load_dataset("tinyimagenet", root=str(tmp_path), image_size=32)
    assert len(sorted((src["base"] / ".filterkd_cache").glob("*.npy"))) == 3
    assert c.test.x[0].min() > 240 and not np.array_equal(c.test.x, a.test.x)


# --------------------------------------------------------------------------- ImageFolder

def test_imagefolder_png_exact_pixels_sorted_order(tmp_path):
    src = write_imagefolder(tmp_path, classes=("zebra", "ant", "moth"), per_class=6)
    ds = load_dataset("imagefolder", root=str(tmp_path), val_fraction=0.25, cache=False)
    assert ds.classes == ["ant", "moth", "zebra"]
    arrays, labels = src["train"]
    ids = np.concatenate([read_stamp(ds.train.x), read_stamp(ds.val.x)])
    assert sorted(ids) == list(range(18)) and len(ds.val) == round(0.25 * 18)
    for split in (ds.train, ds.val):
        for x, y, i in zip(split.x, split.y, read_stamp(split.x)):
            np.testing.assert_array_equal(x, arrays[i].transpose(2, 0, 1))
            assert y == labels[i]
    np.testing.assert_array_equal(ds.test.y, src["test"][1])
    np.testing.assert_array_equal(ds.test.x, np.stack(src["test"][0]).transpose(0, 3, 1, 2))
    # Statistics are measured on the training split, in [0, 1] units.
    np.testing.assert_allclose(ds.mean, ds.train.x.mean((0, 2, 3)) / 255, rtol=1e-6)


def test_imagefolder_jpeg_matches_pil_and_own_val(tmp_path):
    write_imagefolder(tmp_path, per_class=4, splits=("train", "val", "test"), fmt="JPEG")
    ds = load_dataset("imagefolder", root=str(tmp_path), cache=False)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (12, 12, 12)   # own val/ used whole
    first = np.asarray(Image.open(tmp_path / "train" / "cat" / "cat_000.jpg").convert("RGB"))
    np.testing.assert_array_equal(ds.train.x[0], first.transpose(2, 0, 1))
    np.testing.assert_array_equal(_colour_class(ds.val.x, 3), ds.val.y)


def test_imagefolder_only_val_serves_as_test(tmp_path):
    write_imagefolder(tmp_path, per_class=5, splits=("train", "val"), fmt="JPEG")
    ds = load_dataset("imagefolder", root=str(tmp_path), val_fraction=0.2, cache=False)
    assert len(ds.test) == 15 and len(ds.train) + len(ds.val) == 15 and len(ds.val) == 3


def test_imagefolder_grayscale_stays_one_channel(tmp_path):
    for split in ("train", "test"):
        for c in ("a", "b"):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(np.full((12, 12), 10 * i, np.uint8)).save(
                    tmp_path / split / c / f"{i}.png")
    ds = load_dataset("imagefolder", root=str(tmp_path), val_fraction=0.5, cache=False)
    assert ds.train.x.shape[1:] == (1, 12, 12) and len(ds.mean) == 1


def test_digits():
    ds = load_dataset("digits")
    assert ds.train.x.shape[1:] == (1, 8, 8) and ds.train.x.dtype == np.uint8
    assert len(ds.train) + len(ds.val) + len(ds.test) == 1797 and ds.augment == "none"
    assert ds.train.x.max() == 255 and ds.num_classes == 10
    other = load_dataset("digits", split_seed=4, image_size=32)
    assert other.train.x.shape[1:] == (1, 32, 32)
    np.testing.assert_array_equal(other.test.y, ds.test.y)   # test never moves with split_seed


# --------------------------------------------------------------------------- real data

@pytest.mark.skipif(not (SHARED_CIFAR10 / "train").is_dir(), reason="../shared/data/cifar10 absent")
def test_real_cifar10_jpeg_copy_subset():
    ds = load_dataset("imagefolder", root=str(SHARED_CIFAR10), subset_per_class=20,
                      test_subset_per_class=5, val_fraction=0.1, cache=False)
    assert ds.classes == CIFAR10_NAMES
    assert ds.train.x.shape == (180, 3, 32, 32) and len(ds.val) == 20
    assert ds.test.x.shape == (50, 3, 32, 32)
    assert np.bincount(ds.test.y).tolist() == [5] * 10
    assert np.bincount(np.concatenate([ds.train.y, ds.val.y])).tolist() == [20] * 10
    assert 0.3 < ds.train.x.mean() / 255 < 0.7 and ds.train.x.std() > 20   # real photos


# --------------------------------------------------------------------------- bad input

def _raises(match: str, fn, *args, **kw):
    with pytest.raises(InputError, match=match) as e:
        fn(*args, **kw)
    assert "\n" not in str(e.value)
    return str(e.value)


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "tinyimagenet", "imagefolder"])
def test_missing_root(tmp_path, name):
    msg = _raises("root", load_dataset, name, root=str(tmp_path / "nope"))
    assert "nope" in msg
    _raises("root", load_dataset, name)   # no root at all


def test_cifar_missing_batch_and_corrupt_pickle(tmp_path):
    src = write_cifar10(tmp_path)
    (src["folder"] / "data_batch_3").unlink()
    _raises("data_batch_3: missing", load_dataset, "cifar10", root=str(tmp_path))
    (src["folder"] / "data_batch_3").write_bytes(b"not a pickle at all")
    _raises("data_batch_3: not a readable CIFAR pickle", load_dataset, "cifar10", root=str(tmp_path))
    with open(src["folder"] / "data_batch_3", "wb") as f:
        pickle.dump({"data": np.zeros((5, 100), np.uint8), "labels": [0] * 5}, f)
    _raises(r"data_batch_3: expected data \[n, 3072\]", load_dataset, "cifar10", root=str(tmp_path))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_image(tmp_path, fmt):
    write_imagefolder(tmp_path, per_class=3, fmt=fmt)
    ext = "jpg" if fmt == "JPEG" else "png"
    bad = tmp_path / "train" / "dog" / f"dog_001.{ext}"
    bad.write_bytes(bad.read_bytes()[: len(bad.read_bytes()) // 2])
    msg = _raises("truncated", load_dataset, "imagefolder", root=str(tmp_path), cache=False)
    assert str(bad) in msg


def test_corrupt_image(tmp_path):
    write_imagefolder(tmp_path, per_class=3)
    bad = tmp_path / "test" / "emu" / "emu_002.png"
    bad.write_bytes(b"\x89PNG garbage")
    msg = _raises("unreadable", load_dataset, "imagefolder", root=str(tmp_path), cache=False)
    assert str(bad) in msg


def test_empty_class_folder(tmp_path):
    write_imagefolder(tmp_path, per_class=3)
    (tmp_path / "train" / "yak").mkdir()
    msg = _raises("empty class folder", load_dataset, "imagefolder", root=str(tmp_path))
    assert str(tmp_path / "train" / "yak") in msg


def test_class_mismatch(tmp_path):
    write_imagefolder(tmp_path, per_class=3)
    (tmp_path / "test" / "dog").rename(tmp_path / "test" / "wolf")
    msg = _raises("classes differ", load_dataset, "imagefolder", root=str(tmp_path))
    assert "'dog'" in msg and "'wolf'" in msg and str(tmp_path / "test") in msg


def test_imagefolder_layout_errors(tmp_path):
    write_imagefolder(tmp_path, per_class=3, splits=("train",))
    _raises("no test/ or val/", load_dataset, "imagefolder", root=str(tmp_path))
    _raises("train: not found", load_dataset, "imagefolder", root=str(tmp_path / "train"))


def test_mixed_sizes_need_image_size(tmp_path):
    write_imagefolder(tmp_path, per_class=3)
    Image.fromarray(np.zeros((20, 24, 3), np.uint8)).save(tmp_path / "train" / "cat" / "zz.png")
    _raises("differ in size.*image_size", load_dataset, "imagefolder", root=str(tmp_path),
            cache=False)
    ds = load_dataset("imagefolder", root=str(tmp_path), image_size=16, cache=False)
    assert ds.train.x.shape[1:] == (3, 16, 16) and ds.test.x.shape[1:] == (3, 16, 16)


def test_tinyimagenet_errors(tmp_path):
    src = write_tinyimagenet(tmp_path)
    ann = src["base"] / "val" / "val_annotations.txt"
    text = ann.read_text()
    ann.write_text(text.replace("n03", "n99", 1))
    _raises("val_annotations.txt:.*n99", load_dataset, "tinyimagenet", root=str(tmp_path))
    ann.write_text(text)
    (src["base"] / "wnids.txt").write_text("n01\nn02\nn03\nn04\n")
    _raises("differ from wnids.txt.*n04", load_dataset, "tinyimagenet", root=str(tmp_path))


@pytest.mark.parametrize("option,value,match", [
    ("val_fraction", 0.0, "val_fraction: 0 leaves no validation"),
    ("val_fraction", 1.5, "val_fraction: 1.5 is outside"),
    ("subset_per_class", 0, "subset_per_class: 0 must be a positive integer"),
    ("image_size", 2.5, "image_size: 2.5"),
    ("augment", "mixup", "augment: 'mixup'"),
    ("split_seed", "one", "split_seed: 'one' must be a non-negative integer"),
])
def test_bad_options(tmp_path, option, value, match):
    write_cifar10(tmp_path)
    _raises(match, load_dataset, "cifar10", root=str(tmp_path), **{option: value})


def test_spec_rejects_unknown_loader_option():
    raw = {"name": "x", "data": {"name": "cifar10", "options": {"roots": "data"}}}
    with pytest.raises(InputError, match="roots"):
        validate_spec(raw)
