"""A real local Ray for tests, and probes of what it holds. No mocks: these start Ray.

Starting Ray costs 5-12 s on the 2-core test machines, so a test module starts one and keeps
it for all its tests:

    from ray_fixtures import ray_fixture
    ray_local = ray_fixture(num_cpus=4)            # a module-scoped pytest fixture

    def test_x(ray_local): ...

Logical CPUs may exceed the cores: a DDP trial needs its driver plus its workers, and with
`num_cpus=2` a 1-CPU trial with two 1-CPU workers never starts (it waits silently).

The probes read /proc, not Ray's state API: that API is served by the dashboard, which the
`ray[tune,train]` install does not include (`ray.util.state` fails with "Failed to connect to
API server", `ray memory` needs grpc). The GCS actor table (`ray._private.state.actors`) and
the object store's shared-memory file are enough to find worker processes and to measure how
many bytes the store really holds.
"""
from __future__ import annotations

import contextlib
import os

import psutil
import pytest
import ray

QUIET = {"RAY_USAGE_STATS_ENABLED": "0"}


@contextlib.contextmanager
def local_ray(num_cpus: int = 4, object_store_mb: int = 300, env: dict | None = None, **init):
    """Start a local Ray with `num_cpus` logical CPUs, no GPUs, no dashboard; stop it after.

    `env` (e.g. Train's health-check knobs) is set before `ray.init`, so the raylet and every
    worker it starts inherit it, and restored afterwards."""
    env = {**QUIET, **(env or {})}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    if ray.is_initialized():      # a previous module's cluster must not leak into this one
        ray.shutdown()
    try:
        ctx = ray.init(address="local", num_cpus=num_cpus, num_gpus=0, include_dashboard=False,
                       object_store_memory=object_store_mb * 1024**2, log_to_driver=False,
                       **init)
        yield ctx
    finally:
        ray.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def ray_fixture(**kwargs):
    """A module-scoped fixture running `local_ray(**kwargs)`; assign it to a name in a module."""
    @pytest.fixture(scope="module")
    def _ray():
        with local_ray(**kwargs) as ctx:
            yield ctx
    return _ray


def alive_actor_pids(class_name: str) -> list[int]:
    """Pids of the live actors of a class, e.g. "RayTrainWorker" (Train), "ImplicitFunc"
    (a Tune function trial), from the GCS actor table."""
    return sorted(a["Pid"] for a in ray._private.state.actors().values()
                  if a["ActorClassName"].endswith(class_name) and a["State"] == "ALIVE"
                  and a.get("Pid"))


def _plasma_maps(pid: int) -> list:
    return [m for m in psutil.Process(pid).memory_maps(grouped=False) if "plasma" in m.path]


def object_store_file() -> str:
    """The object store's shared-memory file (e.g. /dev/shm/plasmaXXXX), as this process maps it."""
    maps = _plasma_maps(os.getpid())
    if not maps:
        raise RuntimeError("this process maps no object store file; call ray.put first")
    return maps[0].path.removesuffix(" (deleted)")


def object_store_bytes(path: str | None = None) -> int:
    """Bytes of memory the object store has really allocated: the pages its file holds.

    The store's file is sized to `object_store_memory` but tmpfs allocates pages only when
    written, so st_blocks counts the bytes of every object ever written, not yet returned
    (its allocator reuses freed space before touching new pages)."""
    path = path or object_store_file()
    try:
        return os.stat(path).st_blocks * 512
    except FileNotFoundError:     # unlinked: reach it through our own mapping
        m = _plasma_maps(os.getpid())[0]
        return os.stat(f"/proc/{os.getpid()}/map_files/{m.addr}").st_blocks * 512


def object_store_rss(pid: int) -> int:
    """Bytes of the object store a process has mapped and touched (shared with the store: a
    zero-copy reader shows the object here, not in its private memory)."""
    try:
        return sum(m.rss for m in _plasma_maps(pid))
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return 0
