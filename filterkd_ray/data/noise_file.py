"""Real label noise: per-sample noisy labels read from a file (e.g. CIFAR-10N / CIFAR-100N,
the human re-annotations of Wei et al., ICLR 2022, github.com/UCSC-REAL/cifar-10-100n).

Formats (by suffix):
- `.npy`: a 1-d integer array (no pickles);
- `.csv` / `.txt`: one integer label per line (blank lines ignored, no header);
- `.npz`: the array under `key` (or the only array);
- `.pt` / `.pth`: a tensor or array, or a dict of them as CIFAR-N ships it
  (`CIFAR-10_human.pt`: clean_label, worse_label, aggre_label, random_label1..3;
  `CIFAR-100_human.pt`: clean_label, noisy_label, ...); `key` picks the entry. Read with
  torch.load(weights_only=True) and numpy's array globals allowed: no code is run.

Which rows get which labels. Every loader records, for each train row and each validation
row held out of the training pool, `Split.source_index`: its position in the loader's source
training set of `Dataset.source_size` images (CIFAR pickle order, `scan_folder` order for
imagefolder, sorted wnid/file for tinyimagenet, sklearn order for digits, train-then-val
for toy; data/images.py and data/toy.py document each). So:
- a file with exactly `source_size` labels (one per image of the original training set):
  every row with a source index gets its image's label, train AND validation, whatever
  `val_fraction`, `split_seed` or `subset_per_class` chose, as with synthetic noise. An own
  val/ folder (imagefolder) is not in the pool and keeps its clean labels.
- otherwise, a file with exactly len(train) labels: row i of the train split gets label i,
  and validation keeps its clean labels (the file says nothing about it), so selection
  then sees clean labels.
- a loader that records source_index but not source_size: any file covering every
  recorded index (at least max + 1 labels) is read as one over its source set.

Checks, each an InputError naming the file: unreadable/unknown format, a non-integer or
out-of-range label, a length that fits neither rule, and the alignment itself: where the
file carries clean labels they must equal the dataset's at every mapped row; otherwise the
noisy labels must agree with the dataset's clean labels clearly above chance (a file in
another order agrees at ~1/K).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from filterkd_ray import InputError

SUFFIXES = (".npy", ".csv", ".txt", ".npz", ".pt", ".pth")
CLEAN_KEY = "clean_label"
CHANCE_MARGIN = 0.1   # agreement must exceed 1/K by this much


def _as_labels(arr, where: str) -> np.ndarray:
    try:
        import torch
        if isinstance(arr, torch.Tensor):
            arr = arr.detach().cpu().numpy()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    a = np.asarray(arr)
    if a.ndim == 2 and 1 in a.shape:
        a = a.reshape(-1)
    if a.ndim != 1 or a.size == 0:
        raise InputError(f"{where}: need a 1-d array of integer labels; got shape {a.shape}")
    if a.dtype.kind == "f" and np.all(a == np.round(a)):
        a = a.astype(np.int64)
    if a.dtype.kind not in "iu":
        raise InputError(f"{where}: labels must be integers; got dtype {a.dtype}")
    return a.astype(np.int64)


def _pick(d: dict, key: str | None, path: Path):
    if key is not None:
        if key not in d:
            raise InputError(f"{path}: no entry {key!r}; noise.key must be one of {sorted(d)}")
        return d[key]
    candidates = [k for k in d if k != CLEAN_KEY]
    if len(candidates) != 1:
        raise InputError(f"{path}: holds {sorted(d)}; set data.noise.key to the labels to use")
    return d[candidates[0]]


def _torch_load(path: Path):
    import torch
    safe: list = [np.ndarray, np.dtype]
    try:
        from numpy._core.multiarray import _reconstruct     # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
    # Files pickled under numpy 1.x (CIFAR-N's) name it numpy.core.multiarray._reconstruct.
    safe += [_reconstruct, (_reconstruct, "numpy.core.multiarray._reconstruct"),
             (_reconstruct, "numpy._core.multiarray._reconstruct")]
    safe += [type(np.dtype(t)) for t in (np.int8, np.int16, np.int32, np.int64, np.uint8,
                                         np.uint16, np.uint32, np.uint64, np.float32,
                                         np.float64)]
    with torch.serialization.safe_globals(safe):
        return torch.load(path, map_location="cpu", weights_only=True)


def read_label_file(path, key: str | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """(noisy labels, clean labels or None) as int64 arrays, from any supported format."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(f"{path}: label file not found (data.noise.path)")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise InputError(f"{path}: unknown label-file format {suffix!r}; use one of "
                         f"{list(SUFFIXES)}")
    if key is not None and suffix not in (".npz", ".pt", ".pth"):
        raise InputError(f"{path}: data.noise.key applies to .npz/.pt files only")
    clean = None
    try:
        if suffix == ".npy":
            obj = np.load(path, allow_pickle=False)
        elif suffix in (".csv", ".txt"):
            obj = _read_lines(path)
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                d = {k: z[k] for k in z.files}
            obj = _pick(d, key, path)
            clean = d.get(CLEAN_KEY)
        else:
            obj = _torch_load(path)
            if isinstance(obj, dict):
                clean = obj.get(CLEAN_KEY)
                obj = _pick(obj, key, path)
    except InputError:
        raise
    except Exception as err:  # noqa: BLE001 - any reader failure means a bad file
        raise InputError(f"{path}: not a readable {suffix} label file "
                         f"({type(err).__name__}: {str(err).splitlines()[0][:200]})") from None
    labels = _as_labels(obj, str(path))
    if clean is not None:
        clean = _as_labels(clean, f"{path} [{CLEAN_KEY}]")
        if len(clean) != len(labels):
            raise InputError(f"{path}: {CLEAN_KEY} has {len(clean)} entries, the labels "
                             f"{len(labels)}")
    return labels, clean


def _read_lines(path: Path) -> np.ndarray:
    out = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        s = line.strip().rstrip(",")
        if not s:
            continue
        try:
            out.append(int(s))
        except ValueError:
            raise InputError(f"{path}:{i}: {s[:40]!r} is not an integer label "
                             "(one label per line, no header)") from None
    return np.asarray(out, np.int64)


def source_indices(dataset, n_file: int, path):
    """(train rows' indices into the file, val rows' indices or None: val keeps clean labels)."""
    n_tr = len(dataset.train)
    src_tr, src_va, size = dataset.train.source_index, dataset.val.source_index, dataset.source_size
    if src_tr is not None:
        src_tr = np.asarray(src_tr, np.int64)
        src_va = None if src_va is None else np.asarray(src_va, np.int64)
        if size is None:   # a loader that does not say how large its source set is
            need = 1 + max(src_tr.max(initial=-1),
                           -1 if src_va is None else src_va.max(initial=-1))
            size = n_file if n_file >= need else None
        if n_file == size:
            return src_tr, src_va
    if n_file == n_tr:
        return np.arange(n_tr), None
    pool = "" if size is None else f" or one per image of its source training set ({size})"
    raise InputError(f"{path}: holds {n_file} labels but dataset {dataset.name!r} has "
                     f"{n_tr} training samples; give one label per training sample in index "
                     f"order{pool}")


def apply_file_noise(dataset, path, key: str | None = None):
    """The dataset with y_noisy read from `path` (train, and validation where mappable)."""
    labels, clean = read_label_file(path, key)
    k = dataset.num_classes
    if labels.min() < 0 or labels.max() >= k:
        raise InputError(f"{path}: labels must lie in [0, {k}) for dataset "
                         f"{dataset.name!r}; found {labels.min()}..{labels.max()}")
    idx_tr, idx_va = source_indices(dataset, len(labels), path)
    out = dataclasses.replace(dataset)
    for name, idx in (("train", idx_tr), ("val", idx_va)):
        if idx is None:
            continue
        split = getattr(dataset, name)
        _check_alignment(path, name, split.y, labels[idx], None if clean is None else clean[idx], k)
        setattr(out, name, dataclasses.replace(split, y_noisy=labels[idx]))
    return out


def _check_alignment(path, split: str, y, noisy, clean, k: int) -> None:
    if clean is not None:
        bad = np.flatnonzero(clean != y)
        if len(bad):
            raise InputError(f"{path}: its {CLEAN_KEY} disagrees with the dataset's {split} "
                             f"labels at {len(bad)} of {len(y)} rows (first: row {bad[0]}); "
                             "the file's sample order does not match the dataset's")
        return
    agree = float((noisy == y).mean())
    if len(y) and agree <= 1.0 / k + CHANCE_MARGIN:
        raise InputError(f"{path}: its labels agree with the dataset's clean {split} labels "
                         f"on only {agree:.1%} of samples (chance: {1 / k:.1%}); the file's "
                         "sample order does not match the dataset's")
