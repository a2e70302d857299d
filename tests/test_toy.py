"""The toy Gaussian mixture follows the paper's generative process, and p* is exact.

p* is checked against an independent computation (scipy's multivariate normal densities,
normalised); the sampling process (class balance, per-class mean and variance, isotropy)
against its population values with tolerances of several standard errors.
"""
import numpy as np
import pytest
from scipy.special import softmax
from scipy.stats import multivariate_normal

from filterkd_ray import InputError
from filterkd_ray.data import load_dataset
from filterkd_ray.data.toy import load_toy, make_toy

Z = 5.0  # tolerance in standard errors: a false alarm per check has probability < 1e-6


def test_p_star_equals_normalised_gaussian_densities():
    toy = make_toy(2000, num_classes=3, dim=30, variance=6.0, seed=1)
    # p*(k|x) = N(x; mu_k, s2 I) / sum_j N(x; mu_j, s2 I) with a uniform prior, in log space.
    logpdf = np.stack([multivariate_normal(mean=m.astype(np.float64), cov=6.0).logpdf(toy.x)
                       for m in toy.means], axis=1)
    expected = softmax(logpdf, axis=1)
    assert toy.p_star.shape == (2000, 3) and toy.p_star.dtype == np.float32
    np.testing.assert_allclose(toy.p_star, expected, atol=2e-6, rtol=0)
    np.testing.assert_allclose(toy.p_star.sum(1), 1.0, atol=1e-5)
    # The Bayes rule is not trivial here (the paper's setting has Bayes accuracy ~0.84).
    bayes_acc = (expected.argmax(1) == toy.y).mean()
    assert 0.6 < bayes_acc < 0.95


def test_p_star_other_shapes_and_variance():
    toy = make_toy(500, num_classes=5, dim=4, variance=0.5, seed=3)
    sq = ((toy.x[:, None, :].astype(np.float64) - toy.means[None]) ** 2).sum(-1)
    np.testing.assert_allclose(toy.p_star, softmax(-sq / (2 * 0.5), axis=1), atol=2e-6)


def test_means_uniform_on_minus_one_zero_one():
    toy = make_toy(10, num_classes=50, dim=30, seed=0)
    assert toy.means.shape == (50, 30)
    vals, counts = np.unique(toy.means, return_counts=True)
    assert vals.tolist() == [-1.0, 0.0, 1.0]
    n = toy.means.size
    se = np.sqrt(n * (1 / 3) * (2 / 3))
    assert np.all(np.abs(counts - n / 3) < Z * se), counts


def test_class_balance_and_per_class_moments():
    n, k, d, var = 30000, 3, 30, 6.0
    toy = make_toy(n, num_classes=k, dim=d, variance=var, seed=7)
    counts = np.bincount(toy.y, minlength=k)
    assert np.all(np.abs(counts - n / k) < Z * np.sqrt(n * (1 / k) * (1 - 1 / k))), counts
    for c in range(k):
        xc = toy.x[toy.y == c].astype(np.float64)
        nc = len(xc)
        # Mean of each coordinate: standard error sqrt(var / n_c).
        z_mean = (xc.mean(0) - toy.means[c]) / np.sqrt(var / nc)
        assert np.abs(z_mean).max() < Z, z_mean
        # Sample variance of a Gaussian coordinate: standard error var * sqrt(2 / (n_c - 1)).
        z_var = (xc.var(0, ddof=1) - var) / (var * np.sqrt(2 / (nc - 1)))
        assert np.abs(z_var).max() < Z, z_var
    # Isotropic: the residuals' off-diagonal covariances are ~0 (standard error var / sqrt(n)).
    r = toy.x.astype(np.float64) - toy.means[toy.y]
    cov = np.cov(r, rowvar=False)
    off = cov[~np.eye(d, dtype=bool)]
    assert np.abs(off).max() < Z * var / np.sqrt(n)


def test_seeded_and_registered_loader_cuts_in_order():
    a, b, c = make_toy(100, seed=4), make_toy(100, seed=4), make_toy(100, seed=5)
    assert np.array_equal(a.x, b.x) and np.array_equal(a.y, b.y)
    assert not np.array_equal(a.x, c.x)
    ds = load_dataset("toy", n_train=50, n_val=30, n_test=20, seed=4)
    full = make_toy(100, seed=4)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (50, 30, 20)
    assert ds.num_classes == 3 and ds.input_shape == (30,) and not ds.is_image
    for split, (lo, hi) in zip((ds.train, ds.val, ds.test), ((0, 50), (50, 80), (80, 100))):
        assert np.array_equal(split.x, full.x[lo:hi])
        assert np.array_equal(split.y, full.y[lo:hi])
        assert np.array_equal(split.p_star, full.p_star[lo:hi])
        assert split.y.dtype == np.int64 and split.x.dtype == np.float32
        assert split.y_noisy is None and not split.flipped.any()


@pytest.mark.parametrize("kwargs, word", [({"n": 0}, "n="), ({"num_classes": 1}, "num_classes"),
                                          ({"dim": 0}, "dim"), ({"variance": 0.0}, "variance")])
def test_bad_arguments_raise_input_error(kwargs, word):
    args = {"n": 10, **kwargs}
    with pytest.raises(InputError, match=word):
        make_toy(**args)


def test_unknown_dataset_and_bad_loader_options_raise_input_error():
    with pytest.raises(InputError, match="data.name"):
        load_dataset("no_such_dataset")
    with pytest.raises(InputError, match="variance"):
        load_toy(n_train=5, n_val=5, n_test=5, variance=-1.0)
