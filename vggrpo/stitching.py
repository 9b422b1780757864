"""Feature-stitching training of the LGM connector (paper Sec. 3.2).

With the VAE encoder ``E`` and the geometry backbone frozen, the connector ``S`` is trained so
that ``S(E(x))`` reproduces the backbone's own patch tokens at the stitch point on the aligned RGB
frames (latent frame k <-> RGB frame 4k)::

    loss = MSE( connector(encode_video(vae, x)),  backbone.embed(x[:, ::4]) )

Optimiser and schedule (paper): AdamW without weight decay, linear warm-up over the first 100
optimisation steps then cosine decay to 0, gradient-norm clip 1.0, 20 epochs by default. The
learning rate is not in our paper notes; 5e-4 is our untuned choice (with it, the embedded
default's build took the loss from 31.7 to 22.2 over its 20 epochs; no other value was compared).

If the LGM has LoRA adapters (:meth:`~vggrpo.lgm.LatentGeometryModel.add_lora`), the feature loss
cannot reach them (they sit after the stitch point), so a second term distils the backbone's
RGB outputs into the LGM's: ``output_weight * (|log depth - log depth_rgb| + |pose enc - pose
enc_rgb|)`` (means). It is 0 (off) without adapters.

Checkpoints (``out_dir/checkpoint``): the LGM folder (:meth:`save_pretrained`: safetensors and
config.json) plus ``trainer_state.pt`` (optimiser, schedule, RNG, epoch; loaded with
``weights_only=True``), written after every ``checkpoint_every`` epochs as one unit (a hidden
folder renamed into place, :func:`vggrpo._io.commit_folder`: a kill never leaves the weights
of one epoch beside the state of another). ``resume=True``
continues from it and reproduces the uninterrupted run (the batch order of each epoch depends only
on ``(seed, epoch)``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from . import _io
from ._checks import DictConfig, check_fields
from .lgm import LatentGeometryModel
from .schedules import finite_loss, warmup_cosine
from .vae import check_video_frames, encode_video

__all__ = ["StitchingConfig", "train_stitching", "stitching_targets"]

_STATE_FILE = "trainer_state.pt"


@dataclass
class StitchingConfig(DictConfig):
    """Hyper-parameters of :func:`train_stitching` (paper defaults where the paper gives them)."""

    epochs: int = 20
    batch_size: int = 4
    lr: float = 5e-4
    warmup_steps: int = 100
    grad_clip: float = 1.0
    seed: int = 0
    checkpoint_every: int = 1
    output_weight: float = 1.0  # used only when the LGM has LoRA adapters

    def __post_init__(self) -> None:
        check_fields(self, "positive int", ("epochs", "batch_size", "checkpoint_every"))
        check_fields(self, "int >= 0", ("warmup_steps",))
        check_fields(self, "int", ("seed",))
        # Finite: an infinite learning rate trains the connector to NaN and saves that.
        check_fields(self, "finite number > 0", ("lr", "grad_clip"))
        check_fields(self, "finite number >= 0", ("output_weight",))


def _video_of(item: Any) -> Tensor:
    video = item["video"] if isinstance(item, dict) else item
    if not isinstance(video, Tensor) or video.dim() != 4 or video.shape[1] != 3:
        shape = list(video.shape) if isinstance(video, Tensor) else type(video).__name__
        raise ValueError(f"dataset items must be a video [T,3,H,W] in [0,1] (or a dict with "
                         f"'video'), got {shape}")
    return video


@torch.no_grad()
def stitching_targets(backbone, video: Tensor, grid, temporal: int = 4) -> Tensor:
    """The backbone's stitch-point tokens on the aligned RGB frames.

    ``video`` ``[B,T,3,H,W]`` (``T = 1 + 4k``) -> ``[B,1+k,h,w,D]`` with ``grid = (h, w)`` the
    connector's token grid; frames are resized (bilinear, antialiased) to ``(h*p, w*p)`` when the
    backbone's patch size ``p`` does not tile the video exactly into that grid.
    """
    check_video_frames(video.shape[1], temporal)
    frames = video[:, ::temporal]
    B, T, _, H, W = frames.shape
    p = backbone.patch_size
    size = (grid[0] * p, grid[1] * p)
    if (H, W) != size:
        frames = F.interpolate(frames.reshape(B * T, 3, H, W), size=size, mode="bilinear",
                               antialias=True, align_corners=False).reshape(B, T, 3, *size)
    return backbone.embed(frames)


def _pose_encoding(geometry):
    from .geometry.cameras import cameras_to_pose_encoding

    H, W = geometry.image_size
    return cameras_to_pose_encoding(geometry.extrinsics, geometry.intrinsics, H, W)


def _rng_state() -> Dict[str, Any]:
    return {"torch": torch.get_rng_state()}


def train_stitching(
    lgm: LatentGeometryModel,
    vae,
    dataset,
    config: StitchingConfig = StitchingConfig(),
    *,
    out_dir: Optional[Union[str, Path]] = None,
    resume: bool = False,
    stop_after: Optional[int] = None,
    progress: bool = True,
) -> List[Dict[str, float]]:
    """Train the connector (and LoRA adapters, if any) of ``lgm`` by feature stitching.

    Args:
        lgm: the model; its backbone and ``vae`` are frozen here (``requires_grad_(False)``).
        vae: the diffusers Wan VAE the LGM reads latents of; recorded in ``lgm``
            (:meth:`~vggrpo.lgm.LatentGeometryModel.record_vae`), and on ``resume`` the
            checkpoint's record must match it.
        dataset: items are videos ``[T,3,H,W]`` in [0,1] with ``T = 1 + 4k`` (or dicts with a
            ``"video"``), e.g. :class:`vggrpo.data.SyntheticSceneDataset` or
            :class:`vggrpo.data.video.VideoFolderDataset`. Encoded latents and targets are
            computed once (both models are frozen) and kept in memory.
        config: :class:`StitchingConfig`.
        out_dir: where checkpoints go (none written when None).
        resume: continue from ``out_dir/checkpoint`` when it exists.
        stop_after: end this call after that many epochs (a checkpoint is written), e.g. for a
            time-limited job; a later call with ``resume=True`` finishes the schedule.
        progress: show a tqdm progress bar.
    Returns:
        One dict per optimisation step: ``step``, ``epoch``, ``loss``, ``feature_loss``, ``lr``.
    """
    from tqdm.auto import tqdm

    if len(dataset) < 1:
        raise ValueError("dataset is empty")
    if resume and out_dir is None:
        raise ValueError("resume=True needs out_dir")
    if stop_after is not None and (not isinstance(stop_after, int) or stop_after < 1):
        raise ValueError(f"stop_after must be a positive int or None, got {stop_after!r}")
    vae.requires_grad_(False).eval()
    # The connector trained here reads this VAE's latents: recorded now so every checkpoint and
    # the final model carry it (replacing any earlier record: re-stitching moves an LGM to a new
    # VAE).
    lgm.record_vae(vae)
    for name, p in lgm.backbone.named_parameters():
        p.requires_grad_("lora_" in name)
    lgm.connector.requires_grad_(True)
    use_lora = lgm.lora_config is not None
    temporal = lgm.config.temporal_factor

    # Frozen models: encode once. Targets depend only on the data, never on the weights trained.
    latents, targets, rgb_geometry = [], [], []
    with torch.no_grad():
        order = range(0, len(dataset), config.batch_size)
        for start in tqdm(order, desc="encode", disable=not progress, leave=False):
            videos = torch.stack([_video_of(dataset[i])
                                  for i in range(start, min(start + config.batch_size,
                                                            len(dataset)))]).float()
            z = encode_video(vae, videos).float()
            grid = lgm.connector(z[:1]).shape[2:4]
            latents.append(z)
            targets.append(stitching_targets(lgm.backbone, videos, grid, temporal))
            if use_lora:
                # The teacher is the plain backbone: adapters trained before (a resume, or a
                # re-stitch) must not shape their own targets.
                with lgm.adapters_disabled() as teacher:
                    g = teacher.forward_tokens(targets[-1])
                rgb_geometry.append((g.depths.log(), _pose_encoding(g)))
    Z = torch.cat(latents)
    Y = torch.cat(targets)
    if use_lora:
        D_rgb = torch.cat([d for d, _ in rgb_geometry])
        P_rgb = torch.cat([p for _, p in rgb_geometry])

    n = Z.shape[0]
    steps_per_epoch = math.ceil(n / config.batch_size)
    total = steps_per_epoch * config.epochs
    params = [p for p in lgm.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, config.warmup_steps, total))

    start_epoch = 0
    history: List[Dict[str, float]] = []
    ckpt = None if out_dir is None else Path(out_dir) / "checkpoint"
    if ckpt is not None:  # a killed checkpoint write's: the previous one back, leftovers gone
        _io.recover_folder(ckpt)
        _io.remove_leftovers(ckpt.parent, [ckpt.name])
    if resume and ckpt is not None and (ckpt / _STATE_FILE).is_file():
        state = _io.load_state(ckpt / _STATE_FILE)
        if state.get("config") != config.to_dict():
            raise ValueError(f"cannot resume {ckpt}: it was trained with config "
                             f"{state.get('config')}, not {config.to_dict()}")
        try:  # the LGM reads its own folder (and checks it is this LGM's, VAE included)
            lgm.load_weights(ckpt)
        except ValueError as err:
            raise ValueError(f"cannot resume {ckpt}: {err}") from None
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        torch.set_rng_state(state["rng"]["torch"])
        start_epoch = int(state["epoch"])
        history = list(state["history"])

    lgm.train()
    bar = tqdm(total=total, initial=start_epoch * steps_per_epoch, desc="stitching",
               disable=not progress)
    end_epoch = config.epochs if stop_after is None else min(config.epochs,
                                                             start_epoch + stop_after)
    for epoch in range(start_epoch, end_epoch):
        gen = torch.Generator().manual_seed(config.seed * 100003 + epoch)
        perm = torch.randperm(n, generator=gen)
        for b in range(steps_per_epoch):
            idx = perm[b * config.batch_size:(b + 1) * config.batch_size]
            pred = lgm.tokens(Z[idx])
            feature_loss = F.mse_loss(pred, Y[idx])
            loss = feature_loss
            if use_lora:
                g = lgm.backbone.forward_tokens(pred)
                loss = loss + config.output_weight * (
                    (g.depths.log() - D_rgb[idx]).abs().mean()
                    + (_pose_encoding(g) - P_rgb[idx]).abs().mean())
            # Before the step, so a NaN never reaches the weights or the next checkpoint.
            finite_loss(loss, "train_stitching", len(history), "StitchingConfig.lr", config.lr)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
            lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            schedule.step()
            history.append({"step": len(history), "epoch": epoch, "loss": float(loss.detach()),
                            "feature_loss": float(feature_loss.detach()), "lr": lr})
            bar.set_postfix(loss=f"{history[-1]['loss']:.4g}")
            bar.update(1)
        if ckpt is not None and ((epoch + 1) % config.checkpoint_every == 0
                                 or epoch + 1 == end_epoch):
            state = {"optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                     "rng": _rng_state(), "epoch": epoch + 1, "history": history,
                     "config": config.to_dict()}

            def write(tmp: Path, state=state) -> None:
                lgm.save_pretrained(tmp)
                _io.save_state(tmp / _STATE_FILE, state)

            # One unit (the LGM's files and the state), so a kill never pairs the weights of
            # one epoch with the state of another.
            _io.commit_folder(ckpt, write)
    bar.close()
    lgm.eval()
    return history
