"""Procedural 4D "box room" scenes with exact geometry and rendered RGB video.

A scene is an axis-aligned room (the cameras are inside it and see its inner walls, floor and
ceiling) holding a few static axis-aligned boxes standing on the floor and, optionally, boxes that
slide across the floor at constant velocity. Every pixel is ray cast analytically, so cameras,
depths, point maps, scene flow and the dynamic mask are exact (up to floating-point rounding), and
each pixel's RGB colour is the colour of the surface point it hits, so geometry can be recovered
from the video.

What they are for:

* ground truth for the tests of the ops and rewards (a smooth trajectory has a camera motion
  error of ~0; the exact point maps reproject onto the exact depths);
* the demo;
* training data for the tiny geometry models (:class:`SyntheticSceneDataset` feeds a
  ``DataLoader``).

Texture model (the ``video`` field, ``[B,T,3,H,W]`` in [0, 1]). Surfaces are the room's six inner
faces (0 x-lo, 1 x-hi, 2 ceiling y-lo, 3 floor y-hi, 4 z-lo, 5 z-hi), then the static boxes, then
the moving boxes. A pixel's colour depends only on the surface it hits, on the hit face's
orientation and on the hit point in the surface's own frame: the world point for the room and
static boxes, ``p - t*velocity`` for a moving box at frame t. So static texture stays put across
frames, a moving box's texture moves rigidly with it, and nothing depends on the camera (no
view-dependent lighting)::

    rgb = base[s] * (0.4 + 0.6 * waves) * (0.75 + 0.25 * checker) * (0.7 + 0.3 * n.L)

* ``base[s]``: the surface's base colour, HSV with hue ``hue0 + s * 0.618...`` (mod 1; surfaces
  have distinct hues), saturation 0.35..0.8, value 0.7..1; or the Box's ``colour`` when given
  (the room's ``colour`` applies to all six faces).
* ``(a, b)``: the hit point's two coordinates in the face's plane (the axes after the normal's,
  cyclically: (y, z), (z, x) or (x, y)), rotated by a random angle and shifted by a random
  0..10 m per surface: ``(u, v)``, metres.
* ``waves = 0.5 + sum_k w_k sin(2 pi f_k (u cos g_k + v sin g_k)) / (2 sum_k w_k)`` in [0, 1],
  four sinusoids at 0.55, 1.1, 2.1 and 3.7 cycles per metre (weights 1, 0.8, 0.6, 0.5).
* ``checker``: parity of ``floor(0.75 u) + floor(0.75 v)`` (squares of 2/3 m).
* ``n.L``: Lambert-like term of the viewed face's normal (into the room, out of a box) and a fixed
  light direction from above, ``(0.5, -0.75, 0.25) / |.|``; unclamped, so the six axis
  orientations get six distinct brightnesses and adjacent faces differ.

The texture and shading factors are scalars, so every pixel of a surface has the chromaticity of
its base colour. Per-surface parameters are drawn from ``(texture_seed, s)`` (``texture_seed`` is
part of :class:`BoxRoomSpec`, drawn from the scene seed), so the same seed gives a bitwise
identical video. No anti-aliasing: each pixel is the colour at its centre ray's hit point.

Conventions: see :mod:`vggrpo.data.scene` and docs/conventions.md.

Everything is computed in float64 internally (rotations are built from angles / Rodrigues there so
they stay orthonormal to rounding; the video too) and cast to the requested dtype at the end.
"""

from __future__ import annotations

import colorsys
import dataclasses
import math
import operator
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor
from torch.utils.data import Dataset

from .._checks import is_int
from ..geometry.cameras import (
    camera_centres,
    geometry_dtype,
    pinhole_intrinsics,
    pixel_rays,
    rotate_by_transpose,
    unproject_depth,
)
from ..seeds import element_seed
from .scene import CAMERA_CLEARANCE, DEFAULT_ROOM, Box, SceneGeometry, Vec3
from .trajectories import TRAJECTORIES, camera_trajectory

__all__ = [
    "Box",
    "DEFAULT_ROOM",
    "TRAJECTORIES",
    "SceneGeometry",
    "BoxRoomSpec",
    "pinhole_intrinsics",
    "camera_trajectory",
    "camera_centres",
    "unproject_depth",
    "render_box_room",
    "sample_box_layout",
    "sample_scene_specs",
    "make_scene",
    "SyntheticSceneDataset",
]

# Smallest per-frame speed of a sampled moving box (metres per frame): above the rewards' default
# flow_threshold of 0.1, so moving pixels are classified as dynamic.
_MIN_MOVING_SPEED = 0.15
_MAX_MOVING_SPEED = 0.3


# --------------------------------------------------------------------------------------------------
# Rays, unprojection, rendering
# --------------------------------------------------------------------------------------------------


def _max3(t: Tensor) -> Tuple[Tensor, Tensor]:
    """Max over the last dim (of size 3) and its index, ties to the lowest index. The same value
    as ``amax(-1)``, elementwise, and cheaper than a reduction over 3 elements."""
    x, y, z = t.unbind(-1)
    xy = torch.maximum(x, y)
    index = torch.where(z > xy, 2, (y > x).long())
    return torch.maximum(xy, z), index


def _min3(t: Tensor, with_index: bool = True) -> Tuple[Tensor, Optional[Tensor]]:
    """Min over the last dim (of size 3) and, if asked, its index, ties to the lowest index (see
    _max3)."""
    x, y, z = t.unbind(-1)
    xy = torch.minimum(x, y)
    index = torch.where(z < xy, 2, (y < x).long()) if with_index else None
    return torch.minimum(xy, z), index


def _box_bounds(
    static_boxes: Sequence[Box], moving_boxes: Sequence[Box], frames: int, device
) -> Tuple[Tensor, Tensor, Tensor]:
    """Per-frame corners ``lo, hi [T,M,3]`` (static first, then moving) and velocities ``[M,3]``."""
    boxes = list(static_boxes) + list(moving_boxes)
    f64 = torch.float64
    if not boxes:
        empty = torch.zeros(frames, 0, 3, dtype=f64, device=device)
        return empty, empty.clone(), torch.zeros(0, 3, dtype=f64, device=device)
    lo0 = torch.tensor([b.lo for b in boxes], dtype=f64, device=device)
    hi0 = torch.tensor([b.hi for b in boxes], dtype=f64, device=device)
    vel = torch.tensor([b.velocity for b in boxes], dtype=f64, device=device)
    vel[: len(static_boxes)] = 0.0  # a "static" box is static whatever its velocity field says
    t = torch.arange(frames, dtype=f64, device=device)[:, None, None]
    return lo0 + t * vel, hi0 + t * vel, vel


# ---- Texture model (see the module docstring) ----------------------------------------------------

_ROOM_FACES = 6  # surfaces 0..5: the room's x-lo, x-hi, y-lo (ceiling), y-hi (floor), z-lo, z-hi
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0  # hue step between consecutive surfaces
# The texture's sinusoids: (frequency in cycles per metre, direction in degrees in the face's
# texture plane, weight). Every surface uses them in its own randomly rotated and shifted frame.
_WAVES = ((0.55, 10.0, 1.0), (1.1, 70.0, 0.8), (2.1, 130.0, 0.6), (3.7, 35.0, 0.5))
_CHECKER_FREQ = 0.75  # cycles per metre: checker squares of 2/3 m
_LIGHT = tuple(c / math.sqrt(0.875) for c in (0.5, -0.75, 0.25))  # unit, from above (y is down)
# Brightness of the six face orientations, indexed 2*axis + (ray direction along axis > 0); the
# viewed face's normal is -sign(d_axis) e_axis, so this is 0.7 + 0.3 * n.L (0.46 .. 0.94, six
# distinct values).
_FACE_SHADE = tuple(0.7 + 0.3 * sign * _LIGHT[a] for a in range(3) for sign in (1.0, -1.0))


def _surface_table(texture_seed: int, room: Box, boxes: Sequence[Box], device) -> Tensor:
    """Per-surface texture parameters ``[7, S]`` (float64), one column per surface.

    Rows: cos and sin of the texture frame's rotation, its shift along the two axes (metres),
    base colour (3). Surface ``s`` is drawn from a generator seeded from ``(texture_seed, s)``
    only; its hue is ``hue0 + s * golden ratio`` (mod 1) so that surfaces are distinct.
    """
    f64 = torch.float64
    hue0 = float(
        torch.rand((), generator=torch.Generator().manual_seed(element_seed(texture_seed, -1)),
                   dtype=f64)
    )
    cols = []
    for s in range(_ROOM_FACES + len(boxes)):
        r = torch.rand(5, generator=torch.Generator().manual_seed(element_seed(texture_seed, s)),
                       dtype=f64).tolist()
        owner = room if s < _ROOM_FACES else boxes[s - _ROOM_FACES]
        if owner.colour is not None:
            base = owner.colour
        else:
            hue = (hue0 + s * _GOLDEN) % 1.0
            base = colorsys.hsv_to_rgb(hue, 0.35 + 0.45 * r[0], 0.7 + 0.3 * r[1])
        angle = 2.0 * math.pi * r[2]
        cols.append([math.cos(angle), math.sin(angle), 10.0 * r[3], 10.0 * r[4], *base])
    return torch.tensor(cols, dtype=f64, device=device).t().contiguous()


def _shade_pixels(
    local: Tensor, winner: Tensor, axis: Tensor, dirs: Tensor, table: Tensor
) -> Tensor:
    """RGB ``[B,T,3,H,W]`` (float64) of hit points ``local`` ``[B,T,H,W,3]``.

    ``local`` is each hit point in its surface's own frame (the world point, minus ``t*velocity``
    on a moving box), ``winner`` -1 (room) or the box index, ``axis`` the hit face's normal axis,
    ``dirs`` ``[B,T,H,W,3]`` the ray directions, whose sign along ``axis`` tells which of the two
    faces was hit.
    """
    B, T, H, W = winner.shape
    dtype, device = local.dtype, local.device
    x, y, z = local.unbind(-1)
    px, py, pz = (dirs > 0).unbind(-1)
    on_x, on_y = axis == 0, axis == 1
    # Room face index 2*axis + (d_axis > 0): 0 x-lo ... 5 z-hi (the far slab of a ray going +).
    face = torch.where(on_x, px.long(), torch.where(on_y, 2 + py.long(), 4 + pz.long()))
    face = face.reshape(-1)
    surface = torch.where(winner.reshape(-1) < 0, face, winner.reshape(-1) + _ROOM_FACES)
    shade = torch.tensor(_FACE_SHADE, dtype=dtype, device=device).index_select(0, face)
    # The face's two in-plane coordinates, in cyclic order after the normal's axis, rotated and
    # shifted into the surface's texture frame.
    a = torch.where(on_x, y, torch.where(on_y, z, x)).reshape(-1)
    b = torch.where(on_x, z, torch.where(on_y, x, y)).reshape(-1)
    cos, sin, du, dv = (table[i].index_select(0, surface) for i in range(4))
    u = torch.addcmul(torch.addcmul(du, cos, a), sin, b, value=-1.0)
    v = torch.addcmul(torch.addcmul(dv, sin, a), cos, b)
    waves = torch.zeros_like(u)
    total = sum(w for _, _, w in _WAVES)
    for freq, degrees, weight in _WAVES:
        ku = 2.0 * math.pi * freq * math.cos(math.radians(degrees))
        kv = 2.0 * math.pi * freq * math.sin(math.radians(degrees))
        waves.add_(torch.sin(torch.add(u * ku, v, alpha=kv)), alpha=weight / (2.0 * total))
    waves += 0.5  # in [0, 1]
    checker = torch.floor(u * _CHECKER_FREQ) + torch.floor(v * _CHECKER_FREQ)
    checker -= 2.0 * torch.floor(0.5 * checker)  # parity: 0 or 1
    # At most 1 * 1 * 1 * max(shade) < 1 and at least 0.4 * 0.75 * min(shade) > 0: in [0, 1].
    intensity = ((0.4 + 0.6 * waves) * (0.75 + 0.25 * checker) * shade).view(B, T, H, W)
    out = torch.empty(B, T, 3, H, W, dtype=dtype, device=device)
    for c in range(3):
        colour = table[4 + c].index_select(0, surface).view(B, T, H, W)
        torch.mul(colour, intensity, out=out[:, :, c])
    return out


def render_box_room(
    extrinsics: Tensor,
    intrinsics: Tensor,
    height: int,
    width: int,
    room: Box = DEFAULT_ROOM,
    static_boxes: Sequence[Box] = (),
    moving_boxes: Sequence[Box] = (),
    *,
    texture_seed: int = 0,
) -> SceneGeometry:
    """Ray cast one box-room scene from every camera: exact geometry and the RGB video.

    ``extrinsics`` ``[B,T,3,4]`` (or ``[B,T,4,4]``) camera-from-world, ``intrinsics`` ``[B,T,3,3]``
    or one ``[3,3]`` for all; all B videos see the same scene. ``room`` is seen from inside (every
    ray hits it), ``static_boxes`` and ``moving_boxes`` from outside; a moving box is at
    ``[lo + t*velocity, hi + t*velocity]`` at frame t (the velocity of static boxes is ignored).
    Rays leave the camera centre through pixel centres; the hit with the smallest positive ray
    parameter wins.

    ``texture_seed`` picks the surfaces' colours and textures (boxes with an explicit ``colour``
    keep it); surface parameters depend on ``texture_seed`` and the surface's index only (room
    faces 0..5, then the static boxes, then the moving boxes), see the module docstring.

    Every camera must be strictly inside the room and outside every box at its frame (ValueError
    otherwise), which makes every depth finite and > 0.

    Returns a :class:`SceneGeometry` in the dtype of ``extrinsics`` (float16 / bfloat16 give
    float32); the computation runs in float64.
    """
    if extrinsics.dim() != 4 or extrinsics.shape[-2:] not in ((3, 4), (4, 4)):
        raise ValueError(f"extrinsics must be [B,T,3,4] or [B,T,4,4]: {tuple(extrinsics.shape)}")
    if height < 1 or width < 1:
        raise ValueError(f"height and width must be >= 1, got {height}x{width}")
    B, T = extrinsics.shape[:2]
    if intrinsics.shape == (3, 3):
        intrinsics = intrinsics.expand(B, T, 3, 3)
    if intrinsics.shape != (B, T, 3, 3):
        raise ValueError(
            f"intrinsics must be [3,3] or [B,T,3,3] = [{B},{T},3,3], got {tuple(intrinsics.shape)}"
        )
    out_dtype = geometry_dtype(extrinsics.dtype)
    device = extrinsics.device
    f64 = torch.float64

    E = extrinsics[..., :3, :4].to(f64)
    K = intrinsics.to(device=device, dtype=f64)
    R, t = E[..., :3], E[..., 3]
    C = -(R.transpose(-1, -2) @ t[..., None])[..., 0]  # [B,T,3]

    room_lo = torch.tensor(room.lo, dtype=f64, device=device)
    room_hi = torch.tensor(room.hi, dtype=f64, device=device)
    if not bool(((C > room_lo) & (C < room_hi)).all()):
        raise ValueError("every camera centre must be strictly inside the room")
    lo, hi, vel = _box_bounds(static_boxes, moving_boxes, T, device)  # [T,M,3]
    if lo.shape[1] > 0:
        inside = ((C[:, :, None, :] >= lo[None]) & (C[:, :, None, :] <= hi[None])).all(-1)
        if bool(inside.any()):
            raise ValueError("a camera centre is inside (or on) a box; cameras must be outside")

    rays_cam = pixel_rays(K, height, width)  # [B,T,H,W,3], z = 1
    dirs = rotate_by_transpose(rays_cam, R)  # world directions
    # Slab test with exact zeros nudged: 1/0 would give inf*0 = nan when the origin lies on a slab.
    tiny = 1e-300
    safe = torch.where(dirs.abs() < tiny, torch.full_like(dirs, tiny), dirs)
    inv = 1.0 / safe
    origin = C[:, :, None, None, :]  # [B,T,1,1,3]

    # Inside the room the exit parameter is the nearest far-slab crossing; since the camera is
    # strictly inside, it is finite and > 0 for every ray. `axis` tracks the axis of the winning
    # slab crossing (the room's exit, a box's entry): the hit face's normal axis.
    t1 = (room_lo - origin) * inv
    t2 = (room_hi - origin) * inv
    best, axis = _min3(torch.maximum(t1, t2))  # [B,T,H,W]
    winner = torch.full(best.shape, -1, dtype=torch.long, device=device)

    for m in range(lo.shape[1]):
        blo = lo[:, m][None, :, None, None, :]  # [1,T,1,1,3]
        bhi = hi[:, m][None, :, None, None, :]
        t1 = (blo - origin) * inv
        t2 = (bhi - origin) * inv
        near, near_axis = _max3(torch.minimum(t1, t2))
        far, _ = _min3(torch.maximum(t1, t2), with_index=False)
        hit = (near <= far) & (near > 0) & (near < best)
        best = torch.where(hit, near, best)
        axis = torch.where(hit, near_axis, axis)
        winner.masked_fill_(hit, m)

    # rays_cam has z = 1, so the ray parameter is the z-depth. The point is computed exactly as
    # unproject_depth does, so the two agree to the last bits.
    depths = best
    pointmaps = rotate_by_transpose(depths[..., None] * rays_cam - t[:, :, None, None, :], R)

    n_static = len(static_boxes)
    dynamic = winner >= n_static
    vel_table = torch.cat([torch.zeros(1, 3, dtype=f64, device=device), vel], dim=0)
    flow = vel_table[(winner + 1).clamp_min(0)]
    flow = torch.where(dynamic[..., None], flow, torch.zeros_like(flow))

    table = _surface_table(int(texture_seed), room, list(static_boxes) + list(moving_boxes),
                           device)
    if len(moving_boxes) > 0:  # each hit point in its surface's own frame
        frame = torch.arange(T, dtype=f64, device=device)[None, :, None, None, None]
        local = pointmaps - frame * flow
    else:
        local = pointmaps
    video = _shade_pixels(local, winner, axis, safe, table)

    return SceneGeometry(
        extrinsics=E.to(out_dtype),
        intrinsics=K.to(out_dtype),
        depths=depths.to(out_dtype),
        pointmaps=pointmaps.to(out_dtype),
        scene_flow=flow.to(out_dtype),
        dynamic_mask=dynamic,
        video=video.to(out_dtype),
    )


# --------------------------------------------------------------------------------------------------
# Random scenes
# --------------------------------------------------------------------------------------------------


def _uniform(generator: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=generator, dtype=torch.float64))


def _frame_bounds(box: Box, frames: int) -> Tensor:
    """``[T,2,3]``: the box's (lo, hi) at every frame."""
    lo = torch.tensor(box.lo, dtype=torch.float64)
    hi = torch.tensor(box.hi, dtype=torch.float64)
    shift = torch.arange(frames, dtype=torch.float64)[:, None] * torch.tensor(
        box.velocity, dtype=torch.float64
    )
    return torch.stack([lo + shift, hi + shift], dim=1)


def _overlaps_any(bounds: Tensor, placed: Tensor, gap: float) -> bool:
    """Does a box ``[T,2,3]`` come within ``gap`` of any of ``placed`` ``[N,T,2,3]`` at a frame?"""
    if placed.shape[0] == 0:
        return False
    apart = (bounds[None, :, 0] >= placed[:, :, 1] + gap) | (
        placed[:, :, 0] >= bounds[None, :, 1] + gap
    )
    # Two boxes are clear of each other when they are apart along at least one axis.
    return bool((~apart.any(-1)).any())


def _near_cameras(bounds: Tensor, cams: Tensor, margin: float) -> bool:
    """Is camera t (``cams`` ``[T,3]``) within ``margin`` of the box at frame t, for some t?"""
    inside = (cams >= bounds[:, 0] - margin) & (cams <= bounds[:, 1] + margin)
    return bool(inside.all(-1).any())


def _centre_in_view(point: Vec3, extrinsics: Tensor, intrinsics: Tensor, height: int,
                    width: int) -> Tensor:
    """Per frame: does ``point`` project into the image, at least 0.5 m ahead of the camera?"""
    p = torch.tensor(point, dtype=torch.float64)
    cam = (extrinsics[..., :3] @ p[:, None])[..., 0] + extrinsics[..., 3]  # [T,3]
    z = cam[:, 2]
    zs = z.clamp_min(1e-9)
    u = intrinsics[..., 0, 0] * cam[:, 0] / zs + intrinsics[..., 0, 1] * cam[:, 1] / zs
    u = u + intrinsics[..., 0, 2]
    v = intrinsics[..., 1, 1] * cam[:, 1] / zs + intrinsics[..., 1, 2]
    in_u = (u >= 0) & (u < width)
    in_v = (v >= 0) & (v < height)
    return (z > 0.5) & in_u & in_v


def sample_box_layout(
    extrinsics: Tensor,
    intrinsics: Tensor,
    height: int,
    width: int,
    *,
    static_objects: int = 2,
    moving_objects: int = 0,
    room: Box = DEFAULT_ROOM,
    generator: Optional[torch.Generator] = None,
    max_tries: int = 1000,
) -> Tuple[Tuple[Box, ...], Tuple[Box, ...]]:
    """Random boxes standing on the room's floor, placed where the cameras see them.

    ``extrinsics`` ``[T,3,4]`` camera-from-world and ``intrinsics`` ``[3,3]`` or ``[T,3,3]`` of one
    video of ``height x width`` pixels. Returns ``(static_boxes, moving_boxes)``.

    Footprints are 0.4..1.2 m, heights 0.3..1.1 m. A moving box slides across the floor in a random
    horizontal direction at 0.15..0.3 m per frame (slower only when a long video would not fit in
    the room). At every frame, boxes keep 0.1 m from each other and 0.25 m from that frame's camera
    centre; a moving box's whole sweep stays 0.1 m inside the walls. So that the objects are in the
    pictures, the first ``max_tries // 2`` draws of a box also require its centre to project into
    the image (0.5 m or more ahead) in at least one frame for a static box, at the middle frame
    ``T // 2`` for a moving one (occlusion is not checked). Rejection sampling with ``generator``
    (a generator seeded with 0 when None); RuntimeError when a box cannot be placed in
    ``max_tries`` draws (too many objects for the room).
    """
    if static_objects < 0 or moving_objects < 0:
        raise ValueError("object counts must be >= 0")
    if extrinsics.dim() != 3 or extrinsics.shape[-2:] not in ((3, 4), (4, 4)):
        raise ValueError(f"extrinsics must be [T,3,4] or [T,4,4]: {tuple(extrinsics.shape)}")
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    E = extrinsics.detach().to("cpu", torch.float64)[..., :3, :4]
    K = intrinsics.detach().to("cpu", torch.float64)
    frames = E.shape[0]
    cams = camera_centres(E)
    wall_gap, box_gap = 0.1, 0.1
    floor = room.hi[1]
    placed = torch.zeros(0, frames, 2, 3, dtype=torch.float64)
    static: list[Box] = []
    moving: list[Box] = []
    steps = max(frames - 1, 0)
    for index in range(static_objects + moving_objects):
        is_moving = index >= static_objects
        for attempt in range(max_tries):
            sx, sz = _uniform(generator, 0.4, 1.2), _uniform(generator, 0.4, 1.2)
            sy = _uniform(generator, 0.3, 1.1)
            velocity = (0.0, 0.0, 0.0)
            if is_moving:
                heading = _uniform(generator, 0.0, 2.0 * math.pi)
                speed = _uniform(generator, _MIN_MOVING_SPEED, _MAX_MOVING_SPEED)
                # Long videos: slow down so the sweep still fits in the room.
                span = min(room.hi[0] - room.lo[0] - sx, room.hi[2] - room.lo[2] - sz)
                span -= 2 * wall_gap
                if steps > 0:
                    speed = min(speed, 0.8 * span / steps)
                velocity = (speed * math.sin(heading), 0.0, speed * math.cos(heading))
            travel_x, travel_z = velocity[0] * steps, velocity[2] * steps
            x_lo = room.lo[0] + wall_gap - min(travel_x, 0.0)
            x_hi = room.hi[0] - wall_gap - sx - max(travel_x, 0.0)
            z_lo = room.lo[2] + wall_gap - min(travel_z, 0.0)
            z_hi = room.hi[2] - wall_gap - sz - max(travel_z, 0.0)
            if x_hi <= x_lo or z_hi <= z_lo:
                continue
            x0, z0 = _uniform(generator, x_lo, x_hi), _uniform(generator, z_lo, z_hi)
            box = Box((x0, floor - sy, z0), (x0 + sx, floor, z0 + sz), velocity)
            bounds = _frame_bounds(box, frames)
            if _overlaps_any(bounds, placed, box_gap):
                continue
            if _near_cameras(bounds, cams, CAMERA_CLEARANCE):
                continue
            # Visibility is a preference: after half the tries a box may land out of view rather
            # than make a crowded room fail.
            if attempt < max_tries // 2:
                if is_moving:
                    mid = frames // 2
                    centre = tuple(float(c) for c in bounds[mid].mean(0))
                    K_mid = K if K.dim() == 2 else K[mid:mid + 1]
                    seen = bool(_centre_in_view(centre, E[mid:mid + 1], K_mid, height, width).any())
                else:
                    seen = bool(_centre_in_view(box.centre, E, K, height, width).any())
                if not seen:
                    continue
            placed = torch.cat([placed, bounds[None]], dim=0)
            (moving if is_moving else static).append(box)
            break
        else:
            raise RuntimeError(
                f"could not place object {index} in {max_tries} tries; use fewer objects"
            )
    return tuple(static), tuple(moving)


# eq=False: field-wise == on tensors is ambiguous; compare fields with torch.equal instead.
@dataclass(frozen=True, eq=False)
class BoxRoomSpec:
    """Everything needed to render one video of a box-room scene.

    ``extrinsics`` ``[T,3,4]`` and ``intrinsics`` ``[3,3]`` (float64), the ``room``, the boxes and
    the ``texture_seed`` of the surfaces' colours and textures (see :func:`render_box_room`).
    """

    extrinsics: Tensor
    intrinsics: Tensor
    room: Box
    static_boxes: Tuple[Box, ...]
    moving_boxes: Tuple[Box, ...]
    texture_seed: int = 0

    def render(self, height: int, width: int, dtype: torch.dtype = torch.float32) -> SceneGeometry:
        """:func:`render_box_room` of this spec as a batch of one (``B = 1``)."""
        T = self.extrinsics.shape[0]
        geo = render_box_room(
            self.extrinsics[None].to(torch.float64),
            self.intrinsics.to(torch.float64).expand(1, T, 3, 3),
            height,
            width,
            self.room,
            self.static_boxes,
            self.moving_boxes,
            texture_seed=self.texture_seed,
        )
        return geo.to(dtype=geometry_dtype(dtype))


def sample_scene_specs(
    batch: int = 1,
    frames: int = 8,
    height: int = 60,
    width: int = 104,
    *,
    trajectory: str = "dolly",
    jitter: float = 0.0,
    static_objects: int = 2,
    moving_objects: int = 0,
    seed: int = 0,
    fov_x_deg: float = 60.0,
) -> Tuple[BoxRoomSpec, ...]:
    """The random scene descriptions behind :func:`make_scene` (same arguments), one per video.

    Element ``b`` draws from its own generator seeded from ``(seed, b)``: the room size (width
    7..9 m, depth 9..11 m, height 3 m), the trajectory phase, the camera jitter noise, the object
    placement and, last, the texture seed.
    """
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    return tuple(
        _sample_spec(
            element_seed(int(seed), b), frames, height, width, trajectory=trajectory,
            jitter=jitter, static_objects=static_objects, moving_objects=moving_objects,
            fov_x_deg=fov_x_deg,
        )
        for b in range(batch)
    )


def _sample_spec(
    element_seed: int,
    frames: int,
    height: int,
    width: int,
    *,
    trajectory: str,
    jitter: float,
    static_objects: int,
    moving_objects: int,
    fov_x_deg: float,
) -> BoxRoomSpec:
    """One element of :func:`sample_scene_specs`, from its own generator seed."""
    K = pinhole_intrinsics(height, width, fov_x_deg, dtype=torch.float64)
    gen = torch.Generator().manual_seed(element_seed)
    hx, hz = _uniform(gen, 3.5, 4.5), _uniform(gen, 4.5, 5.5)
    room = Box((-hx, -1.5, -hz), (hx, 1.5, hz))
    phase = _uniform(gen, 0.0, 1.0)
    E = camera_trajectory(
        trajectory, frames, jitter=jitter, phase=phase, room=room, generator=gen,
        dtype=torch.float64,
    )
    static, moving = sample_box_layout(
        E, K, height, width, static_objects=static_objects,
        moving_objects=moving_objects, room=room, generator=gen,
    )
    # Drawn last, so the geometry of a seed does not depend on the texture model.
    texture_seed = int(torch.randint(0, 2**62, (), generator=gen))
    return BoxRoomSpec(E, K, room, static, moving, texture_seed)


def make_scene(
    batch: int = 1,
    frames: int = 8,
    height: int = 60,
    width: int = 104,
    *,
    trajectory: str = "dolly",
    jitter: float = 0.0,
    static_objects: int = 2,
    moving_objects: int = 0,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    fov_x_deg: float = 60.0,
) -> SceneGeometry:
    """A batch of random box-room videos with exact geometry and rendered RGB.

    ``batch`` videos of ``frames`` frames at ``height x width`` pixels; ``trajectory`` is one of
    ``"dolly"``, ``"orbit"``, ``"pan"`` (see :func:`camera_trajectory`, which also explains
    ``jitter``); ``static_objects`` / ``moving_objects`` boxes per video (see
    :func:`sample_box_layout`). Each video has its own room size, trajectory phase, object
    placement and textures, all derived from ``seed`` and its batch index (deterministic; element
    b does not depend on ``batch``). Returns a :class:`SceneGeometry` in ``dtype`` (float32 or
    float64).
    Equivalent to rendering :func:`sample_scene_specs` with the same arguments.
    """
    specs = sample_scene_specs(
        batch, frames, height, width, trajectory=trajectory, jitter=jitter,
        static_objects=static_objects, moving_objects=moving_objects, seed=seed,
        fov_x_deg=fov_x_deg,
    )
    return SceneGeometry.cat([spec.render(height, width, dtype) for spec in specs])


# --------------------------------------------------------------------------------------------------
# torch Dataset
# --------------------------------------------------------------------------------------------------


class SyntheticSceneDataset(Dataset):
    """An indexable set of ``length`` random box-room videos, for ``torch.utils.data.DataLoader``.

    Item ``i`` is a dict of tensors without the batch dimension: ``video [T,3,H,W]``,
    ``extrinsics [T,3,4]``, ``intrinsics [T,3,3]``, ``depths [T,H,W]``, ``pointmaps [T,H,W,3]``,
    ``scene_flow [T,H,W,3]`` (``dtype``) and ``dynamic_mask [T,H,W]`` (bool), so the default
    collate gives the batched ``[B,...]`` layout of :class:`SceneGeometry`.

    Item ``i`` depends on ``(seed, i)`` only (not on the order of access, the global RNG or the
    worker process): it is element ``i`` of ``make_scene(batch=i+1, frames, height, width,
    trajectory=self.trajectory_of(i), moving_objects=self.moving_objects_of(i), seed=seed, ...)``
    with the other arguments as given here.

    * ``trajectory``: ``"dolly"``, ``"orbit"``, ``"pan"`` or ``"mixed"``, which cycles through
      those three by index (item ``i`` gets ``TRAJECTORIES[i % 3]``).
    * ``moving_objects``: an int, or an inclusive ``(lo, hi)`` range from which each item draws its
      count (uniformly, from a hash of ``(seed, i)``).
    * ``jitter``, ``static_objects``, ``fov_x_deg``: as for :func:`make_scene`.
    * ``dtype``: ``torch.float32`` or ``torch.float64``.

    Rendering happens in ``__getitem__`` (CPU, float64 inside); a bad argument raises ValueError
    at construction.
    """

    def __init__(
        self,
        length: int,
        frames: int = 8,
        height: int = 60,
        width: int = 104,
        *,
        trajectory: str = "dolly",
        jitter: float = 0.0,
        static_objects: int = 2,
        moving_objects: Union[int, Tuple[int, int]] = 0,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
        fov_x_deg: float = 60.0,
    ) -> None:
        def bad(name: str, expected: str, value) -> ValueError:
            return ValueError(
                f"SyntheticSceneDataset: {name} must be {expected}, got {value!r}"
            )

        for name, value in (("length", length), ("frames", frames), ("height", height),
                            ("width", width)):
            if not is_int(value) or value < 1:
                raise bad(name, "an int >= 1", value)
        kinds = TRAJECTORIES + ("mixed",)
        if trajectory not in kinds:
            raise bad("trajectory", f"one of {kinds}", trajectory)
        if isinstance(jitter, bool) or not isinstance(jitter, (int, float)) or not (
            math.isfinite(jitter) and jitter >= 0.0
        ):
            raise bad("jitter", "a finite float >= 0", jitter)
        if not is_int(static_objects) or static_objects < 0:
            raise bad("static_objects", "an int >= 0", static_objects)
        if is_int(moving_objects) and moving_objects >= 0:
            moving_range = (moving_objects, moving_objects)
        elif (
            isinstance(moving_objects, (tuple, list))
            and len(moving_objects) == 2
            and all(is_int(v) for v in moving_objects)
            and 0 <= moving_objects[0] <= moving_objects[1]
        ):
            moving_range = (int(moving_objects[0]), int(moving_objects[1]))
        else:
            raise bad("moving_objects", "an int >= 0 or a (lo, hi) pair with 0 <= lo <= hi",
                      moving_objects)
        if not is_int(seed):
            raise bad("seed", "an int", seed)
        if dtype not in (torch.float32, torch.float64):
            raise bad("dtype", "torch.float32 or torch.float64", dtype)
        if isinstance(fov_x_deg, bool) or not isinstance(fov_x_deg, (int, float)) or not (
            0.0 < fov_x_deg < 180.0
        ):
            raise bad("fov_x_deg", "a float in (0, 180)", fov_x_deg)
        self.length = length
        self.frames, self.height, self.width = frames, height, width
        self.trajectory = trajectory
        self.jitter = float(jitter)
        self.static_objects = static_objects
        self.moving_objects = moving_range
        self.seed = seed
        self.dtype = dtype
        self.fov_x_deg = float(fov_x_deg)

    def __len__(self) -> int:
        return self.length

    def _index(self, index: int) -> int:
        try:
            index = operator.index(index)
        except TypeError:
            raise TypeError(f"SyntheticSceneDataset index must be an int, got {index!r}") from None
        if index < 0:
            index += self.length
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} items")
        return index

    def trajectory_of(self, index: int) -> str:
        """The trajectory kind of item ``index``."""
        index = self._index(index)
        if self.trajectory == "mixed":
            return TRAJECTORIES[index % len(TRAJECTORIES)]
        return self.trajectory

    def moving_objects_of(self, index: int) -> int:
        """The number of moving boxes of item ``index``."""
        index = self._index(index)
        lo, hi = self.moving_objects
        # A hash separate from the scene's own generator, so that the count does not shift the
        # scene's draws.
        return lo + element_seed(self.seed ^ 0x6D6F76696E67, index) % (hi - lo + 1)

    def spec(self, index: int) -> BoxRoomSpec:
        """The scene description of item ``index``."""
        index = self._index(index)
        return _sample_spec(
            element_seed(self.seed, index), self.frames, self.height, self.width,
            trajectory=self.trajectory_of(index), jitter=self.jitter,
            static_objects=self.static_objects, moving_objects=self.moving_objects_of(index),
            fov_x_deg=self.fov_x_deg,
        )

    def __getitem__(self, index: int) -> Dict[str, Tensor]:
        g = self.spec(index).render(self.height, self.width, self.dtype)
        return {f.name: getattr(g, f.name)[0] for f in dataclasses.fields(g)}

    def __repr__(self) -> str:
        return (
            f"SyntheticSceneDataset(length={self.length}, frames={self.frames}, "
            f"height={self.height}, width={self.width}, trajectory={self.trajectory!r}, "
            f"jitter={self.jitter}, static_objects={self.static_objects}, "
            f"moving_objects={self.moving_objects}, seed={self.seed}, dtype={self.dtype})"
        )
