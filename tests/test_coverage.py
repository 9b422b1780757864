"""The geometry reward's blind spot (geometry that projects nowhere scores 0, its best) and the
coverage guard beyond the paper (vggrpo.reprojection_coverage, GeometryReward(coverage=))."""

import pytest
import torch

import vggrpo
from vggrpo import reference
from vggrpo.data import make_scene
from vggrpo.geometry import Geometry
from vggrpo.latent_reward import GeometryReward

H, W = 30, 52


@pytest.fixture(scope="module")
def scene():
    return make_scene(batch=4, frames=6, height=H, width=W, static_objects=2, moving_objects=1,
                      seed=21, dtype=torch.float64)


def _geometry(scene, pointmaps=None, depths=None):
    return Geometry(extrinsics=scene.extrinsics, intrinsics=scene.intrinsics,
                    depths=scene.depths if depths is None else depths,
                    pointmaps=scene.pointmaps if pointmaps is None else pointmaps,
                    scene_flow=scene.scene_flow)


def _exploits(scene):
    """Three videos' worth of geometry that no view can check: every point 10 km to the side
    (outside every image), every point behind its camera, every depth invalid."""
    aside = scene.pointmaps.clone()
    aside[..., 0] += 1e4
    centres = vggrpo.geometry.cameras.camera_centres(scene.extrinsics)  # [B,T,3]
    behind = 2 * centres[:, :, None, None, :] - scene.pointmaps  # mirrored through the camera
    return {"aside": (aside, None), "behind": (behind, None),
            "no depth": (None, torch.full_like(scene.depths, -1.0))}


@pytest.mark.parametrize("kind", ["aside", "behind", "no depth"])
def test_geometry_that_projects_nowhere_scores_the_best_geo_reward_and_no_coverage(scene, kind):
    """The paper's formula leaves out views without a checked pixel and scores 0 when none is
    left: the exploit is real. Its coverage is 0; sound geometry covers most pixels."""
    pointmaps, depths = _exploits(scene)[kind]
    sound = _geometry(scene).rewards(coverage=1.0)
    hacked = _geometry(scene, pointmaps, depths).rewards(coverage=1.0)
    assert torch.equal(hacked["geo"], torch.zeros(4, dtype=hacked["geo"].dtype))
    assert (sound["geo"] < hacked["geo"]).all()  # the exploit outscores the truth
    assert torch.equal(hacked["coverage"], torch.zeros(4))
    assert (sound["coverage"] > 0.8).all() and (sound["coverage"] <= 1).all()


def test_coverage_is_the_share_of_pixels_the_reference_scored(scene):
    """Against the plain-PyTorch reference's counts, summed by hand."""
    _, counts = reference.reprojection_errors(scene.pointmaps, scene.depths, scene.extrinsics,
                                              scene.intrinsics, scene.scene_flow, 0.1)
    expected = torch.tensor([sum(int(c) for c in row) / (6 * H * W) for row in counts.tolist()])
    got = vggrpo.reprojection_coverage(counts, H * W)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected.float(), atol=1e-7, rtol=0)
    # min_coverage: at and above it 1, below it the share over min_coverage.
    m = float(expected.min()) + 0.5 * float(expected.max() - expected.min())
    hinge = vggrpo.reprojection_coverage(counts, H * W, min_coverage=m)
    torch.testing.assert_close(hinge, torch.clamp(expected / m, max=1).float(), atol=1e-7,
                               rtol=0)
    assert (hinge == 1).any() and (hinge < 1).any()


def test_the_guard_ranks_the_exploit_last_in_its_group_and_is_silent_without_one(scene):
    """Group normalisation gives every reward unit spread: with equal weights, the exploit's
    top geo score and bottom coverage cancel. Weighted twice geo's, the guard ranks it last;
    in a group of sound videos (all above min_coverage) it is constant and changes nothing but
    the weights' sum."""
    pointmaps, _ = _exploits(scene)["aside"]
    sound = _geometry(scene).rewards(coverage=0.5)
    hacked = _geometry(scene, pointmaps).rewards(coverage=0.5)
    assert torch.equal(sound["coverage"], torch.ones(4))
    # One group of 5: the 4 sound videos and one exploit (the first video's geometry, moved).
    group = {k: torch.cat([sound[k], hacked[k][:1]]).double() for k in sound}
    unguarded = vggrpo.group_advantages({k: group[k] for k in ("motion", "geo")}, 5)
    equal = vggrpo.group_advantages(group, 5, weights={"motion": 1, "geo": 1, "coverage": 1})
    guarded = vggrpo.group_advantages(group, 5, weights={"motion": 1, "geo": 1, "coverage": 2})
    assert unguarded.argmax() == 4  # without the guard the exploit is the group's best
    assert equal[4] > equal[:4].min()  # equal weight is not enough
    assert guarded.argmin() == 4 and guarded[4] < 0
    calm = vggrpo.group_advantages({k: sound[k].double() for k in sound}, 4,
                                   weights={"motion": 1, "geo": 1, "coverage": 2})
    plain = vggrpo.group_advantages({k: sound[k].double() for k in ("motion", "geo")}, 4)
    torch.testing.assert_close(calm, plain * 2 / 4, atol=1e-12, rtol=0)


class _Fixed(GeometryReward):
    def __init__(self, geometry, **kw):
        super().__init__(**kw)
        self._g = geometry

    def geometry(self, latents):
        return self._g


def test_a_reward_returns_coverage_only_when_asked(scene):
    latents = torch.zeros(4, 16, 3, 2, 2)
    plain = _Fixed(_geometry(scene))(latents)
    assert sorted(plain) == ["geo", "motion"]
    guarded = _Fixed(_geometry(scene), coverage=0.5,
                     weights={"motion": 1, "geo": 1, "coverage": 2})(latents)
    assert sorted(guarded) == ["coverage", "geo", "motion"]
    assert torch.equal(guarded["coverage"], torch.ones(4))
    torch.testing.assert_close(guarded["geo"], plain["geo"], atol=0, rtol=0)


@pytest.mark.parametrize("kwargs,expected", [
    ({"coverage": 0.0}, "coverage must be None (off) or a min_coverage in (0, 1], got 0.0"),
    ({"coverage": 1.5}, "coverage must be None (off) or a min_coverage in (0, 1], got 1.5"),
    ({"coverage": True}, "coverage must be None (off) or a min_coverage in (0, 1], got True"),
    ({"weights": {"coverage": 1.0}}, "weights: unknown reward names ['coverage']; expected a "
                                     "subset of ['motion', 'geo'] (pass coverage=<min_coverage>"),
])
def test_reward_coverage_settings_are_checked(kwargs, expected):
    with pytest.raises(ValueError) as err:
        GeometryReward(**kwargs)
    assert expected in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("args,kwargs,expected", [
    ((torch.ones(2, 3, dtype=torch.int64), 0), {}, "`pixels_per_view` to be a positive int"),
    ((torch.ones(2, 3, dtype=torch.int64), True), {}, "`pixels_per_view` to be a positive int"),
    ((torch.ones(2, 3), 10), {}, "`view_counts` to be an integer tensor [B, T], got "
                                 "torch.float32 [2, 3]"),
    ((torch.ones(3, dtype=torch.int64), 10), {}, "integer tensor [B, T], got torch.int64 [3]"),
    ((torch.full((2, 3), 11), 10), {}, "`view_counts` in [0, pixels_per_view = 10], got [11, 11]"),
    ((torch.full((2, 3), -1), 10), {}, "got [-1, -1]"),
    ((torch.ones(2, 3, dtype=torch.int64), 10), {"min_coverage": float("nan")},
     "`min_coverage` to be a number in (0, 1], got nan"),
    ((torch.ones(2, 3, dtype=torch.int64), 10), {"min_coverage": 0},
     "`min_coverage` to be a number in (0, 1], got 0"),
])
def test_coverage_inputs_are_checked(args, kwargs, expected):
    with pytest.raises(ValueError) as err:
        vggrpo.reprojection_coverage(*args, **kwargs)
    assert expected in str(err.value) and "\n" not in str(err.value)
