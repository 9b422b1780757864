"""The :class:`Geometry` record: what a geometry model reads from a video (docs/conventions.md)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Dict, Optional

from torch import Tensor

__all__ = ["Geometry"]


# eq=False: field-wise == on tensors is ambiguous; compare fields with torch.equal instead.
@dataclass(frozen=True, eq=False)
class Geometry:
    """Per-frame 4D geometry of a batch of videos, in the package's conventions.

    ``B`` videos, ``T`` frames (for the LGM: latent frames), ``H x W`` pixels of the depth maps:

    * ``extrinsics`` ``[B,T,3,4]``: camera-from-world ``[R | t]``, OpenCV axes (x right, y down,
      z forward). Models predict the world frame as the first frame's camera (frame 0 is the
      identity), as VGGT does; rewards do not depend on that choice.
    * ``intrinsics`` ``[B,T,3,3]``: pinhole, pixels of the ``H x W`` depth maps, principal point of
      a centred camera at ``(W/2, H/2)``.
    * ``depths`` ``[B,T,H,W]``: z-depth (same length unit as the translations); a pixel is valid
      where finite and > 0.
    * ``pointmaps`` ``[B,T,H,W,3]``: world point of every pixel.
    * ``scene_flow`` ``[B,T,H,W,3]`` or None: world motion of every pixel's point from frame t to
      t+1 (length units per frame step; None means "all static", e.g. for VGGT).
    * ``confidences``: optional dict of per-pixel confidences ``[B,T,H,W]`` (e.g. ``"depth"``).

    All fields share the depths' floating dtype and device, and every shape must agree with the
    depths' ``[B,T,H,W]``: both are checked on construction (metadata only, no device sync), and a
    field that disagrees gets a ``ValueError`` naming it. Frozen; :meth:`replace` makes a
    modified copy.
    """

    extrinsics: Tensor
    intrinsics: Tensor
    depths: Tensor
    pointmaps: Tensor
    scene_flow: Optional[Tensor] = None
    confidences: Optional[Dict[str, Tensor]] = None

    def __post_init__(self) -> None:
        tensors = {"extrinsics": self.extrinsics, "intrinsics": self.intrinsics,
                   "depths": self.depths, "pointmaps": self.pointmaps}
        if self.scene_flow is not None:
            tensors["scene_flow"] = self.scene_flow
        if self.confidences is not None and not isinstance(self.confidences, dict):
            raise TypeError(f"confidences must be a dict of tensors or None, got "
                            f"{type(self.confidences).__name__}")
        tensors.update({f"confidences[{k!r}]": v for k, v in (self.confidences or {}).items()})
        for name, value in tensors.items():
            if not isinstance(value, Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
        # The docstring's promise, checked here (metadata only, no sync): a float64 pose next to
        # float32 depths, or a field left on the CPU, would otherwise surface deep in an op.
        for name, value in tensors.items():
            if value.dtype != self.depths.dtype or value.device != self.depths.device:
                raise ValueError(f"{name} is {value.dtype} on {value.device}; every field must "
                                 f"match depths ({self.depths.dtype} on {self.depths.device})")
        if not self.depths.is_floating_point():
            raise ValueError(f"depths must be floating point, got {self.depths.dtype}")
        E, K, D, P = self.extrinsics, self.intrinsics, self.depths, self.pointmaps
        if D.dim() != 4:
            raise ValueError(f"depths must be [B,T,H,W], got {tuple(D.shape)}")
        B, T, H, W = D.shape
        expected = {
            "extrinsics": (E, ((B, T, 3, 4), (B, T, 4, 4))),
            "intrinsics": (K, ((B, T, 3, 3),)),
            "pointmaps": (P, ((B, T, H, W, 3),)),
        }
        if self.scene_flow is not None:
            expected["scene_flow"] = (self.scene_flow, ((B, T, H, W, 3),))
        for name, (value, shapes) in expected.items():
            if tuple(value.shape) not in shapes:
                want = " or ".join(str(list(s)) for s in shapes)
                raise ValueError(f"{name} must be {want} (from depths {list(D.shape)}), "
                                 f"got {list(value.shape)}")
        for name, conf in (self.confidences or {}).items():
            if tuple(conf.shape) != (B, T, H, W):
                raise ValueError(f"confidences[{name!r}] must be {[B, T, H, W]}, "
                                 f"got {list(conf.shape)}")

    @property
    def batch(self) -> int:
        return self.depths.shape[0]

    @property
    def frames(self) -> int:
        return self.depths.shape[1]

    @property
    def image_size(self) -> tuple:
        """``(H, W)`` of the depth maps."""
        return tuple(self.depths.shape[2:])

    def replace(self, **changes) -> "Geometry":
        return dataclasses.replace(self, **changes)

    def map(self, fn) -> "Geometry":
        """Apply ``fn`` to every tensor (e.g. ``lambda t: t.detach()``)."""
        conf = None if self.confidences is None else {k: fn(v) for k, v in self.confidences.items()}
        return Geometry(
            extrinsics=fn(self.extrinsics),
            intrinsics=fn(self.intrinsics),
            depths=fn(self.depths),
            pointmaps=fn(self.pointmaps),
            scene_flow=None if self.scene_flow is None else fn(self.scene_flow),
            confidences=conf,
        )

    def to(self, *args, **kwargs) -> "Geometry":
        return self.map(lambda t: t.to(*args, **kwargs))

    def detach(self) -> "Geometry":
        return self.map(Tensor.detach)

    @staticmethod
    def from_scene(scene) -> "Geometry":
        """The exact geometry of a :class:`vggrpo.data.SceneGeometry` (synthetic ground truth)."""
        return Geometry(
            extrinsics=scene.extrinsics,
            intrinsics=scene.intrinsics,
            depths=scene.depths,
            pointmaps=scene.pointmaps,
            scene_flow=scene.scene_flow,
        )

    def rewards(self, *, flow_threshold: float = 0.1, topk: int = 3,
                coverage: Optional[float] = None) -> Dict[str, Tensor]:
        """``{"motion": [B], "geo": [B]}``: the two paper rewards of this geometry (higher is
        better); with ``coverage`` (a ``min_coverage`` in ``(0, 1]``) also ``"coverage": [B]``,
        :func:`vggrpo.reprojection_coverage` of the geometry reward's view counts (a guard beyond
        the paper against geometry that projects nowhere, which ``"geo"`` scores 0, its best).

        ``camera_motion_reward(extrinsics)`` and ``geometry_reprojection_reward(pointmaps, depths,
        extrinsics, intrinsics, scene_flow, flow_threshold, topk)``; differentiable (the
        coverage, a ratio of counts, has no gradient).
        """
        from vggrpo.rewards import (
            camera_motion_reward,
            geometry_reprojection_reward,
            reprojection_coverage,
        )

        geo, terms = geometry_reprojection_reward(
            self.pointmaps, self.depths, self.extrinsics, self.intrinsics, self.scene_flow,
            flow_threshold=flow_threshold, topk=topk, return_terms=True)
        out = {"motion": camera_motion_reward(self.extrinsics), "geo": geo}
        if coverage is not None:
            H, W = self.depths.shape[-2:]
            out["coverage"] = reprojection_coverage(terms.view_counts, int(H) * int(W),
                                                    min_coverage=coverage)
        return out
