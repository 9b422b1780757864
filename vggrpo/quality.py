"""How good is a geometry model? Errors against ground truth and reward rankings.

* :func:`depth_abs_rel` — mean ``|d - d_gt| / d_gt`` over valid ground-truth pixels.
* :func:`camera_errors` — per-frame rotation error (degrees, angle of ``R R_gt^T``) and camera
  centre error (length units), both in the first frame's camera (models predict there), frame 0
  left out (it is the identity by construction).
* :func:`spearman` — Spearman rank correlation (average ranks for ties).
"""

from __future__ import annotations

from typing import Dict

import torch
from torch import Tensor

__all__ = ["depth_abs_rel", "camera_errors", "spearman", "rankdata"]


def depth_abs_rel(depths: Tensor, target: Tensor) -> Tensor:
    """``[B,T,H,W]`` predicted and true z-depths -> ``[B]`` mean absolute relative error."""
    if depths.shape != target.shape:
        raise ValueError(f"depths {list(depths.shape)} and target {list(target.shape)} differ")
    valid = torch.isfinite(target) & (target > 0)
    err = torch.where(valid, (depths - target).abs() / target.clamp_min(1e-12),
                      torch.zeros_like(target))
    return err.flatten(1).sum(1) / valid.flatten(1).sum(1).clamp_min(1)


def camera_errors(extrinsics: Tensor, target: Tensor) -> Dict[str, Tensor]:
    """``[B,T,3,4]`` (or ``[B,T,4,4]``) camera-from-world pairs, both relative to their first
    frame -> ``{"rotation_deg": [B], "centre": [B]}`` means over frames ``1..T-1``."""
    if (extrinsics.shape[:2] != target.shape[:2] or extrinsics.dim() != 4 or target.dim() != 4
            or extrinsics.shape[1] < 2
            or not {extrinsics.shape[2:], target.shape[2:]} <= {(3, 4), (4, 4)}):
        raise ValueError(f"extrinsics {list(extrinsics.shape)} and target {list(target.shape)} "
                         f"must be [B,T,3,4] (or [B,T,4,4]) sharing [B,T], with T >= 2")
    R, Rg = extrinsics[..., :3, :3], target[..., :3, :3]
    rel = R @ Rg.transpose(-1, -2)
    cos = ((rel.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2).clamp(-1, 1)
    rot = torch.rad2deg(torch.acos(cos))[:, 1:].mean(1)
    centre = lambda E: -(E[..., :3, :3].transpose(-1, -2) @ E[..., :3, 3:])[..., 0]  # noqa: E731
    dist = (centre(extrinsics) - centre(target)).norm(dim=-1)[:, 1:].mean(1)
    return {"rotation_deg": rot, "centre": dist}


def rankdata(x: Tensor) -> Tensor:
    """Ranks ``1..n`` of ``x``'s ``n`` elements (flattened), ties given their average rank
    (float64)."""
    x = x.detach().to(torch.float64).flatten()
    order = torch.argsort(x, stable=True)
    ranks = torch.empty_like(x)
    ranks[order] = torch.arange(1, x.numel() + 1, dtype=torch.float64)
    for value in torch.unique(x):
        tie = x == value
        if int(tie.sum()) > 1:
            ranks[tie] = ranks[tie].mean()
    return ranks


def spearman(a: Tensor, b: Tensor) -> float:
    """Spearman rank correlation of two 1D sequences of equal length ``>= 2``; nan if either is
    constant or holds a NaN (a NaN has no rank: a sort would place it last and return a number
    that means nothing). Infinities rank as the extremes they are."""
    a, b = torch.as_tensor(a).flatten(), torch.as_tensor(b).flatten()
    if a.numel() != b.numel() or a.numel() < 2:
        raise ValueError(f"spearman needs two sequences of equal length >= 2, "
                         f"got {a.numel()} and {b.numel()}")
    if bool(torch.isnan(a).any() or torch.isnan(b).any()):
        return float("nan")
    ra, rb = rankdata(a), rankdata(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = (ra.square().sum() * rb.square().sum()).sqrt()
    return float("nan") if float(denom) == 0.0 else float((ra * rb).sum() / denom)
