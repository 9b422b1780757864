"""The geometry backbone protocol: what the LGM needs from a geometry model to stitch into it.

A backbone reads RGB frames and predicts a :class:`~vggrpo.geometry.Geometry`. For stitching, it
is split at one layer (``stitch_layer``):

* ``embed(video)`` runs the layers *before* the stitch point and returns patch tokens
  ``[B,T,h,w,C]``: the features a connector learns to reproduce from the video latent;
* ``forward_tokens(tokens)`` runs everything after it (``blocks``, then ``heads``) and returns
  the Geometry; ``forward(video) == forward_tokens(embed(video))``.

Any special tokens (camera, register) are the backbone's own business: they are added inside
``forward_tokens``, so the connector only has to produce the patch grid. Depth maps come out at
``(h * patch_size, w * patch_size)`` pixels and the intrinsics are in those pixels.
"""

from __future__ import annotations

from typing import Any, List, Protocol, Tuple, runtime_checkable

from torch import Tensor, nn

from .record import Geometry

__all__ = ["GeometryBackbone", "missing_backbone_members"]


def missing_backbone_members(obj: Any) -> List[str]:
    """The members of :class:`GeometryBackbone` that ``obj`` lacks (methods must be callable);
    empty for a backbone. Found with ``hasattr``, so an ``nn.Module``'s submodules count."""
    missing = [name for name in _ATTRIBUTES if not hasattr(obj, name)]
    return missing + [name for name in _METHODS if not callable(getattr(obj, name, None))]


class _MemberCheck(type(Protocol)):
    # Python 3.12 checks a runtime protocol's members with inspect.getattr_static, which cannot
    # see an nn.Module's submodules (kept in _modules, reached through __getattr__): every real
    # backbone, whose `blocks` is a submodule, would fail isinstance there and pass it on 3.11.
    def __instancecheck__(cls, obj: Any) -> bool:
        return not missing_backbone_members(obj)


@runtime_checkable
class GeometryBackbone(Protocol, metaclass=_MemberCheck):
    """Structural type of a stitchable geometry model (see the module docstring).

    ``isinstance(model, GeometryBackbone)`` tells whether ``model`` has every member below, on
    every supported Python (submodules included); :func:`missing_backbone_members` names the ones
    it lacks.

    Attributes:
        patch_size: pixels per token side (output depth maps are ``h * patch_size`` tall).
        dim: channels ``C`` of the patch tokens at the stitch point.
        stitch_layer: number of layers ``embed`` runs (the layers a connector replaces).
        blocks: the layers after the stitch point (where an LGM may put LoRA adapters).
    """

    patch_size: int
    dim: int
    stitch_layer: int
    blocks: nn.ModuleList

    def embed(self, video: Tensor) -> Tensor:
        """``video`` ``[B,T,3,H,W]`` in [0,1] -> patch tokens ``[B,T,H/p,W/p,C]``."""
        ...

    def forward_tokens(self, tokens: Tensor) -> Geometry:
        """Patch tokens at the stitch point ``[B,T,h,w,C]`` -> Geometry at ``(h*p, w*p)``."""
        ...

    def heads(self, tokens: Tensor, grid: Tuple[int, int]) -> Geometry:
        """Final tokens -> Geometry (cameras from the special tokens, dense maps from the grid)."""
        ...


# The members, read off the protocol's own body so that they are written once: its annotated
# attributes, and its public methods in the order they are defined.
_ATTRIBUTES: Tuple[str, ...] = tuple(GeometryBackbone.__annotations__)
_METHODS: Tuple[str, ...] = tuple(
    name for name, value in vars(GeometryBackbone).items()
    if not name.startswith("_") and callable(value)
)
