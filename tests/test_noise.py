"""Label noise: exact counts where the kind promises them, statistics where it samples, and
determinism in its own seed. Statistical tolerances are Z standard errors of the binomial."""
import numpy as np
import pytest

from filterkd_ray import InputError
from filterkd_ray.data import load_dataset
from filterkd_ray.data.noise import apply_noise, corrupt_labels

Z = 5.0


def labels(n=20000, k=10, seed=0):
    return np.random.default_rng(seed).integers(0, k, n)


def within(count, n, p):
    return abs(count - n * p) < Z * np.sqrt(n * p * (1 - p))


@pytest.mark.parametrize("k", [2, 3, 10])
@pytest.mark.parametrize("rate", [0.0, 0.1, 0.37, 0.8])
def test_symmetric_flips_exactly_round_rate_n_to_other_classes(k, rate):
    y = labels(n=5001, k=k)
    noisy = corrupt_labels(y, k, rate, "symmetric", seed=1)
    assert noisy.dtype == np.int64 and noisy.shape == y.shape
    assert (noisy != y).sum() == round(rate * len(y))
    assert noisy.min() >= 0 and noisy.max() < k


def test_symmetric_new_class_uniform_over_the_others():
    k, n = 4, 40000
    y = labels(n, k)
    noisy = corrupt_labels(y, k, 0.5, "symmetric", seed=2)
    flipped = noisy != y
    for c in range(k):
        src = flipped & (y == c)
        m = src.sum()
        for d in range(k):
            if d != c:
                assert within((noisy[src] == d).sum(), m, 1 / (k - 1))


@pytest.mark.parametrize("k, rate", [(3, 0.3), (10, 0.6)])
def test_symmetric_any_flip_rate_is_rate_times_one_minus_one_over_k(k, rate):
    y = labels(40000, k)
    noisy = corrupt_labels(y, k, rate, "symmetric_any", seed=3)
    assert within((noisy != y).sum(), len(y), rate * (1 - 1 / k))


def test_asymmetric_cifar10_pairs():
    # Written out independently of the module: class names in CIFAR-10 order.
    names = "airplane automobile bird cat deer dog frog horse ship truck".split()
    pairs = {"truck": "automobile", "bird": "airplane", "deer": "horse", "cat": "dog",
             "dog": "cat"}
    expected = {names.index(s): names.index(d) for s, d in pairs.items()}
    y = labels(40000, 10)
    rate = 0.4
    noisy = corrupt_labels(y, 10, rate, "asymmetric", seed=4)
    changed = noisy != y
    assert changed.any()
    for src, dst in zip(y[changed], noisy[changed]):
        assert expected[int(src)] == dst
    for c in range(10):
        in_c = y == c
        if c in expected:   # a fraction `rate` of each paired class flips (sampling error only)
            assert within(changed[in_c].sum(), in_c.sum(), rate)
        else:
            assert not changed[in_c].any()


@pytest.mark.parametrize("k", [2, 3, 5, 100])
def test_asymmetric_other_k_is_cyclic_and_exact(k):
    y = labels(3000, k)
    noisy = corrupt_labels(y, k, 0.25, "asymmetric", seed=5)
    changed = noisy != y
    assert changed.sum() == round(0.25 * 3000)
    assert np.array_equal(noisy[changed], (y[changed] + 1) % k)


def test_matrix_follows_the_transition_matrix():
    k, n = 4, 60000
    rng = np.random.default_rng(6)
    m = rng.dirichlet(np.ones(k), size=k)
    m[0] = [0.0, 0.5, 0.5, 0.0]          # zero entries are never drawn
    y = labels(n, k)
    noisy = corrupt_labels(y, k, 0.0, "matrix", seed=7, matrix=m.tolist())
    for c in range(k):
        src = y == c
        for d in range(k):
            cnt = (noisy[src] == d).sum()
            if m[c, d] == 0:
                assert cnt == 0
            else:
                assert within(cnt, src.sum(), m[c, d]), (c, d, cnt / src.sum(), m[c, d])
    assert np.array_equal(corrupt_labels(y, k, 0.0, "matrix", 1, np.eye(k)), y)


@pytest.mark.parametrize("kind", ["symmetric", "symmetric_any", "asymmetric", "matrix"])
def test_seeded_and_input_untouched(kind):
    k = 10
    y = labels(2000, k)
    y.flags.writeable = False           # read-only, as from the object store
    before = y.copy()
    matrix = np.full((k, k), 1 / k) if kind == "matrix" else None
    a = corrupt_labels(y, k, 0.3, kind, seed=11, matrix=matrix)
    b = corrupt_labels(y, k, 0.3, kind, seed=11, matrix=matrix)
    c = corrupt_labels(y, k, 0.3, kind, seed=12, matrix=matrix)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.array_equal(y, before)


@pytest.mark.parametrize("args, word", [
    ({"kind": "gaussian"}, "kind"), ({"rate": 1.0}, "rate"), ({"rate": -0.1}, "rate"),
    ({"y": np.zeros((5, 2), int)}, "labels"), ({"y": np.array([0, 1, 3])}, "labels"),
    ({"kind": "matrix"}, "matrix"), ({"kind": "matrix", "matrix": np.eye(2)}, "matrix"),
    ({"kind": "matrix", "matrix": [[0.5, 0.6, 0], [0, 1, 0], [0, 0, 1]]}, "matrix"),
])
def test_bad_arguments_name_the_argument(args, word):
    full = {"y": np.array([0, 1, 2]), "num_classes": 3, "rate": 0.2, "kind": "symmetric",
            **args}
    with pytest.raises(InputError, match=word):
        corrupt_labels(**full)


def test_apply_noise_touches_train_and_val_only():
    ds = load_dataset("toy", n_train=2000, n_val=1000, n_test=500, seed=0)
    clean = {s: getattr(ds, s).y.copy() for s in ("train", "val", "test")}
    noisy = apply_noise(ds, 0.3, "symmetric", seed=9)
    assert noisy.test.y_noisy is None and np.array_equal(noisy.test.labels, clean["test"])
    assert (noisy.train.flipped.sum(), noisy.val.flipped.sum()) == (600, 300)
    for s in ("train", "val", "test"):
        assert np.array_equal(getattr(noisy, s).y, clean[s])     # clean labels kept
        assert getattr(ds, s).y_noisy is None                     # the input is not modified
        assert np.array_equal(getattr(noisy, s).x, getattr(ds, s).x)
    assert np.array_equal(noisy.train.labels, noisy.train.y_noisy)
    again = apply_noise(ds, 0.3, "symmetric", seed=9)
    assert np.array_equal(again.train.y_noisy, noisy.train.y_noisy)
    assert np.array_equal(again.val.y_noisy, noisy.val.y_noisy)
    other = apply_noise(ds, 0.3, "symmetric", seed=10)
    assert not np.array_equal(other.train.y_noisy, noisy.train.y_noisy)
