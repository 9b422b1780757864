"""Shared by every test module: the thread split of parallel runs (`pytest -n N`), and where
diffusers' log handler writes."""

import logging
import os
import sys

import torch


def pytest_configure(config):
    # Under pytest-xdist each worker would start torch's full intra-op pool, so N workers on C
    # cores run N*C threads: `pytest -n 2` on the 2-core CI machine took 246 s against 180 s
    # serial, and 143-150 s with one thread per worker (measured in one sitting). The tests
    # that are about threads set their own counts (test_threads.py).
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if os.environ.get("PYTEST_XDIST_WORKER") and workers > 0:
        torch.set_num_threads(max(1, torch.get_num_threads() // workers))


def pytest_sessionstart(session):
    # diffusers makes its StreamHandler on first use, bound to the sys.stderr of that moment:
    # inside a test using capsys, a stream closed when the test ends, so every later diffusers
    # warning becomes a "--- Logging error ---" traceback in whichever test logs it (order
    # dependent: it depended on which test touched diffusers first). Bind it to the real one.
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.get_logger("diffusers")
    for handler in logging.getLogger("diffusers").handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(sys.__stderr__)
