"""The issue's target check: the fused geometry reward against the reference, forward, at the
realistic size, timed side by side with interleaved calls."""

from __future__ import annotations

import time
from typing import Callable, Optional

import vggrpo

from .calls import no_grad
from .inputs import BenchInputs
from .machine import cpu_times, other_cpu_share
from .settings import (
    TARGET_ATTEMPTS,
    TARGET_BUSY_SHARE,
    TARGET_MEMORY_FRACTION,
    TARGET_MIN_SECONDS,
    TARGET_PAIRS,
    TARGET_SPEEDUP,
)


def median(xs: list) -> float:
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2])


def target_functions() -> tuple[Callable, Callable]:
    return (no_grad(vggrpo.geometry_reprojection_reward),
            no_grad(vggrpo.reference.geometry_reprojection_reward))


def interleaved_times(fused: Callable, ref: Callable, args: tuple, pairs: int) -> dict:
    tf, tr = [], []

    def timed(fn):
        t0 = time.perf_counter()
        fn(*args)
        return time.perf_counter() - t0

    start = cpu_times()
    t_start = time.perf_counter()
    i = 0
    while i < pairs or (time.perf_counter() - t_start < TARGET_MIN_SECONDS and i < 50 * pairs):
        i += 1
        if i % 2 == 0:
            tf.append(timed(fused))
            tr.append(timed(ref))
        else:
            tr.append(timed(ref))
            tf.append(timed(fused))
    return {
        "pairs": len(tf),
        "fused_min_s": min(tf),
        "reference_min_s": min(tr),
        "fused_median_s": median(tf),
        "reference_median_s": median(tr),
        "speedup": min(tr) / min(tf),
        "speedup_median_of_pair_ratios": median([r / f for r, f in zip(tr, tf)]),
        "other_cpu_share": other_cpu_share(start, cpu_times()),
    }


def measure_target_speed(inputs: BenchInputs, pairs: int = TARGET_PAIRS) -> dict:
    """Side-by-side timing of the fused geometry reward against the reference.

    Forward under ``torch.no_grad`` on ``inputs``, after one warm-up call of each; interleaved
    calls, alternating which goes first, ``pairs`` of each or more, for at least
    ``TARGET_MIN_SECONDS``. The speed-up is the ratio of the minima,
    ``min t_reference / min t_fused``: background load only ever adds time, so the minimum is the
    best estimate of each uncontended cost, and it moved least under load here (a busy machine
    pushed the median of the per-pair ratios from ~3x to 20x in one run, because a stolen core
    hurts the reference's many short parallel regions far more than the fused op's few).

    The share of CPU other processes took during the timing is recorded; above
    ``TARGET_BUSY_SHARE`` the timing is repeated, up to ``TARGET_ATTEMPTS`` in all, and the
    quietest attempt is kept. If even that one was loaded, it is flagged ``busy`` and the speed
    verdict is None (inconclusive): under continuous load even the minima are meaningless (a 25x
    "speed-up" was measured at 50% background load where a quiet machine gave ~2.5x).
    """
    fused, ref = target_functions()
    args = inputs.geometry_args()
    fused(*args), ref(*args)
    attempts = []
    for attempt in range(TARGET_ATTEMPTS):
        if attempt:
            time.sleep(5.0)  # give a burst of background work a chance to pass
        attempts.append(interleaved_times(fused, ref, args, pairs))
        share = attempts[-1]["other_cpu_share"]
        if share is None or share <= TARGET_BUSY_SHARE:
            break
    timing = min(attempts, key=lambda t: t["other_cpu_share"] or 0.0)
    busy = (timing["other_cpu_share"] or 0.0) > TARGET_BUSY_SHARE
    return dict(timing, attempts=len(attempts), busy=busy,
                speed_met=None if busy else timing["speedup"] >= TARGET_SPEEDUP)


def fmt_time(s: Optional[float]) -> str:
    if s is None:
        return "-"
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.2f} ms"
    return f"{s * 1e6:.1f} us"


def fmt_mem(b: Optional[int]) -> str:
    return "-" if b is None else f"{b / 2**20:.2f} MiB"


def fmt_ratio(r: Optional[float]) -> str:
    return "-" if r is None else f"{r:.1f}x"


def target_message(t: dict) -> str:
    def verdict(ok, what="unmeasured"):
        return what if ok is None else ("met" if ok else "MISSED")

    if t.get("memory_fraction") is None:
        mem = f"memory: unmeasured ({t.get('memory_error') or 'probe unavailable'})"
    else:
        mem = (
            f"extra memory {t['memory_fraction']:.3f} of the reference's "
            f"({fmt_mem(t['fused_peak_extra_bytes'])} vs "
            f"{fmt_mem(t['reference_peak_extra_bytes'])}), target <= "
            f"{TARGET_MEMORY_FRACTION:g}: {verdict(t['memory_met'])}"
        )
    load = t["other_cpu_share"]
    load_note = "" if load is None else f", background load {100 * load:.0f}%"
    busy = (f" [BUSY MACHINE after {t['attempts']} attempts: timing unreliable]"
            if t["busy"] else "")
    return (
        f"target check, fused geometry reward forward [{t['size']}]: speed-up "
        f"{t['speedup']:.1f}x (ratio of minima over {t['pairs']} interleaved calls each: fused "
        f"{fmt_time(t['fused_min_s'])}, reference {fmt_time(t['reference_min_s'])}; medians "
        f"{fmt_time(t['fused_median_s'])} / {fmt_time(t['reference_median_s'])}{load_note})"
        f"{busy}, target >= {TARGET_SPEEDUP:g}x: "
        f"{verdict(t['speed_met'], 'INCONCLUSIVE (busy machine)')}; {mem}"
    )
