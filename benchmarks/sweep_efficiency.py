"""Ray Tune's cost: the same 8 toy student trainings (a) one after another in one bare Python
process with engine.fit, and (b) as one `Sweep.grid` stage of filterkd-ray on the embedded
local Ray with 2 concurrent trials, reporting to Tune every epoch, and (c) the same with
`scaling.report_every: K` (a report every K epochs: fewer results for the driver). Prints
wall / wall(a): 0.5 is perfect parallelism on 2 cores, 1.0 is no gain. Goal: <= 0.6.

    .venv/bin/python benchmarks/sweep_efficiency.py [--epochs 40] [--report-every 10] [--out benchmarks/results/sweep_efficiency.txt]
"""
import argparse
import os
import tempfile
import time

import torch

from _provenance import header  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
from filterkd_ray.experiment import device_for, load_clean, noisy, run_student
from filterkd_ray.spec import load_spec

SEEDS = list(range(8))


def spec_for(epochs: int, report_every: int = 1):
    return load_spec("sweeps/toy.yaml", [f"student.epochs={epochs}", "seeds=[0,1,2,3,4,5,6,7]",
                                         "methods=[oht]", "search.space={}", "search.max_concurrent=2",
                                         f"scaling.report_every={report_every}"])


def sequential(spec) -> tuple[float, list[float]]:
    torch.set_num_threads(1)   # what each Ray trial gets: one CPU
    clean, times = load_clean(spec), []
    t0 = time.perf_counter()
    for seed in SEEDS:
        t = time.perf_counter()
        run_student(spec, noisy(spec, clean, 0.3, seed), 0.3, seed, "oht", {}, None, device_for(False))
        times.append(time.perf_counter() - t)
    return time.perf_counter() - t0, times


def through_ray(spec, out: str) -> float:
    import ray
    from filterkd_ray.sweep import Sweep, init_ray
    init_ray(None, spec)
    sweep = Sweep(spec, out, log=lambda *_: None)
    sweep.store.makedirs()
    base = {**sweep.context, "data_ref": ray.put(load_clean(spec))}
    jobs = [{"run_id": f"bench-s{s}", "kind": "student", "stage": "search", "noise_rate": 0.3,
             "seed": s, "method": "oht", "hparams": {}} for s in SEEDS]
    t0 = time.perf_counter()
    sweep.grid("bench", jobs, base)
    wall = time.perf_counter() - t0
    ray.shutdown()
    return wall


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--report-every", type=int, default=10)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    spec = spec_for(args.epochs)
    seq, each = sequential(spec)
    with tempfile.TemporaryDirectory() as d:
        par = through_ray(spec, os.path.join(d, "sweep"))
    with tempfile.TemporaryDirectory() as d:
        sparse = through_ray(spec_for(args.epochs, args.report_every), os.path.join(d, "sweep"))
    ideal = seq / 2
    lines = [
        header("sweep_efficiency.py"),
        f"8 toy students (oht, 30% noise, {args.epochs} epochs, 5000 train samples)",
        f"(a) sequential engine.fit, 1 thread : {seq:7.1f} s  (per training {min(each):.1f}-{max(each):.1f} s)",
        f"(b) filterkd-ray Tune stage, 2 at once: {par:7.1f} s",
        f"wall(b) / wall(a)                   : {par / seq:7.3f}   (0.5 = perfect on 2 cores; goal <= 0.6)",
        f"Ray overhead per trial               : {(par - ideal) / (len(SEEDS) / 2):7.2f} s  ((b) - (a)/2, per trial slot)",
        f"(c) as (b), report_every={args.report_every:<3d}         : {sparse:7.1f} s",
        f"wall(c) / wall(a)                   : {sparse / seq:7.3f}",
        f"Ray overhead per trial, (c)          : {(sparse - ideal) / (len(SEEDS) / 2):7.2f} s",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
