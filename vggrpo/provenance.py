"""What a trained file's numbers depend on besides its recipe: the software versions, torch's
thread count and the CPU it ran on.

A build is bitwise reproducible only where all of these match. The CPU belongs to the list:
two 2-core VMs sold as the same "AMD EPYC", with the same wheels and thread count, trained
different VAE bytes (docs/lgm.md). The likely cause is that the math libraries under torch pick
their kernels and blocking, and so the order in which they sum floats, by the processor they
find. So
``vggrpo build-defaults`` writes :func:`build_environment` into quality.json, where two builds
can be compared.
"""

from __future__ import annotations

import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Dict, Optional

import torch

__all__ = ["PACKAGES", "build_environment", "cpuinfo"]

#: The packages whose code runs in a build (diffusers' Wan classes, peft's LoRA, the writers).
PACKAGES = ("torch", "diffusers", "peft", "numpy", "safetensors")


def cpuinfo() -> Dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (``{"model name": ..., "flags": ...}``,
    keys lower-cased); {} where unreadable."""
    fields: Dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break  # the first processor's block ends at its blank line
                key, _, value = line.partition(":")
                fields.setdefault(key.strip().lower(), value.strip())
    except OSError:
        pass
    return fields


def _cache_sizes() -> Dict[str, str]:
    """Cache level -> size as Linux reports it for CPU 0 (``{"L1d": "32K", ...}``); {} where
    unreadable. The sizes steer the math libraries' blocking, so runs on VMs that differ only
    here can sum in different orders."""
    sizes: Dict[str, str] = {}
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            level = (index / "level").read_text().strip()
            kind = (index / "type").read_text().strip()
            size = (index / "size").read_text().strip()
        except OSError:
            continue
        suffix = {"Data": "d", "Instruction": "i"}.get(kind, "")
        sizes[f"L{level}{suffix}"] = size
    return sizes


def _version(package: str) -> Optional[str]:
    """The version a loaded module reports of itself (torch's carries its build, e.g.
    ``2.11.0+cu130``, which its installed metadata may lack), else the installed one."""
    module = sys.modules.get(package)
    version = getattr(module, "__version__", None)
    if isinstance(version, str):
        return version
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def build_environment() -> Dict[str, object]:
    """The facts a build's bytes depend on, as JSON-ready values::

        {"python": "3.11.7", "packages": {"torch": "2.13.0+cpu", "diffusers": "0.42.1", ...},
         "threads": 2,
         "cpu": {"model": "AMD EPYC", "family": "25", "model_number": "1", "stepping": "1",
                 "isa": "AVX2", "caches": {"L1d": "32K", "L2": "512K", "L3": "32768K"}}}

    ``packages`` maps each of :data:`PACKAGES` to its installed version (None where it is not
    installed); ``threads`` is ``torch.get_num_threads()``; ``cpu.isa`` is the instruction set
    of the kernels torch dispatches to (``torch.backends.cpu.get_cpu_capability()``). CPU fields
    read from /proc/cpuinfo and /sys are None (or an empty dict) where the system does not have
    them, so this never fails a build."""
    info = cpuinfo()
    try:
        isa = torch.backends.cpu.get_cpu_capability()
    except (AttributeError, RuntimeError):
        isa = None
    return {
        "python": platform.python_version(),
        "platform": sys.platform,
        "packages": {name: _version(name) for name in PACKAGES},
        "threads": torch.get_num_threads(),
        "cpu": {
            "model": info.get("model name") or platform.processor() or platform.machine(),
            "family": info.get("cpu family"),
            "model_number": info.get("model"),
            "stepping": info.get("stepping"),
            "isa": isa,
            "caches": _cache_sizes(),
        },
    }
