"""The sweep driver: teachers, then Optuna searches over student hyperparameters, then the
best configuration of every (noise rate, method) reproduced on every seed, then (with
`generations: G`) G - 1 born-again generations of the teacher-based methods.

The driver is long-lived: it `ray.put`s the dataset once and each teacher's path and weights
once, and owns those refs for the whole sweep. Every finished run writes its own row file
(`runs/<run_id>.parquet`) to the sweep folder; the driver collects them into the tables.
That makes `--resume` simple and exact: a run with a row file is never run again.
"""
from __future__ import annotations

import functools
import logging
import math
import os
import time
from datetime import datetime, timezone

import numpy as np
import optuna
import pandas as pd
import ray
from ray import tune
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from filterkd_ray import InputError
from filterkd_ray.experiment import load_clean, teacher_id
from filterkd_ray.jobs import (check_resources, error_row, load_state, trial_fn, trial_resources,
                               write_run)
from filterkd_ray.labels import METHODS
from filterkd_ray.pathmodes import path_file, read_path
from filterkd_ray.report import by_selection
from filterkd_ray.results import (EPOCH_COLUMNS, SCHEMA_VERSION, TEACHER_COLUMNS, TRIAL_COLUMNS,
                                  Store, frame, provenance)
from filterkd_ray.spec import FloatRange, Spec

FINISHED = ("ok", "failed", "stopped")


def init_ray(address: str | None, spec: Spec) -> None:
    """Join a cluster (`--address`), or start an embedded local Ray sized for this machine."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if ray.is_initialized():
        return
    if address:
        # WARNING: Ray's INFO lines ("Connecting to existing Ray cluster ...") would surround
        # a bad-input error, which must stay the one line on stderr.
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        return
    # Logical CPUs may exceed cores: a DDP trial needs its driver plus its workers.
    need = spec.scaling.num_workers * spec.scaling.cpus_per_worker + 1
    ray.init(address="local", num_cpus=max(os.cpu_count() or 1, math.ceil(need)),
             include_dashboard=False, log_to_driver=False)


class Sweep:
    def __init__(self, spec: Spec, output: str, log=print):
        self.spec, self.store, self.log = spec, Store(output), log
        self.t0 = time.time()
        self.context = {"spec": spec.model_dump(), "store": self.store.uri,
                        "train_storage": self._local_or_uri("ray_train")}

    def _local_or_uri(self, name: str) -> str:
        return self.store.path(name) if self.store.is_local else f"{self.store.uri}/{name}"

    # --- bookkeeping ---------------------------------------------------------------------
    def finished_runs(self) -> dict[str, dict]:
        rows = {}
        for name in self.store.list("runs"):
            if name.endswith(".parquet") and not name.endswith(".epochs.parquet"):
                row = self.store.read_table(f"runs/{name[:-len('.parquet')]}").iloc[0].to_dict()
                if row["status"] in FINISHED:
                    rows[row["trial_id"]] = row
        return rows

    def manifest(self, status: str, **extra) -> None:
        old = self.store.read_json("manifest.json") if self.store.exists("manifest.json") else {}
        self.store.write_json("manifest.json", {
            **old, "schema_version": SCHEMA_VERSION, "status": status,
            "spec": self.spec.model_dump(), "started_at": old.get("started_at", _now()),
            "updated_at": _now(), **provenance(), **extra})

    # --- running a stage -----------------------------------------------------------------
    def tune(self, name: str, param_space: dict, context: dict, num_samples: int, total: int,
             search_alg=None, scheduler=None) -> None:
        """One Tune run of `total` trials (a grid of `total` jobs, or `num_samples` searched)."""
        spec = self.spec
        trainable = tune.with_resources(functools.partial(trial_fn, context=context),
                                        trial_resources(spec))
        mode = "max" if spec.search.metric.endswith("acc") else "min"
        recorder = RunRecorder(self, total)
        tuner = tune.Tuner(
            trainable, param_space=param_space,
            tune_config=tune.TuneConfig(
                num_samples=num_samples, search_alg=search_alg, scheduler=scheduler,
                metric="objective", mode=mode,
                max_concurrent_trials=spec.search.max_concurrent,
                reuse_actors=True),   # a fresh actor per trial costs seconds of imports
            run_config=tune.RunConfig(
                name=f"{name}-{int(time.time())}", storage_path=self._local_or_uri("tune"),
                verbose=0, failure_config=tune.FailureConfig(max_failures=spec.scaling.max_failures),
                callbacks=[recorder]))
        tuner.fit()

    def grid(self, name: str, jobs: list[dict], context: dict) -> None:
        done = self.finished_runs()
        todo = [j for j in jobs if j["run_id"] not in done]
        self.log(f"[{name}] {len(jobs) - len(todo)} of {len(jobs)} runs already done; "
                 f"running {len(todo)}")
        if todo:
            self.tune(name, {"job": tune.grid_search(todo)}, context, 1, len(todo))

    # --- the three stages ----------------------------------------------------------------
    def run(self, resume: bool) -> Store:
        spec = self.spec
        check_resources(spec)
        clean = load_clean(spec)
        data_ref = ray.put(clean)                     # once: every trial reads this copy
        base = {**self.context, "data_ref": data_ref}
        rates, seeds = spec.data.noise.rates, spec.seeds
        needs_teacher = any(METHODS[m].needs_teacher for m in spec.methods)
        teacher_refs = {}
        if needs_teacher:
            self.grid("teachers", [{"run_id": teacher_id(r, s), "kind": "teacher", "stage": "teacher",
                                    "noise_rate": r, "seed": s} for r in rates for s in seeds], base)
            teacher_refs = self.put_teachers([teacher_id(r, s) for r in rates for s in seeds],
                                             spec.teacher.model)
        self.search_stage(base, teacher_refs)
        if spec.reproduce:
            best = self.best_configs()
            for g in range(1, spec.generations + 1):
                jobs = [self.generation_job(r, m, s, hp, g) for (r, m), hp in best.items()
                        for s in seeds if g == 1 or METHODS[m].needs_teacher]
                if g > 1:   # each distils from its own method's previous generation
                    jobs = self.taught_by_ok_runs(jobs, f"generation-{g}")
                    teacher_refs = self.put_teachers(sorted({j["teacher_id"] for j in jobs}),
                                                     spec.student.model)
                self.grid("reproduce" if g == 1 else f"generation-{g}", jobs,
                          {**base, "teacher_refs_by_id": teacher_refs})
        self.collect()
        return self.store

    def generation_job(self, rate, method, seed, hparams, g: int) -> dict:
        """A reproduce run of generation g: g = 1 distils from the teacher; g > 1 from the
        same (rate, method, seed)'s generation g - 1 student (born-again networks)."""
        run = lambda g: f"repro-r{rate:g}-{method}-s{seed}" + (f"-g{g}" if g > 1 else "")  # noqa: E731
        return {"run_id": run(g), "kind": "student", "stage": "reproduce", "noise_rate": rate,
                "seed": seed, "method": method, "hparams": hparams, "generation": g,
                "teacher_id": teacher_id(rate, seed) if g == 1 else run(g - 1),
                "teaches": g < self.spec.generations and METHODS[method].needs_teacher}

    def taught_by_ok_runs(self, jobs: list[dict], stage: str) -> list[dict]:
        """A failed (diverged, errored) student cannot teach: its line of generations ends
        there, said on the terminal, while the other lines go on."""
        done = self.finished_runs()
        ok = [j for j in jobs if done.get(j["teacher_id"], {}).get("status") == "ok"]
        for j in jobs:
            if j not in ok:
                self.log(f"[{stage}] skipping {j['run_id']}: its teacher {j['teacher_id']} "
                         "did not finish ok")
        return ok

    def put_teachers(self, run_ids, model: str) -> dict:
        """Each teacher's path and weights into the object store, once, owned by this driver."""
        done, refs, mode = self.finished_runs(), {}, self.spec.path.mode
        for tid in run_ids:
            if done.get(tid, {}).get("status") != "ok":
                raise RuntimeError(f"teacher {tid} failed: {done.get(tid, {}).get('error')}")
            path = read_path(self.store, path_file(tid, mode))
            # np.asarray: a np.memmap is pickled by value, so every reader would get its own
            # writable copy; a plain ndarray (alone or in a dataclass) is read zero-copy.
            refs[tid] = {"path": ray.put(np.asarray(path) if mode == "dense" else path),
                         "best": ray.put(load_state(self.store, f"teachers/{tid}/best.pt")),
                         "last": ray.put(load_state(self.store, f"teachers/{tid}/last.pt")),
                         "best_epoch": int(done[tid]["best_epoch"]), "model": model}
        return refs

    def search_stage(self, base: dict, teacher_refs: dict) -> None:
        """Every (noise rate, method) search in one Tuner: one start-up, actors reused, and
        `search.max_concurrent` trials running across all searches at once."""
        spec, done = self.spec, self.finished_runs()
        mode = "max" if spec.search.metric.endswith("acc") else "min"
        seed = spec.search_seeds[0]
        groups = []
        for rate in spec.data.noise.rates:
            for method in spec.methods:
                name = f"search-r{rate:g}-{method}"
                space, constants = tune_space(spec.space_for(method))
                n = spec.search.num_samples if space else 1   # nothing to search: one run
                finished = sum(k.startswith(name + "-") for k in done)
                searcher = None
                if space and finished < n:
                    searcher = OptunaSearch(
                        # Each search gets its own sampler seed, derived from search.seed and
                        # its name, so two searches do not draw the same start-up points.
                        sampler=optuna.samplers.TPESampler(seed=group_seed(spec.search.seed, name)),
                        storage=self.optuna_storage(name), study_name=name,
                        metric="objective", mode=mode)
                    searcher.set_search_properties(None, None, {"hparams": space})
                job = {"run_prefix": name + "-", "kind": "student", "stage": "search",
                       "noise_rate": rate, "seed": seed, "method": method,
                       "teacher_id": teacher_id(rate, seed)}
                groups.append(SearchGroup(name, job, constants, n - finished, searcher))
        todo = sum(max(g.remaining, 0) for g in groups)
        self.log(f"[search] {len(groups)} searches (noise rate x method), "
                 f"{todo} trials to run on seed {seed}")
        if todo == 0:
            return
        scheduler = None
        if spec.search.scheduler == "asha":
            scheduler = PerGroupASHA(lambda: tune.schedulers.ASHAScheduler(
                time_attr="epoch", max_t=spec.student.epochs, grace_period=spec.search.grace_period))
        self.tune("search", {}, {**base, "teacher_refs_by_id": teacher_refs}, todo, todo,
                  GroupedSearch(groups, "objective", mode), scheduler)

    def optuna_storage(self, group: str):
        """An sqlite study in the sweep folder, so a resumed sweep resumes the search."""
        folder = self.store.path("optuna") if self.store.is_local else os.path.abspath(".filterkd_optuna")
        os.makedirs(folder, exist_ok=True)
        storage = optuna.storages.RDBStorage(f"sqlite:///{folder}/{group}.db")
        # Trials left RUNNING by a killed driver would be counted by TPE's constant liar forever.
        for study in storage.get_all_studies():
            for t in storage.get_all_trials(study._study_id, deepcopy=False):
                if t.state == optuna.trial.TrialState.RUNNING:
                    storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
        return storage

    def best_configs(self) -> dict:
        rows = pd.DataFrame(self.finished_runs().values())
        rows = rows[(rows.stage == "search") & (rows.status == "ok")]
        metric = self.spec.search.metric
        best = {}
        for (r, m), g in rows.groupby(["noise_rate", "method"]):
            top = by_selection(g, metric).iloc[0]   # the rule report.best_hparams names
            best[(float(r), m)] = {p: _plain(top[p]) for p in METHODS[m].params}
        return best

    def collect(self) -> None:
        runs = self.finished_runs()
        trials = frame(list(runs.values()), TRIAL_COLUMNS)
        epochs = [self.store.read_table(f"runs/{k}.epochs") for k in runs
                  if self.store.exists(f"runs/{k}.epochs.parquet")]
        epochs = frame([], EPOCH_COLUMNS) if not epochs else pd.concat(epochs, ignore_index=True)
        t = trials[trials.stage == "teacher"]
        teachers = pd.DataFrame({
            "teacher_id": t.trial_id, "dataset": t.dataset, "noise_kind": t.noise_kind,
            "noise_rate": t.noise_rate, "seed": t.seed, "best_epoch": t.best_epoch,
            "epochs_run": t.epochs_run, "val_acc": t.val_acc, "test_acc": t.test_acc,
            "test_acc_last": t.test_acc_last,
            "path_file": [path_file(i, self.spec.path.mode) for i in t.trial_id],
            "labels_file": "paths/" + t.trial_id + ".labels.npz", "node_id": t.node_id,
            "wall_s": t.wall_s, "status": t.status})
        self.store.write_table("trials", trials.sort_values(["stage", "trial_id"]))
        self.store.write_table("epochs", epochs)
        self.store.write_table("teachers", frame(teachers.to_dict("records"), TEACHER_COLUMNS))


def group_seed(seed: int, name: str) -> int:
    return int(np.random.SeedSequence([seed, *name.encode()]).generate_state(1)[0])


def tune_space(space: dict) -> tuple[dict, dict]:
    """Spec dimensions -> (Tune domains, constants)."""
    domains, constants = {}, {}
    for p, dim in space.items():
        if isinstance(dim, FloatRange):
            domains[p] = (tune.loguniform if dim.log else tune.uniform)(dim.low, dim.high)
        elif isinstance(dim, list):
            if len(dim) == 1:
                constants[p] = dim[0]
            else:
                domains[p] = tune.choice(dim)
        else:
            constants[p] = dim
    return domains, constants


class SearchGroup:
    def __init__(self, name, job, constants, remaining, searcher):
        self.name, self.job, self.constants = name, job, constants
        self.remaining, self.searcher = remaining, searcher


class GroupedSearch(Searcher):
    """Many independent searches behind one Tune searcher: each (noise rate, method) group
    has its own seeded OptunaSearch and sqlite study; trials are handed out round-robin over
    the groups with budget left, and results are routed back to the group that asked."""

    def __init__(self, groups: list[SearchGroup], metric: str, mode: str):
        super().__init__(metric=metric, mode=mode)
        self.groups, self.owner, self.turn = groups, {}, 0

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True   # each group's space was set when it was built

    def suggest(self, trial_id: str):
        open_groups = [g for g in self.groups if g.remaining > 0]
        if not open_groups:
            return Searcher.FINISHED
        group = open_groups[self.turn % len(open_groups)]
        self.turn += 1
        group.remaining -= 1
        hparams = dict(group.constants)
        if group.searcher is not None:
            hparams.update(group.searcher.suggest(trial_id)["hparams"])
        self.owner[trial_id] = group
        return {"job": group.job, "hparams": hparams}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        group = self.owner.get(trial_id)
        if group is not None and group.searcher is not None:
            group.searcher.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result=None, error: bool = False) -> None:
        group = self.owner.get(trial_id)
        if group is not None and group.searcher is not None:
            group.searcher.on_trial_complete(trial_id, result, error)

    # A resumed sweep continues from the run row files and the groups' sqlite studies, not
    # from Tune's experiment state: nothing to save here (and no warning that says otherwise).
    def save(self, checkpoint_path: str) -> None:
        pass

    def restore(self, checkpoint_path: str) -> None:
        pass


class PerGroupASHA(tune.schedulers.FIFOScheduler):
    """One ASHA per search group: a filter_kd trial is only ever stopped for doing worse than
    other filter_kd trials at the same noise rate, never for losing to another method."""

    def __init__(self, make):
        super().__init__()
        self.make, self.by_group = make, {}

    def set_search_properties(self, metric, mode, **spec) -> bool:
        self._metric, self._mode = metric, mode
        return True

    def _asha(self, trial):
        group = trial.config["job"]["run_prefix"]
        if group not in self.by_group:
            self.by_group[group] = self.make()
            self.by_group[group].set_search_properties(self._metric, self._mode)
        return self.by_group[group]

    def on_trial_add(self, controller, trial):
        self._asha(trial).on_trial_add(controller, trial)

    def on_trial_result(self, controller, trial, result):
        return self._asha(trial).on_trial_result(controller, trial, result)

    def on_trial_complete(self, controller, trial, result):
        self._asha(trial).on_trial_complete(controller, trial, result)

    def on_trial_remove(self, controller, trial):
        self._asha(trial).on_trial_remove(controller, trial)


class RunRecorder(tune.Callback):
    """Driver-side: progress on the terminal, and rows for trials that never wrote their own
    (stopped by the scheduler, or errored after all retries)."""

    def __init__(self, sweep: Sweep, total: int):
        self.sweep, self.total = sweep, total
        self.history: dict[str, list[dict]] = {}
        self.best, self.done, self.t0 = None, 0, time.time()

    def _run_id(self, trial) -> str:
        job = trial.config.get("job", {})
        return job.get("run_id") or job["run_prefix"] + trial.trial_id

    def on_trial_result(self, iteration, trials, trial, result, **info):
        # Tune adds its own `trial_id` to results: keep only the metrics the engine reported.
        self.history.setdefault(trial.trial_id, []).append(
            {k: result[k] for k in EPOCH_COLUMNS[5:] if k in result})

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.done += 1
        run_id = self._run_id(trial)
        if not self.sweep.store.exists(f"runs/{run_id}.parquet"):   # stopped early by ASHA
            row = {**error_row(self.sweep.spec, self._job(trial), ""), "status": "stopped",
                   "error": None, **self._summary(trial)}
            write_run(self.sweep.store, run_id, row, self._epochs(trial, run_id, row))
        self._progress(trials, trial)

    def on_trial_recover(self, iteration, trials, trial, **info):
        # A lost node or a crashed trial: say so, or a retry looks like a hang on the terminal.
        self.sweep.log(f"  {self._run_id(trial)}: attempt {trial.num_failures} failed "
                       f"(node lost or trial crashed); retrying from its last checkpoint, "
                       f"{self.sweep.spec.scaling.max_failures - trial.num_failures} retries left")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.done += 1
        run_id = self._run_id(trial)
        err = str(getattr(trial, "error_msg", None) or "trial raised; see the Tune logs")
        write_run(self.sweep.store, run_id, error_row(self.sweep.spec, self._job(trial), err), [])
        self._progress(trials, trial)

    def _summary(self, trial) -> dict:
        """A stopped trial's headline numbers, from the epochs it reported."""
        hist = self.history.get(trial.trial_id, [])
        if not hist:
            return {}
        metric = self.sweep.spec.search.metric
        sign = -1 if metric.endswith("nll") else 1
        best = max(range(len(hist)), key=lambda i: sign * hist[i].get(metric, -sign * math.inf))
        out = {"best_epoch": best, "epochs_run": len(hist)}
        for k in ("val_acc", "val_nll", "val_ece", "test_acc", "test_nll", "test_ece"):
            out[k], out[f"{k}_last"] = hist[best].get(k), hist[-1].get(k)
        return out

    def _job(self, trial) -> dict:
        return {**trial.config.get("job", {}), "hparams": trial.config.get("hparams", {})}

    def _epochs(self, trial, run_id, row) -> list[dict]:
        keys = {k: row[k] for k in ("stage", "method", "noise_rate", "seed")}
        return [{"trial_id": run_id, **keys, **h} for h in self.history.get(trial.trial_id, [])]

    def _progress(self, trials, trial) -> None:
        obj = (trial.last_result or {}).get("objective")
        if obj is not None:
            better = max if self.sweep.spec.search.metric.endswith("acc") else min
            self.best = obj if self.best is None else better(self.best, obj)
        running = sum(t.status == "RUNNING" for t in trials)
        pending = sum(t.status == "PENDING" for t in trials)
        elapsed = time.time() - self.t0
        left = elapsed / self.done * (self.total - self.done) if self.done else float("nan")
        best = "-" if self.best is None else f"{self.best:.4f}"
        self.sweep.log(f"  {self._run_id(trial)}: {self.done}/{self.total} done, {running} running, "
                       f"{pending} pending; best {self.sweep.spec.search.metric} {best}; "
                       f"{elapsed:.0f}s elapsed, ~{left:.0f}s left in this stage")


def run_sweep(spec: Spec, output: str | None = None, address: str | None = None,
              resume: bool = False, log=print) -> Store:
    output = output or f"results/{spec.name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    store = Store(output)
    has_manifest = store.exists("manifest.json")
    if resume and not has_manifest:
        raise InputError(f"--resume: {output} holds no sweep to resume (no manifest.json)")
    if not resume and store.exists() and (has_manifest or store.list("")):
        raise InputError(f"--output {output}: folder exists and is not empty; "
                         "pass --resume to continue it, or choose another folder")
    if resume and store.read_json("manifest.json")["spec"] != spec.model_dump():
        raise InputError(f"--resume: the spec differs from the one {output} was started with; "
                         "resume with the same spec and --set overrides")
    store.check_writable()   # before Ray starts: a bad --output fails in one line
    init_ray(address, spec)
    check_resources(spec)    # before the manifest: an impossible request leaves no sweep behind
    sweep = Sweep(spec, output, log)
    store.makedirs()
    # The node that ray.put the shared arrays: trials elsewhere read them through the network.
    sweep.manifest("running", driver_node_id=ray.get_runtime_context().get_node_id())
    try:
        sweep.run(resume)
    except Exception:
        sweep.manifest("failed")
        raise
    sweep.manifest("done", finished_at=_now(), wall_s=time.time() - sweep.t0)
    from filterkd_ray import report
    report.write_summary(store)
    try:
        report.write_report(store)
    except Exception as err:  # noqa: BLE001 - the tables stand; the report can be rebuilt
        log(f"report: could not be written ({err}); rebuild with `filterkd-ray report {output}`")
    return store


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _plain(v):
    return v.item() if isinstance(v, np.generic) else v
