"""Prompted worlds (vggrpo.data.worlds): what each prompt and flaw puts in a video, checked on
the scene descriptions and the rendered pixels."""

import pytest
import torch

from vggrpo import reference
from vggrpo.data.worlds import (
    WORLD_FLAWS,
    WORLD_PROMPTS,
    prompt_name,
    render_world,
    world_prompt_embeddings,
    world_spec,
    world_videos,
)

SIZE = dict(frames=9, height=32, width=48)


def test_six_prompts_trajectory_times_style():
    assert len(WORLD_PROMPTS) == 6
    assert [prompt_name(i) for i in range(6)] == [
        "dolly/sparse", "dolly/cluttered", "orbit/sparse", "orbit/cluttered", "pan/sparse",
        "pan/cluttered"]


@pytest.mark.parametrize("prompt", range(6))
def test_a_prompt_sets_the_room_style(prompt):
    spec, after, k = world_spec(prompt, "none", 5, **SIZE)
    assert after is None and k == SIZE["frames"]
    assert len(spec.static_boxes) == (1 if prompt % 2 == 0 else 3)
    assert spec.moving_boxes == ()


def _motion_error(spec):
    return -float(reference.camera_motion_reward(spec.extrinsics[None])[0])


@pytest.mark.parametrize("prompt", [0, 2, 4])
def test_shaky_worlds_have_shakier_cameras(prompt):
    smooth = [_motion_error(world_spec(prompt, "none", s, **SIZE)[0]) for s in range(4)]
    shaky = [_motion_error(world_spec(prompt, "shaky", s, **SIZE)[0]) for s in range(4)]
    assert min(shaky) > 2 * max(smooth)


@pytest.mark.parametrize("seed", range(6))
def test_a_jump_moves_one_static_box_from_frame_k_on(seed):
    prompt = seed % 6
    spec, after, k = world_spec(prompt, "jump", seed, **SIZE)
    T = SIZE["frames"]
    assert T // 4 <= k <= 3 * T // 4
    assert spec.static_boxes[1:] == after.static_boxes[-(len(spec.static_boxes) - 1):] \
        or len(spec.static_boxes) == 1
    if len(after.static_boxes) == len(spec.static_boxes):  # moved, not dropped
        old, new = spec.static_boxes[0], after.static_boxes[0]
        f64 = dict(dtype=torch.float64)
        shift = torch.tensor(new.lo, **f64) - torch.tensor(old.lo, **f64)
        torch.testing.assert_close(torch.tensor(new.hi, **f64) - torch.tensor(old.hi, **f64), shift)
        assert shift[1] == 0 and 1.0 - 1e-9 <= float(shift.abs().max()) <= 1.5 + 1e-9
        assert int((shift != 0).sum()) == 1
        room = spec.room
        assert all(room.lo[a] < new.lo[a] and new.hi[a] < room.hi[a] for a in (0, 2))
        for other in after.static_boxes[1:]:
            assert any(new.lo[a] >= other.hi[a] or other.lo[a] >= new.hi[a] for a in range(3))
    # The pixels: frames before k are the first world's, frames from k on the second's.
    video = render_world(prompt, "jump", seed, **SIZE)
    first = spec.render(SIZE["height"], SIZE["width"]).video[0]
    second = after.render(SIZE["height"], SIZE["width"]).video[0]
    torch.testing.assert_close(video[:k], first[:k], rtol=0, atol=0)
    torch.testing.assert_close(video[k:], second[k:], rtol=0, atol=0)
    assert (first[k:] - second[k:]).abs().amax() > 0.05  # the box's move is visible


def test_a_prompt_fixes_the_look_and_a_seed_the_geometry():
    from vggrpo.data.worlds import WORLD_TEXTURE_SEEDS

    a, b = world_spec(1, "none", 3)[0], world_spec(1, "none", 4)[0]
    assert a.texture_seed == b.texture_seed == WORLD_TEXTURE_SEEDS[1]
    assert a.room != b.room or a.static_boxes != b.static_boxes
    assert len(set(WORLD_TEXTURE_SEEDS)) == 6
    assert world_spec(2, "none", 3)[0].texture_seed != a.texture_seed


def test_worlds_are_reproducible_and_seeds_differ():
    a = render_world(3, "jump", 11, **SIZE)
    torch.testing.assert_close(a, render_world(3, "jump", 11, **SIZE), rtol=0, atol=0)
    assert (a - render_world(3, "jump", 12, **SIZE)).abs().amax() > 0.1


def test_world_videos_cycle_prompts_and_mix_flaws():
    out = world_videos(12, seed=1, flaw_mix=(1, 1, 1), **SIZE)
    assert out["video"].shape == (12, 9, 3, 32, 48) and out["video"].dtype == torch.float32
    assert 0 <= float(out["video"].min()) and float(out["video"].max()) <= 1
    assert out["prompt"].tolist() == [i % 6 for i in range(12)]
    assert set(out["flaw"].tolist()) <= {0, 1, 2} and len(set(out["flaw"].tolist())) > 1
    only_shaky = world_videos(4, seed=1, flaw_mix=(0, 1, 0), **SIZE)
    assert only_shaky["flaw"].tolist() == [WORLD_FLAWS.index("shaky")] * 4
    torch.testing.assert_close(only_shaky["video"][2],
                               render_world(2, "shaky", _element(1, 2), **SIZE))


def _element(seed, i):
    from vggrpo.seeds import element_seed

    return element_seed(seed, i)


def test_prompt_embeddings_are_fixed_per_seed():
    e = world_prompt_embeddings(8, 16, seed=0)
    assert e.shape == (6, 8, 16) and e.dtype == torch.float32
    torch.testing.assert_close(e, world_prompt_embeddings(8, 16, seed=0), rtol=0, atol=0)
    assert (e - world_prompt_embeddings(8, 16, seed=1)).abs().amax() > 0.5


@pytest.mark.parametrize("call, match", [
    (lambda: world_spec(6, "none", 0), r"prompt must be an int in \[0, 6\)"),
    (lambda: world_spec(0, "wobbly", 0), "flaw must be one of"),
    (lambda: world_spec(0, "none", 0.5), "seed must be an int"),
    (lambda: world_videos(0), "count must be a positive int"),
    (lambda: world_videos(2, flaw_mix=(1, 1)), "flaw_mix must be 3 finite weights"),
    (lambda: world_videos(2, flaw_mix=(0, 0, 0)), "positive sum"),
    (lambda: world_prompt_embeddings(0, 16), "tokens and dim must be positive ints"),
])
def test_bad_arguments_are_named(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("seed", range(6))
def test_a_jump_lowers_the_true_geometry_reward(seed):
    # The world's own geometry, spliced at k like the video: the plain-torch reward sees the
    # static world change (what the LGM's geometry reward is meant to see on the latents).
    spec, after, k = world_spec(seed % 6, "jump", seed, **SIZE)
    a = spec.render(SIZE["height"], SIZE["width"], torch.float64)
    b = after.render(SIZE["height"], SIZE["width"], torch.float64)

    def geo(depths, pointmaps):
        return float(reference.geometry_reprojection_reward(pointmaps, depths, a.extrinsics,
                                                            a.intrinsics, None)[0])

    spliced = geo(torch.cat([a.depths[:, :k], b.depths[:, k:]], 1),
                  torch.cat([a.pointmaps[:, :k], b.pointmaps[:, k:]], 1))
    assert spliced < geo(a.depths, a.pointmaps) - 0.02
