"""scripts/jitter_precision.py: the simulated camera reader behind docs/lgm.md's statement of
how precise a reader must be for the motion reward to rank the jitter sweep."""

import importlib.util
import math
from pathlib import Path

import pytest
import torch

from vggrpo.evaluation import camera_errors
from vggrpo.rewards import camera_motion_reward

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "jitter_precision.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("jitter_precision", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def cameras(script):
    return script.ranking_cameras(1, "dolly")


def test_the_sweep_cameras_are_the_aligned_frames_and_the_truth_ranks_them(script, cameras):
    assert cameras.shape == (1, 6, 5, 3, 4) and cameras.dtype == torch.float64
    truth = camera_motion_reward(cameras.reshape(6, 5, 3, 4))
    # A jitter-free dolly moves uniformly (reward 1); each level of jitter is shakier.
    assert truth[0] == pytest.approx(1.0, abs=1e-6)
    assert all(truth[i] > truth[i + 1] for i in range(5))


def test_a_reader_without_errors_reads_the_cameras(script, cameras):
    read = script.read_with_errors(cameras, 0.0, 0.0, torch.Generator().manual_seed(0), False)
    # To the float32 orthonormality of the scenes' rotations, which the centres are read through.
    assert torch.allclose(read, cameras, atol=1e-6, rtol=0)


@pytest.mark.parametrize("same", [False, True])
def test_the_readers_errors_have_the_mean_size_asked_for(script, cameras, same):
    """Measured by the library's camera_errors (relative to the first frame, mean over the
    others), over many draws."""
    gen = torch.Generator().manual_seed(1)
    many = cameras.expand(200, *cameras.shape[1:])
    read = script.read_with_errors(many, math.radians(3.0), 0.5, gen, same)
    e = camera_errors(read.reshape(-1, 5, 3, 4), many.reshape(-1, 5, 3, 4))
    assert float(e["rotation_deg"].mean()) == pytest.approx(3.0, rel=0.05)
    assert float(e["centre"].mean()) == pytest.approx(0.5, rel=0.05)
    # One error per scene: every jitter level of a scene is read with errors of the same size.
    spread = max(float(v.reshape(200, 6).std(dim=1).max()) for v in e.values())
    assert (spread < 1e-3) == same  # iid: about 1 (degree or metre)


def test_a_precise_reader_ranks_the_sweep_and_a_poor_one_does_not(script, cameras):
    precise = script.rank_shares(cameras, 0.05, 0.005, 20, same_error_per_scene=False)
    assert precise == {"per_scene": [1.0], "all": 1.0}
    poor = script.rank_shares(cameras, 20.0, 2.0, 20, same_error_per_scene=False)
    assert poor["all"] < 0.5


def test_the_teachers_error_spread_is_evaluate_lgms_rgb_error(script):
    """The held-out spread's mean is quality.json's ``rgb.rotation_deg`` / ``rgb.centre_m`` on
    the same scenes, which evaluate_lgm measures by its own loop."""
    from vggrpo.defaults import load_default_lgm, load_tiny_wan_vae
    from vggrpo.recipe import evaluate_lgm

    spread = script.teacher_error_spread(4)
    quality = evaluate_lgm(load_default_lgm(), load_tiny_wan_vae(), scenes=4, ranking_scenes=0)
    assert spread["videos"] == 4
    assert spread["rotation_deg"]["mean"] == pytest.approx(quality["rgb.rotation_deg"], abs=0.01)
    assert spread["centre_m"]["mean"] == pytest.approx(quality["rgb.centre_m"], abs=0.01)
    r = spread["rotation_deg"]
    assert 0 < r["median"] <= r["q90"] and 0.0 <= spread["share_over_10deg"] <= 1.0
