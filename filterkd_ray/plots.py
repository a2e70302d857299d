"""The report's plots: one function per figure, each drawing on a `matplotlib.figure.Figure`
(no pyplot, no display, no global backend state) and saving it atomically into the sweep
folder's plots/. Each returns [(file, caption)]; a plot that does not apply raises
`report.Skip` with the reason report.md prints.
"""
from __future__ import annotations

import io
import math

import numpy as np
import pandas as pd
from scipy import stats

from filterkd_ray import analysis
from filterkd_ray.labels import DEFAULT_HPARAMS, METHODS, filter_path
from filterkd_ray.pathmodes import BankTables, TopkPath, read_path
from filterkd_ray.report import (Skip, METRICS, NUMERIC_HPARAMS, LOG_HPARAMS, STUDENT_STAGES, SIMPLEX, EMA_GRID, MAX_SCATTER, _rate, _method_order)
from filterkd_ray.results import Store


def _save(store: Store, fig, name: str) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    store.write_bytes(f"plots/{name}", buf.getvalue())
    return f"plots/{name}"


def _figure(w: float, h: float, ncols: int = 1, nrows: int = 1):
    from matplotlib.figure import Figure
    fig = Figure(figsize=(w, h), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _colors(n: int):
    from matplotlib import colormaps
    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def plot_accuracy_vs_noise(store, tables) -> list[tuple[str, str]]:
    acc = tables.get("test_acc")
    if acc is None or acc.empty:
        raise Skip("no finished student runs")
    panels = [m for m in ("test_acc", "test_acc_last") if m in tables and not tables[m].empty]
    fig, axes = _figure(6 * len(panels), 4.5, ncols=len(panels))
    methods = _method_order(acc.method.unique())
    rates = sorted(acc.noise_rate.unique())
    span = (max(rates) - min(rates)) or 1.0
    for ax, metric in zip(axes[0], panels):
        t = tables[metric]
        for i, (m, c) in enumerate(zip(methods, _colors(len(methods)))):
            g = t[t.method == m].sort_values("noise_rate")
            jitter = (i - (len(methods) - 1) / 2) * 0.008 * span
            ax.errorbar(g.noise_rate + jitter, g["mean"], yerr=g["std"].fillna(0), marker="o",
                        capsize=3, color=c, label=m)
        ax.set_xlabel("noise rate")
        ax.set_ylabel(METRICS[metric][0])
        ax.set_xticks(rates)
        ax.grid(alpha=0.3)
    axes[0][0].legend(title="method")
    fig.suptitle("Student test accuracy vs noise rate (mean ± std over seeds)")
    return [(_save(store, fig, "accuracy_vs_noise.png"),
             "Student test accuracy vs noise rate, one line per method, error bars = std over seeds.")]


def plot_search(store, trials, select) -> list[tuple[str, str]]:
    s = trials[(trials.stage == "search") & (trials.status == "ok")].dropna(subset=[select])
    out = []
    for method in _method_order(s.method.unique()):
        g = s[s.method == method]
        params = [p for p in NUMERIC_HPARAMS if p in (METHODS[method].params if method in METHODS
                                                      else ()) and p in g and g[p].notna().any()]
        if not params:
            continue
        fig, axes = _figure(4.5 * len(params), 4, ncols=len(params))
        rates = sorted(g.noise_rate.unique())
        for ax, p in zip(axes[0], params):
            for rate, c in zip(rates, _colors(len(rates))):
                h = g[g.noise_rate == rate]
                if "snapshot" in METHODS[method].params and "snapshot" in h:
                    for snap, marker in (("best", "o"), ("last", "^")):
                        hh = h[h.snapshot == snap]
                        if len(hh):
                            ax.scatter(hh[p], hh[select], color=c, marker=marker,
                                       label=f"noise {_rate(rate)}, snapshot {snap}")
                else:
                    ax.scatter(h[p], h[select], color=c, label=f"noise {_rate(rate)}")
            if p in LOG_HPARAMS:
                _log_axis(ax)
            ax.set_xlabel(p)
            ax.set_ylabel(f"{select} (search)")
            ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize=8)
        fig.suptitle(f"Search landscape: {method} ({len(g)} trials)")
        out.append((_save(store, fig, f"search_{method}.png"),
                    f"Search landscape of {method}: {select} of every ok search trial vs each "
                    "hyperparameter."))
    if not out:
        raise Skip("no ok search trials of a method with numeric hyperparameters")
    return out


def _log_axis(ax) -> None:
    """Log x axis labelled 0.05, 0.1, 0.2, ... (matplotlib's default labels minor ticks as
    overlapping powers of ten when the range spans less than a decade)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def plot_teacher_curves(store, epochs, teachers) -> list[tuple[str, str]]:
    e = epochs[epochs.stage == "teacher"] if "stage" in epochs else epochs.iloc[:0]
    if e.empty:
        raise Skip("no teacher epochs in epochs.parquet (no method needed a teacher)")
    rates = sorted(e.noise_rate.unique())
    fig, axes = _figure(5 * len(rates), 4, ncols=len(rates))
    colors = dict(zip(("train_acc_aug", "val_acc", "test_acc"), _colors(3)))
    names = {"train_acc_aug": "train (noisy labels)", "val_acc": "validation (noisy labels)",
             "test_acc": "test (clean)"}
    for ax, rate in zip(axes[0], rates):
        g = e[e.noise_rate == rate]
        for j, (tid, h) in enumerate(g.groupby("trial_id", sort=True)):
            h = h.sort_values("epoch")
            for col, c in colors.items():
                if col in h and h[col].notna().any():
                    ax.plot(h.epoch, h[col], color=c, alpha=0.8, lw=1.2,
                            ls="--" if col == "train_acc_aug" else "-",
                            label=names[col] if j == 0 else None)
            if h.val_acc.isna().all():
                continue
            best = h.val_acc.idxmax()
            ax.plot([h.epoch[best]], [h.val_acc[best]], marker="*", ms=12, color="k",
                    ls="none", label="best validation epoch" if j == 0 else None)
        ax.set_title(f"noise {_rate(rate)} ({g.trial_id.nunique()} teachers)")
        ax.set_xlabel("epoch")
        ax.set_ylabel("accuracy")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle("Teacher learning curves")
    return [(_save(store, fig, "teacher_curves.png"),
             "Teacher learning curves per noise rate (every seed): train accuracy on augmented "
             "noisy batches, validation (noisy) and test (clean) accuracy; ★ = best-validation "
             "epoch (the ESKD teacher and the `best` snapshot).")]


class TeacherPath:
    """One teacher's learning path and labels, read from the folder."""

    def __init__(self, store: Store, row):
        self.id, self.rate, self.seed = row.teacher_id, float(row.noise_rate), int(row.seed)
        for f in (row.path_file, row.labels_file):
            if not isinstance(f, str) or not store.exists(f):
                raise Skip(f"its file {f} is missing")
        stored = read_path(store, row.path_file)
        if isinstance(stored, BankTables):
            raise Skip("path.mode 'bank' keeps filtered tables, not the learning path")
        # A top-k path is rebuilt (k probabilities kept, the rest spread evenly): the plots
        # then show that approximation.
        self.path = stored.dense() if isinstance(stored, TopkPath) else stored
        labels = store.read_npz(row.labels_file)
        self.y, self.y_noisy = labels["y"], labels["y_noisy"]
        self.p_star = labels.get("p_star")
        self.epochs, self.n, self.k = self.path.shape
        be = row.best_epoch
        self.best_epoch = int(be) if be is not None and not pd.isna(be) else self.epochs - 1
        self.best_epoch = min(max(self.best_epoch, 0), self.epochs - 1)
        self.flipped = self.y_noisy != self.y
        self.tag = f"r{_rate(self.rate)}_s{self.seed}"
        self._zigzag = None

    @property
    def zigzag(self) -> np.ndarray:
        if self._zigzag is None:
            self._zigzag = analysis.zigzag_score(self.path, self.y_noisy)
        return self._zigzag


def _filter_config(best: pd.DataFrame, rate: float) -> tuple[float, str, str]:
    """EMA rate and snapshot of the best filter_kd search config at `rate` (else defaults)."""
    b = best[(best.method == "filter_kd") & (best.noise_rate == rate)] if len(best) else best
    if len(b) and not pd.isna(b.ema_rate.iloc[0]):
        return float(b.ema_rate.iloc[0]), str(b.snapshot.iloc[0]), "best filter_kd search config"
    return DEFAULT_HPARAMS["ema_rate"], DEFAULT_HPARAMS["snapshot"], "default config"


def _chosen_samples(tp: TeacherPath, zig: np.ndarray) -> dict[str, np.ndarray]:
    """Two samples each: easy and hard clean ones, and the mislabelled ones that zig-zag most."""
    clean = np.flatnonzero(~tp.flipped)
    out = {}
    if len(clean):
        if tp.p_star is not None:   # base difficulty of the clean label
            key = analysis.base_difficulty(tp.y[clean], tp.p_star[clean])
        else:                       # no p*: the paper's integral proxy, 1 - mean_t q_t(y)
            # (over the whole path, epoch by epoch: path[:, clean] would copy it)
            key = 1 - analysis.label_integral(tp.path, tp.y)[clean]
        order = clean[np.argsort(key, kind="stable")]
        out["easy"], out["hard"] = order[:2], order[::-1][:2]
    flipped = np.flatnonzero(tp.flipped)
    if len(flipped):
        out["mislabelled"] = flipped[np.argsort(-zig[flipped], kind="stable")][:2]
    return out


def _to_xy(q: np.ndarray) -> np.ndarray:
    return np.asarray(q, np.float64) @ SIMPLEX


def plot_paths(store, tp: TeacherPath, best: pd.DataFrame) -> list[tuple[str, str]]:
    a, snap, why = _filter_config(best, tp.rate)
    upto = tp.best_epoch + 1 if snap == "best" else tp.epochs
    filtered = filter_path(tp.path, a, upto)
    chosen = _chosen_samples(tp, tp.zigzag)
    if not chosen:
        raise Skip("no samples")
    if tp.k == 3:
        return [_plot_simplex(store, tp, chosen, filtered, a, snap, why)]
    return [_plot_path_curves(store, tp, chosen)]


def _plot_simplex(store, tp, chosen, filtered, a, snap, why):
    from matplotlib import colormaps
    fig, axes = _figure(5 * len(chosen), 5, ncols=len(chosen))
    cmap = colormaps["viridis"]
    for ax, (kind, idx) in zip(axes[0], chosen.items()):
        ax.plot(*np.vstack([SIMPLEX, SIMPLEX[:1]]).T, color="0.5", lw=1)
        for c in range(3):
            ax.annotate(f"class {c}", SIMPLEX[c], textcoords="offset points",
                        xytext=(0, -12 if c < 2 else 6), ha="center", fontsize=8)
        for j, i in enumerate(idx):
            xy = _to_xy(tp.path[:, i].astype(np.float32))
            ax.plot(xy[:, 0], xy[:, 1], color="0.3", lw=0.8, alpha=0.7)
            ax.scatter(xy[:, 0], xy[:, 1], c=np.arange(tp.epochs), cmap=cmap, s=14, zorder=3,
                       vmin=0, vmax=max(tp.epochs - 1, 1))
            lab = lambda s: s if j == 0 else None  # noqa: E731
            ax.scatter(*SIMPLEX[tp.y_noisy[i]], marker="s", s=120, facecolor="none",
                       edgecolor="tab:red", lw=2, zorder=4, label=lab("training label"))
            if tp.flipped[i]:
                ax.scatter(*SIMPLEX[tp.y[i]], marker="o", s=160, facecolor="none",
                           edgecolor="tab:green", lw=2, zorder=4, label=lab("clean label"))
            if tp.p_star is not None:
                ax.scatter(*_to_xy(tp.p_star[i]), marker="*", s=160, color="tab:orange",
                           edgecolor="k", zorder=5, label=lab("p*"))
            ax.scatter(*_to_xy(filtered[i]), marker="X", s=110, color="tab:blue",
                       edgecolor="k", zorder=5, label=lab("filtered (Filter-KD table)"))
            ax.annotate(f"#{i}", _to_xy(tp.path[-1, i].astype(np.float32)), fontsize=8,
                        textcoords="offset points", xytext=(4, 4))
        ax.set_title(f"{kind} samples")
        ax.set_aspect("equal")
        ax.set_xlim(-0.1, 1.1)
        ax.set_ylim(-0.12, 1.0)
        ax.axis("off")
        ax.legend(fontsize=7, loc="upper left")
    fig.suptitle(f"Learning paths on the simplex, {tp.id} (colour = epoch, "
                 f"dark = early); filter: EMA {a:g}, snapshot {snap}")
    name = _save(store, fig, f"paths_{tp.tag}.png")
    return (name, f"Learning paths of chosen samples of {tp.id} on the 2-simplex: easy "
                  f"and hard clean samples (by base difficulty of the clean label) and the "
                  f"mislabelled samples with the highest zig-zag score; ✕ = the Filter-KD table "
                  f"(EMA rate {a:g}, snapshot {snap}: {why}).")


def _plot_path_curves(store, tp, chosen):
    panels = ["q(clean label)", "q(training label)"] + (["||q - p*||"] if tp.p_star is not None else [])
    fig, axes = _figure(5 * len(panels), 4, ncols=len(panels))
    colors = dict(zip(("easy", "hard", "mislabelled"), _colors(3)))
    t = np.arange(tp.epochs)
    for kind, idx in chosen.items():
        for j, i in enumerate(idx):
            q = tp.path[:, i].astype(np.float32)
            series = [q[:, tp.y[i]], q[:, tp.y_noisy[i]]]
            if tp.p_star is not None:
                series.append(np.linalg.norm(q - tp.p_star[i], axis=1))
            for ax, s in zip(axes[0], series):
                ax.plot(t, s, color=colors[kind], ls="-" if j == 0 else "--",
                        label=f"{kind} #{i}")
    for ax, title in zip(axes[0], panels):
        ax.axvline(tp.best_epoch, color="k", lw=0.8, ls=":")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"Learning paths of chosen samples, {tp.id} (dotted: best-validation epoch)")
    name = _save(store, fig, f"paths_{tp.tag}.png")
    return (name, f"Learning paths of chosen samples of {tp.id} ({tp.k} classes): "
                  "q(clean label), q(training label)"
                  + (" and distance to p*" if tp.p_star is not None else "") + " over epochs.")


def plot_difficulty(store, tp: TeacherPath) -> list[tuple[str, str]]:
    """The paper's Figure 2 on this teacher: ||q_t - p*|| vs base difficulty ||e_y~ - p*||."""
    if tp.p_star is None:
        raise Skip("p* unknown for this dataset")
    bd = analysis.base_difficulty(tp.y_noisy, tp.p_star)
    rng = np.random.default_rng(0)
    pick = np.sort(rng.choice(tp.n, min(tp.n, MAX_SCATTER), replace=False))
    epochs = [("epoch 0 (first pass)", 0), (f"best-validation epoch {tp.best_epoch}", tp.best_epoch),
              (f"last epoch {tp.epochs - 1}", tp.epochs - 1)]
    fig, axes = _figure(15, 4.8, ncols=3)
    for ax, (title, t) in zip(axes[0], epochs):
        d = np.linalg.norm(tp.path[t, pick].astype(np.float32) - tp.p_star[pick], axis=1)
        fl = tp.flipped[pick]
        ax.scatter(bd[pick][~fl], d[~fl], s=6, alpha=0.5, color="tab:blue", label="clean label")
        if fl.any():
            ax.scatter(bd[pick][fl], d[fl], s=6, alpha=0.5, color="tab:red", label="flipped label")
        ax.plot([0, math.sqrt(2)], [0, math.sqrt(2)], color="k", lw=0.8, ls="--", label="y = x")
        ax.set_title(f"{title}: mean {d.mean():.3f}")
        ax.set_xlabel("base difficulty ||e_y~ - p*||")
        ax.set_ylabel("||q_t - p*||")
        ax.set_xlim(0, 1.45)
        ax.set_ylim(0, 1.45)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"Distance of the teacher's prediction to p* vs base difficulty, {tp.id}")
    return [(_save(store, fig, f"difficulty_{tp.tag}.png"),
             f"Figure-2 analogue, {tp.id}: distance of the prediction to p* vs base "
             "difficulty of the training label, at the first epoch, the best-validation epoch "
             "and the end. Points below the diagonal: the prediction is closer to p* than the "
             "label the teacher trains on.")]


def plot_zigzag(store, tp: TeacherPath) -> tuple[list[tuple[str, str]], dict]:
    if not tp.flipped.any() or tp.flipped.all():
        raise Skip(f"no flipped labels to separate (noise rate {_rate(tp.rate)})")
    zig = tp.zigzag
    auc = analysis.flip_auroc(tp.flipped, zig)
    auc_int = analysis.integral_auroc(tp.path, tp.y_noisy, tp.flipped)
    fig, axes = _figure(7, 4.5)
    ax = axes[0][0]
    bins = np.linspace(0, max(float(zig.max()), 1e-6), 40)
    ax.hist(zig[~tp.flipped], bins=bins, alpha=0.6, density=True, label="clean label")
    ax.hist(zig[tp.flipped], bins=bins, alpha=0.6, density=True, label="flipped label")
    ax.set_xlabel("zig-zag score (path length - net approach to the label)")
    ax.set_ylabel("density")
    ax.legend()
    ax.set_title(f"{tp.id}: AUROC(flipped) zig-zag {auc:.3f}, integral proxy {auc_int:.3f}")
    return ([(_save(store, fig, f"zigzag_{tp.tag}.png"),
              f"Zig-zag score of clean vs flipped samples, {tp.id}.")],
            {"teacher": tp.id, "noise_rate": tp.rate, "flipped": int(tp.flipped.sum()),
             "zigzag_auroc": auc, "integral_auroc": auc_int})


def plot_recovery(store, tp: TeacherPath) -> list[tuple[str, str]]:
    if not tp.flipped.any():
        raise Skip(f"no flipped labels to recover (noise rate {_rate(tp.rate)})")
    uptos = np.unique(np.linspace(1, tp.epochs, min(tp.epochs, 50)).round().astype(int))
    grid = analysis.recovery_grid(tp.path, tp.y, tp.y_noisy, EMA_GRID, uptos)
    img = grid.pivot(index="ema_rate", columns="upto", values="recovery")
    fig, axes = _figure(8, 4.5)
    ax = axes[0][0]
    im = ax.imshow(img.to_numpy(), aspect="auto", origin="lower", cmap="viridis", vmin=0, vmax=1,
                   extent=(0.5, len(uptos) + 0.5, -0.5, len(EMA_GRID) - 0.5))
    ax.set_yticks(range(len(EMA_GRID)), [f"{a:g}" for a in img.index])
    step = max(1, len(uptos) // 10)
    ax.set_xticks(range(1, len(uptos) + 1)[::step], [str(u) for u in uptos][::step])
    ax.set_xlabel("snapshot: epochs filtered (1-based)")
    ax.set_ylabel("EMA rate")
    col = int(np.searchsorted(uptos, tp.best_epoch + 1)) + 1
    ax.axvline(col, color="w", ls="--", lw=1, label="best-validation epoch")
    ax.legend(fontsize=8, loc="upper right")
    fig.colorbar(im, ax=ax, label="recovery of flipped labels")
    fig.suptitle(f"Clean-label recovery of the Filter-KD table, {tp.id}")
    return [(_save(store, fig, f"recovery_{tp.tag}.png"),
             f"Fraction of flipped labels whose Filter-KD table argmax is the clean label, by EMA "
             f"rate and snapshot epoch, {tp.id}.")]


def plot_hypothesis1(store, trials) -> tuple[list[tuple[str, str]], list[dict]]:
    s = trials[trials.stage.isin(STUDENT_STAGES) & (trials.status == "ok")]
    if "label_dist_pstar" not in s:
        raise Skip("trials.parquet has no label_dist_pstar column")
    s = s.dropna(subset=["label_dist_pstar", "test_acc"])
    if len(s) < 3:
        raise Skip("p* unknown for this dataset (no label distances to correlate)"
                   if not len(s) else f"only {len(s)} student runs with a label distance")
    rho = _spearman(s)
    if rho is None:
        raise Skip("label distance or test accuracy is constant over student runs")
    rows = [{"scope": "all noise rates", "n": len(s), **rho}]
    for rate, g in s.groupby("noise_rate", sort=True):
        r = _spearman(g)
        if r is not None and len(g) >= 3:
            rows.append({"scope": f"noise {_rate(rate)}", "n": len(g), **r})
    fig, axes = _figure(7, 5)
    ax = axes[0][0]
    methods = _method_order(s.method.unique())
    markers = dict(zip(sorted(s.noise_rate.unique()), "osD^vP*X"))
    for m, c in zip(methods, _colors(len(methods))):
        for rate, mk in markers.items():
            g = s[(s.method == m) & (s.noise_rate == rate)]
            if len(g):
                ax.scatter(g.label_dist_pstar, g.test_acc, color=c, marker=mk, alpha=0.8,
                           label=f"{m}, noise {_rate(rate)}")
    ax.set_xlabel("label distance to p* (mean ||target - p*||)")
    ax.set_ylabel("student test accuracy")
    per_rate = "; ".join(f"{r['scope']}: {r['rho']:.2f}" for r in rows[1:])
    ax.set_title(f"Hypothesis 1: Spearman rho = {rho['rho']:.3f} (p = {rho['p']:.2g}, n = {len(s)}, "
                 f"all noise rates)" + (f"\nper noise rate: {per_rate}" if per_rate else ""),
                 fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return ([(_save(store, fig, "hypothesis1.png"),
              "Hypothesis 1: label distance to p* vs student test accuracy over all ok student "
              "runs (search and reproduce), Spearman correlation in the title.")], rows)


def _spearman(df) -> dict | None:
    if df.label_dist_pstar.nunique() < 2 or df.test_acc.nunique() < 2:
        return None
    res = stats.spearmanr(df.label_dist_pstar, df.test_acc)
    return {"rho": float(res.statistic), "p": float(res.pvalue)}
