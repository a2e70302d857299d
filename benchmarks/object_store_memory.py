"""Memory of 1 vs 3 concurrent student trials sharing one teacher path through Ray's object store.

A learning path is [epochs, N, K] float16 (default 30 x 50,000 x 100 = 300 MB). Each "trial"
is a Ray actor that does what a student does first (`jobs.job_body` -> `labels.filter_path`):
`ray.get` the path, compute the Filter-KD table from it, and keep both alive. Three ways of
handing it over, each in a fresh local Ray so the store's peak is its own:

  shared     the sweep's way: the driver `ray.put`s a plain ndarray once and passes the ref
             (in a list, so Ray does not resolve it); every trial reads a zero-copy,
             read-only view of the one copy.
  by_value   baseline: the array is passed by value to each trial (as a raw array in a Tune
             param_space or a Train `train_loop_config` would be): Ray stores one copy per
             trial.
  memmap     the bug fixed in `Sweep.put_teachers`: `ray.put` of the np.memmap that
             `Store.read_array` returns is pickled in-band, so each reader unpickles a
             private, writable copy.

Memory = object-store bytes actually allocated (pages of the store's shared-memory file:
tmpfs allocates them only when written) + the sum over trials of their USS growth (private
memory, from psutil: shared pages of the store are not in it) between "actor ready, imports
done" and "path read, table computed". The table itself is private by nature: float32
[N, K], i.e. 2/epochs of the path's size (6.7% at 30 epochs); it is reported separately.
The driver's own copy is deleted after the put and not counted (same in every mode).

    .venv/bin/python benchmarks/object_store_memory.py | tee benchmarks/results/object_store_memory.txt
"""
from __future__ import annotations

import argparse
import gc
import os
import tempfile
import time

import numpy as np
import psutil
import ray
from _provenance import header  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

MB = 1024**2   # MiB
MODES = ("shared", "by_value", "memmap")


@ray.remote(num_cpus=0.5)
class Trial:
    """One student trial's first step: read the path, filter it, keep both (as job_body does)."""

    def ready(self) -> int:
        from filterkd_ray.labels import filter_path  # noqa: F401 - import before measuring
        return os.getpid()

    def take(self, boxed, by_value=None) -> dict:
        from filterkd_ray.labels import filter_path
        self.path = by_value if by_value is not None else ray.get(boxed[0])
        self.table = filter_path(self.path, 0.1)
        gc.collect()
        return {"writeable": bool(self.path.flags.writeable), "type": type(self.path).__name__,
                "table_bytes": self.table.nbytes}


def make_path(epochs: int, n: int, k: int, seed: int = 0) -> np.ndarray:
    """Rows that are probability vectors, built epoch by epoch to keep the peak small."""
    rng = np.random.default_rng(seed)
    path = np.empty((epochs, n, k), np.float16)
    for e in range(epochs):
        x = rng.random((n, k), dtype=np.float32)
        path[e] = x / x.sum(1, keepdims=True)
    return path


def store_bytes() -> int:
    """Pages the object store's shared-memory file holds (this process maps it after a put)."""
    for m in psutil.Process().memory_maps(grouped=False):
        if "plasma" in m.path:
            start_end = m.addr
            return os.stat(f"/proc/{os.getpid()}/map_files/{start_end}").st_blocks * 512
    raise RuntimeError("no object store mapping in this process")


def mem(pid: int) -> dict:
    info = psutil.Process(pid).memory_full_info()
    return {"uss": info.uss, "pss": info.pss, "rss": info.rss}


def run_mode(mode: str, path: np.ndarray | None, args) -> list[dict]:
    """Start 1 trial, measure; start the other `readers - 1` beside it, measure again."""
    env = {"RAY_USAGE_STATS_ENABLED": "0"}
    os.environ.update(env)
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False,
             object_store_memory=int(args.store_gb * 1024**3))
    try:
        trials = [Trial.remote() for _ in range(args.readers)]
        pids = ray.get([t.ready.remote() for t in trials])
        before = {pid: mem(pid) for pid in pids}
        ray.put(np.zeros(1))                      # map the store in this process
        store0 = store_bytes()
        ref = None
        if mode == "shared":
            ref = ray.put(path)
        elif mode == "memmap":
            with tempfile.TemporaryDirectory() as d:
                np.save(f"{d}/path.npy", path)
                ref = ray.put(np.load(f"{d}/path.npy", mmap_mode="r"))
        rows, infos = [], []
        for count in (1, args.readers):
            t0 = time.perf_counter()
            new = trials[len(infos):count]
            if mode == "by_value":
                calls = [t.take.remote(None, path) for t in new]
            else:
                calls = [t.take.remote([ref]) for t in new]
            infos += ray.get(calls)
            wall = time.perf_counter() - t0
            live = pids[:count]
            after = {pid: mem(pid) for pid in live}
            grow = {k: sum(after[p][k] - before[p][k] for p in live) for k in ("uss", "pss", "rss")}
            store = store_bytes() - store0
            rows.append({"mode": mode, "trials": count, "store": store, **grow,
                         "total": store + grow["uss"], "table": infos[0]["table_bytes"],
                         "writeable": {i["writeable"] for i in infos},
                         "type": {i["type"] for i in infos}, "wall_s": wall})
        return rows
    finally:
        ray.shutdown()


def provenance() -> str:
    return header("object_store_memory.py", f"# ray {ray.__version__}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=50_000)
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--readers", type=int, default=3)
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--store-gb", type=float, default=1.5,
                   help="object store size: by_value needs readers x the path")
    args = p.parse_args()
    print(provenance())
    path = make_path(args.epochs, args.n, args.classes)
    size = path.nbytes
    print(f"path: {args.epochs} epochs x {args.n} samples x {args.classes} classes float16 = "
          f"{size / MB:.1f} MiB; filtered table float32 [N, K] = {args.n * args.classes * 4 / MB:.1f} MiB "
          f"({args.n * args.classes * 4 / size:.1%} of the path)\n")
    results = {}
    for mode in args.modes:
        results[mode] = run_mode(mode, path, args)
    print("| mode | trials | store MiB | trials' USS growth MiB | PSS growth MiB | RSS growth MiB "
          "| total MiB | reader's array | wall s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for mode, rows in results.items():
        for r in rows:
            ro = "read-only" if r["writeable"] == {False} else "writable"
            print(f"| {mode} | {r['trials']} | {r['store'] / MB:.1f} | {r['uss'] / MB:.1f} | "
                  f"{r['pss'] / MB:.1f} | {r['rss'] / MB:.1f} | {r['total'] / MB:.1f} | "
                  f"{'/'.join(sorted(r['type']))}, {ro} | {r['wall_s']:.1f} |")
    print()
    extra = {}
    for mode, (one, many) in ((m, (rows[0], rows[-1])) for m, rows in results.items()):
        per = (many["total"] - one["total"]) / (many["trials"] - one["trials"])
        extra[mode] = per
        table = one["table"]
        print(f"{mode:9s}: each extra trial adds {per / MB:6.1f} MiB = {per / size:7.2%} of the path; "
              f"without its own filtered table ({table / MB:.1f} MiB): "
              f"{(per - table) / MB:6.2f} MiB = {(per - table) / size:6.2%}")
    if "shared" in extra:
        for mode in extra:
            if mode != "shared":
                print(f"ratio {mode}/shared, memory per extra trial: "
                      f"{extra[mode] / extra['shared']:.1f}x")
        for mode, rows in results.items():
            if mode == "shared":
                continue
            print(f"ratio {mode}/shared, total at {rows[-1]['trials']} trials: "
                  f"{rows[-1]['total'] / results['shared'][-1]['total']:.2f}x")


if __name__ == "__main__":
    main()
