"""Per-kernel time of a callable, from torch.profiler (used by bench/test_bench_cuda.py)."""

import inspect

import torch


def kernel_breakdown(fn, device_type: str = "cuda", rounds: int = 3) -> list[dict]:
    """Self time per kernel of `fn` (with device_type="cpu": per CPU op), from torch.profiler.

    Returns [{name, calls, total_s, share}], largest first: calls and seconds per call of `fn`
    (averaged over `rounds` calls after a warm-up), share of the summed time. It tells the next
    tuning step which launch of the fused path to look at (splat, key memset, per-view error,
    static mask) without an external profiler."""
    from torch.profiler import ProfilerActivity, profile

    activity = ProfilerActivity.CUDA if device_type == "cuda" else ProfilerActivity.CPU
    fn()
    if device_type == "cuda":
        torch.cuda.synchronize()
    # One profiling cycle; acc_events only silences torch's warning about clearing events between
    # cycles, where this torch has the argument.
    extra = {"acc_events": True} if "acc_events" in inspect.signature(profile).parameters else {}
    with profile(activities=[activity], **extra) as prof:
        for _ in range(rounds):
            fn()
        if device_type == "cuda":
            torch.cuda.synchronize()
    rows = []
    for e in prof.key_averages():
        # self time on the device (kernels, memsets) or on the CPU (ops); microseconds
        us = (getattr(e, "self_device_time_total", None) if device_type == "cuda"
              else e.self_cpu_time_total)
        if us is None and device_type == "cuda":
            us = e.self_cuda_time_total
        if us and us > 0:
            rows.append(dict(name=e.key, calls=e.count // rounds, total_s=us * 1e-6 / rounds))
    rows.sort(key=lambda r: -r["total_s"])
    total = sum(r["total_s"] for r in rows) or 1.0
    for r in rows:
        r["share"] = r["total_s"] / total
    return rows
