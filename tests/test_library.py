"""Op registration: torch.library.opcheck of every op (schema, fake kernel, autograd
registration, AOT dispatch with dynamic shapes) and torch.compile without graph breaks."""

import pytest
import torch

import vggrpo

from helpers import random_cameras, random_cloud, random_reprojection_inputs, random_rotations

_ops = torch.ops.vggrpo


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _samples():
    """(op, args) pairs covering every op, forward and backward, float32 and float64."""
    out = []
    for dtype in (torch.float32, torch.float64):
        g = _gen(0)
        R = random_rotations(6, g).reshape(2, 3, 3, 3).to(dtype)
        out.append((_ops.so3_log, (R.clone().requires_grad_(),)))
        out.append((_ops.so3_log_backward, (torch.randn(2, 3, 3, dtype=dtype), R)))

        E, K = random_cameras(2, 5, 6, 7, g, dtype)
        out.append((_ops.motion_smoothness, (E.clone().requires_grad_(), 1e-8)))
        out.append((_ops.motion_smoothness_backward,
                    (torch.ones(2, dtype=dtype), torch.ones(2, dtype=dtype), E, 1e-8)))

        pm, depths, E, K, flow = random_reprojection_inputs(2, 3, 6, 7, g, dtype)
        out.append((_ops.static_points, (pm.clone().requires_grad_(), flow, 0.1)))
        out.append((_ops.static_points, (pm, None, 0.1)))

        pts = random_cloud((2, 80), g, dtype)
        valid = torch.rand(2, 80, generator=g) > 0.2
        out.append((_ops.splat_depth,
                    (pts.clone().requires_grad_(), valid, E.clone().requires_grad_(), K, 6, 7)))
        depth, winner = _ops.splat_depth(pts, valid, E, K, 6, 7)
        out.append((_ops.splat_depth_backward,
                    (torch.randn(2, 3, 6, 7, dtype=dtype), winner, pts, E, K)))

        pixel_valid = (
            valid.reshape(2, 80)[:, :1].expand(2, 3 * 6 * 7).reshape(2, 3, 6, 7).contiguous()
        )
        out.append((_ops.view_depth_error,
                    (depth.clone().requires_grad_(), depths.clone().requires_grad_(), None)))
        out.append((_ops.view_depth_error, (depth, depths, pixel_valid)))
        err, count = _ops.view_depth_error(depth, depths, None)
        out.append((_ops.view_depth_error_backward,
                    (torch.randn(2, 3, dtype=dtype), depth, depths, None, count)))

        out.append((_ops.worst_k_mean, (err.clone().requires_grad_(), count, 2)))
        out.append((_ops.worst_k_mean_backward, (torch.randn(2, dtype=dtype), err, count, 2)))

        args = (pm.clone().requires_grad_(), depths.clone().requires_grad_(),
                E.clone().requires_grad_(), K, flow, 0.1)
        out.append((_ops.reprojection_errors, args))
        out.append((_ops.reprojection_errors, (pm, depths, E, K, None, 0.1, False)))
        err, count, winner, mask = _ops.reprojection_errors(pm, depths, E, K, flow, 0.1)
        out.append((_ops.reprojection_errors_backward,
                    (torch.randn(2, 3, dtype=dtype), count, winner, mask, pm, depths, E, K)))
    return out


SAMPLES = _samples()


@pytest.mark.parametrize("index", range(len(SAMPLES)))
def test_opcheck(index):
    op, args = SAMPLES[index]
    torch.library.opcheck(op, args)


def test_every_registered_op_is_opchecked():
    registered = {name for name in dir(_ops)
                  if not name.startswith("_")
                  and isinstance(getattr(_ops, name), torch._ops.OpOverloadPacket)}
    checked = {op._qualified_op_name.split("::")[1] for op, _ in SAMPLES}
    assert registered == checked


def test_rewards_compile_without_graph_breaks():
    g = _gen(1)
    pm, depths, E, K, flow = random_reprojection_inputs(2, 4, 6, 8, g, torch.float32)

    def both(pm, depths, E, K, flow):
        return (vggrpo.geometry_reprojection_reward(pm, depths, E, K, flow),
                vggrpo.camera_motion_reward(E))

    torch._dynamo.reset()
    compiled = torch.compile(both, fullgraph=True, backend="aot_eager")
    args = [pm.requires_grad_(), depths.requires_grad_(), E.requires_grad_(), K, flow]
    geo, motion = compiled(*args)
    eager_geo, eager_motion = both(*args)
    assert torch.equal(geo, eager_geo) and torch.equal(motion, eager_motion)
    grads = torch.autograd.grad((geo + motion).sum(), args[:3])
    eager = torch.autograd.grad((eager_geo + eager_motion).sum(), args[:3])
    for a, b in zip(grads, eager):
        assert torch.equal(a, b)


def test_extension_reports_its_build():
    assert isinstance(vggrpo.cuda_built, bool) and isinstance(vggrpo.openmp, bool)
    assert vggrpo._ext._C.torch_version == torch.__version__


def _registered_from(op: str, key: str) -> str:
    """The source file whose TORCH_LIBRARY_IMPL registered op's kernel for a dispatch key."""
    for line in torch._C._dispatch_dump(f"vggrpo::{op}").splitlines():
        if line.startswith(f"{key}: registered at "):
            return line.split(" registered at ")[1].split(":")[0].rsplit("/", 1)[-1]
    return "nothing"


def test_every_op_has_a_cpu_kernel_and_the_cuda_key_matches_the_build():
    # A CUDA build registers the CUDA kernels (register_cuda.cpp); a CPU build registers, for
    # CUDA tensors, the "built without CUDA" error (no_cuda.cpp). make cuda-build runs this on the
    # real CUDA build, where no GPU is needed to see which one loaded.
    ops = {op._qualified_op_name.split("::")[1] for op, _ in SAMPLES}
    expected = "register_cuda.cpp" if vggrpo.cuda_built else "no_cuda.cpp"
    for op in sorted(ops):
        assert _registered_from(op, "CPU") == "register_cpu.cpp", op
        assert _registered_from(op, "CUDA") == expected, (
            op, torch._C._dispatch_dump(f"vggrpo::{op}"))
