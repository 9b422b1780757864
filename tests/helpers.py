"""Test-only constructions: rotations by Rodrigues, random cameras and point clouds, uniform
trajectories, a free TCP port (none of these use vggrpo), and tiny Wan VAEs of a given seed."""

from __future__ import annotations

import math
import socket

import torch
from torch import Tensor


def hat(w: Tensor) -> Tensor:
    """[..., 3] -> [..., 3, 3] skew-symmetric matrices."""
    z = torch.zeros_like(w[..., 0])
    return torch.stack(
        [
            torch.stack([z, -w[..., 2], w[..., 1]], -1),
            torch.stack([w[..., 2], z, -w[..., 0]], -1),
            torch.stack([-w[..., 1], w[..., 0], z], -1),
        ],
        -2,
    )


def rodrigues(w: Tensor) -> Tensor:
    """exp of rotation vectors [..., 3] (float64 recommended) -> [..., 3, 3]."""
    theta = torch.linalg.vector_norm(w, dim=-1, keepdim=True)[..., None]
    K = hat(w)
    small = theta < 1e-6
    t = torch.where(small, torch.ones_like(theta), theta)
    a = torch.where(small, 1 - theta**2 / 6, torch.sin(t) / t)
    b = torch.where(small, 0.5 - theta**2 / 24, (1 - torch.cos(t)) / t**2)
    eye = torch.eye(3, dtype=w.dtype).expand(K.shape)
    return eye + a * K + b * (K @ K)


def random_axes(n: int, gen: torch.Generator) -> Tensor:
    a = torch.randn(n, 3, generator=gen, dtype=torch.float64)
    return a / torch.linalg.vector_norm(a, dim=-1, keepdim=True)


def random_rotations(n: int, gen: torch.Generator, max_angle: float = math.pi) -> Tensor:
    """[n, 3, 3] float64 rotations with angles uniform in [0, max_angle)."""
    angles = torch.rand(n, 1, generator=gen, dtype=torch.float64) * max_angle
    return rodrigues(random_axes(n, gen) * angles)


def random_cameras(B: int, V: int, H: int, W: int, gen: torch.Generator, dtype=torch.float64):
    """Cameras near the origin looking down +z at a cloud around z = 4 (see random_cloud)."""
    R = random_rotations(B * V, gen, max_angle=0.15).reshape(B, V, 3, 3)
    t = torch.randn(B, V, 3, 1, generator=gen, dtype=torch.float64) * 0.2
    E = torch.cat([R, t], -1)
    f = 0.9 * W
    K = torch.tensor([[f, 0.0, W / 2], [0.0, f, H / 2], [0.0, 0.0, 1.0]], dtype=torch.float64)
    return E.to(dtype), K.expand(B, V, 3, 3).to(dtype).contiguous()


def random_cloud(shape, gen: torch.Generator, dtype=torch.float64) -> Tensor:
    """Points [..., 3] in a slab 3..5 in front of random_cameras, spread across their view."""
    p = torch.rand(*shape, 3, generator=gen, dtype=torch.float64)
    p[..., 0] = (p[..., 0] - 0.5) * 4.0
    p[..., 1] = (p[..., 1] - 0.5) * 2.5
    p[..., 2] = 3.0 + 2.0 * p[..., 2]
    return p.to(dtype)


def random_reprojection_inputs(B, T, H, W, gen, dtype=torch.float64, flow=True):
    """pointmaps, depths, extrinsics, intrinsics, scene_flow for the geometry ops."""
    E, K = random_cameras(B, T, H, W, gen, dtype)
    pointmaps = random_cloud((B, T, H, W), gen, dtype)
    depths = (3.0 + 2.0 * torch.rand(B, T, H, W, generator=gen, dtype=torch.float64)).to(dtype)
    scene_flow = None
    if flow:
        scene_flow = (
            torch.randn(B, T, H, W, 3, generator=gen, dtype=torch.float64) * 0.08
        ).to(dtype)
    return pointmaps, depths, E, K, scene_flow


def uniform_trajectory(T: int, velocity, angular_velocity, dtype=torch.float64) -> Tensor:
    """[T, 3, 4] camera-from-world extrinsics of a camera moving at constant velocity (world)
    and turning at a constant body-frame rate: R_wc[t] = R0 exp(t w^), C[t] = C0 + t v."""
    v = torch.tensor(velocity, dtype=torch.float64)
    w = torch.tensor(angular_velocity, dtype=torch.float64)
    R0 = rodrigues(torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64))
    C0 = torch.tensor([0.5, -0.1, 0.2], dtype=torch.float64)
    out = []
    for t in range(T):
        R_wc = R0 @ rodrigues(w * t)
        C = C0 + v * t
        R_cw = R_wc.T
        out.append(torch.cat([R_cw, (-R_cw @ C)[:, None]], 1))
    return torch.stack(out).to(dtype)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago, for a torchrun rendezvous: pid-derived
    ports could collide between two pytest-xdist workers (or with another job on the machine)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_vae(seed: int, **overrides):
    """diffusers' ``AutoencoderKLWan`` at its own test size (``TINY_WAN_VAE_CONFIG``,
    ``overrides`` changed), freshly initialised from ``seed``: fast, random, and not the embedded
    trained VAE (which the default LGM reads); two seeds give VAEs of the same latent shape and
    other latents. Eval mode."""
    from diffusers import AutoencoderKLWan

    from vggrpo.vae import TINY_WAN_VAE_CONFIG

    torch.manual_seed(seed)
    return AutoencoderKLWan(**{**TINY_WAN_VAE_CONFIG, **overrides}).eval()


def untrained_embedded_vae(seed: int = 0):
    """A VAE that differs from the embedded one in its weights only: its config
    (``TRAINED_WAN_VAE_CONFIG``) and latent normalisation, freshly initialised from ``seed``.
    Eval mode."""
    from diffusers import AutoencoderKLWan

    from vggrpo.defaults import load_tiny_wan_vae
    from vggrpo.vae import TRAINED_WAN_VAE_CONFIG

    config = load_tiny_wan_vae().config
    torch.manual_seed(seed)
    return AutoencoderKLWan(**{**TRAINED_WAN_VAE_CONFIG,
                               "latents_mean": list(config.latents_mean),
                               "latents_std": list(config.latents_std)}).eval()


def assert_same_vae_signature(a: dict, b: dict) -> None:
    """Two vggrpo.vae.vae_signature dicts are equal, the float64 norms up to summation order (a
    parallel reduction on another machine may round the last bit differently)."""
    import pytest

    assert {k: v for k, v in a.items() if k != "encoder_norms"} == \
        {k: v for k, v in b.items() if k != "encoder_norms"}
    assert a["encoder_norms"] == pytest.approx(b["encoder_norms"], rel=1e-12, abs=0)


class OwnBackbone(torch.nn.Module):
    """A user's backbone that is not a TinyVGGT: the protocol's members, delegating to the
    (tiny) model it wraps. This is how an LGM on VGGT, Any4D or a user's own model is saved and
    loaded: the LGM folder records this class's name, not its weights."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner
        self.patch_size, self.dim = inner.patch_size, inner.dim
        self.stitch_layer = inner.stitch_layer

    @property
    def blocks(self):
        return self.inner.blocks

    def embed(self, video):
        return self.inner.embed(video)

    def forward_tokens(self, tokens):
        return self.inner.forward_tokens(tokens)

    def heads(self, tokens, grid):
        return self.inner.heads(tokens, grid)
