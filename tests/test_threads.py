"""Every CPU kernel gives bitwise the same outputs and gradients on one thread and on several.

The kernels split work by video, view or block with one owner per output element and a fixed loop
order (csrc/kernels/reproject_cpu.cpp), so the thread count must never show in a result. Their
OpenMP loops stay serial below 32768 units of work (csrc/kernels/cpu_parallel.h), which most unit
tests' inputs are: the sizes here are chosen to pass that bound for every loop, noted per op. The
thread counts are set here, so the check holds under any `pytest -n` split (tests/conftest.py).
"""

import pytest
import torch

import vggrpo
from vggrpo import ops

from helpers import random_reprojection_inputs, random_rotations

# Uneven static splits for most loops below (800, 16, 10240, 8, 512 or 2 items); only the
# static-mask pass, 3 blocks of 4096 points, splits evenly.
SEVERAL = 3


def _at_threads(n, fn):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        return fn()
    finally:
        torch.set_num_threads(before)


def _forward_and_grads(fn, inputs):
    """fn's outputs (detached) and the gradients of a fixed weighting of its float outputs with
    respect to every input that requires grad."""
    outs = fn(*inputs)
    outs = outs if isinstance(outs, tuple) else (outs,)
    wrt = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    loss = sum((o * torch.linspace(0.5, 1.5, o.numel(), dtype=o.dtype).reshape(o.shape)).sum()
               for o in outs if o.is_floating_point() and o.requires_grad)
    grads = torch.autograd.grad(loss, wrt) if wrt else ()
    return tuple(o.detach() for o in outs) + tuple(grads)


def _geometry_inputs():
    # B=2 videos, T=4 frames of 32x40: N = 5120 points per video, B*N = 10240 > 2 static-mask
    # blocks of 4096; B*V*4*P = 8*4*1280 = 40960 for the per-view loops; 12*N per video for the
    # fused backward. Depths rounded to eighths: exact z ties, so the winner rule is exercised.
    gen = torch.Generator().manual_seed(31)
    pm, depths, E, K, flow = random_reprojection_inputs(2, 4, 32, 40, gen, torch.float32)
    pm[..., 2] = torch.round(pm[..., 2] * 8) / 8
    return pm, depths, E, K, flow


def _case(name):
    gen = torch.Generator().manual_seed(7)
    if name == "so3_log":  # 800 rotations: 800*64 (forward), 800*128 (backward) units
        R = random_rotations(800, gen).reshape(4, 200, 3, 3).float().requires_grad_()
        return ops.so3_log, (R,)
    if name == "motion_smoothness":  # B*200*T = 16*200*12 = 38400 units
        R = random_rotations(16 * 12, gen).reshape(16, 12, 3, 3)
        t = torch.randn(16, 12, 3, 1, generator=gen, dtype=torch.float64).cumsum(1)
        E = torch.cat([R, t], -1).float().requires_grad_()
        return ops.motion_smoothness, (E,)
    pm, depths, E, K, flow = _geometry_inputs()
    if name == "static_points":
        return ops.static_points, (pm.requires_grad_(), flow, 0.1)
    if name == "splat_depth":
        points, valid = ops.static_points(pm, flow, 0.1)
        return ops.splat_depth, (points.requires_grad_(), valid, E.requires_grad_(), K, 32, 40)
    if name == "view_depth_error":
        rendered = depths.flip(-1).contiguous()
        rendered[..., ::7] = 0  # holes: pixels that do not count
        valid = torch.rand(depths.shape, generator=gen) > 0.2
        return ops.view_depth_error, (rendered.requires_grad_(), depths.requires_grad_(), valid)
    if name == "worst_k_mean":  # B*V*V = 512*8*8 = 32768 units
        err = torch.rand(512, 8, generator=gen).requires_grad_()
        count = torch.randint(0, 3, (512, 8), generator=gen)
        return ops.worst_k_mean, (err, count, 3)
    if name == "reprojection_errors":
        return ops.reprojection_errors, (pm.requires_grad_(), depths.requires_grad_(),
                                         E.requires_grad_(), K, flow, 0.1)
    if name == "geometry_reprojection_reward":
        return vggrpo.geometry_reprojection_reward, (pm.requires_grad_(), depths.requires_grad_(),
                                                      E.requires_grad_(), K, flow)
    raise AssertionError(name)


CASES = ["so3_log", "motion_smoothness", "static_points", "splat_depth", "view_depth_error",
         "worst_k_mean", "reprojection_errors", "geometry_reprojection_reward"]


@pytest.mark.parametrize("name", CASES)
def test_outputs_and_gradients_do_not_depend_on_the_thread_count(name):
    fn, inputs = _case(name)
    several = _at_threads(SEVERAL, lambda: _forward_and_grads(fn, inputs))
    again = _at_threads(SEVERAL, lambda: _forward_and_grads(fn, inputs))
    one = _at_threads(1, lambda: _forward_and_grads(fn, inputs))
    assert len(several) == len(one) >= 2
    for a, b, c in zip(several, again, one):
        assert torch.equal(a, b), name  # run to run
        assert torch.equal(a, c), name  # thread count
