"""The results of a session: the JSON file (written atomically), the chart, and the ratios of
every (fused, reference) pair."""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import torch

from .machine import build_info, cpu_count, cpu_model, cpu_vector_isa, loadavg, machine_info
from .memory import memory_probe_note
from .settings import MEMORY_RESOLUTION, NOISY_SHARE, SIZES
from .targets import fmt_mem, fmt_ratio, fmt_time


def stat(stats, name) -> Optional[float]:
    try:
        return float(getattr(stats.stats, name))
    except (AttributeError, TypeError, ValueError):
        return None


def num(x) -> Optional[float]:
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def ratio(num: Optional[float], den: Optional[float]) -> Optional[float]:
    if num is None or den is None or den <= 0:
        return None
    return num / den


def memory_ratio(ref: Optional[int], fused: Optional[int]) -> Optional[float]:
    if ref is None or fused is None or ref < 4 * MEMORY_RESOLUTION:
        return None
    return ref / max(fused, MEMORY_RESOLUTION)


def atomic_write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; a results file is for everyone
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f, indent=2, allow_nan=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def results_path(path: Path, payload: dict) -> Path:
    """Where a session's results go: ``path``, unless a file there records benchmarks this
    session did not run (a ``-k`` or one-file run after a full one); then ``<stem>-subset.json``
    beside it, so a partial run never replaces a fuller record. An unreadable file there holds
    nothing to keep."""
    try:
        with open(path) as f:
            kept = {b["name"] for b in json.load(f)["benchmarks"]}
    except (OSError, ValueError, KeyError, TypeError):
        return path
    ran = {b["name"] for b in payload["benchmarks"]}
    return path if kept <= ran else path.with_name(f"{path.stem}-subset{path.suffix}")


def clean(x):
    """JSON-safe: non-finite floats become None."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [clean(v) for v in x]
    return x


def write_chart(pairs: list, path: Path, machine: dict) -> Optional[Path]:
    """A PNG of every pair's time and memory ratio (baseline / ours), written atomically.
    Returns None (and writes nothing) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        return None
    labels = [f"{p['pair']} [{p['size']}]" for p in pairs]
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.45 * len(pairs) + 1.6), sharey=True)
    for ax, key, title in ((axes[0], "time_ratio_median", "time: baseline / ours (median)"),
                           (axes[1], "memory_ratio", "peak extra memory: baseline / ours")):
        values = [p[key] if p[key] is not None else 0.0 for p in pairs]
        ax.barh(range(len(pairs)), values, color="#4a7ab5")
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}x"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_title(title, fontsize=10)
        for i, v in enumerate(values):
            ax.text(v, i, f" {v:.3g}x" if v else " -", va="center", fontsize=8)
    axes[0].set_yticks(range(len(pairs)))
    axes[0].set_yticklabels(labels, fontsize=8)
    axes[0].invert_yaxis()
    fig.suptitle(f"vggrpo benchmarks, same run: {machine.get('cpu_model', '')} "
                 f"({machine.get('cores', '?')} cores, {machine.get('cpu_vector_isa', '?')}), "
                 f"torch {machine.get('torch', torch.__version__)}", fontsize=10)
    fig.tight_layout()

    def save(tmp: str) -> None:
        fig.savefig(tmp, format="png", dpi=110)

    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def results(done: list, *, quick: bool, started: float, memory_repeats: int, allocator: str,
            memory_error: Optional[str], targets: Optional[dict], loadavg_start, cpu_share,
            options: dict) -> dict:
    """The results file's content: every timed case (``done``: the conftest's ``Case``
    records, with their pytest-benchmark stats and memory readings), every (fused, reference)
    pair's ratios, the machine, the build and the settings."""
    benchmarks = []
    for c in done:
        benchmarks.append(
            {
                "name": c.nodeid,
                "group": c.fixture.group,
                "pair": c.pair,
                "impl": c.impl,
                "label": c.label,
                "size": c.size,
                "shape": c.fixture.extra_info.get("shape"),
                "median_s": stat(c.stats, "median"),
                "min_s": stat(c.stats, "min"),
                "mean_s": stat(c.stats, "mean"),
                "stddev_s": stat(c.stats, "stddev"),
                "rounds": int(stat(c.stats, "rounds") or 0),
                "iterations": int(getattr(c.stats, "iterations", 1) or 1),
                "peak_extra_bytes": c.memory,
                "other_cpu_share": c.other_cpu_share,
            }
        )

    pairs = []
    by_key = {(b["pair"], b["size"], b["impl"]): b for b in benchmarks}
    for (pair, size, impl), fused in by_key.items():
        if impl != "fused" or (pair, size, "reference") not in by_key:
            continue
        ref = by_key[(pair, size, "reference")]
        shares = [x for x in (fused["other_cpu_share"], ref["other_cpu_share"]) if x is not None]
        pairs.append(
            {
                "pair": pair,
                "size": size,
                "fused_label": fused["label"],
                "reference_label": ref["label"],
                "fused_median_s": fused["median_s"],
                "reference_median_s": ref["median_s"],
                "time_ratio_median": ratio(ref["median_s"], fused["median_s"]),
                "time_ratio_min": ratio(ref["min_s"], fused["min_s"]),
                "fused_peak_extra_bytes": fused["peak_extra_bytes"],
                "reference_peak_extra_bytes": ref["peak_extra_bytes"],
                "memory_ratio": memory_ratio(ref["peak_extra_bytes"], fused["peak_extra_bytes"]),
                "other_cpu_share": max(shares) if shares else None,
            }
        )
    size_order = {s: i for i, s in enumerate(SIZES)}
    pairs.sort(key=lambda p: (p["pair"], size_order.get(p["size"], 99)))

    payload = {
        "schema": 1,
        "kind": "quick" if quick else "full",
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "wall_s": round(time.time() - started, 1),
        "command": "pytest " + " ".join(sys.argv[1:]),
        "machine": dict(machine_info(), loadavg_start=loadavg_start,
                        loadavg_end=loadavg(), other_cpu_share=cpu_share),
        "build": build_info(),
        "settings": {
            "min_rounds": num(options.get("min_rounds")),
            "max_time": num(options.get("max_time")),
            "min_time": num(options.get("min_time")),
            "warmup": bool(options.get("warmup")),
            "allocator": allocator,
            "memory_probe": memory_probe_note(),
            "memory_repeats": memory_repeats,
            "memory_error": memory_error,
        },
        "notes": {
            "time_ratio": "reference / fused time; median: of medians, _min: of minima",
            "memory_ratio": "reference / fused peak extra memory; null when the reference's "
            f"reading is below {4 * MEMORY_RESOLUTION} bytes (within the probe's resolution); "
            f"fused readings below {MEMORY_RESOLUTION} bytes count as that (a lower bound)",
            "other_cpu_share": "share of the machine's CPU used by other processes (and steal) "
            "while the benchmark was timed (null for windows under 0.5 s); timings taken above a "
            "few percent are unreliable",
        },
        "sizes": {k: dict(zip("BTHW", v)) for k, v in SIZES.items()},
        "pairs": pairs,
        "targets": targets,
        "benchmarks": benchmarks,
    }
    return payload


def summary_lines(pairs: list, *, other_cpu_share: Optional[float]) -> list:
    """The terminal summary's lines: the machine, the background load, and one row per pair of
    reference / fused ratios."""
    out = []
    out.append(f"machine: {cpu_model()}, {cpu_count()} cores, kernels' ISA "
                  f"{cpu_vector_isa()}, torch {torch.__version__}, "
                  f"{torch.get_num_threads()} torch threads")
    if other_cpu_share is not None:
        out.append(f"background: other processes used {100 * other_cpu_share:.0f}% of "
                      "the machine's CPU time during the timings (timings are noisy above a few %)")
    if pairs:
        pw = max(24, 2 + max(len(p["pair"]) for p in pairs))
        sw = max(11, 2 + max(len(p["size"]) for p in pairs))
        out.append(f"{'pair':<{pw}}{'size':<{sw}}{'fused':>11}{'reference':>12}{'time x':>9}"
                      f"{'(min) x':>9}{'fused mem':>12}{'ref mem':>12}{'mem x':>9}")
        for p in pairs:
            out.append(
                f"{p['pair']:<{pw}}{p['size']:<{sw}}{fmt_time(p['fused_median_s']):>11}"
                f"{fmt_time(p['reference_median_s']):>12}{fmt_ratio(p['time_ratio_median']):>9}"
                f"{fmt_ratio(p['time_ratio_min']):>9}"
                f"{fmt_mem(p['fused_peak_extra_bytes']):>12}"
                f"{fmt_mem(p['reference_peak_extra_bytes']):>12}"
                f"{fmt_ratio(p['memory_ratio']):>9}"
                + ("  ! busy" if (p["other_cpu_share"] or 0) > NOISY_SHARE else "")
            )
        out.append("time: median of the pytest-benchmark rounds, (min): ratio of minima; mem: "
                      f"peak extra memory ({memory_probe_note()}); mem x '-': below the probe's "
                      "resolution")
        if any((p["other_cpu_share"] or 0) > NOISY_SHARE for p in pairs):
            out.append(f"! busy: other processes took > {100 * NOISY_SHARE:g}% of the CPU "
                          "while this pair was timed; its time ratio is unreliable")
    return out
