"""Adapters for real geometry models (VGGT, Any4D) installed by the user with weights on local disk.

Two layers:

* **Pure output conversions**, testable without the models:
  :func:`vggt_outputs_to_geometry_dict` turns VGGT's prediction dict into vggrpo's convention;
  :func:`~vggrpo.geometry.any4d.any4d_predictions_to_geometry_dict` does the same for Any4D's
  per-view output (:mod:`vggrpo.geometry.any4d`). They return a plain dict with the fields of
  :class:`vggrpo.geometry.record.Geometry` (``extrinsics, intrinsics, depths, pointmaps,
  scene_flow, confidences``); :func:`to_geometry` makes the record.
* **Model wrappers** :class:`VGGTAdapter` and :class:`~vggrpo.geometry.any4d.Any4DAdapter`
  (``torch.nn.Module``), loaded with ``from_pretrained(local_path)``. Nothing is ever downloaded
  (:mod:`vggrpo.geometry.checkpoints`): the path must exist on local disk (a hub id such as
  ``"facebook/VGGT-1B"`` is a FileNotFoundError unless it happens to be a local folder). Weights
  load with safetensors (``.safetensors``, shards merged) or ``torch.load(weights_only=True)``
  (``.pt`` / ``.pth``).

The Any4D names are also importable from here, where they were first.

Importing this module never imports ``vggt`` or any Any4D code; they are imported when a model is
built. Without them, :meth:`VGGTAdapter.from_pretrained` raises an ImportError that says what to
install (``pip install git+https://github.com/facebookresearch/vggt``).

VGGT (facebookresearch/vggt; the released ``vggt.models.vggt.VGGT``) in brief: input
``[B,S,3,H,W]`` in [0, 1] with ``H, W`` multiples of 14 (518 px on the long side in training);
output dict ``pose_enc [B,S,9]`` (``absT_quaR_FoV``, see :mod:`vggrpo.geometry.cameras`),
``depth [B,S,H,W,1]`` (z-depth) with ``depth_conf [B,S,H,W]``, ``world_points [B,S,H,W,3]`` with
``world_points_conf [B,S,H,W]``, plus ``pose_enc_list`` and ``images``. Cameras are relative to the
first frame and the scene scale is VGGT's normalised one (not metric).

Stitching a connector into a real VGGT (the LGM, docs/lgm.md) needs the aggregator's patch
tokens: ``model.aggregator.patch_embed`` (a DINOv2 ViT-L/14) maps the ImageNet-normalised frames
``[B*S,3,H,W]`` to ``x_norm_patchtokens`` ``[B*S,P,1024]``; the aggregator then prepends its camera
and register tokens (``aggregator.patch_start_idx`` of them) and runs ``frame_blocks`` /
``global_blocks`` alternately, and the heads (``camera_head``, ``depth_head``, ``point_head``) read
the list of intermediate tokens. When ``vggt`` is importable, :class:`VGGTAdapter` offers that
split through the backbone protocol hooks (:mod:`vggrpo.geometry.backbone`): ``embed`` (patch
tokens at the stitch point), ``forward_tokens`` (aggregator blocks + heads from given patch tokens),
``blocks`` (the aggregator's attention blocks, for LoRA) and ``heads``. **These hooks are untested
without the real weights** (the package's tests only cover the pure conversions and the loading
errors); they rely on the released VGGT module layout described above.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from vggrpo.geometry.any4d import (
    Any4DAdapter,
    any4d_outputs_to_geometry_dict,
    any4d_predictions_to_geometry_dict,
)
from vggrpo.geometry.cameras import pose_encoding_to_cameras, unproject_depth
from vggrpo.geometry.checkpoints import find_weights, load_state_dict_file, load_weights_into

__all__ = [
    "VGGT_INSTALL_HINT",
    "vggt_outputs_to_geometry_dict",
    "any4d_outputs_to_geometry_dict",
    "any4d_predictions_to_geometry_dict",
    "to_geometry",
    "find_weights",
    "load_state_dict_file",
    "VGGTAdapter",
    "Any4DAdapter",
]

VGGT_INSTALL_HINT = "pip install git+https://github.com/facebookresearch/vggt"

PathLike = Union[str, "os.PathLike[str]"]


# --------------------------------------------------------------------------------------------------
# Pure conversions
# --------------------------------------------------------------------------------------------------


def _shape(t: Tensor) -> str:
    return "[" + ",".join(str(s) for s in t.shape) + "]"


def _float(t: Tensor) -> Tensor:
    # Heads may run under autocast; geometry is computed in float32 at least (package rule).
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def _require(outputs: Mapping[str, Any], key: str) -> Tensor:
    if key not in outputs or outputs[key] is None:
        raise KeyError(f"VGGT outputs have no {key!r} (got keys {sorted(outputs)})")
    value = outputs[key]
    if not isinstance(value, Tensor):
        raise TypeError(f"VGGT outputs[{key!r}] must be a tensor, got {type(value).__name__}")
    return value


def vggt_outputs_to_geometry_dict(
    outputs: Mapping[str, Any],
    height: Optional[int] = None,
    width: Optional[int] = None,
    *,
    pointmaps_from: str = "head",
) -> Dict[str, Any]:
    """vggrpo geometry fields of a VGGT prediction dict.

    ``outputs`` needs ``pose_enc`` ``[B,S,9]`` and ``depth`` ``[B,S,H,W,1]`` (or ``[B,S,H,W]``);
    ``world_points`` ``[B,S,H,W,3]``, ``depth_conf`` and ``world_points_conf`` ``[B,S,H,W]`` are
    used when present. ``height`` / ``width`` are the input image size in pixels, which is also
    the size of VGGT's depth maps; they default to the depth maps' and must agree with them (the
    pose encoding's fields of view are relative to that size).

    Returns ``{"extrinsics": [B,S,3,4], "intrinsics": [B,S,3,3], "depths": [B,S,H,W],
    "pointmaps": [B,S,H,W,3], "scene_flow": None, "confidences": {"depth": ..., "pointmaps": ...}
    or None}``: cameras decoded from the pose encoding (centred pinhole, principal point
    ``(W/2, H/2)``), VGGT's depth as z-depth. ``pointmaps_from="head"`` takes the point head's
    ``world_points`` (falling back to unprojection when absent); ``"depth"`` unprojects the depth
    with the decoded cameras, which the VGGT authors report to be the more accurate of the two and
    which is exactly consistent with ``depths`` and the cameras. float32 / float64 kept, lower
    precisions computed in float32. Differentiable.
    """
    if pointmaps_from not in ("head", "depth"):
        raise ValueError(f"pointmaps_from must be 'head' or 'depth', got {pointmaps_from!r}")
    pose_enc = _float(_require(outputs, "pose_enc"))
    depth = _float(_require(outputs, "depth"))
    if pose_enc.dim() != 3 or pose_enc.shape[-1] != 9:
        raise ValueError(f"VGGT outputs['pose_enc'] must be [B,S,9], got {_shape(pose_enc)}")
    B, S = pose_enc.shape[:2]
    if depth.dim() == 5 and depth.shape[-1] == 1:
        depth = depth[..., 0]
    if depth.dim() != 4 or tuple(depth.shape[:2]) != (B, S):
        raise ValueError(
            f"VGGT outputs['depth'] must be [{B},{S},H,W,1] or [{B},{S},H,W] to match pose_enc "
            f"{_shape(pose_enc)}, got {_shape(_require(outputs, 'depth'))}"
        )
    H, W = depth.shape[-2:]
    height = H if height is None else height
    width = W if width is None else width
    if (height, width) != (H, W):
        raise ValueError(
            f"height x width = {height}x{width} differs from the depth maps' {H}x{W}; VGGT's depth "
            "maps are at the input image size, pass that size"
        )
    extrinsics, intrinsics = pose_encoding_to_cameras(pose_enc, height, width)
    dtype = torch.promote_types(extrinsics.dtype, depth.dtype)
    extrinsics, intrinsics, depth = extrinsics.to(dtype), intrinsics.to(dtype), depth.to(dtype)

    points = outputs.get("world_points")
    if pointmaps_from == "head" and points is not None:
        points = _float(points).to(dtype)
        if tuple(points.shape) != (B, S, H, W, 3):
            raise ValueError(
                f"VGGT outputs['world_points'] must be [{B},{S},{H},{W},3], got {_shape(points)}"
            )
    else:
        points = unproject_depth(depth, intrinsics, extrinsics)

    confidences = {}
    for key, name in (("depth_conf", "depth"), ("world_points_conf", "pointmaps")):
        conf = outputs.get(key)
        if conf is None:
            continue
        conf = _float(conf).to(dtype)
        if conf.dim() == 5 and conf.shape[-1] == 1:
            conf = conf[..., 0]
        if tuple(conf.shape) != (B, S, H, W):
            raise ValueError(f"VGGT outputs[{key!r}] must be [{B},{S},{H},{W}], got {_shape(conf)}")
        confidences[name] = conf
    return {
        "extrinsics": extrinsics,
        "intrinsics": intrinsics,
        "depths": depth,
        "pointmaps": points,
        "scene_flow": None,
        "confidences": confidences or None,
    }


def to_geometry(fields: Mapping[str, Any]):
    """The :class:`vggrpo.geometry.record.Geometry` of a dict from the ``*_to_geometry_dict``
    functions (the record checks the shapes)."""
    from vggrpo.geometry.record import Geometry

    return Geometry(**fields)


# --------------------------------------------------------------------------------------------------
# VGGT
# --------------------------------------------------------------------------------------------------


def _import_vggt():
    try:
        from vggt.models.vggt import VGGT  # noqa: WPS433 (optional dependency)
    except ImportError as err:
        raise ImportError(
            f"VGGTAdapter needs the 'vggt' package, which is not installed ({err}); install it "
            f"with `{VGGT_INSTALL_HINT}`"
        ) from err
    return VGGT


class _GivenTokens(nn.Module):
    """Stands in for VGGT's patch embed: returns the stitched patch tokens it was given."""

    def __init__(self, tokens: Tensor):
        super().__init__()
        self.tokens = tokens

    def forward(self, images: Tensor) -> Tensor:  # noqa: ARG002 (shape only, tokens are given)
        return self.tokens


class VGGTAdapter(nn.Module):
    """A real VGGT wrapped to read videos into vggrpo geometry.

    ``adapter(video [B,T,3,H,W] in [0,1]) -> Geometry`` (``H, W`` multiples of 14). Build it with
    :meth:`from_pretrained` from local weights, or wrap an existing ``vggt.models.vggt.VGGT``.

    Backbone protocol hooks (``patch_size``, ``dim``, ``stitch_layer``, ``blocks``, ``embed``,
    ``forward_tokens``, ``heads``; see the module docstring): thin, **untested without weights**.
    """

    def __init__(self, model: nn.Module, *, pointmaps_from: str = "head"):
        super().__init__()
        self.model = model
        self.pointmaps_from = pointmaps_from
        agg = getattr(model, "aggregator", None)
        self.patch_size = int(getattr(agg, "patch_size", 14))
        token = getattr(agg, "camera_token", None)
        self.dim = int(token.shape[-1]) if isinstance(token, Tensor) else 1024
        # The connector replaces one module: the aggregator's patch embed (the DINOv2 encoder).
        self.stitch_layer = 1

    @classmethod
    def from_pretrained(
        cls,
        path: PathLike,
        *,
        model_kwargs: Optional[Mapping[str, Any]] = None,
        strict: bool = True,
        pointmaps_from: str = "head",
    ) -> "VGGTAdapter":
        """Build ``vggt.models.vggt.VGGT(**model_kwargs)`` and load local weights into it.

        ``path``: a local folder (``model.safetensors`` / ``model.pt`` as in the VGGT-1B release)
        or a weights file, loaded into the built model tensor by tensor
        (:func:`~vggrpo.geometry.checkpoints.load_weights_into`), so loading peaks at about the
        model's size, not twice it. FileNotFoundError (naming the path) when it does not exist or
        holds no weights; ValueError when its tensors do not fit the model; ImportError naming
        ``pip install git+https://github.com/facebookresearch/vggt`` when ``vggt`` is not
        installed. Never downloads. The model is returned in eval mode on CPU.
        """
        files = find_weights(path, "VGGT")
        VGGT = _import_vggt()
        model = VGGT(**dict(model_kwargs or {}))
        # Into the built model, tensor by tensor: holding the whole state dict beside it would
        # double the peak (10 GB for VGGT-1B).
        load_weights_into(model, files, strict=strict, what="VGGT")
        return cls(model, pointmaps_from=pointmaps_from).eval()

    # -- plain use ----------------------------------------------------------------------------

    def _check_video(self, video: Tensor) -> None:
        if not isinstance(video, Tensor) or video.dim() != 5 or video.shape[2] != 3:
            got = _shape(video) if isinstance(video, Tensor) else type(video).__name__
            raise ValueError(f"video must be [B,T,3,H,W] in [0,1], got {got}")
        H, W = video.shape[-2:]
        if H % self.patch_size or W % self.patch_size:
            raise ValueError(f"video height and width must be multiples of {self.patch_size}, "
                             f"got {H}x{W}")

    def geometry_dict(self, video: Tensor) -> Dict[str, Any]:
        """``video`` ``[B,T,3,H,W]`` in [0,1] -> the geometry dict (see
        :func:`vggt_outputs_to_geometry_dict`)."""
        self._check_video(video)
        outputs = self.model(video)
        return vggt_outputs_to_geometry_dict(outputs, *video.shape[-2:],
                                             pointmaps_from=self.pointmaps_from)

    def forward(self, video: Tensor):
        """``video`` ``[B,T,3,H,W]`` in [0,1] -> :class:`~vggrpo.geometry.record.Geometry`."""
        return to_geometry(self.geometry_dict(video))

    # -- backbone protocol hooks (untested without the real weights) --------------------------

    @property
    def blocks(self) -> nn.ModuleList:
        """The aggregator's attention blocks in run order (frame 0, global 0, frame 1, ...).

        A new ModuleList over the same modules (not registered twice), e.g. for LoRA targeting.
        """
        agg = self.model.aggregator
        out = nn.ModuleList()
        for frame, glob in zip(agg.frame_blocks, agg.global_blocks):
            out.append(frame)
            out.append(glob)
        return out

    def embed(self, video: Tensor) -> Tensor:
        """Patch tokens at the stitch point ``[B,T,H/14,W/14,C]``: the patch embed's
        ``x_norm_patchtokens`` of the ImageNet-normalised frames, as the aggregator computes them.
        """
        self._check_video(video)
        agg = self.model.aggregator
        B, T, _, H, W = video.shape
        images = (video - agg._resnet_mean) / agg._resnet_std
        tokens = agg.patch_embed(images.reshape(B * T, 3, H, W))
        if isinstance(tokens, dict):
            tokens = tokens["x_norm_patchtokens"]
        h, w = H // self.patch_size, W // self.patch_size
        return tokens.reshape(B, T, h, w, tokens.shape[-1])

    def _run_with_tokens(self, tokens: Tensor) -> Dict[str, Any]:
        if tokens.dim() != 5:
            raise ValueError(f"tokens must be [B,T,h,w,C], got {_shape(tokens)}")
        B, T, h, w, C = tokens.shape
        agg = self.model.aggregator
        original = agg.patch_embed
        # The aggregator only reads the images' shape once its patch embed is replaced, so a zero
        # video of the matching size stands in for the frames.
        dummy = tokens.new_zeros(B, T, 3, h * self.patch_size, w * self.patch_size)
        agg.patch_embed = _GivenTokens(tokens.reshape(B * T, h * w, C))
        try:
            return self.model(dummy)
        finally:
            agg.patch_embed = original

    def forward_tokens(self, tokens: Tensor):
        """Patch tokens ``[B,T,h,w,C]`` at the stitch point -> Geometry at ``(14h, 14w)``: the
        aggregator (camera/register tokens, frame/global blocks) and the heads of the real model."""
        outputs = self._run_with_tokens(tokens)
        H, W = tokens.shape[2] * self.patch_size, tokens.shape[3] * self.patch_size
        return to_geometry(vggt_outputs_to_geometry_dict(outputs, H, W,
                                                         pointmaps_from=self.pointmaps_from))

    def heads(self, tokens: List[Tensor], grid: Tuple[int, int]):
        """The aggregator's list of intermediate tokens ``[B,T,P,2C]`` -> Geometry at
        ``(14 grid[0], 14 grid[1])`` through VGGT's camera, depth and point heads."""
        B, T = tokens[0].shape[:2]
        H, W = grid[0] * self.patch_size, grid[1] * self.patch_size
        start = self.model.aggregator.patch_start_idx
        images = tokens[0].new_zeros(B, T, 3, H, W)  # the DPT heads read its shape only
        outputs: Dict[str, Any] = {"pose_enc": self.model.camera_head(tokens)[-1]}
        outputs["depth"], outputs["depth_conf"] = self.model.depth_head(
            tokens, images=images, patch_start_idx=start)
        if getattr(self.model, "point_head", None) is not None:
            outputs["world_points"], outputs["world_points_conf"] = self.model.point_head(
                tokens, images=images, patch_start_idx=start)
        return to_geometry(vggt_outputs_to_geometry_dict(outputs, H, W,
                                                         pointmaps_from=self.pointmaps_from))


