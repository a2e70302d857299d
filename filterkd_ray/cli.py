"""filterkd-ray: sweep | validate | report | run.

Exit codes: 0 done, 1 run failure, 2 bad input (one line on stderr naming the field/file).
"""
from __future__ import annotations

import argparse
import json
import sys

from filterkd_ray import InputError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="filterkd-ray", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    sw = sub.add_parser("sweep", help="run a whole sweep (teachers, searches, reproduce)")
    sw.add_argument("spec")
    sw.add_argument("--output", help="folder or URI (default results/<name>-<timestamp>)")
    sw.add_argument("--address", help="Ray cluster address ('auto' to join); default: embedded local Ray")
    sw.add_argument("--resume", action="store_true", help="continue an interrupted sweep in --output")
    sw.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a spec field, e.g. search.num_samples=4 (repeatable)")

    va = sub.add_parser("validate", help="check a spec (and, with --address, the cluster's resources)")
    va.add_argument("spec")
    va.add_argument("--address")
    va.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")

    rp = sub.add_parser("report", help="rebuild summary.md, report.md and plots of a sweep folder")
    rp.add_argument("folder")

    rn = sub.add_parser("run", help="one teacher + one student in this process (no Ray)")
    rn.add_argument("spec")
    rn.add_argument("--method", required=True)
    rn.add_argument("--noise-rate", type=float, default=None, help="default: the spec's first rate")
    rn.add_argument("--seed", type=int, default=None, help="default: the spec's first seed")
    rn.add_argument("--hp", action="append", default=[], metavar="NAME=VALUE",
                    help="a method hyperparameter, e.g. ema_rate=0.1 (default: labels.DEFAULT_HPARAMS)")
    rn.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")

    args = p.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; continue with --resume", file=sys.stderr)
        return 1
    except Exception as err:  # noqa: BLE001 - a run failure, not bad input
        print(f"failed: {type(err).__name__}: {err}", file=sys.stderr)
        return 1


def cmd_sweep(args) -> int:
    from filterkd_ray.spec import load_spec
    spec = load_spec(args.spec, args.set)
    from filterkd_ray.sweep import run_sweep
    store = run_sweep(spec, args.output, args.address, args.resume)
    print(f"done: {store.uri}")
    if store.exists("summary.md"):
        print(store.read_bytes("summary.md").decode())
    return 0


def cmd_validate(args) -> int:
    from filterkd_ray.spec import load_spec
    spec = load_spec(args.spec, args.set)
    if args.address:
        from filterkd_ray.jobs import check_resources
        from filterkd_ray.sweep import init_ray
        init_ray(args.address, spec)
        check_resources(spec)
    n_rates, n_seeds = len(spec.data.noise.rates), len(spec.seeds)
    extra = "" if spec.path.mode == "dense" else f", path mode {spec.path.mode}"
    extra += f", {spec.generations} generations" if spec.generations > 1 else ""
    print(f"ok: {spec.name}: {n_rates} noise rates x {n_seeds} seeds, methods {spec.methods}, "
          f"{spec.search.num_samples} search trials per (rate, method){extra}")
    return 0


def cmd_report(args) -> int:
    from filterkd_ray import report
    from filterkd_ray.results import open_sweep
    store = open_sweep(args.folder)
    report.write_summary(store)
    report.write_report(store)
    print(f"wrote {store.path('summary.md')} and {store.path('report.md')}")
    return 0


def cmd_run(args) -> int:
    from filterkd_ray.experiment import load_clean, noisy, run_student, run_teacher, device_for, teacher_outputs
    from filterkd_ray.labels import DEFAULT_HPARAMS, get_method
    from filterkd_ray.spec import apply_overrides, load_spec, reads_teacher_path
    spec = load_spec(args.spec, args.set)
    method = get_method(args.method)
    hp = {k: DEFAULT_HPARAMS[k] for k in method.params}
    hp.update(apply_overrides({}, args.hp))
    if spec.path.mode == "bank" and reads_teacher_path(method.name) \
            and hp["ema_rate"] not in spec.path.bank_rates:   # before the teacher trains
        raise InputError(f"--hp ema_rate={hp['ema_rate']}: path.mode 'bank' keeps only "
                         f"path.bank_rates {spec.path.bank_rates}; pick one of them")
    rate = spec.data.noise.rates[0] if args.noise_rate is None else args.noise_rate
    seed = spec.seeds[0] if args.seed is None else args.seed
    data = noisy(spec, load_clean(spec), rate, seed)
    device = device_for(spec.scaling.use_gpu)
    teacher = None
    if method.needs_teacher:
        t, row = run_teacher(spec, data, rate, seed, device)
        print(json.dumps({"teacher": _brief(row)}))
        teacher = teacher_outputs(spec, data, t.path, t.best_state, t.last_state, t.best_epoch, device)
    _, row = run_student(spec, data, rate, seed, method.name, hp, teacher, device, stage="run")
    print(json.dumps({"student": _brief(row)}))
    return 0


def _brief(row: dict) -> dict:
    keys = ("method", "noise_rate", "seed", "best_epoch", "val_acc", "test_acc", "test_acc_last",
            "test_ece", "label_dist_pstar", "label_recovery", "wall_s")
    return {k: row[k] for k in keys if k in row}


COMMANDS = {"sweep": cmd_sweep, "validate": cmd_validate, "report": cmd_report, "run": cmd_run}

if __name__ == "__main__":
    sys.exit(main())
