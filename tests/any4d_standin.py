"""A stand-in for the released Any4D network (any4d.models.any4d.model.Any4D), for tests.

It has Any4D's interface, which is what vggrpo's adapter relies on:

* ``forward(views)``: one dict per view with ``img`` ``[B,3,H,W]`` and ``data_norm_type``; the
  first view is the reference;
* the module layout the backbone hooks reach into: ``encoder`` (``patch_size``,
  ``enc_embed_dim``, ``data_norm_type``; called with an input carrying ``image`` and
  ``data_norm_type``, returning an object with ``features`` ``[V*B,C,h,w]``, views major),
  ``fusion_norm_layer``, ``info_sharing`` (its ``self_attention_blocks``, with ``attn.qkv`` /
  ``attn.proj`` linears; called with an input carrying ``features``, a list of ``[B,C,h,w]``,
  returning ``(final, intermediates)``, ``final.features`` a list per view), ``scale_token``; its
  dense head reads the transformer's output and the fused encoder features, as the released DPT
  head does;
* its output: one dict per view with ``pts3d``, ``pts3d_cam``, ``ray_directions`` (unit),
  ``depth_along_ray`` ``[B,H,W,1]``, ``cam_trans``, ``cam_quats`` (camera-to-world, xyzw),
  ``scene_flow`` (the reference view's points' motion from the reference time to this view's time,
  on the reference grid), ``conf``, ``non_ambiguous_mask`` and ``metric_scaling_factor``. Rays go
  through integer pixel coordinates, as Any4D's do.

The outputs are a synthetic scene's ground truth. The network's own path (encoder, fusion,
transformer, a dense head) modulates the ranges by ``exp(gain * tanh(head))``: with ``gain = 0``
the outputs are exactly the truth, with ``gain != 0`` they depend on the tokens, which the hook
tests need.
"""

from __future__ import annotations

import types

import torch
from torch import nn

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def any4d_truth(scene):
    """Any4D's view of a synthetic scene: ``(rays [B,T,H,W,3] unit through integer pixel
    coordinates of Any4D's K, ranges [B,T,H,W], cam_trans [B,T,3], cam_quats [B,T,4] (xyzw,
    camera-to-world), tracks [B,T,H,W,3] (the reference view's points' motion to each time))``.

    Built from the scene's own cameras and points, with none of vggrpo's conversions: the rays
    are the directions to the scene's points, and Any4D's K is the scene's K with the principal
    point 0.5 px before it.
    """
    R_cw, t_cw = scene.extrinsics[..., :3], scene.extrinsics[..., 3]
    R_wc = R_cw.transpose(-1, -2)
    centres = -(R_wc @ t_cw[..., None])[..., 0]
    cam = torch.einsum("btij,bthwj->bthwi", R_cw, scene.pointmaps) + t_cw[:, :, None, None, :]
    ranges = cam.norm(dim=-1)
    rays = cam / ranges[..., None]
    T = scene.frames
    # Boxes move at constant velocity: the reference point's motion to time i is i steps.
    steps = torch.arange(T, dtype=scene.scene_flow.dtype)[None, :, None, None, None]
    tracks = scene.scene_flow[:, :1] * steps
    return rays, ranges, centres, _matrix_quat(R_wc), tracks


def _matrix_quat(R):
    """xyzw quaternions of rotations by less than 180 degrees (w > 0), checked by the way back."""
    w = 0.5 * torch.sqrt(1.0 + R[..., 0, 0] + R[..., 1, 1] + R[..., 2, 2])
    x = (R[..., 2, 1] - R[..., 1, 2]) / (4 * w)
    y = (R[..., 0, 2] - R[..., 2, 0]) / (4 * w)
    z = (R[..., 1, 0] - R[..., 0, 1]) / (4 * w)
    q = torch.stack([x, y, z, w], dim=-1)
    assert torch.allclose(_quat_matrix(q), R, atol=1e-5), "rotation of 180 degrees or more"
    return q


class _Encoder(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.patch_size = 14
        self.enc_embed_dim = dim
        self.data_norm_type = "dinov2"
        self.proj = nn.Conv2d(3, dim, 14, 14)

    def forward(self, encoder_input):
        assert encoder_input.data_norm_type == self.data_norm_type
        return types.SimpleNamespace(features=self.proj(encoder_input.image))


class _Attention(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        attn = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
        return x + self.proj(attn @ v)


class _Block(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.attn = _Attention(dim)

    def forward(self, x):
        return self.attn(x)


class _InfoSharing(nn.Module):
    """All views' tokens attend to each other, as the released transformer's global layers."""

    def __init__(self, dim: int, depth: int = 2):
        super().__init__()
        self.self_attention_blocks = nn.ModuleList(_Block(dim) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, info_sharing_input):
        feats = info_sharing_input.features
        V = len(feats)
        B, C, h, w = feats[0].shape
        x = torch.stack(feats, 1).permute(0, 1, 3, 4, 2).reshape(B, V * h * w, C)
        x = torch.cat([x, info_sharing_input.additional_input_tokens.permute(0, 2, 1)], dim=1)
        intermediates = []
        for block in self.self_attention_blocks:
            x = block(x)
            intermediates.append(x)
        x = self.norm(x)

        def per_view(y):
            grid = y[:, :V * h * w].reshape(B, V, h, w, C).permute(1, 0, 4, 2, 3)
            return types.SimpleNamespace(features=list(grid.unbind(0)),
                                         additional_token_features=y[:, V * h * w:])

        return per_view(x), [per_view(y) for y in intermediates]


class Any4DStandIn(nn.Module):
    """Any4D's interface with a synthetic scene's ground truth as its output (module docstring).

    ``scene``: a :class:`vggrpo.data.SceneGeometry` with ``H, W`` multiples of 14; the network
    answers for that scene only (its frames and size; its batch, or any batch when it has one
    video). ``received`` keeps the views of the
    last call.
    """

    def __init__(self, scene, dim: int = 8, gain: float = 0.0):
        super().__init__()
        self.encoder = _Encoder(dim)
        self.fusion_norm_layer = nn.LayerNorm(dim, eps=1e-6)
        self.scale_token = nn.Parameter(torch.zeros(dim))
        self.info_sharing = _InfoSharing(dim)
        self.dense_head = nn.Linear(dim, 14 * 14)
        self.gain = nn.Parameter(torch.tensor(float(gain)))
        rays, ranges, trans, quats, tracks = any4d_truth(scene)
        for name, value in (("rays", rays), ("ranges", ranges), ("trans", trans),
                            ("quats", quats), ("tracks", tracks)):
            self.register_buffer(f"truth_{name}", value, persistent=False)
        self.received = None

    def forward(self, views):
        self.received = views
        V = len(views)
        B, _, H, W = views[0]["img"].shape
        Bt = self.truth_ranges.shape[0]
        assert (V, H, W) == tuple(self.truth_ranges.shape[1:]) and Bt in (1, B), \
            "a video of another scene"

        def truth(x):  # a scene of batch 1 answers every video of a batch
            return x.expand(B, *x.shape[1:])

        images = torch.cat([view["img"] for view in views], dim=0)
        encoded = self.encoder(types.SimpleNamespace(image=images,
                                                     data_norm_type=views[0]["data_norm_type"][0]))
        feats = self.fusion_norm_layer(encoded.features.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        scale = self.scale_token[None, :, None].expand(B, -1, 1)
        final, _ = self.info_sharing(types.SimpleNamespace(features=list(feats.chunk(V, dim=0)),
                                                           additional_input_tokens=scale))
        dtype = self.truth_ranges.dtype
        out = []
        fused = feats.chunk(V, dim=0)
        for i in range(V):
            # The released DPT head reads the fused encoder features too (two IFR indices).
            x = self.dense_head((final.features[i] + fused[i]).permute(0, 2, 3, 1))  # [B,h,w,196]
            h, w = x.shape[1:3]
            x = x.reshape(B, h, w, 14, 14).permute(0, 1, 3, 2, 4).reshape(B, H, W)
            ranges = truth(self.truth_ranges[:, i]) * torch.exp(self.gain * torch.tanh(x)).to(dtype)
            rays = truth(self.truth_rays[:, i])
            trans, quats = truth(self.truth_trans[:, i]), truth(self.truth_quats[:, i])
            cam = rays * ranges[..., None]
            pts = torch.einsum("bij,bhwj->bhwi", _quat_matrix(quats), cam) + trans[:, None, None]
            out.append({
                "pts3d": pts, "pts3d_cam": cam, "ray_directions": rays,
                "depth_along_ray": ranges[..., None], "cam_trans": trans,
                "cam_quats": quats, "scene_flow": truth(self.truth_tracks[:, i]),
                "conf": 1.0 + ranges, "non_ambiguous_mask": ranges > 0,
                "metric_scaling_factor": torch.ones(B, 1, dtype=dtype),
            })
        return out


def _quat_matrix(q):
    # Any4D's own quaternion_to_rotation_matrix formula (xyzw), written out independently.
    q = q / q.norm(dim=-1, keepdim=True)
    x, y, z, w = q.unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], dim=-1).reshape(*q.shape[:-1], 3, 3)
