"""The prediction-memory family (family.py), real label-noise files (data/noise_file.py) and
the path modes (pathmodes.py).

Update-rule tests drive each Target's hooks by hand in the order engine.fit calls them
(start_epoch, batch, loss + regularizer, observe), with logits = log p so that softmax gives
back the chosen p exactly; every expected number is written out as hand arithmetic of the
paper's formula. Engine tests train on the toy problem for a few epochs.
"""
import math
import os

import numpy as np
import pytest
import torch

from filterkd_ray import InputError
from filterkd_ray.data import load_dataset
from filterkd_ray.data.noise import apply_noise
from filterkd_ray.data.noise_file import read_label_file
from filterkd_ray.engine import Seeds, fit, to_device
from filterkd_ray.labels import METHODS, build_target, filter_path
from filterkd_ray.losses import distill_loss
from filterkd_ray.pathmodes import (FilterBank, dense_nbytes, dense_row,
                                    filter_topk, topk_nbytes, topk_path)
from filterkd_ray.spec import DEFAULT_SPACE, TrainSpec, load_spec, validate_spec

try:
    from image_fixtures import read_stamp, write_cifar10
except ImportError:   # tests/ imported as a package
    from tests.image_fixtures import read_stamp, write_cifar10

FAMILY_HP = {
    "temporal_ensembling": {"ema_rate": 0.4, "temperature": 1.0, "distill_weight": 0.8},
    "ps_kd": {"pskd_alpha": 0.8},
    "sat": {"ema_rate": 0.1, "start_epoch": 2},
    "elr": {"ema_rate": 0.3, "elr_lambda": 3.0},
}


def L(*rows):
    """Logits whose softmax is exactly the given probability rows."""
    return torch.tensor(rows, dtype=torch.float32).log()


def idx(*i):
    return torch.tensor(i, dtype=torch.long)


def close(a, b, tol=1e-6):
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), atol=tol,
                               rtol=0)


def target(method, y, hp, k=2):
    return build_target(method, hp, np.asarray(y), k, None, None, "cpu")


def engine_loss(t, logits, y, ix):
    """The loss exactly as engine.fit forms it."""
    tgt = t.batch(ix, None)
    loss = distill_loss(logits, torch.as_tensor(y)[ix], tgt, t.temperature, t.weight)
    if t.regularizer is not None:
        loss = loss + t.regularizer(logits, ix)
    return loss


# --------------------------------------------------------------------------- registry

def test_family_registered_without_teacher_and_with_search_space():
    for m, hp in FAMILY_HP.items():
        assert m in METHODS and not METHODS[m].needs_teacher
        assert set(METHODS[m].params) == set(hp) == set(DEFAULT_SPACE[m])


# --------------------------------------------------------------------------- temporal ensembling

def test_temporal_ensembling_epochwise_bias_corrected_ensemble():
    # Laine & Aila: Z <- alpha Z + (1 - alpha) z at each epoch's end; target Z / (1 - alpha^t).
    # Here a = ema_rate = 1 - alpha = 0.5.
    t = target("temporal_ensembling", [0, 1], {"ema_rate": 0.5, "temperature": 1.0,
                                               "distill_weight": 0.7})
    t.start_epoch(0)
    assert t.weight == 0.0                                   # no ensemble yet: plain CE
    close(t.batch(idx(0, 1), None).exp(), [[1, 0], [0, 1]])  # (label fallback, unused)
    t.observe(idx(1, 0), L([0.2, 0.8], [0.5, 0.5]), 0)      # sample 1: [0.2, 0.8]; 0: [.5, .5]
    # Accumulated, not used, until the epoch ends.
    close(t.batch(idx(0), None).exp(), [[1, 0]])
    t.start_epoch(1)
    assert t.weight == 0.7
    # t = 1: Z = 0.5 z, bias-corrected: 0.5 z / (1 - 0.5) = z.
    close(t.batch(idx(0, 1), None).exp(), [[0.5, 0.5], [0.2, 0.8]])
    t.observe(idx(0), L([0.8, 0.2]), 1)                      # sample 1 skipped this epoch
    t.start_epoch(2)
    # sample 0, t = 2: Z = 0.5 * 0.5 * [.5,.5] + 0.5 * [.8,.2] = [0.525, 0.225];
    # / (1 - 0.5^2) = / 0.75 -> [0.7, 0.3].  Sample 1 keeps t = 1: [0.2, 0.8].
    close(t.batch(idx(0, 1), None).exp(), [[0.525 / 0.75, 0.225 / 0.75], [0.2, 0.8]])
    # The loss is (1 - w) CE + w KL(z~ || s) with w = 0.7.
    logits = L([0.6, 0.4]).requires_grad_()
    loss = engine_loss(t, logits, [0, 1], idx(0))
    ce = -math.log(0.6)
    kl = 0.7 * math.log(0.7 / 0.6) + 0.3 * math.log(0.3 / 0.4)
    close(loss.item(), 0.3 * ce + 0.7 * kl)
    # table: the ensemble, tempered (T = 1 here).
    close(t.table, [[0.7, 0.3], [0.2, 0.8]])


# --------------------------------------------------------------------------- PS-KD

def test_ps_kd_previous_epoch_predictions_and_linear_alpha():
    # Kim et al.: target (1 - a_t) y + a_t p_{t-1}, a_t = alpha_T (t + 1) / T (0-based t).
    t = target("ps_kd", [0, 1], {"pskd_alpha": 0.8})
    t.set_total_epochs(4)
    t.start_epoch(0)
    assert t.weight == 0.0                                   # epoch 0: the one-hot label
    t.observe(idx(0, 1), L([0.5, 0.5], [0.3, 0.7]), 0)
    t.start_epoch(1)
    close(t.weight, 0.8 * 2 / 4)                             # a_1 = 0.4
    close(t.batch(idx(0, 1), None).exp(), [[0.5, 0.5], [0.3, 0.7]])
    # Gradient of the engine's loss = gradient of soft CE against (1 - a) y + a p:
    # sample 0: 0.6 * [1, 0] + 0.4 * [0.5, 0.5] = [0.8, 0.2]; d/dlogits = (s - target) / B.
    logits = L([0.6, 0.4]).requires_grad_()
    engine_loss(t, logits, [0, 1], idx(0)).backward()
    close(logits.grad, [[0.6 - 0.8, 0.4 - 0.2]])
    # A visit this epoch overwrites the stored prediction for the next epoch.
    t.observe(idx(0), L([0.9, 0.1]), 1)
    t.start_epoch(3)
    close(t.weight, 0.8 * 4 / 4)                             # a_T = alpha_T in the last epoch
    close(t.batch(idx(0), None).exp(), [[0.9, 0.1]])
    # table: the target at alpha_T: 0.2 y + 0.8 p.
    close(t.table, [[0.2 + 0.8 * 0.9, 0.8 * 0.1], [0.8 * 0.3, 0.2 + 0.8 * 0.7]])


def test_ps_kd_needs_the_run_length():
    t = target("ps_kd", [0], {"pskd_alpha": 0.8})
    with pytest.raises(InputError, match="run length"):
        t.start_epoch(1)


# --------------------------------------------------------------------------- SAT

def test_sat_plain_ce_before_es_then_ema_target_with_max_weights():
    # Huang et al.: before E_s plain CE; then t <- m t + (1 - m) p (before the loss) and the
    # loss is mean_i w_i CE(t_i, s_i), w_i = max_k t_ik normalised to mean 1. m = 0.9.
    y = [0, 0, 1]
    t = target("sat", y, {"ema_rate": 0.1, "start_epoch": 1})
    t.start_epoch(0)
    logits = L([0.5, 0.5], [0.8, 0.2])
    close(engine_loss(t, logits, y, idx(0, 2)).item(), (math.log(2) + math.log(5)) / 2)
    close(t.table, [[1, 0], [1, 0], [0, 1]])                 # untouched before E_s
    t.start_epoch(1)
    loss = engine_loss(t, logits, y, idx(0, 2))
    # t_0 = 0.9 [1, 0] + 0.1 [0.5, 0.5] = [0.95, 0.05]; t_2 = 0.9 [0, 1] + 0.1 [0.8, 0.2]
    # = [0.08, 0.92]. CE(t_0, p) = log 2; CE(t_2, p) = -(0.08 log 0.8 + 0.92 log 0.2).
    # w = [0.95, 0.92] * 2 / 1.87.
    ce0 = math.log(2)
    ce2 = -(0.08 * math.log(0.8) + 0.92 * math.log(0.2))
    w0, w2 = 0.95 * 2 / 1.87, 0.92 * 2 / 1.87
    close(loss.item(), (w0 * ce0 + w2 * ce2) / 2, 1e-6)
    close(t.table, [[0.95, 0.05], [1, 0], [0.08, 0.92]])
    # Second visit: t_0 = 0.9 [0.95, 0.05] + 0.1 [0.1, 0.9] = [0.865, 0.135].
    engine_loss(t, L([0.1, 0.9]), y, idx(0))
    close(t.table[0], [0.865, 0.135])


# --------------------------------------------------------------------------- ELR

def test_elr_target_update_then_log_one_minus_inner_product():
    # Liu et al.: t <- beta t + (1 - beta) p/sum(p), p clamped to [1e-4, 1 - 1e-4], from t = 0;
    # loss = CE + lambda mean log(1 - <t, p>). beta = 0.7, lambda = 3.
    y = [0, 1]
    t = target("elr", y, {"ema_rate": 0.3, "elr_lambda": 3.0})
    logits = L([0.6, 0.4]).requires_grad_()
    loss = engine_loss(t, logits, y, idx(0))
    # t_0 = 0.3 [0.6, 0.4] = [0.18, 0.12]; <t, p> = 0.108 + 0.048 = 0.156.
    close(t.mem["t"][0], [0.18, 0.12])
    close(loss.item(), -math.log(0.6) + 3 * math.log(1 - 0.156))
    loss.backward()
    # d/dz_j [CE + 3 log(1 - <t,p>)] = (p - y)_j - 3 p_j (t_j - <t,p>) / (1 - <t,p>).
    g0 = (0.6 - 1) - 3 * 0.6 * (0.18 - 0.156) / 0.844
    g1 = 0.4 - 3 * 0.4 * (0.12 - 0.156) / 0.844
    close(logits.grad, [[g0, g1]], 1e-6)
    # Second visit: t_0 = 0.7 [0.18, 0.12] + 0.3 [0.9, 0.1] = [0.396, 0.114];
    # <t, p> = 0.3564 + 0.0114 = 0.3678.
    loss = engine_loss(t, L([0.9, 0.1]), y, idx(0))
    close(loss.item(), -math.log(0.9) + 3 * math.log(1 - 0.3678))
    # A saturated softmax is clamped to [1e-4, 1 - 1e-4] (and renormalised) first:
    # t_1 = 0.3 [1e-4, 1 - 1e-4].
    engine_loss(t, torch.tensor([[-30.0, 30.0]]), y, idx(1))
    close(t.mem["t"][1], [0.3 * 1e-4, 0.3 * (1 - 1e-4)], 1e-8)
    # table: t normalised per row.
    close(t.table, [[0.396 / 0.51, 0.114 / 0.51], [1e-4, 1 - 1e-4]])


# --------------------------------------------------------------------------- engine

@pytest.fixture(scope="module")
def toy_data():
    seeds = Seeds.from_base(0)
    ds = load_dataset("toy", n_train=600, n_val=300, n_test=600, seed=0)
    return apply_noise(ds, 0.3, "symmetric", seeds.noise), seeds


@pytest.mark.parametrize("method", list(FAMILY_HP))
def test_fit_learns_on_noisy_toy(toy_data, method):
    ds, seeds = toy_data
    t = build_target(method, FAMILY_HP[method], ds.train.labels, 3, None, None, "cpu")
    r = fit(to_device(ds, "cpu"), TrainSpec(model="mlp", epochs=6, batch_size=32), seeds,
            target=t)
    assert all(math.isfinite(h["train_loss"]) for h in r.history)
    s = r.summary()
    # Chance is 1/3; the noisy validation labels cap val_acc near 0.7 x Bayes (~0.85).
    assert s["val_acc"] > 0.45 and s["test_acc"] > 0.6, s
    table = t.table
    assert table.shape == (600, 3) and np.isfinite(table).all()
    close(table.sum(1), np.ones(600), 1e-5)
    # The memory moved away from the one-hot labels it started from.
    assert np.abs(table - np.eye(3)[ds.train.labels]).max() > 0.05


@pytest.mark.parametrize("method", list(FAMILY_HP))
def test_resume_continues_the_memory(toy_data, method):
    ds, seeds = toy_data
    dd = to_device(ds, "cpu")
    cfg = TrainSpec(model="mlp", epochs=4, batch_size=64)
    hp = {**FAMILY_HP[method], "start_epoch": 1} if method == "sat" else FAMILY_HP[method]
    make = lambda: build_target(method, hp, ds.train.labels, 3, None, None, "cpu")  # noqa: E731
    saved = {}

    def on_epoch(epoch, metrics, make_checkpoint):
        if epoch == 1:
            saved["ckpt"] = make_checkpoint()
    full_t = make()
    full = fit(dd, cfg, seeds, target=full_t, on_epoch=on_epoch)
    res_t = make()
    resumed = fit(dd, cfg, seeds, target=res_t, resume=saved["ckpt"])
    for k in full.last_state:
        assert torch.equal(full.last_state[k], resumed.last_state[k]), k
    assert np.array_equal(full_t.table, res_t.table)
    # Power: resuming without the memory gives another run.
    cold_t = make()
    cold = fit(dd, cfg, seeds, target=cold_t, resume={**saved["ckpt"], "target": None})
    assert not np.array_equal(full_t.table, cold_t.table)
    assert any(not torch.equal(full.last_state[k], cold.last_state[k]) for k in full.last_state)


def test_bad_family_hparams_name_the_parameter():
    for method, hp, word in [("ps_kd", {"pskd_alpha": 1.5}, "pskd_alpha"),
                             ("sat", {"ema_rate": 0.1, "start_epoch": -1}, "start_epoch"),
                             ("elr", {"ema_rate": 0.3, "elr_lambda": -2}, "elr_lambda"),
                             ("elr", {"ema_rate": 0.0, "elr_lambda": 3}, "ema_rate")]:
        with pytest.raises(InputError, match=word):
            target(method, [0, 1], hp)


def _ddp_worker(rank, world, port, out):
    import torch.distributed as dist
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        seeds = Seeds.from_base(0)
        ds = apply_noise(load_dataset("toy", n_train=101, n_val=40, n_test=40), 0.3,
                         "symmetric", seeds.noise)
        tables = {}
        for m in FAMILY_HP:
            hp = {**FAMILY_HP[m], "start_epoch": 0} if m == "sat" else FAMILY_HP[m]
            t = build_target(m, hp, ds.train.labels, 3, None, None, "cpu")
            fit(to_device(ds, "cpu"), TrainSpec(model="mlp", epochs=2, batch_size=16), seeds,
                target=t)
            tables[m] = t.table
            if m == "temporal_ensembling":
                tables["te_count"] = t.mem["count"].numpy()
        torch.save(tables, os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_ranks_share_one_memory(tmp_path):
    """Two gloo ranks each train on half the batch; every update is all-gathered, so both
    hold the same table and every sample was folded in once per epoch."""
    import socket
    import torch.multiprocessing as mp
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    a, b = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    for m in FAMILY_HP:
        assert np.array_equal(a[m], b[m]), m
    # 101 samples on 2 ranks: one padded duplicate per epoch, each sample counted once.
    assert (a["te_count"] == 2).all()


# --------------------------------------------------------------------------- label files

def toy_ds(n_train=200, seed=0):
    return load_dataset("toy", n_train=n_train, n_val=50, n_test=50, seed=seed)


def noisy_version(y, k, rate=0.3, seed=1):
    rng = np.random.default_rng(seed)
    out = y.copy()
    flip = rng.random(len(y)) < rate
    out[flip] = (y[flip] + rng.integers(1, k, flip.sum())) % k
    return out


@pytest.mark.parametrize("fmt", ["npy", "csv", "pt", "npz"])
def test_label_file_formats_give_train_labels_in_index_order(tmp_path, fmt):
    ds = toy_ds()
    labels = noisy_version(ds.train.y, 3)
    path = tmp_path / f"labels.{fmt}"
    key = None
    if fmt == "npy":
        np.save(path, labels.astype(np.int32))
    elif fmt == "csv":
        path.write_text("\n".join(str(v) for v in labels) + "\n")
    elif fmt == "pt":   # CIFAR-N's layout: a dict of numpy arrays, one per annotation
        torch.save({"clean_label": ds.train.y, "worse_label": labels,
                    "aggre_label": ds.train.y}, path)
        key = "worse_label"
    else:
        np.savez(path, noisy_label=labels)
    out = apply_noise(ds, 0.0, "file", 0, path=str(path), key=key)
    assert np.array_equal(out.train.labels, labels)
    assert out.val.y_noisy is None and out.test.y_noisy is None    # train only (documented)
    assert np.array_equal(out.train.y, ds.train.y)


def test_label_file_errors_name_the_file(tmp_path):
    ds = toy_ds()
    good = noisy_version(ds.train.y, 3)
    cases = []
    p = tmp_path / "bad.csv"
    p.write_text("0\n1\ncat\n")
    cases.append((p, None, r"bad\.csv:3: 'cat'"))
    p = tmp_path / "short.npy"
    np.save(p, good[:150])
    cases.append((p, None, "holds 150 labels"))
    p = tmp_path / "range.npy"
    np.save(p, np.where(np.arange(200) == 7, 3, good))
    cases.append((p, None, r"range\.npy: labels must lie in \[0, 3\)"))
    p = tmp_path / "shuffled.npy"     # right length, wrong order: agreement ~ chance
    np.save(p, good[np.random.default_rng(0).permutation(200)])
    cases.append((p, None, "does not match"))
    p = tmp_path / "multi.pt"
    torch.save({"clean_label": ds.train.y, "worse_label": good, "aggre_label": good}, p)
    cases.append((p, None, "set data.noise.key"))
    cases.append((p, "random_label9", "no entry 'random_label9'"))
    p = tmp_path / "misaligned.pt"    # carries clean labels in another order
    torch.save({"clean_label": ds.train.y[::-1].copy(), "worse_label": good}, p)
    cases.append((p, "worse_label", "clean_label disagrees"))
    p = tmp_path / "floats.npy"
    np.save(p, np.full(200, 0.5))
    cases.append((p, None, "integers"))
    p = tmp_path / "labels.json"
    p.write_text("[]")
    cases.append((p, None, "unknown label-file format"))
    p = tmp_path / "garbage.pt"
    p.write_bytes(b"not a torch file")
    cases.append((p, None, r"garbage\.pt: not a readable"))
    cases.append((tmp_path / "missing.npy", None, "not found"))
    for path, key, msg in cases:
        with pytest.raises(InputError, match=msg):
            apply_noise(ds, 0.0, "file", 0, path=str(path), key=key)


def test_cifar_file_maps_source_images_to_train_and_val(tmp_path):
    """A file over the original training set: every train AND validation row gets the label
    of its own source image (the fixture stamps each image's source index in its pixels)."""
    src = write_cifar10(tmp_path / "c10", per_batch=40)      # 200 source images
    y = src["y_train"]
    human = noisy_version(y, 10, rate=0.4, seed=3)
    f = tmp_path / "human.npy"
    np.save(f, human)
    opts = {"root": str(tmp_path / "c10"), "val_fraction": 0.2, "split_seed": 5}
    ds = load_dataset("cifar10", **opts)
    out = apply_noise(ds, 0.0, "file", 0, path=str(f))
    for split in (out.train, out.val):
        assert np.array_equal(split.labels, human[read_stamp(split.x)])
    # With subset_per_class the loader's recorded source_index finds the chosen images:
    # no clean labels are needed in the file.
    opts = {**opts, "subset_per_class": 8}
    ds = load_dataset("cifar10", **opts)
    out = apply_noise(ds, 0.0, "file", 0, path=str(f))
    for split in (out.train, out.val):
        assert np.array_equal(split.labels, human[read_stamp(split.x)])
    pt = tmp_path / "CIFAR-10_human.pt"
    torch.save({"clean_label": y, "worse_label": human, "aggre_label": y}, pt)
    out = apply_noise(ds, 0.0, "file", 0, path=str(pt), key="worse_label")
    assert len(out.train) + len(out.val) == 80
    for split in (out.train, out.val):
        assert np.array_equal(split.labels, human[read_stamp(split.x)])


def test_spec_file_noise_fields(tmp_path):
    f = tmp_path / "l.npy"
    np.save(f, np.zeros(10, np.int64))
    base = {"name": "t", "data": {"name": "toy", "noise": {"kind": "file", "path": str(f),
                                                            "rates": [0.4]}}}
    spec = validate_spec(base)
    assert spec.data.noise.path == str(f)
    for noise, word in [({"kind": "file"}, "path"),
                        ({"kind": "file", "path": str(tmp_path / "no.npy")}, "not found"),
                        ({"kind": "file", "path": str(f), "rates": [0.1, 0.2]}, "one rate"),
                        ({"kind": "symmetric", "key": "worse_label"}, "key"),
                        ({"kind": "symmetric", "path": str(f)}, "path")]:
        with pytest.raises(InputError, match=word):
            validate_spec({**base, "data": {"name": "toy", "noise": noise}})


def test_read_label_file_returns_clean_labels_when_present(tmp_path):
    p = tmp_path / "h.pt"
    torch.save({"clean_label": torch.tensor([0, 1, 2]), "noisy_label": torch.tensor([0, 2, 2])}, p)
    noisy, clean = read_label_file(p)            # one non-clean entry: no key needed
    assert noisy.tolist() == [0, 2, 2] and clean.tolist() == [0, 1, 2]


def test_pt_pickled_under_numpy1_loads(tmp_path):
    """CIFAR-N's .pt was written under numpy 1.x: its pickle names
    numpy.core.multiarray._reconstruct, which weights_only loading must still accept."""
    import zipfile
    p = tmp_path / "old.pt"
    torch.save({"clean_label": np.array([0, 1, 2]), "worse_label": np.array([0, 2, 2])}, p)
    with zipfile.ZipFile(p) as z:
        data = {n: z.read(n) for n in z.namelist()}
    pkl = next(n for n in data if n.endswith("data.pkl"))
    assert b"numpy._core.multiarray" in data[pkl]
    data[pkl] = data[pkl].replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    with zipfile.ZipFile(p, "w", zipfile.ZIP_STORED) as z:
        for n, b in data.items():
            z.writestr(n, b)
    noisy, clean = read_label_file(p, "worse_label")
    assert noisy.tolist() == [0, 2, 2] and clean.tolist() == [0, 1, 2]


# --------------------------------------------------------------------------- path modes

def synthetic_path(epochs=8, n=60, k=6, seed=0):
    """Softmax of a random walk drifting towards each sample's class: a zig-zag path."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    z = rng.normal(size=(n, k))
    out = []
    for _ in range(epochs):
        z = z + 0.6 * np.eye(k)[y] + rng.normal(scale=0.8, size=(n, k))
        e = np.exp(z - z.max(1, keepdims=True))
        out.append(e / e.sum(1, keepdims=True))
    return np.stack(out).astype(np.float16)


def test_filter_bank_equals_filter_path_for_every_rate():
    path = synthetic_path()
    grid = [0.02, 0.05, 0.1, 0.5, 1.0]
    bank = FilterBank(path.shape[1], path.shape[2], grid)
    rng = np.random.default_rng(1)
    for e in range(path.shape[0]):       # shuffled batches of 7, as training visits them
        order = rng.permutation(path.shape[1])
        for s in range(0, len(order), 7):
            i = torch.from_numpy(order[s:s + 7])
            bank.update(i, torch.from_numpy(path[e, order[s:s + 7]].astype(np.float32)))
    for a in grid:
        assert np.array_equal(bank.table(a), filter_path(path, a)), a
    with pytest.raises(InputError, match="grid"):
        bank.table(0.3)
    assert bank.nbytes == len(grid) * path.shape[1] * path.shape[2] * 4


def test_topk_path_error_shrinks_with_k_and_is_exact_at_K():
    path = synthetic_path()
    k_all = path.shape[2]
    dense = filter_path(path, 0.1)
    errs = []
    for k in range(1, k_all + 1):
        vals, cls = topk_path(path, k)
        assert vals.dtype == np.float16 and cls.dtype == np.int16 and vals.shape[-1] == k
        # Per row, the L1 error of the rebuilt path is non-increasing in k.
        rebuilt = np.stack([dense_row(vals[e], cls[e], k_all) for e in range(len(path))])
        errs.append((np.abs(rebuilt - path.astype(np.float32)).sum(-1),
                     np.abs(filter_topk(vals, cls, k_all, 0.1) - dense).mean()))
        close(rebuilt.sum(-1), np.ones(rebuilt.shape[:2]), 2e-3)
    for (row_a, fil_a), (row_b, fil_b) in zip(errs, errs[1:]):
        assert (row_b <= row_a + 1e-6).all()
        assert fil_b <= fil_a + 1e-7
    assert errs[0][1] > 0.01                       # the test has power: k = 1 is lossy
    vals, cls = topk_path(path, k_all)
    assert np.array_equal(filter_topk(vals, cls, k_all, 0.1), dense)   # exact at k = K
    assert topk_nbytes(8, 60, 2) == 8 * 60 * 2 * (2 + 2)          # float16 value + int16 class
    assert dense_nbytes(8, 60, 6) == 8 * 60 * 6 * 2


# --------------------------------------------------------------------------- sweeps

@pytest.mark.parametrize("name", ["family_toy", "family_cifar10"])
def test_family_sweeps_validate(name):
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = load_spec(os.path.join(here, "sweeps", f"{name}.yaml"))
    assert set(FAMILY_HP) <= set(spec.methods) and "filter_kd" in spec.methods
