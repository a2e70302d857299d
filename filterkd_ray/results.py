"""Parquet schemas, atomic writes and loading of a sweep folder.

A sweep folder (local path, shared file system, or any URI pyarrow.fs understands, e.g.
s3://bucket/prefix) holds:

  manifest.json      schema version, status (running | done | failed), the full spec,
                     package version, git commit, times
  trials.parquet     one row per teacher or student run (TRIAL_COLUMNS + `config` JSON)
  epochs.parquet     per-epoch metrics of every run (EPOCH_COLUMNS)
  teachers.parquet   one row per teacher (TEACHER_COLUMNS)
  paths/<teacher_id>.npy         the learning path, float16 [epochs, N, K] (path.mode dense;
                                 .bank.npz / .topk.npz in the other modes, pathmodes.py)
                                 (born-again students that teach the next generation write
                                 the same files, and teachers/<run_id>/, under their run id)
  paths/<teacher_id>.labels.npz  y (clean), y_noisy, p_star (if known) of the train split
  summary.md, report.md, plots/*.png

Every write goes to a temporary name and is renamed into place, so a reader never sees a
half-written file.
"""
from __future__ import annotations

import io
import json
import subprocess
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from filterkd_ray import InputError, __version__

SCHEMA_VERSION = 1

TRIAL_COLUMNS = [
    "trial_id", "stage", "method", "generation", "dataset", "noise_kind", "noise_rate", "seed",
    "noise_seed", "init_seed", "order_seed", "augment_seed", "teacher_id",
    "ema_rate", "temperature", "distill_weight", "ls_epsilon", "snapshot",
    "best_epoch", "epochs_run", "val_acc", "val_acc_last", "val_nll", "val_ece",
    "test_acc", "test_acc_last", "test_nll", "test_nll_last", "test_ece", "test_ece_last",
    "label_dist_pstar", "label_recovery", "label_clean_acc",
    "status", "error", "wall_s", "node_id", "spec_name", "package_version", "git_commit",
    "config",
]
STATUSES = ("ok", "failed", "stopped")
EPOCH_COLUMNS = [
    "trial_id", "stage", "method", "noise_rate", "seed", "epoch", "lr", "train_loss",
    "train_acc_aug", "val_acc", "val_nll", "val_ece", "test_acc", "test_nll", "test_ece",
    "best_epoch", "epoch_s",
]
TEACHER_COLUMNS = [
    "teacher_id", "dataset", "noise_kind", "noise_rate", "seed", "best_epoch", "epochs_run",
    "val_acc", "test_acc", "test_acc_last", "path_file", "labels_file", "node_id", "wall_s",
    "status",
]
TABLES = {"trials": TRIAL_COLUMNS, "epochs": EPOCH_COLUMNS, "teachers": TEACHER_COLUMNS}


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def provenance() -> dict:
    return {"package_version": __version__, "git_commit": git_commit()}


class Store:
    """A sweep folder on any pyarrow file system, with atomic writes."""

    def __init__(self, uri: str):
        self.uri = str(uri)
        if "://" in self.uri:
            self.fs, self.root = pafs.FileSystem.from_uri(self.uri)
        else:
            # Absolute: Tune runs each trial in its own working directory.
            self.fs, self.root = pafs.LocalFileSystem(), str(Path(self.uri).resolve())
            self.uri = self.root

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def path(self, name: str) -> str:
        return f"{self.root}/{name}"

    def exists(self, name: str = "") -> bool:
        info = self.fs.get_file_info(self.path(name) if name else self.root)
        return info.type != pafs.FileType.NotFound

    def list(self, folder: str) -> list[str]:
        """Names of the files directly in `folder` (empty if it does not exist)."""
        base = self.path(folder) if folder else self.root
        if self.fs.get_file_info(base).type != pafs.FileType.Directory:
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(base))
        return sorted(i.base_name for i in infos if ".tmp-" not in i.base_name)

    def makedirs(self, name: str = "") -> None:
        self.fs.create_dir(self.path(name) if name else self.root, recursive=True)

    def check_writable(self, flag: str = "--output") -> None:
        """Create the folder and write and remove a probe file, so an unusable output (a
        file, a folder under a file, no permission) fails at once, in one line, and not
        after Ray has started."""
        probe = f".write-probe-{uuid.uuid4().hex[:8]}"
        try:
            self.makedirs()
            with self.fs.open_output_stream(self.path(probe)) as f:
                f.write(b"")
            self.fs.delete_file(self.path(probe))
        except OSError as err:
            reason = str(err).split(". Detail:")[0]
            raise InputError(f"{flag} {self.uri}: cannot write a sweep folder there "
                             f"({reason}); choose a writable folder") from None

    def write_bytes(self, name: str, data: bytes) -> None:
        final = self.path(name)
        self.fs.create_dir(final.rsplit("/", 1)[0], recursive=True)
        tmp = f"{final}.tmp-{uuid.uuid4().hex[:8]}"
        with self.fs.open_output_stream(tmp) as f:
            f.write(data)
        self.fs.move(tmp, final)

    def read_bytes(self, name: str) -> bytes:
        with self.fs.open_input_stream(self.path(name)) as f:
            return f.read()

    def write_table(self, name: str, df: pd.DataFrame) -> None:
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pandas(df, preserve_index=False), buf)
        self.write_bytes(f"{name}.parquet", buf.getvalue())

    def read_table(self, name: str) -> pd.DataFrame:
        if not self.exists(f"{name}.parquet"):
            return pd.DataFrame(columns=TABLES.get(name, []))
        return pq.read_table(io.BytesIO(self.read_bytes(f"{name}.parquet"))).to_pandas()

    def write_json(self, name: str, obj) -> None:
        self.write_bytes(name, json.dumps(obj, indent=2, default=str).encode())

    def read_json(self, name: str):
        return json.loads(self.read_bytes(name))

    def write_array(self, name: str, arr: np.ndarray) -> None:
        buf = io.BytesIO()
        np.save(buf, arr)
        self.write_bytes(name, buf.getvalue())

    def read_array(self, name: str, mmap: bool = True) -> np.ndarray:
        if self.is_local and mmap:
            return np.load(self.path(name), mmap_mode="r")
        return np.load(io.BytesIO(self.read_bytes(name)))

    def write_npz(self, name: str, **arrays) -> None:
        buf = io.BytesIO()
        np.savez(buf, **{k: v for k, v in arrays.items() if v is not None})
        self.write_bytes(name, buf.getvalue())

    def read_npz(self, name: str) -> dict:
        with np.load(io.BytesIO(self.read_bytes(name))) as z:
            return {k: z[k] for k in z.files}


def frame(rows: list[dict], columns: list[str]) -> pd.DataFrame:
    """Rows -> DataFrame with the schema's columns first (missing ones as NaN/None)."""
    df = pd.DataFrame(rows)
    for c in columns:
        if c not in df:
            df[c] = None
    extra = [c for c in df.columns if c not in columns]
    return df[columns + extra]


def open_sweep(uri: str, allow_running: bool = False) -> Store:
    """Open a finished sweep folder for reading, or raise InputError saying what is wrong."""
    store = Store(uri)
    if not store.exists():
        raise InputError(f"{uri}: no such folder")
    if not store.exists("manifest.json"):
        raise InputError(f"{uri}: not a filterkd-ray sweep output (no manifest.json); "
                         "pass the folder given to `filterkd-ray sweep --output`")
    manifest = store.read_json("manifest.json")
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise InputError(f"{uri}: written with results schema {manifest.get('schema_version')}, "
                         f"this filterkd-ray reads {SCHEMA_VERSION}; re-run the sweep or use "
                         f"filterkd-ray {manifest.get('package_version', '?')}")
    if manifest.get("status") == "running" and not allow_running:
        raise InputError(f"{uri}: the sweep is still running (manifest status 'running'); "
                         "wait for it, or resume it with `filterkd-ray sweep --resume`")
    return store
