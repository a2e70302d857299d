"""`filterkd-ray sweep sweeps/cifar10_cpu.yaml` end to end on the real JPEG CIFAR-10 copy,
shrunk to seconds with --set (the full spec's numbers are in the README). Skips cleanly
where ../shared/data/cifar10 is absent (a user's clone); CI has it."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parents[1]
CIFAR = ROOT.parent / "shared" / "data" / "cifar10"

pytestmark = [pytest.mark.ray, pytest.mark.slow,
              pytest.mark.skipif(not (CIFAR / "train").is_dir(), reason="no ../shared/data/cifar10")]


def test_cifar10_cpu_spec_runs_on_real_images(tmp_path):
    out = tmp_path / "cifar"
    small = ["data.options.subset_per_class=12", "data.options.test_subset_per_class=6",
             "teacher.epochs=2", "student.epochs=2", "seeds=[0,1]", "methods=[oht,filter_kd]",
             "search.num_samples=1", "search.space={}"]
    cmd = [sys.executable, "-m", "filterkd_ray.cli", "sweep", str(ROOT / "sweeps/cifar10_cpu.yaml"),
           "--output", str(out)] + [a for s in small for a in ("--set", s)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = pq.read_table(out / "trials.parquet").to_pandas()
    assert (trials.status == "ok").all()
    assert set(trials.dataset) == {"imagefolder"} and set(trials.noise_rate) == {0.4}
    repro = trials[trials.stage == "reproduce"]
    assert sorted(zip(repro.method, repro.seed)) == [("filter_kd", 0), ("filter_kd", 1), ("oht", 0), ("oht", 1)]
    teachers = pq.read_table(out / "teachers.parquet").to_pandas()
    path = np.load(out / teachers.path_file.iloc[0])
    assert path.shape[0] == 2 and path.shape[2] == 10
    assert 100 <= path.shape[1] < 120      # 12 per class, minus the 10% validation hold-out
    summary = (out / "summary.md").read_text()
    assert "| 0.4 | filter_kd | 2 |" in summary and "| 0.4 | oht | 2 |" in summary
