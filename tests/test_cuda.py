"""CUDA kernels: parity with the CPU kernels, gradients, opcheck, torch.compile and CUDA graphs.

Runs only where a GPU and a CUDA build of vggrpo are present (scripts/gpu_check.sh runs it on a
lent GPU machine); CI has no GPU, so there every test here is skipped, by design. What is asserted:

* winners and rendered depths equal the CPU's bit for bit (same key order, and --fmad=false makes
  every projection round as on the CPU); counts equal; per-view errors equal up to the order of a
  double-precision sum;
* gradients equal the CPU's; under torch.use_deterministic_algorithms(True) the point gradients
  (gather path, views summed in the CPU's order) are bitwise the CPU's and reproducible, and the
  default (atomic) path agrees to rounding;
* opcheck and float64 gradcheck on CUDA; both rewards compile with fullgraph=True; the reward
  replays under CUDA-graph capture.
"""

import pytest
import torch

import vggrpo
from vggrpo import ops

from helpers import random_cameras, random_cloud, random_reprojection_inputs, random_rotations

pytestmark = pytest.mark.skipif(
    not (torch.cuda.is_available() and vggrpo.cuda_built),
    reason="needs a CUDA device and vggrpo built with CUDA (FORCE_CUDA=1)",
)

DTYPES = [torch.float32, torch.float64]
raw = torch.ops.vggrpo


def _cuda(*ts):
    return tuple(t.cuda() if isinstance(t, torch.Tensor) else t for t in ts)


def _close(dtype):
    return dict(atol=1e-12, rtol=1e-10) if dtype == torch.float64 else dict(atol=1e-6, rtol=1e-5)


@pytest.fixture(autouse=True)
def _nondeterministic_by_default():
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(False)
    yield
    torch.use_deterministic_algorithms(before)


@pytest.mark.parametrize("dtype", DTYPES)
def test_so3_and_motion_parity(dtype):
    gen = torch.Generator().manual_seed(0)
    R = random_rotations(500, gen).to(dtype)
    R[7, 0, 0], R[8, 1, 2], R[9, 2, 1] = float("inf"), float("nan"), -float("inf")  # NaN rows
    assert torch.isnan(ops.so3_log(R)[7:10]).all()
    torch.testing.assert_close(ops.so3_log(R.cuda()).cpu(), ops.so3_log(R), equal_nan=True,
                               **_close(dtype))
    g = torch.randn(500, 3, generator=gen, dtype=torch.float64).to(dtype)
    torch.testing.assert_close(raw.so3_log_backward(g.cuda(), R.cuda()).cpu(),
                               raw.so3_log_backward(g, R), equal_nan=True, **_close(dtype))
    E, _ = random_cameras(4, 9, 8, 8, gen, dtype)
    for a, b in zip(ops.motion_smoothness(E.cuda()), ops.motion_smoothness(E)):
        torch.testing.assert_close(a.cpu(), b, **_close(dtype))
    gt, gr = torch.rand(4, dtype=dtype), torch.rand(4, dtype=dtype)
    torch.testing.assert_close(
        raw.motion_smoothness_backward(gt.cuda(), gr.cuda(), E.cuda(), 1e-8).cpu(),
        raw.motion_smoothness_backward(gt, gr, E, 1e-8), **_close(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ties", [False, True])
def test_splat_depth_winners_equal_the_cpu(dtype, ties):
    gen = torch.Generator().manual_seed(1)
    B, V, N, H, W = 2, 4, 20000, 30, 40
    E, K = random_cameras(B, V, H, W, gen, dtype)
    pts = random_cloud((B, N), gen, dtype)
    if ties:
        pts[..., 2] = torch.round(pts[..., 2] * 4) / 4
    valid = torch.rand(B, N, generator=gen) > 0.1
    d_cpu, w_cpu = ops.splat_depth(pts, valid, E, K, H, W)
    d_gpu, w_gpu = ops.splat_depth(*_cuda(pts, valid, E, K), H, W)
    assert torch.equal(w_gpu.cpu(), w_cpu)
    assert torch.equal(d_gpu.cpu(), d_cpu)
    assert (w_cpu >= 0).float().mean() > 0.5


@pytest.mark.parametrize("need_winner", [True, False])
def test_large_clouds_take_the_all_views_splat_and_match_the_cpu(need_winner):
    """Over 2^20 points: each splat thread then takes its point into every view (the paper-scale
    schedule, csrc/kernels/cuda_common.cuh), which the smaller parity cases above never reach."""
    gen = torch.Generator().manual_seed(9)
    B, V, N, H, W = 1, 5, 1_200_000, 48, 64
    E, K = random_cameras(B, V, H, W, gen, torch.float32)
    pts = random_cloud((B, N), gen, torch.float32)
    d_cpu, w_cpu = ops.splat_depth(pts, None, E, K, H, W)
    d_gpu, w_gpu = ops.splat_depth(*_cuda(pts, None, E, K), H, W)
    assert torch.equal(w_gpu.cpu(), w_cpu) and torch.equal(d_gpu.cpu(), d_cpu)
    # the fused path with 2^20+ points (T*H*W = 6 * 416 * 424), with and without winners
    pm, depths, Ef, Kf, flow = random_reprojection_inputs(1, 6, 416, 424, gen, torch.float32)
    cpu = raw.reprojection_errors(pm, depths, Ef, Kf, flow, 0.1, True)
    gpu = [t.cpu() for t in
           raw.reprojection_errors(*_cuda(pm, depths, Ef, Kf, flow), 0.1, need_winner)]
    torch.testing.assert_close(gpu[0], cpu[0], **_close(torch.float32))
    assert torch.equal(gpu[1], cpu[1])
    if need_winner:
        assert torch.equal(gpu[2], cpu[2])


@pytest.mark.parametrize("dtype", DTYPES)
def test_static_points_view_error_worst_k_parity(dtype):
    gen = torch.Generator().manual_seed(2)
    pm, depths, E, K, flow = random_reprojection_inputs(2, 5, 16, 20, gen, dtype)
    for a, b in zip(ops.static_points(*_cuda(pm, flow), 0.1), ops.static_points(pm, flow, 0.1)):
        assert torch.equal(a.cpu(), b)
    rendered = depths * (
        1 + 0.1 * torch.randn(depths.shape, generator=gen, dtype=torch.float64).to(dtype))
    rendered[rendered < 3.3] = 0
    mask = torch.rand(depths.shape, generator=gen) > 0.2
    e_cpu, c_cpu = ops.view_depth_error(rendered, depths, mask)
    e_gpu, c_gpu = ops.view_depth_error(*_cuda(rendered, depths, mask))
    assert torch.equal(c_gpu.cpu(), c_cpu)
    torch.testing.assert_close(e_gpu.cpu(), e_cpu, **_close(dtype))
    for k in (1, 3, 9):
        torch.testing.assert_close(ops.worst_k_mean(e_cpu.cuda(), c_cpu.cuda(), k).cpu(),
                                   ops.worst_k_mean(e_cpu, c_cpu, k), **_close(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("need_winner", [True, False])
def test_fused_forward_parity(dtype, need_winner):
    gen = torch.Generator().manual_seed(3)
    pm, depths, E, K, flow = random_reprojection_inputs(2, 6, 24, 32, gen, dtype)
    pm[0, 1, 2, 3] = float("nan")
    depths[1, 2, 3, 4] = float("nan")
    E[1, 3, 0, 1] = float("nan")  # a broken camera renders nothing
    K[0, 4, 0, 2] = float("inf")
    cpu = raw.reprojection_errors(pm, depths, E, K, flow, 0.1, True)
    assert cpu[1][1, 3] == 0 and cpu[1][0, 4] == 0
    gpu = [t.cpu() for t in
           raw.reprojection_errors(*_cuda(pm, depths, E, K, flow), 0.1, need_winner)]
    torch.testing.assert_close(gpu[0], cpu[0], **_close(dtype))
    assert torch.equal(gpu[1], cpu[1])
    assert torch.equal(gpu[3], cpu[3])
    if need_winner:
        assert torch.equal(gpu[2], cpu[2])
    else:
        assert gpu[2].shape == (0,)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("deterministic", [False, True])
def test_reward_gradients_parity(dtype, deterministic):
    gen = torch.Generator().manual_seed(4)
    pm, depths, E, K, flow = random_reprojection_inputs(2, 5, 20, 24, gen, dtype)

    def grads(device):
        args = [t.to(device).requires_grad_() for t in (pm, depths, E)]
        r = vggrpo.geometry_reprojection_reward(*args, K.to(device), flow.to(device), topk=3)
        return [g.cpu() for g in torch.autograd.grad(r.sum(), args)]

    torch.use_deterministic_algorithms(deterministic)
    cpu = grads("cpu")
    gpu = grads("cuda")
    for a, b in zip(gpu, cpu):
        torch.testing.assert_close(a, b, **_close(dtype))
    if deterministic:
        # gather path: point gradients summed in the CPU's view order, bit for bit, every run
        assert torch.equal(gpu[0], cpu[0]) and torch.equal(gpu[1], cpu[1])
        assert all(torch.equal(a, b) for a, b in zip(grads("cuda"), gpu))


@pytest.mark.parametrize("deterministic", [False, True])
def test_splat_depth_gradients_parity(deterministic):
    gen = torch.Generator().manual_seed(5)
    B, V, N, H, W = 2, 3, 3000, 20, 24
    E, K = random_cameras(B, V, H, W, gen)
    pts = random_cloud((B, N), gen)
    g = torch.randn(B, V, H, W, generator=gen, dtype=torch.float64)

    def grads(device):
        p, e = pts.to(device).requires_grad_(), E.to(device).requires_grad_()
        d, _ = ops.splat_depth(p, None, e, K.to(device), H, W)
        return [t.cpu() for t in torch.autograd.grad(d, (p, e), g.to(device))]

    torch.use_deterministic_algorithms(deterministic)
    for a, b in zip(grads("cuda"), grads("cpu")):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)


def test_gradcheck_float64_on_cuda():
    gen = torch.Generator().manual_seed(6)
    pm, depths, E, K, flow = random_reprojection_inputs(1, 3, 6, 7, gen)
    pm, depths, E, K, flow = _cuda(pm, depths, E, K, flow)
    args = tuple(t.requires_grad_() for t in (pm, depths, E))
    assert torch.autograd.gradcheck(
        lambda a, b, c: vggrpo.geometry_reprojection_reward(a, b, c, K, flow, topk=2), args)
    R = random_rotations(4, gen).cuda().requires_grad_()
    assert torch.autograd.gradcheck(ops.so3_log, (R,))
    assert torch.autograd.gradcheck(vggrpo.camera_motion_reward,
                                    (E.detach().clone().requires_grad_(),))


def test_opcheck_on_cuda():
    from test_library import SAMPLES  # the same samples as on the CPU, moved to the GPU

    for op, args in SAMPLES:
        moved = tuple(a.detach().cuda().requires_grad_(a.requires_grad)
                      if isinstance(a, torch.Tensor) else a
                      for a in args)
        torch.library.opcheck(op, moved)


def test_mixed_devices_are_a_clear_error():
    gen = torch.Generator().manual_seed(7)
    pm, depths, E, K, flow = random_reprojection_inputs(1, 3, 6, 7, gen)
    with pytest.raises(ValueError, match="one device"):
        ops.reprojection_errors(pm.cuda(), depths, E.cuda(), K.cuda(), flow.cuda())


def test_rewards_compile_without_graph_breaks_on_cuda():
    gen = torch.Generator().manual_seed(8)
    pm, depths, E, K, flow = _cuda(*random_reprojection_inputs(2, 4, 12, 16, gen, torch.float32))

    def both(pm, depths, E, K, flow):
        return (vggrpo.geometry_reprojection_reward(pm, depths, E, K, flow),
                vggrpo.camera_motion_reward(E))

    torch._dynamo.reset()
    compiled = torch.compile(both, fullgraph=True)
    for a, b in zip(compiled(pm, depths, E, K, flow), both(pm, depths, E, K, flow)):
        torch.testing.assert_close(a, b)


def test_reward_under_cuda_graph_capture():
    gen = torch.Generator().manual_seed(9)
    pm, depths, E, K, flow = _cuda(*random_reprojection_inputs(2, 4, 12, 16, gen, torch.float32))
    expected = vggrpo.geometry_reprojection_reward(pm, depths, E, K, flow)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.no_grad():
        for _ in range(2):  # warm-up outside capture (allocator, lazy init)
            vggrpo.geometry_reprojection_reward(pm, depths, E, K, flow)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.no_grad():
        out = vggrpo.geometry_reprojection_reward(pm, depths, E, K, flow)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, expected)
    depths.mul_(1.05)  # replay reads the new inputs in place
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, vggrpo.geometry_reprojection_reward(pm, depths, E, K, flow))
