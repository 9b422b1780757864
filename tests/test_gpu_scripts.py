"""The GPU check's own scripts, run where CI can run them: scripts/cuda_sanitize.py (the workload
compute-sanitizer checks on a GPU) must run every op forward and backward, and refuse cleanly
where there is no CUDA build or device; scripts/gpu_check.sh must be valid bash that keeps its
files back within the device tool's 8-file limit; bench/profiling.py's kernel breakdown (printed
by the GPU bench) must find the fused op in a profile, here of CPU ops."""

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


@pytest.mark.skipif(torch.cuda.is_available() and vggrpo.cuda_built, reason="a CUDA machine runs it for real")
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
                          capture_output=True, text=True, timeout=60, env={"OUT": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 2 and "unknown stage 'benchh'" in done.stdout
    assert list(tmp_path.iterdir()) == []


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
