"""Camera trajectories of the synthetic box rooms: :func:`camera_trajectory` (dolly, orbit,
pan, with optional jitter), in float64 from angles and Rodrigues' formula so the rotations stay
orthonormal to rounding."""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from ..geometry.cameras import camera_to_world_to_extrinsics, geometry_dtype
from .scene import CAMERA_CLEARANCE, DEFAULT_ROOM, Box

__all__ = ["TRAJECTORIES", "camera_trajectory"]

TRAJECTORIES = ("dolly", "orbit", "pan")


def _rot_x(a: Tensor) -> Tensor:
    c, s = torch.cos(a), torch.sin(a)
    o, z = torch.ones_like(a), torch.zeros_like(a)
    return torch.stack([o, z, z, z, c, -s, z, s, c], dim=-1).reshape(*a.shape, 3, 3)


def _rot_y(a: Tensor) -> Tensor:
    c, s = torch.cos(a), torch.sin(a)
    o, z = torch.ones_like(a), torch.zeros_like(a)
    return torch.stack([c, z, s, z, o, z, -s, z, c], dim=-1).reshape(*a.shape, 3, 3)


def _rodrigues(omega: Tensor) -> Tensor:
    """``exp(omega^)`` for rotation vectors ``[...,3]`` (float64), exact at omega = 0."""
    theta = omega.norm(dim=-1, keepdim=True)
    axis = omega / theta.clamp_min(1e-300)
    x, y, z = axis.unbind(-1)
    zero = torch.zeros_like(x)
    Kx = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).reshape(*x.shape, 3, 3)
    th = theta[..., None]
    eye = torch.eye(3, dtype=omega.dtype).expand_as(Kx)
    return eye + torch.sin(th) * Kx + (1.0 - torch.cos(th)) * (Kx @ Kx)


def _world_from_camera(yaw: Tensor, tilt: Tensor) -> Tensor:
    # Yaw about world y (vertical), then tilt the optical axis down by `tilt` radians; the camera
    # looks along (sin(yaw)cos(tilt), sin(tilt), cos(yaw)cos(tilt)) (y-down world: + is down).
    return _rot_y(yaw) @ _rot_x(-tilt)


def _rotation_angles(R_wc: Tensor) -> Tensor:
    """Angles (radians) of the relative rotations between consecutive frames ``[T-1]``."""
    rel = R_wc[:-1].transpose(-1, -2) @ R_wc[1:]
    c = ((rel.diagonal(dim1=-2, dim2=-1).sum(-1) - 1.0) / 2.0).clamp(-1.0, 1.0)
    return torch.acos(c)


def camera_trajectory(
    kind: str,
    frames: int,
    *,
    jitter: float = 0.0,
    phase: float = 0.0,
    room: Box = DEFAULT_ROOM,
    generator: Optional[torch.Generator] = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """A camera path inside ``room``: camera-from-world extrinsics ``[T,3,4]`` (metres).

    Kinds (all smooth at ``jitter=0``: constant velocity and constant body-frame angular velocity,
    so the camera motion smoothness error is ~0; the camera is tilted slightly down so floor boxes
    are in view):

    * ``"dolly"``: translates along the room's z axis at constant speed (``0.8 * half depth``
      metres in total) with a slight constant-rate yaw (0.15 rad in total). Second difference of the
      centres is 0.
    * ``"orbit"``: moves at constant angular speed along a 60 degree arc around the room centre
      (radius ``0.6 * min(half width, half depth)``), always looking at a point below the centre.
      The speed and the angular velocity are constant; the velocity direction turns by the step
      angle per frame (``|a_t| / (|v_t| + |v_t+1|) = sin(step/2)``, ~0.075 for 8 frames), which is
      the only non-zero term of the motion error of a smooth trajectory.
    * ``"pan"``: fixed position (backed away from the middle of the sweep, so it looks across the
      room), constant-rate yaw (60 degrees in total) at a small constant downward tilt. The
      centres do not move.

    ``phase`` in [0, 1) varies the path: the dolly's lateral offset and initial heading, the orbit's
    and the pan's starting angle (a full turn over [0, 1)).

    ``jitter >= 0`` is the one shake knob. It adds i.i.d. Gaussian noise to the camera centres with
    std ``jitter * mean step length`` (metres; so a pan, which has no steps, gets none) and composes
    each world-from-camera rotation with ``exp(angle * axis)``, a uniformly random axis and
    ``angle ~ N(0, (jitter * s)^2)`` where ``s`` is the mean rotation step (radians), or 0.01 rad if
    the trajectory does not rotate. Noisy centres are clamped into the room shrunk by 0.25 m so the
    camera never leaves it. ``generator`` drives the noise (a generator seeded with 0 is used when
    it is None, so the output is deterministic either way).

    Rotations are built in float64 from angles / Rodrigues' formula and cast to ``dtype`` at the
    end, so they are orthonormal with determinant +1 to the rounding of ``dtype``.
    """
    if kind not in TRAJECTORIES:
        raise ValueError(f"unknown trajectory kind {kind!r}; expected one of {TRAJECTORIES}")
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    if not (jitter >= 0.0 and math.isfinite(jitter)):
        raise ValueError(f"jitter must be finite and >= 0, got {jitter}")
    f64 = torch.float64
    centre = torch.tensor(room.centre, dtype=f64)
    hx, hy, hz = room.half_extent
    t = torch.arange(frames, dtype=f64)
    steps = max(frames - 1, 1)
    eye_y = centre[1] - 0.2 * hy  # a little above the middle of the room (y is down)

    if kind == "dolly":
        x = float(centre[0]) + (2.0 * phase - 1.0) * 0.3 * hx
        z0, z1 = centre[2] - 0.7 * hz, centre[2] + 0.1 * hz
        z = z0 + (z1 - z0) * t / steps
        centres = torch.stack([torch.full_like(t, x), torch.full_like(t, float(eye_y)), z], -1)
        # Start turned slightly towards the room's centre line, keep turning at a constant rate.
        yaw = 0.2 * (0.5 - phase) + 0.15 * t / steps
        tilt = torch.full_like(t, 0.15)
    elif kind == "orbit":
        radius = 0.6 * min(hx, hz)
        target_y = centre[1] + 0.3 * hy
        yaw = 2.0 * math.pi * phase + (math.pi / 3.0) * t / steps
        forward_xz = torch.stack([torch.sin(yaw), torch.cos(yaw)], -1)
        centres = torch.stack(
            [
                centre[0] - radius * forward_xz[:, 0],
                torch.full_like(t, float(eye_y)),
                centre[2] - radius * forward_xz[:, 1],
            ],
            -1,
        )
        tilt = torch.full_like(t, math.atan2(float(target_y - eye_y), radius))
    else:  # pan
        yaw = 2.0 * math.pi * phase + (math.pi / 3.0) * t / steps
        # Stand back from the middle of the sweep so the camera looks across the room, not at a
        # nearby wall.
        yaw_mid = 2.0 * math.pi * phase + math.pi / 6.0
        pos = torch.stack(
            [
                centre[0] - 0.4 * hx * math.sin(yaw_mid),
                eye_y,
                centre[2] - 0.4 * hz * math.cos(yaw_mid),
            ]
        )
        centres = pos.expand(frames, 3).clone()
        tilt = torch.full_like(t, 0.2)

    R_wc = _world_from_camera(yaw, tilt)

    if jitter > 0.0:
        if generator is None:
            generator = torch.Generator().manual_seed(0)
        step_len = (centres[1:] - centres[:-1]).norm(dim=-1)
        mean_step = float(step_len.mean()) if frames > 1 else 0.0
        rot_steps = _rotation_angles(R_wc) if frames > 1 else torch.zeros(0, dtype=f64)
        mean_rot = float(rot_steps.mean()) if frames > 1 else 0.0
        if mean_rot < 1e-12:
            mean_rot = 0.01
        noise = torch.randn(frames, 3, generator=generator, dtype=f64)
        centres = centres + jitter * mean_step * noise
        axis = torch.randn(frames, 3, generator=generator, dtype=f64)
        axis = axis / axis.norm(dim=-1, keepdim=True).clamp_min(1e-300)
        angle = jitter * mean_rot * torch.randn(frames, 1, generator=generator, dtype=f64)
        # Body-frame perturbation: the shake of a hand-held camera is about its own axes.
        R_wc = R_wc @ _rodrigues(angle * axis)
        lo = torch.tensor(room.lo, dtype=f64) + CAMERA_CLEARANCE
        hi = torch.tensor(room.hi, dtype=f64) - CAMERA_CLEARANCE
        centres = torch.maximum(torch.minimum(centres, hi), lo)

    pose = torch.cat([R_wc, centres[..., None]], dim=-1)  # camera-to-world [R_wc | C]
    return camera_to_world_to_extrinsics(pose).to(geometry_dtype(dtype))


