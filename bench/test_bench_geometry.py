"""Geometry reprojection reward: the fused op (``vggrpo.geometry_reprojection_reward``) against
the vectorised plain-PyTorch baseline a user would write
(``vggrpo.reference.geometry_reprojection_reward``: every point projected into every view at once,
``[B, V, N]``, and a ``scatter_reduce(amin)`` z-buffer).

Forward under ``torch.no_grad`` (GRPO rollouts) and forward + backward with gradients w.r.t.
pointmaps, depths and extrinsics (reward guidance), at both sizes of ``harness.settings.SIZES``.
"""

import pytest

import vggrpo
from vggrpo import reference

IMPLS = {
    "fused": vggrpo.geometry_reprojection_reward,
    "reference": reference.geometry_reprojection_reward,
}


@pytest.mark.parametrize("impl", list(IMPLS))
def test_geometry_reward_forward(bench_case, inputs, impl):
    out = bench_case(IMPLS[impl], *inputs.geometry_args(), pair="geometry_forward", impl=impl,
                     size=inputs.size)
    assert out.shape == (inputs.shape[0],) and bool((out < 0).all())


@pytest.mark.parametrize("impl", list(IMPLS))
def test_geometry_reward_forward_backward(bench_case, inputs, impl):
    grads = bench_case(IMPLS[impl], *inputs.geometry_args(requires_grad=True),
                       pair="geometry_fwd_bwd", impl=impl, size=inputs.size,
                       grad_argnums=(0, 1, 2))
    assert [g.shape for g in grads] == [inputs.pointmaps.shape, inputs.depths.shape,
                                        inputs.extrinsics.shape]
