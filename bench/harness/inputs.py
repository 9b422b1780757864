"""The benchmark inputs: synthetic box-room videos with moving objects and noisy predicted
geometry, at the sizes of :data:`settings.SIZES`."""

from __future__ import annotations

import dataclasses

import torch

import vggrpo
from vggrpo.data.synthetic import make_scene

from .settings import SIZES


@dataclasses.dataclass(frozen=True)
class BenchInputs:
    """One batch of benchmark inputs (float32, CPU) of shape ``SIZES[size]``.

    ``depths`` and ``pointmaps`` are the exact scene geometry plus noise, standing in for a
    geometry model's predictions: depths with 2% relative Gaussian noise, points moved by an
    isotropic Gaussian of 1% of their depth. Three static and two moving boxes per video (the
    moving ones are masked out by their scene flow); the extrinsics come from a slightly jittered
    dolly (``jitter=0.1``), so the camera motion reward is not trivially 1. ``points`` / ``valid``
    are ``vggrpo.ops.static_points`` of them (the splat_depth inputs).
    """

    size: str
    pointmaps: torch.Tensor
    depths: torch.Tensor
    extrinsics: torch.Tensor
    intrinsics: torch.Tensor
    scene_flow: torch.Tensor
    points: torch.Tensor
    valid: torch.Tensor

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return SIZES[self.size]

    def geometry_args(self, requires_grad: bool = False) -> tuple:
        """``(pointmaps, depths, extrinsics, intrinsics, scene_flow)``; with ``requires_grad``
        the first three are fresh leaves that require grad."""
        pm, d, E = self.pointmaps, self.depths, self.extrinsics
        if requires_grad:
            pm, d, E = (x.detach().clone().requires_grad_() for x in (pm, d, E))
        return pm, d, E, self.intrinsics, self.scene_flow

    def splat_args(self, requires_grad: bool = False) -> tuple:
        """``(points, valid, extrinsics, intrinsics, H, W)``; with ``requires_grad`` the points
        and extrinsics are fresh leaves that require grad."""
        p, E = self.points, self.extrinsics
        if requires_grad:
            p, E = (x.detach().clone().requires_grad_() for x in (p, E))
        _, _, H, W = self.shape
        return p, self.valid, E, self.intrinsics, H, W


def make_inputs(size: str, seed: int = 0) -> BenchInputs:
    B, T, H, W = SIZES[size]
    scene = make_scene(
        B, T, H, W, trajectory="dolly", jitter=0.1, static_objects=3, moving_objects=2, seed=seed
    )
    gen = torch.Generator().manual_seed(seed + 1)
    depths = scene.depths * (1 + 0.02 * torch.randn(scene.depths.shape, generator=gen))
    noise = torch.randn(scene.pointmaps.shape, generator=gen)
    pointmaps = scene.pointmaps + 0.01 * scene.depths[..., None] * noise
    with torch.no_grad():
        points, valid = vggrpo.ops.static_points(pointmaps, scene.scene_flow)
    return BenchInputs(
        size=size,
        pointmaps=pointmaps.contiguous(),
        depths=depths.contiguous(),
        extrinsics=scene.extrinsics.contiguous(),
        intrinsics=scene.intrinsics.contiguous(),
        scene_flow=scene.scene_flow.contiguous(),
        points=points.contiguous(),
        valid=valid.contiguous(),
    )


_INPUTS: dict[str, BenchInputs] = {}


def get_inputs(size: str) -> BenchInputs:
    """Session-cached :func:`make_inputs` (the same tensors for the fused and reference runs)."""
    if size not in _INPUTS:
        _INPUTS[size] = make_inputs(size)
    return _INPUTS[size]
