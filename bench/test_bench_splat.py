"""The z-buffer op alone: ``vggrpo.ops.splat_depth`` against ``vggrpo.reference.splat_depth``
(``[B, V, N]`` projection, two ``scatter_reduce(amin)`` passes for the (float32 depth, index)
key), on the static points of the benchmark scenes, forward under ``torch.no_grad`` and forward +
backward of the rendered depth w.r.t. points and extrinsics, at both sizes."""

import pytest

from vggrpo import ops, reference

IMPLS = {"fused": ops.splat_depth, "reference": reference.splat_depth}


def _depth(splat):
    def depth_only(*args):
        return splat(*args)[0]

    return depth_only


@pytest.mark.parametrize("impl", list(IMPLS))
def test_splat_depth_forward(bench_case, inputs, impl):
    depth = bench_case(_depth(IMPLS[impl]), *inputs.splat_args(), pair="splat_depth_forward",
                       impl=impl, size=inputs.size)
    assert depth.shape == inputs.depths.shape


@pytest.mark.parametrize("impl", list(IMPLS))
def test_splat_depth_forward_backward(bench_case, inputs, impl):
    grads = bench_case(_depth(IMPLS[impl]), *inputs.splat_args(requires_grad=True),
                       pair="splat_depth_fwd_bwd", impl=impl, size=inputs.size,
                       grad_argnums=(0, 2))
    assert [g.shape for g in grads] == [inputs.points.shape, inputs.extrinsics.shape]
