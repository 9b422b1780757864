"""static_points, splat_depth, view_depth_error, worst_k_mean and the fused reprojection_errors:
agreement with the reference, exact composition, gradients, determinism."""

import pytest
import torch

from vggrpo import ops, reference

from helpers import random_cameras, random_cloud, random_reprojection_inputs

DTYPES = [torch.float32, torch.float64]


def _tol(dtype):
    return dict(atol=1e-12, rtol=1e-12) if dtype == torch.float64 else dict(atol=2e-6, rtol=2e-6)


def _compose(pointmaps, depths, E, K, flow, threshold):
    """The fused op's definition, built from the unfused ops (docs/ops.md)."""
    B, T, H, W, _ = pointmaps.shape
    points, valid = ops.static_points(pointmaps, flow, threshold)
    rendered, _ = ops.splat_depth(points, valid, E, K, H, W)
    return ops.view_depth_error(rendered, depths, valid.reshape(B, T, H, W))


# ---- static_points ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_static_points_matches_reference(dtype):
    gen = torch.Generator().manual_seed(0)
    pm = random_cloud((2, 3, 4, 5), gen, dtype)
    flow = torch.randn(2, 3, 4, 5, 3, generator=gen, dtype=torch.float64).to(dtype) * 0.1
    pm[0, 1, 2, 3, 1] = float("nan")
    pm[1, 0, 0, 0, 2] = float("inf")
    flow[1, 2, 3, 4, 0] = float("nan")
    flow[0, 0, 1, 1] = torch.tensor([0.06, 0.08, 0.0], dtype=dtype)  # norm exactly 0.1: static
    for f in (flow, None):
        p, v = ops.static_points(pm, f, 0.1)
        rp, rv = reference.static_points(pm, f, 0.1)
        assert p.shape == (2, 60, 3) and v.dtype == torch.bool
        assert torch.equal(v, rv) and torch.equal(p, rp)
    assert bool(v.reshape(2, 3, 4, 5)[0, 0, 1, 1])


def test_static_points_gradient_is_masked():
    gen = torch.Generator().manual_seed(1)
    pm = random_cloud((1, 2, 3, 3), gen).requires_grad_()
    flow = torch.randn(1, 2, 3, 3, 3, generator=gen, dtype=torch.float64) * 0.1
    assert torch.autograd.gradcheck(lambda x: ops.static_points(x, flow, 0.1)[0], (pm,))
    p, v = ops.static_points(pm, flow, 0.1)
    (g,) = torch.autograd.grad(p.sum(), pm)
    assert torch.equal(g, v.reshape(1, 2, 3, 3, 1).double().expand_as(g))


# ---- splat_depth ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("quantise", [False, True])
def test_splat_depth_matches_reference(dtype, quantise):
    gen = torch.Generator().manual_seed(2)
    B, V, N, H, W = 2, 3, 3000, 12, 17
    E, K = random_cameras(B, V, H, W, gen, dtype)
    pts = random_cloud((B, N), gen, dtype)
    if quantise:  # many exact depth ties: the smaller index must win
        pts[..., 2] = torch.round(pts[..., 2] * 4) / 4
        E[..., :3, :3] = torch.eye(3, dtype=dtype)
        E[..., 2, 3] = 0.0
    valid = torch.rand(B, N, generator=gen) > 0.2
    depth, winner = ops.splat_depth(pts, valid, E, K, H, W)
    rdepth, rwinner = reference.splat_depth(pts, valid, E, K, H, W)
    assert winner.dtype == torch.int64
    assert torch.equal(winner, rwinner)
    torch.testing.assert_close(depth, rdepth, **_tol(dtype))
    assert (winner >= 0).float().mean() > 0.5  # the case is not vacuous
    assert torch.equal(depth == 0, winner < 0)
    # None means every point is a candidate
    d_all, w_all = ops.splat_depth(pts, None, E, K, H, W)
    d_true, w_true = ops.splat_depth(pts, torch.ones_like(valid), E, K, H, W)
    assert torch.equal(w_all, w_true) and torch.equal(d_all, d_true)


def test_splat_depth_winner_does_not_depend_on_point_order():
    """The z-buffer key is a total order, so the winner is a property of the cloud, not of the
    processing order: permuting the points permutes the winners and leaves depths unchanged."""
    gen = torch.Generator().manual_seed(3)
    B, V, N, H, W = 1, 2, 2000, 10, 14
    E, K = random_cameras(B, V, H, W, gen, torch.float32)
    pts = random_cloud((B, N), gen, torch.float32)
    perm = torch.randperm(N, generator=gen)
    d1, w1 = ops.splat_depth(pts, None, E, K, H, W)
    d2, w2 = ops.splat_depth(pts[:, perm], None, E, K, H, W)
    assert torch.equal(d1, d2)
    assert torch.equal(torch.where(w2 >= 0, perm[w2.clamp(min=0)], w2), w1)
    # with exact depth ties the smaller index wins, so the winners follow the index order:
    # a reversed cloud must pick, among tied points, the one that was last before reversing
    flat = pts.clone()
    flat[..., 2] = 4.0
    E_id = E.clone()
    E_id[..., :3, :3] = torch.eye(3)
    E_id[..., 2, 3] = 0.0
    _, wf = ops.splat_depth(flat, None, E_id, K, H, W)
    _, wr = ops.splat_depth(flat.flip(1), None, E_id, K, H, W)
    covered = wf >= 0
    assert covered.any()
    # pixel p's tied candidates are a set S; forward picks min(S), reversed picks N-1-max(S)
    assert (wf[covered] <= (N - 1 - wr[covered])).all()


def test_splat_depth_winners_are_distinct_within_a_view():
    """A point lands on one pixel of a view, so no two pixels of a view share a winner: the
    backward scatter's adds within a view never collide (why docs/ops.md does without
    warp-aggregated atomics). Dense clouds, many points per pixel, fused path too."""
    gen = torch.Generator().manual_seed(11)
    B, V, N, H, W = 2, 4, 20000, 9, 13
    E, K = random_cameras(B, V, H, W, gen)
    _, winner = ops.splat_depth(random_cloud((B, N), gen), None, E, K, H, W)
    pm, depths, E2, K2, flow = random_reprojection_inputs(2, 5, 9, 13, gen)
    _, _, fused_winner, _ = torch.ops.vggrpo.reprojection_errors(
        pm, depths, E2, K2, flow, 0.1, True)
    for w in (winner, fused_winner):
        for view in w.flatten(0, 1).flatten(1):
            won = view[view >= 0]
            assert won.numel() > view.numel() // 2  # not vacuous
            assert won.unique().numel() == won.numel()


@pytest.mark.parametrize("dtype", DTYPES)
def test_splat_depth_gradient_matches_reference(dtype):
    gen = torch.Generator().manual_seed(4)
    B, V, N, H, W = 2, 3, 500, 9, 11
    E, K = random_cameras(B, V, H, W, gen, dtype)
    pts = random_cloud((B, N), gen, dtype)
    g = torch.randn(B, V, H, W, generator=gen, dtype=torch.float64).to(dtype)
    grads = []
    for fn in (ops.splat_depth, reference.splat_depth):
        p, e = pts.clone().requires_grad_(), E.clone().requires_grad_()
        d, _ = fn(p, None, e, K, H, W)
        grads.append(torch.autograd.grad(d, (p, e), g))
    for ours, theirs in zip(*grads):
        torch.testing.assert_close(ours, theirs, **_tol(dtype))


def test_splat_depth_gradcheck_float64():
    gen = torch.Generator().manual_seed(5)
    B, V, N, H, W = 1, 2, 40, 16, 16
    E, K = random_cameras(B, V, H, W, gen)
    pts = random_cloud((B, N), gen).requires_grad_()
    E = E.requires_grad_()
    assert torch.autograd.gradcheck(lambda p, e: ops.splat_depth(p, None, e, K, H, W)[0], (pts, E))
    E4 = torch.cat(
        [E.detach(), torch.tensor([0, 0, 0, 1.0], dtype=torch.float64).expand(B, V, 1, 4)], -2)
    E4.requires_grad_()
    assert torch.autograd.gradcheck(lambda p, e: ops.splat_depth(p, None, e, K, H, W)[0], (pts, E4))


# ---- view_depth_error and worst_k_mean -------------------------------------------------------


def _depth_error_inputs(dtype):
    """rendered, depths ``[2,4,6,7]`` in ``dtype`` with empty, NaN, negative and all-invalid
    pixels, and a validity mask."""
    gen = torch.Generator().manual_seed(6)
    shape = (2, 4, 6, 7)
    rendered = (torch.rand(shape, generator=gen, dtype=torch.float64) * 4).to(dtype)
    rendered[rendered < 1] = 0  # empty pixels
    depths = (torch.rand(shape, generator=gen, dtype=torch.float64) * 4).to(dtype)
    depths[0, 1, 2, 3] = float("nan")
    depths[1, 2, 0, 0] = -1.0
    depths[1, 3] = float("inf")  # a view with no valid depth: count 0, err 0
    valid = torch.rand(shape, generator=gen) > 0.3
    return rendered, depths, valid


@pytest.mark.parametrize("dtype", DTYPES)
def test_view_depth_error_matches_reference(dtype):
    rendered, depths, valid = _depth_error_inputs(dtype)
    for mask in (None, valid):
        err, count = ops.view_depth_error(rendered, depths, mask)
        rerr, rcount = reference.view_depth_error(rendered, depths, mask)
        assert torch.equal(count, rcount)
        torch.testing.assert_close(err, rerr, **_tol(dtype))
    assert count[1, 3].item() == 0 and err[1, 3].item() == 0.0


# Once, not per dtype: it is float64 either way, and 1344 op calls take 40 s on the emulated
# CUDA path (make cuda-emulated).
def test_view_depth_error_gradcheck_float64():
    rendered, depths, valid = _depth_error_inputs(torch.float64)
    # invalid pixels are made negative (not 0, where a finite-difference step would flip them
    # valid), and no pixel sits on the |r - d| kink
    r = torch.where(rendered > 0, rendered, -1.0).requires_grad_()
    d = torch.where(torch.isfinite(depths) & (depths > 0), depths, -1.0).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: ops.view_depth_error(a, b, valid)[0], (r, d))


@pytest.mark.parametrize("dtype", DTYPES)
def test_worst_k_mean_matches_reference(dtype):
    gen = torch.Generator().manual_seed(7)
    err = torch.rand(5, 9, generator=gen, dtype=torch.float64).to(dtype)
    err[0, 3] = err[0, 5]  # a tie
    err[1, 2] = float("nan")
    count = torch.randint(0, 3, (5, 9), generator=gen)
    count[2] = 0  # a video with no valid view: 0
    count[3, :2] = 1
    count[3, 2:] = 0  # fewer valid views than k
    for k in (1, 3, 9, 20):
        ours = ops.worst_k_mean(err, count, k)
        theirs = reference.worst_k_mean(err, count, k)
        torch.testing.assert_close(ours, theirs, **_tol(dtype), equal_nan=True)
        assert ours[2].item() == 0.0
    e = err.double().nan_to_num(0.5).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: ops.worst_k_mean(x, count, 3), (e,))


# ---- the fused path -------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_flow", [True, False])
def test_fused_equals_composition_exactly(dtype, with_flow):
    gen = torch.Generator().manual_seed(8)
    pm, depths, E, K, flow = random_reprojection_inputs(2, 4, 10, 13, gen, dtype, flow=with_flow)
    pm[0, 1, 2, 3] = float("nan")
    depths[1, 0, 4, 4] = float("nan")
    err, count = ops.reprojection_errors(pm, depths, E, K, flow, 0.1)
    cerr, ccount = _compose(pm, depths, E, K, flow, 0.1)
    # same arithmetic in the same order: bitwise equal, not merely close
    assert torch.equal(count, ccount) and torch.equal(err, cerr)
    rerr, rcount = reference.reprojection_errors(pm, depths, E, K, flow, 0.1)
    assert torch.equal(count, rcount)
    torch.testing.assert_close(err, rerr, **_tol(dtype))
    assert (count > 0).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_gradients_match_reference(dtype):
    gen = torch.Generator().manual_seed(9)
    pm, depths, E, K, flow = random_reprojection_inputs(2, 3, 8, 9, gen, dtype)
    w = torch.randn(2, 3, generator=gen, dtype=torch.float64).to(dtype)
    grads = []
    for fn in (ops.reprojection_errors, reference.reprojection_errors):
        args = [t.clone().requires_grad_() for t in (pm, depths, E)]
        err, _ = fn(*args, K, flow, 0.1)
        grads.append(torch.autograd.grad((err * w).sum(), args))
    for ours, theirs in zip(*grads):
        torch.testing.assert_close(ours, theirs, **_tol(dtype))
    assert grads[0][0].abs().sum() > 0 and grads[0][2].abs().sum() > 0


def test_fused_gradcheck_float64():
    gen = torch.Generator().manual_seed(10)
    pm, depths, E, K, flow = random_reprojection_inputs(1, 3, 6, 7, gen)
    args = tuple(t.requires_grad_() for t in (pm, depths, E))
    assert torch.autograd.gradcheck(
        lambda a, b, c: ops.reprojection_errors(a, b, c, K, flow, 0.1)[0], args)


@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_without_winners_gives_identical_errors(dtype):
    """Under no_grad the op keeps no winner map (and float32 takes a depth-only z-buffer): the
    errors and counts must be bitwise those of the path that keeps winners."""
    gen = torch.Generator().manual_seed(12)
    pm, depths, E, K, flow = random_reprojection_inputs(2, 5, 12, 15, gen, dtype)
    pm[..., 2] = torch.round(pm[..., 2] * 8) / 8  # exact depth ties
    raw = torch.ops.vggrpo.reprojection_errors
    err_w, count_w, winner, valid_w = raw(pm, depths, E, K, flow, 0.1, True)
    err_n, count_n, no_winner, valid_n = raw(pm, depths, E, K, flow, 0.1, False)
    assert winner.shape == (2, 5, 12, 15) and no_winner.shape == (0,)
    assert torch.equal(err_w, err_n) and torch.equal(count_w, count_n)
    assert torch.equal(valid_w, valid_n)
    with torch.no_grad():
        err, count = ops.reprojection_errors(pm.requires_grad_(), depths, E, K, flow)
    assert torch.equal(err, err_w)


def test_backward_after_a_winnerless_forward_is_a_clear_error():
    gen = torch.Generator().manual_seed(13)
    pm, depths, E, K, flow = random_reprojection_inputs(1, 3, 6, 7, gen)
    pm.requires_grad_()
    err, *_ = torch.ops.vggrpo.reprojection_errors(pm, depths, E, K, flow, 0.1, False)
    with pytest.raises(RuntimeError, match="need_winner=True"):
        err.sum().backward()
