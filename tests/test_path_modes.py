"""Path modes through the engine: a bank of filtered tables and a top-k path recorded by
`engine.fit` equal what the dense path gives, bit for bit; they resume exactly, survive a
round trip through the sweep folder, and the spec restricts a bank's search to its grid."""
import os
import socket

import numpy as np
import pytest
import torch

from filterkd_ray import InputError
from filterkd_ray.data import load_dataset
from filterkd_ray.data.noise import apply_noise
from filterkd_ray.engine import Seeds, fit, to_device
from filterkd_ray.labels import filter_path, filtered_table
from filterkd_ray.pathmodes import (BankTables, TopkPath, filter_topk, make_recorder, path_file,
                                    read_only, read_path, topk_path, write_path)
from filterkd_ray.results import Store
from filterkd_ray.spec import FloatRange, TrainSpec, validate_spec

GRID = [0.05, 0.2, 1.0]
K = 2


def toy(n_train=203, seed=0):
    seeds = Seeds.from_base(seed)
    ds = load_dataset("toy", n_train=n_train, n_val=100, n_test=100, seed=seed)
    return apply_noise(ds, 0.3, "symmetric", seeds.noise), seeds


def recorded(ds, seeds, cfg, mode, **kw):
    rec = make_recorder(mode, cfg.epochs, len(ds.train), ds.num_classes, GRID, K)
    return fit(to_device(ds, "cpu"), cfg, seeds, record_path=rec, **kw)


@pytest.mark.parametrize("batch_size,drop_last", [(32, False), (32, True), (1000, False)])
def test_bank_and_topk_recorders_equal_the_dense_path(batch_size, drop_last):
    """203 samples, batch 32, drop_last: the 11-sample tail is recorded by every mode alike."""
    ds, seeds = toy()
    # Validation on val_nll so that the best epoch is not the last (both snapshots differ).
    cfg = TrainSpec(model="mlp", epochs=5, batch_size=batch_size, lr=0.05, drop_last=drop_last,
                    select_metric="val_nll")
    dense = fit(to_device(ds, "cpu"), cfg, seeds, record_path=True)
    bank = recorded(ds, seeds, cfg, "bank")
    topk = recorded(ds, seeds, cfg, "topk")
    assert dense.best_epoch < cfg.epochs - 1 or batch_size == 1000   # best != last snapshot
    for r in (bank, topk):   # recording never changes training
        assert r.best_epoch == dense.best_epoch
        for key in dense.last_state:
            assert torch.equal(dense.last_state[key], r.last_state[key])
    b = bank.path
    assert isinstance(b, BankTables) and b.epochs == 5 and b.best_epoch == dense.best_epoch
    for a in GRID:
        assert np.array_equal(b.filtered(a), filter_path(dense.path, a)), a
        assert np.array_equal(b.filtered(a, dense.best_epoch + 1),
                              filter_path(dense.path, a, dense.best_epoch + 1)), a
    vals, cls = topk_path(dense.path, K)
    assert isinstance(topk.path, TopkPath)
    assert np.array_equal(topk.path.values, vals) and np.array_equal(topk.path.classes, cls)
    assert np.array_equal(filtered_table(topk.path, 0.2, 3), filter_topk(vals, cls, 3, 0.2, 3))


def test_bank_answers_only_its_rates_and_snapshots():
    ds, seeds = toy(n_train=64)
    cfg = TrainSpec(model="mlp", epochs=4, batch_size=16, select_metric="val_nll")
    b = recorded(ds, seeds, cfg, "bank").path
    with pytest.raises(InputError, match="ema_rate: 0.3 is not in path.bank_rates"):
        b.filtered(0.3)
    other = next(u for u in range(1, 4) if u not in (b.best_epoch + 1, b.epochs))
    with pytest.raises(InputError, match="upto"):
        b.filtered(0.2, other)


@pytest.mark.parametrize("mode", ["dense", "bank", "topk"])
def test_recorders_resume_exactly(mode):
    ds, seeds = toy(n_train=90)
    # lr 0.05: the best epoch (2) falls after the checkpoint and before the end.
    cfg = TrainSpec(model="mlp", epochs=4, batch_size=16, lr=0.05, select_metric="val_nll")
    saved = {}

    def on_epoch(epoch, metrics, make_checkpoint):
        if epoch == 1:
            saved["ckpt"] = make_checkpoint()
    full = recorded(ds, seeds, cfg, mode, on_epoch=on_epoch)
    resumed = recorded(ds, seeds, cfg, mode, resume=saved["ckpt"])
    assert 1 < full.best_epoch < cfg.epochs - 1
    for a in GRID:
        for upto in (None, full.best_epoch + 1):
            assert np.array_equal(filtered_table(full.path, a, upto),
                                  filtered_table(resumed.path, a, upto)), (a, upto)


def test_topk_recorder_checks_k():
    with pytest.raises(InputError, match="path.topk: 4 is outside"):
        make_recorder("topk", 2, 10, 3, topk=4)


@pytest.mark.parametrize("mode", ["dense", "bank", "topk"])
def test_path_files_round_trip(tmp_path, mode):
    ds, seeds = toy(n_train=50)
    r = recorded(ds, seeds, TrainSpec(model="mlp", epochs=3, batch_size=16), mode)
    store = Store(str(tmp_path))
    name = write_path(store, "teacher-r0.3-s0", r.path)
    assert name == path_file("teacher-r0.3-s0", mode) and store.exists(name)
    back = read_path(store, name)
    for a in GRID:
        assert np.array_equal(filtered_table(back, a), filtered_table(r.path, a))
    assert read_only(back) == (mode == "dense")   # a local dense path is memory-mapped read-only
    with pytest.raises(InputError, match="not a learning-path file"):
        read_path(store, "paths/x.labels.npz")


def _ddp_worker(rank, world, port, out):
    import torch.distributed as dist
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        ds, seeds = toy(n_train=101)
        cfg = TrainSpec(model="mlp", epochs=3, batch_size=16, select_metric="val_nll")
        dense = fit(to_device(ds, "cpu"), cfg, seeds, record_path=True)
        bank = recorded(ds, seeds, cfg, "bank")
        torch.save({"dense": dense.path, "best": dense.best_epoch, "last": bank.path.last,
                    "bank_best": bank.path.best}, os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_bank_under_ddp_equals_the_gathered_dense_path(tmp_path):
    """Two gloo ranks, 101 samples (one padded duplicate): each rank's bank holds every sample,
    folded in once per epoch, equal to the filter of the all-gathered dense path."""
    import torch.multiprocessing as mp
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    for got in ranks:
        for j, a in enumerate(GRID):
            assert np.array_equal(got["last"][j], filter_path(ranks[0]["dense"], a)), a
            assert np.array_equal(got["bank_best"][j],
                                  filter_path(ranks[0]["dense"], a, got["best"] + 1)), a


# --------------------------------------------------------------------------- the spec

def spec(**over):
    raw = {"name": "t", "data": {"name": "toy", "noise": {"rates": [0.3]}},
           "methods": ["oht", "filter_kd", "elr"], **over}
    return validate_spec(raw)


def test_bank_search_picks_among_the_grid():
    s = spec(path={"mode": "bank", "bank_rates": [0.5, 0.1]})
    assert s.path.bank_rates == [0.1, 0.5]
    assert s.space_for("filter_kd")["ema_rate"] == [0.1, 0.5]
    # ELR's ema_rate is its own memory's, not the teacher path's: its range stays.
    assert isinstance(s.space_for("elr")["ema_rate"], FloatRange)
    assert isinstance(spec().space_for("filter_kd")["ema_rate"], FloatRange)   # dense: any rate
    ok = spec(path={"mode": "bank", "bank_rates": [0.1, 0.5]},
              search={"space": {"filter_kd": {"ema_rate": [0.5]}}})
    assert ok.space_for("filter_kd")["ema_rate"] == [0.5]


@pytest.mark.parametrize("over,match", [
    ({"path": {"mode": "bank"}, "search": {"space": {"filter_kd": {"ema_rate": {"low": 0.1, "high": 0.5}}}}},
     "search.space.filter_kd.ema_rate: path.mode 'bank' keeps tables"),
    ({"path": {"mode": "bank", "bank_rates": [0.1]}, "search": {"space": {"filter_kd": {"ema_rate": [0.1, 0.3]}}}},
     "search.space.filter_kd.ema_rate"),
    ({"path": {"bank_rates": [0.0, 0.5]}}, "path.bank_rates: EMA rate 0.0 is outside"),
    ({"path": {"mode": "sparse"}}, "path.mode"),
    ({"path": {"topk": 0}}, "path.topk"),
    ({"generations": 0}, "generations"),
    ({"generations": 2, "reproduce": False}, "generations > 1 needs reproduce: true"),
    ({"generations": 2, "methods": ["oht", "elr"]}, "none of methods"),
])
def test_bad_path_and_generation_specs(over, match):
    with pytest.raises(InputError, match=match):
        spec(**over)


def test_filter_bank_whole_epoch_updates_are_exact():
    """Whole shuffled epochs (the engine's calls; in-place fast path after the first) and
    batches of 7 (gather/scatter path) give the same tables, equal to filter_path."""
    from filterkd_ray.pathmodes import FilterBank
    rng = np.random.default_rng(0)
    path = rng.dirichlet(np.ones(5), size=(6, 50)).astype(np.float16)
    whole, batched = FilterBank(50, 5, GRID), FilterBank(50, 5, GRID)
    for e in range(6):
        order = rng.permutation(50)
        whole.update(torch.from_numpy(order), torch.from_numpy(path[e, order]))
        for s in range(0, 50, 7):
            i = order[s:s + 7]
            batched.update(torch.from_numpy(i), torch.from_numpy(path[e, i]))
    for a in GRID:
        assert np.array_equal(whole.table(a), filter_path(path, a)), a
        assert np.array_equal(batched.table(a), filter_path(path, a)), a


def test_report_draws_paths_from_a_topk_file_and_skips_a_bank(tmp_path):
    """The report's path plots read a top-k file (rebuilt path) and say why a bank has none."""
    import types

    import pandas as pd
    from PIL import Image

    from filterkd_ray import plots
    from filterkd_ray.report import Skip
    ds, seeds = toy(n_train=120)
    store = Store(str(tmp_path))
    store.makedirs()
    store.write_npz("paths/t.labels.npz", y=ds.train.y, y_noisy=ds.train.labels,
                    p_star=ds.train.p_star)
    cfg = TrainSpec(model="mlp", epochs=4, batch_size=16)
    for mode in ("topk", "bank"):
        r = recorded(ds, seeds, cfg, mode)
        row = types.SimpleNamespace(teacher_id="t", noise_rate=0.3, seed=0, best_epoch=r.best_epoch,
                                    path_file=write_path(store, "t", r.path),
                                    labels_file="paths/t.labels.npz")
        if mode == "bank":
            with pytest.raises(Skip, match="path.mode 'bank'"):
                plots.TeacherPath(store, row)
            continue
        tp = plots.TeacherPath(store, row)
        assert tp.path.shape == (4, 120, 3) and tp.path.dtype == np.float16
        np.testing.assert_allclose(tp.path.astype(np.float32).sum(-1), 1.0, atol=2e-3)
        (file, _caption), = plots.plot_paths(store, tp, pd.DataFrame())
        with Image.open(store.path(file)) as im:
            assert im.size[0] > 300 and im.size[1] > 200
            assert len(np.unique(np.asarray(im.convert("L")))) > 20    # not blank
