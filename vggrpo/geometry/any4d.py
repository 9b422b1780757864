"""Any4D (Any-4D/Any4D, MapAnything-based) read into vggrpo's geometry conventions.

What the released network does, and what this module takes from it:

* **Input.** ``model(views)``: a list with one dict per frame, each holding ``img`` ``[B,3,H,W]``
  normalised as its image encoder expects (``model.encoder.data_norm_type``; DINOv2's ImageNet
  mean and std for the released model) and ``data_norm_type`` (``[that name]``). ``H, W`` are
  multiples of the encoder's patch size (14). The first view is the *reference* view.
* **Output.** A list with one dict per view: ``ray_directions`` ``[B,H,W,3]`` (unit, camera
  frame), ``depth_along_ray`` ``[B,H,W,1]`` (range, not z), ``cam_trans`` ``[B,3]`` and
  ``cam_quats`` ``[B,4]`` (camera-to-world, OpenCV axes, quaternion xyzw), ``pts3d`` and
  ``pts3d_cam`` ``[B,H,W,3]``, ``scene_flow`` ``[B,H,W,3]``, ``conf`` ``[B,H,W]``, masks and
  ``metric_scaling_factor`` (already applied to the lengths above). No intrinsics.

How each field of :class:`~vggrpo.geometry.record.Geometry` is made
(:func:`any4d_predictions_to_geometry_dict`):

* ``extrinsics``: the inverse of the camera-to-world pose ``[R(q) | t]``.
* ``intrinsics``: fitted to the rays with :func:`~vggrpo.geometry.cameras.intrinsics_from_rays`.
  Any4D's rays go through integer pixel coordinates; here pixel ``(x, y)`` covers ``[x, x+1)``,
  so the fit puts the principal point 0.5 px after Any4D's own
  ``recover_pinhole_intrinsics_from_ray_directions``.
* ``depths``: z-depth, ``depth_along_ray * ray_z / |ray|`` (exact; no intrinsics involved).
* ``pointmaps``: ``R (ray / |ray|) depth_along_ray + t``, the factored world points (what
  ``pts3d`` is for the released ``raydirs+depth+pose`` heads); ``pointmaps_from="pts3d"`` takes
  the model's ``pts3d`` instead.
* ``scene_flow``: derived (below).
* ``confidences``: ``{"conf": conf}`` when the model predicts it.

**Scene flow.** Any4D's ``scene_flow`` of view ``i`` is the world motion of the *reference
view's* points from the reference time to view ``i``'s time, on the reference view's pixel grid.
This package's is, for every pixel of every view, the world motion of that pixel's own point from
its frame to the next (:class:`~vggrpo.geometry.record.Geometry`). They are related through the
reference points' tracks: the reference point ``p`` is at ``Q_i(p) = pts(p) + flow_i(p)`` at
time ``i`` and moves by ``Q_{i+1}(p) - Q_i(p)`` to the next frame
(:func:`scene_flow_from_reference_tracks`):

1. the tracked points ``Q_i`` are z-buffered into view ``i`` (:func:`vggrpo.ops.splat_depth`,
   nearest wins);
2. a pixel of view ``i`` takes its winner's step ``Q_{i+1} - Q_i`` when the winner's depth agrees
   with the view's own depth there (within ``depth_tolerance``, relative): the point the view sees
   is the tracked point;
3. a pixel left without one takes the step of an adjacent pixel (of the 8) that has one and
   whose depth agrees with its own: it closes the holes that forward splatting leaves where a
   surface is seen larger than in the reference view;
4. the last frame repeats the step before it (there is no next frame to move to).

What is lost: pixels of view ``i`` whose point the reference view does not see (they came into
view, or were hidden behind something in the reference frame) have no track. Their flow is NaN
(``unmatched="unknown"``, the default), which the geometry reward reads as "not known to be
static": such a pixel is neither splatted nor scored (docs/ops.md, ``static_points``);
``unmatched="static"`` makes it 0 instead (static, splatted and scored). The motion within a
step is the tracks' straight difference.
"""

from __future__ import annotations

import contextlib
import os
import types
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from .cameras import (
    camera_to_world_to_extrinsics,
    intrinsics_from_rays,
    quaternion_to_matrix,
    range_depth_to_z_depth,
)
from .checkpoints import find_weights, load_weights_into
from .record import Geometry

__all__ = [
    "IMAGE_NORMALIZATIONS",
    "any4d_outputs_to_geometry_dict",
    "any4d_predictions_to_geometry_dict",
    "scene_flow_from_reference_tracks",
    "ANY4D_OVERRIDES",
    "build_any4d_network",
    "Any4DAdapter",
]

PathLike = Union[str, "os.PathLike[str]"]

_IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
#: ``(mean, std)`` per channel of each image normalisation an Any4D encoder may ask for (the names
#: are UniCeption's ``data_norm_type``; values in [0, 1] RGB): ``img = (rgb - mean) / std``.
IMAGE_NORMALIZATIONS: Dict[str, Tuple[Tuple[float, ...], Tuple[float, ...]]] = {
    "dinov2": _IMAGENET, "dinov3": _IMAGENET, "croco": _IMAGENET, "dune": _IMAGENET,
    "patch_embedder": _IMAGENET, "roma": _IMAGENET, "pixio": _IMAGENET,
    "dust3r": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "perception_encoder": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "cosmos": ((0.0, 0.0, 0.0), (0.5, 0.5, 0.5)),
    "radio": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
    "identity": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
}
_UNMATCHED = ("unknown", "static")


def _dims(t: Tensor) -> str:
    return "[" + ",".join(str(s) for s in t.shape) + "]"


def _float(t: Tensor) -> Tensor:
    # Heads may run under autocast; geometry is computed in float32 at least (package rule).
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


# --------------------------------------------------------------------------------------------------
# Scene flow from the reference view's tracks
# --------------------------------------------------------------------------------------------------


def scene_flow_from_reference_tracks(
    reference_points: Tensor,
    tracks: Tensor,
    extrinsics: Tensor,
    intrinsics: Tensor,
    depths: Tensor,
    *,
    depth_tolerance: float = 0.05,
    unmatched: str = "unknown",
) -> Tensor:
    """Per-pixel scene flow of every view from the tracks of one reference view's points.

    Args:
        reference_points: ``[B,Hr,Wr,3]`` world points of the reference view's pixels.
        tracks: ``[B,T,Hr,Wr,3]`` world motion of those points from the reference time to each
            view's time (Any4D's ``scene_flow``; ``tracks[:, 0]`` ~ 0 for the reference itself).
        extrinsics: ``[B,T,3,4]`` (or ``4,4``) camera-from-world; ``intrinsics`` ``[B,T,3,3]``
            pixels; ``depths`` ``[B,T,H,W]`` z-depth of each view (same length unit).
        depth_tolerance: a tracked point explains a pixel when ``|z - depth| <= tol * depth``.
        unmatched: ``"unknown"`` (NaN flow) or ``"static"`` (zero flow) for pixels that no tracked
            point explains (module docstring).
    Returns:
        ``[B,T,H,W,3]`` world motion of each pixel's point from its frame to the next (the last
        frame repeats the step before it), in the dtype of ``depths``.
    """
    from vggrpo.ops import splat_depth

    if unmatched not in _UNMATCHED:
        raise ValueError(f"unmatched must be one of {list(_UNMATCHED)}, got {unmatched!r}")
    if not (isinstance(depth_tolerance, (int, float)) and depth_tolerance > 0):
        raise ValueError(f"depth_tolerance must be a number > 0, got {depth_tolerance!r}")
    if depths.dim() != 4:
        raise ValueError(f"depths must be [B,T,H,W], got {_dims(depths)}")
    B, T, H, W = depths.shape
    if reference_points.dim() != 4 or reference_points.shape[0] != B \
            or reference_points.shape[-1] != 3:
        raise ValueError(f"reference_points must be [{B},Hr,Wr,3], got "
                         f"{_dims(reference_points)}")
    Hr, Wr = reference_points.shape[1:3]
    if tuple(tracks.shape) != (B, T, Hr, Wr, 3):
        raise ValueError(f"tracks must be [{B},{T},{Hr},{Wr},3] to match reference_points and "
                         f"depths, got {_dims(tracks)}")
    dtype = depths.dtype
    Q = reference_points.to(dtype)[:, None] + tracks.to(dtype)  # [B,T,Hr,Wr,3]
    if T > 1:
        steps = Q[:, 1:] - Q[:, :-1]
        steps = torch.cat([steps, steps[:, -1:]], dim=1)
    else:
        steps = torch.zeros_like(Q)
    N = Hr * Wr
    # One splat per view: view i's camera, the points where they are at time i.
    rendered, winner = splat_depth(
        Q.detach().reshape(B * T, N, 3), None,
        extrinsics.detach()[..., :3, :4].to(dtype).reshape(B * T, 1, 3, 4),
        intrinsics.detach().to(dtype).reshape(B * T, 1, 3, 3), H, W)
    rendered, winner = rendered.reshape(B, T, H, W), winner.reshape(B, T, H, W)
    d = depths.detach()
    good_depth = torch.isfinite(d) & (d > 0)
    seen = (winner >= 0) & good_depth & ((rendered - d).abs() <= depth_tolerance * d)
    idx = winner.clamp_min(0).reshape(B, T, H * W, 1).expand(-1, -1, -1, 3)
    flow = torch.gather(steps.reshape(B, T, N, 3), 2, idx).reshape(B, T, H, W, 3)

    # Holes of the forward splat: take an adjacent explained pixel's step when its depth agrees.
    filled = seen.clone()
    out = flow.clone()
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy == 0 and dx == 0:
                continue
            n_seen = _shifted(seen, dy, dx, False)
            n_depth = _shifted(d, dy, dx, float("nan"))
            n_flow = _shifted(flow, dy, dx, 0.0, spatial=(2, 3))
            take = ~filled & n_seen & good_depth & ((n_depth - d).abs() <= depth_tolerance * d)
            out = torch.where(take[..., None], n_flow, out)
            filled = filled | take
    fill = float("nan") if unmatched == "unknown" else 0.0
    return torch.where(filled[..., None], out, torch.full_like(out, fill))


def _shifted(x: Tensor, dy: int, dx: int, pad, spatial: Tuple[int, int] = (2, 3)) -> Tensor:
    """``y[..., i, j] = x[..., i + dy, j + dx]`` over the dims ``spatial``, ``pad`` outside."""
    ay, ax = spatial
    H, W = x.shape[ay], x.shape[ax]
    out = torch.full_like(x, pad)
    src_y = slice(max(dy, 0), H + min(dy, 0))
    dst_y = slice(max(-dy, 0), H + min(-dy, 0))
    src_x = slice(max(dx, 0), W + min(dx, 0))
    dst_x = slice(max(-dx, 0), W + min(-dx, 0))
    index_src = [slice(None)] * x.dim()
    index_dst = [slice(None)] * x.dim()
    index_src[ay], index_src[ax] = src_y, src_x
    index_dst[ay], index_dst[ax] = dst_y, dst_x
    out[tuple(index_dst)] = x[tuple(index_src)]
    return out


# --------------------------------------------------------------------------------------------------
# Output conversions
# --------------------------------------------------------------------------------------------------


def _view_field(predictions: Sequence[Mapping[str, Any]], key: str, shape: Tuple[int, ...],
                required: bool = True) -> Optional[Tensor]:
    """``predictions[i][key]`` stacked on dim 1 (``[B,T,...]``), each checked against
    ``shape`` (``-1`` matches any size); None when some view lacks it and it is optional."""
    values = []
    for i, view in enumerate(predictions):
        value = view.get(key) if isinstance(view, Mapping) else None
        if value is None:
            if required:
                got = sorted(view) if isinstance(view, Mapping) else type(view).__name__
                raise KeyError(f"Any4D predictions[{i}] has no {key!r} (got {got}); expected "
                               f"the released model's output (vggrpo.geometry.any4d)")
            return None
        if not isinstance(value, Tensor):
            raise TypeError(f"Any4D predictions[{i}][{key!r}] must be a tensor, got "
                            f"{type(value).__name__}")
        if value.dim() != len(shape) or any(s not in (-1, v) for s, v in zip(shape, value.shape)):
            want = "[" + ",".join("*" if s == -1 else str(s) for s in shape) + "]"
            raise ValueError(f"Any4D predictions[{i}][{key!r}] must be {want}, got "
                             f"{_dims(value)}")
        values.append(_float(value))
    return torch.stack(values, dim=1)


def any4d_predictions_to_geometry_dict(
    predictions: Sequence[Mapping[str, Any]],
    *,
    pointmaps_from: str = "factors",
    depth_tolerance: float = 0.05,
    unmatched: str = "unknown",
) -> Dict[str, Any]:
    """vggrpo geometry fields of Any4D's output: one dict per view, the first the reference
    (module docstring for every field and the scene-flow derivation).

    Needs ``ray_directions`` ``[B,H,W,3]``, ``depth_along_ray`` ``[B,H,W,1]`` (or ``[B,H,W]``),
    ``cam_trans`` ``[B,3]`` and ``cam_quats`` ``[B,4]`` (xyzw) in every view; uses ``scene_flow``
    ``[B,H,W,3]``, ``conf`` ``[B,H,W]`` and (with ``pointmaps_from="pts3d"``) ``pts3d`` when every
    view has them. Returns ``{"extrinsics": [B,T,3,4], "intrinsics": [B,T,3,3], "depths":
    [B,T,H,W], "pointmaps": [B,T,H,W,3], "scene_flow": [B,T,H,W,3] or None, "confidences":
    {"conf": [B,T,H,W]} or None}``. float64 kept, lower precisions in float32. Differentiable
    (the scene flow's matching is not).
    """
    if pointmaps_from not in ("factors", "pts3d"):
        raise ValueError(f"pointmaps_from must be 'factors' or 'pts3d', got {pointmaps_from!r}")
    if isinstance(predictions, Mapping) or not isinstance(predictions, Sequence) \
            or len(predictions) == 0:
        raise TypeError(f"Any4D predictions must be a non-empty list with one dict per view, got "
                        f"{type(predictions).__name__}")
    rays = _view_field(predictions, "ray_directions", (-1, -1, -1, 3))
    B, T, H, W, _ = rays.shape
    first = predictions[0]["depth_along_ray"]
    shape = (B, H, W, 1) if isinstance(first, Tensor) and first.dim() == 4 else (B, H, W)
    ranges = _view_field(predictions, "depth_along_ray", shape)
    ranges = ranges[..., 0] if len(shape) == 4 else ranges
    trans = _view_field(predictions, "cam_trans", (B, 3))
    quats = _view_field(predictions, "cam_quats", (B, 4))
    dtype = torch.promote_types(torch.promote_types(rays.dtype, ranges.dtype),
                                torch.promote_types(trans.dtype, quats.dtype))
    rays, ranges, trans, quats = (x.to(dtype) for x in (rays, ranges, trans, quats))

    unit = rays / torch.linalg.vector_norm(rays, dim=-1, keepdim=True)
    R_wc = quaternion_to_matrix(quats)  # [B,T,3,3]
    extrinsics = camera_to_world_to_extrinsics(torch.cat([R_wc, trans[..., None]], dim=-1))
    intrinsics = intrinsics_from_rays(rays)
    depths = ranges * unit[..., 2]
    cam_points = unit * ranges[..., None]
    pointmaps = torch.einsum("btij,bthwj->bthwi", R_wc, cam_points) + trans[:, :, None, None, :]
    if pointmaps_from == "pts3d":
        pointmaps = _view_field(predictions, "pts3d", (B, H, W, 3)).to(dtype)

    scene_flow = None
    tracks = _view_field(predictions, "scene_flow", (B, -1, -1, 3), required=False)
    if tracks is not None:
        if tracks.shape[2:4] != (H, W):
            raise ValueError(f"Any4D scene_flow must be on the reference view's {H}x{W} grid, got "
                             f"{list(tracks.shape[2:4])}")
        scene_flow = scene_flow_from_reference_tracks(
            pointmaps[:, 0], tracks.to(dtype), extrinsics, intrinsics, depths,
            depth_tolerance=depth_tolerance, unmatched=unmatched)
    conf = _view_field(predictions, "conf", (B, H, W), required=False)
    return {
        "extrinsics": extrinsics,
        "intrinsics": intrinsics,
        "depths": depths,
        "pointmaps": pointmaps,
        "scene_flow": scene_flow,
        "confidences": None if conf is None else {"conf": conf.to(dtype)},
    }


def any4d_outputs_to_geometry_dict(
    camera_to_world: Tensor,
    range_depth: Tensor,
    intrinsics: Tensor,
    scene_flow: Optional[Tensor] = None,
    confidences: Optional[Mapping[str, Tensor]] = None,
) -> Dict[str, Any]:
    """vggrpo geometry fields of Any4D-style *factors* already in vggrpo's layout (what an
    ``extract=`` of :class:`Any4DAdapter` returns for a variant of the network).

    * ``camera_to_world`` ``[B,S,4,4]`` (or ``[B,S,3,4]``): world-from-camera poses, OpenCV axes;
    * ``range_depth`` ``[B,S,H,W]``: distance from the camera centre along the ray through each
      pixel centre, scene units;
    * ``intrinsics`` ``[B,S,3,3]`` in pixels of the ``H x W`` maps (this package's convention);
    * ``scene_flow`` ``[B,S,H,W,3]`` in this package's convention (each pixel's own point, to
      the next frame) or None; passed through;
    * ``confidences``: optional dict of ``[B,S,H,W]`` maps, passed through.

    Returns ``{"extrinsics": [B,S,3,4], "intrinsics", "depths": z-depth [B,S,H,W], "pointmaps":
    unprojected world points [B,S,H,W,3], "scene_flow", "confidences"}``. Differentiable.
    """
    from vggrpo.geometry.cameras import unproject_depth

    for name, value in (("camera_to_world", camera_to_world), ("range_depth", range_depth),
                        ("intrinsics", intrinsics)):
        if not isinstance(value, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if range_depth.dim() != 4:
        raise ValueError(f"range_depth must be [B,S,H,W], got {_dims(range_depth)}")
    B, S, H, W = range_depth.shape
    if tuple(camera_to_world.shape) not in ((B, S, 4, 4), (B, S, 3, 4)):
        raise ValueError(f"camera_to_world must be [{B},{S},4,4] or [{B},{S},3,4] to match "
                         f"range_depth {_dims(range_depth)}, got "
                         f"{_dims(camera_to_world)}")
    if tuple(intrinsics.shape) != (B, S, 3, 3):
        raise ValueError(f"intrinsics must be [{B},{S},3,3] to match range_depth "
                         f"{_dims(range_depth)}, got {_dims(intrinsics)}")
    if scene_flow is not None and tuple(scene_flow.shape) != (B, S, H, W, 3):
        raise ValueError(f"scene_flow must be [{B},{S},{H},{W},3] to match range_depth "
                         f"{_dims(range_depth)}, got {_dims(scene_flow)}")
    for name, conf in (confidences or {}).items():
        if tuple(conf.shape) != (B, S, H, W):
            raise ValueError(f"confidences[{name!r}] must be [{B},{S},{H},{W}], got "
                             f"{_dims(conf)}")

    dtype = torch.float32
    for value in (camera_to_world, range_depth, intrinsics):
        dtype = torch.promote_types(dtype, _float(value).dtype)
    extrinsics = camera_to_world_to_extrinsics(camera_to_world.to(dtype))
    K = intrinsics.to(dtype)
    depths = range_depth_to_z_depth(range_depth.to(dtype), K)
    return {
        "extrinsics": extrinsics,
        "intrinsics": K,
        "depths": depths,
        "pointmaps": unproject_depth(depths, K, extrinsics),
        "scene_flow": None if scene_flow is None else scene_flow.to(dtype),
        "confidences": (None if not confidences
                        else {k: v.to(dtype) for k, v in confidences.items()}),
    }


# --------------------------------------------------------------------------------------------------
# Building the network from Any4D's own configs
# --------------------------------------------------------------------------------------------------

#: The Hydra overrides of Any4D's own demo (images only, the ``local`` machine), plus one that
#: keeps its DINOv2 encoder from fetching pretrained weights the checkpoint replaces anyway.
ANY4D_OVERRIDES: Tuple[str, ...] = (
    "machine=local", "model=any4d", "model.encoder.uses_torch_hub=false",
    "model/task=images_only", "++model.encoder.torch_hub_pretrained=false",
)


def build_any4d_network(configs: PathLike, overrides: Sequence[str] = ANY4D_OVERRIDES
                        ) -> nn.Module:
    """The Any4D network, built as Any4D's demo builds it: its Hydra ``train`` config from the
    ``configs`` folder of an Any4D checkout, composed with ``overrides``, then
    ``any4d.models.init_model``. Random weights (load a checkpoint next).

    Needs the ``any4d`` package and its dependencies (Hydra, UniCeption), installed as Any4D's
    README says (``pip install -e .`` in the checkout). Its DINOv2 encoder's code comes from
    torch hub (``facebookresearch/dinov2``): offline, from torch hub's cache, as after one run of
    Any4D's demo. Errors: FileNotFoundError for a folder without ``train.yaml``, ImportError
    naming what to install, ValueError (one line) when Any4D fails to build.
    """
    folder = Path(os.fspath(configs)).expanduser()
    if not (folder / "train.yaml").is_file():
        raise FileNotFoundError(f"Any4D configs folder {str(folder)!r} has no train.yaml (expected "
                                f"the configs/ folder of an Any4D checkout)")
    try:
        from any4d.models import init_model
        from hydra import compose, initialize_config_dir
        from hydra.core.global_hydra import GlobalHydra
    except ImportError as err:
        raise ImportError(f"building Any4D needs the any4d package and its dependencies ({err}); "
                          f"install them from your Any4D checkout: pip install -e <Any4D>") \
            from None
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(folder.resolve()), version_base=None):
            cfg = compose(config_name="train", overrides=list(overrides))
        return init_model(cfg.model.model_str, cfg.model.model_config)
    except Exception as err:  # Hydra, OmegaConf, torch hub and the model raise many types
        reason = " ".join(str(err).split())
        raise ValueError(f"Any4D could not be built from {str(folder)!r}: "
                         f"{type(err).__name__}: {reason[:300]}") from None
    finally:
        GlobalHydra.instance().clear()


# --------------------------------------------------------------------------------------------------
# The adapter
# --------------------------------------------------------------------------------------------------


class _GivenFeatures(nn.Module):
    """Stands in for Any4D's image encoder: returns the given features ``[V*B,C,h,w]``."""

    def __init__(self, features: Tensor):
        super().__init__()
        self.features = features

    def forward(self, encoder_input: Any) -> Any:  # noqa: ARG002 (the features are given)
        return types.SimpleNamespace(features=self.features)


class _GivenOutput(nn.Module):
    """Stands in for Any4D's multi-view transformer: returns what it was given."""

    def __init__(self, output: Any):
        super().__init__()
        self.output = output

    def forward(self, info_sharing_input: Any) -> Any:  # noqa: ARG002
        return self.output


@contextlib.contextmanager
def _swapped(model: nn.Module, **modules: nn.Module) -> Iterator[None]:
    original = {name: getattr(model, name) for name in modules}
    try:
        for name, module in modules.items():
            setattr(model, name, module)
        yield
    finally:
        for name, module in original.items():
            setattr(model, name, module)


def _encoder_input(image: Tensor, data_norm_type: str) -> Any:
    try:  # the encoder's own input type when UniCeption is installed (the real Any4D)
        from uniception.models.encoders import ViTEncoderInput
    except ImportError:
        return types.SimpleNamespace(image=image, data_norm_type=data_norm_type)
    return ViTEncoderInput(image=image, data_norm_type=data_norm_type)


class Any4DAdapter(nn.Module):
    """The released Any4D network wrapped to read videos into vggrpo geometry.

    ``adapter(video [B,T,3,H,W] in [0,1]) -> Geometry`` (``H, W`` multiples of the encoder's
    patch size, 14). Frame 0 is Any4D's reference view. The conversion of every field, and of
    the scene flow, is in the module docstring.

    Args:
        model: the network (``any4d.models.any4d.model.Any4D``, built from Any4D's configs); or,
            with ``extract``, any variant whose output ``extract`` maps to factors.
        extract: None for the released network's output; else a callable mapping the model's raw
            output for a video to ``{"camera_to_world", "range_depth", "intrinsics",
            "scene_flow", "confidences"}`` (:func:`any4d_outputs_to_geometry_dict`), the model
            then being called with the ``[B,T,3,H,W]`` video itself.
        pointmaps_from: ``"factors"`` (rays x range, posed; the default) or ``"pts3d"``.
        depth_tolerance, unmatched: of the scene-flow derivation
            (:func:`scene_flow_from_reference_tracks`).

    Backbone protocol (:class:`~vggrpo.geometry.backbone.GeometryBackbone`), for stitching an
    LGM: the stitch point is the image encoder's output (DINOv2 patch features, ``dim`` =
    ``model.encoder.enc_embed_dim``). ``embed`` runs the encoder; ``forward_tokens`` runs the
    model's own forward with the encoder's output replaced by the given tokens; ``blocks`` is the
    multi-view transformer's ``self_attention_blocks`` (alternating or global attention, as
    released); ``heads((features, output), grid)`` takes the stitch-point tokens and what
    ``model.info_sharing`` returned for them.
    """

    def __init__(self, model: nn.Module,
                 extract: Optional[Callable[[Any], Mapping[str, Optional[Tensor]]]] = None, *,
                 pointmaps_from: str = "factors", depth_tolerance: float = 0.05,
                 unmatched: str = "unknown"):
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be the Any4D network (an nn.Module), got "
                            f"{type(model).__name__}")
        if extract is not None and not callable(extract):
            raise TypeError(f"extract must be None or a callable, got {type(extract).__name__}")
        if pointmaps_from not in ("factors", "pts3d"):
            raise ValueError(f"pointmaps_from must be 'factors' or 'pts3d', got "
                             f"{pointmaps_from!r}")
        if unmatched not in _UNMATCHED:
            raise ValueError(f"unmatched must be one of {list(_UNMATCHED)}, got {unmatched!r}")
        self.model = model
        self.extract = extract
        self.pointmaps_from = pointmaps_from
        self.depth_tolerance = depth_tolerance
        self.unmatched = unmatched
        encoder = getattr(model, "encoder", None)
        self.patch_size = int(getattr(encoder, "patch_size", 14))
        self.dim = int(getattr(encoder, "enc_embed_dim", 1024))
        self.data_norm_type = str(getattr(encoder, "data_norm_type", "dinov2"))
        # The connector replaces one module: the image encoder.
        self.stitch_layer = 1

    @classmethod
    def from_pretrained(
        cls,
        path: PathLike,
        build_model: Callable[[], nn.Module],
        *,
        strict: bool = False,
        **kwargs: Any,
    ) -> "Any4DAdapter":
        """``build_model()`` with local weights loaded, wrapped (``kwargs`` go to the adapter).

        ``path``: a weights file or a folder holding one (``any4d_4v_combined.pth``). The state
        dict may be wrapped as ``{"model": state_dict, ...}``, as Any4D's training writes it; it
        loads into the network itself (its keys carry no ``model.`` prefix). Loaded like Any4D's
        own loader, ``strict=False``, but never silently: a key of the network that the file
        lacks is a warning naming how many and which; a file that matches none of the network's
        keys, or a tensor of the wrong shape, is a ValueError. ``torch.load(weights_only=True)``:
        a checkpoint holding other Python objects is refused with the one-line re-save recipe.
        The weights are copied into the built network tensor by tensor from a memory-mapped
        file (:func:`~vggrpo.geometry.checkpoints.load_weights_into`): no second copy of the
        model is held. Never downloads. Eval mode.
        """
        files = find_weights(path, "Any4D")
        if not callable(build_model):
            raise TypeError("build_model must be a zero-argument callable returning the Any4D "
                            "network (build it with the any4d package from its config)")
        model = build_model()
        missing, _ = load_weights_into(model, files, strict=strict, what="Any4D")
        if missing:
            warnings.warn(f"Any4D weights {str(path)!r} leave {len(missing)} of the network's "
                          f"{len(model.state_dict())} tensors at their initial values (e.g. "
                          f"{missing[:3]})", stacklevel=2)
        return cls(model, **kwargs).eval()

    # -- plain use ----------------------------------------------------------------------------

    def _check_video(self, video: Tensor) -> None:
        if not isinstance(video, Tensor) or video.dim() != 5 or video.shape[2] != 3:
            got = _dims(video) if isinstance(video, Tensor) else type(video).__name__
            raise ValueError(f"video must be [B,T,3,H,W] in [0,1], got {got}")
        if self.extract is None:
            H, W = video.shape[-2:]
            if H % self.patch_size or W % self.patch_size:
                raise ValueError(f"video height and width must be multiples of the Any4D "
                                 f"encoder's patch size {self.patch_size}, got {H}x{W}")

    def _normalise(self, frames: Tensor) -> Tensor:
        if self.data_norm_type not in IMAGE_NORMALIZATIONS:
            raise ValueError(f"Any4D encoder's data_norm_type {self.data_norm_type!r} is not one "
                             f"vggrpo knows ({sorted(IMAGE_NORMALIZATIONS)})")
        mean, std = (frames.new_tensor(v).view(3, 1, 1)
                     for v in IMAGE_NORMALIZATIONS[self.data_norm_type])
        return (frames - mean) / std

    def views(self, video: Tensor) -> List[Dict[str, Any]]:
        """``video`` ``[B,T,3,H,W]`` in [0,1] -> Any4D's input: one dict per frame with
        ``img`` ``[B,3,H,W]`` (normalised for the encoder) and ``data_norm_type``."""
        self._check_video(video)
        return [{"img": self._normalise(video[:, t]), "data_norm_type": [self.data_norm_type]}
                for t in range(video.shape[1])]

    def _convert(self, predictions: Any) -> Dict[str, Any]:
        return any4d_predictions_to_geometry_dict(
            predictions, pointmaps_from=self.pointmaps_from,
            depth_tolerance=self.depth_tolerance, unmatched=self.unmatched)

    def geometry_dict(self, video: Tensor) -> Dict[str, Any]:
        """``video`` ``[B,T,3,H,W]`` in [0,1] -> the geometry fields (see
        :func:`any4d_predictions_to_geometry_dict`, or :func:`any4d_outputs_to_geometry_dict`
        with ``extract``)."""
        self._check_video(video)
        if self.extract is None:
            return self._convert(self.model(self.views(video)))
        factors = dict(self.extract(self.model(video)))
        missing = [k for k in ("camera_to_world", "range_depth", "intrinsics") if k not in factors]
        if missing:
            raise KeyError(f"Any4D extract() result lacks {missing} (got {sorted(factors)})")
        return any4d_outputs_to_geometry_dict(
            factors["camera_to_world"], factors["range_depth"], factors["intrinsics"],
            factors.get("scene_flow"), factors.get("confidences"))

    def forward(self, video: Tensor) -> Geometry:
        """``video`` ``[B,T,3,H,W]`` in [0,1] -> :class:`~vggrpo.geometry.record.Geometry`."""
        return Geometry(**self.geometry_dict(video))

    # -- backbone protocol hooks --------------------------------------------------------------

    def _need_network(self, hook: str) -> None:
        if self.extract is not None:
            raise TypeError(f"Any4DAdapter.{hook} needs the released network's interface; an "
                            f"adapter with extract= does not stitch")

    @property
    def blocks(self) -> nn.ModuleList:
        """The multi-view transformer's attention blocks (``model.info_sharing.
        self_attention_blocks``), e.g. for LoRA targeting."""
        blocks = getattr(getattr(self.model, "info_sharing", None), "self_attention_blocks", None)
        if not isinstance(blocks, nn.ModuleList):
            raise AttributeError("the Any4D network has no info_sharing.self_attention_blocks "
                                 "(the released alternating/global-attention transformer)")
        return blocks

    def embed(self, video: Tensor) -> Tensor:
        """Patch features at the stitch point ``[B,T,H/14,W/14,C]``: the image encoder's output
        for the normalised frames, as Any4D's forward computes it (all views in one batch)."""
        self._need_network("embed")
        views = self.views(video)
        B, T = video.shape[:2]
        images = torch.cat([v["img"] for v in views], dim=0)  # view-major, as Any4D batches
        features = self.model.encoder(_encoder_input(images, self.data_norm_type)).features
        _, C, h, w = features.shape
        return features.reshape(T, B, C, h, w).permute(1, 0, 3, 4, 2)

    def _dummy_views(self, B: int, T: int, h: int, w: int, like: Tensor) -> List[Dict[str, Any]]:
        # The network reads the images' shape, device and dtype once its encoder is replaced.
        img = like.new_zeros(B, 3, h * self.patch_size, w * self.patch_size)
        return [{"img": img, "data_norm_type": [self.data_norm_type]} for _ in range(T)]

    def forward_tokens(self, tokens: Tensor) -> Geometry:
        """Patch features ``[B,T,h,w,C]`` at the stitch point -> Geometry at ``(14h, 14w)``: the
        rest of the network (fusion, multi-view transformer, heads) as its forward runs it."""
        self._need_network("forward_tokens")
        if not isinstance(tokens, Tensor) or tokens.dim() != 5 or tokens.shape[-1] != self.dim:
            got = _dims(tokens) if isinstance(tokens, Tensor) else type(tokens).__name__
            raise ValueError(f"tokens must be [B,T,h,w,{self.dim}], got {got}")
        B, T, h, w, C = tokens.shape
        features = tokens.permute(1, 0, 4, 2, 3).reshape(T * B, C, h, w)
        with _swapped(self.model, encoder=_GivenFeatures(features)):
            predictions = self.model(self._dummy_views(B, T, h, w, tokens))
        return Geometry(**self._convert(predictions))

    def heads(self, tokens: Tuple[Tensor, Any], grid: Tuple[int, int]) -> Geometry:
        """``(features, output)`` -> Geometry at ``(14 grid[0], 14 grid[1])`` through the
        network's own heads: ``features`` ``[B,T,h,w,C]`` are the stitch-point tokens (the
        released DPT head also reads the encoder's fused features), ``output`` what
        ``model.info_sharing`` returned for them (the released transformer's ``(final,
        intermediates)`` pair)."""
        self._need_network("heads")
        if not (isinstance(tokens, tuple) and len(tokens) == 2 and isinstance(tokens[0], Tensor)):
            raise ValueError("tokens must be (features [B,T,h,w,C], what model.info_sharing "
                             "returned for them)")
        features, output = tokens
        if features.dim() != 5 or tuple(features.shape[2:4]) != tuple(grid):
            raise ValueError(f"features must be [B,T,{grid[0]},{grid[1]},{self.dim}], got "
                             f"{_dims(features)}")
        B, T, h, w, C = features.shape
        given = features.permute(1, 0, 4, 2, 3).reshape(T * B, C, h, w)
        with _swapped(self.model, encoder=_GivenFeatures(given),
                      info_sharing=_GivenOutput(output)):
            predictions = self.model(self._dummy_views(B, T, h, w, features))
        return Geometry(**self._convert(predictions))
