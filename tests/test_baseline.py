"""The RGB baseline reward: decode, backbone on the aligned frames, same rewards and interface."""

import pytest
import torch

from vggrpo import LatentGeometryReward
from vggrpo.defaults import load_default_lgm, load_tiny_wan_vae
from vggrpo.rgb_reward import RGBGeometryReward


@pytest.fixture(scope="module")
def models():
    return load_tiny_wan_vae(), load_default_lgm()


def latents(B=2, h=12, w=20, seed=0):
    return torch.randn(B, 16, 5, h, w, generator=torch.Generator().manual_seed(seed))


def test_matches_the_pipeline_composed_by_hand(models):
    vae, lgm = models
    reward = RGBGeometryReward(vae, lgm.backbone, topk=2, flow_threshold=0.05)
    z = latents()
    with torch.no_grad():
        got = reward(z)
        z_raw = z * torch.tensor(vae.config.latents_std).view(1, 16, 1, 1, 1) \
            + torch.tensor(vae.config.latents_mean).view(1, 16, 1, 1, 1)
        video = ((vae.decode(z_raw).sample + 1) / 2).clamp(0, 1)  # [B,3,17,H,W]
        frames = video[:, :, ::4].permute(0, 2, 1, 3, 4)
        expected = lgm.backbone(frames).rewards(topk=2, flow_threshold=0.05)
    assert frames.shape == (2, 5, 3, 96, 160)
    for k in ("motion", "geo"):
        assert torch.allclose(got[k], expected[k], atol=1e-6), k


def test_same_interface_as_the_latent_reward(models):
    vae, lgm = models
    rgb = RGBGeometryReward(vae, lgm.backbone, {"geo": 2.0})
    lat = LatentGeometryReward(lgm, {"geo": 2.0})
    z = latents(1)
    with torch.no_grad():
        a, b = rgb(z), lat(z)
    assert set(a) == set(b) == {"motion", "geo"}
    assert a["geo"].shape == b["geo"].shape == (1,) and a["geo"].dtype == torch.float32
    assert torch.equal(rgb.weighted(a), 2.0 * a["geo"])
    with pytest.raises(ValueError, match="unknown reward names"):
        RGBGeometryReward(vae, lgm.backbone, {"smooth": 1.0})


def test_differentiable_for_guidance(models):
    vae, lgm = models
    reward = RGBGeometryReward(vae, lgm.backbone)
    z = latents(1).requires_grad_(True)
    grad = torch.autograd.grad(reward.weighted(reward(z)).sum(), z)[0]
    assert bool(torch.isfinite(grad).all()) and float(grad.abs().sum()) > 0
    assert not any(p.requires_grad for p in reward.parameters())


def test_frames_are_resized_to_the_patch_grid(models):
    vae, lgm = models
    reward = RGBGeometryReward(vae, lgm.backbone)
    with torch.no_grad():
        frames = reward.frames(latents(1, h=5, w=7))  # decoded 40 x 56
    assert frames.shape[-2:] == (48, 64)  # 2.5 and 3.5 patches round up to 3 and 4


def test_the_trainer_accepts_the_rgb_reward(models):
    from vggrpo.grpo import GRPOConfig, GRPOTrainer

    from grpo_setup import prompt_embeds, tiny_transformer

    vae, lgm = models
    trainer = GRPOTrainer(tiny_transformer(), RGBGeometryReward(vae, lgm.backbone),
                          prompt_embeds(), GRPOConfig(group_size=2, prompts_per_step=1,
                                                      num_inference_steps=3, sde_window=(0, 1),
                                                      lora_rank=2, lora_alpha=2.0))
    log = trainer.train_step()
    assert log["ratio_max"] == 1.0 and log["time_reward_s"] > 0
