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

An option, off in the recipe (``teacher_weight``, docs/vae.md): a **linear teacher**
(:class:`LinearVideoCode`). The principal components of the training videos' pixels, 16 per 8x8
patch of frame 0 and per 8x8x4 block after it (the VAE's own latent layout), reconstruct
held-out videos at 26 dB where the trained VAE reaches 21 dB: its training, not its latent
size, holds it back. With the teacher, the encoder is also pulled towards those components and
the decoder also learns to decode them, with a weight falling linearly to 0 over training, so
both get an input-dependent target from the first step. It lifts the single-frame stage (25.5 dB
on held-out key frames after 1000 steps, against 19.1 dB without it), but the whole-clip stage
then loses that again, so it is not yet a better recipe.

The loss is the mean squared error of the decoded video in [-1, 1] through the public
``vae.encode`` / ``vae.decode`` (posterior mean, no sampling, no KL term: the latents are
normalised afterwards by ``latents_mean`` / ``latents_std``, set from the training set).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ._checks import DictConfig, check_fields, is_int
from .schedules import finite_loss, warmup_cosine
from .vae import check_video_frames, vae_factors

__all__ = ["VAETrainingConfig", "LinearVideoCode", "init_frame_by_frame", "train_wan_vae",
           "set_latent_statistics"]


@dataclass
class VAETrainingConfig(DictConfig):
    """Hyper-parameters of :func:`train_wan_vae`.

    ``image_steps`` optimiser steps on ``image_batch`` single frames, then ``video_steps`` on
    ``video_batch`` whole clips, all cropped to ``crop x crop`` pixels (a multiple of the VAE's
    spatial factor, at most the videos' size); Adam at ``lr`` with ``warmup_steps`` of linear
    warm-up and a cosine to 0 over all steps; ``seed`` draws the frames and crops;
    ``teacher_weight`` the starting weight of the :class:`LinearVideoCode` teacher terms (the
    encoder's posterior mean against the code, and the decoded code against the input, each a
    mean squared error), falling linearly to 0 at the last step; 0, the default, trains without
    them."""

    image_steps: int = 2500
    video_steps: int = 400
    image_batch: int = 16
    video_batch: int = 4
    crop: int = 48
    lr: float = 3e-4
    warmup_steps: int = 50
    seed: int = 0
    teacher_weight: float = 0.0

    def __post_init__(self) -> None:
        check_fields(self, "int >= 0", ("image_steps", "video_steps", "warmup_steps"))
        check_fields(self, "positive int", ("image_batch", "video_batch", "crop"))
        check_fields(self, "int", ("seed",))
        check_fields(self, "finite number > 0", ("lr",))
        check_fields(self, "finite number >= 0", ("teacher_weight",))
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


class LinearVideoCode:
    """A linear code of videos at a Wan VAE's latent layout: the principal components of the
    pixels of each ``s x s`` patch of frame 0, and of each ``s x s x t`` block of the later
    frames (``s``, ``t`` the VAE's spatial and temporal factors), ``channels`` of each, scaled to
    unit variance on the videos they were fitted on.

    :meth:`encode` maps clips ``[B,3,1+t*k,H,W]`` in [-1, 1] to codes ``[B,channels,1+k,H/s,W/s]``,
    where a Wan VAE puts its latents; :meth:`decode` maps them back (the least-squares
    reconstruction). Its reconstruction is the ceiling a linear map of the VAE's latent size
    reaches; :func:`train_wan_vae` uses it as a teacher. Build it with :meth:`fit`."""

    def __init__(self, parts: List[Tuple[int, Tensor, Tensor, Tensor]], spatial: int) -> None:
        # One (frames per block, mean [D], basis [channels,D], scale [channels]) per part.
        self.parts, self.spatial = parts, spatial

    @classmethod
    @torch.no_grad()
    def fit(cls, clips: Tensor, channels: int, spatial: int, temporal: int) -> "LinearVideoCode":
        """Fit on ``clips`` ``[N,3,T,H,W]`` in [-1, 1] (float; ``H``, ``W`` multiples of
        ``spatial``): the first frame's patches, and when ``T = 1 + temporal*k`` with ``k >= 1``
        the later blocks too. Components beyond the rank of the data code to 0."""
        for name, value in (("channels", channels), ("spatial", spatial),
                            ("temporal", temporal)):
            if not is_int(value) or value < 1:
                raise ValueError(f"LinearVideoCode.fit: {name} must be a positive int, got "
                                 f"{value!r}")
        _check_clips(clips, spatial, None, "LinearVideoCode.fit: clips")
        parts = []
        spans = [(0, 1, 1)]
        if clips.shape[2] > 1 and (clips.shape[2] - 1) % temporal == 0:
            spans.append((1, clips.shape[2], temporal))
        for start, end, t in spans:
            rows = _blocks(clips[:, :, start:end], t, spatial).reshape(
                -1, 3 * t * spatial * spatial).double()
            mean = rows.mean(0)
            # Eigenvectors of the covariance, largest first: deterministic and cheap (D <= 768).
            values, vectors = torch.linalg.eigh((rows - mean).T @ (rows - mean) / rows.shape[0])
            order = values.flip(0)[:channels].clamp_min(0)
            basis = vectors.flip(1)[:, :channels].T
            keep = order > 1e-12 * max(float(order[0]), 1e-30)
            scale = torch.where(keep, order.sqrt(), torch.ones_like(order))
            basis = basis * keep[:, None]
            if basis.shape[0] < channels:  # fewer pixels per block than channels
                pad = channels - basis.shape[0]
                basis = torch.cat([basis, basis.new_zeros(pad, basis.shape[1])])
                scale = torch.cat([scale, scale.new_ones(pad)])
            parts.append((t, mean.float(), basis.float(), scale.float()))
        return cls(parts, spatial)

    def encode(self, clips: Tensor) -> Tensor:
        """``[B,3,1+t*k,H,W]`` in [-1, 1] -> codes ``[B,channels,1+k,H/s,W/s]`` (float32)."""
        _check_clips(clips, self.spatial, self.parts[-1][0], "LinearVideoCode.encode: clips")
        if len(self.parts) == 1 and clips.shape[2] > 1:
            raise ValueError(f"clips has {clips.shape[2]} frames, but this LinearVideoCode was "
                             f"fitted on single frames only")
        out = []
        for (t, mean, basis, scale), (start, end) in zip(self.parts,
                                                         ((0, 1), (1, clips.shape[2]))):
            if end <= start:
                continue
            rows = _blocks(clips[:, :, start:end].float(), t, self.spatial)
            out.append(((rows - mean) @ basis.T / scale).permute(0, 4, 1, 2, 3))
        return torch.cat(out, dim=2)

    def decode(self, codes: Tensor) -> Tensor:
        """Codes ``[B,channels,T',h,w]`` -> clips ``[B,3,1+t(T'-1),h*s,w*s]`` in about [-1, 1]."""
        s = self.spatial
        B, _, T, h, w = codes.shape
        out = []
        for (t, mean, basis, scale), frames in zip(self.parts, (slice(0, 1), slice(1, T))):
            z = codes[:, :, frames].permute(0, 2, 3, 4, 1)  # [B,T',h,w,C]
            if z.shape[1] == 0:
                continue
            rows = (z * scale) @ basis + mean  # [B,T',h,w,3*t*s*s]
            x = rows.reshape(B, z.shape[1], h, w, t, 3, s, s).permute(0, 5, 1, 4, 2, 6, 3, 7)
            out.append(x.reshape(B, 3, z.shape[1] * t, h * s, w * s))
        return torch.cat(out, dim=2)


def _check_clips(clips, spatial: int, temporal, what: str) -> None:
    """One ValueError naming ``what`` unless ``clips`` is a float ``[N,3,T,H,W]`` tensor with
    ``H``, ``W`` multiples of ``spatial`` and, for a ``temporal`` factor, ``T = 1 + temporal*k``."""
    if not isinstance(clips, Tensor) or clips.dim() != 5 or clips.shape[1] != 3 \
            or not clips.is_floating_point():
        got = (f"{list(clips.shape)} {clips.dtype}" if isinstance(clips, Tensor)
               else type(clips).__name__)
        raise ValueError(f"{what} must be a float [N,3,T,H,W] tensor in [-1, 1], got {got}")
    H, W = clips.shape[-2:]
    if H % spatial or W % spatial:
        raise ValueError(f"{what} must have height and width multiples of {spatial}, got {H}x{W}")
    if temporal is not None and (clips.shape[2] - 1) % temporal:
        raise ValueError(f"{what} must have 1 + {temporal}k frames, got {clips.shape[2]}")


def _blocks(clips: Tensor, frames: int, spatial: int) -> Tensor:
    """``[B,3,T,H,W]`` -> ``[B,T/frames,H/s,W/s,frames*3*s*s]``: each block's pixels, frame-major
    (then colour, row, column)."""
    B, C, T, H, W = clips.shape
    s = spatial
    x = clips.reshape(B, C, T // frames, frames, H // s, s, W // s, s)
    return x.permute(0, 2, 4, 6, 3, 1, 5, 7).reshape(B, T // frames, H // s, W // s, -1)


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
        One dict per optimiser step: ``step``, ``stage`` (0 image, 1 video), ``loss`` (the
        reconstruction's MSE in [-1, 1]), ``psnr_db`` of that batch (``10 log10(4 / loss)``) and
        ``teacher_weight`` (the weight of the teacher terms at that step).

    Ends with :func:`set_latent_statistics` on ``videos``: the mean latent folded into the
    encoder, ``latents_mean`` / ``latents_std`` in the config. Leaves ``vae`` in eval mode.
    """
    from tqdm.auto import tqdm

    _check_videos(videos, vae, config.crop, config.video_steps > 0)
    factors = vae_factors(vae)
    spatial = factors["spatial"]
    init_frame_by_frame(vae)
    vae.train()
    opt = torch.optim.Adam(vae.parameters(), lr=config.lr)
    total = config.image_steps + config.video_steps
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: warmup_cosine(s, config.warmup_steps, total))
    gen = torch.Generator().manual_seed(config.seed)
    teacher = None
    if config.teacher_weight > 0:
        # Fitted on at most 64 evenly spaced videos: enough rows for 768-pixel blocks, seconds.
        some = videos[::max(1, videos.shape[0] // 64)][:64]
        teacher = LinearVideoCode.fit(some.permute(0, 2, 1, 3, 4) * 2.0 - 1.0,
                                      factors["channels"], spatial, factors["temporal"])
    history: List[Dict[str, float]] = []
    bar = tqdm(range(total), desc="vae", disable=not progress, leave=False)
    for step in bar:
        clips = step >= config.image_steps
        x = _batch(videos, config.video_batch if clips else config.image_batch, config.crop,
                   clips, spatial, gen)
        mu = vae.encode(x).latent_dist.mean
        reconstruction = F.mse_loss(
            vae.decode(mu - mu.mean(dim=(0, 2, 3, 4), keepdim=True)).sample, x)
        loss = reconstruction
        weight = config.teacher_weight * (1.0 - step / total) if teacher is not None else 0.0
        if weight > 0:
            code = teacher.encode(x)
            loss = loss + weight * (F.mse_loss(mu, code) + F.mse_loss(vae.decode(code).sample, x))
        finite_loss(loss, "train_wan_vae", step, "VAETrainingConfig.lr", config.lr)
        value = float(reconstruction.detach())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        history.append({"step": step, "stage": int(clips), "loss": value,
                        "psnr_db": 10.0 * math.log10(4.0 / max(value, 1e-12)),
                        "teacher_weight": weight})
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
