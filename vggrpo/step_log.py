"""The log of a training run: one JSON line per step, TensorBoard scalars when TensorBoard is
installed, and each step's peak memory.

``log.jsonl`` in the run's folder holds one JSON object per step, as
:meth:`vggrpo.grpo.GRPOTrainer.train_step` returns it. It is appended to step by step (a line
is written and flushed whole), so a run that is killed keeps every step it logged. When a run
resumes at step ``k``, the lines of steps ``>= k`` are dropped first (they belong to the steps
the killed run did after its last checkpoint, which are run again), and so is a line cut short
by the kill: the file always reads as one run. A number that is not finite is written as
``null`` (a NaN is not JSON).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch

from . import _io

__all__ = ["LOG_FILE", "TENSORBOARD_DIR", "StepLog", "clean_record", "read_log",
           "reset_peak_memory", "peak_memory", "current_memory"]

LOG_FILE = "log.jsonl"
TENSORBOARD_DIR = "tensorboard"


def clean_record(record: Dict[str, Any]) -> Dict[str, Any]:
    """``record`` with every float that is not finite replaced by None: the record as JSON holds
    it (a NaN is not JSON)."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v
            for k, v in record.items()}


def read_log(path: Union[str, Path]) -> list:
    """The records of a ``log.jsonl``, in order; a line that is not a JSON object (one cut short
    by a kill) is left out."""
    records = []
    path = Path(path)
    if not path.is_file():
        return records
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


class StepLog:
    """Writes a run's steps to ``directory/log.jsonl`` (module docstring) and, when
    ``torch.utils.tensorboard`` imports (the ``tensorboard`` package is installed), to
    ``directory/tensorboard``. ``first_step``: the step the run starts (or resumes) at."""

    def __init__(self, directory: Union[str, Path], first_step: int = 0) -> None:
        self.path = Path(directory) / LOG_FILE
        kept = [r for r in read_log(self.path)
                if isinstance(r.get("step"), int) and r["step"] < first_step]
        text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept)
        _io.atomic_write(self.path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
        self._file = open(self.path, "a", encoding="utf-8")
        self._board = None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # an optional extra: the JSONL log is the record
            SummaryWriter = None
        if SummaryWriter is not None:
            self._board = SummaryWriter(str(Path(directory) / TENSORBOARD_DIR),
                                        purge_step=first_step)

    def write(self, record: Dict[str, Any]) -> None:
        """Append one step's record (a dict with an int ``step``)."""
        clean = clean_record(record)
        self._file.write(json.dumps(clean, sort_keys=True, allow_nan=False) + "\n")
        self._file.flush()
        if self._board is not None:
            for k, v in clean.items():
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._board.add_scalar(k, v, global_step=int(record["step"]))
            self._board.flush()

    def close(self) -> None:
        self._file.close()
        if self._board is not None:
            self._board.close()


def reset_peak_memory(device: torch.device) -> None:
    """Start measuring the peak memory of ``device`` anew (CUDA: the caching allocator's peak;
    CPU on Linux: the process's peak RSS)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    elif sys.platform.startswith("linux"):
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # VmHWM := the current RSS
        except OSError:
            pass


def _status(key: str) -> Optional[int]:
    if not sys.platform.startswith("linux"):
        return None
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def peak_memory(device: torch.device) -> Optional[int]:
    """Bytes: CUDA ``max_memory_allocated`` of ``device``, or on the CPU (Linux) the process's
    peak RSS (``VmHWM``) since :func:`reset_peak_memory`; None where neither is known."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return _status("VmHWM")


def current_memory(device: torch.device) -> Optional[int]:
    """Bytes now, in the measure of :func:`peak_memory`: CUDA ``memory_allocated``, or the
    process's RSS (``VmRSS``) on a Linux CPU; None where neither is known."""
    if device.type == "cuda":
        return int(torch.cuda.memory_allocated(device))
    return _status("VmRSS")
