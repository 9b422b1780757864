"""vggrpo.geometry.cameras: quaternions, VGGT pose encoding, Any4D-style factors, first-frame frame.

Expected values come from independent constructions: rotations from axis-angle through
``torch.linalg.matrix_exp`` of a skew matrix, quaternions from (axis sin(a/2), cos(a/2)),
intrinsics from a known field of view, range depths as Euclidean distances of unprojected points.
"""

from __future__ import annotations

import math

import pytest
import torch

from vggrpo.data.synthetic import make_scene
from vggrpo.geometry.cameras import (
    camera_centres,
    camera_to_world_to_extrinsics,
    cameras_to_pose_encoding,
    extrinsics_to_camera_to_world,
    matrix_to_quaternion,
    pixel_rays,
    pose_encoding_to_cameras,
    quaternion_to_matrix,
    range_depth_to_z_depth,
    relative_to_first_camera,
    unproject_depth,
    z_depth_to_range_depth,
)

F64 = torch.float64
TOL = {torch.float32: dict(atol=2e-6, rtol=2e-6), torch.float64: dict(atol=1e-12, rtol=1e-12)}


def skew(w: torch.Tensor) -> torch.Tensor:
    z = torch.zeros_like(w[..., 0])
    x, y, c = w.unbind(-1)
    return torch.stack([z, -c, y, c, z, -x, -y, x, z], -1).reshape(*w.shape[:-1], 3, 3)


def axis_angle_cases(n: int, seed: int = 0):
    """Unit axes ``[n,3]`` and angles ``[n]`` in [0, pi], including 0, ~pi and exactly pi."""
    g = torch.Generator().manual_seed(seed)
    axes = torch.randn(n, 3, generator=g, dtype=F64)
    axes = axes / axes.norm(dim=-1, keepdim=True)
    angles = torch.rand(n, generator=g, dtype=F64) * math.pi
    special = torch.tensor([0.0, 1e-8, 0.5, math.pi / 2, math.pi - 1e-3, math.pi - 1e-7, math.pi],
                           dtype=F64)
    angles[: len(special)] = special
    # Axis-aligned axes at pi: the w ~ 0 cases where one of x, y, z carries the whole quaternion.
    axes[-3:] = torch.eye(3, dtype=F64)
    angles[-3:] = math.pi
    return axes, angles


def expected_quaternion(axes, angles):
    return torch.cat([axes * torch.sin(angles / 2)[:, None], torch.cos(angles / 2)[:, None]], -1)


def project(points, E, K):
    """Pixel coordinates ``[...,2]`` and camera z of world points ``[B,T,H,W,3]``."""
    R, t = E[..., :3, :3], E[..., :3, 3]
    cam = torch.einsum("btij,bthwj->bthwi", R, points) + t[:, :, None, None, :]
    uvw = torch.einsum("btij,bthwj->bthwi", K, cam)
    return uvw[..., :2] / uvw[..., 2:], cam[..., 2]


# --------------------------------------------------------------------------------------------------
# Quaternions
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_quaternion_to_matrix_matches_matrix_exp(dtype):
    axes, angles = axis_angle_cases(64)
    R_ref = torch.linalg.matrix_exp(skew(axes * angles[:, None]))
    R = quaternion_to_matrix(expected_quaternion(axes, angles).to(dtype))
    assert R.dtype == dtype and R.shape == (64, 3, 3)
    torch.testing.assert_close(R, R_ref.to(dtype), **TOL[dtype])


def test_quaternion_to_matrix_normalises_and_ignores_sign():
    axes, angles = axis_angle_cases(16, seed=1)
    q = expected_quaternion(axes, angles)
    R = quaternion_to_matrix(q)
    torch.testing.assert_close(quaternion_to_matrix(3.7 * q), R)
    torch.testing.assert_close(quaternion_to_matrix(-q), R)
    eye = torch.eye(3, dtype=F64).expand(16, 3, 3)
    torch.testing.assert_close(R @ R.transpose(-1, -2), eye, atol=1e-14, rtol=0)
    torch.testing.assert_close(torch.linalg.det(R), torch.ones(16, dtype=F64))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matrix_to_quaternion_matches_axis_angle(dtype):
    axes, angles = axis_angle_cases(64, seed=2)
    R = torch.linalg.matrix_exp(skew(axes * angles[:, None]))
    # At exactly pi, R = 2 n n^T - I, built so that it is exactly symmetric: then w is exactly 0
    # and the canonical sign is the one compared. (Shepperd's largest-divisor branch already makes
    # the largest |xyz| positive; the w == 0 tie-break only guards that.) matrix_exp's rounding
    # leaves a ~1e-17 asymmetry that differs between torch versions (w came out +1.7e-17, and
    # q rightly kept its negative xyz, on torch 2.4), so its w is not 0.
    at_pi = angles == math.pi
    n = axes[at_pi]
    R[at_pi] = 2 * n[:, :, None] * n[:, None, :] - torch.eye(3, dtype=F64)
    R = R.to(dtype)
    q = matrix_to_quaternion(R)
    q_ref = expected_quaternion(axes, angles).to(dtype)
    assert q.dtype == dtype and q.shape == (64, 4)
    assert bool((q[at_pi, 3] == 0).all()), "the exactly symmetric R at pi must give w = 0"
    # The canonical sign of w = 0 makes the largest |xyz| positive.
    q_ref[at_pi] = torch.where(
        q_ref[at_pi, :3].gather(-1, q_ref[at_pi, :3].abs().argmax(-1, keepdim=True)) < 0,
        -q_ref[at_pi], q_ref[at_pi],
    )
    atol = 1e-6 if dtype == torch.float32 else 1e-13
    torch.testing.assert_close(q, q_ref, atol=atol, rtol=0)
    assert bool((q[..., 3] >= 0).all())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_quaternion_round_trips(dtype):
    g = torch.Generator().manual_seed(3)
    q = torch.randn(500, 4, generator=g, dtype=F64)
    # Rotations by ~180 degrees (w ~ 0): the trace-only formula loses them entirely.
    q[:100, 3] = torch.randn(100, generator=g, dtype=F64) * 1e-6
    q = q / q.norm(dim=-1, keepdim=True)
    q = torch.where(q[..., 3:] < 0, -q, q).to(dtype)
    R = quaternion_to_matrix(q)
    q_back = matrix_to_quaternion(R)
    atol = 2e-6 if dtype == torch.float32 else 1e-13
    # The sign of a w ~ 0 quaternion is not identifiable from R: compare up to sign there...
    same = torch.minimum((q_back - q).abs().amax(-1), (q_back + q).abs().amax(-1))
    assert float(same.max()) < atol
    # ...and exactly elsewhere, where the canonical w >= 0 fixes it.
    torch.testing.assert_close(q_back[100:], q[100:], atol=atol, rtol=0)
    torch.testing.assert_close(quaternion_to_matrix(q_back), R, atol=atol, rtol=0)
    torch.testing.assert_close(q_back.norm(dim=-1), torch.ones(500, dtype=dtype))


def test_matrix_to_quaternion_any_leading_dims():
    axes, angles = axis_angle_cases(24, seed=4)
    R = torch.linalg.matrix_exp(skew(axes * angles[:, None]))
    q = matrix_to_quaternion(R.reshape(2, 3, 4, 3, 3))
    assert q.shape == (2, 3, 4, 4)
    torch.testing.assert_close(q.reshape(24, 4), matrix_to_quaternion(R))
    assert matrix_to_quaternion(R[0]).shape == (4,)


# --------------------------------------------------------------------------------------------------
# VGGT pose encoding
# --------------------------------------------------------------------------------------------------


def reference_cameras(lead, H, W, seed=5):
    """Cameras built independently: R from matrix_exp, K from known fields of view."""
    g = torch.Generator().manual_seed(seed)
    n = math.prod(lead)
    axes = torch.randn(n, 3, generator=g, dtype=F64)
    axes = axes / axes.norm(dim=-1, keepdim=True)
    angles = torch.rand(n, generator=g, dtype=F64) * math.pi
    R = torch.linalg.matrix_exp(skew(axes * angles[:, None]))
    t = torch.randn(n, 3, generator=g, dtype=F64) * 2.0
    fov_h = 0.4 + 1.5 * torch.rand(n, generator=g, dtype=F64)
    fov_w = 0.4 + 1.5 * torch.rand(n, generator=g, dtype=F64)
    K = torch.zeros(n, 3, 3, dtype=F64)
    K[:, 0, 0] = (W / 2) / torch.tan(fov_w / 2)
    K[:, 1, 1] = (H / 2) / torch.tan(fov_h / 2)
    K[:, 0, 2], K[:, 1, 2], K[:, 2, 2] = W / 2, H / 2, 1.0
    E = torch.cat([R, t[:, :, None]], -1)
    enc = torch.cat([t, expected_quaternion(axes, angles), fov_h[:, None], fov_w[:, None]], -1)
    return E.reshape(*lead, 3, 4), K.reshape(*lead, 3, 3), enc.reshape(*lead, 9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("lead", [(), (7,), (2, 3)])
def test_pose_encoding_matches_independent_construction(dtype, lead):
    H, W = 48, 80
    E, K, enc = reference_cameras(lead, H, W)
    got = cameras_to_pose_encoding(E.to(dtype), K.to(dtype), H, W)
    assert got.shape == (*lead, 9) and got.dtype == dtype
    tol = dict(atol=2e-6, rtol=2e-6) if dtype == torch.float32 else dict(atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(got, enc.to(dtype), **tol)

    E2, K2 = pose_encoding_to_cameras(enc.to(dtype), H, W)
    assert E2.shape == (*lead, 3, 4) and K2.shape == (*lead, 3, 3)
    assert E2.dtype == dtype and K2.dtype == dtype
    torch.testing.assert_close(E2, E.to(dtype), **tol)
    torch.testing.assert_close(K2, K.to(dtype), rtol=tol["rtol"] * 10, atol=tol["atol"] * 100)


def test_pose_encoding_accepts_4x4_and_broadcasts_intrinsics():
    H, W = 30, 40
    E, K, enc = reference_cameras((2, 5), H, W, seed=6)
    E44 = torch.cat([E, torch.tensor([0.0, 0, 0, 1], dtype=F64).expand(2, 5, 1, 4)], -2)
    K_shared = K[0, 0]
    got = cameras_to_pose_encoding(E44, K_shared, H, W)
    assert got.shape == (2, 5, 9)
    torch.testing.assert_close(got[..., :7], enc[..., :7])
    torch.testing.assert_close(got[..., 7:], enc[0, 0, 7:].expand(2, 5, 2))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_encoding_cameras_encoding_round_trip(dtype):
    g = torch.Generator().manual_seed(7)
    enc = torch.randn(3, 6, 9, generator=g, dtype=F64)
    q = enc[..., 3:7] / enc[..., 3:7].norm(dim=-1, keepdim=True)
    enc[..., 3:7] = torch.where(q[..., 3:] < 0, -q, q)
    enc[..., 7:] = 0.2 + 2.5 * torch.rand(3, 6, 2, generator=g, dtype=F64)
    enc = enc.to(dtype)
    back = cameras_to_pose_encoding(*pose_encoding_to_cameras(enc, 37, 53), 37, 53)
    atol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(back, enc, atol=atol, rtol=0)


def test_pose_encoding_to_cameras_normalises_quaternion():
    E, K, enc = reference_cameras((4,), 20, 20, seed=8)
    scaled = enc.clone()
    scaled[..., 3:7] *= 5.0
    E2, _ = pose_encoding_to_cameras(scaled, 20, 20)
    torch.testing.assert_close(E2, E)


def test_gradcheck_pose_encoding_to_cameras():
    _, _, enc = reference_cameras((2, 3), 24, 32, seed=9)
    enc = enc.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda e: pose_encoding_to_cameras(e, 24, 32), (enc,))


def test_gradcheck_quaternions():
    g = torch.Generator().manual_seed(10)
    q = torch.randn(5, 4, generator=g, dtype=F64).requires_grad_(True)
    assert torch.autograd.gradcheck(quaternion_to_matrix, (q,))
    axes, angles = axis_angle_cases(12, seed=11)
    generic = (angles > 0.1) & (angles < 3.0)
    R = torch.linalg.matrix_exp(skew(axes[generic] * angles[generic, None]))
    R = R.requires_grad_(True)
    assert torch.autograd.gradcheck(matrix_to_quaternion, (R,))


def test_half_precision_is_computed_in_float32():
    E, K, enc = reference_cameras((3,), 16, 16, seed=12)
    E2, K2 = pose_encoding_to_cameras(enc.to(torch.bfloat16), 16, 16)
    assert E2.dtype == torch.float32 and K2.dtype == torch.float32
    assert cameras_to_pose_encoding(E.half(), K.half(), 16, 16).dtype == torch.float32


def test_bad_shapes_name_the_argument():
    E, K, enc = reference_cameras((2,), 16, 16)
    with pytest.raises(ValueError, match=r"extrinsics must have shape \[\.\.\.,3,4\] or "
                                         r"\[\.\.\.,4,4\], got \[2,3,3\]"):
        cameras_to_pose_encoding(E[..., :3], K, 16, 16)
    with pytest.raises(ValueError,
                       match=r"intrinsics must have shape \[\.\.\.,3,3\], got \[2,2,3\]"):
        cameras_to_pose_encoding(E, K[:, :2], 16, 16)
    with pytest.raises(ValueError, match=r"encoding must have shape \[\.\.\.,9\], got \[2,8\]"):
        pose_encoding_to_cameras(enc[..., :8], 16, 16)
    with pytest.raises(ValueError, match="height must be a positive int"):
        pose_encoding_to_cameras(enc, 0, 16)
    with pytest.raises(ValueError, match=r"quaternion must have shape \[\.\.\.,4\], got \[3\]"):
        quaternion_to_matrix(torch.zeros(3))
    with pytest.raises(ValueError, match=r"matrix must have shape \[\.\.\.,3,3\], got \[3,4\]"):
        matrix_to_quaternion(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="do not broadcast"):
        cameras_to_pose_encoding(E, K.expand(3, 2, 3, 3)[:, :1].expand(3, 3, 3, 3), 16, 16)
    with pytest.raises(TypeError, match="extrinsics must be a torch.Tensor"):
        cameras_to_pose_encoding(E.tolist(), K, 16, 16)


# --------------------------------------------------------------------------------------------------
# Any4D-style factors
# --------------------------------------------------------------------------------------------------


def test_camera_to_world_to_extrinsics():
    axes, angles = axis_angle_cases(10, seed=13)
    R_wc = torch.linalg.matrix_exp(skew(axes * angles[:, None]))
    C = torch.randn(10, 3, generator=torch.Generator().manual_seed(14), dtype=F64)
    c2w = torch.zeros(10, 4, 4, dtype=F64)
    c2w[:, :3, :3], c2w[:, :3, 3], c2w[:, 3, 3] = R_wc, C, 1.0
    E = camera_to_world_to_extrinsics(c2w)
    assert E.shape == (10, 3, 4)
    torch.testing.assert_close(camera_to_world_to_extrinsics(c2w[:, :3]), E)
    # A world point expressed in the camera frame is R_wc^T (X - C).
    X = torch.randn(10, 3, generator=torch.Generator().manual_seed(15), dtype=F64)
    expected = (R_wc.transpose(-1, -2) @ (X - C)[..., None])[..., 0]
    torch.testing.assert_close((E[..., :3] @ X[..., None])[..., 0] + E[..., 3], expected)
    torch.testing.assert_close(camera_centres(E), C)
    torch.testing.assert_close(extrinsics_to_camera_to_world(E), c2w)


def random_intrinsics(n, H, W, seed, skew_coeff=True):
    g = torch.Generator().manual_seed(seed)
    K = torch.zeros(n, 3, 3, dtype=F64)
    K[:, 0, 0] = W * (0.6 + torch.rand(n, generator=g, dtype=F64))
    K[:, 1, 1] = W * (0.6 + torch.rand(n, generator=g, dtype=F64))
    K[:, 0, 2] = W * (0.3 + 0.4 * torch.rand(n, generator=g, dtype=F64))
    K[:, 1, 2] = H * (0.3 + 0.4 * torch.rand(n, generator=g, dtype=F64))
    if skew_coeff:
        K[:, 0, 1] = 3.0 * torch.randn(n, generator=g, dtype=F64)
    K[:, 2, 2] = 1.0
    return K


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_range_depth_round_trip(dtype):
    H, W = 12, 20
    K = random_intrinsics(6, H, W, seed=16).reshape(2, 3, 3, 3).to(dtype)
    g = torch.Generator().manual_seed(17)
    z = (0.5 + 5 * torch.rand(2, 3, H, W, generator=g, dtype=F64)).to(dtype)
    r = z_depth_to_range_depth(z, K)
    assert r.dtype == dtype and r.shape == z.shape
    # The ray through a pixel centre is never shorter than its z component.
    assert bool((r >= z * (1 - 1e-6)).all()) and bool((r > z).any())
    torch.testing.assert_close(range_depth_to_z_depth(r, K), z, **TOL[dtype])


def test_range_depth_is_distance_to_unprojected_point():
    scene = make_scene(batch=2, frames=3, height=15, width=22, static_objects=2, seed=3,
                       dtype=F64)
    C = camera_centres(scene.extrinsics)[:, :, None, None, :]
    # Exact ray-cast points: their distance from the camera centre is the range depth.
    ranges = (scene.pointmaps - C).norm(dim=-1)
    torch.testing.assert_close(range_depth_to_z_depth(ranges, scene.intrinsics), scene.depths)
    torch.testing.assert_close(z_depth_to_range_depth(scene.depths, scene.intrinsics), ranges)

    # Off-centre, skewed intrinsics: unproject_depth is the independent construction.
    K = random_intrinsics(6, 15, 22, seed=18).reshape(2, 3, 3, 3)
    points = unproject_depth(scene.depths, K, scene.extrinsics)
    torch.testing.assert_close(z_depth_to_range_depth(scene.depths, K), (points - C).norm(dim=-1))


def test_range_depth_bad_shapes():
    with pytest.raises(ValueError, match=r"range_depth must have shape \[\.\.\.,H,W\], got \[5\]"):
        range_depth_to_z_depth(torch.ones(5), torch.eye(3))
    with pytest.raises(ValueError, match=r"intrinsics must have shape \[\.\.\.,3,3\]"):
        z_depth_to_range_depth(torch.ones(4, 4), torch.eye(4))
    with pytest.raises(ValueError, match="do not broadcast"):
        z_depth_to_range_depth(torch.ones(2, 4, 4), torch.eye(3).expand(3, 3, 3))


# --------------------------------------------------------------------------------------------------
# First-frame frame
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_relative_to_first_camera_keeps_projections(dtype):
    scene = make_scene(batch=2, frames=4, height=12, width=18, trajectory="orbit",
                       static_objects=1, moving_objects=1, jitter=0.5, seed=4, dtype=F64)
    assert float(scene.scene_flow.abs().max()) > 0.1  # the flow test below has something to move
    E, P, Fl, K = (x.to(dtype) for x in (scene.extrinsics, scene.pointmaps, scene.scene_flow,
                                         scene.intrinsics))
    E2, P2, F2 = relative_to_first_camera(E, P, Fl)
    assert E2.shape == E.shape and P2.shape == P.shape and F2.shape == Fl.shape
    assert E2.dtype == dtype and P2.dtype == dtype and F2.dtype == dtype
    tol = dict(atol=2e-4, rtol=1e-4) if dtype == torch.float32 else dict(atol=1e-10, rtol=1e-10)
    eye = torch.cat([torch.eye(3), torch.zeros(3, 1)], -1).to(dtype).expand(2, 3, 4)
    torch.testing.assert_close(E2[:, 0], eye, **tol)
    # Every point lands on the same pixel at the same depth before and after.
    uv, z = project(P, E, K)
    uv2, z2 = project(P2, E2, K)
    torch.testing.assert_close(uv2, uv, **tol)
    torch.testing.assert_close(z2, z, **tol)
    # Displaced points transform like points: (X + f)' = X' + f' (flow is rotated only).
    _, moved, _ = relative_to_first_camera(E, P + Fl)
    torch.testing.assert_close(moved, P2 + F2, **tol)
    torch.testing.assert_close(F2.norm(dim=-1), Fl.norm(dim=-1), **tol)


def test_relative_to_first_camera_4x4_and_optional_inputs():
    E, _, _ = reference_cameras((2, 5), 10, 10, seed=19)
    E44 = torch.cat([E, torch.tensor([0.0, 0, 0, 1], dtype=F64).expand(2, 5, 1, 4)], -2)
    E2, P2, F2 = relative_to_first_camera(E44)
    assert E2.shape == (2, 5, 4, 4) and P2 is None and F2 is None
    torch.testing.assert_close(E2[..., 3, :], E44[..., 3, :])
    # Relative poses between frames do not change: E_i E_j^-1 is frame independent.
    rel_old = E44[:, 3] @ torch.linalg.inv(E44[:, 1])
    rel_new = E2[:, 3] @ torch.linalg.inv(E2[:, 1])
    torch.testing.assert_close(rel_new, rel_old)
    E3, _, _ = relative_to_first_camera(E)
    torch.testing.assert_close(E3, E2[..., :3, :])


def test_relative_to_first_camera_bad_shapes():
    E, _, _ = reference_cameras((2, 5), 10, 10)
    with pytest.raises(ValueError, match=r"pointmaps must have shape \[2,5,H,W,3\] to match "
                                         r"extrinsics \[2,5,3,4\], got \[2,4,3,3,3\]"):
        relative_to_first_camera(E, torch.zeros(2, 4, 3, 3, 3))
    with pytest.raises(ValueError, match=r"scene_flow must have shape \[\.\.\.,3\]"):
        relative_to_first_camera(E, None, torch.zeros(2, 5, 3, 3, 2))
    with pytest.raises(ValueError, match=r"extrinsics must have shape \[\.\.\.,T,3,4\]"):
        relative_to_first_camera(E[0, 0])


def test_intrinsics_from_rays_recovers_a_pinhole_from_rays_of_any_length():
    from vggrpo.geometry.cameras import intrinsics_from_rays

    K = torch.tensor([[[61.0, 0.0, 40.25], [0.0, 58.5, 27.75], [0.0, 0.0, 1.0]],
                      [[30.0, 0.0, 20.0], [0.0, 30.0, 15.0], [0.0, 0.0, 1.0]]], dtype=torch.float64)
    # Rays through pixel centres, written out with no vggrpo code: K^-1 [x+0.5, y+0.5, 1].
    x = torch.arange(80, dtype=torch.float64) + 0.5
    y = torch.arange(56, dtype=torch.float64)[:, None] + 0.5
    rays = torch.stack([((x - K[:, 0, 2, None, None]) / K[:, 0, 0, None, None]).expand(2, 56, 80),
                        ((y - K[:, 1, 2, None, None]) / K[:, 1, 1, None, None]).expand(2, 56, 80),
                        torch.ones(2, 56, 80, dtype=torch.float64)], dim=-1)
    scale = 0.5 + torch.rand(2, 56, 80, 1, generator=torch.Generator().manual_seed(0),
                             dtype=torch.float64)
    torch.testing.assert_close(intrinsics_from_rays(rays * scale), K)
    assert intrinsics_from_rays(rays.float()).dtype == torch.float32
    # Invalid rays (non-finite, pointing backwards) are left out of the fit.
    broken = (rays * scale).clone()
    broken[0, :10] = float("nan")
    broken[1, :, :5, 2] = -1.0
    torch.testing.assert_close(intrinsics_from_rays(broken), K)
    # One column of valid rays cannot give a focal length.
    one = rays.clone()
    one[..., 1:, 2] = float("nan")
    assert torch.isnan(intrinsics_from_rays(one)[:, 0, 0]).all()
    with pytest.raises(ValueError, match=r"ray_directions must have shape \[\.\.\.,3\]"):
        intrinsics_from_rays(rays[..., :2])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_pixel_rays_project_back_to_pixel_centres_with_skew(dtype):
    """The rays invert the ops' projection (docs/conventions.md): ``depth * ray`` projects,
    through u = K00 x/z + K01 y/z + K02 and v = K11 y/z + K12, onto the pixel's centre."""
    K = torch.tensor([[[50.0, 3.0, 20.5], [0.0, 45.0, 11.0], [0.0, 0.0, 1.0]],
                      [[80.0, 0.0, 16.0], [0.0, 80.0, 12.0], [0.0, 0.0, 1.0]]], dtype=F64)
    H, W = 24, 32
    rays = pixel_rays(K.to(dtype), H, W)
    assert rays.shape == (2, H, W, 3) and rays.dtype == dtype
    assert torch.equal(rays[..., 2], torch.ones_like(rays[..., 2]))
    p = rays.to(F64) * torch.linspace(0.5, 7.0, H * W, dtype=F64).reshape(H, W, 1)
    x, y, z = p.unbind(-1)
    Kb = K[:, None, None]
    u = Kb[..., 0, 0] * x / z + Kb[..., 0, 1] * y / z + Kb[..., 0, 2]
    v = Kb[..., 1, 1] * y / z + Kb[..., 1, 2]
    centres_u = (torch.arange(W, dtype=F64) + 0.5).expand(2, H, W)
    centres_v = (torch.arange(H, dtype=F64)[:, None] + 0.5).expand(2, H, W)
    tol = TOL[dtype]
    torch.testing.assert_close(u, centres_u, **tol)
    torch.testing.assert_close(v, centres_v, **tol)


def test_pixel_rays_invert_a_projection_that_reads_k10():
    """docs/ops.md's projection reads K10 too (v = K10 x/z + K11 y/z + K12): the rays of an
    intrinsics matrix with K10 != 0 still land back on the pixel centres."""
    K = torch.tensor([[40.0, 2.0, 15.0], [-3.0, 42.0, 9.5], [0.0, 0.0, 1.0]], dtype=F64)
    H, W = 20, 30
    p = pixel_rays(K, H, W) * 2.5
    x, y, z = p.unbind(-1)
    u = K[0, 0] * x / z + K[0, 1] * y / z + K[0, 2]
    v = K[1, 0] * x / z + K[1, 1] * y / z + K[1, 2]
    torch.testing.assert_close(u, (torch.arange(W, dtype=F64) + 0.5).expand(H, W), **TOL[F64])
    torch.testing.assert_close(v, (torch.arange(H, dtype=F64)[:, None] + 0.5).expand(H, W),
                               **TOL[F64])
    assert torch.equal(z, torch.full_like(z, 2.5))
