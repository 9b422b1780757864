"""vggrpo: world-consistent video generation with latent geometry rewards (arXiv 2603.26599).

Drop-in rewards::

    import vggrpo
    r_motion = vggrpo.camera_motion_reward(extrinsics)                       # [B]
    r_geo = vggrpo.geometry_reprojection_reward(pointmaps, depths, extrinsics, intrinsics,
                                                scene_flow)                  # [B]
    adv = vggrpo.group_advantages({"motion": r_motion, "geo": r_geo}, group_size=8)

Geometry from a video latent (the LGM; docs/lgm.md)::

    from vggrpo.defaults import load_default_lgm      # the embedded tiny model, no network
    geometry = load_default_lgm()(latents)             # latents [B,16,T',h,w] -> Geometry
    rewards = geometry.rewards()                       # {"motion": [B], "geo": [B]}

``vggrpo.ops`` holds the fused C++/CUDA ops (with autograd), ``vggrpo.reference`` their
plain-PyTorch twins, docs/ops.md the exact contract.
"""

from . import ops, reference
from ._ext import cuda_built, openmp
from .geometry import Geometry
from .latent_reward import LatentGeometryReward
from .lgm import LatentGeometryModel, LGMConfig
from .rewards import (
    GeometryTerms,
    MotionTerms,
    camera_motion_reward,
    geometry_reprojection_reward,
    group_advantages,
    reprojection_coverage,
)
from .rgb_reward import RGBGeometryReward

__version__ = "0.1.0"

__all__ = [
    "camera_motion_reward",
    "geometry_reprojection_reward",
    "group_advantages",
    "reprojection_coverage",
    "MotionTerms",
    "Geometry",
    "LatentGeometryModel",
    "LGMConfig",
    "LatentGeometryReward",
    "RGBGeometryReward",
    "GeometryTerms",
    "ops",
    "reference",
    "cuda_built",
    "openmp",
    "__version__",
]
