"""What machine and build a measurement belongs to, and how busy the machine was."""

from __future__ import annotations

import hashlib
import os
import platform
import re
import subprocess
import time
from pathlib import Path
from typing import Optional

import torch

import vggrpo
from vggrpo.provenance import cpuinfo

from .settings import BENCH_DIR


def cpuinfo_field(name: str) -> Optional[str]:
    """The first processor's ``name`` field of /proc/cpuinfo, None where there is none (the
    library's parser, which also describes the machine of a weights build)."""
    return cpuinfo().get(name)


def cpu_model() -> str:
    return (cpuinfo_field("model name") or platform.processor() or platform.machine()
            or "unknown-cpu")


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def cpu_vector_isa() -> str:
    """The instruction set whose clone of the CPU kernels runs here: ``avx512f``, ``avx2`` or
    ``baseline`` (GCC's target_clones pick by these CPU flags at load time; see
    csrc/kernels/cpu_zbuffer.h). Virtual machines sold under one model name ("AMD EPYC") differ in
    it, and the kernels' speed with them."""
    flags = cpuinfo_field("flags")
    if flags is None:
        return "unknown"
    present = set(flags.split())
    return next((isa for isa in ("avx512f", "avx2") if isa in present), "baseline")


def machine_slug() -> str:
    """Short machine id for the results file name: CPU model slug, usable core count and the
    kernels' instruction set, e.g. ``amd-epyc-2c-avx2`` or
    ``intel-xeon-platinum-8375c-8c-avx512``."""
    model = cpu_model().lower()
    model = re.sub(r"\((r|tm)\)", " ", model)
    model = re.sub(r"@.*$", " ", model)
    model = re.sub(r"\b(cpu|processor|\d+-core)\b", " ", model)
    slug = re.sub(r"[^a-z0-9]+", "-", model).strip("-")[:48].strip("-") or "cpu"
    isa = cpu_vector_isa().replace("avx512f", "avx512")
    return f"{slug}-{cpu_count()}c-{isa}"


def machine_info() -> dict:
    return {
        "cpu_model": cpu_model(),
        "cpu_vector_isa": cpu_vector_isa(),
        "cores": cpu_count(),
        "os_cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "vggrpo": vggrpo.__version__,
        "vggrpo_openmp": bool(vggrpo.openmp),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def build_info() -> dict:
    """What was measured: the git commit, whether csrc/ or vggrpo/ had uncommitted changes, and a
    hash of the loaded extension binary (the kernels change; numbers belong to one build)."""
    info: dict = {}
    repo = BENCH_DIR.parent
    try:
        info["git_commit"] = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=repo, capture_output=True,
            text=True, timeout=10, check=True,
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--", "csrc", "vggrpo", "setup.py"], cwd=repo,
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout
        info["uncommitted_changes_in_csrc_or_vggrpo"] = bool(changed.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        so = Path(vggrpo._C.__file__)
        info["extension"] = so.name
        info["extension_sha256"] = hashlib.sha256(so.read_bytes()).hexdigest()[:16]
        info["extension_mtime_utc"] = time.strftime(
            "%Y-%m-%dT%H:%M:%SZ", time.gmtime(so.stat().st_mtime))
    except (AttributeError, OSError):
        pass
    return info


def loadavg() -> Optional[list]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def cpu_times() -> Optional[tuple[float, float, float]]:
    """(wall, machine-wide busy CPU seconds, this process's CPU seconds), or None."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
        ticks = os.sysconf("SC_CLK_TCK")
        # user nice system idle iowait irq softirq steal
        vals = [int(x) for x in fields[1:9]]
        busy = (sum(vals) - vals[3] - vals[4]) / ticks
    except (OSError, ValueError, IndexError):
        return None
    t = os.times()
    return time.time(), busy, t.user + t.system


def other_cpu_share(start, end, min_window: float = 0.5) -> Optional[float]:
    """Share of the machine's CPU capacity used by other processes (and steal) between two
    :func:`cpu_times` snapshots: a noise indicator for the timings. None for windows shorter
    than ``min_window`` seconds (the counters tick at 100 Hz: one tick of a shell command in a
    20 ms window would read as 25%)."""
    if start is None or end is None:
        return None
    wall = end[0] - start[0]
    if wall < min_window:
        return None
    other = (end[1] - start[1]) - (end[2] - start[2])
    return max(0.0, other) / (wall * cpu_count())
