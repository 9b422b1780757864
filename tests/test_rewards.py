"""The drop-in rewards on exact synthetic scenes, their terms, and group_advantages."""

import pytest
import torch

import vggrpo
from vggrpo import reference
from vggrpo.data import make_scene


def _geo(scene, depths=None, pointmaps=None, extrinsics=None, flow="scene", **kw):
    return vggrpo.geometry_reprojection_reward(
        scene.pointmaps if pointmaps is None else pointmaps,
        scene.depths if depths is None else depths,
        scene.extrinsics if extrinsics is None else extrinsics,
        scene.intrinsics,
        scene.scene_flow if flow == "scene" else flow,
        **kw,
    )


@pytest.fixture(scope="module")
def static_scene():
    return make_scene(batch=3, frames=6, height=30, width=52, static_objects=2, seed=11,
                      dtype=torch.float64)


@pytest.fixture(scope="module")
def dynamic_scene():
    return make_scene(batch=3, frames=6, height=30, width=52, static_objects=2, moving_objects=2,
                      seed=12, dtype=torch.float64)


def test_exact_static_scene_beats_noisy_depth(static_scene):
    gen = torch.Generator().manual_seed(0)
    clean = _geo(static_scene)
    assert (clean <= 0).all()
    previous = clean
    for sigma in (0.01, 0.03, 0.1):
        noise = torch.randn(static_scene.depths.shape, generator=gen, dtype=torch.float64)
        noisy = _geo(static_scene, depths=static_scene.depths * (1 + sigma * noise))
        assert (noisy < previous).all(), (sigma, noisy, previous)
        previous = noisy


def test_exact_static_scene_beats_perturbed_points_and_cameras(static_scene):
    gen = torch.Generator().manual_seed(1)
    clean = _geo(static_scene)
    pm = static_scene.pointmaps + 0.05 * torch.randn(static_scene.pointmaps.shape, generator=gen,
                                                     dtype=torch.float64)
    assert (_geo(static_scene, pointmaps=pm) < clean).all()
    E = static_scene.extrinsics.clone()
    E[:, 1:, :, 3] += 0.1 * torch.randn(E[:, 1:, :, 3].shape, generator=gen, dtype=torch.float64)
    assert (_geo(static_scene, extrinsics=E) < clean).all()


def test_room_without_objects_is_nearly_consistent():
    """A convex room has no occlusion edges, so the only error left is sub-pixel: a point from
    another frame lands off its pixel's centre and differs in depth by the surface slope over
    less than a pixel. It must stay small against the depths (about 6 m here)."""
    scene = make_scene(batch=2, frames=6, height=30, width=52, static_objects=0, seed=2,
                       dtype=torch.float64)
    r, terms = _geo(scene, return_terms=True)
    assert (terms.view_counts == 30 * 52).all()  # every pixel rendered and valid
    assert (-r < 0.05).all(), r
    assert (-r < 0.01 * scene.depths.mean()).all()


def test_scene_flow_makes_an_exact_dynamic_scene_consistent(dynamic_scene, static_scene):
    """Moving objects break multi-view consistency unless their pixels are masked on both sides;
    with the flow given, an exact dynamic scene scores like an exact static one and better than
    a 1%-noisy version of itself."""
    assert dynamic_scene.dynamic_mask.any(dim=(1, 2, 3)).all()
    masked = _geo(dynamic_scene)
    unmasked = _geo(dynamic_scene, flow=None)
    assert (masked > unmasked).all(), (masked, unmasked)
    assert masked.min() > 1.5 * _geo(static_scene).min()
    gen = torch.Generator().manual_seed(3)
    noise = torch.randn(dynamic_scene.depths.shape, generator=gen, dtype=torch.float64)
    assert (_geo(dynamic_scene, depths=dynamic_scene.depths * (1 + 0.01 * noise)) < masked).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rewards_match_reference(dynamic_scene, dtype):
    s = dynamic_scene.to(dtype=dtype)
    for topk in (1, 3, 6):
        ours = _geo(s, topk=topk)
        theirs = reference.geometry_reprojection_reward(
            s.pointmaps, s.depths, s.extrinsics, s.intrinsics, s.scene_flow, topk=topk)
        torch.testing.assert_close(ours, theirs,
                                   atol=1e-5 if dtype == torch.float32 else 1e-12, rtol=0)
    torch.testing.assert_close(vggrpo.camera_motion_reward(s.extrinsics),
                               reference.camera_motion_reward(s.extrinsics))


def test_geometry_terms_are_consistent(dynamic_scene):
    r, terms = _geo(dynamic_scene, topk=2, return_terms=True)
    assert terms.view_errors.shape == (3, 6) and terms.view_counts.dtype == torch.int64
    expected = -terms.view_errors.topk(2, dim=1).values.mean(dim=1)
    torch.testing.assert_close(r, expected, atol=1e-15, rtol=0)
    assert torch.equal(_geo(dynamic_scene, topk=2), r)


def test_reward_gradcheck_float64():
    scene = make_scene(batch=1, frames=3, height=6, width=8, static_objects=1, moving_objects=1,
                       seed=4, dtype=torch.float64)
    gen = torch.Generator().manual_seed(4)
    depths = scene.depths * (
        1 + 0.05 * torch.randn(scene.depths.shape, generator=gen, dtype=torch.float64))
    args = (scene.pointmaps.clone().requires_grad_(), depths.requires_grad_(),
            scene.extrinsics.clone().requires_grad_())

    def reward(pm, d, e):
        return vggrpo.geometry_reprojection_reward(
            pm, d, e, scene.intrinsics, scene.scene_flow, topk=2)

    assert torch.autograd.gradcheck(reward, args)


def test_half_precision_inputs_give_float32_rewards(static_scene):
    s = static_scene.to(dtype=torch.bfloat16)
    r = vggrpo.geometry_reprojection_reward(s.pointmaps, s.depths, s.extrinsics, s.intrinsics)
    assert r.dtype == torch.float32
    f = s.to(dtype=torch.float32)
    expected = vggrpo.geometry_reprojection_reward(
        f.pointmaps, f.depths, f.extrinsics, f.intrinsics)
    assert torch.equal(r, expected)
    assert vggrpo.camera_motion_reward(s.extrinsics).dtype == torch.float32


# (tensor, index) of a camera entry: the ones the rewards read, then the ones they do not.
READ_CAMERA_ENTRIES = [("E", (1, 2, 0, 0)), ("E", (1, 0, 2, 1)), ("E", (1, 5, 1, 3)),
                       ("K", (1, 3, 0, 0)), ("K", (1, 2, 1, 2))]
UNREAD_CAMERA_ENTRIES = [("E", (1, 2, 3, 0)), ("E", (1, 4, 3, 3)), ("K", (1, 3, 2, 2))]


def _cameras_with(scene, which, index, value):
    bottom = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=scene.extrinsics.dtype)
    E = torch.cat([scene.extrinsics, bottom.expand(*scene.extrinsics.shape[:2], 1, 4)], dim=-2)
    K = scene.intrinsics.clone()
    (E if which == "E" else K)[index] = value
    return E, K


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("which,index", READ_CAMERA_ENTRIES)
def test_a_non_finite_camera_makes_its_video_score_nan(dynamic_scene, which, index, value):
    s = dynamic_scene
    E, K = _cameras_with(s, which, index, value)
    clean_geo = _geo(s)
    E.requires_grad_()
    pm = s.pointmaps.clone().requires_grad_()
    depths = s.depths.clone().requires_grad_()
    geo, terms = vggrpo.geometry_reprojection_reward(pm, depths, E, K, s.scene_flow,
                                                     return_terms=True)
    ref_geo = reference.geometry_reprojection_reward(s.pointmaps, s.depths, E.detach(), K,
                                                     s.scene_flow)
    with torch.no_grad():  # the op's path without a winner map, in float32 the 32-bit z-buffer
        f = s.to(dtype=torch.float32)
        fast = vggrpo.geometry_reprojection_reward(
            f.pointmaps, f.depths, E.detach().float(), K.float(), f.scene_flow)
    for r in (geo, ref_geo, fast):
        assert torch.isnan(r[1]) and not torch.isnan(r[[0, 2]]).any()
    torch.testing.assert_close(fast[[0, 2]], clean_geo[[0, 2]].float(), atol=1e-5, rtol=0)
    for r in (geo, ref_geo):
        torch.testing.assert_close(r[[0, 2]], clean_geo[[0, 2]], atol=1e-12, rtol=0)
    # The op underneath left the view out; the NaN is the reward's verdict, not its gradient's.
    assert terms.view_counts[index[:2]] == 0
    geo.sum().backward()  # as the guidance does: the NaN video sends 1 into the where
    for g in (E.grad, pm.grad, depths.grad):
        assert torch.isfinite(g).all()
    assert E.grad[1].abs().sum() == 0

    if which == "E":
        clean_motion = vggrpo.camera_motion_reward(s.extrinsics)
        E_broken = E.detach()
        for motion_reward in (vggrpo.camera_motion_reward, reference.camera_motion_reward):
            motion = motion_reward(E_broken)
            assert torch.isnan(motion[1]) and not torch.isnan(motion[[0, 2]]).any()
            torch.testing.assert_close(motion[[0, 2]], clean_motion[[0, 2]], atol=1e-12, rtol=0)
        E_motion = E.detach().clone().requires_grad_()
        vggrpo.camera_motion_reward(E_motion)[[0, 2]].sum().backward()
        assert torch.isfinite(E_motion.grad[[0, 2]]).all()
    with pytest.raises(ValueError, match="non-finite"):
        vggrpo.group_advantages({"geo": geo.detach()}, group_size=3)


@pytest.mark.parametrize("which,index", UNREAD_CAMERA_ENTRIES)
def test_camera_entries_that_are_not_read_do_not_matter(dynamic_scene, which, index):
    s = dynamic_scene
    E, K = _cameras_with(s, which, index, float("nan"))
    assert torch.equal(vggrpo.geometry_reprojection_reward(
        s.pointmaps, s.depths, E, K, s.scene_flow), _geo(s))
    assert torch.equal(reference.geometry_reprojection_reward(
        s.pointmaps, s.depths, E, K, s.scene_flow), reference.geometry_reprojection_reward(
        s.pointmaps, s.depths, s.extrinsics, s.intrinsics, s.scene_flow))
    assert torch.equal(vggrpo.camera_motion_reward(E), vggrpo.camera_motion_reward(s.extrinsics))


# ---- group_advantages ------------------------------------------------------------------------


def test_group_advantages_hand_computed():
    motion = torch.tensor([1.0, 3.0, 10.0, 10.0])
    geo = torch.tensor([-2.0, -1.0, -4.0, 0.0])
    adv = vggrpo.group_advantages({"motion": motion, "geo": geo}, group_size=2, eps=0.0)
    # group 1: motion (-1, 1), geo (-1, 1); group 2: motion constant -> (0, 0), geo (-1, 1)
    torch.testing.assert_close(adv, torch.tensor([-1.0, 1.0, -0.5, 0.5]))


def test_group_advantages_properties():
    gen = torch.Generator().manual_seed(5)
    r1 = torch.randn(24, generator=gen)
    r2 = torch.rand(24, generator=gen)
    adv = vggrpo.group_advantages({"a": r1, "b": r2}, group_size=6)
    assert adv.shape == (24,)
    torch.testing.assert_close(adv.reshape(4, 6).mean(1), torch.zeros(4), atol=1e-6, rtol=0)
    # per group, per reward: invariant to a positive affine change of that reward
    scale = torch.tensor([2.0, 0.5, 3.0, 7.0]).repeat_interleave(6)
    shift = torch.tensor([1.0, -4.0, 0.0, 9.0]).repeat_interleave(6)
    moved = vggrpo.group_advantages({"a": r1 * scale + shift, "b": r2}, group_size=6)
    torch.testing.assert_close(moved, adv, atol=1e-5, rtol=1e-5)
    # a single reward: exactly the normalised reward with the population std
    single = vggrpo.group_advantages({"a": r1}, group_size=6, eps=0.0)
    g = r1.reshape(4, 6)
    expected = ((g - g.mean(1, keepdim=True)) / g.std(1, unbiased=False, keepdim=True)).reshape(24)
    torch.testing.assert_close(single, expected)
    assert vggrpo.group_advantages({"a": r1.double()}, group_size=6).dtype == torch.float64


@pytest.mark.parametrize("trajectory", ["dolly", "orbit", "pan"])
def test_clean_dynamic_scene_beats_every_perturbation(trajectory):
    """The synthetic ground truth is what the rewards prefer: every perturbation of a clean
    scene with moving objects (depth, points, camera translation, camera rotation, a shaky
    trajectory of the same scene) scores lower on its reward."""
    kw = dict(batch=2, frames=8, height=30, width=52, static_objects=2, moving_objects=1,
              trajectory=trajectory, seed=21, dtype=torch.float64)
    scene = make_scene(**kw)
    gen = torch.Generator().manual_seed(3)
    noise = lambda t, s: s * torch.randn(t.shape, generator=gen, dtype=torch.float64)  # noqa: E731
    clean = _geo(scene)
    assert (_geo(scene, depths=scene.depths * (1 + noise(scene.depths, 0.02))) < clean).all()
    assert (_geo(scene, pointmaps=scene.pointmaps + noise(scene.pointmaps, 0.03)) < clean).all()
    E = scene.extrinsics.clone()
    E[:, 1:, :, 3] += noise(E[:, 1:, :, 3], 0.05)
    assert (_geo(scene, extrinsics=E) < clean).all()
    small = torch.linalg.matrix_exp(torch.tensor([[0.0, -0.02, 0.0], [0.02, 0.0, 0.0],
                                                  [0.0, 0.0, 0.0]], dtype=torch.float64))
    E = scene.extrinsics.clone()
    E[:, 1:, :, :3] = small @ E[:, 1:, :, :3]
    assert (_geo(scene, extrinsics=E) < clean).all()
    smooth = vggrpo.camera_motion_reward(scene.extrinsics)
    shaky = vggrpo.camera_motion_reward(make_scene(**{**kw, "jitter": 0.5}).extrinsics)
    assert (shaky < smooth).all(), (shaky, smooth)


def test_a_still_camera_reads_its_rounding_in_float32_unless_eps_covers_it():
    """docs/ops.md: the motion ratios are scale-free, so a still camera's translation term is its
    centres' noise over itself. In float64 an exact tripod pan scores 1; in float32 the rounding
    of ``-R^T t`` is that noise (e_trans of order 1), and an ``eps`` in metres above it (1e-3)
    brings the pan back to 1 while leaving a shaky pan below."""
    from vggrpo.data.trajectories import camera_trajectory

    pan64 = camera_trajectory("pan", 17, dtype=torch.float64)[::4][None]
    pan32 = pan64.float()
    reward64, terms64 = vggrpo.camera_motion_reward(pan64, return_terms=True)
    assert float(terms64.e_trans) < 1e-6 and float(reward64) > 1 - 1e-6
    _, terms32 = vggrpo.camera_motion_reward(pan32, return_terms=True)
    assert float(terms32.e_trans) > 0.1
    reward_eps, terms_eps = vggrpo.camera_motion_reward(pan32, eps=1e-3, return_terms=True)
    assert float(terms_eps.e_trans) < 1e-3 and float(reward_eps) > 0.999
    shaky = camera_trajectory("pan", 17, jitter=2.0, dtype=torch.float32)[::4][None]
    assert float(vggrpo.camera_motion_reward(shaky, eps=1e-3)) < 0.95
