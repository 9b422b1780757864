"""The RGB baseline: the reward path VGGRPO replaces (decode, then a geometry model on pixels).

``RGBGeometryReward(vae, backbone)`` has the interface of :class:`vggrpo.LatentGeometryReward`
(latents ``[B,C,T',h,w]`` -> ``{"motion": [B], "geo": [B]}``, ``weighted``), so either can be
handed to the trainer, the sampler's guidance or the benchmarks:

1. decode the latents with the video VAE (:func:`vggrpo.vae.decode_latents`):
   ``[B, 1+4(T'-1), 3, H, W]`` in [0,1];
2. keep the frames the latent frames stand for (every 4th, :func:`vggrpo.vae.aligned_frames`),
   resized (bilinear, antialiased) to the nearest multiples of the backbone's patch size
   (halves round up) when needed;
3. run the backbone on them -> Geometry with ``T'`` frames -> the same two rewards.

Gradients flow through the decoder and the backbone (guidance works), at the memory cost the
paper's efficiency table measures. With the embedded tiny models the decoder is the tiny VAE's
random-weight decoder: fine for timing and memory, meaningless as geometry.
"""

from __future__ import annotations

from typing import Mapping, Optional

import torch.nn.functional as F
from torch import Tensor, nn

from ._nvtx import nvtx_range
from .latent_reward import GeometryReward
from .vae import aligned_frames, decode_latents, vae_factors

__all__ = ["RGBGeometryReward"]


class RGBGeometryReward(GeometryReward):
    """Decode with ``vae``, run ``backbone`` on the aligned RGB frames, score (module docstring).

    Args:
        vae: a diffusers Wan VAE (frozen here).
        backbone: a :class:`~vggrpo.geometry.GeometryBackbone` reading RGB (frozen here), e.g.
            :func:`vggrpo.defaults.load_tiny_backbone` or a VGGT adapter.
        weights, topk, flow_threshold, coverage: as :class:`~vggrpo.LatentGeometryReward`.
    """

    def __init__(self, vae: nn.Module, backbone: nn.Module,
                 weights: Optional[Mapping[str, float]] = None, *, topk: int = 3,
                 flow_threshold: float = 0.1, coverage: Optional[float] = None) -> None:
        super().__init__(weights, topk=topk, flow_threshold=flow_threshold, coverage=coverage)
        self.vae = vae.requires_grad_(False).eval()
        self.backbone = backbone.requires_grad_(False).eval()

    channels_reader = "VAE decodes"
    channels_advice = "pass this model's VAE"

    @property
    def latent_channels(self) -> int:
        return int(vae_factors(self.vae)["channels"])

    def frames(self, latents: Tensor) -> Tensor:
        """Decoded, aligned RGB frames ``[B,T',3,H',W']`` the backbone reads."""
        with nvtx_range("vggrpo.decode"):
            video = decode_latents(self.vae, latents)
        frames = aligned_frames(video, vae_factors(self.vae)["temporal"])
        p = self.backbone.patch_size
        B, T, _, H, W = frames.shape
        # Nearest multiple of the patch size, halves rounding up (Python's round() would round
        # 2.5 down and 3.5 up).
        size = (max(p, int(H / p + 0.5) * p), max(p, int(W / p + 0.5) * p))
        if (H, W) != size:
            frames = F.interpolate(frames.reshape(B * T, 3, H, W), size=size, mode="bilinear",
                                   antialias=True, align_corners=False).reshape(B, T, 3, *size)
        return frames

    def geometry(self, latents: Tensor):
        frames = self.frames(latents)
        with nvtx_range("vggrpo.rgb_backbone"):
            return self.backbone(frames.to(next(self.backbone.parameters()).dtype))
