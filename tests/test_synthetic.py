"""Tests of the procedural box-room scenes (vggrpo.data.synthetic): exact geometry, conventions,
determinism, scene flow, trajectory smoothness, the rendered RGB video and the torch Dataset."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from vggrpo.data.synthetic import (
    DEFAULT_ROOM,
    TRAJECTORIES,
    Box,
    BoxRoomSpec,
    SceneGeometry,
    SyntheticSceneDataset,
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
    assert g.video.shape == (B, T, 3, H, W)
    for name in ("extrinsics", "intrinsics", "depths", "pointmaps", "scene_flow", "video"):
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
    return (g.extrinsics, g.intrinsics, g.depths, g.pointmaps, g.scene_flow, g.dynamic_mask,
            g.video)


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


# --------------------------------------------------------------------------------------------------
# RGB video
# --------------------------------------------------------------------------------------------------


def _face_ids(pointmaps, spec, tol=1e-9):
    """Which face each pixel sees, from the exact point maps and the scene description alone:
    ``2*axis + side`` (side 0 = lo plane, 1 = hi plane) for the room, ``6 + 6*j + 2*axis + side``
    for box j (static boxes, then moving ones); -1 where the point is on no face or on several
    (an edge)."""
    f64 = torch.float64
    T = pointmaps.shape[0]
    ids = torch.full(pointmaps.shape[:-1], -1, dtype=torch.long)
    count = torch.zeros(pointmaps.shape[:-1], dtype=torch.long)
    room_lo, room_hi = torch.tensor(spec.room.lo, dtype=f64), torch.tensor(spec.room.hi, dtype=f64)
    for a in range(3):
        for side, plane in ((0, room_lo[a]), (1, room_hi[a])):
            on = (pointmaps[..., a] - plane).abs() < tol
            ids[on] = 2 * a + side
            count += on
    for j, box in enumerate(spec.static_boxes + spec.moving_boxes):
        for t in range(T):
            lo, hi = (torch.tensor(c, dtype=f64) for c in box.at(t if box.is_moving else 0))
            q = pointmaps[t]
            inside = ((q >= lo - tol) & (q <= hi + tol)).all(-1)
            for a in range(3):
                for side, plane in ((0, lo[a]), (1, hi[a])):
                    on = inside & ((q[..., a] - plane).abs() < tol)
                    ids[t][on] = 6 + 6 * j + 2 * a + side
                    count[t] += on
    ids[count != 1] = -1
    return ids


def _look_at(centres, targets):
    """Camera-from-world [N,3,4] with camera z along target - centre (x right, y down in a world
    whose +y is down)."""
    f = targets - centres
    f = f / f.norm(dim=-1, keepdim=True)
    down = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64).expand_as(f)
    r = torch.linalg.cross(down, f)
    r = r / r.norm(dim=-1, keepdim=True)
    d = torch.linalg.cross(f, r)
    R = torch.stack([r, d, f], dim=-2)
    t = -(R @ centres[..., None])
    return torch.cat([R, t], dim=-1)


def test_video_shape_dtype_range(scene64):
    g = scene64
    assert g.video.shape == (2, 6, 3, H, W) and g.video.dtype == torch.float64
    assert torch.isfinite(g.video).all()
    assert g.video.min() >= 0 and g.video.max() <= 1
    # Real pictures: neither black nor saturated, and using a good part of the range.
    assert g.video.max() > 0.5 and g.video.min() < 0.2
    g32 = make_scene(1, 3, H, W, moving_objects=1, seed=2)
    assert g32.video.shape == (1, 3, 3, H, W) and g32.video.dtype == torch.float32
    assert g32.video.min() >= 0 and g32.video.max() <= 1
    assert g32.video.is_contiguous()


def test_video_deterministic_and_seed_dependent():
    kw = dict(trajectory="pan", static_objects=3, moving_objects=1)
    a = make_scene(2, 4, H, W, seed=21, **kw)
    b = make_scene(2, 4, H, W, seed=21, **kw)
    c = make_scene(2, 4, H, W, seed=22, **kw)
    assert torch.equal(a.video, b.video)
    assert not torch.equal(a.video, c.video)
    assert not torch.equal(a.video[0], a.video[1])
    # The texture seed alone changes the pictures and nothing else.
    spec = sample_scene_specs(1, 4, H, W, seed=21, **kw)[0]
    other = dataclasses.replace(spec, texture_seed=spec.texture_seed + 1).render(H, W)
    same = spec.render(H, W)
    assert torch.equal(same.video, a.video[:1])
    assert torch.equal(other.depths, same.depths)
    assert (other.video - same.video).abs().mean() > 0.01


def test_video_batch_ops():
    g = make_scene(3, 2, H, W, seed=4)
    assert torch.equal(g[1].video, g.video[1:2])
    assert torch.equal(g[-1].video, g.video[2:])
    joined = SceneGeometry.cat([g[0], g[1:]])
    assert torch.equal(joined.video, g.video)
    assert g.to(dtype=torch.float64).video.dtype == torch.float64


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_static_texture_is_view_independent(dtype):
    # World points seen in frame 0 are looked at again by cameras at other places, each through
    # the centre of one pixel (principal point on that pixel's centre): where that ray hits the same
    # point, the colour must be the same (texture fixed in the world, shading by face only).
    spec = sample_scene_specs(1, 1, H, W, trajectory="dolly", static_objects=4, seed=31)[0]
    g = spec.render(H, W, torch.float64)
    gen = torch.Generator().manual_seed(0)
    n = 48
    picks = torch.randperm(H * W, generator=gen)[:n]
    targets = g.pointmaps[0, 0].reshape(-1, 3)[picks]
    lo = torch.tensor(spec.room.lo, dtype=torch.float64) + 0.3
    hi = torch.tensor(spec.room.hi, dtype=torch.float64) - 0.3
    centres = lo + (hi - lo) * torch.rand(n, 3, generator=gen, dtype=torch.float64)
    centres[:, 1] = -1.0 + torch.rand(n, generator=gen, dtype=torch.float64)  # above every box
    E = _look_at(centres, targets)
    x0, y0 = 17, 9
    K = pinhole_intrinsics(H, W, dtype=torch.float64).clone()
    K[0, 2], K[1, 2] = x0 + 0.5, y0 + 0.5
    views = render_box_room(E[None].to(dtype), K.to(dtype), H, W, spec.room, spec.static_boxes,
                            texture_seed=spec.texture_seed)
    hit = views.pointmaps[0, :, y0, x0].double()
    same_point = (hit - targets).norm(dim=-1) < (1e-9 if dtype == torch.float64 else 1e-4)
    assert same_point.sum() >= n // 2  # most are not occluded from the new place
    seen = views.video[0, :, :, y0, x0]
    first = g.video[0, 0].reshape(3, -1)[:, picks].t().to(dtype)
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    assert (seen[same_point] - first[same_point]).abs().max() < tol
    # Not vacuous: the colours of different points differ.
    assert first.std(dim=0).min() > 0.02
    # A static scene rendered along a trajectory: a pixel that sees the same point in two frames
    # (here: a camera sliding along that pixel's ray) keeps its colour.
    E2 = torch.stack([E[0], E[0].clone()])
    forward = E[0, 2, :3]
    E2[1, :, 3] = E[0, :, 3] - E[0, :, :3] @ (0.3 * forward)  # centre moved 0.3 m along the ray
    slide = render_box_room(E2[None], K, H, W, spec.room, spec.static_boxes,
                            texture_seed=spec.texture_seed)
    p = slide.pointmaps[0, :, y0, x0]
    assert (p[0] - p[1]).norm() < 1e-9
    assert (slide.video[0, 0, :, y0, x0] - slide.video[0, 1, :, y0, x0]).abs().max() < 1e-12
    assert (slide.video[0, 0] - slide.video[0, 1]).abs().max() > 0.05  # other pixels change


def test_moving_box_texture_moves_rigidly():
    # The camera translates with the moving box: every pixel that sees the box sees the same
    # box-local point in every frame, so its colour must not change, while the static room
    # behind it does.
    frames = 4
    velocity = torch.tensor([0.2, 0.0, 0.05], dtype=torch.float64)
    mover = Box((-0.8, 0.6, -1.8), (0.4, 1.5, -0.8), tuple(velocity.tolist()))
    still = Box((1.5, 1.0, 2.5), (2.1, 1.5, 3.1))
    base = camera_trajectory("dolly", 1, phase=0.5, dtype=torch.float64)[0]
    C0 = camera_centres(base)
    R = base[:, :3]
    steps = torch.arange(frames, dtype=torch.float64)[:, None]
    centres = C0 + steps * velocity
    E = torch.cat([R.expand(frames, 3, 3), -(R @ centres[..., None])], dim=-1)
    K = pinhole_intrinsics(H, W, dtype=torch.float64)
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 2e-6)):
        g = render_box_room(E[None].to(dtype), K.to(dtype), H, W, DEFAULT_ROOM,
                            static_boxes=[still], moving_boxes=[mover], texture_seed=5)
        mask = g.dynamic_mask[0]
        assert mask[0].sum() >= 50
        p = g.pointmaps[0].double()
        for t in range(1, frames):
            both = mask[0] & mask[t]
            assert both.sum() >= 50
            # Independent check that these pixels see the same box-local point.
            local_t = p[t][both] - t * velocity
            assert (local_t - p[0][both]).abs().max() < (1e-9 if dtype == torch.float64 else 1e-5)
            col0 = g.video[0, 0].permute(1, 2, 0)[both]
            colt = g.video[0, t].permute(1, 2, 0)[both]
            assert (col0 - colt).abs().max() < tol
            static = ~mask[0] & ~mask[t]
            diff = (g.video[0, 0] - g.video[0, t]).abs().amax(0)[static]
            assert diff.max() > 0.05


def test_moving_camera_frames_differ():
    for kind in TRAJECTORIES:
        g = make_scene(1, 5, H, W, trajectory=kind, static_objects=2, seed=3)
        step = (g.video[0, 1:] - g.video[0, :-1]).abs().mean(dim=(1, 2, 3))
        assert step.min() > 0.01, kind


def test_every_surface_is_textured_and_distinct():
    for seed in range(3):
        spec = sample_scene_specs(1, 6, H, W, trajectory="orbit", static_objects=3,
                                  moving_objects=2, seed=seed)[0]
        g = spec.render(H, W, torch.float64)
        faces = _face_ids(g.pointmaps[0], spec)
        assert (faces >= 0).float().mean() > 0.95  # nearly every pixel sits on exactly one face
        rgb = g.video[0].permute(0, 2, 3, 1)  # [T,H,W,3]
        lum = rgb.mean(-1)
        checked = 0
        for face in faces.unique().tolist():
            on = faces == face
            if face < 0 or on.sum() < 100:
                continue
            # Real texture on every well-seen face: relative std of brightness.
            assert lum[on].std() / lum[on].mean() > 0.05, (seed, face)
            checked += 1
        assert checked >= 3
        # Texture and shading scale the base colour: one chromaticity per surface (faces of one
        # box share it), and distinct surfaces have distinct ones.
        surface = torch.where(faces < 6, faces, 6 + (faces - 6) // 6)
        chroma = rgb / rgb.sum(-1, keepdim=True)
        means = []
        for s in surface.unique().tolist():
            on = (surface == s) & (faces >= 0)
            if s < 0 or on.sum() < 20:
                continue
            c = chroma[on]
            assert (c - c[0]).abs().max() < 1e-9
            means.append(c[0])
        means = torch.stack(means)
        dist = torch.cdist(means, means) + torch.eye(len(means))
        assert len(means) >= 4 and dist.min() > 0.01


def test_explicit_colours():
    E = camera_trajectory("dolly", 2, phase=0.5, dtype=torch.float64)
    K = pinhole_intrinsics(H, W, dtype=torch.float64)
    room = Box(DEFAULT_ROOM.lo, DEFAULT_ROOM.hi, colour=(0.5, 0.5, 0.5))
    box = Box((-0.8, 0.6, 0.0), (0.4, 1.5, 1.0), colour=(0.2, 0.4, 0.8))
    spec = BoxRoomSpec(E, K, room, (box,), ())
    g = spec.render(H, W, torch.float64)
    rgb = g.video[0].permute(0, 2, 3, 1)
    faces = _face_ids(g.pointmaps[0], spec)
    on_box = faces >= 6
    assert on_box.sum() > 50
    grey = rgb[faces.lt(6) & faces.ge(0)]
    assert (grey - grey[:, :1]).abs().max() < 1e-12  # r == g == b on a grey room
    chroma = rgb[on_box] / rgb[on_box].sum(-1, keepdim=True)
    expected = torch.tensor([0.2, 0.4, 0.8], dtype=torch.float64) / 1.4
    assert (chroma - expected).abs().max() < 1e-12
    # Faces of the box facing different ways are shaded differently (fixed light, by normal).
    box_faces = [f for f in faces[on_box].unique().tolist() if (faces == f).sum() >= 10]
    assert len(box_faces) >= 2
    means = [rgb[faces == f].mean() for f in box_faces]
    assert max(means) - min(means) > 0.02
    for bad in [(0.1, 0.2), (0.0, 1.5, 0.0), (float("nan"), 0.0, 0.0)]:
        with pytest.raises(ValueError, match="colour"):
            Box((0, 0, 0), (1, 1, 1), colour=bad)


def test_float32_video_matches_float64():
    g64 = make_scene(1, 3, H, W, moving_objects=1, seed=9, dtype=torch.float64)
    g32 = make_scene(1, 3, H, W, moving_objects=1, seed=9, dtype=torch.float32)
    assert g64.video.dtype == torch.float64 and g32.video.dtype == torch.float32
    assert torch.equal(g64.video.float(), g32.video)
    assert (g64.video - g32.video.double()).abs().max() < 1e-6


# --------------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------------

_ITEM_SHAPES = {
    "video": (4, 3, H, W),
    "extrinsics": (4, 3, 4),
    "intrinsics": (4, 3, 3),
    "depths": (4, H, W),
    "pointmaps": (4, H, W, 3),
    "scene_flow": (4, H, W, 3),
    "dynamic_mask": (4, H, W),
}


def test_dataset_item_is_make_scene_element():
    ds = SyntheticSceneDataset(5, 4, H, W, trajectory="mixed", jitter=0.1, static_objects=2,
                               moving_objects=(0, 2), seed=13)
    assert len(ds) == 5
    for i in (0, 1, 2, 4):
        item = ds[i]
        assert set(item) == set(_ITEM_SHAPES)
        kind = TRAJECTORIES[i % 3]  # "mixed" cycles through the kinds (documented)
        moving = ds.moving_objects_of(i)
        assert 0 <= moving <= 2 and len(ds.spec(i).moving_boxes) == moving
        ref = make_scene(i + 1, 4, H, W, trajectory=kind, jitter=0.1, static_objects=2,
                         moving_objects=moving, seed=13)[i]
        for name, shape in _ITEM_SHAPES.items():
            assert item[name].shape == shape, name
            assert torch.equal(item[name], getattr(ref, name)[0]), name
        assert item["video"].dtype == torch.float32 and item["dynamic_mask"].dtype == torch.bool
    assert torch.equal(ds[-1]["video"], ds[4]["video"])
    with pytest.raises(IndexError):
        ds[5]


def test_dataset_moving_objects_range_and_fixed_count():
    ds = SyntheticSceneDataset(40, 2, 8, 12, moving_objects=(1, 3), seed=2)
    counts = [ds.moving_objects_of(i) for i in range(len(ds))]
    assert set(counts) == {1, 2, 3}
    fixed = SyntheticSceneDataset(3, 2, 8, 12, moving_objects=2, static_objects=1, seed=2)
    for i in range(3):
        spec = fixed.spec(i)
        assert len(spec.moving_boxes) == 2 and len(spec.static_boxes) == 1
    single = SyntheticSceneDataset(6, 2, 8, 12, trajectory="orbit", seed=2)
    assert {single.trajectory_of(i) for i in range(6)} == {"orbit"}


def test_dataset_independent_of_order_and_global_rng():
    ds = SyntheticSceneDataset(4, 3, 8, 12, trajectory="mixed", jitter=0.2, moving_objects=1,
                               seed=5)
    torch.manual_seed(0)
    forward = [ds[i] for i in range(4)]
    torch.manual_seed(1234)
    torch.rand(10)
    backward = [ds[i] for i in reversed(range(4))][::-1]
    for a, b in zip(forward, backward):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(forward[0]["video"], forward[1]["video"])
    other_seed = SyntheticSceneDataset(4, 3, 8, 12, trajectory="mixed", jitter=0.2,
                                       moving_objects=1, seed=6)
    assert not torch.equal(other_seed[0]["video"], forward[0]["video"])


def test_dataloader_collate_and_workers():
    ds = SyntheticSceneDataset(4, 4, H, W, moving_objects=1, seed=8)
    batches = list(torch.utils.data.DataLoader(ds, batch_size=2))
    assert len(batches) == 2
    for name, shape in _ITEM_SHAPES.items():
        assert batches[0][name].shape == (2, *shape), name
    assert batches[0]["dynamic_mask"].dtype == torch.bool
    assert torch.equal(batches[1]["depths"][0], ds[2]["depths"])
    # spawn: the dataset must pickle (spawn is macOS's and Windows' default, forkserver Python
    # 3.14's), and no fork() of this multi-threaded process, which Python 3.12 warns can deadlock.
    in_workers = list(torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2,
                                                  multiprocessing_context="spawn"))
    for a, b in zip(batches, in_workers):
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_dataset_float64():
    ds = SyntheticSceneDataset(2, 3, H, W, dtype=torch.float64, moving_objects=1, seed=3)
    item = ds[1]
    for name in ("video", "extrinsics", "intrinsics", "depths", "pointmaps", "scene_flow"):
        assert item[name].dtype == torch.float64, name
    ref = make_scene(2, 3, H, W, moving_objects=1, seed=3, dtype=torch.float64)
    assert torch.equal(item["video"], ref.video[1])
    assert torch.equal(item["pointmaps"], ref.pointmaps[1])
    item32 = SyntheticSceneDataset(2, 3, H, W, moving_objects=1, seed=3)[1]
    assert torch.equal(item["video"].float(), item32["video"])


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(length=0), "length"),
        (dict(length=2.0), "length"),
        (dict(frames=0), "frames"),
        (dict(height=-1), "height"),
        (dict(width=True), "width"),
        (dict(trajectory="spiral"), "trajectory"),
        (dict(jitter=-0.1), "jitter"),
        (dict(jitter=float("inf")), "jitter"),
        (dict(static_objects=-1), "static_objects"),
        (dict(moving_objects=-2), "moving_objects"),
        (dict(moving_objects=(3, 1)), "moving_objects"),
        (dict(moving_objects=(0, 1, 2)), "moving_objects"),
        (dict(seed="0"), "seed"),
        (dict(dtype=torch.int64), "dtype"),
        (dict(dtype=torch.float16), "dtype"),
        (dict(fov_x_deg=180.0), "fov_x_deg"),
    ],
)
def test_dataset_bad_arguments(kwargs, name):
    args = dict(length=2, frames=2, height=8, width=12)
    args.update(kwargs)
    with pytest.raises(ValueError) as info:
        SyntheticSceneDataset(args.pop("length"), args.pop("frames"), args.pop("height"),
                              args.pop("width"), **args)
    message = str(info.value)
    assert name in message and "must be" in message
    assert repr(kwargs[name]) in message


@pytest.mark.parametrize("kw,expected", [
    ({"lo": 5}, "Box.lo must be 3 numbers, got 5"),
    ({"lo": "abc"}, "Box.lo must be 3 numbers, got 'abc'"),
    ({"hi": (1, 1, None)}, r"Box.hi must be 3 numbers, got \(1, 1, None\)"),
    ({"velocity": (True, 0, 0)}, r"Box.velocity must be 3 numbers, got \(True, 0, 0\)"),
    ({"colour": "red"}, r"Box.colour must be 3 numbers in \[0, 1\] \(or None\), got 'red'"),
])
def test_box_names_the_field_that_is_not_three_numbers(kw, expected):
    # These once surfaced as float()'s or iter()'s own TypeError / ValueError, naming no field.
    with pytest.raises(ValueError, match=f"^{expected}$"):
        Box(**{"lo": (0, 0, 0), "hi": (1, 1, 1), **kw})


def test_box_takes_numpy_and_torch_vectors():
    box = Box(torch.zeros(3, dtype=torch.float64), np.ones(3), [0, 0, 0.5], torch.tensor([1, 0, 0]))
    assert box == Box((0, 0, 0), (1, 1, 1), (0, 0, 0.5), (1, 0, 0))
    assert all(type(v) is float for v in box.lo + box.hi + box.velocity + box.colour)


def test_camera_centres_refuses_a_bare_rotation():
    with pytest.raises(ValueError,
                       match=r"extrinsics must be \[...,3,4\] or \[...,4,4\]: \(2, 3, 3\)"):
        camera_centres(torch.eye(3).expand(2, 3, 3))
