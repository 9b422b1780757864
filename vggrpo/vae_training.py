"""Training a diffusers Wan VAE (``AutoencoderKLWan``) from scratch on videos: how the embedded
one (:data:`vggrpo.vae.TRAINED_WAN_VAE_CONFIG`) is made.

The recipe, in three parts, each there because the plain one failed here (docs/vae.md):

1. **Frame by frame first.** :func:`init_frame_by_frame` zeroes the taps of every causal 3D
   convolution that look at past frames, and sets the temporal resamplers to "keep the latest
   frame" (encoder) and "repeat the frame" (decoder). The VAE then encodes latent frame ``k``
   from RGB frame ``4k`` alone and decodes it to four copies, so the image stage below trains a
   VAE that already works on videos; the video stage then learns the frames in between. Without
   it, the past taps keep their random initialisation through the image stage (they only ever
   see the zero padding of a single frame), and the same VAE that scores 24 dB on single frames
   scores 11 dB on videos.
2. **Batch-centred latents.** The decoder reads ``mu - mean(mu)`` (per channel, over the batch
   and all positions) while training. Without it, the first few optimiser steps grow a large
   input-independent constant in the encoder (the fastest way to emit the mean image), Wan's
   per-pixel RMS normalisation then divides the input-dependent part away, and training sits at
   the mean image (16 dB) however long it runs. At the end the training set's mean latent is
   folded into the encoder's ``quant_conv`` bias, exactly, so the saved VAE needs no centring.
3. **A low learning rate with warm-up** (3e-4 after 50 steps, cosine to 0): 1e-3 collapses the
   same way even with centring.

The loss is the mean squared error of the decoded video in [-1, 1] through the public
``vae.encode`` / ``vae.decode`` (posterior mean, no sampling, no KL term: the latents are
normalised afterwards by ``latents_mean`` / ``latents_std``, set from the training set).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List

import torch
import torch.nn.functional as F
from torch import Tensor

from ._checks import DictConfig, check_fields
from .schedules import finite_loss, warmup_cosine
from .vae import check_video_frames, vae_factors

__all__ = ["VAETrainingConfig", "init_frame_by_frame", "train_wan_vae", "set_latent_statistics"]


@dataclass
class VAETrainingConfig(DictConfig):
    """Hyper-parameters of :func:`train_wan_vae`.

    ``image_steps`` optimiser steps on ``image_batch`` single frames, then ``video_steps`` on
    ``video_batch`` whole clips, all cropped to ``crop x crop`` pixels (a multiple of the VAE's
    spatial factor, at most the videos' size); Adam at ``lr`` with ``warmup_steps`` of linear
    warm-up and a cosine to 0 over all steps; ``seed`` draws the frames and crops."""

    image_steps: int = 2500
    video_steps: int = 400
    image_batch: int = 16
    video_batch: int = 4
    crop: int = 48
    lr: float = 3e-4
    warmup_steps: int = 50
    seed: int = 0

    def __post_init__(self) -> None:
        check_fields(self, "int >= 0", ("image_steps", "video_steps", "warmup_steps"))
        check_fields(self, "positive int", ("image_batch", "video_batch", "crop"))
        check_fields(self, "int", ("seed",))
        check_fields(self, "finite number > 0", ("lr",))
        if self.image_steps + self.video_steps == 0:
            raise ValueError("VAETrainingConfig: image_steps + video_steps must be > 0, got 0")


def _wan_layers():
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d, WanResample

    return WanCausalConv3d, WanResample


@torch.no_grad()
def init_frame_by_frame(vae) -> None:
    """Make a freshly initialised ``AutoencoderKLWan`` act frame by frame (in place).

    Every causal 3D convolution keeps only its tap on the current frame (the taps on the two
    past frames become 0); each encoder time downsampler (kernel 3, stride 2) keeps its newest
    frame, each decoder time upsampler emits its frame twice (identity weights, zero bias).
    Afterwards latent frame ``k`` of a video is the encoding of RGB frame ``4k`` alone, and
    decoding gives four equal frames per latent frame (frame 0: one)."""
    conv3d, resample = _wan_layers()
    time_convs = [m.time_conv for m in vae.modules()
                  if isinstance(m, resample) and hasattr(m, "time_conv")]
    skip = {id(c) for c in time_convs}
    for m in vae.modules():
        if isinstance(m, conv3d) and id(m) not in skip and m.weight.shape[2] > 1:
            m.weight[:, :, :-1] = 0
    for conv in time_convs:
        w = conv.weight  # [copies*C, C, 3, 1, 1]
        channels = w.shape[1]
        w.zero_()
        conv.bias.zero_()
        for r in range(w.shape[0] // channels):
            w[r * channels:(r + 1) * channels, :, -1, 0, 0] = torch.eye(channels)


def _check_videos(videos: Tensor, vae, crop: int, whole_clips: bool) -> None:
    if not isinstance(videos, Tensor) or videos.dim() != 5 or videos.shape[2] != 3:
        got = list(videos.shape) if isinstance(videos, Tensor) else type(videos).__name__
        raise ValueError(f"videos must be a [N,T,3,H,W] tensor in [0,1], got {got}")
    if not videos.is_floating_point() or not bool(torch.isfinite(videos).all()):
        raise ValueError(f"videos must be finite floating-point values in [0,1], got "
                         f"{videos.dtype}" + ("" if not videos.is_floating_point()
                                              else " with non-finite values"))
    spatial = vae_factors(vae)["spatial"]
    H, W = videos.shape[-2:]
    if crop % spatial or crop > min(H, W):
        raise ValueError(f"VAETrainingConfig.crop must be a multiple of the VAE's spatial factor "
                         f"{spatial} and at most the videos' {H}x{W}, got {crop}")
    if whole_clips:
        check_video_frames(videos.shape[1], vae_factors(vae)["temporal"], "videos")


def _batch(videos: Tensor, count: int, crop: int, clips: bool, spatial: int,
           gen: torch.Generator) -> Tensor:
    """``count`` random single frames (``[B,3,1,c,c]``) or whole clips (``[B,3,T,c,c]``) in
    [-1, 1], one crop position per batch on the latent grid."""
    N, T, _, H, W = videos.shape
    idx = torch.randint(0, N, (count,), generator=gen)
    y0 = int(torch.randint(0, (H - crop) // spatial + 1, (1,), generator=gen)) * spatial
    x0 = int(torch.randint(0, (W - crop) // spatial + 1, (1,), generator=gen)) * spatial
    if clips:
        x = videos[idx, :, :, y0:y0 + crop, x0:x0 + crop].permute(0, 2, 1, 3, 4)
    else:
        frame = torch.randint(0, T, (count,), generator=gen)
        x = videos[idx, frame, :, y0:y0 + crop, x0:x0 + crop].unsqueeze(2)
    return x * 2.0 - 1.0


def train_wan_vae(vae, videos: Tensor, config: VAETrainingConfig = VAETrainingConfig(), *,
                  progress: bool = False) -> List[Dict[str, float]]:
    """Train ``vae`` (a fresh ``AutoencoderKLWan``, float32) on ``videos`` in place.

    Args:
        vae: its weights as initialised; :func:`init_frame_by_frame` is applied here.
        videos: ``[N,T,3,H,W]`` float in [0,1]; ``T = 1 + 4k`` when ``video_steps > 0``.
        config: :class:`VAETrainingConfig`.
    Returns:
        One dict per optimiser step: ``step``, ``stage`` (0 image, 1 video), ``loss`` (MSE in
        [-1, 1]) and ``psnr_db`` of that batch (``10 log10(4 / loss)``).

    Ends with :func:`set_latent_statistics` on ``videos``: the mean latent folded into the
    encoder, ``latents_mean`` / ``latents_std`` in the config. Leaves ``vae`` in eval mode.
    """
    from tqdm.auto import tqdm

    _check_videos(videos, vae, config.crop, config.video_steps > 0)
    spatial = vae_factors(vae)["spatial"]
    init_frame_by_frame(vae)
    vae.train()
    opt = torch.optim.Adam(vae.parameters(), lr=config.lr)
    total = config.image_steps + config.video_steps
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: warmup_cosine(s, config.warmup_steps, total))
    gen = torch.Generator().manual_seed(config.seed)
    history: List[Dict[str, float]] = []
    bar = tqdm(range(total), desc="vae", disable=not progress, leave=False)
    for step in bar:
        clips = step >= config.image_steps
        x = _batch(videos, config.video_batch if clips else config.image_batch, config.crop,
                   clips, spatial, gen)
        mu = vae.encode(x).latent_dist.mean
        mu = mu - mu.mean(dim=(0, 2, 3, 4), keepdim=True)
        loss = F.mse_loss(vae.decode(mu).sample, x)
        value = finite_loss(loss, "train_wan_vae", step, "VAETrainingConfig.lr", config.lr)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        history.append({"step": step, "stage": int(clips), "loss": value,
                        "psnr_db": 10.0 * math.log10(4.0 / max(value, 1e-12))})
        bar.set_postfix(psnr_db=f"{history[-1]['psnr_db']:.1f}")
    vae.eval()
    set_latent_statistics(vae, videos, fold_mean=True)
    return history


@torch.no_grad()
def set_latent_statistics(vae, videos: Tensor, *, fold_mean: bool = False,
                          batch: int = 4) -> Dict[str, List[float]]:
    """Set ``vae.config.latents_mean`` / ``latents_std`` to the per-channel mean and standard
    deviation of the posterior means of ``videos`` (``[N,T,3,H,W]`` in [0,1]; their first
    ``1 + 4k`` frames),
    so that :func:`vggrpo.vae.encode_video` gives latents of mean 0 and std 1 per channel on
    them, as a diffusion model expects.

    With ``fold_mean`` the mean is first subtracted from the encoder's ``quant_conv`` bias (its
    first ``z_dim`` outputs are the posterior mean, so this is exact): the raw latents are then
    centred, which is what :func:`train_wan_vae`'s decoder was trained on, and
    ``latents_mean`` is 0. Returns the two lists."""
    temporal = vae_factors(vae)["temporal"]
    videos = videos[:, :1 + temporal * ((videos.shape[1] - 1) // temporal)]
    C = int(vae.config.z_dim)
    count, total, total_sq = 0, torch.zeros(C, dtype=torch.float64), \
        torch.zeros(C, dtype=torch.float64)
    for start in range(0, videos.shape[0], batch):
        x = videos[start:start + batch].permute(0, 2, 1, 3, 4) * 2.0 - 1.0
        mu = vae.encode(x.to(next(vae.parameters()).dtype)).latent_dist.mean.double()
        count += mu.numel() // C
        total += mu.sum(dim=(0, 2, 3, 4))
        total_sq += (mu ** 2).sum(dim=(0, 2, 3, 4))
    mean = total / count
    std = (total_sq / count - mean ** 2).clamp_min(1e-12).sqrt()
    if fold_mean:
        vae.quant_conv.bias[:C] -= mean.to(vae.quant_conv.bias)
        mean = torch.zeros_like(mean)
    stats = {"latents_mean": [round(float(v), 6) for v in mean],
             "latents_std": [round(float(v), 6) for v in std]}
    vae.register_to_config(**stats)
    return stats
