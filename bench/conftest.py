"""The pytest side of the vggrpo benchmarks: options, the session's state, the fixtures every
benchmark uses (``inputs``, ``bench_case``, ``target_check``) and the session-finish hooks. The
machinery (inputs, memory probe, machine description, targets, results file and chart) lives in
bench/harness/; its package docstring says how timing and memory are measured, and why apart.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Callable, Optional

import pytest
from harness.calls import forward_backward, no_grad
from harness.inputs import BenchInputs, get_inputs
from harness.machine import cpu_times, loadavg, machine_slug, other_cpu_share
from harness.memory import CPU_PROBE, peak_extra_memory, run_memory_pass, warm_glibc_allocator
from harness.report import (
    atomic_write_json,
    clean,
    results,
    results_path,
    stat,
    summary_lines,
    write_chart,
)
from harness.settings import (
    MEMORY_REPEATS,
    QUICK_MEMORY_REPEATS,
    QUICK_ROUNDS,
    RESULTS_DIR,
    SIZES,
    TARGET_MEMORY_FRACTION,
    TARGET_SPEEDUP,
)
from harness.targets import measure_target_speed, target_functions, target_message


def pytest_addoption(parser):
    group = parser.getgroup("vggrpo", "vggrpo benchmarks")
    group.addoption(
        "--vggrpo-check-targets",
        action="store_true",
        default=False,
        help=(
            "fail the run when the fused geometry reward misses its CPU targets (>= "
            f"{TARGET_SPEEDUP:g}x faster than the reference, <= {TARGET_MEMORY_FRACTION:g} of its "
            "extra memory; forward, realistic size), or when a busy machine makes the speed "
            "unmeasurable. Without it the check only reports."
        ),
    )
    group.addoption(
        "--vggrpo-memory-pass",
        default=None,
        metavar="PATH",
        help="internal: run the selected cases for their peak extra memory only (no timing) and "
        "write {nodeid: bytes} to PATH; the timing session starts this itself",
    )
    group.addoption(
        "--vggrpo-memory-repeats",
        type=int,
        default=MEMORY_REPEATS,
        metavar="N",
        help="internal: memory probes per case in the memory pass, the smallest reading kept "
        f"(default {MEMORY_REPEATS}; a quick run's pass uses {QUICK_MEMORY_REPEATS})",
    )


@dataclasses.dataclass
class Case:
    nodeid: str
    pair: str
    impl: str
    size: str
    fixture: Any
    label: Optional[str] = None
    stats: Any = None
    memory: Optional[int] = None
    other_cpu_share: Optional[float] = None


@dataclasses.dataclass
class SessionState:
    started: float
    memory_pass: Optional[str]
    memory_repeats: int = MEMORY_REPEATS  # probes per case, in a memory pass
    loadavg_start: Optional[list] = None
    cpu_start: Optional[tuple] = None
    allocator: str = ""
    other_cpu_share: Optional[float] = None
    cases: list = dataclasses.field(default_factory=list)
    memory: dict = dataclasses.field(default_factory=dict)  # memory pass: nodeid -> reading
    memory_error: Optional[str] = None
    targets: Optional[dict] = None
    results_path: Optional[Path] = None
    chart_path: Optional[Path] = None
    summary: list = dataclasses.field(default_factory=list)


def pytest_configure(config):
    memory_pass = config.getoption("--vggrpo-memory-pass")
    repeats = config.getoption("--vggrpo-memory-repeats")
    if repeats < 1:
        raise pytest.UsageError(f"--vggrpo-memory-repeats: expected an int >= 1, got {repeats}")
    state = SessionState(started=time.time(), memory_pass=memory_pass, memory_repeats=repeats)
    if memory_pass:
        CPU_PROBE.init()  # probe mode from the very start: nothing pollutes the heap first
        state.allocator = "probe mode" if CPU_PROBE.available else CPU_PROBE.reason
    else:
        state.loadavg_start = loadavg()
        state.cpu_start = cpu_times()
        state.allocator = warm_glibc_allocator()
    config._vggrpo_bench = state


def _benchmarks_disabled(config) -> bool:
    bs = getattr(config, "_benchmarksession", None)
    return bs is None or bool(bs.disabled) or bool(bs.skip)


@pytest.fixture(scope="session", params=list(SIZES))
def inputs(request) -> BenchInputs:
    """The benchmark inputs, parametrized over :data:`SIZES`."""
    return get_inputs(request.param)


@pytest.fixture
def bench_case(benchmark, request):
    """``bench_case(fn, *args, pair=..., impl="fused"|"reference", size=..., grad_argnums=None,
    shape=None, label=None)``.

    ``impl`` is the role in the pair: ``"fused"`` is ours, ``"reference"`` the baseline the ratio
    divides by it (for latent vs RGB: the latent reward and the RGB reward); ``label`` names the
    implementation in the results (default: ``impl``); ``shape`` ``(B,T,H,W)`` describes inputs
    that are not one of :data:`SIZES`.

    Times ``fn(*args)`` under ``torch.no_grad`` (``grad_argnums=None``: a rollout-style forward)
    or ``fn(*args).sum()`` plus ``torch.autograd.grad`` w.r.t. the arguments at ``grad_argnums``
    (forward + backward, nothing accumulates in ``.grad``), with pytest-benchmark, in the group
    ``"<pair> [<size>]"`` so the fused and reference runs sit side by side in the table.
    Registers the case for the memory pass and the results file. Returns what the wrapped call
    returns (the output, or the tuple of gradients).
    """
    state: SessionState = request.config._vggrpo_bench

    def run(fn: Callable, *args, pair: str, impl: str, size: str,
            grad_argnums: Optional[tuple[int, ...]] = None,
            shape: Optional[tuple[int, int, int, int]] = None, label: Optional[str] = None):
        wrapped = no_grad(fn) if grad_argnums is None else forward_backward(fn, grad_argnums)
        nodeid = request.node.nodeid
        if state.memory_pass:
            result = wrapped(*args)  # warm-up
            state.memory[nodeid] = peak_extra_memory(wrapped, *args, repeats=state.memory_repeats)
            return result
        benchmark.group = f"{pair} [{size}]"
        B, T, H, W = shape if shape is not None else SIZES[size]
        benchmark.extra_info.update(
            pair=pair, impl=impl, size=size, shape=dict(B=B, T=T, H=H, W=W),
            backward=grad_argnums is not None, label=label or impl,
        )
        case = Case(nodeid, pair, impl, size, benchmark, label=label or impl)
        state.cases.append(case)
        # No extra warm-up call: pytest-benchmark's calibration always calls the function at
        # least once, untimed, before the timed rounds (also with --benchmark-max-time=0).
        start = cpu_times()
        result = benchmark(wrapped, *args)
        case.other_cpu_share = other_cpu_share(start, cpu_times())
        case.stats = benchmark.stats
        return result

    return run


@pytest.fixture
def target_check(request):
    """``target_check()`` -> ``(result, enforced)``: the issue's target check, fused geometry
    reward vs the reference, forward, realistic size.

    Speed: :func:`measure_target_speed` in this process. Memory: :func:`peak_extra_memory` of
    both, in a fresh child process (:func:`run_memory_pass` on this very test). ``result["met"]``
    is True only when both targets are shown to be met; ``enforced`` is True with
    ``--vggrpo-check-targets``. Skips when benchmarks are disabled or skipped, unless enforced.
    """
    config = request.config
    state: SessionState = config._vggrpo_bench
    nodeid = request.node.nodeid
    enforced = bool(config.getoption("--vggrpo-check-targets"))
    if not state.memory_pass and _benchmarks_disabled(config) and not enforced:
        pytest.skip("benchmarks are disabled/skipped; --vggrpo-check-targets runs the check anyway")

    def run():
        inputs = get_inputs("realistic")
        if state.memory_pass:
            fused, ref = target_functions()
            args = inputs.geometry_args()
            fused(*args), ref(*args)
            state.memory[nodeid] = {
                "fused": peak_extra_memory(fused, *args, repeats=state.memory_repeats),
                "reference": peak_extra_memory(ref, *args, repeats=state.memory_repeats),
            }
            return None, False
        result = dict(
            what="geometry_reprojection_reward forward (no_grad), fused vs reference, CPU",
            size=inputs.size, shape=dict(zip("BTHW", inputs.shape)),
            **measure_target_speed(inputs),
        )
        memory, error = run_memory_pass(config, [nodeid])
        reading = memory.get(nodeid) or {}
        mem_f, mem_r = reading.get("fused"), reading.get("reference")
        fraction = None if mem_f is None or not mem_r else mem_f / mem_r
        result.update(
            fused_peak_extra_bytes=mem_f,
            reference_peak_extra_bytes=mem_r,
            memory_fraction=fraction,
            memory_met=None if fraction is None else fraction <= TARGET_MEMORY_FRACTION,
            memory_error=error,
            speedup_target=TARGET_SPEEDUP,
            memory_fraction_target=TARGET_MEMORY_FRACTION,
            enforced=enforced,
        )
        # Not shown to be met (inconclusive or unmeasured) counts as not met.
        result["met"] = bool(result["speed_met"] and result["memory_met"])
        result["message"] = target_message(result)
        state.targets = result
        return result, enforced

    return run


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session, exitstatus):
    # tryfirst: the memory readings must be in extra_info before pytest-benchmark's own
    # sessionfinish saves --benchmark-json / --benchmark-autosave files.
    config = session.config
    state: Optional[SessionState] = getattr(config, "_vggrpo_bench", None)
    if state is None:
        return
    if state.memory_pass:
        atomic_write_json(Path(state.memory_pass), clean(state.memory))
        return
    if _benchmarks_disabled(config) or exitstatus == pytest.ExitCode.INTERRUPTED:
        return
    done = [c for c in state.cases if c.stats]
    if not done:
        return
    state.other_cpu_share = other_cpu_share(state.cpu_start, cpu_times())
    quick = min(int(stat(c.stats, "rounds") or 0) for c in done) < QUICK_ROUNDS
    memory_repeats = QUICK_MEMORY_REPEATS if quick else MEMORY_REPEATS
    # The memory pass, in a fresh child process (see harness/__init__.py).
    memory, state.memory_error = run_memory_pass(config, [c.nodeid for c in done],
                                                 repeats=memory_repeats)
    for case in done:
        case.memory = memory.get(case.nodeid)
        case.fixture.extra_info["peak_extra_bytes"] = case.memory
    payload = results(done, quick=quick, started=state.started, memory_repeats=memory_repeats,
                      allocator=state.allocator, memory_error=state.memory_error,
                      targets=state.targets, loadavg_start=state.loadavg_start,
                      cpu_share=state.other_cpu_share,
                      options=config._benchmarksession.options)
    path = results_path(RESULTS_DIR / f"cpu-{machine_slug()}{'-quick' if quick else ''}.json",
                        payload)
    atomic_write_json(path, clean(payload))
    state.chart_path = write_chart(payload["pairs"], path.with_suffix(".png"), payload["machine"])
    state.results_path = path
    state.summary = payload["pairs"]


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    state: Optional[SessionState] = getattr(config, "_vggrpo_bench", None)
    if state is None or state.memory_pass or (not state.summary and state.targets is None):
        return
    tr = terminalreporter
    tr.section("vggrpo: fused vs reference (ratios = reference / fused, same run)")
    for line in summary_lines(state.summary, other_cpu_share=state.other_cpu_share):
        tr.write_line(line)
    if state.memory_error:
        tr.write_line(f"memory pass: {state.memory_error}")
    if state.targets is not None:
        tr.write_line(state.targets["message"])
    if state.results_path is not None:
        tr.write_line(f"results: {state.results_path}")
    if state.chart_path is not None:
        tr.write_line(f"chart: {state.chart_path}")
