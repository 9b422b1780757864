"""The latent reward (LGM, no decode) against the RGB baseline (decode + backbone on pixels).

Same latents, same rewards, one run: ``LatentGeometryReward`` is "ours" (the ``fused`` role of
the pair) and ``RGBGeometryReward`` the baseline (the ``reference`` role), so the summary's ratios
read RGB / latent. Inputs: batch 4, the paper's efficiency setting, of 5 latent frames
``[4,16,5,12,20]`` (17 RGB frames at 96x160), with the embedded tiny models (the only ones a
machine without downloads has). Two cases per device: scoring under ``no_grad`` (GRPO rollouts)
and forward + backward to the latents (reward guidance). On a GPU the same cases run on CUDA
(skipped without one).

The paper's numbers for comparison (their Table, batch 4, real Wan/Any4D models on a GPU): the
latent reward takes 0.755x the RGB reward's time and 0.893x its peak memory. See bench/README.md.
"""

import pytest
import torch

from vggrpo import LatentGeometryReward, RGBGeometryReward
from vggrpo.defaults import load_default_lgm, load_tiny_wan_vae

LATENTS = (4, 16, 5, 12, 20)
SHAPE = (4, 5, 96, 160)  # (B, T, H, W) of the geometry both rewards compute
SIZE = "tiny-b4"


@pytest.fixture(scope="module")
def rewards():
    vae, lgm = load_tiny_wan_vae(), load_default_lgm()
    return {"latent": LatentGeometryReward(lgm), "rgb": RGBGeometryReward(vae, lgm.backbone)}


DEVICES = [pytest.param("cpu"), pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device"))]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl,label", [("fused", "latent"), ("reference", "rgb")])
@pytest.mark.parametrize("backward", [False, True], ids=["no_grad", "fwd_bwd"])
def test_latent_vs_rgb_reward(bench_case, rewards, impl, label, backward, device):
    reward = rewards[label].to(device)
    z = torch.randn(LATENTS, generator=torch.Generator().manual_seed(0)).to(device)
    z.requires_grad_(backward)

    def score(latents):
        return reward.weighted(reward(latents))

    pair = "reward latent vs RGB" + (" fwd+bwd" if backward else "")
    out = bench_case(score, z, pair=pair, impl=impl, size=f"{SIZE}-{device}",
                     grad_argnums=(0,) if backward else None, shape=SHAPE, label=label)
    if backward:
        assert bool(torch.isfinite(out[0]).all())
    else:
        assert out.shape == (4,) and bool(torch.isfinite(out).all())
