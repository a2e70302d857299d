"""Summary tables with seed statistics, and the report with its plots, from a sweep folder.

Reads ONLY the folder (manifest.json, the Parquet tables, the path and label files), so a
report can be rebuilt anywhere, any time: `filterkd-ray report FOLDER`.

Which rows a number comes from (summary_table): for each (noise rate, method), the `ok`
rows of the `reproduce` stage (the best configuration re-run on every seed). Where a
(noise rate, method) has no reproduce rows (a spec with `reproduce: false`, or a sweep
stopped before that stage), the `search` stage stands in: per seed, its best row by the
search metric. Such cells are marked "search best": they are selected on the same seed's
validation split, so they are optimistic, and usually come from one seed. Several rows of
one seed are averaged first, so `n` always counts seeds. The paired difference to `oht`
matches seeds: d_s = x(method, s) - x(oht, s), mean and a 95% t-interval over seeds.

Plots (`plots.py`) are drawn on `matplotlib.figure.Figure` objects (no pyplot, no display, no global
backend state). A plot that does not apply (no p*, no filter_kd, no flipped labels) is
skipped with a line in report.md saying why.
"""
from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from filterkd_ray import InputError, __version__
from filterkd_ray import experiment
from filterkd_ray.labels import METHODS
from filterkd_ray.results import Store, git_commit, open_sweep

BASELINE = "oht"
# Every hyperparameter a row can carry (experiment.HPARAMS: the paper's five and the family's).
HPARAMS = experiment.HPARAMS
NUMERIC_HPARAMS = tuple(p for p in HPARAMS if p != "snapshot")
LOG_HPARAMS = ("ema_rate", "temperature")
STUDENT_STAGES = ("search", "reproduce")
REQUIRED = ("trial_id", "stage", "method", "noise_rate", "seed", "status", "val_acc",
            "test_acc")
# metric -> (label, higher is better)
METRICS = {
    "test_acc": ("test accuracy (best-validation epoch)", True),
    "test_acc_last": ("test accuracy (last epoch)", True),
    "test_ece": ("test ECE (best-validation epoch)", False),
    "label_dist_pstar": ("label distance to p* (mean ||target - p*||)", False),
    "label_recovery": ("label recovery (flipped samples whose target argmax is clean)", True),
}
SIMPLEX = np.array([[0.0, 0.0], [1.0, 0.0], [0.5, math.sqrt(0.75)]])
EMA_GRID = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
MAX_SCATTER = 5000


class Skip(Exception):
    """A plot that does not apply; the message is the reason written into report.md."""


# --- reading ------------------------------------------------------------------------------

def _open(store, allow_running: bool) -> tuple[Store, dict]:
    uri = store.uri if isinstance(store, Store) else str(store)
    try:
        opened = open_sweep(uri, allow_running=allow_running)
        manifest = opened.read_json("manifest.json")
    except json.JSONDecodeError as err:
        raise InputError(f"{uri}/manifest.json: not valid JSON ({err.msg}); "
                         "the folder is damaged or not a filterkd-ray sweep output") from None
    return opened, manifest


def _read(store: Store, name: str, required=()) -> pd.DataFrame:
    try:
        df = store.read_table(name)
    except Exception as err:  # noqa: BLE001 - any pyarrow failure means an unreadable file
        raise InputError(f"{store.path(name)}.parquet: not a readable Parquet table "
                         f"({type(err).__name__}: {err}); re-run `filterkd-ray sweep --resume` "
                         "to rewrite it") from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise InputError(f"{store.path(name)}.parquet: missing columns {missing}; it was not "
                         "written by this filterkd-ray results schema")
    return df


def load_trials(store: Store) -> pd.DataFrame:
    if not store.exists("trials.parquet"):
        raise InputError(f"{store.uri}: no trials.parquet yet; the sweep has not collected its "
                         "results (resume it with `filterkd-ray sweep --resume`)")
    return _read(store, "trials", REQUIRED)


def _higher_is_better(metric: str) -> bool:
    return not metric.endswith(("nll", "ece", "dist_pstar"))


def _method_order(methods) -> list[str]:
    known = [m for m in METHODS if m in set(methods)]
    return known + sorted(set(methods) - set(known))


def _by_rate_and_method(df: pd.DataFrame, then=()) -> pd.DataFrame:
    """Rows sorted by noise rate, then methods in registry order, then `then`."""
    order = {m: i for i, m in enumerate(_method_order(df.method.unique()))}
    return (df.assign(_o=df.method.map(order)).sort_values(["noise_rate", "_o", *then])
            .drop(columns="_o").reset_index(drop=True))


# --- tables -------------------------------------------------------------------------------

def by_selection(rows: pd.DataFrame, select: str) -> pd.DataFrame:
    """Rows best first by `select`. Accuracy on a finite validation split ties often (three
    toy KD trials shared 0.5886), so ties go to the other validation metric (NLL for
    accuracy). Runs that are identical up to their best epoch (SAT before its start epoch)
    tie on both: they go to the configuration text, which the seeded search reproduces,
    and only then to Tune's trial id, which is random. So the same sweep always makes the
    same choice, and the sweep (which reproduces it) and the report (which names it) agree."""
    other = "val_nll" if select == "val_acc" else "val_acc"
    metrics = [select] + ([other] if other in rows else [])
    keys = metrics + (["config"] if "config" in rows else []) + ["trial_id"]
    ascending = [not _higher_is_better(k) for k in metrics] + [True] * (len(keys) - len(metrics))
    return rows.sort_values(keys, ascending=ascending, kind="stable")


def generation(trials: pd.DataFrame) -> pd.Series:
    """Each row's born-again generation: 0 = teacher, 1 = distilled from it (also rows
    written before generations existed), g = distilled from generation g - 1."""
    if "generation" not in trials:
        return pd.Series(np.where(trials.stage == "teacher", 0, 1), index=trials.index)
    return trials.generation.fillna(1).astype(int)


def student_rows(trials: pd.DataFrame, select: str = "val_acc") -> pd.DataFrame:
    """The rows the tables are computed from (module docstring), with a `source` column.
    Born-again generations beyond the first have their own table (generation_table)."""
    ok = trials[trials.stage.isin(STUDENT_STAGES) & (trials.status == "ok")
                & (generation(trials) <= 1)]
    parts = []
    for _, g in ok.groupby(["noise_rate", "method"], sort=True):
        rep = g[g.stage == "reproduce"]
        if len(rep):
            parts.append(rep.assign(source="reproduce"))
            continue
        s = g[g.stage == "search"].dropna(subset=[select])
        if len(s):
            s = by_selection(s, select)
            parts.append(s.groupby("seed", sort=True).head(1).assign(source="search best"))
    if not parts:
        return ok.iloc[:0].assign(source=pd.Series(dtype=str))
    return pd.concat(parts, ignore_index=True)


def best_hparams(trials: pd.DataFrame, select: str = "val_acc") -> pd.DataFrame:
    """Per (noise rate, method): the search row with the best `select` (its hyperparameters,
    that value and its trial id); the reproduce rows' configuration where nothing was searched."""
    ok = trials[trials.stage.isin(STUDENT_STAGES) & (trials.status == "ok")]
    out = []
    for (rate, method), g in ok.groupby(["noise_rate", "method"], sort=True):
        s = g[g.stage == "search"].dropna(subset=[select])
        s = s if len(s) else g.dropna(subset=[select])
        if s.empty:
            continue
        params = METHODS[method].params if method in METHODS else HPARAMS
        rep = g[g.stage == "reproduce"]
        if len(rep) and params:
            # Name the configuration that was reproduced (several search trials can tie).
            same = np.logical_and.reduce([s[p].astype(str) == str(rep.iloc[0][p]) for p in params])
            s = s[same] if same.any() else s
        top = by_selection(s, select).iloc[0]
        out.append({"noise_rate": rate, "method": method,
                    **{p: (top[p] if p in params and p in top else None) for p in HPARAMS},
                    f"best_{select}": top[select], "best_trial_id": top["trial_id"]})
    return pd.DataFrame(out, columns=["noise_rate", "method", *HPARAMS, f"best_{select}",
                                      "best_trial_id"])


def _t_interval(d: np.ndarray) -> tuple[float, float, float]:
    n = len(d)
    if n == 0:
        return math.nan, math.nan, math.nan
    mean = float(d.mean())
    if n < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(0.975, n - 1) * d.std(ddof=1) / math.sqrt(n))
    return mean, mean - half, mean + half


def summary_table(trials: pd.DataFrame, metric: str = "test_acc",
                  select: str = "val_acc") -> pd.DataFrame:
    """Per (noise rate, method): seeds n, mean, std (ddof=1) of `metric`; the paired
    difference to oht over matched seeds (diff_mean, 95% t-interval diff_lo..diff_hi, diff_n);
    the best hyperparameters of the search stage (by `select`). Rows: see student_rows."""
    if metric not in trials.columns:
        raise InputError(f"metric: {metric!r} is not a column of trials.parquet")
    rows = student_rows(trials, select)
    cols = ["noise_rate", "method", "source", "n", "mean", "std", "diff_n", "diff_mean",
            "diff_lo", "diff_hi", *HPARAMS, f"best_{select}", "best_trial_id"]
    if rows.empty:
        return pd.DataFrame(columns=cols)
    per_seed = (rows.dropna(subset=[metric])
                .groupby(["noise_rate", "method", "seed"], as_index=False)[metric].mean())

    def seeds_of(rate, method) -> pd.Series:
        g = per_seed[(per_seed.noise_rate == rate) & (per_seed.method == method)]
        return g.set_index("seed")[metric]

    hp = best_hparams(trials, select).set_index(["noise_rate", "method"])
    out = []
    for (rate, method), g in rows.groupby(["noise_rate", "method"], sort=True):
        vals = seeds_of(rate, method)
        rec = {"noise_rate": rate, "method": method, "source": g.source.iloc[0],
               "n": int(len(vals)), "mean": float(vals.mean()) if len(vals) else math.nan,
               "std": float(vals.std(ddof=1)) if len(vals) > 1 else math.nan,
               "diff_n": 0, "diff_mean": math.nan, "diff_lo": math.nan, "diff_hi": math.nan}
        base = seeds_of(rate, BASELINE)
        if method != BASELINE and len(base):
            paired = pd.concat([vals.rename("m"), base.rename("b")], axis=1, join="inner")
            d = (paired.m - paired.b).to_numpy(np.float64)
            m, lo, hi = _t_interval(d)
            rec.update(diff_n=len(d), diff_mean=m, diff_lo=lo, diff_hi=hi)
        if (rate, method) in hp.index:
            rec.update(hp.loc[(rate, method)].to_dict())
        out.append(rec)
    return _by_rate_and_method(pd.DataFrame(out, columns=cols))


def generation_table(trials: pd.DataFrame, metric: str = "test_acc") -> pd.DataFrame:
    """Born-again generations: per (noise rate, method, generation) of the reproduce runs,
    seeds n, mean and std of `metric`, and the paired difference to generation 1 over
    matched seeds. Only methods that ran more than one generation."""
    rep = trials[(trials.stage == "reproduce") & (trials.status == "ok")].assign(
        gen=generation(trials)).dropna(subset=[metric])
    out = []
    for (rate, method), g in rep.groupby(["noise_rate", "method"], sort=True):
        if g.gen.max() < 2:
            continue
        per_seed = g.groupby(["gen", "seed"])[metric].mean()
        first = per_seed.loc[1] if 1 in per_seed.index.get_level_values(0) else pd.Series(dtype=float)
        for gen in sorted(g.gen.unique()):
            vals = per_seed.loc[gen]
            d = (vals - first).dropna().to_numpy(np.float64) if gen > 1 else np.array([])
            m, lo, hi = _t_interval(d)
            out.append({"noise_rate": rate, "method": method, "generation": int(gen),
                        "n": len(vals), "mean": float(vals.mean()),
                        "std": float(vals.std(ddof=1)) if len(vals) > 1 else math.nan,
                        "diff_n": len(d), "diff_mean": m, "diff_lo": lo, "diff_hi": hi})
    return _by_rate_and_method(pd.DataFrame(out, columns=[
        "noise_rate", "method", "generation", "n", "mean", "std", "diff_n", "diff_mean",
        "diff_lo", "diff_hi"]), then=["generation"])


def generations_md(trials: pd.DataFrame) -> list[str]:
    """The born-again section of summary.md and report.md (empty without generations)."""
    tables = {m: generation_table(trials, m) for m in ("test_acc", "test_acc_last",
                                                        "label_dist_pstar") if m in trials}
    acc = tables.get("test_acc")
    if acc is None or acc.empty:
        return []
    cells = {m: {(r.noise_rate, r.method, r.generation): r for r in t.itertuples()}
             for m, t in tables.items()}

    def cell(metric, r) -> str:
        c = cells.get(metric, {}).get((r.noise_rate, r.method, r.generation))
        return "—" if c is None else mean_std(c.mean, c.std)
    rows = [[_rate(r.noise_rate), r.method, str(r.generation), str(r.n), mean_std(r.mean, r.std),
             "—" if r.generation == 1 else
             f"{diff_ci(r.diff_mean, r.diff_lo, r.diff_hi)} (n={r.diff_n})",
             cell("test_acc_last", r), cell("label_dist_pstar", r)]
            for r in acc.itertuples()]
    return ["## Born-again generations", "",
            "Generation g + 1 distils from the generation-g student of the same method, seed "
            "and hyperparameters (generation 1 from the teacher). Test accuracy at the "
            "best-validation epoch, mean ± std over seeds; Δ paired with generation 1 over "
            "matched seeds [95% t-interval]; the distance to p* is that of the target table "
            "the generation was trained on.", "",
            *_md_table(["noise rate", "method", "generation", "seeds", "test acc",
                        "Δ vs generation 1 [95% CI]", "test acc (last)", "target dist to p*"],
                       rows), ""]


# --- formatting ---------------------------------------------------------------------------

def _num(x, fmt=".4f") -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def mean_std(mean, std) -> str:
    if mean is None or math.isnan(mean):
        return "—"
    return f"{mean:.4f}" if std is None or math.isnan(std) else f"{mean:.4f} ± {std:.4f}"


def diff_ci(mean, lo, hi) -> str:
    if mean is None or math.isnan(mean):
        return "—"
    if lo is None or math.isnan(lo):
        return f"{mean:+.4f}"
    return f"{mean:+.4f} [{lo:+.4f}, {hi:+.4f}]"


def hparams_text(row) -> str:
    parts = []
    for p in HPARAMS:
        v = row.get(p)
        if v is None or (isinstance(v, float) and math.isnan(v)):
            continue
        parts.append(f"{p}={v:.4g}" if isinstance(v, (int, float, np.floating)) else f"{p}={v}")
    return ", ".join(parts) or "—"


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def _rate(r) -> str:
    return f"{float(r):g}"


def _provenance(store: Store, manifest: dict, trials: pd.DataFrame) -> list[str]:
    spec = manifest.get("spec") or {}
    data = spec.get("data") or {}
    noise = data.get("noise") or {}
    name = spec.get("name") or (trials.spec_name.dropna().iloc[0]
                                if "spec_name" in trials and trials.spec_name.notna().any() else "?")
    seeds = spec.get("seeds") or sorted(int(s) for s in trials.seed.dropna().unique())
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return [
        f"- spec: `{name}`; dataset `{data.get('name', '?')}`, noise `{noise.get('kind', '?')}` "
        f"at rates {noise.get('rates', sorted(trials.noise_rate.unique().tolist()))}; "
        f"seeds {seeds}; methods {spec.get('methods', sorted(trials.method.unique().tolist()))}",
        f"- sweep: status `{manifest.get('status')}`, filterkd_ray "
        f"{manifest.get('package_version', '?')} at commit `{manifest.get('git_commit', '?')}`, "
        f"started {manifest.get('started_at', '?')}, finished {manifest.get('finished_at', manifest.get('updated_at', '?'))}",
        f"- written {now} by filterkd_ray {__version__} at commit `{git_commit()}` from `{store.uri}`",
    ]


def _select_metric(manifest: dict) -> str:
    return ((manifest.get("spec") or {}).get("search") or {}).get("metric", "val_acc")


# --- summary.md ---------------------------------------------------------------------------

def write_summary(store) -> str:
    """Write summary.md: per (noise rate, method) the headline numbers over seeds. Quick (no
    plots, no path files) and accepted while the sweep still runs, for a progress view."""
    store, manifest = _open(store, allow_running=True)
    trials = load_trials(store)
    select = _select_metric(manifest)
    lines = [f"# Sweep summary: {(manifest.get('spec') or {}).get('name', store.uri)}", "",
             *_provenance(store, manifest, trials), "",
             f"Mean ± std over seeds (ddof=1) of the `reproduce` runs (best configuration by "
             f"search `{select}`, re-run on every seed); \"search best\" marks cells with no "
             f"reproduce runs, taken from the search stage's best run per seed (optimistic). "
             f"Δ vs {BASELINE}: paired over matched seeds, mean [95% t-interval].", ""]
    tables = {m: summary_table(trials, m, select) for m in METRICS if m in trials.columns}
    acc = tables.get("test_acc")
    if acc is None or acc.empty:
        lines.append("No finished student runs yet.")
    else:
        key = lambda t: {(r.noise_rate, r.method): r for r in t.itertuples()}  # noqa: E731
        idx = {m: key(t) for m, t in tables.items()}
        header = ["noise rate", "method", "seeds", "test acc", "test acc (last)", "test ECE",
                  "dist to p*", "recovery", f"Δ test acc vs {BASELINE} [95% CI]",
                  f"best hparams (search {select})"]
        rows = []
        for r in acc.itertuples():
            cell = lambda m: (mean_std(idx[m][(r.noise_rate, r.method)].mean,  # noqa: E731
                                       idx[m][(r.noise_rate, r.method)].std)
                              if m in idx and (r.noise_rate, r.method) in idx[m] else "—")
            seeds = f"{r.n}" + (" (search best)" if r.source != "reproduce" else "")
            delta = "—" if r.method == BASELINE else \
                diff_ci(r.diff_mean, r.diff_lo, r.diff_hi) + (f" (n={r.diff_n})" if r.diff_n else "")
            rows.append([_rate(r.noise_rate), r.method, seeds, cell("test_acc"),
                         cell("test_acc_last"), cell("test_ece"), cell("label_dist_pstar"),
                         cell("label_recovery"), delta, hparams_text(r._asdict())])
        lines += _md_table(header, rows)
        if BASELINE not in set(acc.method):
            lines += ["", f"No `{BASELINE}` runs: no paired differences."]
    if len(acc if acc is not None else []):
        lines += ["", *generations_md(trials)]
    failed = trials[trials.stage.isin(STUDENT_STAGES + ("teacher",)) & (trials.status != "ok")]
    if len(failed):
        lines += ["", f"{len(failed)} run(s) not ok: " + ", ".join(
            f"{s}: {n}" for s, n in failed.status.value_counts().sort_index().items())
            + " (excluded from every number above)."]
    text = "\n".join(lines) + "\n"
    store.write_bytes("summary.md", text.encode())
    return text


# --- report.md ----------------------------------------------------------------------------

def _paper_table(table: pd.DataFrame, higher: bool) -> list[str]:
    """Rows = methods, columns = noise rates, cells = mean ± std, best per column in bold."""
    rates = sorted(table.noise_rate.unique())
    methods = _method_order(table.method.unique())
    cell = {(r.method, r.noise_rate): r for r in table.itertuples()}
    best = {}
    for rate in rates:
        means = table[(table.noise_rate == rate)]["mean"].dropna()
        if len(means):
            best[rate] = means.max() if higher else means.min()
    rows = []
    for m in methods:
        row = [m]
        for rate in rates:
            r = cell.get((m, rate))
            text = "—" if r is None else mean_std(r.mean, r.std)
            if r is not None and r.source != "reproduce" and text != "—":
                text += "†"
            if r is not None and rate in best and r.mean == best[rate]:
                text = f"**{text}**"
            row.append(text)
        rows.append(row)
    return _md_table(["method"] + [f"noise {_rate(r)}" for r in rates], rows)


def _diff_table(table: pd.DataFrame) -> list[str]:
    rates = sorted(table.noise_rate.unique())
    cell = {(r.method, r.noise_rate): r for r in table.itertuples()}
    rows = []
    for m in _method_order(table.method.unique()):
        if m == BASELINE:
            continue
        row = [m]
        for rate in rates:
            r = cell.get((m, rate))
            row.append("—" if r is None or not r.diff_n else
                       f"{diff_ci(r.diff_mean, r.diff_lo, r.diff_hi)} (n={r.diff_n})")
        rows.append(row)
    return _md_table(["method"] + [f"noise {_rate(r)}" for r in rates], rows)


def write_report(store, allow_running: bool = False) -> str:
    """Write report.md and plots/*.png; returns the markdown. Raises InputError for a folder
    that is not a finished sweep output (see results.open_sweep)."""
    from filterkd_ray import plots as figures   # plots.py imports this module's helpers
    store, manifest = _open(store, allow_running=allow_running)
    trials = load_trials(store)
    epochs = _read(store, "epochs")
    teachers = _read(store, "teachers")
    select = _select_metric(manifest)
    tables = {m: summary_table(trials, m, select) for m in METRICS if m in trials.columns}
    best = best_hparams(trials, select)
    name = (manifest.get("spec") or {}).get("name", store.uri)
    md = [f"# Report: {name}", "", *_provenance(store, manifest, trials), ""]
    skipped: list[str] = []
    plots: list[tuple[str, str]] = []

    def attempt(what: str, fn, *args):
        try:
            res = fn(*args)
        except Skip as why:
            skipped.append(f"- {what}: skipped, {why}")
            return None
        if isinstance(res, tuple):
            plots.extend(res[0])
            return res[1]
        plots.extend(res)
        return None

    # Results tables in the paper's shape.
    md += ["## Results", "",
           "Rows = methods, columns = noise rates, cells = mean ± std over seeds of the "
           "`reproduce` runs (best search configuration re-run on every seed); best per column "
           "in **bold**; † = no reproduce runs, the search stage's best run per seed instead "
           "(optimistic).", ""]
    acc = tables.get("test_acc")
    if acc is None or acc.empty:
        md += ["No finished student runs.", ""]
    else:
        for metric, (label, higher) in METRICS.items():
            t = tables.get(metric)
            if t is None or t["mean"].notna().sum() == 0:
                reason = "p* unknown for this dataset" if metric == "label_dist_pstar" else \
                    "no flipped labels at any noise rate" if metric == "label_recovery" else \
                    "no values"
                md += [f"### {label}", "", f"Not available: {reason}.", ""]
                continue
            md += [f"### {label}", "", *_paper_table(t, higher), ""]
        md += [f"### Paired difference in test accuracy to {BASELINE}", ""]
        if BASELINE in set(acc.method):
            md += [f"Per seed d = acc(method) - acc({BASELINE}) on the same seed (same noisy "
                   "labels, same initialisation); mean [95% t-interval], n = matched seeds.", "",
                   *_diff_table(acc), ""]
        else:
            md += [f"No `{BASELINE}` runs: no paired differences.", ""]
        md += ["### Best hyperparameters", "",
               f"Per (noise rate, method): the search trial with the best `{select}`.", ""]
        md += _md_table(["noise rate", "method", f"best {select}", "hyperparameters"],
                        [[_rate(r.noise_rate), r.method, _num(getattr(r, f"best_{select}")),
                          hparams_text(r._asdict())] for r in tables["test_acc"].itertuples()])
        md.append("")

    md += generations_md(trials)

    # Teachers.
    tt = teachers[teachers.status == "ok"] if "status" in teachers else teachers
    if len(tt):
        md += ["## Teachers", ""]
        rows = []
        for rate, g in tt.groupby("noise_rate", sort=True):
            rows.append([_rate(rate), str(len(g)),
                         mean_std(g.test_acc.mean(), g.test_acc.std(ddof=1) if len(g) > 1 else math.nan),
                         mean_std(g.test_acc_last.mean(),
                                  g.test_acc_last.std(ddof=1) if len(g) > 1 else math.nan),
                         ", ".join(str(int(b)) for b in g.best_epoch.dropna())])
        md += _md_table(["noise rate", "teachers", "test acc (best-val epoch)",
                         "test acc (last epoch)", "best-validation epochs"], rows) + [""]

    attempt("accuracy vs noise rate", figures.plot_accuracy_vs_noise, store, tables)
    attempt("search landscapes", figures.plot_search, store, trials, select)
    attempt("teacher learning curves", figures.plot_teacher_curves, store, epochs, teachers)

    # Learning paths: one teacher per noise rate (the lowest seed with a stored path).
    zig_rows = []
    if len(tt) and "path_file" in tt:
        for rate, g in tt.groupby("noise_rate", sort=True):
            row = g.sort_values("seed").iloc[0]
            try:
                tp = figures.TeacherPath(store, row)
            except Skip as why:
                skipped.append(f"- learning paths at noise {_rate(rate)}: skipped, {why}")
                continue
            attempt(f"learning paths, {tp.id}", figures.plot_paths, store, tp, best)
            attempt(f"Figure-2 analogue, {tp.id}", figures.plot_difficulty, store, tp)
            z = attempt(f"zig-zag score, {tp.id}", figures.plot_zigzag, store, tp)
            if z:
                zig_rows.append(z)
            attempt(f"recovery grid, {tp.id}", figures.plot_recovery, store, tp)
    else:
        skipped.append("- learning paths: skipped, no teachers in teachers.parquet")
    h1 = attempt("Hypothesis 1", figures.plot_hypothesis1, store, trials)

    md += ["## Learning-path analysis", ""]
    if zig_rows:
        md += ["Zig-zag score (path length minus net approach to the training label's corner; "
               "see docs/report.md): AUROC for telling flipped from clean labels, 0.5 = chance. "
               "The integral proxy (1 - mean_t q_t(label)) is shown for reference.", ""]
        md += _md_table(["teacher", "noise rate", "flipped", "zig-zag AUROC", "integral AUROC"],
                        [[z["teacher"], _rate(z["noise_rate"]), str(z["flipped"]),
                          _num(z["zigzag_auroc"], ".3f"), _num(z["integral_auroc"], ".3f")]
                         for z in zig_rows]) + [""]
    if h1:
        md += ["Hypothesis 1 (a target closer to p* gives higher test accuracy): Spearman "
               "correlation of label distance to p* and student test accuracy over ok student "
               "runs (negative = supports it).", ""]
        md += _md_table(["runs", "n", "Spearman rho", "p-value"],
                        [[h["scope"], str(h["n"]), f"{h['rho']:.3f}", f"{h['p']:.2g}"]
                         for h in h1]) + [""]

    md += ["## Plots", ""]
    for file, caption in plots:
        md += [f"![{Path(file).stem}]({file})", "", caption, ""]
    if skipped:
        md += ["## Skipped", "", *skipped, ""]
    text = "\n".join(md)
    store.write_bytes("report.md", text.encode())
    return text
