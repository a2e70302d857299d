"""Images per second of the project's input pipeline vs torchvision's, on real JPEGs.

Same images for both: the first `--per-class` files (sorted) of each class of
`../shared/data/cifar10/train` (CIFAR-10, JPEG copy), 10,000 by default.

  ours      decode once (PIL in a thread pool, `data.images.decode_images`) into a uint8
            [N, 3, 32, 32] tensor; then per epoch: a seeded permutation, and per batch of 256
            a gather of uint8 rows + `DeviceData.prepare` (the engine's own code: /255,
            batched crop+flip `augment`, normalise). Main process, `--threads` torch threads.
  baseline  torchvision `ImageFolder` + `DataLoader(batch_size=256, shuffle=True,
            num_workers=2)` with PIL `RandomCrop(32, padding=4)`, `RandomHorizontalFlip`,
            `ToTensor`, `Normalize`: decoding every image every epoch in worker processes.

One epoch of each (the baseline's worker start-up is part of its epoch, as it is in every
epoch of a non-persistent loader). Prints images/s, the ratio ours/baseline per epoch, the
decode-once time separately, and the ratio with decode-once charged to a single epoch.

    .venv/bin/python benchmarks/pipeline_throughput.py | tee benchmarks/results/pipeline_throughput.txt
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from filterkd_ray.data import Dataset, Split
from filterkd_ray.data.images import CIFAR10_STATS, decode_images
from filterkd_ray.engine import _generator, to_device
from _provenance import header  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

ROOT = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "cifar10"
BATCH = 256


def provenance(args) -> str:
    import PIL
    import torchvision
    return header(
        "pipeline_throughput.py",
        f"# torchvision {torchvision.__version__}, pillow {PIL.__version__}",
        f"# data: CIFAR-10 (JPEG copy) train, first {args.per_class} files per class = "
        f"{10 * args.per_class} images; batch {BATCH}",
        f"# ours: main process, torch threads={args.threads}, decode threads="
        f"{min(8, os.cpu_count() or 1)}; baseline: DataLoader num_workers={args.workers}")


def chosen_files(per_class: int):
    """The torchvision ImageFolder and the indices of the first `per_class` samples per class."""
    from torchvision.datasets import ImageFolder
    folder = ImageFolder(str(ROOT / "train"))
    targets = np.asarray(folder.targets)
    idx = np.concatenate([np.flatnonzero(targets == c)[:per_class]
                          for c in range(len(folder.classes))])
    return folder, idx


def ours(folder, idx, threads: int) -> dict:
    files = [Path(folder.samples[i][0]) for i in idx]
    labels = np.asarray([folder.samples[i][1] for i in idx], np.int64)
    t0 = time.perf_counter()
    x = decode_images(files)
    decode_s = time.perf_counter() - t0
    empty = Split(x=x[:0], y=labels[:0])
    ds = Dataset(name="bench", num_classes=10, train=Split(x=x, y=labels), val=empty,
                 test=empty, mean=CIFAR10_STATS[0], std=CIFAR10_STATS[1], augment="crop_flip")
    torch.set_num_threads(threads)
    data = to_device(ds, "cpu")
    n = len(labels)
    t0 = time.perf_counter()
    order = torch.randperm(n, generator=_generator(0, 0, 0, "cpu"))
    gen = _generator(1, 0, 0, "cpu")
    checksum = 0.0
    for i in range(0, n, BATCH):
        b = order[i:i + BATCH]
        xb = data.prepare(data.train_x[b], gen)
        yb = data.train_y[b]
        checksum += float(xb[:, :, 0, 0].sum()) + int(yb[0])   # touch the output
    epoch_s = time.perf_counter() - t0
    assert xb.dtype == torch.float32 and xb.shape[1:] == (3, 32, 32)
    return {"decode_s": decode_s, "epoch_s": epoch_s, "n": n, "checksum": checksum}


def baseline(folder, idx, workers: int) -> dict:
    import torchvision.transforms as T
    from torch.utils.data import DataLoader, Subset
    folder.transform = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(),
                                  T.ToTensor(), T.Normalize(*CIFAR10_STATS)])
    loader = DataLoader(Subset(folder, idx.tolist()), batch_size=BATCH, shuffle=True,
                        num_workers=workers, generator=torch.Generator().manual_seed(0))
    t0 = time.perf_counter()
    n = 0
    for xb, yb in loader:
        n += len(yb)
    epoch_s = time.perf_counter() - t0
    assert xb.dtype == torch.float32 and xb.shape[1:] == (3, 32, 32)
    return {"epoch_s": epoch_s, "n": n}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--per-class", type=int, default=1000)
    p.add_argument("--threads", type=int, default=1, help="torch threads for ours")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers for the baseline")
    args = p.parse_args(argv)
    if not (ROOT / "train").is_dir():
        sys.exit(f"{ROOT / 'train'}: not found; this benchmark needs ../shared/data/cifar10")
    print(provenance(args))
    folder, idx = chosen_files(args.per_class)
    base = baseline(folder, idx, args.workers)
    mine = ours(folder, idx, args.threads)
    assert base["n"] == mine["n"] == len(idx)
    n = len(idx)
    ips_base, ips_ours = n / base["epoch_s"], n / mine["epoch_s"]
    first = n / (mine["decode_s"] + mine["epoch_s"])
    print(f"\nimages per epoch: {n}")
    print(f"baseline (torchvision ImageFolder + DataLoader, {args.workers} workers): "
          f"{base['epoch_s']:.2f} s/epoch = {ips_base:,.0f} images/s")
    print(f"ours, decode once: {mine['decode_s']:.2f} s ({n / mine['decode_s']:,.0f} images/s), "
          "paid once per process")
    print(f"ours, per epoch (gather + engine augment + normalise): {mine['epoch_s']:.3f} s/epoch "
          f"= {ips_ours:,.0f} images/s")
    print(f"ratio ours/baseline per epoch: {ips_ours / ips_base:.1f}x (goal >= 5x)")
    print(f"ratio with decode-once charged to one epoch: {first / ips_base:.1f}x")


if __name__ == "__main__":
    main()
