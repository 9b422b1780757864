"""Evaluation of geometry, with and without ground truth.

**Against ground truth** (the held-out evaluation of the embedded models):

* :func:`depth_abs_rel` — mean ``|d - d_gt| / d_gt`` over valid ground-truth pixels.
* :func:`camera_errors` — per-frame rotation error (degrees, angle of ``R R_gt^T``) and camera
  centre error (length units), both in the first frame's camera (models predict there), frame 0
  left out (it is the identity by construction).
* :func:`spearman` — Spearman rank correlation (average ranks for ties).

**Without ground truth**, the paper's Sampson epipolar error of decoded videos, plus the two
rewards. :func:`sampson_error` follows the protocol of the paper's "Epi." column (as
Epipolar-DPO and VideoGPA measure it), with OpenCV doing the feature work:

1. for each frame pair ``(t, t + gap)``: SIFT keypoints and descriptors on the grey frames
   (``cv2.SIFT_create``), brute-force L2 matching with Lowe's ratio test (``matcher="sift"``,
   the default); or, for small or soft frames where SIFT finds too few keypoints
   (``matcher="klt"``), Shi-Tomasi corners (``cv2.goodFeaturesToTrack``, up to
   ``max_features``, quality 0.01, 3 px apart) tracked by pyramidal Lucas-Kanade
   (``cv2.calcOpticalFlowPyrLK``) and kept when tracking back lands within 0.5 px of the corner;
2. the fundamental matrix ``F`` from the matches by RANSAC (``cv2.findFundamentalMat``,
   ``FM_RANSAC``, threshold ``ransac_threshold`` pixels, confidence 0.999);
3. for **every** ratio-test match, the Sampson distance to ``F``
   ``d = (x2^T F x1)^2 / ((F x1)_1^2 + (F x1)_2^2 + (F^T x2)_1^2 + (F^T x2)_2^2)``, and the pair's
   error is the mean of ``sqrt(d)`` (pixels); the inlier rate is the RANSAC inlier share.

A video's error is the mean over its pairs that had at least ``min_matches`` matches and a
fundamental matrix; ``pairs`` counts those. Lower is better; geometry-inconsistent videos (morphing
content, flicker) leave matches that fit no single epipolar geometry.

:func:`evaluate_folder` scores every video of a folder (mp4/webm or png-frame folders): Sampson
error and inlier rate, and the two rewards of a geometry backbone run on its frames (the RGB
path, default: the embedded tiny backbone); writes a CSV (one row per video) and a JSON summary,
atomically.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Dict, List, Optional, Union

import numpy as np
import torch
from torch import Tensor

from . import _io
from ._checks import is_positive_int

__all__ = ["depth_abs_rel", "camera_errors", "spearman", "rankdata", "sampson_distance",
           "sampson_error", "evaluate_folder"]


# -- against ground truth --------------------------------------------------------------------------

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


# -- without ground truth: Sampson epipolar error --------------------------------------------------

def _cv2():
    try:
        import cv2
    except ImportError:
        raise ImportError("vggrpo.evaluation needs OpenCV: pip install opencv-python-headless") \
            from None
    return cv2


def sampson_distance(F: np.ndarray, x1: np.ndarray, x2: np.ndarray) -> np.ndarray:
    """Squared Sampson distances ``[N]`` of point pairs ``x1, x2`` ``[N,2]`` (pixels) to the
    fundamental matrix ``F`` ``[3,3]`` (``x2^T F x1 = 0``)."""
    h1 = np.concatenate([x1, np.ones((len(x1), 1))], axis=1)
    h2 = np.concatenate([x2, np.ones((len(x2), 1))], axis=1)
    Fx1 = h1 @ F.T
    Ftx2 = h2 @ F
    num = np.sum(h2 * Fx1, axis=1) ** 2
    den = Fx1[:, 0] ** 2 + Fx1[:, 1] ** 2 + Ftx2[:, 0] ** 2 + Ftx2[:, 1] ** 2
    return num / np.maximum(den, 1e-12)


def _grey(frame: Tensor) -> np.ndarray:
    rgb = (frame.detach().float().clamp(0, 1) * 255.0 + 0.5).to(torch.uint8)
    r, g, b = rgb[0].numpy().astype(np.float32), rgb[1].numpy(), rgb[2].numpy()
    return (0.299 * r + 0.587 * g + 0.114 * b).round().astype(np.uint8)


def sampson_error(frames: Tensor, *, gap: int = 1, ratio: float = 0.75,
                  ransac_threshold: float = 1.0, min_matches: int = 8,
                  max_features: int = 2000, matcher: str = "sift") -> Dict[str, float]:
    """Mean sqrt Sampson error of a video (module docstring).

    Args:
        frames: ``[T,3,H,W]`` RGB in [0,1].
        gap: frame pairs ``(t, t + gap)``.
        ratio: Lowe's ratio-test threshold.
        ransac_threshold: RANSAC inlier threshold in pixels.
        min_matches: pairs with fewer matches are skipped (F needs 8).
        max_features: keypoints (SIFT) or corners (KLT) per frame at most.
        matcher: ``"sift"`` (descriptor matching) or ``"klt"`` (corner tracking; ``ratio`` is
            not used). The 96x160 frames of the demo's worlds: SIFT scored about half of them,
            KLT all (docs/demo.md).
    Returns:
        ``{"sampson": pixels (nan when no pair qualified), "inlier_rate": [0,1] (nan likewise),
        "pairs": pairs used, "matches": mean matches per used pair}``.
    """
    cv2 = _cv2()
    if not isinstance(frames, Tensor) or frames.dim() != 4 or frames.shape[1] != 3:
        shape = list(frames.shape) if isinstance(frames, Tensor) else type(frames).__name__
        raise ValueError(f"frames must be [T,3,H,W] RGB in [0,1], got {shape}")
    if not isinstance(gap, int) or gap < 1 or gap >= frames.shape[0]:
        raise ValueError(f"gap must be an int in 1..T-1 = 1..{frames.shape[0] - 1}, got {gap!r}")
    if matcher not in ("sift", "klt"):
        raise ValueError(f"matcher must be 'sift' or 'klt', got {matcher!r}")
    match = _sift_matches(cv2, frames, max_features, ratio) if matcher == "sift" \
        else _klt_matches(cv2, frames, max_features)
    errors, inliers, counts = [], [], []
    for t in range(frames.shape[0] - gap):
        x1, x2 = match(t, t + gap)
        if len(x1) < min_matches:
            continue
        F, mask = cv2.findFundamentalMat(x1, x2, cv2.FM_RANSAC, ransac_threshold, 0.999)
        if F is None or F.shape != (3, 3):
            continue
        errors.append(float(np.mean(np.sqrt(sampson_distance(F, x1, x2)))))
        inliers.append(float(mask.mean()) if mask is not None else float("nan"))
        counts.append(len(x1))
    if not errors:
        return {"sampson": float("nan"), "inlier_rate": float("nan"), "pairs": 0, "matches": 0.0}
    return {"sampson": float(np.mean(errors)), "inlier_rate": float(np.mean(inliers)),
            "pairs": len(errors), "matches": float(np.mean(counts))}


def _sift_matches(cv2, frames: Tensor, max_features: int, ratio: float):
    """``match(t, u) -> (x1, x2)`` ``[N,2]`` float64 pixels: ratio-tested SIFT matches."""
    sift = cv2.SIFT_create(nfeatures=max_features)
    feats = [sift.detectAndCompute(_grey(f), None) for f in frames]
    bf = cv2.BFMatcher(cv2.NORM_L2)
    none = (np.zeros((0, 2)), np.zeros((0, 2)))

    def match(t: int, u: int):
        (k1, d1), (k2, d2) = feats[t], feats[u]
        if d1 is None or d2 is None or len(k1) < 2 or len(k2) < 2:
            return none
        good = [m for m, n in (p for p in bf.knnMatch(d1, d2, k=2) if len(p) == 2)
                if m.distance < ratio * n.distance]
        if not good:
            return none
        return (np.float64([k1[m.queryIdx].pt for m in good]),
                np.float64([k2[m.trainIdx].pt for m in good]))
    return match


def _klt_matches(cv2, frames: Tensor, max_features: int):
    """``match(t, u) -> (x1, x2)`` ``[N,2]`` float64 pixels: corners of frame ``t`` tracked to
    ``u`` by pyramidal Lucas-Kanade, kept when the track back lands within 0.5 px."""
    grey = [_grey(f) for f in frames]
    none = (np.zeros((0, 2)), np.zeros((0, 2)))

    def match(t: int, u: int):
        p0 = cv2.goodFeaturesToTrack(grey[t], maxCorners=max_features, qualityLevel=0.01,
                                     minDistance=3)
        if p0 is None or len(p0) < 2:
            return none
        p1, ok1, _ = cv2.calcOpticalFlowPyrLK(grey[t], grey[u], p0, None)
        back, ok2, _ = cv2.calcOpticalFlowPyrLK(grey[u], grey[t], p1, None)
        # Forward-backward check: a track that does not come back to its corner is a mismatch.
        ok = (ok1[:, 0] == 1) & (ok2[:, 0] == 1) & (np.linalg.norm((back - p0)[:, 0], axis=1)
                                                    < 0.5)
        return p0[ok, 0].astype(np.float64), p1[ok, 0].astype(np.float64)
    return match


def evaluate_folder(folder: Union[str, Path], out_dir: Union[str, Path], *, frames: int = 17,
                    height: int = 96, width: int = 160, backbone=None, stride: int = 4,
                    gap: int = 1) -> Dict[str, object]:
    """Score every video under ``folder``; write ``out_dir/metrics.csv`` and ``summary.json``.

    Each video is read as ``[frames,3,height,width]`` (:class:`vggrpo.data.VideoFolderDataset`);
    the Sampson error uses all its frames; the rewards come from ``backbone`` (default: the
    embedded tiny backbone) on every ``stride``-th frame, so ``frames >= 2 * stride + 1`` (3 frames
    for the camera motion reward). Returns the summary (means over videos, NaN-free: videos
    without a usable frame pair are counted in ``"videos_without_pairs"``).
    """
    from .data.video import VideoFolderDataset
    from .defaults import load_tiny_backbone

    if not is_positive_int(stride):
        raise ValueError(f"stride must be a positive int, got {stride!r}")
    if isinstance(frames, int) and frames < 2 * stride + 1:
        # Checked before any video is read: the motion reward needs 3 frames at this stride.
        raise ValueError(f"frames must be >= {2 * stride + 1} (the rewards read one frame in "
                         f"{stride} and the camera motion reward needs 3), got {frames}")
    data = VideoFolderDataset(folder, frames, height, width)
    backbone = backbone if backbone is not None else load_tiny_backbone()
    rows: List[Dict[str, object]] = []
    for i, path in enumerate(data.paths):
        video = data[i]
        row: Dict[str, object] = {"video": Path(path).name}
        row.update(sampson_error(video, gap=gap))
        with torch.no_grad():
            r = backbone(video[None, ::stride]).rewards()
        row["reward_motion"] = float(r["motion"][0])
        row["reward_geo"] = float(r["geo"][0])
        rows.append(row)
    fields = ["video", "sampson", "inlier_rate", "pairs", "matches", "reward_motion",
              "reward_geo"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    out = Path(out_dir)
    _io.atomic_write(out / "metrics.csv",
                     lambda tmp: Path(tmp).write_text(buf.getvalue(), encoding="utf-8"))

    def mean(key: str) -> Optional[float]:
        vals = [float(r[key]) for r in rows if not math.isnan(float(r[key]))]
        return sum(vals) / len(vals) if vals else None

    summary = {"videos": len(rows),
               "videos_without_pairs": sum(1 for r in rows if r["pairs"] == 0),
               **{k: mean(k) for k in ("sampson", "inlier_rate", "reward_motion", "reward_geo")}}
    _io.save_json(out / "summary.json", summary)
    return summary
