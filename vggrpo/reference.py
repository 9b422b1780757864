"""Plain-PyTorch reference implementation of every vggrpo op.

This module is the oracle twin of :mod:`vggrpo.ops`: each function here has the same signature as
the fused op of the same name and computes exactly what ``docs/ops.md`` states, written with
ordinary vectorised PyTorch so that autograd supplies the gradients. The test-suite compares the
fused C++/CUDA ops (values and gradients) against these functions, and the benchmarks use them
as the baseline. :func:`geometry_reprojection_reward` is deliberately written the way a user
would write the reward by hand (one ``[B, V, N]`` projection and a single ``scatter_reduce``
z-buffer) and is the baseline the fused geometry path is timed against.

Nothing here is fast or memory-lean: ``splat_depth`` and the rewards materialise ``[B, V, N]``
projection tensors. No dtype promotion happens here: every function computes in the dtype it is
given (the ``vggrpo.ops`` wrappers are the ones that promote half precision to float32).

Conventions (see ``docs/ops.md``): batch first, extrinsics are camera-from-world ``[R | t]`` with
OpenCV axes, pixel ``(x, y)`` covers ``[x, x+1) x [y, y+1)``, point ``n = (t*H + y)*W + x``, a depth
is valid when finite and ``> 0``. Angles are in radians; depths and points are in the scene's
length unit.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import Tensor

__all__ = [
    "so3_log",
    "motion_smoothness",
    "static_points",
    "splat_depth",
    "view_depth_error",
    "worst_k_mean",
    "reprojection_errors",
    "camera_motion_reward",
    "geometry_reprojection_reward",
]


# --------------------------------------------------------------------------------------------
# so3_log
# --------------------------------------------------------------------------------------------

def _series_threshold(dtype: torch.dtype) -> float:
    # x = s / c below which g = atan2(s, c) / s is evaluated by its series.
    return 0.01 if dtype == torch.float64 else 0.1


def _log_inputs(R: Tensor) -> Tuple[Tensor, Tensor]:
    """c = (tr R - 1)/2 and v = vee((R - R^T)/2), exactly as docs/ops.md writes them."""
    c = (R[..., 0, 0] + R[..., 1, 1] + R[..., 2, 2] - 1) / 2
    v = torch.stack(
        (
            (R[..., 2, 1] - R[..., 1, 2]) / 2,
            (R[..., 0, 2] - R[..., 2, 0]) / 2,
            (R[..., 1, 0] - R[..., 0, 1]) / 2,
        ),
        dim=-1,
    )
    return c, v


def so3_log(R: Tensor) -> Tensor:
    """Rotation vector of a rotation matrix (the SO(3) logarithm).

    Args:
        R: ``[..., 3, 3]`` floating tensor, rotation matrices (any floating dtype; computed in it).

    Returns:
        ``[..., 3]`` tensor of R's dtype: axis * angle, angle in radians, ``0 <= |omega| <= pi``,
        with ``exp(omega^) == R``.

    The value and the gradient follow the piecewise formula of ``docs/ops.md`` exactly, also off
    SO(3) (each branch is differentiated in the 9 ambient entries):

    * regular branch (``c > 0``, or ``c == 0 and s > 0``): ``omega = g(s, c) v`` with
      ``g = atan2(s, c) / s``, by its series in ``x = s/c`` when ``c > 0`` and ``x`` is small
      (``x < 0.1`` in float32/half, ``x < 0.01`` in float64);
    * near-pi branch otherwise: the axis from column ``k = argmax diag(S)`` (first on ties) of
      ``S = (R + R^T)/2 - c I``, signed to agree with ``v``, and ``theta = atan2(n.v, c)``.

    Every branch is evaluated on safe dummy inputs where it is not selected ("double where"), so
    the gradient is finite for every finite ``R``, including at angles 0 and pi. A matrix with a
    NaN/inf entry gets NaN in all 3 outputs and all 9 gradient entries.
    """
    if R.shape[-2:] != (3, 3):
        raise ValueError(f"so3_log expects [..., 3, 3], got {tuple(R.shape)}")
    dtype, device = R.dtype, R.device
    c, v = _log_inputs(R)

    with torch.no_grad():
        s = torch.linalg.vector_norm(v, dim=-1)
        pos = c > 0
        regular = pos | ((c == 0) & (s > 0))
        x = s / torch.where(pos, c, torch.ones_like(c))
        series = pos & (x < _series_threshold(dtype))
        direct = regular & ~series
        near_pi = ~regular

    one = torch.ones_like(c)

    # Regular branch, series part: g = (1 - x^2/3 + x^4/5 - x^6/7 + x^8/9) / c, x^2 = (v.v)/c^2.
    c_ser = torch.where(series, c, one)
    v_ser = torch.where(series[..., None], v, torch.zeros_like(v))
    x2 = (v_ser * v_ser).sum(-1) / (c_ser * c_ser)
    g_ser = (1 + x2 * (-1.0 / 3 + x2 * (1.0 / 5 + x2 * (-1.0 / 7 + x2 * (1.0 / 9))))) / c_ser

    # Regular branch, direct part: g = atan2(s, c) / s (s > 0 wherever it is selected).
    c_dir = torch.where(direct, c, one)
    v_dummy = torch.zeros_like(v)
    v_dummy[..., 0] = 1
    v_dir = torch.where(direct[..., None], v, v_dummy)
    s_dir = torch.linalg.vector_norm(v_dir, dim=-1)
    g_dir = torch.atan2(s_dir, c_dir) / s_dir

    g = torch.where(series, g_ser, torch.where(direct, g_dir, torch.zeros_like(g_ser)))
    omega_regular = g[..., None] * v

    # Near-pi branch, on R itself where selected and on the rotation by pi about x elsewhere
    # (c = -1, v = 0, S = diag(2, 0, 0): every term below is smooth there).
    R_dummy = torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=dtype, device=device))
    R_pi = torch.where(near_pi[..., None, None], R, R_dummy.expand_as(R))
    c_pi, v_pi = _log_inputs(R_pi)
    eye = torch.eye(3, dtype=dtype, device=device)
    S = (R_pi + R_pi.transpose(-1, -2)) / 2 - c_pi[..., None, None] * eye
    with torch.no_grad():
        k = torch.argmax(torch.diagonal(S, dim1=-2, dim2=-1), dim=-1)  # first index on ties
    u = torch.gather(S, -1, k[..., None, None].expand(*S.shape[:-1], 1)).squeeze(-1)  # column k
    with torch.no_grad():
        sigma = torch.where((u * v_pi).sum(-1) >= 0, 1.0, -1.0).to(dtype)
    n = sigma[..., None] * u / torch.linalg.vector_norm(u, dim=-1, keepdim=True)
    p = (n * v_pi).sum(-1) + 0.0  # -0 -> +0: at exactly pi, atan2 gives +pi (n_k > 0 convention)
    theta = torch.atan2(p, c_pi)
    omega_pi = theta[..., None] * n

    omega = torch.where(regular[..., None], omega_regular, omega_pi)

    # A NaN/inf entry: omega and all 9 gradient entries NaN. `poison` is NaN there with a NaN
    # derivative in every entry, and 0 * (sum of R) elsewhere, where its zero gradient stays 0.
    finite = torch.isfinite(R).flatten(-2).all(-1)
    scale = torch.where(finite, 0.0, math.nan).to(dtype)
    poison = (R.flatten(-2).sum(-1) * scale)[..., None].expand_as(omega)
    return torch.where(finite[..., None], omega, poison)


# --------------------------------------------------------------------------------------------
# motion_smoothness
# --------------------------------------------------------------------------------------------

def motion_smoothness(extrinsics: Tensor, eps: float = 1e-8) -> Tuple[Tensor, Tensor]:
    """Translational and rotational motion (non-)smoothness of camera trajectories.

    Args:
        extrinsics: ``[B, T, 3, 4]`` or ``[B, T, 4, 4]`` camera-from-world ``[R | t]`` (the last row
            of a 4x4 is not read), ``T >= 3``; translations in scene length units.
        eps: ``> 0``, added to the denominators.

    Returns:
        ``(e_trans [B], e_rot [B])`` in the input dtype, dimensionless:
        ``mean_i |v_{i+1} - v_i| / (|v_{i+1}| + |v_i| + eps)`` over the camera-centre steps
        ``v_t = C_{t+1} - C_t`` (``C = -R^T t``) and the same over the body-frame angular steps
        ``omega_t = so3_log(R_t R_{t+1}^T)`` (radians).
    """
    if extrinsics.dim() != 4 or extrinsics.shape[-2] not in (3, 4) or extrinsics.shape[-1] != 4:
        raise ValueError(
            f"extrinsics must be [B,T,3,4] or [B,T,4,4], got {tuple(extrinsics.shape)}"
        )
    if extrinsics.shape[1] < 3:
        raise ValueError(f"motion_smoothness needs T >= 3 frames, got {extrinsics.shape[1]}")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    R = extrinsics[..., :3, :3]
    tr = extrinsics[..., :3, 3]
    C = -(R.transpose(-1, -2) @ tr[..., None]).squeeze(-1)  # [B,T,3]
    vel = C[:, 1:] - C[:, :-1]  # [B,T-1,3]
    omega = so3_log(R[:, :-1] @ R[:, 1:].transpose(-1, -2))  # [B,T-1,3]

    def _rough(w: Tensor) -> Tensor:
        num = torch.linalg.vector_norm(w[:, 1:] - w[:, :-1], dim=-1)
        nrm = torch.linalg.vector_norm(w, dim=-1)
        den = nrm[:, 1:] + nrm[:, :-1] + eps
        return (num / den).mean(dim=1)

    return _rough(vel), _rough(omega)


# --------------------------------------------------------------------------------------------
# static_points
# --------------------------------------------------------------------------------------------

def static_points(
    pointmaps: Tensor, scene_flow: Optional[Tensor] = None, flow_threshold: float = 0.1
) -> Tuple[Tensor, Tensor]:
    """Mask the static, finite points of point maps (a mask, not a compaction).

    Args:
        pointmaps: ``[B, T, H, W, 3]`` world-frame points.
        scene_flow: ``[B, T, H, W, 3]`` world-frame motion of each pixel's point, or None.
        flow_threshold: ``>= 0``; a pixel is dynamic when its flow norm exceeds it.

    Returns:
        ``points [B, N, 3]`` (input dtype, ``N = T*H*W``, point ``n = (t*H + y)*W + x``) with
        invalid rows set to 0, and ``valid [B, N]`` bool: all coordinates finite and, with a scene
        flow, all flow components finite and ``|flow| <= flow_threshold``.
    """
    if pointmaps.dim() != 5 or pointmaps.shape[-1] != 3:
        raise ValueError(f"pointmaps must be [B,T,H,W,3], got {tuple(pointmaps.shape)}")
    if not flow_threshold >= 0:
        raise ValueError(f"flow_threshold must be >= 0, got {flow_threshold}")
    valid = torch.isfinite(pointmaps).all(dim=-1)
    if scene_flow is not None:
        if scene_flow.shape != pointmaps.shape:
            raise ValueError("scene_flow must have the shape of pointmaps")
        flow_ok = torch.isfinite(scene_flow).all(dim=-1) & (
            torch.linalg.vector_norm(scene_flow, dim=-1) <= flow_threshold
        )
        valid = valid & flow_ok
    points = torch.where(valid[..., None], pointmaps, torch.zeros_like(pointmaps))
    return points.flatten(1, 3), valid.flatten(1)


# --------------------------------------------------------------------------------------------
# splat_depth
# --------------------------------------------------------------------------------------------

def _camera_coord(R: Tensor, t: Tensor, i: int, px: Tensor, py: Tensor, pz: Tensor) -> Tensor:
    """Row i of R p + t, evaluated left to right as ``R_i0*x + R_i1*y + R_i2*z + t_i``.

    ``R [B,V,3,3]``, ``t [B,V,3]``; ``px, py, pz`` broadcast against ``[B,V,1]``.
    """
    return (
        R[..., i, 0, None] * px
        + R[..., i, 1, None] * py
        + R[..., i, 2, None] * pz
        + t[..., i, None]
    )


def splat_depth(
    points: Tensor,
    valid: Optional[Tensor],
    extrinsics: Tensor,
    intrinsics: Tensor,
    height: int,
    width: int,
) -> Tuple[Tensor, Tensor]:
    """Z-buffer world points into every view: nearest point per pixel, ties to the smaller index.

    Args:
        points: ``[B, N, 3]`` world-frame points.
        valid: ``[B, N]`` bool, or None for all true.
        extrinsics: ``[B, V, 3, 4]`` or ``[B, V, 4, 4]`` camera-from-world ``[R | t]``.
        intrinsics: ``[B, V, 3, 3]`` pinhole, only the first two rows are read (pixels).
        height, width: ``>= 1``, image size in pixels.

    Returns:
        ``depth [B, V, H, W]`` (input dtype): the winner's camera depth
        ``z = R[2].p + t[2]`` recomputed in the input dtype, 0 for an empty pixel; and
        ``winner [B, V, H, W]`` int64: the winning point index, -1 for an empty pixel.

    A valid point competes in a view when its ``z`` is finite and ``> 0`` and its projection
    ``u = K00*x/z + K01*y/z + K02``, ``v = K10*x/z + K11*y/z + K12`` satisfies ``0 <= u < W``,
    ``0 <= v < H``; it lands in pixel ``floor(v)*W + floor(u)``. The key is ``(float32(z), n)``:
    a first ``scatter_reduce(amin)`` finds the float32 minimum per pixel, a second one the
    smallest index among the points at that minimum. ``depth`` is a gather of the winner's
    point, so autograd sends ``R_v[2]`` to the point and the point to row 2 of the extrinsics.
    """
    if points.dim() != 3 or points.shape[-1] != 3:
        raise ValueError(f"points must be [B,N,3], got {tuple(points.shape)}")
    if height < 1 or width < 1:
        raise ValueError("height and width must be >= 1")
    B, N, _ = points.shape
    V = extrinsics.shape[1]
    H, W = int(height), int(width)
    HW = H * W
    dtype, device = points.dtype, points.device
    R = extrinsics[..., :3, :3]
    t = extrinsics[..., :3, 3]

    if N == 0:
        return (
            torch.zeros(B, V, H, W, dtype=dtype, device=device),
            torch.full((B, V, H, W), -1, dtype=torch.int64, device=device),
        )

    with torch.no_grad():
        Rd, td, K = R.detach(), t.detach(), intrinsics.detach()
        pd = points.detach()
        px, py, pz = (pd[..., i][:, None, :] for i in range(3))  # [B,1,N]
        x = _camera_coord(Rd, td, 0, px, py, pz)  # [B,V,N]
        y = _camera_coord(Rd, td, 1, px, py, pz)
        z = _camera_coord(Rd, td, 2, px, py, pz)
        xn = x / z
        yn = y / z
        u = K[..., 0, 0, None] * xn + K[..., 0, 1, None] * yn + K[..., 0, 2, None]
        v = K[..., 1, 0, None] * xn + K[..., 1, 1, None] * yn + K[..., 1, 2, None]
        ok = torch.isfinite(pd).all(dim=-1)
        if valid is not None:
            ok = ok & valid.to(torch.bool)
        keep = (
            ok[:, None, :]
            & torch.isfinite(z)
            & (z > 0)
            & (u >= 0)
            & (u < W)
            & (v >= 0)
            & (v < H)
        )
        zero = torch.zeros((), dtype=dtype, device=device)
        fu = torch.where(keep, torch.floor(u), zero).to(torch.int64)
        fv = torch.where(keep, torch.floor(v), zero).to(torch.int64)
        # Points that do not compete go to a dump slot HW that is dropped at the end.
        pix = torch.where(keep, fv * W + fu, torch.full_like(fu, HW))

        inf32 = torch.tensor(float("inf"), dtype=torch.float32, device=device)
        key = torch.where(keep, z.to(torch.float32), inf32)
        zbuf = torch.full((B, V, HW + 1), float("inf"), dtype=torch.float32, device=device)
        zbuf.scatter_reduce_(2, pix, key, reduce="amin", include_self=True)
        at_min = keep & (key == torch.gather(zbuf, 2, pix))
        index = torch.arange(N, device=device).expand(B, V, N)
        src = torch.where(at_min, index, torch.full_like(index, N))
        ibuf = torch.full((B, V, HW + 1), N, dtype=torch.int64, device=device)
        ibuf.scatter_reduce_(2, pix, src, reduce="amin", include_self=True)
        win = ibuf[..., :HW]
        winner = torch.where(win < N, win, torch.full_like(win, -1))

    # Differentiable part: re-read the winner's depth in the input dtype.
    has = winner >= 0  # [B,V,HW]
    gidx = winner.clamp(min=0).reshape(B, V * HW, 1).expand(B, V * HW, 3)
    pw = torch.gather(points, 1, gidx).reshape(B, V, HW, 3)
    pw = torch.where(has[..., None], pw, torch.zeros_like(pw))
    zw = _camera_coord(R, t, 2, pw[..., 0], pw[..., 1], pw[..., 2])
    depth = torch.where(has, zw, torch.zeros_like(zw))
    return depth.reshape(B, V, H, W), winner.reshape(B, V, H, W)


# --------------------------------------------------------------------------------------------
# view_depth_error / worst_k_mean
# --------------------------------------------------------------------------------------------

def view_depth_error(
    rendered: Tensor, depths: Tensor, valid: Optional[Tensor] = None
) -> Tuple[Tensor, Tensor]:
    """Mean absolute depth error per view over the pixels where both depths are valid.

    Args:
        rendered: ``[B, V, H, W]`` rendered depth (0 = empty pixel).
        depths: ``[B, V, H, W]`` predicted depth.
        valid: ``[B, V, H, W]`` bool or None; pixels where it is False do not count.

    Returns:
        ``err [B, V]`` (input dtype, depth units): ``sum |rendered - depths| / count`` over the
        pixels where both are finite and ``> 0``, 0 when ``count == 0``; ``count [B, V]`` int64.
    """
    if rendered.shape != depths.shape or rendered.dim() != 4:
        raise ValueError("rendered and depths must both be [B,V,H,W]")
    mask = torch.isfinite(rendered) & (rendered > 0) & torch.isfinite(depths) & (depths > 0)
    if valid is not None:
        mask = mask & valid
    r = torch.where(mask, rendered, torch.zeros_like(rendered))
    d = torch.where(mask, depths, torch.zeros_like(depths))
    total = (r - d).abs().sum(dim=(-2, -1))
    count = mask.sum(dim=(-2, -1))
    has = count > 0
    denom = torch.where(has, count, torch.ones_like(count)).to(total.dtype)
    err = torch.where(has, total / denom, torch.zeros_like(total))
    return err, count


def worst_k_mean(err: Tensor, count: Tensor, k: int = 3) -> Tensor:
    """Mean of the k largest per-view errors among the views with ``count > 0``.

    Args:
        err: ``[B, V]`` floating per-view errors.
        count: ``[B, V]`` int64 per-view pixel counts; views with ``count == 0`` are left out.
        k: ``>= 1``.

    Returns:
        ``[B]`` in err's dtype: the mean of the first ``min(k, n_valid)`` valid views ordered by
        error descending (NaN above everything, ties to the smaller view index); 0 when no view is
        valid. The gradient is ``1/k_eff`` to each selected view.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if err.dim() != 2 or count.shape != err.shape:
        raise ValueError("err and count must both be [B,V]")
    B, V = err.shape
    with torch.no_grad():
        e = err.detach()
        ok = count > 0
        nan = torch.isnan(e)
        # Lexicographic order by (group, -err, index): group 0 = valid NaN, 1 = valid, 2 = invalid.
        group = torch.where(ok, torch.where(nan, 0, 1), 2)
        e_key = torch.where(nan, torch.zeros_like(e), e)
        order = torch.sort(e_key, dim=1, descending=True, stable=True).indices
        g_sorted = torch.gather(group, 1, order)
        order = torch.gather(order, 1, torch.sort(g_sorted, dim=1, stable=True).indices)
        n_valid = ok.sum(dim=1)
        k_eff = n_valid.clamp(max=k)
        selected = torch.arange(V, device=err.device)[None, :] < k_eff[:, None]
    picked = torch.gather(err, 1, order)
    picked = torch.where(selected, picked, torch.zeros_like(picked))
    has = k_eff > 0
    denom = torch.where(has, k_eff, torch.ones_like(k_eff)).to(err.dtype)
    return torch.where(has, picked.sum(dim=1) / denom, torch.zeros_like(denom))


# --------------------------------------------------------------------------------------------
# reprojection_errors and the rewards
# --------------------------------------------------------------------------------------------

def reprojection_errors(
    pointmaps: Tensor,
    depths: Tensor,
    extrinsics: Tensor,
    intrinsics: Tensor,
    scene_flow: Optional[Tensor] = None,
    flow_threshold: float = 0.1,
) -> Tuple[Tensor, Tensor]:
    """Per-view reprojection error of all frames' static points against each frame's depth.

    Args:
        pointmaps: ``[B, T, H, W, 3]`` world-frame points.
        depths: ``[B, T, H, W]`` predicted z-depth.
        extrinsics: ``[B, T, 3, 4]`` or ``[B, T, 4, 4]`` camera-from-world.
        intrinsics: ``[B, T, 3, 3]`` pinhole.
        scene_flow: ``[B, T, H, W, 3]`` or None.
        flow_threshold: ``>= 0``.

    Returns:
        ``err [B, T]`` (input dtype, depth units) and ``count [B, T]`` int64: exactly
        ``view_depth_error(splat_depth(points, valid, extrinsics, intrinsics, H, W)[0], depths,
        valid)`` with ``points, valid = static_points(...)``: a frame's own dynamic pixels are left
        out of its comparison too.
    """
    points, valid = static_points(pointmaps, scene_flow, flow_threshold)
    B, T, H, W = depths.shape
    rendered, _ = splat_depth(points, valid, extrinsics, intrinsics, H, W)
    return view_depth_error(rendered, depths, valid.reshape(B, T, H, W))


def camera_motion_reward(extrinsics: Tensor, *, eps: float = 1e-8) -> Tensor:
    """Camera motion smoothness reward ``(1/(1 + e_trans) + 1/(1 + e_rot)) / 2``, in (0, 1].

    Args:
        extrinsics: ``[B, T, 3, 4]`` or ``[B, T, 4, 4]`` camera-from-world, ``T >= 3``.
        eps: ``> 0``.

    Returns:
        ``[B]`` in the input dtype; higher is smoother.
    """
    e_trans, e_rot = motion_smoothness(extrinsics, eps)
    return (1 / (1 + e_trans) + 1 / (1 + e_rot)) / 2


def geometry_reprojection_reward(
    pointmaps: Tensor,
    depths: Tensor,
    extrinsics: Tensor,
    intrinsics: Tensor,
    scene_flow: Optional[Tensor] = None,
    *,
    flow_threshold: float = 0.1,
    topk: int = 3,
) -> Tensor:
    """Geometry reprojection reward ``-worst_k_mean(reprojection_errors(...), k=topk)``, ``<= 0``.

    Args:
        pointmaps: ``[B, T, H, W, 3]`` world-frame points.
        depths: ``[B, T, H, W]`` predicted z-depth.
        extrinsics: ``[B, T, 3, 4]`` or ``[B, T, 4, 4]`` camera-from-world.
        intrinsics: ``[B, T, 3, 3]`` pinhole.
        scene_flow: ``[B, T, H, W, 3]`` or None.
        flow_threshold: ``>= 0``.
        topk: ``>= 1``, number of worst views averaged.

    Returns:
        ``[B]`` in the input dtype (depth units, negated); higher is better.

    This is the benchmark baseline, written the way a user would write it: every static point is
    projected into every view at once (``[B, V, N]`` tensors) and a single differentiable
    ``scatter_reduce(amin)`` of ``z`` (input dtype, no float32 key, no tie-break pass) builds the
    depth buffers. With distinct depths it equals the fused op; on exact ties the value is the
    same but autograd of ``amin`` splits the gradient between the tied points. A video with a
    NaN/inf camera entry scores NaN, as in the fused reward (but here NaN can reach the gradient
    of its points, through the masked projection).
    """
    B = pointmaps.shape[0]
    H, W = depths.shape[-2:]
    dtype, device = pointmaps.dtype, pointmaps.device

    # Static, finite points of every frame.
    valid = torch.isfinite(pointmaps).all(dim=-1)
    if scene_flow is not None:
        flow_norm = torch.linalg.vector_norm(scene_flow, dim=-1)
        valid = valid & torch.isfinite(scene_flow).all(dim=-1) & (flow_norm <= flow_threshold)
    pts = torch.where(valid[..., None], pointmaps, torch.zeros_like(pointmaps)).flatten(1, 3)
    own_pixels = valid  # a frame's dynamic pixels are compared with nothing
    valid = valid.flatten(1)

    # Project every point into every view.
    R = extrinsics[..., :3, :3]
    t = extrinsics[..., :3, 3]
    cam = torch.einsum("bvij,bnj->bvni", R, pts) + t[:, :, None, :]  # [B,V,N,3]
    x, y, z = cam.unbind(dim=-1)
    with torch.no_grad():
        K = intrinsics.detach()
        xn, yn, zd = x.detach() / z.detach(), y.detach() / z.detach(), z.detach()
        u = K[..., 0, 0, None] * xn + K[..., 0, 1, None] * yn + K[..., 0, 2, None]
        v = K[..., 1, 0, None] * xn + K[..., 1, 1, None] * yn + K[..., 1, 2, None]
        keep = (
            valid[:, None, :]
            & torch.isfinite(zd)
            & (zd > 0)
            & (u >= 0)
            & (u < W)
            & (v >= 0)
            & (v < H)
        )
        zero = torch.zeros((), dtype=dtype, device=device)
        pix = (
            torch.where(keep, torch.floor(v), zero).long() * W
            + torch.where(keep, torch.floor(u), zero).long()
        )

    # One z-buffer pass: nearest depth per pixel.
    inf = torch.tensor(float("inf"), dtype=dtype, device=device)
    z_src = torch.where(keep, z, inf)
    buf = torch.full((B, extrinsics.shape[1], H * W), float("inf"), dtype=dtype, device=device)
    rendered = buf.scatter_reduce(2, pix, z_src, reduce="amin", include_self=True)
    rendered = rendered.reshape(B, extrinsics.shape[1], H, W)

    # Per-view mean |rendered - depth| over covered, static pixels with a valid depth.
    mask = own_pixels & torch.isfinite(rendered) & torch.isfinite(depths) & (depths > 0)
    diff = torch.where(mask, rendered - depths, torch.zeros_like(depths)).abs()
    count = mask.sum(dim=(-2, -1))
    denom = torch.where(count > 0, count, torch.ones_like(count)).to(dtype)
    err = torch.where(count > 0, diff.sum(dim=(-2, -1)) / denom, torch.zeros_like(denom))
    reward = -worst_k_mean(err, count, k=topk)

    # Any NaN/inf in a camera entry that is read: the video scores NaN.
    read = torch.cat([extrinsics[..., :3, :].flatten(1), intrinsics[..., :2, :].flatten(1)], dim=1)
    return torch.where(torch.isfinite(read).all(dim=1), reward, torch.nan)
