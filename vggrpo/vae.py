"""The video VAE side of the LGM: encoding videos into the diffusion latent space and back.

Wan's VAE (diffusers ``AutoencoderKLWan``) is causal in time: latent frame 0 encodes RGB frame 0
alone, and latent frame ``k >= 1`` encodes RGB frames ``4k-3 .. 4k``. A video of ``1 + 4k`` frames
gives ``1 + k`` latent frames, and **latent frame k stands for RGB frame 4k** (its last frame):
that is the frame the geometry backbone sees when the LGM connector is stitched
(:func:`aligned_frames`), and the frame the LGM's geometry describes.

Latents here are always in the *diffusion* space, i.e. normalised as the Wan pipelines do:
``(mode of the posterior - latents_mean) / latents_std`` per channel, with the statistics from the
VAE's config. The temporal factor (4) and spatial factor (8 for Wan2.1, 16 for Wan2.2) and the
channel count (16 / 48) are read from the VAE config.
"""

from __future__ import annotations

from typing import Any, Dict

import torch
from torch import Tensor

__all__ = ["TINY_WAN_VAE_CONFIG", "vae_factors", "encode_video", "decode_latents",
           "aligned_frames", "latent_frame_count", "check_video_frames"]

# diffusers' own test size of AutoencoderKLWan (~14k parameters): runs in well under a second on a
# CPU, with Wan2.1's layout (16 latent channels, 8x spatial, 4x temporal).
TINY_WAN_VAE_CONFIG: Dict[str, Any] = {
    "base_dim": 3,
    "z_dim": 16,
    "dim_mult": [1, 1, 1, 1],
    "num_res_blocks": 1,
    "temperal_downsample": [False, True, True],
}


def vae_factors(vae) -> Dict[str, int]:
    """``{"channels", "spatial", "temporal"}`` of a diffusers Wan VAE, read from its config."""
    cfg = vae.config
    return {
        "channels": int(cfg.z_dim),
        "spatial": int(getattr(cfg, "scale_factor_spatial", None) or 8),
        "temporal": int(getattr(cfg, "scale_factor_temporal", None) or 4),
    }


def latent_frame_count(frames: int, temporal: int = 4) -> int:
    """Latent frames of a ``frames``-frame video (``1 + (frames - 1) / temporal``)."""
    return 1 + (frames - 1) // temporal


def check_video_frames(frames: int, temporal: int = 4, name: str = "video") -> None:
    if frames < 1 or (frames - 1) % temporal != 0:
        lo = 1 + temporal * max((frames - 1) // temporal, 0)
        raise ValueError(
            f"{name} has {frames} frames; the Wan VAE needs 1 + {temporal}k frames "
            f"(e.g. {lo} or {lo + temporal}): trim or pad the video")


def aligned_frames(video: Tensor, temporal: int = 4) -> Tensor:
    """The RGB frames the latent frames stand for: ``video[:, ::temporal]``.

    ``video`` ``[B,T,3,H,W]`` with ``T = 1 + temporal*k`` -> ``[B,1+k,3,H,W]``.
    """
    check_video_frames(video.shape[1], temporal)
    return video[:, ::temporal]


def _latent_stats(vae, like: Tensor):
    cfg = vae.config
    C = int(cfg.z_dim)
    mean = getattr(cfg, "latents_mean", None)
    std = getattr(cfg, "latents_std", None)
    if mean is None or std is None:
        return torch.zeros(C).to(like), torch.ones(C).to(like)
    shape = (1, C, 1, 1, 1)
    return (torch.tensor(mean).to(like).view(shape), torch.tensor(std).to(like).view(shape))


def encode_video(vae, video: Tensor) -> Tensor:
    """RGB video -> normalised diffusion latents (the posterior's mode, no sampling).

    Args:
        vae: a diffusers ``AutoencoderKLWan`` (any size).
        video: ``[B,T,3,H,W]`` in [0,1], ``T = 1 + 4k``, ``H, W`` multiples of the spatial factor.
    Returns:
        ``[B,C,1+k,H/s,W/s]`` latents in the VAE's dtype (``C`` and ``s`` from its config).
    """
    f = vae_factors(vae)
    if video.dim() != 5 or video.shape[2] != 3:
        raise ValueError(f"video must be [B,T,3,H,W] in [0,1], got {list(video.shape)}")
    check_video_frames(video.shape[1], f["temporal"])
    H, W = video.shape[-2:]
    if H % f["spatial"] or W % f["spatial"]:
        raise ValueError(f"video height and width must be multiples of the VAE's spatial factor "
                         f"{f['spatial']}, got {H}x{W}")
    dtype = next(vae.parameters()).dtype
    x = (video.permute(0, 2, 1, 3, 4) * 2.0 - 1.0).to(dtype)
    z = vae.encode(x).latent_dist.mode()
    mean, std = _latent_stats(vae, z)
    return (z - mean) / std


def decode_latents(vae, latents: Tensor) -> Tensor:
    """Normalised diffusion latents ``[B,C,T',h,w]`` -> RGB video ``[B,1+4(T'-1),3,H,W]`` in [0,1]."""
    f = vae_factors(vae)
    if latents.dim() != 5 or latents.shape[1] != f["channels"]:
        raise ValueError(f"latents must be [B,{f['channels']},T,h,w] for this VAE, "
                         f"got {list(latents.shape)}")
    mean, std = _latent_stats(vae, latents)
    z = latents.to(next(vae.parameters()).dtype) * std + mean
    x = vae.decode(z).sample  # [B,3,T,H,W] in about [-1,1]
    return ((x.permute(0, 2, 1, 3, 4) + 1.0) / 2.0).clamp(0.0, 1.0)
