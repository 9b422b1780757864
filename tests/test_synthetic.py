"""Tests of the procedural box-room scenes (vggrpo.data.synthetic): exact geometry, conventions,
determinism, scene flow and trajectory smoothness."""

import math
import time

import pytest
import torch

from vggrpo.data.synthetic import (
    DEFAULT_ROOM,
    TRAJECTORIES,
    Box,
    SceneGeometry,
    camera_centres,
    camera_trajectory,
    make_scene,
    pinhole_intrinsics,
    render_box_room,
    sample_scene_specs,
    unproject_depth,
)

H, W = 24, 40  # small images keep the suite fast; the default size is timed separately


def _relative_rotations(extrinsics):
    """R_wc[t]^T R_wc[t+1] for extrinsics [..., T, 3, 4] (R_wc = R_cw^T)."""
    R_wc = extrinsics[..., :3, :3].transpose(-1, -2)
    return R_wc[..., :-1, :, :].transpose(-1, -2) @ R_wc[..., 1:, :, :]


def _angle(R):
    c = ((R.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2).clamp(-1, 1)
    return torch.acos(c)


def _project(points, extrinsics, intrinsics):
    """(u, v, z) of world points [B,T,H,W,3] in their own frame's camera."""
    R = extrinsics[..., :3, :3][:, :, None, None]
    t = extrinsics[..., :3, 3][:, :, None, None]
    p = (R @ points[..., None])[..., 0] + t
    K = intrinsics[:, :, None, None]
    x, y, z = p.unbind(-1)
    u = K[..., 0, 0] * x / z + K[..., 0, 1] * y / z + K[..., 0, 2]
    v = K[..., 1, 0] * x / z + K[..., 1, 1] * y / z + K[..., 1, 2]
    return u, v, z


# --------------------------------------------------------------------------------------------------
# Cameras
# --------------------------------------------------------------------------------------------------


def test_pinhole_intrinsics_centred_square_pixels():
    K = pinhole_intrinsics(60, 104, fov_x_deg=60.0, dtype=torch.float64)
    f = 52.0 / math.tan(math.radians(30.0))
    expected = torch.tensor([[f, 0, 52.0], [0, f, 30.0], [0, 0, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(K, expected, rtol=0, atol=1e-12)
    assert pinhole_intrinsics(60, 104).dtype == torch.float32
    with pytest.raises(ValueError):
        pinhole_intrinsics(60, 104, fov_x_deg=180.0)


@pytest.mark.parametrize("kind", TRAJECTORIES)
@pytest.mark.parametrize("jitter", [0.0, 0.5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rotations_orthonormal(kind, jitter, dtype):
    gen = torch.Generator().manual_seed(1)
    E = camera_trajectory(kind, 9, jitter=jitter, phase=0.3, generator=gen, dtype=dtype)
    assert E.shape == (9, 3, 4) and E.dtype == dtype
    R = E[..., :3].double()
    tol = 1e-6 if dtype == torch.float32 else 1e-13
    eye = torch.eye(3, dtype=torch.float64).expand_as(R)
    assert (R @ R.transpose(-1, -2) - eye).abs().max() < tol
    assert (torch.linalg.det(R) - 1).abs().max() < tol


@pytest.mark.parametrize("kind", ["dolly", "pan"])
def test_smooth_trajectory_has_zero_acceleration(kind):
    E = camera_trajectory(kind, 8, phase=0.7, dtype=torch.float64)
    C = camera_centres(E)
    v = C[1:] - C[:-1]
    a = v[1:] - v[:-1]
    if kind == "dolly":
        assert v.norm(dim=-1).min() > 0.1  # it does move
        ratio = a.norm(dim=-1) / (v[1:].norm(dim=-1) + v[:-1].norm(dim=-1))
        assert ratio.max() < 1e-12
    else:
        assert v.norm(dim=-1).max() < 1e-12  # a pan stays put
    # Constant angular velocity: every relative rotation is the same non-trivial rotation.
    rel = _relative_rotations(E)
    assert _angle(rel).min() > 1e-3
    assert (rel - rel[0]).abs().max() < 1e-12


def test_orbit_constant_speed_and_angular_velocity():
    E = camera_trajectory("orbit", 8, phase=0.2, dtype=torch.float64)
    C = camera_centres(E)
    speed = (C[1:] - C[:-1]).norm(dim=-1)
    assert speed.min() > 0.1
    assert (speed - speed[0]).abs().max() < 1e-12
    rel = _relative_rotations(E)
    assert (rel - rel[0]).abs().max() < 1e-12
    step = _angle(rel[0])
    torch.testing.assert_close(step, torch.tensor(math.pi / 3 / 7, dtype=torch.float64))
    # All centres on one horizontal circle about the room's vertical centre line.
    radius = torch.stack([C[:, 0], C[:, 2]], -1).norm(dim=-1)
    assert (radius - radius[0]).abs().max() < 1e-12
    assert (C[:, 1] - C[0, 1]).abs().max() < 1e-12
    # The optical axis points at the room's centre line.
    forward = E[:, 2, :3]  # third row of R_cw = camera z axis in world
    to_centre = -C[:, [0, 2]]
    fwd_xz = forward[:, [0, 2]]
    cross = fwd_xz[:, 0] * to_centre[:, 1] - fwd_xz[:, 1] * to_centre[:, 0]
    assert cross.abs().max() < 1e-12 and ((fwd_xz * to_centre).sum(-1) > 0).all()


@pytest.mark.parametrize("kind", TRAJECTORIES)
def test_jitter_breaks_smoothness(kind):
    gen = torch.Generator().manual_seed(5)
    smooth = camera_trajectory(kind, 8, phase=0.4, dtype=torch.float64)
    shaky = camera_trajectory(kind, 8, phase=0.4, jitter=0.3, generator=gen, dtype=torch.float64)
    rel = _relative_rotations(shaky)
    assert (rel - rel[0]).abs().max() > 1e-4
    if kind == "dolly":
        v = camera_centres(shaky).diff(dim=0)
        a = v.diff(dim=0)
        assert (a.norm(dim=-1) / (v[1:].norm(dim=-1) + v[:-1].norm(dim=-1))).mean() > 1e-2
    if kind == "pan":  # no steps, so no translation noise (documented)
        torch.testing.assert_close(camera_centres(shaky), camera_centres(smooth))
    # Same generator state, same shake.
    gen = torch.Generator().manual_seed(5)
    again = camera_trajectory(kind, 8, phase=0.4, jitter=0.3, generator=gen, dtype=torch.float64)
    assert torch.equal(shaky, again)


def test_jitter_noise_scale_matches_documentation():
    frames, jitter = 4001, 0.5
    smooth = camera_trajectory("dolly", frames, dtype=torch.float64)
    gen = torch.Generator().manual_seed(2)
    shaky = camera_trajectory("dolly", frames, jitter=jitter, generator=gen, dtype=torch.float64)
    C0, C1 = camera_centres(smooth), camera_centres(shaky)
    mean_step = (C0[1:] - C0[:-1]).norm(dim=-1).mean()
    noise_std = (C1 - C0).std()
    assert abs(noise_std / (jitter * mean_step) - 1) < 0.05
    mean_rot = _angle(_relative_rotations(smooth)).mean()
    # Body-frame perturbation angle: log of R_wc_smooth^T R_wc_shaky.
    R0 = smooth[:, :3, :3].transpose(-1, -2)
    R1 = shaky[:, :3, :3].transpose(-1, -2)
    angles = _angle(R0.transpose(-1, -2) @ R1)
    assert abs(angles.pow(2).mean().sqrt() / (jitter * mean_rot) - 1) < 0.05


# --------------------------------------------------------------------------------------------------
# Rendered geometry
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=TRAJECTORIES)
def scene64(request):
    return make_scene(2, 6, H, W, trajectory=request.param, jitter=0.2, static_objects=3,
                      moving_objects=2, seed=11, dtype=torch.float64)


def test_shapes_and_dtypes(scene64):
    g = scene64
    B, T = 2, 6
    assert g.extrinsics.shape == (B, T, 3, 4)
    assert g.intrinsics.shape == (B, T, 3, 3)
    assert g.depths.shape == (B, T, H, W)
    assert g.pointmaps.shape == (B, T, H, W, 3)
    assert g.scene_flow.shape == (B, T, H, W, 3)
    assert g.dynamic_mask.shape == (B, T, H, W) and g.dynamic_mask.dtype == torch.bool
    for name in ("extrinsics", "intrinsics", "depths", "pointmaps", "scene_flow"):
        assert getattr(g, name).dtype == torch.float64
    assert (g.batch, g.frames, g.height, g.width) == (B, T, H, W)


def test_depths_positive_and_finite(scene64):
    assert torch.isfinite(scene64.depths).all()
    assert (scene64.depths > 0).all()
    assert torch.isfinite(scene64.pointmaps).all()
    assert torch.isfinite(scene64.scene_flow).all()


def test_unproject_matches_pointmaps_float64(scene64):
    g = scene64
    pts = unproject_depth(g.depths, g.intrinsics, g.extrinsics)
    assert pts.dtype == torch.float64
    assert (pts - g.pointmaps).abs().max() < 1e-9
    # [B,T,4,4] extrinsics give the same points.
    bottom = torch.tensor([0, 0, 0, 1.0], dtype=torch.float64).expand(2, 6, 1, 4)
    E44 = torch.cat([g.extrinsics, bottom], dim=-2)
    assert torch.equal(unproject_depth(g.depths, g.intrinsics, E44), pts)


@pytest.mark.parametrize("kind", TRAJECTORIES)
def test_unproject_matches_pointmaps_float32(kind):
    g = make_scene(2, 4, H, W, trajectory=kind, moving_objects=1, seed=3, dtype=torch.float32)
    assert g.depths.dtype == torch.float32
    pts = unproject_depth(g.depths, g.intrinsics, g.extrinsics)
    assert pts.dtype == torch.float32
    rel = (pts - g.pointmaps).norm(dim=-1) / g.pointmaps.norm(dim=-1)
    assert rel.max() < 1e-4


def test_points_project_to_their_pixel_centres(scene64):
    g = scene64
    u, v, z = _project(g.pointmaps, g.extrinsics, g.intrinsics)
    xs = torch.arange(W, dtype=torch.float64) + 0.5
    ys = torch.arange(H, dtype=torch.float64) + 0.5
    assert (u - xs).abs().max() < 1e-9
    assert (v - ys[:, None]).abs().max() < 1e-9
    assert (z - g.depths).abs().max() < 1e-9  # depth is camera z


def _on_box_surface(p, lo, hi, tol):
    """p [...,3] within the closed box and on at least one of its faces."""
    inside = ((p >= lo - tol) & (p <= hi + tol)).all(-1)
    on_face = (((p - lo).abs() < tol) | ((p - hi).abs() < tol)).any(-1)
    return inside & on_face


def test_every_point_lies_on_a_surface():
    spec = sample_scene_specs(1, 5, H, W, trajectory="orbit", static_objects=3, moving_objects=2,
                              seed=4)[0]
    g = spec.render(H, W, torch.float64)
    tol = 1e-9
    for t in range(g.frames):
        p = g.pointmaps[0, t]
        ok = _on_box_surface(p, torch.tensor(spec.room.lo, dtype=torch.float64),
                             torch.tensor(spec.room.hi, dtype=torch.float64), tol)
        for box in spec.static_boxes + spec.moving_boxes:
            lo, hi = box.at(t)
            ok |= _on_box_surface(p, torch.tensor(lo, dtype=torch.float64),
                                  torch.tensor(hi, dtype=torch.float64), tol)
        assert ok.all()
    # Boxes are visible at all (not hidden behind the camera or outside the view).
    assert (g.pointmaps[..., 1] < spec.room.hi[1] - 1e-6).any()


def test_scene_flow_of_an_explicit_moving_box():
    frames = 6
    E = camera_trajectory("dolly", frames, phase=0.5, dtype=torch.float64)[None]
    K = pinhole_intrinsics(H, W, dtype=torch.float64)
    velocity = (0.2, 0.0, -0.05)
    mover = Box((-0.6, 0.9, 3.0), (0.2, 1.5, 3.6), velocity)
    still = Box((1.0, 1.0, 2.0), (1.6, 1.5, 2.6), velocity=(3.0, 0.0, 0.0))  # ignored: static
    g = render_box_room(E, K, H, W, DEFAULT_ROOM, static_boxes=[still], moving_boxes=[mover])
    mask = g.dynamic_mask[0]
    assert mask.any(dim=(1, 2)).all(), "the moving box must be visible in every frame"
    flow = g.scene_flow[0]
    v = torch.tensor(velocity, dtype=torch.float64)
    assert torch.equal(flow[~mask], torch.zeros_like(flow[~mask]))
    assert torch.equal(flow[mask], v.expand_as(flow[mask]))
    # The box's lo corner moves by one velocity per frame.
    f64 = torch.float64
    for t in range(frames):
        lo, hi = (torch.tensor(c, dtype=f64) for c in mover.at(t))
        lo0, hi0 = torch.tensor(mover.lo, dtype=f64), torch.tensor(mover.hi, dtype=f64)
        torch.testing.assert_close(lo, lo0 + t * v, rtol=0, atol=1e-12)
        torch.testing.assert_close(hi - lo, hi0 - lo0, rtol=0, atol=1e-12)
    tol = 1e-9
    for t in range(frames):
        p = g.pointmaps[0, t][mask[t]]
        lo, hi = (torch.tensor(c, dtype=torch.float64) for c in mover.at(t))
        assert _on_box_surface(p, lo, hi, tol).all()
        # Advected by its flow, each point sits on the same face of the box at frame t+1.
        lo1, hi1 = (torch.tensor(c, dtype=torch.float64) for c in mover.at(t + 1))
        q = p + g.scene_flow[0, t][mask[t]]
        assert _on_box_surface(q, lo1, hi1, tol).all()
        torch.testing.assert_close(q - lo1, p - lo, rtol=0, atol=1e-12)
    # Static box points carry no flow and are not dynamic, even though its velocity is set.
    p_all = g.pointmaps[0]
    lo_s, hi_s = (torch.tensor(c, dtype=torch.float64) for c in still.at(0))
    on_still = _on_box_surface(p_all, lo_s, hi_s, tol)
    assert on_still.any() and not (on_still & mask).any()


def test_make_scene_flow_and_mask(scene64):
    g = scene64
    mask = g.dynamic_mask
    assert mask.any()
    assert (g.scene_flow[~mask] == 0).all()
    speed = g.scene_flow[mask].norm(dim=-1)
    assert (speed > 0.1).all()  # above the rewards' default flow_threshold
    # Flow is horizontal (boxes slide on the floor) and the same in every frame for a given box.
    assert (g.scene_flow[..., 1] == 0).all()
    for b in range(g.batch):
        assert len(torch.unique(g.scene_flow[b][mask[b]], dim=0)) <= 2


def test_no_moving_objects_means_static_scene():
    g = make_scene(1, 4, H, W, moving_objects=0, seed=2)
    assert not g.dynamic_mask.any()
    assert (g.scene_flow == 0).all()


# --------------------------------------------------------------------------------------------------
# Layout: cameras inside the room, outside the objects
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", TRAJECTORIES)
@pytest.mark.parametrize("jitter", [0.0, 1.0, 3.0])
def test_cameras_inside_room_and_outside_objects(kind, jitter):
    for seed in range(8):
        specs = sample_scene_specs(2, 8, H, W, trajectory=kind, jitter=jitter, static_objects=4,
                                   moving_objects=2, seed=seed)
        for spec in specs:
            C = camera_centres(spec.extrinsics)
            lo = torch.tensor(spec.room.lo, dtype=torch.float64)
            hi = torch.tensor(spec.room.hi, dtype=torch.float64)
            assert ((C > lo) & (C < hi)).all()
            for box in spec.static_boxes + spec.moving_boxes:
                # Boxes stay inside the room over the whole video.
                s_lo, s_hi = box.swept(8)
                assert all(a >= b for a, b in zip(s_lo, spec.room.lo))
                assert all(a <= b for a, b in zip(s_hi, spec.room.hi))
                for t in range(8):
                    b_lo, b_hi = (torch.tensor(c, dtype=torch.float64) for c in box.at(t))
                    assert not ((C[t] >= b_lo) & (C[t] <= b_hi)).all()


def test_render_rejects_bad_cameras():
    K = pinhole_intrinsics(H, W, dtype=torch.float64)
    E = camera_trajectory("dolly", 3, dtype=torch.float64)[None]
    C = camera_centres(E[0])
    around = Box(tuple((C[1] - 0.1).tolist()), tuple((C[1] + 0.1).tolist()))
    with pytest.raises(ValueError, match="inside"):
        render_box_room(E, K, H, W, DEFAULT_ROOM, static_boxes=[around])
    tiny_room = Box((-0.5, -0.5, -0.5), (0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="room"):
        render_box_room(E, K, H, W, tiny_room)


# --------------------------------------------------------------------------------------------------
# Determinism, dtype, speed
# --------------------------------------------------------------------------------------------------


def _fields(g):
    return (g.extrinsics, g.intrinsics, g.depths, g.pointmaps, g.scene_flow, g.dynamic_mask)


def test_same_seed_identical_different_seed_differs():
    kw = dict(trajectory="orbit", jitter=0.1, static_objects=2, moving_objects=1)
    a = make_scene(2, 4, H, W, seed=7, **kw)
    b = make_scene(2, 4, H, W, seed=7, **kw)
    c = make_scene(2, 4, H, W, seed=8, **kw)
    assert all(torch.equal(x, y) for x, y in zip(_fields(a), _fields(b)))
    assert not torch.equal(a.depths, c.depths)
    assert not torch.equal(a.extrinsics, c.extrinsics)
    # Batch elements are different scenes, and element b does not depend on the batch size.
    assert not torch.equal(a.depths[0], a.depths[1])
    single = make_scene(1, 4, H, W, seed=7, **kw)
    assert all(torch.equal(x, y) for x, y in zip(_fields(single), _fields(a[0])))


def test_to_and_float32_matches_float64():
    g64 = make_scene(1, 3, H, W, moving_objects=1, seed=9, dtype=torch.float64)
    g32 = make_scene(1, 3, H, W, moving_objects=1, seed=9, dtype=torch.float32)
    converted = g64.to(dtype=torch.float32)
    assert isinstance(converted, SceneGeometry)
    assert converted.dynamic_mask.dtype == torch.bool
    assert all(torch.equal(x, y) for x, y in zip(_fields(converted), _fields(g32)))
    assert g64.to(device="cpu").depths.dtype == torch.float64


def test_default_size_is_fast():
    # One intra-op thread: the bound must hold on a small CI box, and a thread pool competing with
    # a parallel build can be slower than one thread by orders of magnitude.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        make_scene(2, 8, 60, 104, moving_objects=2, seed=0)  # warm-up
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            g = make_scene(2, 8, 60, 104, trajectory="dolly", jitter=0.1, static_objects=3,
                           moving_objects=2, seed=1)
            best = min(best, time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    assert g.depths.shape == (2, 8, 60, 104)
    assert best < 1.0, f"make_scene took {best:.3f} s"
