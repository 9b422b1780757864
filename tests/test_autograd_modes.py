"""Every op under forward-mode AD and double backward: correct (against the plain-PyTorch
reference) or a clear error, never silent zeros (issue #34); finite input, finite output."""

from __future__ import annotations

import pytest
import torch
import torch.autograd.forward_ad as fwAD

from vggrpo import camera_motion_reward, geometry_reprojection_reward, group_advantages, ops
from vggrpo import reference as ref

from helpers import random_cameras, random_reprojection_inputs, random_rotations


def _inputs():
    """op name -> (fused op, reference op, differentiable args, other args), float64."""
    g = torch.Generator().manual_seed(0)
    dt = torch.float64
    R = random_rotations(4, g, max_angle=2.5).reshape(2, 2, 3, 3).to(dt)
    E, K = random_cameras(2, 4, 6, 7, g, dt)
    pm, depths, E3, K3, flow = random_reprojection_inputs(2, 3, 6, 7, g, dt)
    pts = pm.reshape(2, -1, 3)
    err = torch.rand(2, 5, generator=g, dtype=dt)
    count = torch.randint(1, 9, (2, 5), generator=g)
    rendered = depths + 0.1 * torch.rand(depths.shape, generator=g, dtype=dt)
    return {
        "so3_log": (ops.so3_log, ref.so3_log, (R,), ()),
        "motion_smoothness": (ops.motion_smoothness, ref.motion_smoothness, (E,), ()),
        "static_points": (ops.static_points, ref.static_points, (pm,), (flow, 0.1)),
        "splat_depth": (lambda p: ops.splat_depth(p, None, E3, K3, 6, 7)[0],
                        lambda p: ref.splat_depth(p, None, E3, K3, 6, 7)[0], (pts,), ()),
        "view_depth_error": (lambda r: ops.view_depth_error(r, depths)[0],
                             lambda r: ref.view_depth_error(r, depths)[0], (rendered,), ()),
        "worst_k_mean": (lambda e: ops.worst_k_mean(e, count, 2),
                         lambda e: ref.worst_k_mean(e, count, 2), (err,), ()),
        "reprojection_errors": (lambda p: ops.reprojection_errors(p, depths, E3, K3, flow)[0],
                                lambda p: ref.reprojection_errors(p, depths, E3, K3, flow)[0],
                                (pm,), ()),
    }


INPUTS = _inputs()


def _first(out):
    return out[0] if isinstance(out, tuple) else out


@pytest.mark.parametrize("name", sorted(INPUTS))
def test_forward_mode_ad_is_an_error_naming_the_op(name):
    fused, _, args, rest = INPUTS[name]
    tangents = tuple(torch.ones_like(a) for a in args)
    message = f"vggrpo.{name}: forward-mode AD .* is not supported"
    with pytest.raises(NotImplementedError, match=message):
        torch.func.jvp(lambda *a: _first(fused(*a, *rest)), args, tangents)
    with pytest.raises(NotImplementedError, match=message):
        torch.func.jacfwd(lambda *a: _first(fused(*a, *rest)))(*args)
    with fwAD.dual_level(), pytest.raises(NotImplementedError, match=message):
        fused(*(fwAD.make_dual(a, t) for a, t in zip(args, tangents)), *rest)


@pytest.mark.parametrize("name", sorted(INPUTS))
def test_the_reference_the_error_points_to_gives_the_fused_ops_jacobian(name):
    """The error's advice holds: the reference's forward-mode Jacobian is the fused op's
    reverse-mode one."""
    fused, reference, args, rest = INPUTS[name]
    # torch.autograd's Jacobian, row by row: functorch's jacrev needs a vmap rule the ops lack.
    rev = torch.autograd.functional.jacobian(lambda a: _first(fused(a, *rest)), args[0])
    fwd = torch.func.jacfwd(lambda a: _first(reference(a, *rest)))(args[0])
    torch.testing.assert_close(rev, fwd, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("name", sorted(set(INPUTS) - {"static_points"}))
def test_double_backward_is_an_error_naming_the_op(name):
    fused, _, args, rest = INPUTS[name]
    x = args[0].clone().requires_grad_()
    (g,) = torch.autograd.grad(_first(fused(x, *rest)).sum(), x, create_graph=True)
    with pytest.raises(NotImplementedError, match=f"vggrpo.{name}: double backward"):
        torch.autograd.grad((g * g).sum(), x)


def test_double_backward_of_static_points_is_correct():
    """Its backward is plain PyTorch (a mask), so it differentiates again, and right."""
    _, _, (pm,), (flow, thr) = INPUTS["static_points"]
    torch.autograd.gradgradcheck(lambda p: ops.static_points(p, flow, thr)[0],
                                 (pm.clone().requires_grad_(),))


def test_the_rewards_under_jacfwd_and_double_backward_are_errors_not_zeros():
    g = torch.Generator().manual_seed(1)
    E, K = random_cameras(1, 4, 6, 7, g, torch.float64)
    with pytest.raises(NotImplementedError, match="vggrpo.motion_smoothness: forward-mode"):
        torch.func.jacfwd(camera_motion_reward)(E)
    x = E.clone().requires_grad_()
    (grad,) = torch.autograd.grad(camera_motion_reward(x).sum(), x, create_graph=True)
    with pytest.raises(NotImplementedError, match="double backward"):
        torch.autograd.grad(grad.sum(), x)
    pm, depths, E3, K3, flow = random_reprojection_inputs(1, 3, 6, 7, g, torch.float64)
    with pytest.raises(NotImplementedError, match="vggrpo.reprojection_errors: forward-mode"):
        torch.func.jacfwd(lambda d: geometry_reprojection_reward(pm, d, E3, K3, flow))(depths)


# -- finite in, finite out -------------------------------------------------------------------------

def test_an_eps_that_underflows_the_compute_dtype_is_named():
    E = torch.eye(4).expand(1, 5, 4, 4).clone()
    with pytest.raises(ValueError, match=r"`eps` = 1e-50 is below the smallest normal "
                                         r"torch.float32"):
        camera_motion_reward(E, eps=1e-50)
    # The smallest allowed is finite, in float32; in float64 a far smaller one is.
    assert torch.isfinite(camera_motion_reward(E, eps=torch.finfo(torch.float32).tiny)).all()
    assert torch.isfinite(camera_motion_reward(E.double(), eps=1e-50)).all()


@pytest.mark.parametrize("values,weights", [
    ([1.5e308, 1e308, 0.0, 1.0], None),
    ([-1.7e308, 1.7e308, 1.7e308, -1.7e308], None),
    ([1.0, 2.0, 3.0, 5.0], {"r": 1e308}),
    ([5e-324, 0.0, 5e-324, 5e-324], None),
])
def test_group_advantages_of_finite_rewards_are_finite_and_right(values, weights):
    r = torch.tensor(values, dtype=torch.float64)
    adv = group_advantages({"r": r}, 4, weights=weights, eps=0.0)
    assert torch.isfinite(adv).all(), adv
    # The same rewards scaled into a comfortable range give the same advantages (eps = 0: the
    # normalisation is scale-free), computed here by hand.
    small = r / r.abs().max()
    want = (small - small.mean()) / small.std(unbiased=False)
    torch.testing.assert_close(adv, want, rtol=1e-12, atol=1e-12)
