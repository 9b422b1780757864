"""The description of a box-room scene (:class:`Box`, the room :data:`DEFAULT_ROOM`) and of
what rendering one gives (:class:`SceneGeometry`). :mod:`vggrpo.data.trajectories` moves the
cameras, :mod:`vggrpo.data.synthetic` renders and samples scenes.

Conventions (the package's public contract, docs/conventions.md and docs/ops.md):

* extrinsics ``[B,T,3,4]`` camera-from-world ``[R | t]``, OpenCV camera axes (x right, y down,
  z forward); intrinsics ``[B,T,3,3]`` pinhole; depths ``[B,T,H,W]`` camera z-depth in metres;
  pointmaps ``[B,T,H,W,3]`` world frame in metres; scene_flow ``[B,T,H,W,3]`` world-frame motion
  of each pixel's point in metres per frame; dynamic_mask ``[B,T,H,W]`` bool; video
  ``[B,T,3,H,W]`` RGB in [0, 1], channels first (VGGT's image layout).
* Pixel (x, y) covers ``[x, x+1) x [y, y+1)``; rays go through pixel centres (x+0.5, y+0.5); a
  centred camera has its principal point at (W/2, H/2).
* The world frame of these scenes is y-down as well (gravity along +y): the floor is the room's
  ``hi[1]`` face and the ceiling its ``lo[1]`` face, so a camera with identity rotation is upright.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

__all__ = ["Vec3", "Box", "DEFAULT_ROOM", "SceneGeometry", "CAMERA_CLEARANCE"]

Vec3 = Tuple[float, float, float]

# Clearance (metres) kept between cameras and every surface; a camera closer than this to a box
# would see a frame filled by one face, useless as data though still exact.
CAMERA_CLEARANCE = 0.25


# --------------------------------------------------------------------------------------------------
# Scene description
# --------------------------------------------------------------------------------------------------


def _three_floats(name: str, value, what: str = "") -> Tuple[float, float, float]:
    """``value`` as 3 Python floats (tuples, lists, NumPy or torch vectors all come in), or one
    ``ValueError`` naming ``name``; a ``bool`` or a string is not a coordinate."""
    try:
        if isinstance(value, (str, bytes)):
            raise TypeError
        items = list(value)  # once: a generator would be spent by a second pass
        if any(isinstance(v, (bool, str, bytes)) for v in items):
            raise TypeError
        out = tuple(float(v) for v in items)
    except (TypeError, ValueError):
        out = ()
    if len(out) != 3:
        raise ValueError(f"{name} must be 3 numbers{what}, got {value!r}")
    return out  # type: ignore[return-value]


@dataclass(frozen=True)
class Box:
    """An axis-aligned box in world coordinates (metres).

    ``lo`` and ``hi`` are the minimum and maximum corners at frame 0 (``lo < hi`` on every axis).
    ``velocity`` is a constant per-frame displacement in metres per frame: at frame ``t`` the box
    spans ``[lo + t*velocity, hi + t*velocity]``. A box with zero velocity is static.

    ``colour`` is the RGB base colour (3 values in [0, 1]) of all its faces in the rendered video;
    ``None`` (the default) draws one from the render's ``texture_seed`` (see the module docstring).
    Used as the room, it is the base colour of all six inner faces.
    """

    lo: Vec3
    hi: Vec3
    velocity: Vec3 = (0.0, 0.0, 0.0)
    colour: Optional[Vec3] = None

    def __post_init__(self) -> None:
        lo, hi, vel = (_three_floats(f"Box.{name}", getattr(self, name))
                       for name in ("lo", "hi", "velocity"))
        if not all(math.isfinite(v) for v in lo + hi + vel):
            raise ValueError(f"Box coordinates must be finite: lo={lo}, hi={hi}, velocity={vel}")
        if not all(a < b for a, b in zip(lo, hi)):
            raise ValueError(f"Box needs lo < hi on every axis, got lo={lo}, hi={hi}")
        # Frozen dataclass: normalise to plain float tuples so equality and hashing are by value.
        object.__setattr__(self, "lo", lo)
        object.__setattr__(self, "hi", hi)
        object.__setattr__(self, "velocity", vel)
        if self.colour is not None:
            colour = _three_floats("Box.colour", self.colour, " in [0, 1] (or None)")
            if not all(0.0 <= v <= 1.0 for v in colour):
                raise ValueError(
                    f"Box.colour must be 3 numbers in [0, 1] (or None), got {self.colour!r}"
                )
            object.__setattr__(self, "colour", colour)

    @property
    def is_moving(self) -> bool:
        return any(v != 0.0 for v in self.velocity)

    def at(self, frame: float) -> Tuple[Vec3, Vec3]:
        """The ``(lo, hi)`` corners at ``frame`` (frame 0 is the box as given)."""
        lo = tuple(a + frame * v for a, v in zip(self.lo, self.velocity))
        hi = tuple(a + frame * v for a, v in zip(self.hi, self.velocity))
        return lo, hi  # type: ignore[return-value]

    def swept(self, frames: int) -> Tuple[Vec3, Vec3]:
        """The axis-aligned bounds of everything the box covers over frames ``0..frames-1``."""
        lo0, hi0 = self.at(0)
        lo1, hi1 = self.at(max(frames - 1, 0))
        lo = tuple(min(a, b) for a, b in zip(lo0, lo1))
        hi = tuple(max(a, b) for a, b in zip(hi0, hi1))
        return lo, hi  # type: ignore[return-value]

    @property
    def centre(self) -> Vec3:
        return tuple((a + b) / 2 for a, b in zip(self.lo, self.hi))  # type: ignore[return-value]

    @property
    def half_extent(self) -> Vec3:
        return tuple((b - a) / 2 for a, b in zip(self.lo, self.hi))  # type: ignore[return-value]


# 8 m wide (x), 3 m high (y, floor at y = +1.5), 10 m deep (z).
DEFAULT_ROOM = Box((-4.0, -1.5, -5.0), (4.0, 1.5, 5.0))


# --------------------------------------------------------------------------------------------------
# Rendered geometry
# --------------------------------------------------------------------------------------------------


# eq=False: field-wise == on tensors is ambiguous; compare fields with torch.equal instead.
@dataclass(frozen=True, eq=False)
class SceneGeometry:
    """Exact geometry and rendered RGB video of a batch of scenes.

    Fields (``B`` videos, ``T`` frames, ``H x W`` pixels; floating fields share one dtype):

    * ``extrinsics`` ``[B,T,3,4]``: camera-from-world ``[R | t]`` (OpenCV axes), metres.
    * ``intrinsics`` ``[B,T,3,3]``: pinhole, pixels.
    * ``depths`` ``[B,T,H,W]``: camera z of each pixel's hit point, metres, finite and > 0.
    * ``pointmaps`` ``[B,T,H,W,3]``: world hit point of each pixel, metres.
    * ``scene_flow`` ``[B,T,H,W,3]``: world motion of each pixel's point from frame t to t+1,
      metres per frame (the moving box's velocity; 0 on static surfaces). Motion is constant
      velocity, so the last frame carries the same flow as the others.
    * ``dynamic_mask`` ``[B,T,H,W]`` bool: the pixel sees a moving box.
    * ``video`` ``[B,T,3,H,W]``: RGB in [0, 1], channels first (the VGGT image layout); the colour
      of each pixel's surface point (see the module docstring for the texture model).

    Indexing (``g[i]``, ``g[a:b]``), :meth:`to` and :meth:`cat` apply to every field.
    """

    extrinsics: Tensor
    intrinsics: Tensor
    depths: Tensor
    pointmaps: Tensor
    scene_flow: Tensor
    dynamic_mask: Tensor
    video: Tensor

    @property
    def batch(self) -> int:
        return self.depths.shape[0]

    @property
    def frames(self) -> int:
        return self.depths.shape[1]

    @property
    def height(self) -> int:
        return self.depths.shape[2]

    @property
    def width(self) -> int:
        return self.depths.shape[3]

    @property
    def dtype(self) -> torch.dtype:
        return self.depths.dtype

    @property
    def device(self) -> torch.device:
        return self.depths.device

    def to(
        self, dtype: Optional[torch.dtype] = None, device: Optional[torch.device | str] = None
    ) -> "SceneGeometry":
        """A copy with the floating fields cast to ``dtype`` and every field moved to ``device``.

        ``dynamic_mask`` stays bool whatever ``dtype`` is.
        """
        if dtype is not None and not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating dtype, got {dtype}")
        changes = {}
        for f in dataclasses.fields(self):
            value: Tensor = getattr(self, f.name)
            if value.is_floating_point():
                changes[f.name] = value.to(device=device, dtype=dtype)
            else:
                changes[f.name] = value.to(device=device)
        return dataclasses.replace(self, **changes)

    def __getitem__(self, index) -> "SceneGeometry":
        """Index the batch dimension; an integer keeps it (``g[0]`` has ``B == 1``)."""
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        return SceneGeometry(
            **{f.name: getattr(self, f.name)[index] for f in dataclasses.fields(self)}
        )

    @staticmethod
    def cat(items: Sequence["SceneGeometry"]) -> "SceneGeometry":
        """Concatenate along the batch dimension."""
        if not items:
            raise ValueError("cat needs at least one SceneGeometry")
        return SceneGeometry(
            **{
                f.name: torch.cat([getattr(g, f.name) for g in items], dim=0)
                for f in dataclasses.fields(SceneGeometry)
            }
        )
