"""Any4DAdapter around a stand-in with the released Any4D's exact interface (tests/any4d_standin.py)
whose outputs are a synthetic scene's ground truth: the Geometry must give the scene back."""

from __future__ import annotations

import warnings

import pytest
import torch

from vggrpo.data import make_scene
from vggrpo.geometry import GeometryBackbone, missing_backbone_members
from vggrpo.geometry.any4d import (
    Any4DAdapter,
    any4d_predictions_to_geometry_dict,
    scene_flow_from_reference_tracks,
)

from any4d_standin import MEAN, STD, Any4DStandIn, any4d_truth


@pytest.fixture(scope="module")
def scene():
    return make_scene(batch=2, frames=5, height=56, width=84, trajectory="orbit",
                      moving_objects=2, static_objects=2, seed=3)


@pytest.fixture(scope="module")
def geometry(scene):
    adapter = Any4DAdapter(Any4DStandIn(scene))
    with torch.no_grad():
        return adapter(scene.video), adapter


def test_the_adapter_gives_the_scene_back_to_float32_rounding(scene, geometry):
    geo, _ = geometry
    # Extrinsics from camera-to-world quaternions (xyzw), intrinsics fitted to the rays (the half
    # pixel included), z-depths from ranges, point maps from the factors.
    for name in ("extrinsics", "intrinsics", "depths", "pointmaps"):
        torch.testing.assert_close(getattr(geo, name), getattr(scene, name), msg=name)
    assert set(geo.confidences) == {"conf"}
    assert geo.scene_flow.shape == scene.scene_flow.shape


def test_the_adapter_feeds_any4d_its_own_input(scene, geometry):
    _, adapter = geometry
    views = adapter.model.received
    assert isinstance(views, list) and len(views) == scene.frames
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    for t, view in enumerate(views):
        assert set(view) == {"img", "data_norm_type"}
        assert view["data_norm_type"] == ["dinov2"]
        assert view["img"].shape == (2, 3, 56, 84)
        torch.testing.assert_close(view["img"] * std + mean, scene.video[:, t])


def test_any4d_s_own_principal_point_is_half_a_pixel_before_ours(scene):
    """Any4D's recover_pinhole_intrinsics_from_ray_directions fits x = cx + fx rx/rz over
    integer pixel coordinates. Its K used as this package's would move the points."""
    from vggrpo.geometry.cameras import unproject_depth

    rays = any4d_truth(scene)[0]
    ratio = rays[..., 0] / rays[..., 2]
    x = torch.arange(scene.width, dtype=ratio.dtype).expand_as(ratio)
    fx = ((ratio - ratio.mean((-2, -1), keepdim=True)) * (x - x.mean())).sum((-2, -1)) / \
        ((ratio - ratio.mean((-2, -1), keepdim=True)) ** 2).sum((-2, -1))
    cx_any4d = x.mean() - fx * ratio.mean((-2, -1))
    torch.testing.assert_close(cx_any4d + 0.5, scene.intrinsics[..., 0, 2])
    K = scene.intrinsics.clone()
    K[..., :2, 2] -= 0.5
    shifted = unproject_depth(scene.depths, K, scene.extrinsics)
    extent = (scene.pointmaps.amax((1, 2, 3)) - scene.pointmaps.amin((1, 2, 3))).norm(dim=-1)
    off = (shifted - scene.pointmaps).norm(dim=-1).amax((1, 2, 3)) / extent
    assert (off > 0.005).all()  # the half pixel is not rounding


def test_scene_flow_is_derived_from_the_reference_view_s_tracks(scene, geometry):
    geo, _ = geometry
    flow, truth = geo.scene_flow, scene.scene_flow
    known = torch.isfinite(flow).all(-1)
    assert torch.isnan(flow[~known]).all()
    # The reference view sees itself whole; later views of the orbit see less of it.
    per_frame = known.float().mean((0, 2, 3))
    assert per_frame[0] == 1.0 and (per_frame[1:] > 0.4).all()
    # Where a pixel got a flow it is the truth, but for a few pixels on the edges of moving
    # boxes (measured: 0.1-0.9% over 9 scenes of the three trajectory kinds).
    right = (flow - truth).norm(dim=-1) < 1e-4
    assert right[known].float().mean() > 0.99
    dynamic = flow.norm(dim=-1) > 0.1
    assert (dynamic == scene.dynamic_mask)[known].float().mean() > 0.99
    assert dynamic[known].any() and (~dynamic[known]).any()
    # The geometry reward of the exact geometry stays that of a static scene (docs/ops.md).
    rewards = geo.rewards()
    assert torch.isfinite(rewards["geo"]).all() and (rewards["geo"] > -0.06).all()


def test_unmatched_pixels_can_count_as_static(scene, geometry):
    geo, _ = geometry
    adapter = Any4DAdapter(Any4DStandIn(scene), unmatched="static")
    with torch.no_grad():
        flow = adapter(scene.video).scene_flow
    known = torch.isfinite(geo.scene_flow).all(-1)
    assert torch.equal(flow[known], geo.scene_flow[known])
    assert (flow[~known] == 0).all()


def test_scene_flow_derivation_of_a_static_scene_is_zero_where_seen():
    scene = make_scene(batch=1, frames=3, height=28, width=42, trajectory="dolly",
                       static_objects=2, seed=1)
    rays, ranges, trans, quats, tracks = any4d_truth(scene)
    flow = scene_flow_from_reference_tracks(scene.pointmaps[:, 0], tracks, scene.extrinsics,
                                            scene.intrinsics, scene.depths)
    known = torch.isfinite(flow).all(-1)
    assert known.float().mean() > 0.9 and (flow[known] == 0).all()


def test_float64_stays_float64():
    scene = make_scene(batch=1, frames=3, height=28, width=42, trajectory="orbit",
                       moving_objects=1, seed=2, dtype=torch.float64)
    with torch.no_grad():
        geo = Any4DAdapter(Any4DStandIn(scene).double())(scene.video)
    assert geo.depths.dtype == torch.float64
    torch.testing.assert_close(geo.pointmaps, scene.pointmaps)
    torch.testing.assert_close(geo.intrinsics, scene.intrinsics)


def test_pointmaps_from_pts3d(scene):
    adapter = Any4DAdapter(Any4DStandIn(scene), pointmaps_from="pts3d")
    with torch.no_grad():
        geo = adapter(scene.video)
    torch.testing.assert_close(geo.pointmaps, scene.pointmaps)


def test_the_conversion_is_differentiable(scene):
    predictions = Any4DStandIn(scene)([{"img": torch.zeros(2, 3, 56, 84),
                                        "data_norm_type": ["dinov2"]}] * 5)
    ranges = [p["depth_along_ray"].detach().requires_grad_(True) for p in predictions]
    for p, r in zip(predictions, ranges):
        p["depth_along_ray"] = r
    out = any4d_predictions_to_geometry_dict(predictions)
    (out["depths"].sum() + out["pointmaps"].sum()).backward()
    assert all(r.grad is not None and torch.isfinite(r.grad).all() for r in ranges)


# --------------------------------------------------------------------------------------------------
# Loading, as Any4D's checkpoints are written
# --------------------------------------------------------------------------------------------------


def test_from_pretrained_loads_the_model_entry_into_the_network(tmp_path, scene):
    torch.manual_seed(0)
    source = Any4DStandIn(scene, gain=0.3)
    path = tmp_path / "any4d_4v_combined.pth"
    torch.save({"model": source.state_dict(), "epoch": 7}, path)
    torch.manual_seed(1)
    adapter = Any4DAdapter.from_pretrained(path, lambda: Any4DStandIn(scene))
    assert not adapter.training
    for name, value in source.state_dict().items():  # no "model." prefix: into the network
        assert torch.equal(adapter.model.state_dict()[name], value), name
    with torch.no_grad():
        torch.testing.assert_close(adapter(scene.video).depths,
                                   Any4DAdapter(source)(scene.video).depths)


def test_from_pretrained_is_not_strict_but_never_silent(tmp_path, scene):
    full = Any4DStandIn(scene).state_dict()
    partial = tmp_path / "partial.pth"
    torch.save({"model": {k: v for k, v in full.items() if k != "gain"}}, partial)
    with pytest.warns(UserWarning, match=r"leave 1 of the network's \d+ tensors at their "
                                         r"initial values \(e.g. \['gain'\]\)"):
        Any4DAdapter.from_pretrained(partial, lambda: Any4DStandIn(scene))
    prefixed = tmp_path / "prefixed.pth"
    torch.save({"model": {f"model.{k}": v for k, v in full.items()}}, prefixed)
    with pytest.raises(ValueError, match="Any4D weights .* match none of the model's"):
        Any4DAdapter.from_pretrained(prefixed, lambda: Any4DStandIn(scene))
    wrong = tmp_path / "wrong.pth"
    torch.save({"model": {**full, "dense_head.bias": torch.zeros(3)}}, wrong)
    with pytest.raises(ValueError, match=r"dense_head.bias is \[3\], the model's \[196\]"):
        Any4DAdapter.from_pretrained(wrong, lambda: Any4DStandIn(scene))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Any4DAdapter.from_pretrained(tmp_path / "absent.pth", lambda: Any4DStandIn(scene))


# --------------------------------------------------------------------------------------------------
# The backbone protocol: stitching an LGM to Any4D
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_scene():
    return make_scene(batch=1, frames=3, height=28, width=42, trajectory="orbit",
                      moving_objects=1, seed=5)


def test_the_adapter_is_a_geometry_backbone(small_scene):
    adapter = Any4DAdapter(Any4DStandIn(small_scene, gain=0.5))
    assert isinstance(adapter, GeometryBackbone) and not missing_backbone_members(adapter)
    assert (adapter.patch_size, adapter.dim, adapter.stitch_layer) == (14, 8, 1)
    assert adapter.blocks is adapter.model.info_sharing.self_attention_blocks
    assert sum(p.numel() for p in adapter.parameters()) == \
        sum(p.numel() for p in adapter.model.parameters())


def test_forward_tokens_of_embed_is_forward(small_scene):
    torch.manual_seed(0)
    adapter = Any4DAdapter(Any4DStandIn(small_scene, gain=0.5))
    video = small_scene.video
    with torch.no_grad():
        tokens = adapter.embed(video)
        assert tokens.shape == (1, 3, 2, 3, 8)
        direct = adapter(video)
        stitched = adapter.forward_tokens(tokens)
        # Not a constant shift: the fusion LayerNorm removes it, as Any4D's does.
        other = adapter.forward_tokens(tokens.flip(-1))
    torch.testing.assert_close(stitched.depths, direct.depths)
    torch.testing.assert_close(stitched.pointmaps, direct.pointmaps)
    assert not torch.allclose(other.depths, direct.depths)  # the given tokens are used
    assert type(adapter.model.encoder).__name__ == "_Encoder"  # put back


def test_heads_run_the_network_s_own_heads(small_scene):
    import types

    torch.manual_seed(0)
    adapter = Any4DAdapter(Any4DStandIn(small_scene, gain=0.5))
    model = adapter.model
    views = adapter.views(small_scene.video)
    with torch.no_grad():
        direct = adapter(small_scene.video)
        images = torch.cat([v["img"] for v in views])
        feats = model.encoder(types.SimpleNamespace(image=images, data_norm_type="dinov2"))
        feats = model.fusion_norm_layer(feats.features.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        scale = model.scale_token[None, :, None].expand(1, -1, 1)
        out = model.info_sharing(types.SimpleNamespace(features=list(feats.chunk(3)),
                                                       additional_input_tokens=scale))
        tokens = adapter.embed(small_scene.video)
        from_heads = adapter.heads((tokens, out), (2, 3))
        # The encoder's features are read by the heads too: zeros there change the result.
        other = adapter.heads((torch.zeros_like(tokens), out), (2, 3))
    torch.testing.assert_close(from_heads.depths, direct.depths, rtol=0, atol=0)
    assert not torch.allclose(other.depths, direct.depths)
    with pytest.raises(ValueError, match="tokens must be \\(features"):
        adapter.heads(out, (2, 3))
    assert type(model.info_sharing).__name__ == "_InfoSharing"


def test_an_lgm_stitched_to_any4d_reads_latents_and_takes_lora(small_scene):
    from vggrpo import LatentGeometryModel, LGMConfig
    from vggrpo.vae import encode_video

    from helpers import tiny_vae

    vae = tiny_vae(0)
    video = make_scene(batch=1, frames=9, height=112, width=112, trajectory="orbit",
                       seed=5).video
    latents = encode_video(vae, video)  # [1,16,3,14,14]
    scene = make_scene(batch=1, frames=3, height=98, width=98, trajectory="orbit", seed=5)
    adapter = Any4DAdapter(Any4DStandIn(scene, gain=0.5))
    lgm = LatentGeometryModel(adapter, LGMConfig.from_vae(vae, adapter.dim))
    lgm.add_lora(rank=2, alpha=4.0)
    with torch.no_grad():
        geo = lgm(latents)
    assert geo.depths.shape == (1, 3, 98, 98)  # 7x7 tokens from the 14x14 latent grid
    assert torch.isfinite(geo.depths).all()
    assert any("lora_A" in n for n, _ in adapter.blocks.named_parameters())


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------


def test_bad_input_is_one_clear_error(scene):
    adapter = Any4DAdapter(Any4DStandIn(scene))
    with pytest.raises(ValueError, match=r"multiples of the Any4D encoder's patch size 14, got "
                                         r"56x80"):
        adapter(scene.video[..., :80])
    with pytest.raises(ValueError, match=r"video must be \[B,T,3,H,W\]"):
        adapter(scene.video[0])
    good = adapter.model([{"img": torch.zeros(2, 3, 56, 84), "data_norm_type": ["dinov2"]}] * 5)
    with pytest.raises(KeyError, match=r"predictions\[1\] has no 'cam_quats'"):
        any4d_predictions_to_geometry_dict([good[0], {k: v for k, v in good[1].items()
                                                      if k != "cam_quats"}])
    with pytest.raises(ValueError, match=r"predictions\[0\]\['cam_trans'\] must be \[2,3\], got "
                                         r"\[2,4\]"):
        any4d_predictions_to_geometry_dict([{**good[0], "cam_trans": torch.zeros(2, 4)}])
    with pytest.raises(TypeError, match="one dict per view"):
        any4d_predictions_to_geometry_dict(good[0])
    for kwargs, match in (({"pointmaps_from": "head"}, "pointmaps_from must be"),
                          ({"unmatched": "drop"}, "unmatched must be one of")):
        with pytest.raises(ValueError, match=match):
            Any4DAdapter(adapter.model, **kwargs)
    odd = Any4DStandIn(scene)
    odd.encoder.data_norm_type = "mystery"
    with pytest.raises(ValueError, match="data_norm_type 'mystery' is not one vggrpo knows"):
        Any4DAdapter(odd)(scene.video)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(TypeError, match="extract= does not stitch"):
            Any4DAdapter(adapter.model, extract=lambda out: out).embed(scene.video)
