"""The tiny VGGT-like backbone, its protocol, and its supervised training on synthetic scenes."""

import dataclasses
import math

import pytest
import torch

from vggrpo.data.synthetic import make_scene
from vggrpo.geometry import (
    Geometry,
    GeometryBackbone,
    TinyVGGT,
    TinyVGGTConfig,
    missing_backbone_members,
)
from vggrpo.geometry.cameras import cameras_to_pose_encoding, unproject_depth
from vggrpo.geometry.tiny import sincos_2d
from vggrpo.geometry.training import (
    BackboneTrainingConfig,
    motion_loss,
    supervised_loss,
    supervised_targets,
    train_tiny_backbone,
)

SMALL = TinyVGGTConfig(dim=32, num_heads=2, encoder_depth=1, aggregator_depth=1, head_channels=8)


def small_model(seed=0):
    torch.manual_seed(seed)
    return TinyVGGT(SMALL).eval()


class _MinimalBackbone(torch.nn.Module):
    """The protocol's members and nothing else; ``blocks`` a submodule, as in every backbone."""

    patch_size, dim, stitch_layer = 8, 4, 1

    def __init__(self):
        super().__init__()
        self.blocks = torch.nn.ModuleList([torch.nn.Linear(4, 4)])

    def embed(self, video): ...

    def forward_tokens(self, tokens): ...

    def heads(self, tokens, grid): ...


def test_each_default_model_gets_its_own_config():
    first = TinyVGGT()
    first.config.dim = 8
    assert TinyVGGT().config == TinyVGGTConfig()


def test_protocol_check_sees_submodules_and_names_what_is_missing():
    # Python 3.12 checks runtime protocols statically, which misses nn.Module submodules; the
    # protocol's own check must accept these on every Python.
    assert isinstance(_MinimalBackbone(), GeometryBackbone)
    assert missing_backbone_members(_MinimalBackbone()) == []
    no_blocks = _MinimalBackbone()
    del no_blocks.blocks
    assert not isinstance(no_blocks, GeometryBackbone)
    assert missing_backbone_members(no_blocks) == ["blocks"]
    not_callable = _MinimalBackbone()
    not_callable.heads = 3
    assert missing_backbone_members(not_callable) == ["heads"]
    assert not isinstance(not_callable, GeometryBackbone)
    assert not isinstance(torch.nn.Linear(2, 2), GeometryBackbone)
    # Every member the protocol declares is checked (the lists are read off its body).
    assert missing_backbone_members(object()) == [
        "patch_size", "dim", "stitch_layer", "blocks", "embed", "forward_tokens", "heads"]


def test_protocol_and_split_forward():
    model = small_model()
    assert isinstance(model, GeometryBackbone)
    assert model.stitch_layer == SMALL.encoder_depth and model.dim == 32
    video = torch.rand(2, 3, 3, 32, 48)
    with torch.no_grad():
        whole = model(video)
        tokens = model.embed(video)
        split = model.forward_tokens(tokens)
    assert tokens.shape == (2, 3, 2, 3, 32)
    for name in ("extrinsics", "intrinsics", "depths", "pointmaps", "scene_flow"):
        assert torch.equal(getattr(whole, name), getattr(split, name)), name


@pytest.mark.parametrize("T,H,W", [(1, 16, 16), (3, 32, 48), (5, 48, 32)])
def test_output_shapes_and_conventions(T, H, W):
    model = small_model()
    with torch.no_grad():
        g = model(torch.rand(2, T, 3, H, W))
    assert isinstance(g, Geometry)
    assert g.depths.shape == (2, T, H, W)
    assert g.pointmaps.shape == g.scene_flow.shape == (2, T, H, W, 3)
    assert bool((g.depths > 0).all())
    # World frame = the first camera: frame 0 is exactly the identity pose.
    eye = torch.eye(3, 4).expand(2, 3, 4)
    assert torch.equal(g.extrinsics[:, 0], eye)
    # Centred cameras: principal point at (W/2, H/2) of the output maps.
    assert torch.allclose(g.intrinsics[..., 0, 2], torch.tensor(W / 2))
    assert torch.allclose(g.intrinsics[..., 1, 2], torch.tensor(H / 2))
    R = g.extrinsics[..., :3]
    assert torch.allclose(R @ R.transpose(-1, -2), torch.eye(3).expand_as(R), atol=1e-5)


def test_bad_video_is_a_clear_error():
    model = small_model()
    with pytest.raises(ValueError, match=r"video must be \[B,T,3,H,W\]"):
        model(torch.rand(1, 2, 4, 32, 32))
    with pytest.raises(ValueError, match="multiples of the patch size 16"):
        model(torch.rand(1, 2, 3, 30, 32))
    with pytest.raises(ValueError, match="tokens must be"):
        model.forward_tokens(torch.rand(1, 2, 2, 2, 31))


@pytest.mark.parametrize("field,value,expected", [
    ("depth_init", float("inf"), "depth_init must be a finite number > 0, got inf"),
    ("depth_init", 0.0, "depth_init must be a finite number > 0, got 0.0"),
    ("fov_init", float("nan"), "fov_init must be a finite number > 0, got nan"),
    ("fov_init", 3.2, "fov_init must be < pi radians, got 3.2"),
    ("mlp_ratio", -1.0, "mlp_ratio must be a finite number > 0, got -1.0"),
    ("mlp_ratio", 0.001, "mlp_ratio 0.001 leaves the MLPs no hidden units at dim 96"),
    ("stitch_layer", True, r"stitch_layer must be -1 or in 0..encoder_depth \(2\), got True"),
    ("stitch_layer", 3, r"stitch_layer must be -1 or in 0..encoder_depth \(2\), got 3"),
])
def test_config_refuses_values_that_would_build_a_broken_model(field, value, expected):
    with pytest.raises(ValueError, match=f"^TinyVGGTConfig.{expected}$"):
        TinyVGGTConfig(**{field: value})


@pytest.mark.parametrize("stitch_layer", [0, 1])
def test_an_earlier_stitch_point_runs_the_rest_of_the_encoder_after_it(stitch_layer):
    # Same weights, stitched after all encoder blocks or after `stitch_layer` of them: the
    # model's output must not change, only where embed() stops and forward_tokens() starts.
    torch.manual_seed(0)
    full = TinyVGGT(dataclasses.replace(SMALL, encoder_depth=2)).eval()
    early = TinyVGGT(dataclasses.replace(SMALL, encoder_depth=2, stitch_layer=stitch_layer))
    early.load_state_dict(full.state_dict())
    early.eval()
    video = torch.rand(1, 3, 3, 32, 48)
    with torch.no_grad():
        expected = full(video)
        tokens = early.embed(video)
        split = early.forward_tokens(tokens)
        assert not torch.allclose(tokens, full.embed(video))  # it does stop earlier
    for name in ("extrinsics", "depths", "pointmaps", "scene_flow"):
        torch.testing.assert_close(getattr(split, name), getattr(expected, name), rtol=0, atol=0)


def test_config_is_strict():
    with pytest.raises(ValueError, match="unknown keys"):
        TinyVGGTConfig.from_dict({"dim": 32, "depthh": 3})
    with pytest.raises(ValueError, match="patch_size must be a multiple of 4"):
        TinyVGGTConfig(patch_size=14)
    with pytest.raises(ValueError, match="num_heads must be a positive int"):
        TinyVGGTConfig(num_heads=0)
    assert TinyVGGTConfig.from_dict(SMALL.to_dict()) == SMALL


def test_positions_are_distinct():
    pe = sincos_2d(4, 6, 32).reshape(24, 32)
    d = torch.cdist(pe, pe) + torch.eye(24) * 10
    assert float(d.min()) > 0.1


def test_every_parameter_gets_a_gradient():
    model = small_model().train()
    g = model(torch.rand(1, 3, 3, 32, 32))
    loss = (g.depths.mean() + g.pointmaps.square().mean() + g.scene_flow.square().mean()
            + g.extrinsics[:, 1:].square().sum() + g.intrinsics.sum())
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert missing == []


def _scene_items(n, frames=9, H=32, W=48, seed=0):
    s = make_scene(n, frames, H, W, trajectory="orbit", moving_objects=1, seed=seed)
    keys = ("video", "extrinsics", "intrinsics", "depths", "pointmaps", "scene_flow")
    return {k: getattr(s, k) for k in keys}


def test_supervised_targets_are_first_camera_relative_and_consistent():
    batch = _scene_items(2)
    tgt = supervised_targets(batch, temporal=4)
    gt = tgt["geometry"]
    assert tgt["video"].shape[1] == gt.frames == 3  # frames 0, 4, 8
    assert torch.equal(tgt["video"], batch["video"][:, ::4])
    assert torch.allclose(gt.extrinsics[:, 0], torch.eye(3, 4).expand(2, 3, 4), atol=1e-6)
    # The re-expressed point maps are still the unprojection of the depths (independent check).
    pts = unproject_depth(gt.depths, gt.intrinsics, gt.extrinsics)
    assert torch.allclose(pts, gt.pointmaps, atol=1e-4)
    # Flow is per 4-frame step: 4x the per-frame flow, rotated into the first camera.
    R0 = batch["extrinsics"][:, 0, :, :3]
    flow = torch.einsum("bij,btHWj->btHWi", R0, batch["scene_flow"][:, ::4] * 4)
    assert torch.allclose(gt.scene_flow, flow, atol=1e-5)


def test_supervised_loss_is_zero_on_the_truth_and_positive_otherwise():
    gt = supervised_targets(_scene_items(1))["geometry"]
    terms = supervised_loss(gt, gt)
    assert float(terms["loss"]) < 1e-5
    worse = gt.replace(depths=gt.depths * 1.1)
    assert abs(float(supervised_loss(worse, gt)["depth"]) - math.log(1.1)) < 1e-5
    H, W = gt.image_size
    enc = cameras_to_pose_encoding(gt.extrinsics, gt.intrinsics, H, W)
    assert enc.shape == (1, 3, 9)


def _cameras(centres, yaw_deg):
    """World-to-camera ``[1,T,3,4]`` of cameras at ``centres [T,3]`` turned by ``yaw_deg [T]``
    about y, written out by hand (independent of the camera helpers)."""
    a = torch.deg2rad(torch.as_tensor(yaw_deg, dtype=torch.float64))
    c, s, z, o = a.cos(), a.sin(), torch.zeros_like(a), torch.ones_like(a)
    R_wc = torch.stack([torch.stack([c, z, s], -1), torch.stack([z, o, z], -1),
                        torch.stack([-s, z, c], -1)], -2)
    R = R_wc.transpose(-1, -2)
    t = -(R @ centres[..., None])[..., 0]
    return torch.cat([R, t[..., None]], -1)[None]


def test_motion_loss_reads_the_camera_steps_not_the_poses():
    C = torch.tensor([[0.0, 0, 0], [0.5, 0, 0], [1.0, 0, 0], [1.5, 0, 0]], dtype=torch.float64)
    yaw = [0.0, 0.0, 0.0, 0.0]
    truth = _cameras(C, yaw)
    assert float(motion_loss(truth, truth)) == 0.0
    # Every camera moved by one offset: each pose is off, every step is exact.
    shifted = _cameras(C + torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64), yaw)
    assert float(motion_loss(shifted, truth)) < 1e-12
    # One centre off by 0.4 m in x: steps off by (0.4, -0.4, 0) -> mean |.| over 3 steps x 3
    # axes = 0.8/9; accelerations (-0.8, 0.4) in x -> 1.2/6.
    shaky = C.clone()
    shaky[1, 0] += 0.4
    expected = 0.8 / 9 + 1.2 / 6
    assert abs(float(motion_loss(_cameras(shaky, yaw), truth)) - expected) < 1e-9
    # A turn: the relative rotations and their changes are what differs.
    turned = _cameras(C, [0.0, 10.0, 10.0, 10.0])
    assert float(motion_loss(turned, truth)) > 0.01
    two = truth[:, :2]
    assert float(motion_loss(two, two)) == 0.0 and motion_loss(truth[:, :1], truth[:, :1]) == 0


class _Scenes(torch.utils.data.Dataset):
    """``n`` synthetic scenes as the dict items :func:`train_tiny_backbone` reads."""

    def __init__(self, n):
        self.items, self.n = _scene_items(n), n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {k: v[i] for k, v in self.items.items()}


def test_training_reduces_the_loss():
    model = small_model(1).train()
    history = train_tiny_backbone(model, _Scenes(4), BackboneTrainingConfig(
        steps=40, batch_size=2, lr=2e-3, warmup_steps=5), progress=False)
    first = sum(h["loss"] for h in history[:5]) / 5
    last = sum(h["loss"] for h in history[-5:]) / 5
    assert last < 0.8 * first, (first, last)


def test_a_non_finite_loss_stops_training_by_name():
    model = small_model(1).train()
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))  # as a corrupt checkpoint would
    with pytest.raises(FloatingPointError, match=r"train_tiny_backbone: the loss became nan at "
                                                 r"step 0; lower BackboneTrainingConfig.lr"):
        train_tiny_backbone(model, _Scenes(2), BackboneTrainingConfig(steps=2, batch_size=1),
                            progress=False)


@pytest.mark.parametrize("field,value,expected", [
    ("steps", 0, "steps must be a positive int, got 0"),
    ("batch_size", True, "batch_size must be a positive int, got True"),
    ("lr", float("inf"), "lr must be a finite number > 0, got inf"),
    ("lr", -1e-3, "lr must be a finite number > 0, got -0.001"),
    ("grad_clip", float("nan"), "grad_clip must be a finite number > 0, got nan"),
    ("weight_decay", -0.1, "weight_decay must be a finite number >= 0, got -0.1"),
    ("motion_weight", -1.0, "motion_weight must be a finite number >= 0, got -1.0"),
    ("warmup_steps", -1, "warmup_steps must be an int >= 0, got -1"),
    ("seed", 0.5, "seed must be an int, got 0.5"),
])
def test_training_config_refuses_values_that_would_fail_late_or_train_to_nan(field, value,
                                                                             expected):
    # Before these checks lr=inf trained without a complaint to NaN losses, and steps=0 failed
    # only in the caller, on an empty history.
    with pytest.raises(ValueError, match=f"^BackboneTrainingConfig.{expected}$"):
        BackboneTrainingConfig(**{field: value})
    BackboneTrainingConfig(**{field: 1})  # the same field with a good value is taken

