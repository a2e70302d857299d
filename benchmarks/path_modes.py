"""Memory and accuracy of the path modes (filterkd_ray/pathmodes.py) against the dense path.

The dense learning path [E, N, K] float16 is what the sweep stores today; every student then
filters it at its own EMA rate. Scaling past CIFAR needs less: (a) a bank of filtered tables
for a fixed grid of EMA rates, updated online during teacher training; (b) a top-k sparse
path (k largest probabilities per sample per epoch, float16 + int16 class ids, the rest of
the mass spread evenly). This script measures, on a REAL learning path of CIFAR-100 shape
scaled down (K = 100 classes, N = 10,000 training samples, 30 epochs: the toy Gaussian
mixture with 100 classes and 40% symmetric noise, an MLP teacher trained by engine.fit at a
rate where it first learns the clean structure (best validation around epoch 5) and then
memorises the noisy labels, the two phases a real CIFAR path has):

  recording the seconds per epoch each recorder spends (record + best mark), against the
            dense recorder and the epoch;
  bytes     memory of each mode, and its ratio to the dense path (same run);
  error     max and mean |q_mode - q_dense| of the filtered table, over every EMA rate of
            the grid (dense = labels.filter_path of the recorded path: the baseline);
  time      CPU time to produce all grid tables from the stored form (dense: filter_path
            per rate; top-k: filter_topk per rate; bank: nothing, the tables exist);
  argmax    fraction of samples whose filtered table's argmax differs from the dense one's;
both for snapshot 'last' (the whole path) and 'best' (up to the best-validation epoch; the
bank keeps a copy of its tables, taken from `on_epoch` when validation improves).

Every mode is recorded by the engine's own recorders (pathmodes.make_recorder, what a sweep
with `path.mode` uses), all fed by ONE training run through a timing tee: same run, same
predictions, and each recorder's own cost per epoch (`recording cost`) measured beside the
epoch time. The bank's best-epoch copy comes from the engine's best mark.

    .venv/bin/python benchmarks/path_modes.py            # ~1-2 min on 1 thread
    .venv/bin/python benchmarks/path_modes.py --quick    # smoke run
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from filterkd_ray.data import load_dataset
from filterkd_ray.data.noise import apply_noise
from filterkd_ray.engine import Seeds, fit, to_device
from filterkd_ray.labels import filter_path
from filterkd_ray.pathmodes import (bank_nbytes, dense_nbytes, filter_topk, make_recorder,
                                    topk_nbytes, topk_path)
from filterkd_ray.spec import TrainSpec
from _provenance import header  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

GRID = [0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0]
KS = (1, 2, 5)
# ImageNet-1k, 90 epochs (the memory arithmetic of docs/family.md)
IMAGENET = {"n": 1_281_167, "epochs": 90, "k": 1000}


class Tee:
    """Hands every engine recorder call to several recorders, timing each one's own work."""

    def __init__(self, recorders: dict):
        self.recorders = recorders
        self.seconds = {name: [] for name in recorders}
        self.results = {}

    def record(self, epoch, idx, probs):
        for name, rec in self.recorders.items():
            t0 = time.perf_counter()
            rec.record(epoch, idx, probs)
            self.seconds[name].append(time.perf_counter() - t0)

    def mark_best(self, epoch):
        for name, rec in self.recorders.items():
            t0 = time.perf_counter()
            rec.mark_best(epoch)
            self.seconds[name][-1] += time.perf_counter() - t0

    def state_dict(self, epoch):
        return {name: rec.state_dict(epoch) for name, rec in self.recorders.items()}

    def result(self):
        self.results = {name: rec.result() for name, rec in self.recorders.items()}
        return self.results


def provenance() -> str:
    return header("path_modes.py")


def gb(b: float) -> str:
    return f"{b / 1e9:.1f} GB"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke test")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    n, epochs, k_cls = (1000, 6, 100) if args.quick else (10000, 30, 100)
    print(provenance())

    seeds = Seeds.from_base(0)
    ds = load_dataset("toy", n_train=n, n_val=1000, n_test=1000, num_classes=k_cls, dim=64,
                      variance=3.0, seed=0)
    ds = apply_noise(ds, 0.4, "symmetric", seeds.noise)
    # One training run feeds every recorder the sweep can use (the engine's real interface:
    # gathered rows, the best-epoch mark, checkpoints), timing each recorder's own work.
    recorders = {"dense": make_recorder("dense", epochs, n, k_cls),
                 "bank": make_recorder("bank", epochs, n, k_cls, bank_rates=GRID),
                 **{f"top{k}": make_recorder("topk", epochs, n, k_cls, topk=k) for k in KS}}
    tee = Tee(recorders)

    t0 = time.perf_counter()
    r = fit(to_device(ds, "cpu"), TrainSpec(model="mlp", epochs=epochs, batch_size=64, lr=0.02),
            seeds, record_path=tee)
    train_s = time.perf_counter() - t0
    path = tee.results["dense"]
    bank = tee.results["bank"]
    best, last = r.history[r.best_epoch], r.history[-1]
    bayes = (ds.test.p_star.argmax(1) == ds.test.y).mean()
    print(f"\npath: [{epochs}, {n}, {k_cls}] float16 from engine.fit "
          f"({train_s:.0f} s). Teacher: best epoch {r.best_epoch}, noisy val_acc "
          f"{best['val_acc']:.3f} (last {last['val_acc']:.3f}), clean test_acc "
          f"{best['test_acc']:.3f} (last {last['test_acc']:.3f}; Bayes {bayes:.3f}); "
          f"fit to the noisy train labels: epoch {r.best_epoch} "
          f"{(path[r.best_epoch].argmax(1) == ds.train.labels).mean():.3f}, last "
          f"{(path[-1].argmax(1) == ds.train.labels).mean():.3f}")
    epoch_s = float(np.median([h["epoch_s"] for h in r.history]))
    print(f"\nrecording cost per epoch (median epoch {epoch_s:.2f} s, all recorders included; "
          "each recorder's record() + best mark, wall):")
    print("| recorder | s / epoch | / dense recorder | / epoch |")
    print("|---|---|---|---|")
    for name, secs in tee.seconds.items():
        per = float(np.median(secs))
        print(f"| {name} | {per:.4f} | {per / np.median(tee.seconds['dense']):.2f}x "
              f"| {per / epoch_s:.2%} |")
    base_bytes = dense_nbytes(epochs, n, k_cls)
    topk = {k: (tee.results[f"top{k}"].values, tee.results[f"top{k}"].classes) for k in KS}
    for k, (vals, cls) in topk.items():
        assert vals.nbytes + cls.nbytes == topk_nbytes(epochs, n, k)
        # The recorder keeps exactly what topk_path takes from the dense path.
        ref_v, ref_c = topk_path(path, k)
        assert np.array_equal(vals, ref_v) and np.array_equal(cls, ref_c)

    for label, upto in (("last", None), ("best", r.best_epoch + 1)):
        c0 = time.process_time()
        dense = {a: filter_path(path, a, upto) for a in GRID}
        dense_s = time.process_time() - c0

        def errors(tables):
            d = np.stack([np.abs(tables[a] - dense[a]) for a in GRID])
            flips = np.mean([(tables[a].argmax(1) != dense[a].argmax(1)).mean() for a in GRID])
            return float(d.max()), float(d.mean()), float(flips)

        rows = [("dense path (baseline)", base_bytes, 0.0, 0.0, 0.0, dense_s)]
        mx, mean, flips = errors({a: bank.filtered(a, upto) for a in GRID})
        rows.append((f"bank, {len(GRID)} rates, float32" + (" (+ best copy)" if label == "best"
                                                             else ""),
                     bank.last.nbytes * (2 if label == "best" else 1), mx, mean, flips, 0.0))
        for k, (vals, cls) in topk.items():
            c0 = time.process_time()
            tabs = {a: filter_topk(vals, cls, k_cls, a, upto) for a in GRID}
            secs = time.process_time() - c0
            rows.append((f"top-{k} path", topk_nbytes(epochs, n, k), *errors(tabs), secs))

        print(f"\nsnapshot {label!r} (epochs 1..{upto or epochs}): filtered tables for EMA "
              f"rates {GRID};\nerror = |q_mode - q_dense| over all rates")
        print("| mode | bytes | bytes / dense | max abs error | mean abs error | argmax differs "
              "| CPU s for all rates | time / dense |")
        print("|---|---|---|---|---|---|---|---|")
        for name, b, mx, mean, flips, secs in rows:
            print(f"| {name} | {b:,} | {b / base_bytes:.3f}x | {mx:.2e} | {mean:.2e} "
                  f"| {flips:.2%} | {secs:.2f} | {secs / dense_s:.2f}x |")

    i = IMAGENET
    dense_in = dense_nbytes(i["epochs"], i["n"], i["k"])
    print(f"\nImageNet-1k, {i['epochs']} epochs ({i['n']:,} images, {i['k']} classes), same "
          "formulas:")
    print(f"  dense float16 path: {gb(dense_in)}")
    print(f"  bank, {len(GRID)} rates float32: {gb(bank_nbytes(len(GRID), i['n'], i['k']))} "
          f"({bank_nbytes(len(GRID), i['n'], i['k']) / dense_in:.3f}x), with a best-epoch "
          f"snapshot {gb(bank_nbytes(len(GRID), i['n'], i['k'], snapshot=True))}")
    for k in KS:
        b = topk_nbytes(i["epochs"], i["n"], k)
        print(f"  top-{k} path: {gb(b)} ({b / dense_in:.4f}x)")


if __name__ == "__main__":
    main()
