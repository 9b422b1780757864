"""A tiny VGGT-like geometry model, small enough to train on a CPU on the synthetic scenes.

Architecture (VGGT's shape at toy size; every part is a plain ``nn.Module`` below):

1. ``embed``: a ``patch_size`` convolutional patch embedding plus fixed 2D sine-cosine positions,
   then ``encoder_depth`` frame-wise transformer blocks (VGGT's per-frame DINO encoder). Its output,
   the patch tokens ``[B,T,h,w,C]``, is the stitch point of the LGM (``stitch_layer =
   encoder_depth`` by default; with a smaller ``stitch_layer``, ``embed`` runs that many encoder
   blocks and ``forward_tokens`` the rest, which are not in ``blocks`` and take no LoRA).
2. ``forward_tokens``: a learned camera token per frame (one for frame 0, one shared by the
   others, as VGGT), a sine-cosine frame-index embedding (so scene flow knows which way time runs),
   then ``aggregator_depth`` pairs of blocks alternating frame attention and global attention
   over all frames (``blocks``).
3. ``heads``: a camera head (MLP on the camera token -> VGGT pose encoding
   ``[t, quat xyzw, fov_h, fov_w]``; frame 0 is fixed to the identity pose, so the world frame is
   the first camera's) and a dense head (two pixel-shuffle upsampling stages from the patch grid
   to full resolution) giving depth (``exp`` of the output, so always > 0), world point maps and
   world scene flow per pixel.

Units are whatever the training data uses (metres for the synthetic scenes). Scene flow is per
frame step of the frames the model sees (for the LGM, per latent frame = 4 RGB frames).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import DictConfig, check_fields, is_int
from .cameras import pose_encoding_to_cameras
from .record import Geometry

__all__ = ["TinyVGGTConfig", "TinyVGGT", "sincos_2d", "sincos_1d"]


@dataclass
class TinyVGGTConfig(DictConfig):
    """Sizes of :class:`TinyVGGT` (all explicit; saved as JSON beside the weights)."""

    patch_size: int = 16
    dim: int = 96
    num_heads: int = 4
    encoder_depth: int = 2
    stitch_layer: int = -1  # encoder blocks run by embed(); -1 means all of them
    aggregator_depth: int = 3
    mlp_ratio: float = 4.0
    head_channels: int = 32
    depth_init: float = 3.0  # the depth head's output before training (length units)
    fov_init: float = 0.9  # radians, both fovs of the camera head before training
    extra: Dict[str, Any] = field(default_factory=dict)  # free-form provenance (not used)

    def __post_init__(self) -> None:
        check_fields(self, "positive int", ("patch_size", "dim", "num_heads", "encoder_depth",
                                            "aggregator_depth", "head_channels"))
        if self.patch_size % 4 != 0:
            raise ValueError(f"TinyVGGTConfig.patch_size must be a multiple of 4, "
                             f"got {self.patch_size}")
        if self.dim % (2 * self.num_heads) != 0 or self.dim % 4 != 0:
            raise ValueError(f"TinyVGGTConfig.dim must be a multiple of 4 and of 2*num_heads, "
                             f"got dim={self.dim}, num_heads={self.num_heads}")
        if not is_int(self.stitch_layer) or not -1 <= self.stitch_layer <= self.encoder_depth:
            raise ValueError(f"TinyVGGTConfig.stitch_layer must be -1 or in 0..encoder_depth "
                             f"({self.encoder_depth}), got {self.stitch_layer!r}")
        # Finite: an infinite depth_init or fov_init gives infinite depths or focal lengths.
        check_fields(self, "finite number > 0", ("depth_init", "fov_init", "mlp_ratio"))
        if self.fov_init >= math.pi:  # focal = (W/2) / tan(fov/2): infinite or negative
            raise ValueError(f"TinyVGGTConfig.fov_init must be < pi radians, got {self.fov_init!r}")
        if int(self.dim * self.mlp_ratio) < 1:
            raise ValueError(f"TinyVGGTConfig.mlp_ratio {self.mlp_ratio} leaves the MLPs no "
                             f"hidden units at dim {self.dim}")


def sincos_1d(positions: Tensor, dim: int) -> Tensor:
    """Fixed sine-cosine embedding ``[N, dim]`` of float positions ``[N]`` (transformer style)."""
    half = dim // 2
    freq = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float64) / half)
    angle = positions.to(torch.float64)[:, None] * freq[None]
    return torch.cat([angle.sin(), angle.cos()], dim=-1)


def sincos_2d(h: int, w: int, dim: int) -> Tensor:
    """Fixed 2D sine-cosine embedding ``[h, w, dim]`` (half the channels per axis), float64.

    Computed for any grid, so the model runs at any image size divisible by the patch size.
    """
    ys = sincos_1d(torch.arange(h, dtype=torch.float64), dim // 2)
    xs = sincos_1d(torch.arange(w, dtype=torch.float64), dim // 2)
    return torch.cat([ys[:, None, :].expand(h, w, -1), xs[None, :, :].expand(h, w, -1)], dim=-1)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        n, s, c = x.shape
        q, k, v = self.qkv(x).view(n, s, 3, self.num_heads, c // self.num_heads).unbind(2)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                             v.transpose(1, 2))
        return self.proj(out.transpose(1, 2).reshape(n, s, c))


class Block(nn.Module):
    """Pre-norm transformer block over ``[N, S, C]`` sequences."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class AlternatingBlock(nn.Module):
    """One frame-attention block then one global-attention block over ``[B, T, S, C]`` tokens."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.frame = Block(dim, num_heads, mlp_ratio)
        self.glob = Block(dim, num_heads, mlp_ratio)

    def forward(self, x: Tensor) -> Tensor:
        b, t, s, c = x.shape
        x = self.frame(x.reshape(b * t, s, c)).reshape(b, t, s, c)
        return self.glob(x.reshape(b, t * s, c)).reshape(b, t, s, c)


# Dense outputs per pixel: log-depth offset (1), world point (3), world scene flow (3).
_DENSE_CHANNELS = 7


class DenseHead(nn.Module):
    """Patch grid ``[N, C, h, w]`` -> per-pixel outputs ``[N, 7, h*p, w*p]`` (two pixel
    shuffles)."""

    def __init__(self, dim: int, patch_size: int, channels: int) -> None:
        super().__init__()
        second = patch_size // 4
        self.up1 = nn.Sequential(nn.Conv2d(dim, channels * 16, 3, padding=1), nn.PixelShuffle(4),
                                 nn.GELU())
        self.up2 = nn.Sequential(nn.Conv2d(channels, channels * second * second, 3, padding=1),
                                 nn.PixelShuffle(second), nn.GELU())
        self.out = nn.Conv2d(channels, _DENSE_CHANNELS, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.up2(self.up1(x)))


class TinyVGGT(nn.Module):
    """A tiny VGGT-like model: video ``[B,T,3,H,W]`` in [0,1] -> :class:`Geometry`.

    Implements :class:`~vggrpo.geometry.GeometryBackbone`. ``H`` and ``W`` must be multiples of
    ``config.patch_size``; any frame count ``T >= 1`` works. Output depth maps are ``H x W``.
    """

    def __init__(self, config: Optional[TinyVGGTConfig] = None) -> None:
        super().__init__()
        # A fresh default each time: the model keeps its config (one shared instance would be
        # shared by every default model).
        config = TinyVGGTConfig() if config is None else config
        self.config = config
        c = config
        self.patch_size = c.patch_size
        self.dim = c.dim
        self.stitch_layer = c.encoder_depth if c.stitch_layer < 0 else c.stitch_layer
        self.patch_embed = nn.Conv2d(3, c.dim, c.patch_size, c.patch_size)
        self.encoder = nn.ModuleList(
            Block(c.dim, c.num_heads, c.mlp_ratio) for _ in range(c.encoder_depth))
        self.camera_tokens = nn.Parameter(torch.randn(2, c.dim) * 0.02)
        self.blocks = nn.ModuleList(
            AlternatingBlock(c.dim, c.num_heads, c.mlp_ratio) for _ in range(c.aggregator_depth))
        self.norm = nn.LayerNorm(c.dim)
        self.camera_head = nn.Sequential(nn.Linear(c.dim, c.dim), nn.GELU(), nn.Linear(c.dim, 9))
        self.dense_head = DenseHead(c.dim, c.patch_size, c.head_channels)
        with torch.no_grad():
            # Start from "identity rotation, zero translation, fov_init" rather than noise.
            self.camera_head[-1].weight.mul_(0.01)
            self.camera_head[-1].bias.copy_(
                torch.tensor([0, 0, 0, 0, 0, 0, 1, c.fov_init, c.fov_init], dtype=torch.float32))

    # -- the protocol -------------------------------------------------------------------------

    def embed(self, video: Tensor) -> Tensor:
        """``video`` ``[B,T,3,H,W]`` in [0,1] -> stitch-point patch tokens ``[B,T,H/p,W/p,C]``."""
        p = self.patch_size
        if video.dim() != 5 or video.shape[2] != 3:
            raise ValueError(f"video must be [B,T,3,H,W], got {list(video.shape)}")
        B, T, _, H, W = video.shape
        if H % p or W % p:
            raise ValueError(f"video height and width must be multiples of the patch size {p}, "
                             f"got {H}x{W}")
        x = (video.reshape(B * T, 3, H, W) - 0.5) / 0.25
        x = self.patch_embed(x)  # [BT, C, h, w]
        h, w = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)
        x = x + sincos_2d(h, w, self.dim).to(x).reshape(1, h * w, self.dim)
        for block in self.encoder[:self.stitch_layer]:
            x = block(x)
        return x.reshape(B, T, h, w, self.dim)

    def forward_tokens(self, tokens: Tensor) -> Geometry:
        """Stitch-point tokens ``[B,T,h,w,C]`` -> Geometry with ``(h*p) x (w*p)`` depth maps."""
        if tokens.dim() != 5 or tokens.shape[-1] != self.dim:
            raise ValueError(f"tokens must be [B,T,h,w,{self.dim}], got {list(tokens.shape)}")
        B, T, h, w, C = tokens.shape
        if self.stitch_layer < len(self.encoder):
            x = tokens.reshape(B * T, h * w, C)
            for block in self.encoder[self.stitch_layer:]:
                x = block(x)
            tokens = x.reshape(B, T, h, w, C)
        cam = self.camera_tokens[torch.tensor([0] + [1] * (T - 1), device=tokens.device)]
        x = torch.cat([cam[None, :, None, :].expand(B, T, 1, C).to(tokens),
                       tokens.reshape(B, T, h * w, C)], dim=2)
        frame_pos = sincos_1d(torch.arange(T, dtype=torch.float64), C).to(tokens)
        x = x + frame_pos[None, :, None, :]
        for block in self.blocks:
            x = block(x)
        return self.heads(x, (h, w))

    def heads(self, tokens: Tensor, grid: Tuple[int, int]) -> Geometry:
        """Final tokens ``[B,T,1+h*w,C]`` (camera token first) -> Geometry."""
        h, w = grid
        B, T, _, C = tokens.shape
        p = self.patch_size
        x = self.norm(tokens)
        encoding = self.pose_encoding(x[:, :, 0])
        extrinsics, intrinsics = pose_encoding_to_cameras(encoding, h * p, w * p)
        grid_tokens = x[:, :, 1:].reshape(B * T, h, w, C).permute(0, 3, 1, 2)
        dense = self.dense_head(grid_tokens).reshape(B, T, _DENSE_CHANNELS, h * p, w * p)
        dense = dense.permute(0, 1, 3, 4, 2)
        depths = torch.exp(dense[..., 0] + math.log(self.config.depth_init))
        return Geometry(extrinsics=extrinsics, intrinsics=intrinsics, depths=depths,
                        pointmaps=dense[..., 1:4], scene_flow=dense[..., 4:7])

    def pose_encoding(self, camera_tokens: Tensor) -> Tensor:
        """Camera tokens ``[B,T,C]`` -> pose encodings ``[B,T,9]`` (frame 0 fixed to identity)."""
        raw = self.camera_head(camera_tokens)
        identity = torch.tensor([0, 0, 0, 0, 0, 0, 1], dtype=raw.dtype, device=raw.device)
        first = torch.cat([identity.expand(raw.shape[0], 1, 7), raw[:, :1, 7:]], dim=-1)
        return torch.cat([first, raw[:, 1:]], dim=1)

    def forward(self, video: Tensor) -> Geometry:
        """``video`` ``[B,T,3,H,W]`` in [0,1] -> Geometry (``H x W`` depth maps)."""
        return self.forward_tokens(self.embed(video))
