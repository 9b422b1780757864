"""The fused ops of vggrpo, with autograd, for CPU (OpenMP) and CUDA.

Each function here wraps one op of ``torch.ops.vggrpo`` (schemas and kernels in csrc/). This module
also registers, per op, the fake kernel that ``torch.compile`` traces with and the autograd
formula (following pytorch/extension-cpp: schema in C++, autograd and fake kernel in Python).
docs/ops.md is the exact contract; ``vggrpo.reference`` holds a plain-PyTorch twin of each op.

Dtypes: float32 and float64 are computed as given; float16/bfloat16 inputs are computed and
returned in float32; a call mixing float32 and float64 is computed in float64. Non-float inputs
are an error. Inputs need not be contiguous. Gradients reach pointmaps, points, depths and
extrinsics; integer and bool outputs (winners, counts, masks) are not differentiable, and
intrinsics get no gradient (the z-buffer depends on them only piecewise-constantly).

Determinism: every forward is deterministic on CPU and CUDA (the z-buffer key is a total order).
Every CPU backward is too. On CUDA the point gradients of ``splat_depth`` and
``reprojection_errors`` use float atomics (the last bits can vary between runs) unless
``torch.use_deterministic_algorithms(True)`` is on, which selects a gather path with the CPU's
summation order (docs/ops.md, "CUDA: schedule and determinism").
"""

from __future__ import annotations

import operator
from typing import Optional

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor

from . import _ext  # noqa: F401  (loads vggrpo._C, which defines torch.ops.vggrpo)
from ._nvtx import annotated

__all__ = [
    "so3_log",
    "motion_smoothness",
    "static_points",
    "splat_depth",
    "view_depth_error",
    "worst_k_mean",
    "reprojection_errors",
]

_ops = torch.ops.vggrpo


def _compute_dtype(*tensors: Optional[Tensor]) -> Optional[torch.dtype]:
    floats = [t.dtype for t in tensors if isinstance(t, Tensor) and t.is_floating_point()]
    if not floats:
        return None
    return torch.float64 if torch.float64 in floats else torch.float32


def _prepare(op: str, dtype: Optional[torch.dtype], name: str, t, optional: bool = False):
    """Casts a floating tensor to the compute dtype; anything else goes to the C++ checks as is."""
    if t is None:
        if optional:
            return None
        raise TypeError(f"vggrpo.{op}: `{name}` must be a tensor, got None")
    if not isinstance(t, Tensor):
        raise TypeError(f"vggrpo.{op}: `{name}` must be a torch.Tensor, got {type(t).__name__}")
    if dtype is not None and t.is_floating_point() and t.dtype != dtype:
        return t.to(dtype)
    return t


_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def _int_arg(op: str, name: str, value) -> int:
    """An integer argument: int (or anything with ``__index__``, e.g. a numpy integer), never a
    bool or a float (``int(2.5)`` would silently truncate). The range checks are the op's."""
    if isinstance(value, bool):
        raise TypeError(f"vggrpo.{op}: expected `{name}` to be an int, got bool ({value!r})")
    if isinstance(value, (int, torch.SymInt)):
        index = int(value)
    else:
        try:
            index = operator.index(value)
        except TypeError:
            raise TypeError(
                f"vggrpo.{op}: expected `{name}` to be an int, "
                f"got {type(value).__name__} ({value!r})"
            ) from None
    if not _INT64_MIN <= index <= _INT64_MAX:
        raise ValueError(f"vggrpo.{op}: `{name}` = {index} does not fit in a 64-bit integer")
    return index


def _float_arg(op: str, name: str, value) -> float:
    """A real-number argument (int, float, numpy scalar, one-element tensor); not a string, a
    bool or None. The range checks are the op's."""
    if isinstance(value, (bool, str, bytes)) or value is None:
        raise TypeError(
            f"vggrpo.{op}: expected `{name}` to be a number, got {type(value).__name__} ({value!r})"
        )
    try:
        return float(value)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(
            f"vggrpo.{op}: expected `{name}` to be a number, got {type(value).__name__}"
        ) from None


def _refuse_forward_ad(op: str, *tensors: Optional[Tensor]) -> None:
    """The fused ops have reverse-mode formulas only: a forward-mode tangent (torch.func.jvp,
    jacfwd, torch.autograd.forward_ad) would be dropped and read as 0, so it is an error."""
    if torch.compiler.is_compiling():  # dynamo traces the reverse-mode path only
        return
    if any(isinstance(t, Tensor) and fwAD.unpack_dual(t).tangent is not None for t in tensors):
        raise NotImplementedError(
            f"vggrpo.{op}: forward-mode AD (torch.func.jvp, jacfwd, forward_ad) is not supported "
            f"by the fused op; use reverse mode (torch.autograd.grad or .functional.jacobian), or "
            f"vggrpo.reference.{op}, its plain-PyTorch twin, which supports both"
        )


def _refuse_double_backward(op: str) -> None:
    """Registers, for ``vggrpo::<op>_backward``, an autograd formula that raises: a gradient of
    the gradient would otherwise be None or zeros with only a warning."""

    def backward(ctx, *grads):
        raise NotImplementedError(
            f"vggrpo.{op}: double backward (a gradient of its gradient, create_graph=True) is "
            f"not supported by the fused op; use vggrpo.reference.{op}, its plain-PyTorch twin"
        )

    torch.library.register_autograd(f"vggrpo::{op}_backward", backward,
                                    setup_context=lambda ctx, inputs, output: None)


# ---- so3_log ---------------------------------------------------------------------------------


@annotated("vggrpo.so3_log")
def so3_log(R: Tensor) -> Tensor:
    """Rotation vectors of rotation matrices (the SO(3) logarithm).

    Args:
        R: ``[..., 3, 3]`` rotation matrices.
    Returns:
        ``[..., 3]`` axis * angle, angle in radians in ``[0, pi]``. Exact and finite at angle 0
        and pi; the Jacobian keeps full float32 accuracy at small angles (docs/ops.md#so3_log).
        A matrix with a NaN/inf entry gets NaN in all 3 outputs and all 9 gradient entries.
    """
    dtype = _compute_dtype(R)
    _refuse_forward_ad("so3_log", R)
    return _ops.so3_log(_prepare("so3_log", dtype, "R", R))


@torch.library.register_fake("vggrpo::so3_log")
def _(R):
    return R.new_empty(R.shape[:-1])


@torch.library.register_fake("vggrpo::so3_log_backward")
def _(grad_omega, R):
    return R.new_empty(R.shape)


def _so3_log_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])


def _so3_log_backward(ctx, grad_omega):
    (R,) = ctx.saved_tensors
    return _ops.so3_log_backward(grad_omega.contiguous(), R)


torch.library.register_autograd(
    "vggrpo::so3_log", _so3_log_backward, setup_context=_so3_log_setup
)


# ---- motion_smoothness ------------------------------------------------------------------------


@annotated("vggrpo.motion_smoothness")
def motion_smoothness(extrinsics: Tensor, eps: float = 1e-8) -> tuple[Tensor, Tensor]:
    """Translational and rotational jerkiness of each video's camera trajectory.

    Args:
        extrinsics: ``[B, T, 3, 4]`` or ``[B, T, 4, 4]`` camera-from-world, ``T >= 3``.
        eps: positive constant in each ratio's denominator (keeps a still camera finite); at
            least the smallest normal number of the compute dtype (``1.18e-38`` for float32).
    Returns:
        ``(e_trans [B], e_rot [B])``: the mean over ``t`` of
        ``|x[t+1] - x[t]| / (|x[t+1]| + |x[t]| + eps)`` for camera-centre velocities and for
        body-frame angular steps ``log(R_wc[t]^T R_wc[t+1])`` (unitless; 0 for uniform motion).
    """
    dtype = _compute_dtype(extrinsics)
    _refuse_forward_ad("motion_smoothness", extrinsics)
    op = "motion_smoothness"
    eps = _float_arg(op, "eps", eps)
    tiny = torch.finfo(dtype or torch.float32).tiny
    if 0 < eps < tiny:
        # The kernel computes in the extrinsics' dtype, where this eps rounds to 0 (or to a
        # subnormal): a still camera would then give 0 / 0.
        raise ValueError(
            f"vggrpo.{op}: `eps` = {eps:g} is below the smallest normal "
            f"{dtype or torch.float32} ({tiny:g}), the dtype it is computed in; pass "
            f"eps >= {tiny:g}, or float64 extrinsics"
        )
    return _ops.motion_smoothness(_prepare(op, dtype, "extrinsics", extrinsics), eps)


@torch.library.register_fake("vggrpo::motion_smoothness")
def _(extrinsics, eps):
    return extrinsics.new_empty(extrinsics.shape[:1]), extrinsics.new_empty(extrinsics.shape[:1])


@torch.library.register_fake("vggrpo::motion_smoothness_backward")
def _(grad_trans, grad_rot, extrinsics, eps):
    return extrinsics.new_empty(extrinsics.shape)


def _motion_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])
    ctx.eps = inputs[1]


def _motion_backward(ctx, grad_trans, grad_rot):
    (extrinsics,) = ctx.saved_tensors
    grad = _ops.motion_smoothness_backward(
        grad_trans.contiguous(), grad_rot.contiguous(), extrinsics, ctx.eps
    )
    return grad, None


torch.library.register_autograd(
    "vggrpo::motion_smoothness", _motion_backward, setup_context=_motion_setup
)


# ---- static_points ----------------------------------------------------------------------------


@annotated("vggrpo.static_points")
def static_points(
    pointmaps: Tensor, scene_flow: Optional[Tensor] = None, flow_threshold: float = 0.1
) -> tuple[Tensor, Tensor]:
    """The static scene point cloud of each video, as a mask (shapes stay static).

    Args:
        pointmaps: ``[B, T, H, W, 3]`` world-frame points.
        scene_flow: ``[B, T, H, W, 3]`` world-frame motion of each pixel's point, or None.
        flow_threshold: a pixel is dynamic when its flow norm exceeds this (world units).
    Returns:
        ``(points [B, N, 3], valid [B, N] bool)`` with ``N = T*H*W``; invalid rows are zero.
        A point is valid when finite and (given a flow) its flow is finite and not dynamic.
    """
    dtype = _compute_dtype(pointmaps, scene_flow)
    _refuse_forward_ad("static_points", pointmaps, scene_flow)
    op = "static_points"
    return _ops.static_points(
        _prepare(op, dtype, "pointmaps", pointmaps),
        _prepare(op, dtype, "scene_flow", scene_flow, optional=True),
        _float_arg(op, "flow_threshold", flow_threshold),
    )


@torch.library.register_fake("vggrpo::static_points")
def _(pointmaps, scene_flow, flow_threshold):
    B, T, H, W, _ = pointmaps.shape
    points = pointmaps.new_empty((B, T * H * W, 3))
    valid = pointmaps.new_empty((B, T * H * W), dtype=torch.bool)
    return points, valid


def _static_points_setup(ctx, inputs, output):
    ctx.save_for_backward(output[1])
    ctx.pointmaps_shape = inputs[0].shape


def _static_points_backward(ctx, grad_points, grad_valid):
    (valid,) = ctx.saved_tensors
    grad = torch.where(valid.unsqueeze(-1), grad_points, torch.zeros_like(grad_points))
    return grad.reshape(ctx.pointmaps_shape), None, None


torch.library.register_autograd(
    "vggrpo::static_points", _static_points_backward, setup_context=_static_points_setup
)


# ---- splat_depth ------------------------------------------------------------------------------


@annotated("vggrpo.splat_depth")
def splat_depth(
    points: Tensor,
    valid: Optional[Tensor],
    extrinsics: Tensor,
    intrinsics: Tensor,
    height: int,
    width: int,
) -> tuple[Tensor, Tensor]:
    """Z-buffers a point cloud into every view: the nearest point per pixel.

    Args:
        points: ``[B, N, 3]`` world-frame points, ``N < 2**32``.
        valid: ``[B, N]`` bool, or None for all points. Non-finite points are skipped anyway.
        extrinsics: ``[B, V, 3, 4]`` or ``[B, V, 4, 4]`` camera-from-world.
        intrinsics: ``[B, V, 3, 3]`` pinhole (pixels).
        height, width: size of the rendered depth maps (pixels).
    Returns:
        ``(depth [B, V, H, W], winner [B, V, H, W] int64)``: the winning point's camera z
        (world units, 0 for empty pixels) and its index (-1 for empty pixels). Nearest by
        float32 depth, ties to the smaller index; deterministic (docs/ops.md#splat_depth).
    """
    dtype = _compute_dtype(points, extrinsics, intrinsics)
    _refuse_forward_ad("splat_depth", points, extrinsics, intrinsics)
    op = "splat_depth"
    return _ops.splat_depth(
        _prepare(op, dtype, "points", points),
        # `valid` must be bool: it is passed as given (never cast), so a wrong dtype is reported
        # as the caller's dtype.
        _prepare(op, None, "valid", valid, optional=True),
        _prepare(op, dtype, "extrinsics", extrinsics),
        _prepare(op, dtype, "intrinsics", intrinsics),
        _int_arg(op, "height", height),
        _int_arg(op, "width", width),
    )


@torch.library.register_fake("vggrpo::splat_depth")
def _(points, valid, extrinsics, intrinsics, height, width):
    B, V = extrinsics.shape[0], extrinsics.shape[1]
    depth = points.new_empty((B, V, height, width))
    winner = points.new_empty((B, V, height, width), dtype=torch.int64)
    return depth, winner


@torch.library.register_fake("vggrpo::splat_depth_backward")
def _(grad_depth, winner, points, extrinsics, intrinsics):
    return points.new_empty(points.shape), extrinsics.new_empty(extrinsics.shape)


def _splat_setup(ctx, inputs, output):
    points, extrinsics, intrinsics = inputs[0], inputs[2], inputs[3]
    ctx.save_for_backward(points, extrinsics, intrinsics, output[1])


def _splat_backward(ctx, grad_depth, grad_winner):
    points, extrinsics, intrinsics, winner = ctx.saved_tensors
    grad_points, grad_extrinsics = _ops.splat_depth_backward(
        grad_depth.contiguous(), winner, points, extrinsics, intrinsics
    )
    return grad_points, None, grad_extrinsics, None, None, None


torch.library.register_autograd("vggrpo::splat_depth", _splat_backward, setup_context=_splat_setup)


# ---- view_depth_error ---------------------------------------------------------------------------


@annotated("vggrpo.view_depth_error")
def view_depth_error(
    rendered: Tensor, depths: Tensor, valid: Optional[Tensor] = None
) -> tuple[Tensor, Tensor]:
    """Mean absolute depth error of each view over the pixels where both depths are valid.

    Args:
        rendered: ``[B, V, H, W]`` rendered depth (0 where nothing was rendered).
        depths: ``[B, V, H, W]`` predicted depth.
        valid: ``[B, V, H, W]`` bool, or None; pixels where it is False do not count (the fused
            path passes each frame's static mask here).
    Returns:
        ``(err [B, V], count [B, V] int64)``: the mean of ``|rendered - depths|`` over pixels where
        both are finite and > 0 (world units; 0 when no pixel counts), and how many pixels counted.
    """
    dtype = _compute_dtype(rendered, depths)
    _refuse_forward_ad("view_depth_error", rendered, depths)
    op = "view_depth_error"
    return _ops.view_depth_error(
        _prepare(op, dtype, "rendered", rendered),
        _prepare(op, dtype, "depths", depths),
        _prepare(op, None, "valid", valid, optional=True),
    )


@torch.library.register_fake("vggrpo::view_depth_error")
def _(rendered, depths, valid):
    B, V = rendered.shape[0], rendered.shape[1]
    return rendered.new_empty((B, V)), rendered.new_empty((B, V), dtype=torch.int64)


@torch.library.register_fake("vggrpo::view_depth_error_backward")
def _(grad_err, rendered, depths, valid, count):
    return rendered.new_empty(rendered.shape), depths.new_empty(depths.shape)


def _view_error_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0], inputs[1], inputs[2], output[1])


def _view_error_backward(ctx, grad_err, grad_count):
    rendered, depths, valid, count = ctx.saved_tensors
    grads = _ops.view_depth_error_backward(grad_err.contiguous(), rendered, depths, valid, count)
    return grads[0], grads[1], None


torch.library.register_autograd(
    "vggrpo::view_depth_error", _view_error_backward, setup_context=_view_error_setup
)


# ---- worst_k_mean -------------------------------------------------------------------------------


@annotated("vggrpo.worst_k_mean")
def worst_k_mean(err: Tensor, count: Tensor, k: int = 3) -> Tensor:
    """Mean of the ``k`` largest per-view errors, over views that have a count.

    Args:
        err: ``[B, V]`` per-view errors.
        count: ``[B, V]`` int64; views with ``count == 0`` are left out.
        k: how many of the worst views to average, ``>= 1``.
    Returns:
        ``[B]``: mean of the ``min(k, valid views)`` largest errors (NaN ranks largest, ties go
        to the smaller view index); 0 for a video with no valid view.
    """
    dtype = _compute_dtype(err)
    _refuse_forward_ad("worst_k_mean", err)
    op = "worst_k_mean"
    return _ops.worst_k_mean(
        _prepare(op, dtype, "err", err), _prepare(op, None, "count", count), _int_arg(op, "k", k)
    )


@torch.library.register_fake("vggrpo::worst_k_mean")
def _(err, count, k):
    return err.new_empty(err.shape[:1])


@torch.library.register_fake("vggrpo::worst_k_mean_backward")
def _(grad, err, count, k):
    return err.new_empty(err.shape)


def _worst_k_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0], inputs[1])
    ctx.k = inputs[2]


def _worst_k_backward(ctx, grad):
    err, count = ctx.saved_tensors
    return _ops.worst_k_mean_backward(grad.contiguous(), err, count, ctx.k), None, None


torch.library.register_autograd(
    "vggrpo::worst_k_mean", _worst_k_backward, setup_context=_worst_k_setup
)


# ---- reprojection_errors (fused) --------------------------------------------------------------


@annotated("vggrpo.reprojection_errors")
def reprojection_errors(
    pointmaps: Tensor,
    depths: Tensor,
    extrinsics: Tensor,
    intrinsics: Tensor,
    scene_flow: Optional[Tensor] = None,
    flow_threshold: float = 0.1,
) -> tuple[Tensor, Tensor]:
    """Per-view depth error of the static point cloud re-rendered into every frame (fused).

    Exactly ``view_depth_error(splat_depth(points, valid, ...)[0], depths, valid)`` with
    ``points, valid = static_points(...)``: a frame's own dynamic or non-finite pixels are left
    out of its comparison as well as out of the cloud (docs/ops.md#reprojection_errors says why).
    It never materialises a ``[B, T, N]`` projection or a copy of the points: one 64-bit z-buffer
    per view and one byte per point is all the memory it takes (under ``torch.no_grad``, float32:
    a 32-bit depth-only z-buffer, on CPU and CUDA alike).

    Args:
        pointmaps: ``[B, T, H, W, 3]`` world-frame points.
        depths: ``[B, T, H, W]`` predicted z-depth.
        extrinsics: ``[B, T, 3, 4]`` or ``[B, T, 4, 4]`` camera-from-world.
        intrinsics: ``[B, T, 3, 3]`` pinhole (pixels).
        scene_flow: ``[B, T, H, W, 3]`` or None; pixels whose flow norm exceeds
            ``flow_threshold`` are dynamic and left out of the point cloud.
        flow_threshold: world units per frame.
    Returns:
        ``(err [B, T], count [B, T] int64)``: mean ``|rendered - predicted|`` per view (world
        units) and the number of pixels it averages.
    """
    dtype = _compute_dtype(pointmaps, depths, extrinsics, intrinsics, scene_flow)
    _refuse_forward_ad("reprojection_errors", pointmaps, depths, extrinsics, intrinsics, scene_flow)
    op = "reprojection_errors"
    # The winner map is kept only when a gradient can be asked for: under torch.no_grad (GRPO
    # rollouts) the op skips it and, for float32, uses a cheaper depth-only z-buffer.
    need_winner = torch.is_grad_enabled() and any(
        isinstance(t, Tensor) and t.requires_grad for t in (pointmaps, depths, extrinsics)
    )
    err, count, _, _ = _ops.reprojection_errors(
        _prepare(op, dtype, "pointmaps", pointmaps),
        _prepare(op, dtype, "depths", depths),
        _prepare(op, dtype, "extrinsics", extrinsics),
        _prepare(op, dtype, "intrinsics", intrinsics),
        _prepare(op, dtype, "scene_flow", scene_flow, optional=True),
        _float_arg(op, "flow_threshold", flow_threshold),
        need_winner,
    )
    return err, count


@torch.library.register_fake("vggrpo::reprojection_errors")
def _(pointmaps, depths, extrinsics, intrinsics, scene_flow, flow_threshold, need_winner=True):
    B, T, H, W, _ = pointmaps.shape
    err = pointmaps.new_empty((B, T))
    count = pointmaps.new_empty((B, T), dtype=torch.int64)
    winner = pointmaps.new_empty((B, T, H, W) if need_winner else (0,), dtype=torch.int64)
    valid = pointmaps.new_empty((B, T, H, W), dtype=torch.bool)
    return err, count, winner, valid


@torch.library.register_fake("vggrpo::reprojection_errors_backward")
def _(grad_err, count, winner, valid, pointmaps, depths, extrinsics, intrinsics):
    return (
        pointmaps.new_empty(pointmaps.shape),
        depths.new_empty(depths.shape),
        extrinsics.new_empty(extrinsics.shape),
    )


def _reproject_setup(ctx, inputs, output):
    pointmaps, depths, extrinsics, intrinsics = inputs[0], inputs[1], inputs[2], inputs[3]
    ctx.save_for_backward(pointmaps, depths, extrinsics, intrinsics, *output[1:])


def _reproject_backward(ctx, grad_err, grad_count, grad_winner, grad_valid):
    pointmaps, depths, extrinsics, intrinsics, count, winner, valid = ctx.saved_tensors
    if winner.dim() != 4:
        raise RuntimeError(
            "vggrpo.reprojection_errors: backward needs the winner map, but the forward ran with "
            "need_winner=False; call it with need_winner=True (vggrpo.ops.reprojection_errors "
            "decides this from grad mode and requires_grad)"
        )
    grad_pm, grad_depths, grad_extrinsics = _ops.reprojection_errors_backward(
        grad_err.contiguous(), count, winner, valid, pointmaps, depths, extrinsics, intrinsics
    )
    return grad_pm, grad_depths, grad_extrinsics, None, None, None, None


torch.library.register_autograd(
    "vggrpo::reprojection_errors", _reproject_backward, setup_context=_reproject_setup
)

for _op in ("so3_log", "motion_smoothness", "splat_depth", "view_depth_error", "worst_k_mean",
            "reprojection_errors"):
    _refuse_double_backward(_op)
