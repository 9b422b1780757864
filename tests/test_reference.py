"""Tests of the plain-PyTorch oracle vggrpo.reference against independent facts.

The reference is the oracle of the fused ops, so it is checked here against things that do not
reuse its formulas: Rodrigues' exponential, hand-computed z-buffers and errors, a brute-force
Python z-buffer, analytic trajectories and scenes, and finite differences (gradcheck).
"""

import math

import pytest
import torch

from vggrpo import reference as ref

F64 = torch.float64
NAN = float("nan")
INF = float("inf")


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------

def hat(w):
    z = torch.zeros_like(w[..., 0])
    return torch.stack(
        (
            torch.stack((z, -w[..., 2], w[..., 1]), -1),
            torch.stack((w[..., 2], z, -w[..., 0]), -1),
            torch.stack((-w[..., 1], w[..., 0], z), -1),
        ),
        -2,
    )


def exp_so3(w):
    """Rodrigues' formula in float64: [...,3] -> [...,3,3]."""
    w = torch.as_tensor(w, dtype=F64)
    theta = torch.linalg.vector_norm(w, dim=-1)
    safe = torch.where(theta > 0, theta, torch.ones_like(theta))
    K = hat(w / safe[..., None])
    eye = torch.eye(3, dtype=F64).expand(K.shape)
    s = torch.sin(theta)[..., None, None]
    c = torch.cos(theta)[..., None, None]
    return eye + s * K + (1 - c) * (K @ K)


def unit(v):
    v = torch.as_tensor(v, dtype=F64)
    return v / torch.linalg.vector_norm(v)


AXES = {
    "x": unit([1.0, 0.0, 0.0]),
    "y": unit([0.0, 1.0, 0.0]),
    "z": unit([0.0, 0.0, 1.0]),
    "rand": unit([0.3, -0.72, 0.55]),
}


# --------------------------------------------------------------------------------------------
# so3_log
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("axis", list(AXES))
@pytest.mark.parametrize(
    "angle", [0.0, 1e-8, 1e-4, 0.01, 0.3, 1.0, math.pi / 2, 2.0, 3.0, math.pi - 1e-6]
)
def test_so3_log_inverts_exp(axis, angle):
    omega = AXES[axis] * angle
    out = ref.so3_log(exp_so3(omega))
    assert out.dtype == F64 and out.shape == (3,)
    # absolute accuracy everywhere, relative accuracy at small angles
    assert torch.allclose(out, omega, rtol=1e-10, atol=1e-12), (out, omega)


@pytest.mark.parametrize("axis", list(AXES))
def test_so3_log_at_pi(axis):
    R = exp_so3(AXES[axis] * math.pi)
    out = ref.so3_log(R)
    assert abs(torch.linalg.vector_norm(out).item() - math.pi) < 1e-12
    assert torch.allclose(exp_so3(out), R, atol=1e-12)
    # exactly pi on a coordinate axis: v == 0 and the sign convention gives n_k > 0
    if axis in ("x", "y", "z"):
        assert torch.allclose(out, AXES[axis] * math.pi, atol=1e-12)


def test_so3_log_batched_shapes_and_float32_small_angles():
    axis = AXES["rand"]
    angles = torch.tensor([1e-8, 1e-6, 1e-4, 1e-2], dtype=F64)
    omega = angles[:, None] * axis
    R = exp_so3(omega).reshape(2, 2, 3, 3)
    out64 = ref.so3_log(R)
    assert out64.shape == (2, 2, 3)
    out32 = ref.so3_log(R.float())
    assert out32.dtype == torch.float32
    rel = (out32.double().reshape(4, 3) - omega).norm(dim=-1) / angles
    assert (rel < 1e-6).all(), rel


def _jacobian(R):
    R = R.clone().requires_grad_(True)
    return torch.autograd.functional.jacobian(ref.so3_log, R)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_so3_log_gradient_at_identity(dtype):
    # At R = I: c = 1, v = 0, g = 1 and omega = v to first order, so d omega / d R = d v / d R.
    J = _jacobian(torch.eye(3, dtype=dtype))
    assert torch.isfinite(J).all()
    expected = torch.zeros(3, 3, 3, dtype=dtype)
    expected[0, 2, 1], expected[0, 1, 2] = 0.5, -0.5
    expected[1, 0, 2], expected[1, 2, 0] = 0.5, -0.5
    expected[2, 1, 0], expected[2, 0, 1] = 0.5, -0.5
    assert torch.allclose(J, expected, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("axis", list(AXES))
def test_so3_log_gradient_finite_at_pi(dtype, axis):
    R = exp_so3(AXES[axis] * math.pi).to(dtype)
    J = _jacobian(R)
    assert torch.isfinite(J).all()
    # The same in a batch mixing both branches and both special points.
    Rb = torch.stack((torch.eye(3, dtype=dtype), R, exp_so3(AXES[axis] * 0.5).to(dtype)))
    Rb.requires_grad_(True)
    ref.so3_log(Rb).sum().backward()
    assert torch.isfinite(Rb.grad).all()


@pytest.mark.parametrize("angle", [1e-3, 0.05, 0.5, 1.2, 2.0, 2.8, math.pi - 1e-3])
def test_so3_log_gradcheck(angle):
    gen = torch.Generator().manual_seed(int(angle * 1000))
    axis = unit(torch.randn(3, generator=gen, dtype=F64))
    R = exp_so3(axis * angle).requires_grad_(True)
    assert torch.autograd.gradcheck(ref.so3_log, (R,), eps=1e-6, atol=1e-7, rtol=1e-6)


def test_so3_log_gradcheck_batch_off_manifold():
    # gradcheck perturbs the 9 entries freely; also start slightly off SO(3).
    gen = torch.Generator().manual_seed(0)
    axes = torch.nn.functional.normalize(torch.randn(4, 3, generator=gen, dtype=F64), dim=-1)
    angles = torch.tensor([0.002, 0.7, 2.4, 3.0], dtype=F64)
    R = exp_so3(axes * angles[:, None]) + 1e-3 * torch.randn(4, 3, 3, generator=gen, dtype=F64)
    R.requires_grad_(True)
    assert torch.autograd.gradcheck(ref.so3_log, (R,), eps=1e-6, atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("dtype,thr", [(torch.float32, 0.1), (F64, 0.01)])
def test_so3_log_series_switch_is_continuous(dtype, thr):
    # tan(angle) = x: both sides of the series switch give the same value and Jacobian.
    axis = AXES["rand"]
    outs, jacs = [], []
    for f in (1 - 1e-4, 1 + 1e-4):
        R = exp_so3(axis * math.atan(thr * f)).to(dtype)
        outs.append(ref.so3_log(R).double())
        jacs.append(_jacobian(R).double())
        rtol = 1e-6 if dtype == torch.float32 else 1e-12
        assert torch.allclose(outs[-1], axis * math.atan(thr * f), rtol=rtol)
    tol = 1e-5 if dtype == torch.float32 else 1e-9
    assert torch.allclose(jacs[0], jacs[1], atol=tol * 10, rtol=1e-3)


def test_so3_log_regular_branch_matches_documented_derivatives():
    # docs/ops.md: omega = g(s, c) v, dg/dc = -1/(s^2 + c^2), (dg/ds)/s = (c/(s^2+c^2) - g)/s^2,
    # differentiated in the 9 ambient entries (here off SO(3), in the series and direct regions).
    gen = torch.Generator().manual_seed(2)
    dv = torch.zeros(3, 3, 3, dtype=F64)
    dv[0, 2, 1], dv[0, 1, 2] = 0.5, -0.5
    dv[1, 0, 2], dv[1, 2, 0] = 0.5, -0.5
    dv[2, 1, 0], dv[2, 0, 1] = 0.5, -0.5
    dc = torch.eye(3, dtype=F64) / 2
    for angle in (0.004, 0.03, 0.4, 1.3):
        axis = unit(torch.randn(3, generator=gen, dtype=F64))
        R = exp_so3(axis * angle) + 1e-3 * torch.randn(3, 3, generator=gen, dtype=F64)
        c = (R.trace() - 1) / 2
        v = torch.stack(((R[2, 1] - R[1, 2]) / 2, (R[0, 2] - R[2, 0]) / 2, (R[1, 0] - R[0, 1]) / 2))
        s = v.norm()
        g = torch.atan2(s, c) / s
        dg_dc = -1 / (s * s + c * c)
        dg_ds_over_s = (c / (s * s + c * c) - g) / (s * s)
        ds_term = dg_ds_over_s * torch.einsum("i,ijk->jk", v, dv)
        J = g * dv + v[:, None, None] * (dg_dc * dc + ds_term)
        assert torch.allclose(ref.so3_log(R), g * v, rtol=1e-13, atol=0)
        assert torch.allclose(_jacobian(R), J, rtol=1e-8, atol=1e-10), angle


def test_so3_log_branch_switch_at_half_pi_is_continuous():
    axis = AXES["rand"]
    a = ref.so3_log(exp_so3(axis * (math.pi / 2 - 1e-9)))
    b = ref.so3_log(exp_so3(axis * (math.pi / 2 + 1e-9)))
    assert torch.allclose(a, b, atol=1e-8)


# --------------------------------------------------------------------------------------------
# motion_smoothness / camera_motion_reward
# --------------------------------------------------------------------------------------------

def extrinsics_from(centres, R_wc):
    """camera-from-world [T,3,4] from camera centres [T,3] and world-from-camera rotations."""
    R = R_wc.transpose(-1, -2)
    t = -(R @ centres[..., None]).squeeze(-1)
    return torch.cat((R, t[..., None]), dim=-1)


def smooth_trajectory(T=8):
    ts = torch.arange(T, dtype=F64)
    step = torch.tensor([0.3, 0.1, -0.2], dtype=F64)
    centres = torch.tensor([0.2, -1.0, 0.5], dtype=F64) + ts[:, None] * step
    A = exp_so3(torch.tensor([0.4, -0.3, 1.1], dtype=F64))
    R_wc = A @ exp_so3(ts[:, None] * (0.07 * AXES["rand"]))
    return extrinsics_from(centres, R_wc)


def test_motion_smoothness_constant_velocity_is_zero():
    E = smooth_trajectory()[None]
    e_t, e_r = ref.motion_smoothness(E)
    assert e_t.shape == (1,) and e_r.shape == (1,)
    assert e_t.item() < 1e-12 and e_r.item() < 1e-10
    assert abs(ref.camera_motion_reward(E).item() - 1.0) < 1e-10


def test_motion_smoothness_jitter_is_larger_and_4x4_matches():
    gen = torch.Generator().manual_seed(1)
    E = smooth_trajectory()
    R_wc = E[:, :3, :3].transpose(-1, -2)
    C = -(R_wc @ E[:, :3, 3:]).squeeze(-1)
    C = C + 0.05 * torch.randn(C.shape, generator=gen, dtype=F64)
    R_wc = R_wc @ exp_so3(0.02 * torch.randn(C.shape, generator=gen, dtype=F64))
    J = extrinsics_from(C, R_wc)
    E2 = torch.stack((E, J))  # [2,T,3,4]
    e_t, e_r = ref.motion_smoothness(E2)
    assert e_t[1] > 0.05 and e_r[1] > 0.05
    assert e_t[0] < 1e-12 and e_r[0] < 1e-10
    r = ref.camera_motion_reward(E2)
    assert r[0] > r[1] and (r > 0).all() and (r <= 1).all()
    # [B,T,4,4]: the last row is not read
    bottom = torch.full((2, E2.shape[1], 1, 4), NAN, dtype=F64)
    e_t4, e_r4 = ref.motion_smoothness(torch.cat((E2, bottom), dim=-2))
    assert torch.equal(e_t4, e_t) and torch.equal(e_r4, e_r)


def test_motion_smoothness_hand_computed_body_frame():
    # centre steps (1,0,0), (1,0,0), (0,1,0); body-frame rotation steps w1, w1, w2.
    C = torch.tensor([[0, 0, 0], [1, 0, 0], [2, 0, 0], [2, 1, 0]], dtype=F64)
    w1 = torch.tensor([0.0, 0.0, 0.3], dtype=F64)
    w2 = torch.tensor([0.2, 0.0, 0.0], dtype=F64)
    R1 = exp_so3(w1)
    R_wc = torch.stack((torch.eye(3, dtype=F64), R1, R1 @ R1, R1 @ R1 @ exp_so3(w2)))
    E = extrinsics_from(C, R_wc)[None]
    eps = 1e-8
    e_t, e_r = ref.motion_smoothness(E, eps=eps)
    exp_t = (0 + math.sqrt(2) / (2 + eps)) / 2
    exp_r = (0 + (w2 - w1).norm().item() / (w1.norm().item() + w2.norm().item() + eps)) / 2
    assert abs(e_t.item() - exp_t) < 1e-12
    assert abs(e_r.item() - exp_r) < 1e-12
    # gradients are finite (straight segments: zero acceleration)
    E.requires_grad_(True)
    sum(ref.motion_smoothness(E)).sum().backward()
    assert torch.isfinite(E.grad).all()


def test_motion_smoothness_gradient_finite_when_static():
    # camera does not move at all: |v| = 0, omega = so3_log(I) = 0
    E = extrinsics_from(torch.zeros(4, 3, dtype=F64), torch.eye(3, dtype=F64).expand(4, 3, 3))[None]
    E.requires_grad_(True)
    e_t, e_r = ref.motion_smoothness(E)
    assert e_t.item() == 0 and e_r.item() == 0
    (e_t + e_r).sum().backward()
    assert torch.isfinite(E.grad).all()


# --------------------------------------------------------------------------------------------
# static_points
# --------------------------------------------------------------------------------------------

def test_static_points_layout_and_mask():
    B, T, H, W = 2, 3, 2, 4
    idx = torch.arange(B * T * H * W, dtype=F64).reshape(B, T, H, W)
    pm = torch.stack((idx, -idx, 2 * idx), dim=-1)
    flow = torch.zeros(B, T, H, W, 3, dtype=F64)
    pm[0, 1, 0, 2, 1] = NAN  # not finite
    pm[1, 2, 1, 3, 0] = INF
    flow[0, 0, 1, 1] = torch.tensor([3.0, 4.0, 0.0])  # |flow| = 5 == threshold: static
    flow[0, 2, 0, 0] = torch.tensor([3.0, 4.0, 0.1])  # > threshold: dynamic
    flow[1, 0, 0, 1, 2] = NAN
    pts, valid = ref.static_points(pm, flow, flow_threshold=5.0)
    assert pts.shape == (B, T * H * W, 3) and valid.shape == (B, T * H * W)
    assert valid.dtype == torch.bool
    n = lambda t, y, x: (t * H + y) * W + x  # noqa: E731
    invalid = {(0, n(1, 0, 2)), (1, n(2, 1, 3)), (0, n(2, 0, 0)), (1, n(0, 0, 1))}
    for b in range(B):
        for i in range(T * H * W):
            if (b, i) in invalid:
                assert not valid[b, i] and (pts[b, i] == 0).all()
            else:
                v = idx.reshape(B, -1)[b, i]
                assert valid[b, i] and torch.equal(pts[b, i], torch.stack((v, -v, 2 * v)))
    # no flow: only the non-finite points are dropped
    _, valid2 = ref.static_points(pm)
    assert valid2.sum().item() == B * T * H * W - 2
    # gradient = grad * valid, finite
    pm.requires_grad_(True)
    p, val = ref.static_points(pm, flow, 5.0)
    p.sum().backward()
    assert torch.equal(pm.grad, val.reshape(B, T, H, W, 1).expand(-1, -1, -1, -1, 3).to(F64))


# --------------------------------------------------------------------------------------------
# splat_depth
# --------------------------------------------------------------------------------------------

def test_splat_depth_hand_made():
    H, W = 4, 6
    z0 = 2.0 + 1e-12  # ties with z = 2 after rounding to float32
    pts = torch.tensor(
        [
            [1.5 * z0, 0.5 * z0, z0],  # 0: pixel (1,0), float32 tie with 1 -> wins (smaller index)
            [1.25 * 2, 0.75 * 2, 2.0],  # 1: pixel (1,0), nearer in float64 but loses the tie
            [3.5 * 5, 2.5 * 5, 5.0],  # 2: pixel (3,2), behind point 3
            [3.2 * 3, 2.9 * 3, 3.0],  # 3: pixel (3,2), nearest
            [-1.5, -0.5, -1.0],  # 4: behind the camera (would project to (1.5, 0.5))
            [NAN, 1.0, 1.0],  # 5: NaN
            [6.0, 2.5, 1.0],  # 6: u == W: dropped
            [0.0, 3.5, 1.0],  # 7: u == 0: pixel (0,3)
            [0.5, 4.0, 1.0],  # 8: v == H: dropped
            [4.5, 1.5, 1.0],  # 9: valid == False
            [1.0, 1.0, 0.0],  # 10: z == 0
            [INF, 1.0, 1.0],  # 11: inf
            [5.75, 3.5, 1.0],  # 12: pixel (5,3)
            [-1e-9, 0.5, 1.0],  # 13: u < 0 in view 0; pixel (1,0) in view 1 (u = 2 - 1e-9)
        ],
        dtype=F64,
    )[None]
    N = pts.shape[1]
    valid = torch.ones(1, N, dtype=torch.bool)
    valid[0, 9] = False
    E = torch.zeros(1, 2, 4, 4, dtype=F64)
    E[0, :, :3, :3] = torch.eye(3, dtype=F64)
    E[0, 1, 0, 3] = 2.0  # view 1: camera shifted, x_cam = x + 2
    E[0, :, 3, :] = NAN  # last row of a 4x4 is not read
    K = torch.eye(3, dtype=F64).expand(1, 2, 3, 3).clone()
    pts.requires_grad_(True)
    E.requires_grad_(True)
    depth, winner = ref.splat_depth(pts, valid, E, K, H, W)
    assert depth.shape == (1, 2, H, W) and depth.dtype == F64
    assert winner.shape == (1, 2, H, W) and winner.dtype == torch.int64

    exp_w = torch.full((2, H, W), -1, dtype=torch.int64)
    exp_d = torch.zeros(2, H, W, dtype=F64)
    for view, y, x, n, d in [
        (0, 0, 1, 0, z0),
        (0, 2, 3, 3, 3.0),
        (0, 3, 0, 7, 1.0),
        (0, 3, 5, 12, 1.0),
        (1, 0, 2, 0, z0),  # u = 1.5 + 2/z0, tie with point 1 (u = 2.25) again
        (1, 2, 3, 3, 3.0),  # u = 3.2 + 2/3; point 2 at u = 3.9 behind it
        (1, 3, 2, 7, 1.0),
        (1, 0, 1, 13, 1.0),
    ]:
        exp_w[view, y, x] = n
        exp_d[view, y, x] = d
    assert torch.equal(winner[0], exp_w)
    assert torch.equal(depth[0].detach(), exp_d)  # re-read exactly in float64 (z0 != 2)

    depth.sum().backward()
    exp_gp = torch.zeros(N, 3, dtype=F64)
    for n, times in [(0, 2), (3, 2), (7, 2), (12, 1), (13, 1)]:
        exp_gp[n, 2] = times
    assert torch.equal(pts.grad[0], exp_gp)
    exp_gE = torch.zeros(2, 4, 4, dtype=F64)
    for view, winners in [(0, [0, 3, 7, 12]), (1, [0, 3, 7, 13])]:
        exp_gE[view, 2, :3] = pts.detach()[0, winners].sum(0)
        exp_gE[view, 2, 3] = len(winners)
    assert torch.allclose(E.grad[0], exp_gE, rtol=0, atol=1e-15)


def test_splat_depth_float32_tie_and_valid_none():
    pts = torch.tensor(
        [[9.0, 9.0, 4.0], [0.5, 0.5, 1.0], [1.0, 1.0, 2.0], [0.6, 0.6, 1.0], [1.4, 1.2, 2.0]],
        dtype=torch.float32,
    )[None]
    E = torch.cat((torch.eye(3), torch.zeros(3, 1)), dim=1).expand(1, 1, 3, 4)
    K = torch.eye(3).expand(1, 1, 3, 3)
    depth, winner = ref.splat_depth(pts, None, E, K, 1, 1)
    # points 1..4 all land in pixel (0,0); 1 and 3 share z = 1: the smaller index wins
    assert winner.item() == 1 and depth.item() == 1.0
    assert depth.dtype == torch.float32


def brute_force_zbuffer(points, valid, E, K, H, W):
    """Python loop z-buffer with key (float32(z), n), float64 arithmetic on float64 inputs."""
    B, N, _ = points.shape
    V = E.shape[1]
    depth = torch.zeros(B, V, H, W, dtype=points.dtype)
    winner = torch.full((B, V, H, W), -1, dtype=torch.int64)
    for b in range(B):
        for v in range(V):
            best = {}
            R, t = E[b, v, :3, :3].tolist(), E[b, v, :3, 3].tolist()
            k = K[b, v].tolist()
            for n in range(N):
                p = points[b, n].tolist()
                if not valid[b, n] or not all(math.isfinite(c) for c in p):
                    continue
                cam = [R[i][0] * p[0] + R[i][1] * p[1] + R[i][2] * p[2] + t[i] for i in range(3)]
                z = cam[2]
                if not (math.isfinite(z) and z > 0):
                    continue
                xn, yn = cam[0] / z, cam[1] / z
                u = k[0][0] * xn + k[0][1] * yn + k[0][2]
                vv = k[1][0] * xn + k[1][1] * yn + k[1][2]
                if not (0 <= u < W and 0 <= vv < H):
                    continue
                px = (math.floor(vv), math.floor(u))
                key = (torch.tensor(z, dtype=torch.float32).item(), n)
                if px not in best or key < best[px][0]:
                    best[px] = (key, z)
            for (y, x), ((_, n), z) in best.items():
                winner[b, v, y, x] = n
                depth[b, v, y, x] = z
    return depth, winner


def random_cameras(B, V, H, W, gen, dtype=F64):
    ang = 0.15 * torch.randn(B, V, 3, generator=gen, dtype=F64)
    R = exp_so3(ang)
    t = 0.3 * torch.randn(B, V, 3, generator=gen, dtype=F64)
    E = torch.cat((R, t[..., None]), dim=-1)
    K = torch.zeros(B, V, 3, 3, dtype=F64)
    K[..., 0, 0] = 0.9 * W
    K[..., 1, 1] = 0.9 * H
    K[..., 0, 1] = 0.05 * W
    K[..., 0, 2] = W / 2
    K[..., 1, 2] = H / 2
    K[..., 2, 2] = 1
    return E.to(dtype), K.to(dtype)


def test_splat_depth_matches_brute_force_with_ties():
    gen = torch.Generator().manual_seed(3)
    B, V, N, H, W = 2, 3, 300, 5, 7
    E, K = random_cameras(B, V, H, W, gen)
    pts = torch.randn(B, N, 3, generator=gen, dtype=F64) * torch.tensor([1.0, 1.0, 0.5], dtype=F64)
    pts[..., 2] += 3.0
    pts[:, ::2, 2] = torch.round(pts[:, ::2, 2] * 4) / 4  # many equal depths in view-independent z
    pts[0, 7] = NAN
    pts[1, 11, 1] = INF
    valid = torch.rand(B, N, generator=gen) > 0.1
    # identity camera in view 0 of batch 0, so quantised world z gives exact camera-depth ties
    E[0, 0] = torch.cat((torch.eye(3, dtype=F64), torch.zeros(3, 1, dtype=F64)), dim=1)
    d, w = ref.splat_depth(pts, valid, E, K, H, W)
    bd, bw = brute_force_zbuffer(pts, valid, E, K, H, W)
    assert torch.equal(w, bw)
    assert torch.equal(d, bd)
    assert (w >= 0).sum() > 20  # the case is not vacuous
    # float32 inputs agree with the brute force run on the same float32 numbers
    d32, w32 = ref.splat_depth(pts.float(), valid, E.float(), K.float(), H, W)
    p32, E32, K32 = (x.float().double() for x in (pts, E, K))
    bd32, bw32 = brute_force_zbuffer(p32, valid, E32, K32, H, W)
    assert torch.equal(w32, bw32)
    assert torch.allclose(d32.double(), bd32, rtol=1e-6, atol=0)


def test_splat_depth_permutation_invariant_for_distinct_depths():
    gen = torch.Generator().manual_seed(4)
    B, V, N, H, W = 1, 2, 200, 4, 5
    E, K = random_cameras(B, V, H, W, gen)
    pts = torch.randn(B, N, 3, generator=gen, dtype=F64)
    pts[..., 2] += 3.0
    perm = torch.randperm(N, generator=gen)
    d, w = ref.splat_depth(pts, None, E, K, H, W)
    dp, wp = ref.splat_depth(pts[:, perm], None, E, K, H, W)
    assert torch.equal(d, dp)
    mapped = torch.where(wp >= 0, perm[wp.clamp(min=0)], wp)
    assert torch.equal(w, mapped)


# --------------------------------------------------------------------------------------------
# view_depth_error / worst_k_mean
# --------------------------------------------------------------------------------------------

def test_view_depth_error_hand_computed():
    rendered = torch.tensor(
        [[[[1.0, 2.0], [0.0, 3.0]], [[0.0, 0.0], [0.0, 0.0]], [[4.0, INF], [2.0, 1.0]]]], dtype=F64
    )
    depths = torch.tensor(
        [[[[1.5, NAN], [1.0, 2.0]], [[1.0, 1.0], [1.0, 1.0]], [[1.0, 1.0], [-1.0, 1.0]]]], dtype=F64
    )
    rendered.requires_grad_(True)
    depths.requires_grad_(True)
    err, count = ref.view_depth_error(rendered, depths)
    assert count.dtype == torch.int64
    assert count.tolist() == [[2, 0, 2]]
    assert torch.allclose(err, torch.tensor([[0.75, 0.0, 1.5]], dtype=F64))
    err.sum().backward()
    g_r = torch.tensor([[[[-0.5, 0], [0, 0.5]], [[0, 0], [0, 0]], [[0.5, 0], [0, 0.0]]]], dtype=F64)
    # |1 - 1| has a kink at 0: gradient 0 there, as in PyTorch
    assert torch.equal(rendered.grad, g_r)
    assert torch.equal(depths.grad, -g_r)


def test_worst_k_mean_hand_computed():
    err = torch.tensor([[1.0, 3.0, 2.0, 3.0, 5.0]], dtype=F64, requires_grad=True)
    count = torch.tensor([[1, 1, 1, 1, 0]])
    out = ref.worst_k_mean(err, count, k=3)
    assert torch.allclose(out, torch.tensor([8.0 / 3], dtype=F64))
    out.sum().backward()
    assert torch.allclose(err.grad, torch.tensor([[0, 1 / 3, 1 / 3, 1 / 3, 0]], dtype=F64))


def test_worst_k_mean_ties_k_large_empty_nan():
    # ties at the cut: smaller index wins
    err = torch.tensor(
        [[2.0, 1.0, 2.0, 2.0], [0.5, 7.0, 0.25, 9.0], [4.0, 4.0, 4.0, 4.0]], requires_grad=True
    )
    count = torch.tensor([[1, 1, 1, 1], [3, 0, 5, 0], [0, 0, 0, 0]])
    out = ref.worst_k_mean(err, count, k=2)
    assert out.dtype == torch.float32
    assert torch.allclose(out, torch.tensor([2.0, 0.375, 0.0]))
    out.sum().backward()
    assert torch.equal(err.grad, torch.tensor([[0.5, 0, 0.5, 0], [0.5, 0, 0.5, 0], [0, 0, 0, 0.0]]))
    # k larger than the number of valid views: mean of all valid ones
    out10 = ref.worst_k_mean(err.detach(), count, k=10)
    assert torch.allclose(out10, torch.tensor([1.75, 0.375, 0.0]))
    # NaN ranks above everything (also +inf); a NaN in a view without count is ignored
    e = torch.tensor([[1.0, NAN, INF], [NAN, 1.0, 2.0]], requires_grad=True)
    c = torch.tensor([[1, 1, 1], [0, 1, 1]])
    assert torch.isnan(ref.worst_k_mean(e, c, k=1)[0])
    (g,) = torch.autograd.grad(ref.worst_k_mean(e, c, k=1), e, torch.ones(2))
    assert torch.equal(g, torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]))
    assert ref.worst_k_mean(e.detach(), c, k=1)[1].item() == 2.0
    # descending, stable: the first of equal NaNs is taken
    e2 = torch.tensor([[NAN, 3.0, NAN]], requires_grad=True)
    out2 = ref.worst_k_mean(e2, torch.ones(1, 3, dtype=torch.int64), k=1)
    (g2,) = torch.autograd.grad(out2, e2, torch.ones(1))
    assert torch.equal(g2, torch.tensor([[1.0, 0.0, 0.0]]))


# --------------------------------------------------------------------------------------------
# reprojection_errors / geometry_reprojection_reward
# --------------------------------------------------------------------------------------------

def pixel_centres(H, W):
    ys = torch.arange(H, dtype=F64) + 0.5
    xs = torch.arange(W, dtype=F64) + 0.5
    return torch.meshgrid(ys, xs, indexing="ij")


def plane_scene(B=1, T=4, H=5, W=6, depth=5.0):
    """Fronto-parallel plane z = depth, translating cameras without rotation: all depths equal."""
    gen = torch.Generator().manual_seed(5)
    C = torch.zeros(B, T, 3, dtype=F64)
    C[..., :2] = 0.4 * torch.randn(B, T, 2, generator=gen, dtype=F64)
    E = torch.zeros(B, T, 3, 4, dtype=F64)
    E[..., :3, :3] = torch.eye(3, dtype=F64)
    E[..., :3, 3] = -C
    f = 1.1 * W
    K = torch.tensor([[f, 0, W / 2], [0, f, H / 2], [0, 0, 1]], dtype=F64).expand(B, T, 3, 3)
    ys, xs = pixel_centres(H, W)
    xn, yn = (xs - W / 2) / f, (ys - H / 2) / f
    cam = torch.stack((xn * depth, yn * depth, torch.full_like(xn, depth)), dim=-1)  # [H,W,3]
    pm = cam[None, None] + C[:, :, None, None, :]
    depths = torch.full((B, T, H, W), depth, dtype=F64)
    return pm, depths, E, K


def test_reprojection_errors_plane_is_exact():
    pm, depths, E, K = plane_scene()
    B, T, H, W, _ = pm.shape
    err, count = ref.reprojection_errors(pm, depths, E, K)
    assert err.shape == (B, T) and count.dtype == torch.int64
    assert torch.allclose(err, torch.zeros_like(err), atol=1e-12)
    assert (count == H * W).all()  # each frame's own points cover all of its pixels
    depths2 = depths.clone()
    depths2[:, 2] += 0.5
    err2, _ = ref.reprojection_errors(pm, depths2, E, K)
    assert torch.allclose(err2, torch.tensor([[0, 0, 0.5, 0]], dtype=F64), atol=1e-12)
    for topk, expected in ((1, -0.5), (2, -0.25)):
        r = ref.geometry_reprojection_reward(pm, depths2, E, K, topk=topk)
        assert torch.allclose(r, torch.tensor([expected], dtype=F64))


def test_reprojection_errors_dynamic_points_are_masked():
    pm, depths, E, K = plane_scene()
    pm = pm.clone()
    flow = torch.zeros_like(pm)
    pm[0, 0, 2, 3, 2] = 1.0  # a foreground point moved close to the camera...
    flow[0, 0, 2, 3] = torch.tensor([0.0, 0.0, 1.0], dtype=F64)  # ...flagged dynamic
    err, _ = ref.reprojection_errors(pm, depths, E, K, flow, flow_threshold=0.1)
    assert torch.allclose(err, torch.zeros_like(err), atol=1e-12)
    err_static, _ = ref.reprojection_errors(pm, depths, E, K, flow, flow_threshold=2.0)
    assert err_static.max() > 0.1


def random_scene(gen, B=2, T=4, H=6, W=8):
    E, K = random_cameras(B, T, H, W, gen)
    d = 2.0 + torch.rand(B, T, H, W, generator=gen, dtype=F64)
    ys, xs = pixel_centres(H, W)
    Kinv = torch.linalg.inv(K)
    pix = torch.stack((xs, ys, torch.ones_like(xs)), dim=-1)  # [H,W,3]
    rays = torch.einsum("btij,hwj->bthwi", Kinv, pix)
    cam = rays * d[..., None] + 0.02 * torch.randn(B, T, H, W, 3, generator=gen, dtype=F64)
    R, t = E[..., :3, :3], E[..., :3, 3]
    world = torch.einsum("btji,bthwj->bthwi", R, cam - t[:, :, None, None, :])  # R^T (cam - t)
    depths = d + 0.05 * torch.randn(B, T, H, W, generator=gen, dtype=F64)
    world[0, 1, 2, 3] = NAN
    depths[1, 2, 0, 0] = NAN
    depths[1, 0, 1, 1] = -1.0
    flow = 0.2 * torch.rand(B, T, H, W, 3, generator=gen, dtype=F64)
    return world, depths, E, K, flow


@pytest.mark.parametrize("topk", [1, 3, 10])
def test_geometry_reward_baseline_matches_composition(topk):
    gen = torch.Generator().manual_seed(6)
    pm, depths, E, K, flow = random_scene(gen)
    inputs = [x.clone().requires_grad_(True) for x in (pm, depths, E)]
    r_base = ref.geometry_reprojection_reward(*inputs, K, flow, flow_threshold=0.2, topk=topk)
    r_base.sum().backward()
    g_base = [x.grad for x in inputs]

    inputs2 = [x.clone().requires_grad_(True) for x in (pm, depths, E)]
    err, count = ref.reprojection_errors(*inputs2, K, flow, 0.2)
    r_comp = -ref.worst_k_mean(err, count, k=topk)
    r_comp.sum().backward()
    g_comp = [x.grad for x in inputs2]

    assert r_base.shape == (2,) and (r_base < 0).all()
    assert (count > 0).all() and (count < 6 * 8).any()  # flow masks some static points
    assert torch.allclose(r_base, r_comp, rtol=1e-12, atol=1e-14)
    for a, b in zip(g_base, g_comp):
        assert torch.isfinite(a).all() and torch.isfinite(b).all()
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)
    assert g_comp[0].abs().sum() > 0 and g_comp[2].abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_computes_in_given_dtype(dtype):
    pm, depths, E, K = plane_scene()
    out = ref.reprojection_errors(pm.to(dtype), depths.to(dtype), E.to(dtype), K.to(dtype))[0]
    assert out.dtype == dtype and torch.isfinite(out).all()
    r = ref.geometry_reprojection_reward(pm.to(dtype), depths.to(dtype), E.to(dtype), K.to(dtype))
    assert r.dtype == dtype
    traj = smooth_trajectory()[None].to(dtype)
    assert ref.camera_motion_reward(traj).dtype == dtype
    assert ref.so3_log(torch.eye(3, dtype=dtype)).dtype == dtype
