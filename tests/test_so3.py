"""so3_log: exactness at the edge angles, agreement with the reference, gradients."""

import math

import pytest
import torch

from vggrpo import ops, reference

from helpers import random_axes, random_rotations, rodrigues

AXES = {
    "x": (1.0, 0.0, 0.0),
    "y": (0.0, 1.0, 0.0),
    "z": (0.0, 0.0, 1.0),
    "random": (0.48, -0.6, 0.64),
}
EDGE_ANGLES = [0.0, 1e-8, 1e-4, 1e-2, 1.0, math.pi / 2, 2.5, math.pi - 1e-6, math.pi]


def _axis(name):
    a = torch.tensor(AXES[name], dtype=torch.float64)
    return a / a.norm()


@pytest.mark.parametrize("axis", list(AXES))
@pytest.mark.parametrize("angle", EDGE_ANGLES)
def test_log_inverts_exp_float64(axis, angle):
    omega = _axis(axis) * angle
    R = rodrigues(omega)
    out = ops.so3_log(R)
    assert torch.isfinite(out).all()
    if angle == math.pi:
        # Both +-pi*axis are logs of a half turn; check the defining property instead of a sign.
        assert out.norm().item() == pytest.approx(math.pi, abs=1e-12)
        torch.testing.assert_close(rodrigues(out), R, atol=1e-12, rtol=0)
    else:
        torch.testing.assert_close(out, omega, atol=1e-15 + 1e-13 * angle, rtol=0)


@pytest.mark.parametrize("axis", list(AXES))
@pytest.mark.parametrize("angle", EDGE_ANGLES)
def test_log_float32_is_as_exact_as_its_input(axis, angle):
    """float32 result vs the float64 reference log of the same (rounded) float32 matrix."""
    R32 = rodrigues(_axis(axis) * angle).float()
    out = ops.so3_log(R32)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    expected = reference.so3_log(R32.double())
    if angle == math.pi:
        assert out.double().norm().item() == pytest.approx(math.pi, abs=1e-6)
        torch.testing.assert_close(rodrigues(out.double()), R32.double(), atol=1e-6, rtol=0)
    else:
        # small angles: error relative to the angle, no absolute floor (exactly 0 at angle 0)
        atol = 1e-7 * angle if angle <= 1e-2 else 1e-6
        torch.testing.assert_close(out.double(), expected, atol=atol, rtol=1e-6)


@pytest.mark.parametrize("R", [
    torch.diag(torch.tensor([-1.0, -1.0, 1.0], dtype=torch.float64)),
    torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64)),
    torch.diag(torch.tensor([-1.0, 1.0, -1.0], dtype=torch.float64)),
])
def test_half_turns_about_coordinate_axes(R):
    out = ops.so3_log(R)
    assert out.norm().item() == pytest.approx(math.pi, abs=1e-15)
    torch.testing.assert_close(rodrigues(out), R, atol=1e-15, rtol=0)
    # the axis is the coordinate axis that the half turn leaves fixed
    fixed = int(torch.argmax(torch.diagonal(R)))
    assert abs(out[fixed].item()) == pytest.approx(math.pi, abs=1e-15)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_reference_values_and_vjp(dtype):
    gen = torch.Generator().manual_seed(0)
    R = torch.cat([random_rotations(400, gen), random_rotations(100, gen, max_angle=1e-3),
                   random_rotations(100, gen, max_angle=1e-6)]).to(dtype)
    R = R[torch.randperm(R.shape[0], generator=gen)].reshape(20, 30, 3, 3)
    tol = dict(atol=1e-12, rtol=1e-12) if dtype == torch.float64 else dict(atol=2e-6, rtol=2e-6)
    torch.testing.assert_close(ops.so3_log(R), reference.so3_log(R), **tol)
    g = torch.randn(20, 30, 3, generator=gen, dtype=torch.float64).to(dtype)
    Rg = R.clone().requires_grad_()
    ours = torch.autograd.grad(ops.so3_log(Rg), Rg, g)[0]
    theirs = torch.autograd.grad(reference.so3_log(Rg), Rg, g)[0]
    torch.testing.assert_close(ours, theirs, **tol)


def test_half_turn_with_signed_zeros_keeps_the_axis_sign_convention():
    """At exactly pi the axis sign is a convention (n_k > 0); signed zeros in R (from negation or
    products) must not flip it through atan2(-0, -1) = -pi. The reference agrees."""
    R = torch.tensor([[-1.0, 0.0, -0.0], [-0.0, -1.0, -0.0], [-0.0, -0.0, 1.0]],
                     dtype=torch.float64)
    for dt in (torch.float32, torch.float64):
        out = ops.so3_log(R.to(dt))
        assert out[2].item() == pytest.approx(math.pi, abs=1e-6) and out[2].item() > 0
        assert torch.equal(out, reference.so3_log(R.to(dt)))


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("entry", range(9))
def test_a_non_finite_entry_gives_nan_value_and_gradient(entry, value):
    """Without the rule, an inf on the diagonal gave omega = 0, a rotation-looking answer."""
    gen = torch.Generator().manual_seed(entry)
    for dtype in (torch.float32, torch.float64):
        clean = torch.cat([random_rotations(2, gen), random_rotations(2, gen, max_angle=1e-3)])
        clean = clean.to(dtype)
        R = clean.clone()
        R[1].view(-1)[entry] = value
        for fn in (ops.so3_log, reference.so3_log):
            Rg = R.clone().requires_grad_()
            out = fn(Rg)
            (grad,) = torch.autograd.grad(out, Rg, torch.ones_like(out))
            assert torch.isnan(out[1]).all() and torch.isnan(grad[1]).all()
            assert torch.equal(out[[0, 2, 3]], fn(clean)[[0, 2, 3]])
            assert torch.isfinite(grad[[0, 2, 3]]).all()


@pytest.mark.parametrize("angle", [0.0, 1e-8, math.pi])
def test_gradient_finite_at_zero_and_pi(angle):
    for dtype in (torch.float32, torch.float64):
        R = rodrigues(_axis("random") * angle).to(dtype).requires_grad_()
        (grad,) = torch.autograd.grad(ops.so3_log(R).sum(), R)
        assert torch.isfinite(grad).all()


def test_gradient_at_identity_is_the_vee_map():
    """d omega / d R at R = I is omega_i = (R_kj - R_jk)/2 exactly (independent derivation)."""
    R = torch.eye(3, dtype=torch.float64, requires_grad=True)
    J = torch.autograd.functional.jacobian(ops.so3_log, R)
    expected = torch.zeros(3, 3, 3, dtype=torch.float64)
    for i, (j, k) in enumerate([(2, 1), (0, 2), (1, 0)]):
        expected[i, j, k] = 0.5
        expected[i, k, j] = -0.5
    torch.testing.assert_close(J, expected, atol=1e-15, rtol=0)


@pytest.mark.parametrize(
    "angles",
    [(0.0,), (1e-6,), (1e-3,), (0.05,), (0.5,), (1.5,), (2.0,), (3.0,), (math.pi - 1e-3,)],
)
def test_gradcheck_float64(angles):
    gen = torch.Generator().manual_seed(int(angles[0] * 1000) + 1)
    R = rodrigues(random_axes(3, gen) * angles[0])
    # off SO(3) too: gradcheck perturbs the nine entries freely, so the ambient formula matters
    R = (R + 1e-3 * torch.randn(3, 3, 3, generator=gen, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(ops.so3_log, (R,), eps=1e-7, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("angle", [1e-4, 3e-4, 1e-3, 3e-3, 1e-2])
def test_float32_jacobian_accurate_at_small_angles(angle):
    """Frame-to-frame camera rotations live at 1e-4..1e-2 rad; the float32 Jacobian keeps full
    relative accuracy there (a formula that cancels would lose digits as 1/angle^2)."""
    gen = torch.Generator().manual_seed(7)
    R32 = rodrigues(random_axes(64, gen) * angle).float()
    g = torch.randn(64, 3, generator=gen, dtype=torch.float64)
    R64 = R32.double().requires_grad_()
    (expected,) = torch.autograd.grad(reference.so3_log(R64), R64, g)
    R32 = R32.requires_grad_()
    (ours,) = torch.autograd.grad(ops.so3_log(R32), R32, g.float())
    rel = (ours.double() - expected).norm() / expected.norm()
    assert rel.item() < 1e-6


def test_shapes_and_noncontiguous():
    gen = torch.Generator().manual_seed(3)
    R = random_rotations(24, gen).reshape(2, 3, 4, 3, 3)
    out = ops.so3_log(R)
    assert out.shape == (2, 3, 4, 3)
    # a transposed view (R^T = R^-1) must give -omega
    torch.testing.assert_close(ops.so3_log(R.transpose(-1, -2)), -out, atol=1e-12, rtol=0)
    assert ops.so3_log(R[:, :, :0]).shape == (2, 3, 0, 3)


def test_half_precision_is_computed_in_float32():
    gen = torch.Generator().manual_seed(4)
    R = random_rotations(10, gen)
    for dt in (torch.float16, torch.bfloat16):
        out = ops.so3_log(R.to(dt))
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, ops.so3_log(R.to(dt).float()), atol=0, rtol=0)
