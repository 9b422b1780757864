"""vggrpo.geometry.adapters: output conversions, local-only loading, lazy optional imports.

The real VGGT / Any4D are not installed here. The conversions are checked against synthetic
scenes with exact geometry (fake model outputs are built from the scene's cameras, depths and
points, so converting them must give the scene back). The loading path and the backbone hooks of
VGGTAdapter are exercised with a small stand-in ``vggt`` package written to a temporary folder that
mimics the released module layout (``vggt.models.vggt.VGGT`` with ``aggregator.patch_embed``,
``frame_blocks``, ``global_blocks``, ImageNet-normalisation buffers): that checks vggrpo's plumbing,
not the real network.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from vggrpo.data.synthetic import make_scene
from vggrpo.geometry.adapters import (
    Any4DAdapter,
    VGGTAdapter,
    any4d_outputs_to_geometry_dict,
    find_weights,
    load_state_dict_file,
    to_geometry,
    vggt_outputs_to_geometry_dict,
)
from vggrpo.geometry.cameras import (
    camera_centres,
    cameras_to_pose_encoding,
    pose_encoding_to_cameras,
)
from vggrpo.geometry.record import Geometry

from vggt_standin import write_vggt_package

F64 = torch.float64
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def scene():
    return make_scene(batch=2, frames=4, height=21, width=28, trajectory="orbit", jitter=0.3,
                      static_objects=2, moving_objects=1, seed=11, dtype=F64)


def fake_vggt_outputs(scene, dtype=F64):
    H, W = scene.height, scene.width
    g = torch.Generator().manual_seed(0)
    conf = 1.0 + torch.rand(scene.depths.shape, generator=g, dtype=F64)
    return {
        "pose_enc": cameras_to_pose_encoding(scene.extrinsics, scene.intrinsics, H, W).to(dtype),
        "depth": scene.depths[..., None].to(dtype),
        "depth_conf": conf.to(dtype),
        "world_points": scene.pointmaps.to(dtype),
        "world_points_conf": (2 * conf).to(dtype),
        "images": torch.zeros(scene.batch, scene.frames, 3, H, W),
    }


# --------------------------------------------------------------------------------------------------
# VGGT output conversion
# --------------------------------------------------------------------------------------------------


def test_vggt_conversion_gives_back_the_scene(scene):
    out = vggt_outputs_to_geometry_dict(fake_vggt_outputs(scene), scene.height, scene.width)
    assert set(out) == {"extrinsics", "intrinsics", "depths", "pointmaps", "scene_flow",
                        "confidences"}
    torch.testing.assert_close(out["extrinsics"], scene.extrinsics)
    torch.testing.assert_close(out["intrinsics"], scene.intrinsics)
    torch.testing.assert_close(out["depths"], scene.depths)
    torch.testing.assert_close(out["pointmaps"], scene.pointmaps)
    assert out["scene_flow"] is None
    assert set(out["confidences"]) == {"depth", "pointmaps"}
    torch.testing.assert_close(out["confidences"]["pointmaps"], 2 * out["confidences"]["depth"])


def test_vggt_pointmaps_from_depth_match_ray_cast_points(scene):
    outputs = fake_vggt_outputs(scene)
    outputs["world_points"] = torch.zeros_like(outputs["world_points"])  # must not be used
    out = vggt_outputs_to_geometry_dict(outputs, pointmaps_from="depth")
    torch.testing.assert_close(out["pointmaps"], scene.pointmaps)
    del outputs["world_points"], outputs["depth_conf"], outputs["world_points_conf"]
    out = vggt_outputs_to_geometry_dict(outputs)  # no point head: unprojected as well
    torch.testing.assert_close(out["pointmaps"], scene.pointmaps)
    assert out["confidences"] is None


def test_vggt_conversion_float32_and_autocast_outputs(scene):
    out = vggt_outputs_to_geometry_dict(fake_vggt_outputs(scene, torch.float32))
    assert all(out[k].dtype == torch.float32 for k in ("extrinsics", "intrinsics", "depths",
                                                        "pointmaps"))
    torch.testing.assert_close(out["extrinsics"], scene.extrinsics.float(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["depths"], scene.depths.float())
    # Heads under autocast may return bfloat16; geometry is computed in float32.
    out = vggt_outputs_to_geometry_dict(fake_vggt_outputs(scene, torch.bfloat16))
    assert out["extrinsics"].dtype == torch.float32 and out["depths"].dtype == torch.float32


def test_vggt_conversion_is_differentiable(scene):
    outputs = fake_vggt_outputs(scene)
    pose = outputs["pose_enc"].clone().requires_grad_(True)
    outputs["pose_enc"] = pose
    out = vggt_outputs_to_geometry_dict(outputs, pointmaps_from="depth")
    out["pointmaps"].sum().backward()
    assert pose.grad is not None and bool(pose.grad.abs().sum() > 0)


def test_to_geometry_record(scene):
    geo = to_geometry(vggt_outputs_to_geometry_dict(fake_vggt_outputs(scene)))
    assert isinstance(geo, Geometry)
    assert geo.scene_flow is None and set(geo.confidences) == {"depth", "pointmaps"}
    torch.testing.assert_close(geo.depths, scene.depths)


def test_vggt_conversion_errors(scene):
    outputs = fake_vggt_outputs(scene)
    with pytest.raises(ValueError, match="differs from the depth maps' 21x28"):
        vggt_outputs_to_geometry_dict(outputs, 21, 30)
    with pytest.raises(KeyError, match="'depth'"):
        vggt_outputs_to_geometry_dict({"pose_enc": outputs["pose_enc"]})
    with pytest.raises(ValueError, match=r"pose_enc'\] must be \[B,S,9\], got \[2,4,8\]"):
        vggt_outputs_to_geometry_dict({**outputs, "pose_enc": outputs["pose_enc"][..., :8]})
    with pytest.raises(ValueError, match=r"outputs\['depth'\] must be \[2,4,H,W,1\]"):
        vggt_outputs_to_geometry_dict({**outputs, "depth": outputs["depth"][:, :3]})
    with pytest.raises(ValueError, match=r"world_points'\] must be \[2,4,21,28,3\]"):
        vggt_outputs_to_geometry_dict({**outputs, "world_points": outputs["world_points"][:1]})
    with pytest.raises(ValueError, match="pointmaps_from"):
        vggt_outputs_to_geometry_dict(outputs, pointmaps_from="points")


# --------------------------------------------------------------------------------------------------
# Any4D conversion
# --------------------------------------------------------------------------------------------------


def any4d_factors(scene):
    """Camera-to-world poses and range depths built directly from the scene (no vggrpo cameras)."""
    R_wc = scene.extrinsics[..., :3].transpose(-1, -2)
    C = camera_centres(scene.extrinsics)
    c2w = torch.zeros(scene.batch, scene.frames, 4, 4, dtype=F64)
    c2w[..., :3, :3], c2w[..., :3, 3], c2w[..., 3, 3] = R_wc, C, 1.0
    ranges = (scene.pointmaps - C[:, :, None, None, :]).norm(dim=-1)
    return c2w, ranges


def test_any4d_conversion_gives_back_the_scene(scene):
    c2w, ranges = any4d_factors(scene)
    conf = {"depth": torch.rand(scene.depths.shape, dtype=F64)}
    out = any4d_outputs_to_geometry_dict(c2w, ranges, scene.intrinsics, scene.scene_flow, conf)
    torch.testing.assert_close(out["extrinsics"], scene.extrinsics)
    torch.testing.assert_close(out["intrinsics"], scene.intrinsics)
    torch.testing.assert_close(out["depths"], scene.depths)
    torch.testing.assert_close(out["pointmaps"], scene.pointmaps)
    torch.testing.assert_close(out["scene_flow"], scene.scene_flow)
    assert bool(out["scene_flow"].abs().amax() > 0.1)
    torch.testing.assert_close(out["confidences"]["depth"], conf["depth"])
    geo = to_geometry(out)
    assert isinstance(geo, Geometry) and geo.scene_flow is not None
    # 3x4 poses and no flow work as well.
    out = any4d_outputs_to_geometry_dict(c2w[..., :3, :], ranges.float(), scene.intrinsics.float())
    assert out["scene_flow"] is None and out["confidences"] is None
    torch.testing.assert_close(out["depths"], scene.depths)  # promoted to float64


def test_any4d_conversion_errors(scene):
    c2w, ranges = any4d_factors(scene)
    K = scene.intrinsics
    with pytest.raises(ValueError, match=r"range_depth must be \[B,S,H,W\], got \[2,4,21\]"):
        any4d_outputs_to_geometry_dict(c2w, ranges[..., 0], K)
    with pytest.raises(ValueError, match=r"camera_to_world must be \[2,4,4,4\] or \[2,4,3,4\]"):
        any4d_outputs_to_geometry_dict(c2w[:, :2], ranges, K)
    with pytest.raises(ValueError, match=r"intrinsics must be \[2,4,3,3\]"):
        any4d_outputs_to_geometry_dict(c2w, ranges, K[0])
    with pytest.raises(ValueError, match=r"scene_flow must be \[2,4,21,28,3\]"):
        any4d_outputs_to_geometry_dict(c2w, ranges, K, scene.scene_flow[..., :2])
    with pytest.raises(ValueError, match=r"confidences\['depth'\] must be \[2,4,21,28\]"):
        any4d_outputs_to_geometry_dict(c2w, ranges, K, None, {"depth": ranges[:1]})


# --------------------------------------------------------------------------------------------------
# Local-only loading and optional imports
# --------------------------------------------------------------------------------------------------


def test_missing_path_is_file_not_found_and_never_downloads(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"'facebook/VGGT-1B' does not exist.*never "
                                                r"downloads"):
        VGGTAdapter.from_pretrained("facebook/VGGT-1B")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=f"{empty}.*holds no weights"):
        VGGTAdapter.from_pretrained(empty)
    notes = tmp_path / "notes.txt"
    notes.write_text("not weights")
    with pytest.raises(FileNotFoundError, match=f"{notes}.*is not a folder or a weights file"):
        VGGTAdapter.from_pretrained(notes)
    with pytest.raises(FileNotFoundError, match="Any4D checkpoint path"):
        Any4DAdapter.from_pretrained(tmp_path / "nope", lambda: nn.Linear(1, 1))


def test_vggt_missing_is_import_error_with_install_command(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "model.safetensors"))
    monkeypatch.setitem(sys.modules, "vggt", None)  # makes `import vggt...` fail even if present
    with pytest.raises(ImportError, match=r"pip install git\+https://github\.com/facebookresearch/"
                                          r"vggt"):
        VGGTAdapter.from_pretrained(tmp_path)


@pytest.fixture
def fake_vggt(tmp_path, monkeypatch):
    """A stand-in ``vggt`` package on sys.path; returns its VGGT class."""
    monkeypatch.syspath_prepend(str(write_vggt_package(tmp_path / "site")))
    import vggt.models.vggt as module

    yield module.VGGT
    for name in [n for n in sys.modules if n == "vggt" or n.startswith("vggt.")]:
        del sys.modules[name]


def test_importing_adapters_does_not_import_vggt(tmp_path):
    # A vggt that explodes on import: importing the adapters module must not touch it.
    (tmp_path / "vggt").mkdir()
    (tmp_path / "vggt" / "__init__.py").write_text("raise RuntimeError('vggt was imported')\n")
    code = textwrap.dedent("""
        import sys
        import vggrpo.geometry.adapters
        assert 'vggt' not in sys.modules, 'vggt imported'
        print('ok')
    """)
    # The caller's PYTHONPATH stays behind ours (a variant test run loads its extension from it).
    path = [str(tmp_path), str(REPO)] + [p for p in [os.environ.get("PYTHONPATH")] if p]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(path))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


@pytest.mark.parametrize("fmt", ["safetensors", "pt"])
def test_vggt_adapter_loads_local_weights(tmp_path, fake_vggt, fmt):
    torch.manual_seed(0)
    source = fake_vggt()
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file(source.state_dict(), str(ckpt / "model.safetensors"))
        path = ckpt
    else:
        path = ckpt / "model.pt"
        torch.save({"model": source.state_dict(), "epoch": 3}, path)
    adapter = VGGTAdapter.from_pretrained(path)
    assert not adapter.model.training
    for name, value in source.state_dict().items():
        torch.testing.assert_close(adapter.model.state_dict()[name], value, atol=0, rtol=0)

    video = torch.rand(1, 3, 3, 28, 42, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        geo = adapter(video)
        raw = source(video)
    assert isinstance(geo, Geometry) and geo.depths.shape == (1, 3, 28, 42)
    torch.testing.assert_close(geo.depths, raw["depth"][..., 0])
    E, K = pose_encoding_to_cameras(raw["pose_enc"], 28, 42)
    torch.testing.assert_close(geo.extrinsics, E)
    torch.testing.assert_close(geo.intrinsics, K)
    with pytest.raises(ValueError, match="multiples of 14"):
        adapter(video[..., :27, :])


def test_vggt_adapter_backbone_hooks_with_stand_in(fake_vggt):
    torch.manual_seed(0)
    adapter = VGGTAdapter(fake_vggt().eval())
    assert (adapter.patch_size, adapter.dim, adapter.stitch_layer) == (14, 8, 1)
    assert len(adapter.blocks) == 4
    assert sum(p.numel() for p in adapter.parameters()) == sum(
        p.numel() for p in adapter.model.parameters())  # blocks are not registered twice
    video = torch.rand(2, 3, 3, 28, 42, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        tokens = adapter.embed(video)
        assert tokens.shape == (2, 3, 2, 3, 8)
        direct = adapter(video)
        stitched = adapter.forward_tokens(tokens)
        # Different tokens must change the result (the given tokens are really used).
        other = adapter.forward_tokens(tokens + 1.0)
    torch.testing.assert_close(stitched.depths, direct.depths)
    torch.testing.assert_close(stitched.extrinsics, direct.extrinsics)
    assert not torch.allclose(other.depths, direct.depths)
    # The real patch embed is put back afterwards.
    assert type(adapter.model.aggregator.patch_embed).__name__ == "_PatchEmbed"
    # heads(): the aggregator's token list through the model's own heads, as in its forward.
    with torch.no_grad():
        token_list, _ = adapter.model.aggregator(video)
        from_heads = adapter.heads(token_list, (2, 3))
    torch.testing.assert_close(from_heads.depths, direct.depths, rtol=0, atol=0)
    torch.testing.assert_close(from_heads.extrinsics, direct.extrinsics, rtol=0, atol=0)
    torch.testing.assert_close(from_heads.intrinsics, direct.intrinsics, rtol=0, atol=0)


# --------------------------------------------------------------------------------------------------
# Any4D adapter and weight files
# --------------------------------------------------------------------------------------------------


class _FakeAny4D(nn.Module):
    """Returns fixed factors of a scene (scaled by a learnable-looking parameter of value 1)."""

    def __init__(self, factors):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(0.0, dtype=F64))
        self.factors = factors

    def forward(self, video):
        c2w, ranges, K, flow = self.factors
        return {"camera_to_world": c2w, "range_depth": ranges * self.scale, "intrinsics": K,
                "scene_flow": flow}


def test_any4d_adapter(tmp_path, scene):
    c2w, ranges = any4d_factors(scene)
    factors = (c2w, ranges, scene.intrinsics, scene.scene_flow)
    path = tmp_path / "any4d_4v_combined.pth"
    torch.save({"scale": torch.tensor(1.0, dtype=F64)}, path)
    # A variant whose output is already in factors: extract= maps it (here: as it is).
    adapter = Any4DAdapter.from_pretrained(path, lambda: _FakeAny4D(factors),
                                           extract=lambda out: out)
    geo = adapter(torch.zeros(2, 4, 3, 21, 28))
    torch.testing.assert_close(geo.depths, scene.depths)  # only right with the loaded scale 1
    torch.testing.assert_close(geo.pointmaps, scene.pointmaps)
    torch.testing.assert_close(geo.scene_flow, scene.scene_flow)

    wrapped = Any4DAdapter(_FakeAny4D(factors), extract=lambda out: {"range_depth": 1})
    with pytest.raises(KeyError, match="camera_to_world"):
        wrapped(torch.zeros(2, 4, 3, 21, 28))
    with pytest.raises(ValueError, match=r"video must be \[B,T,3,H,W\]"):
        adapter(torch.zeros(4, 3, 21, 28))


class _NotAWeight:
    pass


def test_weight_files(tmp_path):
    from safetensors.torch import save_file

    shards = tmp_path / "sharded"
    shards.mkdir()
    save_file({"a": torch.ones(2)}, str(shards / "model-00001-of-00002.safetensors"))
    save_file({"b": torch.zeros(3)}, str(shards / "model-00002-of-00002.safetensors"))
    state = load_state_dict_file(find_weights(shards))
    assert set(state) == {"a", "b"} and state["b"].shape == (3,)

    two = tmp_path / "two"
    two.mkdir()
    torch.save({"a": torch.ones(1)}, two / "x.pt")
    torch.save({"a": torch.ones(1)}, two / "y.pth")
    with pytest.raises(FileNotFoundError, match="several weight files"):
        find_weights(two)

    unsafe = tmp_path / "unsafe.pt"
    torch.save({"a": torch.ones(1), "obj": _NotAWeight()}, unsafe)
    with pytest.raises(ValueError, match=f"{unsafe}.*weights_only"):
        load_state_dict_file(unsafe)
