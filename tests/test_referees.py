"""The demo's referees (vggrpo.referees) against plain-torch and hand-computed references."""

import math

import pytest
import torch

from vggrpo.data import make_scene
from vggrpo.defaults import load_tiny_backbone
from vggrpo.evaluation import sampson_error
from vggrpo.referees import HIGHER_IS_BETTER, REFEREE_NAMES, paired_effect, video_referees


@pytest.fixture(scope="module")
def scenes():
    videos = torch.cat([make_scene(1, 9, 32, 48, trajectory=t, static_objects=2, seed=s).video
                        for s, t in enumerate(("dolly", "orbit", "pan", "orbit"))])
    return videos, torch.tensor([0, 1, 0, 1])


def _fidelity_reference(video, reals, real_prompts, prompt):
    """Nested loops: the nearest real video of the prompt, frame by frame."""
    best = math.inf
    for r, p in zip(reals, real_prompts):
        if int(p) != int(prompt):
            continue
        total = sum(float((video[t] - r[t]).abs().sum()) for t in range(video.shape[0]))
        best = min(best, total / video.numel())
    return best


def test_referees_match_references(scenes):
    videos, prompts = scenes
    backbone = load_tiny_backbone()
    reals = videos.flip(0).contiguous() * 0.9 + 0.05  # other videos, other prompts' order
    real_prompts = prompts.flip(0)
    out = video_referees(videos[:3], backbone=backbone, real_videos=reals,
                         prompts=prompts[:3], real_prompts=real_prompts)
    assert sorted(out) == sorted(REFEREE_NAMES)
    assert all(v.shape == (3,) and v.dtype == torch.float32 for v in out.values())
    with torch.no_grad():
        motion = backbone(videos[:3, [0, 4, 8]]).rewards()["motion"]
    torch.testing.assert_close(out["rgb_motion"], motion.float())
    for i in range(3):
        s = sampson_error(videos[i], matcher="klt")["sampson"]
        assert (math.isnan(s) and math.isnan(float(out["sampson_px"][i]))) or \
            abs(float(out["sampson_px"][i]) - s) < 1e-6
        ref = _fidelity_reference(videos[i], reals, real_prompts, prompts[i])
        assert abs(float(out["fidelity_l1"][i]) - ref) < 1e-5, (i, ref)


def test_fidelity_sees_collapse(scenes):
    videos, prompts = scenes
    backbone = load_tiny_backbone()
    out = video_referees(torch.cat([videos[:1], torch.full_like(videos[:1], 0.5)]),
                         backbone=backbone, real_videos=videos[:1])
    assert float(out["fidelity_l1"][0]) == 0.0  # a real video is its own nearest
    assert float(out["fidelity_l1"][1]) > 0.05  # grey frames are far from every real one


def test_referees_bad_input(scenes):
    videos, prompts = scenes
    backbone = load_tiny_backbone()
    with pytest.raises(ValueError, match=r"videos must be \[B,T,3,H,W\]"):
        video_referees(videos[0], backbone=backbone, real_videos=videos)
    with pytest.raises(ValueError, match="real_videos must have the videos' frame count"):
        video_referees(videos, backbone=backbone, real_videos=videos[:, :5])
    with pytest.raises(ValueError, match="give both"):
        video_referees(videos, backbone=backbone, real_videos=videos, prompts=prompts)
    with pytest.raises(ValueError, match=r"prompts must be an integer tensor \[4\]"):
        video_referees(videos, backbone=backbone, real_videos=videos, prompts=prompts.float(),
                       real_prompts=prompts)
    with pytest.raises(ValueError, match=r"real_videos have no video of prompts \[1\]"):
        video_referees(videos, backbone=backbone, real_videos=videos[[0, 2]], prompts=prompts,
                       real_prompts=prompts[[0, 2]])
    bad = videos.clone()
    bad[0, 0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="videos has non-finite values"):
        video_referees(bad, backbone=backbone, real_videos=videos)


def test_paired_effect_hand_computed():
    before = torch.tensor([1.0, 2.0, 3.0, float("nan")])
    after = torch.tensor([2.0, 2.0, 5.0, 9.0])
    # Finite pairs: differences 1, 0, 2 -> mean 1, sample sd 1.
    up = paired_effect(before, after, higher_is_better=True)
    assert up == {"before": 2.0, "after": 3.0, "change": 1.0, "effect_size": 1.0,
                  "better_share": 2 / 3, "pairs": 3}
    down = paired_effect(before, after, higher_is_better=False)
    assert down["effect_size"] == -1.0 and down["better_share"] == 0.0
    nothing = paired_effect(torch.tensor([float("nan")]), torch.tensor([1.0]), True)
    assert nothing["pairs"] == 0 and math.isnan(nothing["effect_size"])
    same = paired_effect(torch.ones(3), torch.ones(3), True)
    assert math.isnan(same["effect_size"]) and same["better_share"] == 0.0
    with pytest.raises(ValueError, match="before and after must be 1-D tensors of one length"):
        paired_effect(torch.ones(3), torch.ones(2), True)
    assert HIGHER_IS_BETTER == {"rgb_motion": True, "sampson_px": False, "fidelity_l1": False}
