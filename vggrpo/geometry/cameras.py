"""Camera conversions between vggrpo's convention and those of geometry models.

vggrpo's convention (docs/conventions.md, the package's public contract):

* extrinsics ``[...,3,4]`` (``[...,4,4]`` accepted as input): camera-from-world ``[R | t]``, OpenCV
  camera axes (x right, y down, z forward), translation in scene units (metres for metric models);
* intrinsics ``[...,3,3]`` pinhole, pixels; a centred camera has its principal point at
  ``(W/2, H/2)``;
* depths ``[...,H,W]`` are z-depths (the camera z of each pixel's point); pixel ``(x, y)`` covers
  ``[x, x+1) x [y, y+1)`` and its ray goes through the pixel centre ``(x+0.5, y+0.5)``.

What this module converts from and to:

* VGGT's ``absT_quaR_FoV`` pose encoding ``[...,9]`` = ``[t (3), q (4, xyzw, scalar last),
  fov_h, fov_w]``: ``t`` and the rotation ``R`` (as quaternion ``q``) are the camera-from-world
  extrinsics, ``fov_h = 2 atan((H/2) / fy)`` and ``fov_w = 2 atan((W/2) / fx)`` in radians, the
  camera is centred with zero skew. VGGT predicts it relative to the first frame's camera.
* Any4D-style factors: camera-to-world poses and range ("ray") depths, the Euclidean distance from
  the camera centre to the point along the ray through the pixel centre.

All functions are plain differentiable PyTorch (autograd), accept any leading dimensions and keep
the dtype of float32 / float64 inputs; float16 / bfloat16 (and integer) inputs are computed and
returned in float32, following the package rule.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

from .._checks import is_positive_int

__all__ = [
    "quaternion_to_matrix",
    "matrix_to_quaternion",
    "cameras_to_pose_encoding",
    "pose_encoding_to_cameras",
    "camera_to_world_to_extrinsics",
    "extrinsics_to_camera_to_world",
    "pixel_rays",
    "intrinsics_from_rays",
    "range_depth_to_z_depth",
    "z_depth_to_range_depth",
    "relative_to_first_camera",
    "pinhole_intrinsics",
    "camera_centres",
    "unproject_depth",
    "rotate_by_transpose",
    "geometry_dtype",
]


# --------------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------------


def _shape(t: Tensor) -> str:
    return "[" + ",".join(str(s) for s in t.shape) + "]"


def _check_tensor(name: str, value) -> None:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")


def _check_trailing(name: str, value: Tensor, allowed: Sequence[Tuple[int, ...]]) -> None:
    """Raise a ValueError unless ``value``'s trailing dims are one of ``allowed``."""
    _check_tensor(name, value)
    for trailing in allowed:
        n = len(trailing)
        if value.dim() >= n and tuple(value.shape[value.dim() - n:]) == trailing:
            return
    expected = " or ".join("[..." + "".join(f",{s}" for s in tr) + "]" for tr in allowed)
    raise ValueError(f"{name} must have shape {expected}, got {_shape(value)}")


def _check_size(height, width) -> None:
    for name, value in (("height", height), ("width", width)):
        if not is_positive_int(value):
            raise ValueError(f"{name} must be a positive int (pixels), got {value!r}")


def geometry_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype geometry of ``dtype`` is computed and returned in: float32 and float64 stay,
    anything else (half precision, integers) becomes float32. Half precision cannot hold
    rotations or metre-scale geometry to useful accuracy."""
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def _compute_dtype(*tensors: Tensor) -> torch.dtype:
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return geometry_dtype(dtype)


# --------------------------------------------------------------------------------------------------
# Quaternions (xyzw, scalar last, as VGGT)
# --------------------------------------------------------------------------------------------------


def quaternion_to_matrix(quaternion: Tensor) -> Tensor:
    """Rotation matrices ``[...,3,3]`` of quaternions ``[...,4]`` in xyzw order (scalar last).

    The quaternion is normalised first, so any non-zero 4-vector is accepted (a zero quaternion
    gives NaN). ``q`` and ``-q`` give the same matrix. The matrix rotates column vectors:
    ``R @ p`` is ``q p q*``. Differentiable.
    """
    _check_trailing("quaternion", quaternion, [(4,)])
    q = quaternion.to(_compute_dtype(quaternion))
    q = q / torch.linalg.vector_norm(q, dim=-1, keepdim=True)
    x, y, z, w = q.unbind(-1)
    # Products written once; the matrix is the standard unit-quaternion rotation.
    xx, yy, zz = x * x, y * y, z * z
    xy, xz, yz = x * y, x * z, y * z
    wx, wy, wz = w * x, w * y, w * z
    rows = [
        1 - 2 * (yy + zz), 2 * (xy - wz), 2 * (xz + wy),
        2 * (xy + wz), 1 - 2 * (xx + zz), 2 * (yz - wx),
        2 * (xz - wy), 2 * (yz + wx), 1 - 2 * (xx + yy),
    ]
    return torch.stack(rows, dim=-1).reshape(*q.shape[:-1], 3, 3)


def matrix_to_quaternion(matrix: Tensor) -> Tensor:
    """Unit quaternions ``[...,4]`` (xyzw, scalar last) of rotation matrices ``[...,3,3]``.

    Shepperd's method: of the four algebraically equivalent formulas (each divides by one of
    ``4|w|, 4|x|, 4|y|, 4|z|``) the one with the largest divisor is used, so the result is accurate
    for every rotation, including rotations by ~180 degrees where ``w ~ 0``. The result is
    renormalised (so a slightly non-orthonormal input still gives a unit quaternion) and put in the
    canonical sign ``w >= 0``; when ``w`` is exactly 0 the sign makes the largest of ``|x|, |y|,
    |z|`` positive, so the output is deterministic. Differentiable (the branch choice is not).
    """
    _check_trailing("matrix", matrix, [(3, 3)])
    R = matrix.to(_compute_dtype(matrix))
    m00, m01, m02 = R[..., 0, 0], R[..., 0, 1], R[..., 0, 2]
    m10, m11, m12 = R[..., 1, 0], R[..., 1, 1], R[..., 1, 2]
    m20, m21, m22 = R[..., 2, 0], R[..., 2, 1], R[..., 2, 2]

    # 4w^2, 4x^2, 4y^2, 4z^2 for an exact rotation; they sum to 4, so the largest is >= 1 and the
    # chosen branch never divides by less than 2.
    four_sq = torch.stack(
        [1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22],
        dim=-1,
    )
    # The floor only keeps the branches that are not chosen finite (their gradients are masked out
    # by the selection, and 0 * inf would be NaN).
    s = 2.0 * torch.sqrt(four_sq.clamp_min(1e-6))  # 4|w|, 4|x|, 4|y|, 4|z|
    sw, sx, sy, sz = s.unbind(-1)
    a, b, c = m21 - m12, m02 - m20, m10 - m01  # 4wx, 4wy, 4wz
    d, e, f = m10 + m01, m02 + m20, m12 + m21  # 4xy, 4xz, 4yz
    candidates = torch.stack(
        [
            torch.stack([a / sw, b / sw, c / sw, sw / 4], dim=-1),  # from w
            torch.stack([sx / 4, d / sx, e / sx, a / sx], dim=-1),  # from x
            torch.stack([d / sy, sy / 4, f / sy, b / sy], dim=-1),  # from y
            torch.stack([e / sz, f / sz, sz / 4, c / sz], dim=-1),  # from z
        ],
        dim=-2,
    )  # [...,4 branches,4 components]
    best = four_sq.argmax(dim=-1, keepdim=True)  # [...,1]
    q = torch.gather(candidates, -2, best[..., None].expand(*best.shape, 4)).squeeze(-2)
    q = q / torch.linalg.vector_norm(q, dim=-1, keepdim=True)

    w = q[..., 3:]
    xyz = q[..., :3]
    pick = xyz.abs().argmax(dim=-1, keepdim=True)
    largest = torch.gather(xyz, -1, pick)
    flip = (w < 0) | ((w == 0) & (largest < 0))
    return torch.where(flip, -q, q)


# --------------------------------------------------------------------------------------------------
# VGGT pose encoding
# --------------------------------------------------------------------------------------------------


def cameras_to_pose_encoding(
    extrinsics: Tensor, intrinsics: Tensor, height: int, width: int
) -> Tensor:
    """VGGT's ``absT_quaR_FoV`` pose encoding ``[...,9]`` of cameras.

    ``extrinsics`` ``[...,3,4]`` or ``[...,4,4]`` camera-from-world (OpenCV axes), ``intrinsics``
    ``[...,3,3]`` (pixels) of ``height x width`` images; leading dims broadcast. Returns
    ``[t_x, t_y, t_z, q_x, q_y, q_z, q_w, fov_h, fov_w]``: the extrinsic translation, the quaternion
    of the extrinsic rotation (xyzw, ``w >= 0``) and the full fields of view in radians,
    ``fov_h = 2 atan((H/2) / fy)``, ``fov_w = 2 atan((W/2) / fx)``. The principal point and skew
    are not encoded (VGGT assumes a centred camera with zero skew).
    """
    _check_trailing("extrinsics", extrinsics, [(3, 4), (4, 4)])
    _check_trailing("intrinsics", intrinsics, [(3, 3)])
    _check_size(height, width)
    dtype = _compute_dtype(extrinsics, intrinsics)
    E = extrinsics[..., :3, :4].to(dtype)
    K = intrinsics.to(dtype)
    try:
        lead = torch.broadcast_shapes(E.shape[:-2], K.shape[:-2])
    except RuntimeError:
        raise ValueError(
            f"extrinsics {_shape(extrinsics)} and intrinsics {_shape(intrinsics)} have leading "
            "dimensions that do not broadcast"
        ) from None
    t = E[..., :3, 3].expand(*lead, 3)
    quat = matrix_to_quaternion(E[..., :3, :3]).expand(*lead, 4)
    fov_h = 2.0 * torch.atan((height / 2.0) / K[..., 1, 1]).expand(lead)
    fov_w = 2.0 * torch.atan((width / 2.0) / K[..., 0, 0]).expand(lead)
    return torch.cat([t, quat, fov_h[..., None], fov_w[..., None]], dim=-1)


def pose_encoding_to_cameras(
    encoding: Tensor, height: int, width: int
) -> Tuple[Tensor, Tensor]:
    """Cameras of VGGT pose encodings ``[...,9]`` (see :func:`cameras_to_pose_encoding`).

    Returns ``(extrinsics [...,3,4], intrinsics [...,3,3])``: camera-from-world ``[R | t]`` with
    ``R`` from the (normalised) quaternion, and the centred pinhole of ``height x width`` images,
    ``fx = (W/2) / tan(fov_w/2)``, ``fy = (H/2) / tan(fov_h/2)`` pixels, principal point
    ``(W/2, H/2)``, zero skew. Differentiable with respect to ``encoding``.
    """
    _check_trailing("encoding", encoding, [(9,)])
    _check_size(height, width)
    enc = encoding.to(_compute_dtype(encoding))
    t = enc[..., 0:3]
    R = quaternion_to_matrix(enc[..., 3:7])
    extrinsics = torch.cat([R, t[..., None]], dim=-1)

    fy = (height / 2.0) / torch.tan(enc[..., 7] / 2.0)
    fx = (width / 2.0) / torch.tan(enc[..., 8] / 2.0)
    zero = torch.zeros_like(fx)
    one = torch.ones_like(fx)
    # Built by stacking (no in-place writes) so the result stays on the autograd graph.
    intrinsics = torch.stack(
        [fx, zero, zero + width / 2.0, zero, fy, zero + height / 2.0, zero, zero, one], dim=-1
    ).reshape(*fx.shape, 3, 3)
    return extrinsics, intrinsics


# --------------------------------------------------------------------------------------------------
# Any4D-style factors: camera-to-world poses, range depths
# --------------------------------------------------------------------------------------------------


def camera_to_world_to_extrinsics(camera_to_world: Tensor) -> Tensor:
    """Camera-from-world extrinsics ``[...,3,4]`` of camera-to-world poses ``[...,4,4|3,4]``.

    A pose ``[R_wc | C]`` (columns of ``R_wc`` are the camera axes in the world, ``C`` the camera
    centre) becomes ``[R_wc^T | -R_wc^T C]``. Both sides use OpenCV camera axes; poses in another
    axis convention (e.g. OpenGL's y up, z backward) must be converted first.
    """
    _check_trailing("camera_to_world", camera_to_world, [(4, 4), (3, 4)])
    P = camera_to_world[..., :3, :4].to(_compute_dtype(camera_to_world))
    R_cw = P[..., :3, :3].transpose(-1, -2)
    t = -(R_cw @ P[..., :3, 3:])
    return torch.cat([R_cw, t], dim=-1)


def extrinsics_to_camera_to_world(extrinsics: Tensor) -> Tensor:
    """Camera-to-world poses ``[...,4,4]`` of camera-from-world extrinsics ``[...,3,4|4,4]``.

    The inverse of :func:`camera_to_world_to_extrinsics` (with the homogeneous row added).
    """
    _check_trailing("extrinsics", extrinsics, [(3, 4), (4, 4)])
    top = camera_to_world_to_extrinsics(extrinsics)  # the same rigid inversion
    bottom = torch.zeros_like(top[..., :1, :])
    bottom[..., 0, 3] = 1.0
    return torch.cat([top, bottom], dim=-2)


def pixel_rays(intrinsics: Tensor, height: int, width: int) -> Tensor:
    """Camera-frame rays ``[...,H,W,3]`` through pixel centres ``(x+0.5, y+0.5)``, with z = 1.

    The exact inverse of the pinhole projection of docs/ops.md, ``u = K00 x/z + K01 y/z + K02``,
    ``v = K10 x/z + K11 y/z + K12``: the first two rows of ``intrinsics`` ``[...,3,3]`` (pixels)
    are read and the last is taken to be ``[0, 0, 1]``, as the ops do, so a point
    ``z_depth * ray`` has camera z equal to ``z_depth`` and projects back to its pixel centre.
    float32 / float64 in, same dtype out; half precision is computed and returned in float32.
    """
    _check_trailing("intrinsics", intrinsics, [(3, 3)])
    _check_size(height, width)
    dtype = _compute_dtype(intrinsics)
    K = intrinsics.to(dtype)[..., None, None, :, :]  # [...,1,1,3,3]
    u = torch.arange(width, dtype=dtype, device=intrinsics.device)[None, :] + 0.5
    v = torch.arange(height, dtype=dtype, device=intrinsics.device)[:, None] + 0.5
    # The 2x2 system by substitution rather than a general inverse: for K10 = 0 (every
    # pinhole) the factor s is exactly 1 and K10 * x exactly 0, so this is back-substitution,
    # with no rounding beyond its two divisions.
    y0 = (v - K[..., 1, 2]) / K[..., 1, 1]
    s = 1.0 - K[..., 0, 1] * K[..., 1, 0] / (K[..., 0, 0] * K[..., 1, 1])
    x = (u - K[..., 0, 2] - K[..., 0, 1] * y0) / K[..., 0, 0] / s
    y = (v - K[..., 1, 2] - K[..., 1, 0] * x) / K[..., 1, 1]
    x, y = torch.broadcast_tensors(x, y)
    return torch.stack([x, y, torch.ones_like(x)], dim=-1)


def intrinsics_from_rays(ray_directions: Tensor) -> Tensor:
    """The pinhole intrinsics ``[...,3,3]`` (pixels, this package's convention) of per-pixel
    camera-frame rays ``[...,H,W,3]``: the zero-skew ``K`` whose ray through the centre
    ``(x+0.5, y+0.5)`` of pixel ``(x, y)`` points along ``ray_directions[..., y, x, :]``.

    Fitted by least squares, in float64, over the rays that are finite with ``z > 0``:
    ``x + 0.5 = cx + fx * rx/rz`` and ``y + 0.5 = cy + fy * ry/rz``. The rays may have any length
    (unit vectors, as Any4D's, or z = 1). Exact, to rounding, for rays of a pinhole camera.

    Models that build their rays through integer pixel coordinates (Any4D, MapAnything: pixel
    ``x`` at ``x``) and recover ``K`` with ``x = cx + fx rx/rz`` get a principal point 0.5 px
    smaller than this one: the same rays, read with this package's pixel convention. Left
    uncorrected, that half pixel moves point maps by about 2% of the scene on a 60x104 grid.
    A view with fewer than two distinct columns or rows of valid rays gets NaN entries.
    Differentiable.
    """
    _check_trailing("ray_directions", ray_directions, [(3,)])
    if ray_directions.dim() < 3:
        raise ValueError(f"ray_directions must have shape [...,H,W,3], got "
                         f"{_shape(ray_directions)}")
    dtype = _compute_dtype(ray_directions)
    rays = ray_directions.to(torch.float64)
    H, W = rays.shape[-3], rays.shape[-2]
    device = rays.device
    z = rays[..., 2]
    valid = torch.isfinite(rays).all(-1) & (z > 0)
    w = valid.to(torch.float64)
    safe_z = torch.where(valid, z, torch.ones_like(z))
    u = (torch.arange(W, dtype=torch.float64, device=device) + 0.5).expand(H, W)
    v = (torch.arange(H, dtype=torch.float64, device=device)[:, None] + 0.5).expand(H, W)

    def fit(coord: Tensor, ratio: Tensor) -> Tuple[Tensor, Tensor]:
        # Weighted 1-D regression coord = c + f * ratio over the valid rays.
        ratio = torch.where(valid, ratio, torch.zeros_like(ratio))
        n = w.sum((-2, -1))
        mean_r = (w * ratio).sum((-2, -1)) / n
        mean_c = (w * coord).sum((-2, -1)) / n
        dr = (ratio - mean_r[..., None, None]) * w
        f = (dr * (coord - mean_c[..., None, None])).sum((-2, -1)) / (dr * dr).sum((-2, -1))
        return f, mean_c - f * mean_r

    fx, cx = fit(u, rays[..., 0] / safe_z)
    fy, cy = fit(v, rays[..., 1] / safe_z)
    zero, one = torch.zeros_like(fx), torch.ones_like(fx)
    K = torch.stack([fx, zero, cx, zero, fy, cy, zero, zero, one], dim=-1)
    return K.reshape(*fx.shape, 3, 3).to(dtype)


def _depth_and_rays(name: str, depth: Tensor, intrinsics: Tensor) -> Tuple[Tensor, Tensor]:
    _check_tensor(name, depth)
    if depth.dim() < 2:
        raise ValueError(f"{name} must have shape [...,H,W], got {_shape(depth)}")
    _check_trailing("intrinsics", intrinsics, [(3, 3)])
    height, width = depth.shape[-2:]
    if height < 1 or width < 1:
        raise ValueError(f"{name} must have H, W >= 1, got {_shape(depth)}")
    try:
        torch.broadcast_shapes(depth.shape[:-2], intrinsics.shape[:-2])
    except RuntimeError:
        raise ValueError(
            f"{name} {_shape(depth)} and intrinsics {_shape(intrinsics)} have leading dimensions "
            "that do not broadcast"
        ) from None
    dtype = _compute_dtype(depth, intrinsics)
    rays = pixel_rays(intrinsics.to(dtype), height, width)
    # |r| / r_z: the range of a point per unit of z-depth (r_z = 1 for a pinhole).
    ratio = torch.linalg.vector_norm(rays, dim=-1) / rays[..., 2]
    return depth.to(dtype), ratio


def range_depth_to_z_depth(range_depth: Tensor, intrinsics: Tensor) -> Tensor:
    """Z-depths ``[...,H,W]`` of range depths ``[...,H,W]``.

    ``range_depth`` is the Euclidean distance (scene units) from the camera centre to the point seen
    through each pixel centre, along the ray ``r = K^-1 [x+0.5, y+0.5, 1]``; ``intrinsics``
    ``[...,3,3]`` broadcast against the leading dims. ``z = range * r_z / |r|`` (``r_z = 1`` for a
    pinhole). Non-finite or non-positive ranges map to non-finite or non-positive z-depths, so
    vggrpo's validity rule (finite and > 0) still applies.
    """
    depth, ratio = _depth_and_rays("range_depth", range_depth, intrinsics)
    return depth / ratio


def z_depth_to_range_depth(z_depth: Tensor, intrinsics: Tensor) -> Tensor:
    """Range depths ``[...,H,W]`` of z-depths ``[...,H,W]``; inverse of
    :func:`range_depth_to_z_depth`: ``range = z * |r| / r_z`` with ``r = K^-1 [x+0.5, y+0.5, 1]``.
    """
    depth, ratio = _depth_and_rays("z_depth", z_depth, intrinsics)
    return depth * ratio


# --------------------------------------------------------------------------------------------------
# First-frame normalisation
# --------------------------------------------------------------------------------------------------


def relative_to_first_camera(
    extrinsics: Tensor,
    pointmaps: Optional[Tensor] = None,
    scene_flow: Optional[Tensor] = None,
) -> Tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
    """Re-express a video's cameras and world quantities in its first camera's frame.

    VGGT predicts cameras in the frame of the first camera (frame 0 is the identity); this turns
    any world frame into that one. With frame 0's extrinsics ``[R0 | t0]`` the new world point of
    an old world point ``X`` is ``X' = R0 X + t0``, so:

    * ``extrinsics`` ``[...,T,3,4]`` (or ``[...,T,4,4]``, returned in the same form):
      ``R_i' = R_i R0^T``, ``t_i' = t_i - R_i' t0``; frame 0 becomes ``[I | 0]``;
    * ``pointmaps`` ``[...,T,H,W,3]`` world points: ``X' = R0 X + t0``;
    * ``scene_flow`` ``[...,T,H,W,3]`` world displacements: rotated only, ``f' = R0 f``.

    Depths and intrinsics are unchanged (a rigid change of world frame does not move points relative
    to the cameras), so every projection of the new points by the new cameras equals the old one.
    The scale is not normalised. Returns ``(extrinsics, pointmaps, scene_flow)`` with ``None`` for
    the inputs not given.
    """
    _check_trailing("extrinsics", extrinsics, [(3, 4), (4, 4)])
    if extrinsics.dim() < 3 or extrinsics.shape[-3] < 1:
        raise ValueError(
            f"extrinsics must have shape [...,T,3,4] or [...,T,4,4] with T >= 1, "
            f"got {_shape(extrinsics)}"
        )
    tensors = [extrinsics] + [x for x in (pointmaps, scene_flow) if x is not None]
    dtype = _compute_dtype(*tensors)
    lead = tuple(extrinsics.shape[:-2])  # [...,T]
    for name, value in (("pointmaps", pointmaps), ("scene_flow", scene_flow)):
        if value is None:
            continue
        _check_trailing(name, value, [(3,)])
        if value.dim() != len(lead) + 3 or tuple(value.shape[: len(lead)]) != lead:
            expected = "[" + ",".join(str(s) for s in lead) + ",H,W,3]"
            raise ValueError(
                f"{name} must have shape {expected} to match extrinsics {_shape(extrinsics)}, "
                f"got {_shape(value)}"
            )

    E = extrinsics[..., :3, :4].to(dtype)
    R, t = E[..., :3, :3], E[..., :3, 3:]
    R0 = R[..., :1, :, :]  # [...,1,3,3], broadcasts over T
    t0 = t[..., :1, :, :]
    R_new = R @ R0.transpose(-1, -2)
    t_new = t - R_new @ t0
    E_new = torch.cat([R_new, t_new], dim=-1)
    if extrinsics.shape[-2] == 4:
        bottom = torch.zeros_like(E_new[..., :1, :])
        bottom[..., 0, 3] = 1.0
        E_new = torch.cat([E_new, bottom], dim=-2)

    R0_b = R[..., 0, :, :]  # [...,3,3]
    t0_b = t[..., 0, :, 0]  # [...,3]
    new_points = None
    if pointmaps is not None:
        P = pointmaps.to(dtype)
        new_points = torch.einsum("...ij,...thwj->...thwi", R0_b, P)
        new_points = new_points + t0_b[..., None, None, None, :]
    new_flow = None
    if scene_flow is not None:
        new_flow = torch.einsum("...ij,...thwj->...thwi", R0_b, scene_flow.to(dtype))
    return E_new, new_points, new_flow


# --------------------------------------------------------------------------------------------------
# Pinhole cameras: intrinsics, centres, unprojection
# --------------------------------------------------------------------------------------------------


def pinhole_intrinsics(
    height: int, width: int, fov_x_deg: float = 60.0, dtype: torch.dtype = torch.float32
) -> Tensor:
    """Centred pinhole intrinsics ``[3,3]`` with square pixels.

    ``fx = fy = (W/2) / tan(fov_x/2)`` (pixels), principal point ``(W/2, H/2)``.
    ``fov_x_deg`` is the full horizontal field of view in degrees, in (0, 180).
    """
    if height < 1 or width < 1:
        raise ValueError(f"height and width must be >= 1, got {height}x{width}")
    if not 0.0 < fov_x_deg < 180.0:
        raise ValueError(f"fov_x_deg must be in (0, 180), got {fov_x_deg}")
    f = (width / 2.0) / math.tan(math.radians(fov_x_deg) / 2.0)
    K = torch.tensor(
        [[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]], dtype=torch.float64
    )
    return K.to(dtype)


def camera_centres(extrinsics: Tensor) -> Tensor:
    """Camera centres ``C = -R^T t`` ``[...,3]`` (world, metres) of extrinsics ``[...,3|4,4]``."""
    if extrinsics.shape[-2:] not in ((3, 4), (4, 4)):
        raise ValueError(f"extrinsics must be [...,3,4] or [...,4,4]: {tuple(extrinsics.shape)}")
    R = extrinsics[..., :3, :3]
    t = extrinsics[..., :3, 3]
    return -(R.transpose(-1, -2) @ t[..., None])[..., 0]


def rotate_by_transpose(points: Tensor, R: Tensor) -> Tensor:
    """``R^T p`` for every point of ``points`` ``[...,H,W,3]`` with one ``R`` ``[...,3,3]``
    per image.

    Written as the row product ``p^T R`` over flattened pixels: one batched matmul per image
    instead of H*W tiny 3x3 products.
    """
    h, w = points.shape[-3:-1]
    lead = torch.broadcast_shapes(points.shape[:-3], R.shape[:-2])
    rows = points.expand(*lead, h, w, 3).reshape(*lead, h * w, 3)
    return (rows @ R.expand(*lead, 3, 3)).reshape(*lead, h, w, 3)


def unproject_depth(depths: Tensor, intrinsics: Tensor, extrinsics: Tensor) -> Tensor:
    """World points ``[B,T,H,W,3]`` of z-depths seen through pixel centres.

    ``depths`` ``[B,T,H,W]`` (camera z, metres), ``intrinsics`` ``[B,T,3,3]``, ``extrinsics``
    ``[B,T,3,4]`` or ``[B,T,4,4]`` camera-from-world. Pixel (x, y) is unprojected through its centre
    (x+0.5, y+0.5): ``p = R^T (depth * K^-1 [x+0.5, y+0.5, 1] - t)``, the inverse of the pinhole
    projection of docs/ops.md. Any leading dimensions work as long as they match. Invalid depths
    (non-finite or <= 0) give points that are not meaningful; mask them yourself.

    float32 / float64 in, same dtype out; float16 / bfloat16 are computed and returned in float32.
    """
    if depths.dim() < 2:
        raise ValueError(f"depths must be [...,H,W], got {tuple(depths.shape)}")
    if intrinsics.shape[-2:] != (3, 3):
        raise ValueError(f"intrinsics must be [...,3,3], got {tuple(intrinsics.shape)}")
    if extrinsics.shape[-2:] not in ((3, 4), (4, 4)):
        raise ValueError(f"extrinsics must be [...,3,4] or [...,4,4]: {tuple(extrinsics.shape)}")
    dtype = _compute_dtype(depths, extrinsics)
    height, width = depths.shape[-2:]
    depths = depths.to(dtype)
    rays = pixel_rays(intrinsics.to(dtype), height, width)  # [...,H,W,3]
    R = extrinsics[..., :3, :3].to(dtype)
    t = extrinsics[..., :3, 3].to(dtype)[..., None, None, :]
    return rotate_by_transpose(depths[..., None] * rays - t, R)
