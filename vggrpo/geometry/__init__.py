"""Geometry models: the :class:`Geometry` record, camera conventions, backbones.

* :class:`Geometry` — what a geometry model predicts (cameras, depths, point maps, scene flow).
* :mod:`vggrpo.geometry.cameras` — VGGT pose encoding, quaternions, Any4D-style conversions.
* :class:`GeometryBackbone` — the protocol the LGM stitches into; :class:`TinyVGGT` — a tiny
  VGGT-like model trained on the synthetic scenes (the embedded default);
  :mod:`vggrpo.geometry.adapters` — wrappers for real VGGT / Any4D checkpoints on local disk;
  :mod:`vggrpo.geometry.any4d` — Any4D's output in this package's conventions (its scene flow
  included); :mod:`vggrpo.geometry.backbone_spec` — a backbone named by one string
  (``vggt:DIR``, ``any4d:DIR``, ``MODULE:FUNCTION``); :mod:`vggrpo.geometry.checkpoints` —
  local weight files, loaded into a built model at about its own size.
"""

from .backbone import GeometryBackbone, missing_backbone_members
from .cameras import (
    camera_to_world_to_extrinsics,
    cameras_to_pose_encoding,
    extrinsics_to_camera_to_world,
    matrix_to_quaternion,
    pixel_rays,
    pose_encoding_to_cameras,
    quaternion_to_matrix,
    range_depth_to_z_depth,
    relative_to_first_camera,
    z_depth_to_range_depth,
)
from .record import Geometry
from .tiny import TinyVGGT, TinyVGGTConfig

__all__ = [
    "Geometry",
    "GeometryBackbone",
    "missing_backbone_members",
    "TinyVGGT",
    "TinyVGGTConfig",
    "cameras_to_pose_encoding",
    "pose_encoding_to_cameras",
    "quaternion_to_matrix",
    "matrix_to_quaternion",
    "camera_to_world_to_extrinsics",
    "extrinsics_to_camera_to_world",
    "pixel_rays",
    "range_depth_to_z_depth",
    "z_depth_to_range_depth",
    "relative_to_first_camera",
]
