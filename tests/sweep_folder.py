"""Build a small but REAL sweep folder without Ray, for report and analysis tests.

Every number in it comes from the real code path: `experiment.run_teacher` (engine.fit with
record_path=True) per (noise rate, seed), then real students through
`experiment.run_student` (labels.build_target + metrics.label_quality + engine.fit): a
"search" stage of a few fixed configurations per (noise rate, method) on the first seed (a
deterministic stand-in for Optuna), and a "reproduce" stage that re-runs the best
validation-accuracy configuration of each (noise rate, method) on every seed. The folder is
written the way sweep.py writes it: trials/epochs/teachers Parquet through `results.frame`
and `Store.write_table`, `paths/<teacher_id>.npy` and `.labels.npz`, and manifest.json.

Tiny sizes (300 training samples, 8 teacher and 6 student epochs): about 20-25 s on one core.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from filterkd_ray.experiment import (epoch_rows, load_clean, noisy, result_row, base_row,
                                     run_student, run_teacher, teacher_id, teacher_outputs)
from filterkd_ray.results import (EPOCH_COLUMNS, SCHEMA_VERSION, TEACHER_COLUMNS, TRIAL_COLUMNS,
                                  Store, frame, provenance)
from filterkd_ray.spec import validate_spec

# Fixed "search" configurations per method (the sweep's Optuna proposals, made deterministic).
SEARCH = {
    "oht": [{}],
    "ls": [{"ls_epsilon": 0.1}, {"ls_epsilon": 0.3}],
    "kd": [{"temperature": 1.0, "distill_weight": 0.5}, {"temperature": 4.0, "distill_weight": 1.0}],
    "eskd": [{"temperature": 2.0, "distill_weight": 1.0}],
    "filter_kd": [{"ema_rate": 0.05, "temperature": 1.0, "distill_weight": 1.0, "snapshot": "best"},
                  {"ema_rate": 0.5, "temperature": 2.0, "distill_weight": 0.7, "snapshot": "best"},
                  {"ema_rate": 0.2, "temperature": 1.0, "distill_weight": 1.0, "snapshot": "last"}],
}


def fixture_spec(noise_rates=(0.0, 0.3), seeds=(0, 1, 2), methods=("oht", "ls", "kd", "filter_kd"),
                 n_train=300, teacher_epochs=8, student_epochs=6, name="report-fixture"):
    return validate_spec({
        "name": name,
        "data": {"name": "toy", "options": {"n_train": n_train, "n_val": 200, "n_test": 1000},
                 "noise": {"kind": "symmetric", "rates": list(noise_rates)}},
        "seeds": list(seeds),
        "teacher": {"epochs": teacher_epochs, "lr": 0.01, "batch_size": 32},
        "student": {"epochs": student_epochs, "lr": 0.01, "batch_size": 32},
        "methods": list(methods),
        "search": {"num_samples": 3},
    })


def make_sweep_folder(folder, noise_rates=(0.0, 0.3), seeds=(0, 1, 2),
                      methods=("oht", "ls", "kd", "filter_kd"), n_train=300, teacher_epochs=8,
                      student_epochs=6, with_failed=True, status="done") -> Store:
    """Run the tiny sweep and write its folder; returns the Store.

    with_failed adds one failed search row (NaN metrics, an error message), as the sweep
    writes for a diverged trial, so readers are tested against it."""
    torch.set_num_threads(1)
    spec = fixture_spec(noise_rates, seeds, methods, n_train, teacher_epochs, student_epochs)
    store = Store(str(folder))
    store.makedirs()
    clean = load_clean(spec)
    trials, epochs, teachers, outputs = [], [], [], {}
    started = time.strftime("%Y-%m-%dT%H:%M:%S")

    for rate in noise_rates:
        for seed in seeds:
            tid = teacher_id(rate, seed)
            data = noisy(spec, clean, rate, seed)
            result, row = run_teacher(spec, data, rate, seed, "cpu")
            row["trial_id"] = tid
            trials.append(row)
            epochs += epoch_rows(tid, row, result.history)
            store.write_array(f"paths/{tid}.npy", result.path)
            store.write_npz(f"paths/{tid}.labels.npz", y=data.train.y, y_noisy=data.train.labels,
                            p_star=data.train.p_star)
            teachers.append({k: row.get(k) for k in TEACHER_COLUMNS} | {
                "teacher_id": tid, "path_file": f"paths/{tid}.npy",
                "labels_file": f"paths/{tid}.labels.npz"})
            outputs[tid] = (data, teacher_outputs(spec, data, result.path, result.best_state,
                                                  result.last_state, result.best_epoch, "cpu"))

    def student(stage, rate, seed, method, hp, run_id):
        data, teacher = outputs[teacher_id(rate, seed)]
        result, row = run_student(spec, data, rate, seed, method, hp, teacher, "cpu", stage=stage)
        row["trial_id"] = run_id
        trials.append(row)
        epochs.extend(epoch_rows(run_id, row, result.history))
        return row

    best = {}
    for rate in noise_rates:
        for method in methods:
            rows = [student("search", rate, seeds[0], method, hp, f"search-r{rate:g}-{method}-{i}")
                    for i, hp in enumerate(SEARCH[method])]
            top = max(rows, key=lambda r: r["val_acc"])
            best[(rate, method)] = {k: top[k] for k in SEARCH[method][0]}
    if with_failed and "ls" in methods:
        rate = noise_rates[-1]
        row = result_row(base_row(spec, "search", "ls", rate, seeds[0]), None, time.perf_counter(),
                         status="failed", error="loss became nan in epoch 3", ls_epsilon=0.45)
        trials.append({**row, "trial_id": f"search-r{rate:g}-ls-failed",
                       "teacher_id": teacher_id(rate, seeds[0])})
    for (rate, method), hp in best.items():
        for seed in seeds:
            student("reproduce", rate, seed, method, hp, f"repro-r{rate:g}-{method}-s{seed}")

    store.write_table("trials", frame(trials, TRIAL_COLUMNS))
    store.write_table("epochs", frame(epochs, EPOCH_COLUMNS))
    store.write_table("teachers", frame(teachers, TEACHER_COLUMNS))
    store.write_json("manifest.json", {
        "schema_version": SCHEMA_VERSION, "status": status, "spec": spec.model_dump(),
        "started_at": started, "updated_at": time.strftime("%Y-%m-%dT%H:%M:%S"), **provenance()})
    return store


if __name__ == "__main__":   # python tests/sweep_folder.py OUT: a folder to look at by hand
    import sys
    t0 = time.perf_counter()
    out = make_sweep_folder(Path(sys.argv[1]))
    print(f"wrote {out.uri} in {time.perf_counter() - t0:.1f}s")
    print(json.dumps({k: len(out.read_table(k)) for k in ("trials", "epochs", "teachers")}))
