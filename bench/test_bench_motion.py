"""Camera motion smoothness reward: ``vggrpo.camera_motion_reward`` (fused op) against
``vggrpo.reference.camera_motion_reward`` (plain PyTorch), forward under ``torch.no_grad`` and
forward + backward w.r.t. the extrinsics, at both sizes (only ``B`` and ``T`` matter here)."""

import pytest

import vggrpo
from vggrpo import reference

IMPLS = {
    "fused": vggrpo.camera_motion_reward,
    "reference": reference.camera_motion_reward,
}


@pytest.mark.parametrize("impl", list(IMPLS))
def test_motion_reward_forward(bench_case, inputs, impl):
    out = bench_case(IMPLS[impl], inputs.extrinsics, pair="motion_forward", impl=impl,
                     size=inputs.size)
    assert out.shape == (inputs.shape[0],) and bool(((out > 0) & (out <= 1)).all())


@pytest.mark.parametrize("impl", list(IMPLS))
def test_motion_reward_forward_backward(bench_case, inputs, impl):
    E = inputs.extrinsics.detach().clone().requires_grad_()
    (grad,) = bench_case(IMPLS[impl], E, pair="motion_fwd_bwd", impl=impl, size=inputs.size,
                         grad_argnums=(0,))
    assert grad.shape == E.shape
