"""The two VGGRPO rewards and the GRPO group advantage, as drop-in functions.

Both rewards are differentiable (for test-time guidance) and cheap under ``torch.no_grad`` (for
rollouts); both are higher-is-better. Formulas: docs/conventions.md and docs/ops.md#the-rewards.
"""

from __future__ import annotations

import math
from typing import Dict, Mapping, NamedTuple, Optional, Tuple, Union

import torch
from torch import Tensor

from . import ops
from ._checks import is_finite_number
from ._nvtx import annotated


class MotionTerms(NamedTuple):
    """Parts of :func:`camera_motion_reward`: ``e_trans [B]`` and ``e_rot [B]`` (unitless)."""

    e_trans: Tensor
    e_rot: Tensor


class GeometryTerms(NamedTuple):
    """Parts of :func:`geometry_reprojection_reward`.

    ``view_errors [B, T]``: mean absolute depth error of each view (world units);
    ``view_counts [B, T]`` int64: the pixels each error averages (0: view left out).
    """

    view_errors: Tensor
    view_counts: Tensor


@annotated("vggrpo.camera_motion_reward")
def camera_motion_reward(
    extrinsics: Tensor, *, eps: float = 1e-8, return_terms: bool = False
) -> Union[Tensor, tuple[Tensor, MotionTerms]]:
    """Camera motion smoothness reward of each video (paper Sec. 3.3).

    ``r = (1 / (1 + e_trans) + 1 / (1 + e_rot)) / 2`` in ``(0, 1]``, where ``e_trans`` and
    ``e_rot`` are the mean relative accelerations of the camera centre and of the body-frame
    angular velocity (see :func:`vggrpo.ops.motion_smoothness`). 1 for uniform motion. A NaN/inf
    in rows 0-2 of a video's extrinsics makes its reward NaN (the last row of a 4x4 is not read).

    Args:
        extrinsics: ``[B, T, 3, 4]`` or ``[B, T, 4, 4]`` camera-from-world (OpenCV axes),
            ``T >= 3``. float32/float64 (float16/bfloat16 are computed in float32).
        eps: positive constant in the ratios' denominators, in the extrinsics' length unit.
            A still camera's ``e_trans`` is its centres' noise over itself, of order 1 when that
            noise exceeds ``eps`` (float32 rounding alone does: docs/ops.md); raise ``eps`` to
            the smallest step that counts as motion where still cameras matter.
        return_terms: also return :class:`MotionTerms`.
    Returns:
        ``[B]`` rewards, or ``(rewards, MotionTerms)``.
    """
    e_trans, e_rot = ops.motion_smoothness(extrinsics, eps)
    reward = 0.5 * (1.0 / (1.0 + e_trans) + 1.0 / (1.0 + e_rot))
    if return_terms:
        return reward, MotionTerms(e_trans, e_rot)
    return reward


@annotated("vggrpo.geometry_reprojection_reward")
def geometry_reprojection_reward(
    pointmaps: Tensor,
    depths: Tensor,
    extrinsics: Tensor,
    intrinsics: Tensor,
    scene_flow: Optional[Tensor] = None,
    *,
    flow_threshold: float = 0.1,
    topk: int = 3,
    return_terms: bool = False,
) -> Union[Tensor, tuple[Tensor, GeometryTerms]]:
    """Geometry reprojection consistency reward of each video (paper Sec. 3.4).

    The static points of all frames (scene flow norm at most ``flow_threshold``, finite) are
    z-buffered into every frame's camera; each view's error is the mean ``|rendered - predicted|``
    depth over pixels with both; the reward is minus the mean of the ``topk`` worst views
    (views with no such pixel are left out; 0 when none is left). ``<= 0``, higher is better.
    NaN/inf points or depths only mark their pixels invalid. A NaN/inf in the camera entries
    read (rows 0-2 of ``extrinsics``, rows 0-1 of ``intrinsics``) makes that video's reward NaN
    (its view's terms: error 0, count 0), as :func:`camera_motion_reward` does; no NaN reaches
    the gradient.

    Args:
        pointmaps: ``[B, T, H, W, 3]`` world-frame point maps.
        depths: ``[B, T, H, W]`` predicted z-depth (valid where finite and > 0).
        extrinsics: ``[B, T, 3, 4]`` or ``[B, T, 4, 4]`` camera-from-world (OpenCV axes).
        intrinsics: ``[B, T, 3, 3]`` pinhole, in pixels of the ``H x W`` depth grid; principal
            point of a centred camera at ``(W/2, H/2)``. Normalised intrinsics are not detected
            (docs/ops.md): scale rows 0 and 1 by ``W`` and ``H`` first.
        scene_flow: ``[B, T, H, W, 3]`` world-frame motion per pixel, or None (all static).
        flow_threshold: flow norm above which a pixel is dynamic (world units).
        topk: number of worst views averaged, ``>= 1``.
        return_terms: also return :class:`GeometryTerms`.
    Returns:
        ``[B]`` rewards, or ``(rewards, GeometryTerms)``.
    """
    if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
        raise ValueError(
            f"geometry_reprojection_reward: expected `topk` to be an int >= 1, got {topk!r}"
        )
    err, count = ops.reprojection_errors(
        pointmaps, depths, extrinsics, intrinsics, scene_flow, flow_threshold
    )
    reward = -ops.worst_k_mean(err, count, topk)
    # A non-finite camera renders nothing, so the op leaves its view out; but unlike a NaN pixel
    # (sky, a hole) it is never legitimate data. NaN the video's reward, as camera_motion_reward
    # does, so that group_advantages refuses it instead of scoring the video without that view.
    cameras_finite = (
        torch.isfinite(extrinsics[..., :3, :]).flatten(-2).all(-1)
        & torch.isfinite(intrinsics[..., :2, :]).flatten(-2).all(-1)
    ).all(-1)
    reward = torch.where(cameras_finite, reward, torch.full_like(reward, math.nan))
    if return_terms:
        return reward, GeometryTerms(err, count)
    return reward


def reprojection_coverage(view_counts: Tensor, pixels_per_view: int, *,
                          min_coverage: float = 1.0) -> Tensor:
    """The share ``c`` of the views' pixels that the geometry reprojection reward scored, per
    video, ``c = sum_t view_counts[:, t] / (T * pixels_per_view)``, returned as
    ``min(c / min_coverage, 1)`` in ``[0, 1]`` (higher is better; the default ``min_coverage``
    1 returns ``c`` itself).

    A guard beyond the paper. :func:`geometry_reprojection_reward` leaves out a view with no
    pixel that has both a rendered and a valid predicted depth, and scores 0 (its best) when no
    view is left: a video whose static geometry projects nowhere (behind every camera, outside
    every image) or whose depths are all invalid reads as perfectly consistent. Its coverage is
    0. With ``min_coverage`` below the coverage of sound geometry (0.82-0.97 on the synthetic
    rooms), sound videos all score 1, so in a GRPO group without such a video the guard is
    constant and adds nothing to the advantages; see docs/conventions.md for its weight. Counts
    are integers, so it has no gradient: it guards GRPO, not reward guidance.

    Args:
        view_counts: ``[B, T]`` integer pixel counts (:class:`GeometryTerms.view_counts`), each
            in ``[0, pixels_per_view]``.
        pixels_per_view: ``H * W`` of the depth maps, a positive int.
        min_coverage: the coverage at and above which a video scores 1, in ``(0, 1]``.
    Returns:
        ``[B]`` float32.
    """
    if isinstance(pixels_per_view, bool) or not isinstance(pixels_per_view, int) \
            or pixels_per_view < 1:
        raise ValueError(f"reprojection_coverage: expected `pixels_per_view` to be a positive "
                         f"int (H * W), got {pixels_per_view!r}")
    if not (is_finite_number(min_coverage) and 0 < min_coverage <= 1):
        raise ValueError(f"reprojection_coverage: expected `min_coverage` to be a number in "
                         f"(0, 1], got {min_coverage!r}")
    if not isinstance(view_counts, Tensor) or view_counts.dim() != 2 \
            or view_counts.dtype.is_floating_point or view_counts.dtype.is_complex \
            or view_counts.dtype == torch.bool:
        got = (f"{view_counts.dtype} {list(view_counts.shape)}" if isinstance(view_counts, Tensor)
               else type(view_counts).__name__)
        raise ValueError(f"reprojection_coverage: expected `view_counts` to be an integer "
                         f"tensor [B, T], got {got}")
    if view_counts.numel() and (view_counts.min() < 0 or view_counts.max() > pixels_per_view):
        raise ValueError(f"reprojection_coverage: expected `view_counts` in [0, "
                         f"pixels_per_view = {pixels_per_view}], got "
                         f"[{int(view_counts.min())}, {int(view_counts.max())}]")
    T = max(view_counts.shape[1], 1)
    # float64: counts of 2M-pixel views summed over frames exceed float32's exact integers.
    share = view_counts.double().sum(-1) / (T * pixels_per_view)
    return (share / float(min_coverage)).clamp(max=1.0).float()


def _check_advantage_inputs(rewards, group_size, eps, weights
                            ) -> Tuple[Dict[str, Tensor], Mapping[str, float], float, int]:
    """:func:`group_advantages`' arguments checked, each failure one error naming the argument;
    returns ``(rewards, weights, sum of |weights|, N)``."""
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 2:
        raise ValueError(
            f"group_advantages: expected `group_size` to be an int >= 2, got {group_size!r}"
        )
    if not (is_finite_number(eps) and eps >= 0):
        raise ValueError(
            f"group_advantages: expected `eps` to be a finite number >= 0, got {eps!r}"
        )
    if not isinstance(rewards, Mapping) or len(rewards) == 0:
        raise ValueError(
            "group_advantages: expected `rewards` to be a non-empty mapping name -> [N] tensor"
        )
    tensors = {}
    for name, r in rewards.items():
        if not isinstance(r, Tensor):
            raise TypeError(
                f"group_advantages: reward {name!r} must be a torch.Tensor, got {type(r).__name__}"
            )
        if r.dim() != 1:
            raise ValueError(
                f"group_advantages: reward {name!r} must have shape [N], got {list(r.shape)}"
            )
        if not (r.is_floating_point() or r.dtype in (torch.int32, torch.int64)):
            raise TypeError(
                f"group_advantages: reward {name!r} must be a real tensor, got {r.dtype}"
            )
        tensors[name] = r
    if weights is None:
        weights = {name: 1.0 for name in tensors}
    if not isinstance(weights, Mapping) or not all(
            isinstance(k, str) and is_finite_number(w) for k, w in weights.items()):
        raise ValueError(f"group_advantages: expected `weights` to map reward names to finite "
                         f"numbers, got {weights!r}")
    unknown = sorted(set(weights) - set(tensors))
    if unknown:
        raise ValueError(f"group_advantages: `weights` name {unknown}, which are not among the "
                         f"rewards {sorted(tensors)}")
    norm = sum(abs(float(w)) for w in weights.values())
    if norm == 0:
        raise ValueError(f"group_advantages: `weights` are all 0, got {dict(weights)!r}")
    names = list(tensors)
    n = tensors[names[0]].shape[0]
    for name in names[1:]:
        if tensors[name].shape[0] != n:
            raise ValueError(
                f"group_advantages: reward {name!r} has {tensors[name].shape[0]} samples but "
                f"{names[0]!r} has {n}"
            )
        if tensors[name].device != tensors[names[0]].device:
            raise ValueError(f"group_advantages: rewards are on different devices ({names[0]!r}: "
                             f"{tensors[names[0]].device}, {name!r}: {tensors[name].device})")
    if n == 0 or n % group_size != 0:
        raise ValueError(
            f"group_advantages: the number of samples ({n}) must be a positive multiple of "
            f"group_size ({group_size}), with group_size consecutive samples per prompt"
        )
    return tensors, weights, norm, n


def group_advantages(
    rewards: Mapping[str, Tensor], group_size: int, *, eps: float = 1e-8,
    weights: Optional[Mapping[str, float]] = None,
) -> Tensor:
    """GRPO advantages from several rewards (paper Sec. 3.5).

    Samples are laid out prompt-major: ``group_size`` consecutive samples share a prompt. Each
    reward is normalised within its prompt group, ``(r - mean) / (std + eps)`` with the
    population standard deviation (ddof = 0, as Flow-GRPO), then the normalised rewards are
    averaged with the ``weights``: ``A = sum_k w_k n_k / sum_k |w_k|`` (equal weights: the plain
    mean). A group whose samples all score the same gets advantage 0.

    Args:
        rewards: name -> ``[N]`` tensor (e.g. ``{"motion": r1, "geo": r2}``), all of one length
            ``N`` divisible by ``group_size``, all finite.
        group_size: samples per prompt, ``>= 2``.
        eps: added to the standard deviation, a finite number ``>= 0``.
        weights: name -> finite weight, for a subset of ``rewards`` (a reward it leaves out, or
            weights 0, is not used); not all 0. None: weight 1 for every reward.
    Returns:
        ``[N]`` advantages, float32 (float64 if any reward is float64), on the rewards' device.
    """
    tensors, weights, norm, n = _check_advantage_inputs(rewards, group_size, eps, weights)
    names = list(tensors)
    dtype = (
        torch.float64 if any(t.dtype == torch.float64 for t in tensors.values()) else torch.float32
    )
    total = None
    for name in names:
        r = tensors[name].detach().to(dtype)
        bad = int((~torch.isfinite(r)).sum())
        if bad:
            raise ValueError(
                f"group_advantages: reward {name!r} has {bad} non-finite value(s); a NaN or inf "
                "would poison its whole prompt group"
            )
        # Statistics in float64: a float32 mean of equal values can be off by an ulp, and that ulp
        # over an equally tiny std (plus eps) is an O(1) advantage for a group with no signal.
        groups = r.to(torch.float64).reshape(n // group_size, group_size)
        # Each group divided by its largest |r| first: (r - mean) / (std + eps) is the same for
        # r / s with eps / s, and a sum of finite rewards near 1e308 would overflow to inf.
        scale = groups.abs().amax(dim=1, keepdim=True)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        groups = groups / scale
        mean = groups.mean(dim=1, keepdim=True)
        std = groups.std(dim=1, unbiased=False, keepdim=True)
        # Tensor by tensor: a Python float over a tensor is taken as float * (1 / tensor), which
        # is 0 * inf = NaN for eps = 0 and a subnormal scale. A tiny scale with eps > 0 gives inf,
        # so advantage 0, as the unscaled formula gives (std << eps).
        scaled_eps = torch.full_like(scale, eps) / scale
        normalised = (groups - mean) / (std + scaled_eps)
        # A group whose samples all score the same carries no signal: exactly 0 (also with eps = 0,
        # where it would be 0 / 0).
        constant = (groups == groups[:, :1]).all(dim=1, keepdim=True) | (std + scaled_eps == 0)
        normalised = torch.where(constant, torch.zeros_like(normalised), normalised)
        w = float(weights.get(name, 0.0))
        if w == 0:
            continue
        # w / norm is at most 1 in size: a huge finite weight cannot overflow the sum.
        normalised = (w / norm) * normalised.reshape(n)
        total = normalised if total is None else total + normalised
    return total.to(dtype)
