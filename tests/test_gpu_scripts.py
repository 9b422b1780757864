"""The GPU check's own scripts, run where CI can run them: scripts/cuda_sanitize.py (the workload
compute-sanitizer checks on a GPU) must run every op forward and backward, and refuse cleanly
where there is no CUDA build or device; scripts/gpu_check.sh must be valid bash that keeps its
files back within the device tool's 8-file limit, ends each stage by the call's deadline and
reports every stage's outcome; bench/profiling.py's kernel breakdown (printed by the GPU bench)
must find the fused op in a profile, here of CPU ops."""

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import vggrpo

ROOT = Path(__file__).resolve().parents[1]


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _load_sanitize():
    return _load("cuda_sanitize", ROOT / "scripts" / "cuda_sanitize.py")


def test_sanitize_workload_covers_every_op_both_dtypes_and_modes():
    before = torch.are_deterministic_algorithms_enabled()
    cases = _load_sanitize().run_all("cpu")
    assert torch.are_deterministic_algorithms_enabled() == before
    for op in ["so3_log", "motion_smoothness", "splat_depth", "static_points/view_depth_error",
               "reprojection_errors"]:
        for dtype in ["torch.float32", "torch.float64"]:
            assert any(c.startswith(op) and dtype in c for c in cases), (op, dtype, cases)
    for op in ["splat_depth", "reprojection_errors"]:
        for mode in ["deterministic=False", "deterministic=True"]:
            assert any(c.startswith(op) and mode in c for c in cases), (op, mode, cases)


@pytest.mark.skipif(torch.cuda.is_available() and vggrpo.cuda_built,
                    reason="a CUDA machine runs it for real")
def test_sanitize_script_refuses_without_cuda():
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "cuda_sanitize.py")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "needs a CUDA device" in done.stderr


def test_gpu_check_is_valid_bash_within_the_file_limit():
    script = ROOT / "scripts" / "gpu_check.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    text = script.read_text()
    # Files the script leaves in $OUT: fixed names, one log per stage, the results JSON. The
    # device tool brings back at most 8.
    fixed = set(re.findall(r'"\$OUT/([A-Za-z0-9_.-]+)"', text))
    stage_logs = {f"{name}.log" for name in re.findall(r'run_stage ([a-z_]+) "\$\{', text)}
    assert {"setup.log", "build.log"} <= fixed and len(stage_logs) == 5, (fixed, stage_logs)
    assert 'cp bench/results/gpu-*.json "$OUT/"' in text
    assert len(fixed | stage_logs) + 1 <= 8, sorted(fixed | stage_logs)


def test_gpu_check_rejects_an_unknown_stage_before_doing_anything(tmp_path):
    done = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "cuda", "benchh"],
                          capture_output=True, text=True, timeout=60,
                          env={"OUT": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 2 and "unknown stage 'benchh'" in done.stdout
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA machine runs the check for real")
def test_gpu_check_stops_before_building_where_torch_sees_no_gpu(tmp_path):
    # A copy of the script alone: it works in its parent folder, where nothing can be built.
    (tmp_path / "scripts").mkdir()
    script = tmp_path / "scripts" / "gpu_check.sh"
    script.write_text((ROOT / "scripts" / "gpu_check.sh").read_text())
    out = tmp_path / "out"
    done = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=120,
                          env={"OUT": str(out), "PATH": "/usr/bin:/bin", "PYTHON": sys.executable})
    assert done.returncode == 1, done.stdout + done.stderr
    assert "torch sees no CUDA device" in done.stdout
    assert sorted(p.name for p in out.iterdir()) == ["setup.log"]


def _gpu_check_functions(snippet, tmp_path):
    """Runs `snippet` in bash after sourcing gpu_check.sh (which then defines and runs nothing)."""
    script = ROOT / "scripts" / "gpu_check.sh"
    done = subprocess.run(["bash", "-c", f'source "{script}"; OUT="{tmp_path}"; {snippet}'],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_gpu_check_sourced_runs_nothing(tmp_path):
    assert _gpu_check_functions("echo sourced", tmp_path) == "sourced\n"
    assert list(tmp_path.iterdir()) == []


def test_gpu_check_cuts_each_stage_to_the_call_deadline(tmp_path):
    # 500 s of a 540 s deadline spent: a stage asking for 150 s gets what is left (about 40 s);
    # one asking for less keeps its own limit.
    out = _gpu_check_functions(
        "START=$(( $(date +%s) - 500 )); DEADLINE_S=540; stage_limit 150; stage_limit 10", tmp_path)
    cut, own = map(int, out.split())
    assert 38 <= cut <= 40 and own == 10


def test_gpu_check_reports_every_stage_outcome_and_fails_on_any(tmp_path):
    out = _gpu_check_functions(
        "START=$(date +%s); DEADLINE_S=540; MIN_STAGE_S=0; "
        "run_stage good 30 5 true; run_stage bad 30 5 bash -c 'echo boom; exit 3'; "
        "run_stage slow 1 5 sleep 20; "
        "START=$(( $(date +%s) - 530 )); MIN_STAGE_S=20; run_stage late 30 5 true; "
        "print_summary; echo status=$status", tmp_path)
    summary = out[out.index("== summary"):].splitlines()
    assert summary[1].strip().startswith("good: ok")
    assert summary[2].strip().startswith("bad: failed, exit 3")
    assert summary[3].strip() == "slow: stopped at its limit of 1s"
    assert summary[4].strip() == "late: not run (deadline)"
    assert summary[5] == "status=1"
    assert (tmp_path / "bad.log").read_text() == "boom\n"
    assert not (tmp_path / "late.log").exists()


def test_gpu_check_with_only_passing_stages_keeps_status_zero(tmp_path):
    out = _gpu_check_functions(
        "START=$(date +%s); run_stage a 30 5 true; run_stage b 30 5 true; echo status=$status",
        tmp_path)
    assert out.splitlines()[-1] == "status=0"


def test_kernel_breakdown_finds_the_fused_op():
    from helpers import random_reprojection_inputs

    breakdown = _load("vggrpo_bench_profiling", ROOT / "bench" / "profiling.py").kernel_breakdown
    args = random_reprojection_inputs(2, 4, 12, 16, torch.Generator().manual_seed(0), torch.float32)

    def reward():
        with torch.no_grad():
            return vggrpo.geometry_reprojection_reward(*args)

    rows = breakdown(reward, "cpu", rounds=2)
    by_name = {r["name"]: r for r in rows}
    assert by_name["vggrpo::reprojection_errors"]["calls"] == 1
    assert by_name["vggrpo::worst_k_mean"]["calls"] == 1
    assert all(r["total_s"] > 0 for r in rows)
    assert [r["total_s"] for r in rows] == sorted((r["total_s"] for r in rows), reverse=True)
    assert abs(sum(r["share"] for r in rows) - 1) < 1e-9
