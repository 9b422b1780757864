"""Shared by every test module: only the thread split of parallel runs (`pytest -n N`)."""

import os

import torch


def pytest_configure(config):
    # Under pytest-xdist each worker would start torch's full intra-op pool, so N workers on C
    # cores run N*C threads: `pytest -n 2` on the 2-core CI machine took 246 s against 180 s
    # serial, and 143-150 s with one thread per worker (measured in one sitting). The tests
    # that are about threads set their own counts (test_threads.py).
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if os.environ.get("PYTEST_XDIST_WORKER") and workers > 0:
        torch.set_num_threads(max(1, torch.get_num_threads() // workers))
