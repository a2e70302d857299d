"""`--output` on any pyarrow file system (results.Store), tested offline.

What `pyarrow.fs.FileSystem.from_uri` accepts without a network: `file://` (the local file
system) and `mock://` (Arrow's in-memory test file system, a new empty one per `from_uri`
call, so it can only hold what one Store object writes). `memory://` and fsspec schemes are
not accepted. So:

- `mock://` checks that Store only goes through the pyarrow file-system API (no local paths,
  no mmap), as on S3;
- `file://` checks that a URI and a plain path are the same folder, and that `filterkd-ray
  report` takes a URI;
- atomic writes are checked on the real local file system, with a reader racing a writer;
- S3 itself: against moto's S3 server on localhost, when it is installed (`pip install
  'moto[server]'`, anywhere: the tests run its `moto_server`, found on PATH or in
  $FILTERKD_MOTO_SERVER), a whole tiny sweep goes to `s3://` and is read back. Without it
  those tests skip: no internet, and moto is not a dependency of the package.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from filterkd_ray import InputError
from filterkd_ray.results import TRIAL_COLUMNS, Store, frame, open_sweep

try:
    from sweep_folder import make_sweep_folder
except ImportError:  # run from the repository root as a package
    from tests.sweep_folder import make_sweep_folder


def all_files(store: Store) -> list[str]:
    """Every file under the store's root, relative, straight from the file system."""
    infos = store.fs.get_file_info(pafs.FileSelector(store.root, recursive=True))
    return sorted(i.path[len(store.root) + 1:] for i in infos if i.type == pafs.FileType.File)


def write_everything(store: Store) -> dict:
    """One of each kind of file a sweep writes; returns what was written."""
    rng = np.random.default_rng(0)
    row = frame([{"trial_id": "search-r0.3-ls-abc", "stage": "search", "method": "ls",
                  "val_acc": 0.5, "status": "ok", "node_id": "n1"}], TRIAL_COLUMNS)
    path = rng.random((3, 50, 4)).astype(np.float16)
    y = rng.integers(0, 4, 50)
    store.check_writable()
    store.write_table("runs/search-r0.3-ls-abc", row)
    store.write_json("manifest.json", {"schema_version": 1, "status": "running"})
    store.write_array("paths/teacher-r0.3-s0.npy", path)
    store.write_npz("paths/teacher-r0.3-s0.labels.npz", y=y, y_noisy=y, p_star=None)
    store.write_bytes("plots/a.png", b"\x89PNG not really")
    return {"row": row, "path": path, "y": y}


def check_everything(store: Store, wrote: dict) -> None:
    assert all_files(store) == ["manifest.json", "paths/teacher-r0.3-s0.labels.npz",
                                "paths/teacher-r0.3-s0.npy", "plots/a.png",
                                "runs/search-r0.3-ls-abc.parquet"]   # no .tmp- left behind
    back = store.read_table("runs/search-r0.3-ls-abc")
    pd.testing.assert_frame_equal(back, wrote["row"])
    # Plain pyarrow on the same file system reads what Store wrote.
    direct = pq.read_table(store.path("runs/search-r0.3-ls-abc.parquet"), filesystem=store.fs)
    assert direct.column("val_acc").to_pylist() == [0.5]
    assert store.read_json("manifest.json")["status"] == "running"
    arr = store.read_array("paths/teacher-r0.3-s0.npy")
    assert arr.dtype == np.float16 and np.array_equal(arr, wrote["path"])
    npz = store.read_npz("paths/teacher-r0.3-s0.labels.npz")
    assert sorted(npz) == ["y", "y_noisy"] and np.array_equal(npz["y"], wrote["y"])
    assert store.read_bytes("plots/a.png") == b"\x89PNG not really"
    assert store.list("runs") == ["search-r0.3-ls-abc.parquet"]
    assert store.list("no-such-folder") == []
    assert store.exists("paths") and not store.exists("paths/nope.npy")


def test_store_on_a_non_local_file_system():
    store = Store("mock:///bucket/sweeps/toy")
    assert not store.is_local and store.root == "bucket/sweeps/toy"
    wrote = write_everything(store)
    check_everything(store, wrote)
    # Not local, so arrays are read from bytes, not memory-mapped from a path.
    assert not isinstance(store.read_array("paths/teacher-r0.3-s0.npy"), np.memmap)


def test_a_file_uri_is_the_same_folder_as_its_path(tmp_path):
    uri = f"file://{tmp_path}/sweep"
    store = Store(uri)
    assert store.is_local and store.root == f"{tmp_path}/sweep"
    wrote = write_everything(store)
    check_everything(store, wrote)
    check_everything(Store(str(tmp_path / "sweep")), wrote)
    assert pq.read_table(tmp_path / "sweep/runs/search-r0.3-ls-abc.parquet").num_rows == 1
    assert isinstance(store.read_array("paths/teacher-r0.3-s0.npy"), np.memmap)


def test_report_reads_and_writes_a_sweep_folder_given_as_a_uri(tmp_path):
    from filterkd_ray.cli import main
    uri = f"file://{tmp_path}/sweep"
    make_sweep_folder(uri, noise_rates=(0.3,), seeds=(0,), methods=("oht", "filter_kd"),
                      n_train=100, teacher_epochs=3, student_epochs=2, with_failed=False)
    assert open_sweep(uri).exists("trials.parquet")
    assert main(["report", uri]) == 0
    assert "| filter_kd |" in (tmp_path / "sweep/summary.md").read_text()
    assert (tmp_path / "sweep/report.md").stat().st_size > 0


def test_a_reader_never_sees_a_partial_file(tmp_path):
    """A writer replaces a ~4 MB table 30 times while a reader reads it in a loop: every read
    parses and holds one whole version (all 500k values from one write)."""
    store = Store(f"file://{tmp_path}/sweep")
    n = 500_000

    def version(v):
        return pd.DataFrame({"v": np.full(n, v, dtype=np.int64),
                             "x": np.random.default_rng(v).random(n)})

    store.write_table("trials", version(0))
    done, seen, errors = threading.Event(), [], []

    def reader():
        while not done.is_set():
            try:
                df = store.read_table("trials")
                assert len(df) == n and df.v.nunique() == 1, "a torn file"
                seen.append(int(df.v.iloc[0]))
            except Exception as err:  # noqa: BLE001 - any failure to read is the finding
                errors.append(repr(err))

    t = threading.Thread(target=reader)
    t.start()
    try:
        for v in range(1, 31):
            store.write_table("trials", version(v))
    finally:
        done.set()
        t.join()
    assert not errors, errors[:3]
    assert len(set(seen)) >= 3, f"the reader overlapped too few writes to tell: {sorted(set(seen))}"
    assert seen == sorted(seen)                   # versions only move forward
    assert all_files(store) == ["trials.parquet"]
    # What a crashed writer leaves (a temporary, never renamed) is invisible to readers.
    store.makedirs("runs")
    (tmp_path / "sweep/runs/a.parquet.tmp-0123abcd").write_bytes(b"PAR1 half a file")
    assert store.list("runs") == []


def test_a_partial_file_is_what_the_rename_protects_against(tmp_path):
    """Control for the test above: half of a Parquet file, as a reader of an in-place write
    would see it, does not parse."""
    store = Store(f"file://{tmp_path}/sweep")
    store.write_table("t", pd.DataFrame({"x": np.arange(10_000)}))
    data = store.read_bytes("t.parquet")
    (tmp_path / "sweep/t.parquet").write_bytes(data[: len(data) // 2])
    with pytest.raises(Exception):
        store.read_table("t")


# --- S3, through moto's server on localhost ------------------------------------------------

def _moto_server() -> str | None:
    # The venv's first: a moto_server on PATH may be an older one (5.2.1 fails with pyarrow 26).
    beside_python = Path(sys.executable).with_name("moto_server")
    return (os.environ.get("FILTERKD_MOTO_SERVER")
            or (str(beside_python) if beside_python.exists() else None)
            or shutil.which("moto_server"))


@pytest.fixture(scope="module")
def s3():
    exe = _moto_server()
    if not exe:
        pytest.skip("no S3-compatible server: pip install 'moto[server]' (or set "
                    "FILTERKD_MOTO_SERVER to its moto_server) to run the S3 tests")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)          # pyarrow's S3 reads them; subprocesses inherit them
    try:
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(endpoint, timeout=2)
                break
            except OSError:
                assert proc.poll() is None and time.time() < deadline, "moto_server did not start"
                time.sleep(0.3)
        fs = pafs.S3FileSystem(endpoint_override=endpoint, allow_bucket_creation=True)
        fs.create_dir("filterkd-test")
        try:   # pyarrow writes every object as a multipart upload; old motos reject those
            with fs.open_output_stream("filterkd-test/probe") as f:
                f.write(b"probe")
        except OSError as err:
            pytest.skip(f"{exe} cannot complete pyarrow's multipart uploads "
                        f"({str(err).splitlines()[0][:120]}); use moto[server] >= 5.2.6 "
                        "(5.2.1 fails, 5.2.6 works with pyarrow 26)")
        fs.delete_file("filterkd-test/probe")
        yield "s3://filterkd-test"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_store_on_s3(s3):
    store = Store(f"{s3}/store-test")
    assert isinstance(store.fs, pafs.S3FileSystem) and not store.is_local
    check_everything(store, write_everything(store))
    with pytest.raises(InputError, match=r"--output s3://no-such-bucket/x: cannot write a sweep "
                                         r"folder there \(Bucket 'no-such-bucket' not found"):
        Store("s3://no-such-bucket/x").check_writable()


def test_whole_sweep_on_s3(s3, tmp_path):
    from filterkd_ray.cli import main
    uri = f"{s3}/sweeps/toy"
    sets = ["seeds=[0]", "data.noise.rates=[0.3]", "search.space={}", "reproduce=false",
            "teacher.epochs=2", "student.epochs=2", "data.options.n_train=100",
            "data.options.n_val=100", "data.options.n_test=100", "methods=[filter_kd]",
            "search.num_samples=1"]   # a teacher and one student: every kind of file
    argv = [sys.executable, "-m", "filterkd_ray.cli", "sweep",
            os.path.abspath("sweeps/toy_smoke.yaml"), "--output", uri]
    for s in sets:
        argv += ["--set", s]
    # cwd: with a non-local --output the Optuna studies live in ./.filterkd_optuna
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600, cwd=tmp_path,
                          env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    store = open_sweep(uri)
    files = all_files(store)
    assert not [f for f in files if ".tmp-" in f]
    for f in ("trials.parquet", "epochs.parquet", "teachers.parquet", "summary.md", "report.md",
              "paths/teacher-r0.3-s0.npy", "teachers/teacher-r0.3-s0/best.pt"):
        assert f in files, f
    assert any(f.startswith("tune/") for f in files)       # Tune's experiment state, on S3 too
    trials = pq.read_table(store.path("trials.parquet"), filesystem=store.fs).to_pandas()
    assert sorted(trials.stage) == ["search", "teacher"]
    assert (trials.status == "ok").all(), trials.error.tolist()
    # The student distilled from the teacher's path that the driver read back from S3.
    assert trials[trials.stage == "search"].path_zero_copy.astype(bool).all()
    assert len(store.list("runs")) == 2 * len(trials)      # each run's row and epochs files
    # `filterkd-ray report s3://...` rebuilds the report in place.
    store.fs.delete_file(store.path("report.md"))
    assert main(["report", uri]) == 0
    assert store.exists("report.md") and store.exists("summary.md")
