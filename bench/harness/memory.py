"""Peak extra memory of a call (CPU: peak RSS through /proc with glibc in probe mode; CUDA: the
caching allocator's peak), the allocator state of the timing process, and the memory pass in
a fresh child process (see the package docstring for why the two never share a process)."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import json
import os
import subprocess
import sys
import tempfile
from typing import Any, Callable, Optional

import torch

from .settings import MEMORY_REPEATS


def glibc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
        libc.malloc.argtypes, libc.malloc.restype = [ctypes.c_size_t], ctypes.c_void_p
        libc.free.argtypes, libc.free.restype = [ctypes.c_void_p], None
    except (OSError, AttributeError):
        return None  # not glibc
    return libc


def warm_glibc_allocator() -> str:
    """Puts glibc's malloc into the state of any long-running process, whatever ran before.

    glibc serves blocks above a *dynamic* threshold (128 KiB at start) with mmap, and raises the
    threshold to the size of each larger mmapped block that is freed, up to 32 MiB (the trim
    threshold follows at twice that). A fresh process therefore page-faults on every tensor of a
    few MiB until it has freed a big one, and the reference geometry reward (tens of MiB of
    temporaries) ran ~2x slower in a fresh process than after one large free (measured on the
    2-core dev machine: cold 28-36 ms vs warm ~15 ms median at the realistic size; the fused op is
    unaffected). A training process has long been in the warm state, so it is the fair baseline,
    and warming first makes the timings independent of which benchmarks ran before: one
    malloc/free of 31 MiB at start.
    """
    libc = glibc()
    if libc is None:
        return f"default (no glibc on {sys.platform})"
    block = libc.malloc(31 * 2**20)
    if block:
        libc.free(block)
    return ("glibc, warmed: one 31 MiB malloc/free at start raises the dynamic mmap threshold "
            "to ~31 MiB (trim threshold ~62 MiB), as in any long-running process")


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number


class CpuProbe:
    """Peak-RSS probe (Linux + glibc). ``available`` is False, with ``reason``, elsewhere."""

    def __init__(self):
        self.libc = None
        self.available = False
        self.reason = "not initialised"
        self.initialised = False

    def init(self) -> None:
        if self.initialised:
            return
        self.initialised = True
        if not sys.platform.startswith("linux"):
            self.reason = f"no /proc peak-RSS probe on {sys.platform}"
            return
        libc = glibc()
        if libc is None:
            self.reason = "glibc mallopt/malloc_trim unavailable"
            return
        # A fixed 64 KiB threshold (it also switches off glibc's dynamic threshold, for the rest
        # of the process): every block from 64 KiB up is its own mmap, returned to the kernel on
        # free, so freed tensors leave the RSS at once and the peak RSS follows the live ones.
        if libc.mallopt(M_MMAP_THRESHOLD, 64 * 1024) != 1:
            self.reason = "mallopt(M_MMAP_THRESHOLD) failed"
            return
        try:
            self._status()
            self._reset_peak()
        except (OSError, KeyError, ValueError) as exc:
            self.reason = f"/proc/self peak-RSS reset unavailable ({exc})"
            return
        self.libc = libc
        self.available = True
        self.reason = ""

    @staticmethod
    def _status() -> dict[str, int]:
        out = {}
        with open("/proc/self/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    out[key] = int(value.split()[0]) * 1024  # reported in kB
        return {"VmRSS": out["VmRSS"], "VmHWM": out["VmHWM"]}

    @staticmethod
    def _reset_peak() -> None:
        # "5" resets VmHWM to the current RSS (Linux >= 4.0).
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")

    def measure(self, fn: Callable[[], Any]) -> Optional[int]:
        self.init()
        if not self.available:
            return None
        gc.collect()
        self.libc.malloc_trim(0)
        self._reset_peak()
        base = self._status()["VmRSS"]
        result = fn()
        peak = self._status()["VmHWM"]
        del result
        return max(0, peak - base)


CPU_PROBE = CpuProbe()


def tensor_device(args) -> torch.device:
    for a in args:
        if isinstance(a, torch.Tensor):
            return a.device
    return torch.device("cpu")


def peak_extra_memory(fn: Callable, *args, repeats: int = 1) -> Optional[int]:
    """Peak memory, in bytes, that ``fn(*args)`` needs beyond what is allocated before the call.

    The result of the call counts (it is alive at the peak); it is dropped afterwards. With
    ``repeats > 1`` the smallest of several readings is returned (anything else running in the
    process can only add). Returns None when the probe is unavailable. Warm ``fn`` up first.

    * CUDA inputs: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus
      the memory allocated before (tensor memory only; the caching allocator's reserve and the
      CUDA context are not counted).
    * CPU inputs (Linux with glibc only): the process's peak RSS. glibc is switched once, for the
      rest of the process, to a fixed 64 KiB mmap threshold; then per reading ``malloc_trim(0)``,
      ``/proc/self/clear_refs`` <- "5" (resets VmHWM), VmRSS as the baseline, the call, VmHWM.
      Counts everything the call touches (tensors, the C++ kernels' own scratch buffers, thread
      stacks touched for the first time). Page-granular, and the kernel's RSS counters are
      approximate (per-CPU batches), so readings carry an uncertainty of a few hundred KiB. Use
      it in a process that has not been timing big allocations before (see the module docstring).
    """
    device = tensor_device(args)
    readings = []
    for _ in range(max(1, repeats)):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            gc.collect()
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            result = fn(*args)
            torch.cuda.synchronize(device)
            peak = torch.cuda.max_memory_allocated(device)
            del result
            readings.append(max(0, peak - base))
        elif device.type == "cpu":
            reading = CPU_PROBE.measure(lambda: fn(*args))
            if reading is None:
                return None
            readings.append(reading)
        else:
            return None
    return min(readings)


def memory_probe_note() -> str:
    # Static on purpose: initialising the probe here would switch this (timing) process's
    # allocator; whether the probe worked shows as readings or as the memory pass's error.
    return ("CPU: peak RSS - RSS before, in a fresh child process (glibc mmap threshold 64 KiB, "
            "malloc_trim, clear_refs=5); CUDA: max_memory_allocated - memory_allocated")


def run_memory_pass(config, nodeids: list[str],
                    repeats: int = MEMORY_REPEATS) -> tuple[dict, Optional[str]]:
    """Runs ``nodeids`` in a fresh child pytest with ``--vggrpo-memory-pass`` (``repeats`` probes
    per case) and returns ``({nodeid: reading}, error)``. The child inherits the environment
    (thread counts) and works on the same deterministic inputs."""
    fd, out = tempfile.mkstemp(prefix="vggrpo-memory-", suffix=".json")
    os.close(fd)
    cmd = [sys.executable, "-m", "pytest", *nodeids, "-q", "--benchmark-disable",
           f"--vggrpo-memory-pass={out}", f"--vggrpo-memory-repeats={repeats}"]
    try:
        proc = subprocess.run(cmd, cwd=str(config.rootpath), capture_output=True, text=True,
                              timeout=1800)
        if proc.returncode != 0:
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
            return {}, f"memory pass exited with {proc.returncode}: " + " | ".join(tail)
        with open(out) as f:
            return json.load(f), None
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        return {}, f"memory pass failed: {exc}"
    finally:
        try:
            os.unlink(out)
        except OSError:
            pass
