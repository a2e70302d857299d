"""Shared, generic test set-up only (module-specific fixtures live in their test files).

The test machines have two shared cores: one intra-op thread per test process keeps the
timings stable and leaves the other core to whoever else is working.
"""
import torch

torch.set_num_threads(1)
