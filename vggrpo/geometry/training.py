"""Supervised training of the tiny backbone on synthetic scenes with exact ground truth.

The model sees the frames the LGM's latent frames stand for (every 4th frame of a ``1 + 4k``
video), so its scene flow is per 4-frame step. Targets are re-expressed in the first frame's
camera (VGGT's world frame, the one :class:`~vggrpo.geometry.TinyVGGT` predicts in).

Loss (means over pixels / frames; metres for the synthetic scenes)::

    |enc - enc_gt|_1 (pose encoding, quaternion sign-aligned)  +  |log d - log d_gt|
    + 0.5 |P - P_gt|  +  |F - F_gt|  +  motion_weight * motion

``motion`` supervises what the camera motion reward reads, the steps between consecutive frames
rather than each pose on its own: with ``C`` the camera centres and ``Q[t] = R_wc[t]^T
R_wc[t+1]`` the relative rotations, the L1 errors of the steps ``C[t+1] - C[t]`` (metres), of
their differences (accelerations), of ``Q`` and of ``Q[t+1] - Q[t]`` (matrix entries). A pose
loss alone lets errors of a few degrees that vary smoothly from frame to frame cost as much as
ones that shake, and the reward tells those apart.

Optimiser: AdamW (weight decay 0.01), linear warm-up then cosine decay, grad clip 1.0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List

import torch
from torch import Tensor

from .._checks import DictConfig, check_fields
from ..schedules import finite_loss, warmup_cosine
from .cameras import camera_centres, cameras_to_pose_encoding, relative_to_first_camera
from .record import Geometry

__all__ = ["BackboneTrainingConfig", "supervised_targets", "supervised_loss", "motion_loss",
           "train_tiny_backbone"]


@dataclass
class BackboneTrainingConfig(DictConfig):
    """Hyper-parameters of :func:`train_tiny_backbone`.

    ``steps`` optimiser steps of ``batch_size`` videos each; ``motion_weight`` the weight of the
    camera-step term (module docstring; 0 leaves it out); peak learning rate ``lr`` after
    ``warmup_steps`` linear warm-up steps, then cosine decay to 0; AdamW ``weight_decay``;
    gradient-norm clip ``grad_clip``; ``seed`` draws the batches. Checked on construction, so a
    bad value fails before any training (an infinite ``lr`` would otherwise train to NaN).
    """

    steps: int = 1500
    batch_size: int = 4
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 100
    grad_clip: float = 1.0
    motion_weight: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        check_fields(self, "positive int", ("steps", "batch_size"))
        check_fields(self, "int >= 0", ("warmup_steps",))
        check_fields(self, "int", ("seed",))
        check_fields(self, "finite number > 0", ("lr", "grad_clip"))
        check_fields(self, "finite number >= 0", ("weight_decay", "motion_weight"))


def supervised_targets(batch: Dict[str, Tensor], temporal: int = 4) -> Dict[str, Tensor]:
    """Ground truth for the frames ``::temporal`` of a batch of synthetic videos.

    ``batch``: ``video [B,T,3,H,W]``, ``extrinsics [B,T,3,4]``, ``intrinsics [B,T,3,3]``,
    ``depths [B,T,H,W]``, ``pointmaps [B,T,H,W,3]``, ``scene_flow [B,T,H,W,3]`` (per RGB frame,
    constant velocity). Returns the subsampled ``video`` and a :class:`Geometry` (``"geometry"``)
    in the first frame's camera, with flow per ``temporal``-frame step.
    """
    sl = slice(None, None, temporal)
    E, P, Fl = relative_to_first_camera(batch["extrinsics"][:, sl], batch["pointmaps"][:, sl],
                                        batch["scene_flow"][:, sl] * temporal)
    geometry = Geometry(extrinsics=E, intrinsics=batch["intrinsics"][:, sl],
                        depths=batch["depths"][:, sl], pointmaps=P, scene_flow=Fl)
    return {"video": batch["video"][:, sl], "geometry": geometry}


def _aligned_quaternion_l1(q: Tensor, q_gt: Tensor) -> Tensor:
    q = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    sign = torch.where((q * q_gt).sum(-1, keepdim=True) < 0, -1.0, 1.0)
    return (q * sign - q_gt).abs().sum(-1)


def _camera_steps(extrinsics: Tensor) -> Dict[str, Tensor]:
    """Steps of the cameras of ``extrinsics [B,T,3,4]`` (world to camera): centre steps
    ``[B,T-1,3]`` and relative rotations ``R_wc[t]^T R_wc[t+1]`` ``[B,T-1,3,3]``."""
    C = camera_centres(extrinsics)
    R = extrinsics[..., :3, :3]  # R_cw; R_wc[t]^T R_wc[t+1] = R_cw[t] R_cw[t+1]^T
    return {"v": C[:, 1:] - C[:, :-1], "q": R[:, :-1] @ R[:, 1:].transpose(-1, -2)}


def motion_loss(pred_extrinsics: Tensor, target_extrinsics: Tensor) -> Tensor:
    """The camera-step term of the module docstring (a scalar) for ``[B,T,3,4]`` extrinsics;
    0 for fewer than 2 frames, no acceleration term for fewer than 3."""
    if pred_extrinsics.shape[1] < 2:
        return pred_extrinsics.sum() * 0.0
    p, t = _camera_steps(pred_extrinsics), _camera_steps(target_extrinsics)
    loss = pred_extrinsics.new_zeros(())
    for k in ("v", "q"):
        loss = loss + (p[k] - t[k]).abs().mean()
        if p[k].shape[1] >= 2:
            loss = loss + ((p[k][:, 1:] - p[k][:, :-1]) - (t[k][:, 1:] - t[k][:, :-1])).abs().mean()
    return loss


def supervised_loss(pred: Geometry, target: Geometry,
                    motion_weight: float = 0.0) -> Dict[str, Tensor]:
    """The loss terms (scalars) and their sum ``"loss"`` (see the module docstring); the
    ``"motion"`` term is computed (and logged) whatever ``motion_weight``."""
    H, W = target.image_size
    enc = cameras_to_pose_encoding(pred.extrinsics, pred.intrinsics, H, W)
    enc_gt = cameras_to_pose_encoding(target.extrinsics, target.intrinsics, H, W)
    camera = ((enc[..., :3] - enc_gt[..., :3]).abs().sum(-1)
              + _aligned_quaternion_l1(enc[..., 3:7], enc_gt[..., 3:7])
              + (enc[..., 7:] - enc_gt[..., 7:]).abs().sum(-1)).mean()
    depth = (pred.depths.log() - target.depths.log()).abs().mean()
    points = (pred.pointmaps - target.pointmaps).abs().mean()
    flow = (pred.scene_flow - target.scene_flow).abs().mean()
    motion = motion_loss(pred.extrinsics, target.extrinsics)
    loss = camera + depth + 0.5 * points + flow
    if motion_weight:
        loss = loss + motion_weight * motion
    return {"loss": loss, "camera": camera, "depth": depth, "points": points, "flow": flow,
            "motion": motion}


def train_tiny_backbone(model, dataset, config: BackboneTrainingConfig = BackboneTrainingConfig(),
                        *, temporal: int = 4, progress: bool = True) -> List[Dict[str, float]]:
    """Train ``model`` (a :class:`~vggrpo.geometry.TinyVGGT`) on ``dataset`` items (dicts of
    :class:`vggrpo.data.SyntheticSceneDataset`), drawing batches with replacement from a seeded
    generator. Returns per-step loss terms."""
    from tqdm.auto import tqdm

    gen = torch.Generator().manual_seed(config.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    total = config.steps

    def factor(s: int) -> float:
        return warmup_cosine(s, config.warmup_steps, total)

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    model.train()
    history: List[Dict[str, float]] = []
    bar = tqdm(range(total), desc="backbone", disable=not progress)
    for step in bar:
        idx = torch.randint(len(dataset), (config.batch_size,), generator=gen).tolist()
        items = [dataset[i] for i in idx]
        batch = {k: torch.stack([it[k] for it in items]) for k in items[0]}
        tgt = supervised_targets(batch, temporal)
        terms = supervised_loss(model(tgt["video"]), tgt["geometry"], config.motion_weight)
        finite_loss(terms["loss"], "train_tiny_backbone", step, "BackboneTrainingConfig.lr",
                    config.lr)
        opt.zero_grad(set_to_none=True)
        terms["loss"].backward()
        torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        opt.step()
        sched.step()
        history.append({k: float(v.detach()) for k, v in terms.items()})
        bar.set_postfix(loss=f"{history[-1]['loss']:.3f}")
    model.eval()
    return history
