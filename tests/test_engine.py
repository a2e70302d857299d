"""engine.fit's learning path: every training sample gets exactly its own prediction once per
epoch, keyed by sample index; recording changes no training result; same seeds, same path.

The keying test freezes the weights (lr = 1e-30 leaves float32 weights bit-identical), so the
prediction for sample i is the same function of x_i in every step and can be recomputed
afterwards. Storing rows by batch position would put x_{order[pos]}'s prediction in row pos:
since the data order is shuffled and predictions differ between samples, that fails.
"""
import numpy as np
import pytest
import torch
import torch.nn as nn

from filterkd_ray import InputError
from filterkd_ray.data import Dataset, Split, load_dataset
from filterkd_ray.data.noise import apply_noise
from filterkd_ray.engine import Seeds, fit, load_model, to_device
from filterkd_ray.models import MODELS, create_model, register_model
from filterkd_ray.spec import TrainSpec

F16_TOL = 2e-3       # float16 has 11 significant bits: a probability row sums to 1 +- ~1e-3


def toy(seed=0, n_train=300):
    seeds = Seeds.from_base(seed)
    ds = load_dataset("toy", n_train=n_train, n_val=100, n_test=100, seed=seed)
    return apply_noise(ds, 0.3, "symmetric", seeds.noise), seeds


def images(n=90, augment="crop_flip", seed=0):
    """A tiny uint8 image dataset [n, 3, 8, 8] with normalisation, like a real image loader's."""
    rng = np.random.default_rng(seed)

    def split(m):
        return Split(x=rng.integers(0, 256, (m, 3, 8, 8), dtype=np.uint8),
                     y=rng.integers(0, 4, m).astype(np.int64))
    return Dataset(name="tiny_images", num_classes=4, train=split(n), val=split(20),
                   test=split(20), mean=(0.5, 0.4, 0.3), std=(0.25, 0.2, 0.3), augment=augment)


class TinyBNNet(nn.Module):
    """Conv + BatchNorm: BN is where a train-mode forward could change state behind our back."""

    def __init__(self, num_classes, input_shape):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(input_shape[0], 8, 3, padding=1), nn.BatchNorm2d(8),
                                 nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                 nn.Linear(8, num_classes))

    def forward(self, x):
        return self.net(x)


@pytest.fixture
def bn_model():
    """A test-only model name, removed again so other tests' view of the registry is unchanged."""
    name = "test_tiny_bn_net"
    register_model(name)(TinyBNNet)
    yield name
    MODELS.pop(name, None)


def strip_timing(history):
    return [{k: v for k, v in h.items() if k != "epoch_s"} for h in history]


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def assert_valid_path(path, epochs, n, k):
    assert path.shape == (epochs, n, k) and path.dtype == np.float16
    p = path.astype(np.float32)
    assert np.isfinite(p).all() and (p >= 0).all()
    # A row never written stays all-zero: its sum would be 0, not 1.
    np.testing.assert_allclose(p.sum(-1), 1.0, atol=F16_TOL)


@pytest.mark.parametrize("batch_size, drop_last", [(32, False), (32, True), (7, True),
                                                   (300, False), (1000, True)])
def test_every_sample_recorded_once_per_epoch(batch_size, drop_last):
    ds, seeds = toy()
    cfg = TrainSpec(model="mlp", epochs=3, batch_size=batch_size, drop_last=drop_last)
    r = fit(to_device(ds, "cpu"), cfg, seeds, record_path=True)
    assert_valid_path(r.path, 3, 300, 3)
    assert len(r.history) == 3


@pytest.mark.parametrize("data, batch_size, drop_last", [
    ("toy", 32, False), ("toy", 32, True), ("toy", 7, False), ("images", 16, True)])
def test_path_row_i_is_sample_i_prediction(data, batch_size, drop_last):
    if data == "toy":
        ds, seeds = toy()
    else:   # no augmentation, so the recorded input is exactly the normalised image
        ds, seeds = images(augment="none"), Seeds.from_base(3)
    dd = to_device(ds, "cpu")
    cfg = TrainSpec(model="mlp", epochs=3, batch_size=batch_size, drop_last=drop_last,
                    lr=1e-30, schedule="constant")
    r = fit(dd, cfg, seeds, record_path=True)
    # The weights did not move, so every step used this very function.
    assert_same_state(r.last_state, r.best_state)
    model = load_model("mlp", r.last_state, dd.num_classes, dd.input_shape)
    with torch.no_grad():
        preds = torch.softmax(model(dd.prepare(dd.train_x)), -1).numpy()
    for e in range(3):
        np.testing.assert_allclose(r.path[e].astype(np.float32), preds, atol=F16_TOL, rtol=0)
    # The test has power: rows of other samples differ by far more than the tolerance.
    perm = np.random.default_rng(0).permutation(len(preds))
    assert np.abs(preds[perm] - preds).max(1).mean() > 5 * F16_TOL


@pytest.mark.parametrize("drop_last", [False, True])
def test_recording_changes_no_training_result(drop_last):
    ds, seeds = toy()
    dd = to_device(ds, "cpu")
    cfg = TrainSpec(model="mlp", epochs=3, batch_size=32, drop_last=drop_last)
    on = fit(dd, cfg, seeds, record_path=True)
    off = fit(dd, cfg, seeds, record_path=False)
    assert off.path is None
    assert_same_state(on.last_state, off.last_state)
    assert_same_state(on.best_state, off.best_state)
    assert on.best_epoch == off.best_epoch
    assert strip_timing(on.history) == strip_timing(off.history)


def test_same_seeds_same_path_other_seed_differs():
    ds, seeds = toy()
    dd = to_device(ds, "cpu")
    cfg = TrainSpec(model="mlp", epochs=2, batch_size=32)
    a = fit(dd, cfg, seeds, record_path=True)
    b = fit(dd, cfg, seeds, record_path=True)
    assert np.array_equal(a.path, b.path)
    assert strip_timing(a.history) == strip_timing(b.history)
    for other in (Seeds(seeds.noise, seeds.init + 1, seeds.order, seeds.augment),
                  Seeds(seeds.noise, seeds.init, seeds.order + 1, seeds.augment)):
        assert not np.array_equal(fit(dd, cfg, other, record_path=True).path, a.path)


def test_image_path_with_augmentation(bn_model):
    ds = images(n=90, augment="crop_flip")
    dd = to_device(ds, "cpu")
    seeds = Seeds.from_base(1)
    for model in ("mlp", bn_model):
        # 90 = 5 * 16 + 10: drop_last leaves a tail that is recorded but not trained on.
        cfg = TrainSpec(model=model, epochs=2, batch_size=16, drop_last=True)
        on = fit(dd, cfg, seeds, record_path=True)
        off = fit(dd, cfg, seeds, record_path=False)
        again = fit(dd, cfg, seeds, record_path=True)
        assert_valid_path(on.path, 2, 90, 4)
        assert np.array_equal(on.path, again.path)
        # Includes BatchNorm's running stats and batch counter: the tail forward is invisible.
        assert_same_state(on.last_state, off.last_state)
        assert strip_timing(on.history) == strip_timing(off.history)
    # Augmentation is on: the recorded (augmented, train-mode) prediction is not the plain one.
    frozen = fit(dd, TrainSpec(model="mlp", epochs=1, batch_size=16, lr=1e-30), seeds,
                 record_path=True)
    plain = load_model("mlp", frozen.last_state, 4, dd.input_shape)
    with torch.no_grad():
        clean = torch.softmax(plain(dd.prepare(dd.train_x)), -1).numpy()
    assert np.abs(frozen.path[0].astype(np.float32) - clean).max() > 5 * F16_TOL


def test_resume_replays_the_same_run():
    ds, seeds = toy()
    dd = to_device(ds, "cpu")
    cfg = TrainSpec(model="mlp", epochs=3, batch_size=32)
    saved = {}

    def on_epoch(epoch, metrics, make_checkpoint):
        if epoch == 1:
            saved["ckpt"] = make_checkpoint()   # kept in memory, not saved: must not alias
    full = fit(dd, cfg, seeds, record_path=True, on_epoch=on_epoch)
    resumed = fit(dd, cfg, seeds, record_path=True, resume=saved["ckpt"])
    assert_same_state(full.last_state, resumed.last_state)
    assert np.array_equal(full.path, resumed.path)
    assert strip_timing(full.history) == strip_timing(resumed.history)


def test_unknown_model_names_the_argument():
    with pytest.raises(InputError, match="model.*'resnet9000'"):
        create_model("resnet9000", 10, (3, 32, 32))


class BN1dMLP(nn.Module):
    """BatchNorm1d raises on a one-sample batch in train mode: the drop_last tail's hazard."""

    def __init__(self, num_classes, input_shape):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(input_shape[0], 16), nn.BatchNorm1d(16), nn.ReLU(),
                                 nn.Linear(16, num_classes))

    def forward(self, x):
        return self.net(x)


def test_one_sample_tail_through_batchnorm1d():
    """301 samples, batch 50, drop_last: the 1-sample tail is recorded without error, training
    is untouched, and the tail's row is its own prediction (not its neighbour's)."""
    name = "test_bn1d_mlp"
    register_model(name)(BN1dMLP)
    try:
        ds, seeds = toy(n_train=301)
        cfg = TrainSpec(model=name, epochs=2, batch_size=50, drop_last=True)
        with_path = fit(to_device(ds, "cpu"), cfg, seeds, record_path=True)
        without = fit(to_device(ds, "cpu"), cfg, seeds)
        assert_valid_path(with_path.path, 2, 301, 3)
        assert_same_state(with_path.last_state, without.last_state)
        # The tail sample's row differs from the row of the sample forwarded beside it.
        from filterkd_ray.engine import _generator
        order = torch.randperm(301, generator=_generator(seeds.order, 1, 0, "cpu"))
        tail, neighbour = int(order[-1]), int(order[-2])
        assert not np.array_equal(with_path.path[1, tail], with_path.path[1, neighbour])
    finally:
        MODELS.pop(name, None)
