"""motion_smoothness and camera_motion_reward."""

import math

import pytest
import torch

import vggrpo
from vggrpo import ops, reference
from vggrpo.data import make_scene

from helpers import random_rotations, rodrigues, uniform_trajectory


def _random_trajectories(B, T, gen, dtype=torch.float64):
    R = random_rotations(B * T, gen, max_angle=math.pi).reshape(B, T, 3, 3)
    t = torch.randn(B, T, 3, 1, generator=gen, dtype=torch.float64)
    return torch.cat([R, t], -1).to(dtype)


def _from_centres_and_rotations(C, R_wc):
    """[T,3] centres and [T,3,3] world-from-camera rotations -> [1,T,3,4] extrinsics."""
    R_cw = R_wc.transpose(-1, -2)
    t = -(R_cw @ C[..., None])
    return torch.cat([R_cw, t], -1)[None]


def test_hand_computed_translation_and_rotation():
    # centres 0, 1, 3 along x: v = (1, 2), a = 1 -> e_trans = 1 / (2 + 1)
    C = torch.tensor([[0.0, 0, 0], [1.0, 0, 0], [3.0, 0, 0]], dtype=torch.float64)
    # yaw 0, 0.1, 0.3 about y: steps 0.1, 0.2 -> e_rot = 0.1 / 0.3
    R_wc = rodrigues(torch.tensor([[0, 0.0, 0], [0, 0.1, 0], [0, 0.3, 0]], dtype=torch.float64))
    E = _from_centres_and_rotations(C, R_wc)
    eps = 1e-12
    r, terms = vggrpo.camera_motion_reward(E, eps=eps, return_terms=True)
    e_trans, e_rot = 1.0 / (3.0 + eps), 0.1 / (0.3 + eps)
    assert terms.e_trans.item() == pytest.approx(e_trans, abs=1e-14)
    assert terms.e_rot.item() == pytest.approx(e_rot, abs=1e-14)
    assert r.item() == pytest.approx(0.5 * (1 / (1 + e_trans) + 1 / (1 + e_rot)), abs=1e-14)


def test_uniform_motion_scores_one():
    E = uniform_trajectory(12, (0.1, 0.02, -0.05), (0.01, -0.004, 0.02))[None]
    r, terms = vggrpo.camera_motion_reward(E, return_terms=True)
    assert terms.e_trans.item() < 1e-9 and terms.e_rot.item() < 1e-9
    assert r.item() == pytest.approx(1.0, abs=1e-9)


def test_still_camera_is_finite_with_zero_gradient():
    E = uniform_trajectory(5, (0.0, 0.0, 0.0), (0.0, 0.0, 0.0))[None].requires_grad_()
    r = vggrpo.camera_motion_reward(E)
    assert r.item() == pytest.approx(1.0, abs=1e-12)
    (g,) = torch.autograd.grad(r.sum(), E)
    assert torch.isfinite(g).all() and g.abs().max().item() == 0.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("rows", [3, 4])
def test_matches_reference(dtype, rows):
    gen = torch.Generator().manual_seed(1)
    E = _random_trajectories(3, 7, gen, dtype)
    if rows == 4:
        bottom = torch.tensor([0, 0, 0, 1], dtype=dtype).expand(3, 7, 1, 4)
        E = torch.cat([E, bottom], -2)
    tol = dict(atol=1e-12, rtol=1e-12) if dtype == torch.float64 else dict(atol=1e-5, rtol=1e-5)
    et, er = ops.motion_smoothness(E)
    rt, rr = reference.motion_smoothness(E)
    torch.testing.assert_close(et, rt, **tol)
    torch.testing.assert_close(er, rr, **tol)
    Eg = E.clone().requires_grad_()
    w = torch.tensor([0.3, -1.0, 2.0], dtype=dtype)
    (ours,) = torch.autograd.grad((vggrpo.camera_motion_reward(Eg) * w).sum(), Eg)
    (theirs,) = torch.autograd.grad((reference.camera_motion_reward(Eg) * w).sum(), Eg)
    torch.testing.assert_close(ours, theirs, **tol)
    if rows == 4:
        assert ours[..., 3, :].abs().max().item() == 0.0


def test_gradcheck_float64():
    gen = torch.Generator().manual_seed(2)
    E = _random_trajectories(2, 5, gen).requires_grad_()
    assert torch.autograd.gradcheck(lambda e: ops.motion_smoothness(e, 1e-8), (E,),
                                    eps=1e-7, atol=1e-7, rtol=1e-5)
    assert torch.autograd.gradcheck(vggrpo.camera_motion_reward, (E,),
                                    eps=1e-7, atol=1e-7, rtol=1e-5)
    # small frame-to-frame rotations (the realistic regime) exercise the series branch
    E = uniform_trajectory(6, (0.1, 0.0, 0.02), (0.003, 0.001, -0.002))[None]
    E = (E + 1e-4 * torch.randn(E.shape, generator=gen, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(vggrpo.camera_motion_reward, (E,),
                                    eps=1e-8, atol=1e-6, rtol=1e-4)


def test_smooth_trajectory_beats_jittered():
    smooth = make_scene(batch=4, frames=8, height=8, width=12, trajectory="dolly", seed=3)
    r_smooth = vggrpo.camera_motion_reward(smooth.extrinsics)
    previous = r_smooth
    for jitter in (0.1, 0.5, 2.0):
        shaky = make_scene(batch=4, frames=8, height=8, width=12, trajectory="dolly",
                           jitter=jitter, seed=3)
        r = vggrpo.camera_motion_reward(shaky.extrinsics)
        assert (r < previous).all(), (jitter, r, previous)
        previous = r
    assert (r_smooth > 0.999).all()
