"""Metrics against independent computations: ECE against torchmetrics'
`MulticlassCalibrationError(norm="l1", n_bins=15)` and against a numpy loop over bins written
from the definition; accuracy, NLL and label quality against direct computation."""
import numpy as np
import pytest
import torch

from filterkd_ray.metrics import accuracy, classification_metrics, ece, label_quality, nll

try:   # in the `test` extra; without it the numpy reference still checks ECE
    import torchmetrics
except ImportError:
    torchmetrics = None


def random_probs(n, k, seed, sharp=1.0):
    g = torch.Generator().manual_seed(seed)
    p = torch.softmax(torch.randn(n, k, generator=g) * sharp, -1)
    y = torch.randint(0, k, (n,), generator=g)
    return p, y


def boundary_probs(k=3, n_bins=15, seed=0):
    """Confidences exactly on the bin edges j / n_bins (the float32 values torchmetrics
    compares with) and exactly 1.0 (a saturated softmax), mixed with confidences inside the
    neighbouring bins, with random correctness so that moving an edge sample to the other
    side changes both bins' gaps."""
    rng = np.random.default_rng(seed)
    edges = torch.linspace(0, 1, n_bins + 1).tolist()
    confs = [c for c in edges if c > 1 / k] * 8
    confs += [c + d for c in edges for d in (-0.01, 0.01) if 1 / k < c + d < 1] * 8
    confs = np.array(confs, np.float32)
    probs = np.empty((len(confs), k), np.float32)
    probs[:, 0] = confs
    probs[:, 1:] = ((1 - confs) / (k - 1))[:, None]
    y = np.where(rng.random(len(confs)) < 0.5, 0, rng.integers(1, k, len(confs)))
    return torch.from_numpy(probs), torch.from_numpy(y)


def numpy_ece(probs, y, n_bins=15):
    """Top-label ECE from the definition, with torchmetrics' bins: [j/n, (j+1)/n) for
    j = 0..n-1 and a last bin holding confidence exactly 1."""
    p = probs.numpy()
    conf, pred = p.max(1), p.argmax(1)
    correct = (pred == y.numpy()).astype(np.float64)
    # torch's float32 linspace, which is what torchmetrics compares with; it is 1 ulp away
    # from np.linspace(..., dtype=float32) at some edges, which matters for conf on an edge.
    edges = torch.linspace(0, 1, n_bins + 1).numpy()
    total = 0.0
    for j in range(n_bins + 1):
        lo = edges[j]
        hi = edges[j + 1] if j < n_bins else np.inf
        inside = (conf >= lo) & (conf < hi)
        if inside.any():
            total += inside.sum() / len(conf) * abs(correct[inside].mean()
                                                    - conf[inside].astype(np.float64).mean())
    return total


def assert_ece_matches_references(probs, y):
    """Equal to the numpy definition, and to torchmetrics where it is installed."""
    got = ece(probs, y)
    assert got == pytest.approx(numpy_ece(probs, y), abs=1e-6)
    if torchmetrics is not None:
        metric = torchmetrics.classification.MulticlassCalibrationError(
            num_classes=probs.shape[1], n_bins=15, norm="l1")
        assert got == pytest.approx(metric(probs, y).item(), abs=1e-6)
    return got


@pytest.mark.parametrize("seed, n, k, sharp", [(0, 1000, 3, 1.0), (1, 5000, 10, 3.0),
                                               (2, 200, 2, 0.3), (3, 3000, 100, 5.0)])
def test_ece_equals_torchmetrics_and_the_definition(seed, n, k, sharp):
    p, y = random_probs(n, k, seed, sharp)
    assert 0 < assert_ece_matches_references(p, y) < 1


def test_ece_on_bin_edges_and_saturated_predictions():
    p, y = boundary_probs()
    # A confident, mostly wrong model whose softmax saturates at exactly 1.0 in float32.
    sat = torch.zeros(60, 3)
    sat[:, 0] = 1.0
    sat_y = torch.cat([torch.zeros(20, dtype=torch.long), torch.ones(40, dtype=torch.long)])
    mild, mild_y = random_probs(60, 3, 5)
    mild_y = mild.argmax(1)                         # under-confident: always right
    for probs, labels in ((p, y), (torch.cat([sat, mild]), torch.cat([sat_y, mild_y]))):
        assert_ece_matches_references(probs, labels)


def test_accuracy_nll_and_the_metrics_dict():
    p, y = random_probs(500, 7, 4, 2.0)
    pn, yn = p.numpy().astype(np.float64), y.numpy()
    assert accuracy(p, y) == pytest.approx(np.mean(pn.argmax(1) == yn))
    assert nll(p, y) == pytest.approx(-np.mean(np.log(pn[np.arange(500), yn])), rel=1e-6)
    m = classification_metrics(p, y, "val")
    assert set(m) == {"val_acc", "val_nll", "val_ece"}
    assert m["val_ece"] == assert_ece_matches_references(p, y)
    # A zero probability on the true class gives a large but finite NLL (clamped at 1e-12).
    hard = torch.tensor([[1.0, 0.0]])
    assert nll(hard, torch.tensor([1])) == pytest.approx(-np.log(1e-12))


def test_label_quality_against_direct_computation():
    rng = np.random.default_rng(0)
    n, k = 400, 4
    p_star = rng.dirichlet(np.ones(k), n).astype(np.float32)
    table = rng.dirichlet(np.ones(k), n).astype(np.float32)
    y = rng.integers(0, k, n)
    y_noisy = np.where(rng.random(n) < 0.3, (y + 1) % k, y)
    q = label_quality(table, y, y_noisy, p_star)
    dist = np.mean([np.sqrt(((table[i] - p_star[i]) ** 2).sum()) for i in range(n)])
    flipped = [i for i in range(n) if y_noisy[i] != y[i]]
    assert q["label_dist_pstar"] == pytest.approx(dist, rel=1e-5)
    assert q["label_recovery"] == pytest.approx(
        np.mean([table[i].argmax() == y[i] for i in flipped]))
    assert q["label_clean_acc"] == pytest.approx(np.mean(table.argmax(1) == y))
    onehot = np.eye(k, dtype=np.float32)[y_noisy]
    assert label_quality(onehot, y, y_noisy, p_star)["label_recovery"] == 0.0
    clean = label_quality(table, y, y, None)
    assert np.isnan(clean["label_dist_pstar"]) and np.isnan(clean["label_recovery"])
