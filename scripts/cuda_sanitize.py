"""Every vggrpo CUDA kernel once, forward and backward, on small inputs: the workload that
scripts/gpu_check.sh runs under NVIDIA compute-sanitizer (memcheck, racecheck, synccheck,
initcheck). The sanitizer, not this script, is the check: it reports out-of-bounds and misaligned
accesses, shared-memory races (block_sum), divergent barriers and reads of uninitialised device
memory, which neither the CPU emulation on CI (no concurrency) nor the parity tests can see.

Sizes are small (the sanitizers slow kernels down 10-100x) but not tiny: H*W and B*N exceed a
block (256 threads), so every grid-stride and block-stride loop takes more than one turn and the
block reductions see partly filled last strides. Both backward modes run (float atomics, and the
deterministic gather path), both dtypes, and the fused forward with and without winners (the
64-bit and the 32-bit depth-only z-buffer).

    compute-sanitizer --tool racecheck python scripts/cuda_sanitize.py

Exits 0 after printing one line per case; 2 where there is no CUDA build or device.
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import vggrpo  # noqa: E402
from vggrpo import ops  # noqa: E402

from helpers import random_cameras, random_cloud, random_reprojection_inputs, random_rotations  # noqa: E402


def _grad(out, inputs):
    return torch.autograd.grad(out.sum(), inputs, allow_unused=True)


def run_all(device: str = "cuda") -> list[str]:
    """Runs each op forward and backward on `device`; returns the names of the cases run."""
    done = []
    gen = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.float64):
        R = random_rotations(300, gen).to(device, dtype).requires_grad_()
        _grad(ops.so3_log(R), [R])
        done.append(f"so3_log {dtype}")

        E, K = random_cameras(2, 40, 17, 23, gen)
        E = E.to(device, dtype).requires_grad_()
        trans, rot = ops.motion_smoothness(E)
        _grad(trans + rot, [E])
        done.append(f"motion_smoothness {dtype}")

        for deterministic in (False, True):
            torch.use_deterministic_algorithms(deterministic)
            B, V, N, H, W = 2, 3, 1000, 17, 23
            Ec, Kc = random_cameras(B, V, H, W, gen)
            pts = random_cloud((B, N), gen).to(device, dtype).requires_grad_()
            Ec = Ec.to(device, dtype).requires_grad_()
            Kc = Kc.to(device, dtype)
            valid = torch.rand(B, N, generator=gen).to(device) < 0.9
            depth, _ = ops.splat_depth(pts, valid, Ec, Kc, H, W)
            _grad(depth, [pts, Ec])
            done.append(f"splat_depth {dtype} deterministic={deterministic}")

            pm, depths, Er, Kr, flow = (t.to(device) for t in random_reprojection_inputs(
                2, 4, H, W, gen, dtype))
            pm.requires_grad_()
            depths.requires_grad_()
            Er.requires_grad_()
            points, keep = ops.static_points(pm, flow, 0.1)
            rendered, _ = ops.splat_depth(points, keep, Er, Kr, H, W)
            err, count = ops.view_depth_error(rendered, depths, keep.reshape(depths.shape))
            reward = ops.worst_k_mean(err, count, 3)
            _grad(reward, [pm, depths, Er])
            done.append(f"static_points/view_depth_error/worst_k_mean {dtype} "
                        f"deterministic={deterministic}")

            r = vggrpo.geometry_reprojection_reward(pm, depths, Er, Kr, flow, topk=3)
            _grad(r, [pm, depths, Er])
            with torch.no_grad():  # no winners: the depth-only z-buffer (float32)
                vggrpo.geometry_reprojection_reward(pm, depths, Er, Kr, flow, topk=3)
            done.append(f"reprojection_errors {dtype} deterministic={deterministic}")
    torch.use_deterministic_algorithms(False)
    if device == "cuda":
        torch.cuda.synchronize()
    return done


def main() -> int:
    if not (torch.cuda.is_available() and vggrpo.cuda_built):
        print("cuda_sanitize: needs a CUDA device and vggrpo built with CUDA", file=sys.stderr)
        return 2
    for name in run_all():
        print("ran", name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
