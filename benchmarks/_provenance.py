"""The provenance header every benchmark prints above its numbers (airbench style): what ran,
when, at which commit, with which libraries, on which CPU and under what load."""
import datetime
import os
import platform
import subprocess
import sys

import numpy as np
import torch


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=False)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def header(script: str, *extra: str) -> str:
    """`# key: value` lines; `extra` lines (already formatted) follow the common ones."""
    return "\n".join([
        f"# benchmarks/{script}",
        f"# date (UTC): {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M}",
        f"# command: {' '.join([os.path.basename(sys.executable)] + sys.argv)}",
        f"# git commit: {git_commit()}",
        f"# torch {torch.__version__}, numpy {np.__version__}, python {platform.python_version()}",
        f"# CPU: {cpu_name()}; os.cpu_count()={os.cpu_count()}; torch threads="
        f"{torch.get_num_threads()}; load average at start {os.getloadavg()[0]:.2f}",
        *extra,
    ])
