"""`filterkd-ray sweep --address` on a real multi-node Ray cluster, on one machine.

One cluster for the module (`ray.cluster_utils.Cluster`, ~25 s to start on 2 cores):

- head: 0 CPUs. The sweep driver connects here and `ray.put`s the dataset and teachers, so
  every trial runs on a worker node and reads those objects through the network, as on a
  real cluster where the head is a CPU box and trials run on GPU nodes.
- `cpu` node: 1 CPU.
- `gpu` node: 1 CPU and 2 of `fake_gpu`, a custom resource standing in for GPUs (a CPU-only
  machine cannot fake real GPUs: `use_gpu` would fail in torch).

One CPU per worker node makes placement deterministic: with `search.max_concurrent: 2`, two
1-CPU trials running at once must be on different nodes (with 2 CPUs each, Ray may pack both
on one node). Each sweep is a subprocess, as a user runs it; its results are read back from
`trials.parquet` with pyarrow. The node-loss test removes the `cpu` node, so it runs last.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pyarrow.parquet as pq
import pytest
import ray
from ray.cluster_utils import Cluster

from filterkd_ray import InputError
from filterkd_ray.cluster import validate_cluster_config
from filterkd_ray.jobs import check_resources
from filterkd_ray.spec import load_spec

pytestmark = [pytest.mark.ray, pytest.mark.slow]

SMOKE = "sweeps/toy_smoke.yaml"
MB = 1024**2
# toy_smoke, smaller: one seed, one noise rate, no reproduce stage, tiny data.
SMALL = ["seeds=[0]", "data.noise.rates=[0.3]", "search.space={}", "reproduce=false",
         "teacher.epochs=2", "student.epochs=2", "data.options.n_train=100",
         "data.options.n_val=100", "data.options.n_test=100"]


def child_env() -> dict:
    """The environment for a CLI subprocess, taken when it starts: a local Ray started
    earlier in this pytest process turns on token auth by setting RAY_AUTH_MODE here, and the
    child must see the same mode as the cluster it joins."""
    return {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
            "RAY_USAGE_STATS_ENABLED": "0"}


@pytest.fixture(scope="module")
def cluster():
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    if ray.is_initialized():      # another module's local Ray must not be the one we join
        ray.shutdown()
    c = Cluster(initialize_head=True, connect=True, head_node_args={
        "num_cpus": 0, "object_store_memory": 100 * MB, "include_dashboard": False})
    try:
        cpu = c.add_node(num_cpus=1, object_store_memory=100 * MB)
        gpu = c.add_node(num_cpus=1, resources={"fake_gpu": 2}, object_store_memory=100 * MB)
        c.wait_for_nodes()
        yield SimpleNamespace(cluster=c, address=c.address, head=c.head_node.node_id,
                              cpu=cpu.node_id, gpu=gpu.node_id, cpu_node=cpu)
    finally:
        ray.shutdown()            # this process is connected to the head: leave first
        c.shutdown()


def cli(cluster, command: str, *args: str, sets=()):
    argv = [sys.executable, "-m", "filterkd_ray.cli", command, SMOKE, *args,
            "--address", cluster.address]
    for s in sets:
        argv += ["--set", s]
    return argv


def sweep(cluster, output: str, *sets: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(cli(cluster, "sweep", "--output", output, sets=[*SMALL, *sets]),
                          capture_output=True, text=True, timeout=600, env=child_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def trials_of(out: Path):
    return pq.read_table(out / "trials.parquet").to_pandas()


def driver_node(out: Path) -> str:
    return json.loads((out / "manifest.json").read_text())["driver_node_id"]


# --- 1: the GPU stand-in restricts placement; objects are read on other nodes ----------

def test_gpu_stand_in_trials_run_only_on_the_node_that_offers_it(cluster, tmp_path):
    out = tmp_path / "fake_gpu"
    # --output as a URI, as on a real cluster: the driver and every trial open it by URI.
    sweep(cluster, f"file://{out}", "methods=[oht,filter_kd]", "search.num_samples=2",
          "scaling.resources_per_worker={fake_gpu: 1}")
    trials = trials_of(out)
    assert trials.trial_id.is_unique
    assert sorted(trials.stage) == ["search", "search", "search", "teacher"]
    assert (trials.status == "ok").all(), trials.error.tolist()
    assert set(trials.node_id) == {cluster.gpu}
    # The driver ray.put the dataset on the head, then (after the teacher stage) the teacher's
    # path and weights; every trial ran on the gpu node, so read them there. Filter-KD
    # students saw the path as a read-only (zero-copy) view of the gpu node's own copy.
    assert driver_node(out) == cluster.head
    fkd = trials[trials.method == "filter_kd"]
    assert len(fkd) == 2 and fkd.path_zero_copy.astype(bool).all()
    assert fkd.label_dist_pstar.notna().all()


# --- 2: asking for what no node offers -----------------------------------------------------

def test_a_resource_no_node_offers_is_one_line_exit_2(cluster, tmp_path):
    bad = ["scaling.resources_per_worker={tpu: 1}"]
    val = subprocess.run(cli(cluster, "validate", sets=bad), capture_output=True, text=True,
                         timeout=300, env=child_env())
    out = tmp_path / "never"
    run = subprocess.run(cli(cluster, "sweep", "--output", str(out), sets=[*SMALL, *bad]),
                         capture_output=True, text=True, timeout=300, env=child_env())
    for proc in (val, run):
        assert proc.returncode == 2, proc.stderr[-2000:]
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, lines
        assert re.match(r"error: scaling: one worker needs tpu=1 but no node offers that much "
                        r"\(largest node: 0; cluster: CPU=2, fake_gpu=2\)", lines[0]), lines[0]
    # Nothing was queued or written: no manifest, no Tune experiment, no run rows.
    assert not out.exists() or list(out.iterdir()) == []


def test_a_bundle_split_across_nodes_is_refused(cluster):
    """Each key alone fits the cluster (1.9 of 2 CPUs with the Train driver, 2 of 2 fake_gpu),
    but only the gpu node holds a {CPU: 0.9, fake_gpu: 1} worker: a 2-worker DDP trial would
    wait forever in Tune."""
    two = ["scaling.num_workers=2", "scaling.cpus_per_worker=0.9",
           "scaling.resources_per_worker={fake_gpu: 1}"]
    with pytest.raises(InputError, match=r"one worker needs CPU=0.9, fake_gpu=1 on a single "
                                         r"node; the nodes have room for 1 of 2 such workers"):
        check_resources(load_spec(SMOKE, two))
    check_resources(load_spec(SMOKE, two[1:]))     # one such worker fits


def bootstrap_config(tmp_path) -> str:
    """cluster.yaml as `ray up` leaves it on the head (prepared, written as JSON)."""
    path = tmp_path / "ray_bootstrap_config.yaml"
    path.write_text(json.dumps(validate_cluster_config("cluster.yaml")))
    return str(path)


def test_on_an_autoscaling_cluster_the_node_types_decide_not_the_nodes_up_now(cluster, tmp_path):
    """cluster.yaml's GPU workers scale from zero: when the sweep starts, only the CPU head is
    up. With the launcher's config on the head, a GPU spec is judged against the node types
    the autoscaler may add; without it, against the live nodes (here: no GPU at all)."""
    gpu = load_spec(SMOKE, ["scaling.use_gpu=true", "scaling.gpus_per_worker=1"])
    with pytest.raises(InputError, match="one worker needs GPU=1 but no node offers"):
        check_resources(gpu, launcher_config=str(tmp_path / "absent.yaml"))
    config = bootstrap_config(tmp_path)
    check_resources(gpu, launcher_config=config)          # gpu_1x / gpu_4x will host it
    with pytest.raises(InputError, match=r"scaling: no node type offers .*tpu: 1 \(offered: "
                                         r"head_cpu CPU: 16, GPU: 0, TRAIN_DRIVER: 8; gpu_1x"):
        check_resources(load_spec(SMOKE, ["scaling.resources_per_worker={tpu: 1}"]),
                        launcher_config=config)
    # 8 gpu_1x x 1 + 2 gpu_4x x 4 = 16 one-GPU workers at most.
    check_resources(gpu.model_copy(update={"scaling": gpu.scaling.model_copy(
        update={"num_workers": 16})}), launcher_config=config)
    with pytest.raises(InputError, match=r"17 workers of .* \(16 at most"):
        check_resources(gpu.model_copy(update={"scaling": gpu.scaling.model_copy(
            update={"num_workers": 17})}), launcher_config=config)


# --- 3: trials spread over the worker nodes, and survive losing one ----------------------

def in_progress(out: Path) -> set[str]:
    """Trials that have checkpointed an epoch but not yet written their row: mid-run."""
    ids = set()
    for d in (out / "tune").glob("search-*/trial_fn_*"):
        if any(d.glob("checkpoint_*")):
            ids.add(d.name.split("_")[2])
    done = {p.name.rsplit("-", 1)[1].split(".")[0] for p in (out / "runs").glob("*.parquet")}
    return ids - done


def finished_on(out: Path, node: str) -> int:
    n = 0
    for p in (out / "runs").glob("*.parquet"):
        if not p.name.endswith(".epochs.parquet"):
            try:
                n += pq.read_table(p, columns=["node_id"]).column(0)[0].as_py() == node
            except OSError:       # being renamed into place right now
                pass
    return n


def test_trials_spread_over_nodes_and_survive_losing_one(cluster, tmp_path):
    """A plain (CPU-only) sweep runs on both worker nodes; the cpu node is then killed while
    one of its trials is mid-run: Tune retries that trial on the gpu node (FailureConfig
    max_failures from scaling.max_failures) and the sweep finishes every trial exactly once."""
    out = tmp_path / "lose_node"
    n = 5
    sets = [*SMALL, "methods=[oht,ls]", f"search.num_samples={n}", "student.epochs=30",
            "data.options.n_train=300", "scaling.checkpoint_every=1", "scaling.max_failures=2"]
    log = (tmp_path / "stdout").open("w+")
    proc = subprocess.Popen(cli(cluster, "sweep", "--output", str(out), sets=sets), stdout=log,
                            stderr=subprocess.STDOUT, text=True, env=child_env())
    try:
        # Kill the cpu node once a run has finished there and two trials are mid-run: with
        # one CPU per node, one of those two is on the cpu node.
        deadline = time.time() + 400
        while True:
            assert proc.poll() is None, "sweep ended before a node could be lost"
            assert time.time() < deadline, "never saw two trials mid-run after one on cpu node"
            running = in_progress(out) if (out / "runs").exists() else set()
            if len(running) == 2 and finished_on(out, cluster.cpu) >= 1:
                break
            time.sleep(0.2)
        cluster.cluster.remove_node(cluster.cpu_node, allow_graceful=False)
        assert proc.wait(timeout=600) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    log.seek(0)
    stdout = log.read()
    trials = trials_of(out)
    # Every trial exactly once, all finished, the expected count per search.
    assert trials.trial_id.is_unique
    assert (trials.status == "ok").all(), trials.error.tolist()
    assert trials.groupby("method").size().to_dict() == {"oht": 1, "ls": n}
    epochs = pq.read_table(out / "epochs.parquet").to_pandas()
    assert (epochs.groupby("trial_id").epoch.agg(list)
            .map(lambda e: sorted(e) == list(range(30))).all()), "an epoch missing or twice"
    # The trial that was running on the lost node was retried, and finished on the other one.
    retried = re.findall(r"(search-r0\.3-\w+-\w+): attempt 1 failed", stdout)
    assert len(retried) == 1 and retried[0].rsplit("-", 1)[1] in running, stdout[-3000:]
    row = trials.set_index("trial_id").loc[retried[0]]
    assert row.node_id == cluster.gpu
    assert row.attempts_resumed_at >= 0     # from its last checkpoint, not from epoch 0
    # Runs finished before the loss keep the node they ran on; none ran on the driver's node.
    assert set(trials.node_id) == {cluster.cpu, cluster.gpu}
    assert cluster.head not in set(trials.node_id) and driver_node(out) == cluster.head
