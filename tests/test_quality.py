"""The quality measures behind quality.json and docs/lgm.md, against hand-worked answers."""

import math

import pytest
import torch

from vggrpo.evaluation import camera_errors, depth_abs_rel, rankdata, spearman


def _rotation(axis, angle_deg):
    """Rodrigues' formula, written out here rather than taken from the library."""
    k = torch.tensor(axis, dtype=torch.float64)
    k = k / k.norm()
    K = torch.tensor([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]],
                     dtype=torch.float64)
    a = math.radians(angle_deg)
    return torch.eye(3, dtype=torch.float64) + math.sin(a) * K + (1 - math.cos(a)) * K @ K


def _extrinsics(rotations, centres):
    """Camera-from-world [T,3,4] with R and camera centre C (t = -R C)."""
    E = []
    for R, C in zip(rotations, centres):
        C = torch.tensor(C, dtype=torch.float64)
        E.append(torch.cat([R, (-R @ C)[:, None]], dim=1))
    return torch.stack(E)


def test_depth_abs_rel_skips_invalid_ground_truth():
    target = torch.tensor([[[[2.0, 4.0], [0.0, float("nan")]]]], dtype=torch.float64)
    depths = torch.tensor([[[[1.0, 5.0], [7.0, 7.0]]]], dtype=torch.float64)
    # Valid pixels: |1-2|/2 = 0.5 and |5-4|/4 = 0.25; the zero and the NaN target are not counted.
    torch.testing.assert_close(depth_abs_rel(depths, target), torch.tensor([0.375],
                                                                           dtype=torch.float64))
    torch.testing.assert_close(depth_abs_rel(depths, torch.zeros_like(target)),
                               torch.zeros(1, dtype=torch.float64))  # nothing valid: 0, not NaN
    with pytest.raises(ValueError, match=r"depths \[1, 1, 2, 2\] and target \[1, 1, 2, 3\]"):
        depth_abs_rel(depths, torch.ones(1, 1, 2, 3))


def test_camera_errors_are_the_rotation_angle_and_the_centre_distance_after_frame_0():
    eye = torch.eye(3, dtype=torch.float64)
    truth = _extrinsics([eye, eye, eye], [(0, 0, 0), (1, 0, 0), (2, 0, 0)])
    # Frame 0 is way off but left out; frames 1 and 2 are off by 10 and 30 degrees about a tilted
    # axis, and their centres by 0.3 m and 0.5 m.
    pred = _extrinsics([_rotation((0, 1, 0), 90), _rotation((1, 2, 3), 10),
                        _rotation((1, 2, 3), -30)],
                       [(5, 5, 5), (1, 0.3, 0), (2, 0, 0.5)])
    errors = camera_errors(pred[None], truth[None])
    torch.testing.assert_close(errors["rotation_deg"], torch.tensor([20.0], dtype=torch.float64))
    torch.testing.assert_close(errors["centre"], torch.tensor([0.4], dtype=torch.float64))
    # 4x4 matrices give the same numbers.
    bottom = torch.tensor([0, 0, 0, 1], dtype=torch.float64).expand(1, 3, 1, 4)
    errors44 = camera_errors(torch.cat([pred[None], bottom], 2),
                             torch.cat([truth[None], bottom], 2))
    torch.testing.assert_close(errors44["rotation_deg"], errors["rotation_deg"])


@pytest.mark.parametrize("shapes", [((2, 3, 3, 4), (2, 4, 3, 4)), ((1, 1, 3, 4), (1, 1, 3, 4)),
                                    ((2, 3, 4), (2, 3, 3)), ((2, 3, 3, 4), (2, 3, 3, 3))])
def test_camera_errors_name_the_shapes_they_need(shapes):
    a, b = (torch.zeros(s) for s in shapes)
    with pytest.raises(ValueError, match=r"must be \[B,T,3,4\] \(or \[B,T,4,4\]\) sharing \[B,T\]"):
        camera_errors(a, b)


def test_rankdata_gives_ties_their_average_rank():
    torch.testing.assert_close(rankdata(torch.tensor([10.0, 20.0, 10.0, 30.0, 10.0])),
                               torch.tensor([2.0, 4.0, 2.0, 5.0, 2.0], dtype=torch.float64))


def test_spearman_without_ties_is_the_textbook_formula():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(12, generator=gen), torch.randn(12, generator=gen)
    ra = torch.empty(12)
    ra[a.argsort()] = torch.arange(1.0, 13.0)
    rb = torch.empty(12)
    rb[b.argsort()] = torch.arange(1.0, 13.0)
    expected = 1 - 6 * float((ra - rb).square().sum()) / (12 * (12 ** 2 - 1))
    assert spearman(a, b) == pytest.approx(expected, abs=1e-12)
    assert spearman(a, a.exp()) == pytest.approx(1.0)  # any increasing map: perfect rank order
    assert spearman(a, -a) == pytest.approx(-1.0)


def test_spearman_with_ties_and_degenerate_input():
    # Ranks [1, 2.5, 2.5, 4] against [1, 2, 3, 4]: Pearson of the ranks is 4.5 / sqrt(4.5 * 5).
    assert spearman(torch.tensor([1.0, 2.0, 2.0, 3.0]), torch.arange(4.0)) == pytest.approx(
        3 / math.sqrt(10))
    assert math.isnan(spearman(torch.ones(4), torch.arange(4.0)))  # undefined, not 0
    # A broken model's NaN reward is not ranked as the largest value: the result says so.
    assert math.isnan(spearman(torch.tensor([1.0, float("nan"), 3.0]), torch.arange(3.0)))
    assert math.isnan(spearman(torch.arange(3.0), torch.tensor([0.0, float("nan"), 1.0])))
    assert spearman(torch.arange(3.0), torch.tensor([-float("inf"), 0.0, float("inf")])) == 1.0
    with pytest.raises(ValueError, match="equal length >= 2, got 3 and 4"):
        spearman(torch.zeros(3), torch.zeros(4))
