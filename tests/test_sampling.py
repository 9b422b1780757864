"""The flow-matching sampler: ODE/SDE steps, log-probabilities, windows, CFG, reward guidance."""

import math

import pytest
import torch

from vggrpo.latent_reward import LatentGeometryReward
from vggrpo.sampling import (
    RewardGuidance,
    check_wan_inputs,
    ode_step,
    sample,
    scheduler_sigmas,
    sde_noise_std,
    sde_step,
    wan_velocity,
)

from grpo_setup import TINY_WAN


@pytest.fixture(scope="module")
def transformer():
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    return WanTransformer3DModel(**TINY_WAN).eval()


@pytest.fixture(scope="module")
def sigmas():
    from diffusers import FlowMatchEulerDiscreteScheduler

    return scheduler_sigmas(FlowMatchEulerDiscreteScheduler(shift=3.0), 6)


def embeds(B, seed=0):
    return torch.randn(B, 8, 16, generator=torch.Generator().manual_seed(seed))


def noise(B=2, seed=1, shape=(16, 5, 12, 20)):
    return torch.randn(B, *shape, generator=torch.Generator().manual_seed(seed))


def test_schedule_is_decreasing_to_zero(sigmas):
    assert sigmas.dtype == torch.float64 and sigmas.numel() == 7
    assert float(sigmas[0]) == 1.0 and float(sigmas[-1]) == 0.0
    assert bool((sigmas[1:] < sigmas[:-1]).all())


def test_noise_level_zero_is_the_ode_step():
    x, v = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    step = sde_step(x, v, 0.6, 0.4, 0.0)
    assert torch.equal(step.sample, ode_step(x, v, 0.6, 0.4))
    assert torch.equal(step.sample, x + (0.4 - 0.6) * v)
    assert torch.equal(step.log_prob, torch.zeros(2))


def test_sde_mean_std_and_log_prob_match_an_independent_gaussian():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 5, generator=gen, dtype=torch.float64)
    v = torch.randn(3, 4, 5, generator=gen, dtype=torch.float64)
    s, s_next, a = 0.7, 0.55, 0.8
    step = sde_step(x, v, s, s_next, a, generator=gen)
    # The reverse SDE dx = [v + sigma_t^2/(2s) (x + (1-s) v)] ds + sigma_t dW, Euler-Maruyama.
    sigma_t = a * math.sqrt(s / (1 - s))
    dt = s_next - s
    mean = x + (v + sigma_t ** 2 / (2 * s) * (x + (1 - s) * v)) * dt
    std = sigma_t * math.sqrt(-dt)
    assert torch.allclose(step.mean, mean, rtol=0, atol=1e-14)
    assert float(step.std) == pytest.approx(std, rel=1e-14)
    ref = torch.distributions.Normal(mean, std).log_prob(step.sample).flatten(1).mean(1)
    assert torch.allclose(step.log_prob, ref, rtol=0, atol=1e-12)
    # The sample really is drawn from that Gaussian: standardised residuals ~ N(0, 1).
    z = (step.sample - mean) / std
    assert abs(float(z.mean())) < 0.4 and abs(float(z.std()) - 1) < 0.3
    again = sde_step(x, v, s, s_next, a, prev_sample=step.sample)
    assert torch.equal(again.log_prob, step.log_prob)


def test_noise_scale_is_capped_at_sigma_one():
    assert sde_noise_std(1.0, 0.7) == pytest.approx(0.7 * math.sqrt(0.99 / 0.01))
    assert sde_noise_std(0.5, 0.7) == pytest.approx(0.7)
    assert sde_noise_std(0.0, 0.7) == 0.0


def test_rollout_log_probs_recompute_exactly_ratio_one(transformer, sigmas):
    """On-policy: recomputing each SDE step's log-probability with the same model gives the
    rollout's value bit for bit, so the GRPO ratio is exactly 1."""
    vel = wan_velocity(transformer, embeds(2))
    traj = sample(vel, noise(2), sigmas, sde_window=(1, 4), noise_level=0.7,
                  generator=torch.Generator().manual_seed(5))
    assert traj.sde_steps == [1, 2, 3] and traj.log_probs.shape == (2, 3)
    for j, i in enumerate(traj.sde_steps):
        x, x_next = traj.latents[i], traj.latents[i + 1]
        with torch.no_grad():
            v = vel(x, float(sigmas[i]))
        lp = sde_step(x, v, float(sigmas[i]), float(sigmas[i + 1]), 0.7, prev_sample=x_next)
        assert torch.equal(lp.log_prob, traj.log_probs[:, j])
        assert torch.equal(torch.exp(lp.log_prob - traj.log_probs[:, j]), torch.ones(2))


def test_steps_outside_the_window_are_ode(transformer, sigmas):
    vel = wan_velocity(transformer, embeds(1))
    x0 = noise(1)
    traj = sample(vel, x0, sigmas, sde_window=(2, 3), generator=torch.Generator().manual_seed(0))
    ode = sample(vel, x0, sigmas)
    assert torch.equal(traj.latents[1], ode.latents[1])
    assert torch.equal(traj.latents[2], ode.latents[2])
    assert not torch.equal(traj.latents[3], ode.latents[3])
    with torch.no_grad():
        v = vel(traj.latents[4], float(sigmas[4]))
    assert torch.equal(traj.latents[5], ode_step(traj.latents[4], v, sigmas[4], sigmas[5]))


def test_sde_math_is_float32_for_a_bfloat16_model(transformer, sigmas):
    model = type(transformer)(**TINY_WAN)
    model.load_state_dict(transformer.state_dict())
    model = model.to(torch.bfloat16).eval()
    traj = sample(wan_velocity(model, embeds(1)), noise(1), sigmas, sde_window=(0, 2),
                  generator=torch.Generator().manual_seed(0))
    assert traj.final.dtype == torch.float32 and traj.log_probs.dtype == torch.float32
    assert bool(torch.isfinite(traj.log_probs).all())


def test_classifier_free_guidance(transformer):
    x, s = noise(2), 0.5
    pos, neg = embeds(2, 1), embeds(2, 2)
    with torch.no_grad():
        v_pos = wan_velocity(transformer, pos)(x, s)
        v_neg = wan_velocity(transformer, neg)(x, s)
        v_cfg = wan_velocity(transformer, pos, negative_prompt_embeds=neg, guidance_scale=5.0)(x, s)
        v_one = wan_velocity(transformer, pos, negative_prompt_embeds=neg, guidance_scale=1.0)(x, s)
    assert torch.allclose(v_cfg, v_neg + 5.0 * (v_pos - v_neg), atol=1e-5)
    assert torch.equal(v_one, v_pos)


@pytest.fixture(scope="module")
def latent_reward():
    from vggrpo.defaults import load_default_lgm

    return LatentGeometryReward(load_default_lgm(), {"geo": 1.0})


def test_latent_geometry_reward(latent_reward):
    z = noise(2, 3).requires_grad_(True)
    r = latent_reward(z)
    assert (set(r) == {"motion", "geo"} and r["geo"].shape == (2,)
            and r["geo"].dtype == torch.float32)
    grad = torch.autograd.grad(latent_reward.weighted(r).sum(), z)[0]
    assert bool(torch.isfinite(grad).all()) and float(grad.abs().sum()) > 0
    assert not any(p.requires_grad for p in latent_reward.lgm.parameters())
    with torch.no_grad():
        assert not latent_reward(z).get("geo").requires_grad
    with pytest.raises(ValueError, match="unknown reward names"):
        LatentGeometryReward(latent_reward.lgm, {"smooth": 1.0})


def test_latent_reward_checks_the_vae_it_is_told_of(latent_reward):
    """``vae=`` compares the VAE with the one the LGM was stitched to: the shipped LGM takes the
    shipped tiny VAE and refuses another tiny VAE, whose latents have the same shape."""
    from diffusers import AutoencoderKLWan

    from vggrpo.defaults import load_tiny_wan_vae

    from helpers import untrained_embedded_vae

    reward = LatentGeometryReward(latent_reward.lgm, {"geo": 1.0}, vae=load_tiny_wan_vae())
    assert reward.lgm is latent_reward.lgm
    assert not any(isinstance(m, AutoencoderKLWan) for m in reward.modules())  # not kept
    other = untrained_embedded_vae()
    with pytest.raises(ValueError, match=r"^vae is not the VAE this LGM was stitched to: its "
                                         r"encoder weights differ"):
        LatentGeometryReward(latent_reward.lgm, vae=other)

    class Plain(torch.nn.Module):  # latents -> Geometry, with no record of a VAE
        def forward(self, latents):
            return latent_reward.lgm(latents)

    LatentGeometryReward(Plain())  # no vae: nothing to check
    with pytest.raises(TypeError, match=r"^vae: given, but the lgm \(Plain\) has no check_vae"):
        LatentGeometryReward(Plain(), vae=other)


def test_reward_guidance_raises_the_reward(transformer, sigmas, latent_reward):
    """Same starting noise, same model: the guided sample scores a higher geometry reward than the
    unguided one for every video. Measured over starting-noise seeds 0-4: +0.06 to +0.12 (the
    rewards are about -1.0 to -1.3); the test asks for every video higher and +0.02 on average."""
    vel = wan_velocity(transformer, embeds(2))
    x0 = noise(2, 7)
    plain = sample(vel, x0, sigmas)
    guided = sample(vel, x0, sigmas, guidance=RewardGuidance(
        latent_reward, scale=2.0, steps=(1, 5), weights={"geo": 1.0}))
    assert sorted(guided.guidance) == [1, 2, 3, 4]
    with torch.no_grad():
        r_plain = latent_reward(plain.final)["geo"]
        r_guided = latent_reward(guided.final)["geo"]
    assert bool((r_guided > r_plain).all()), (r_guided, r_plain)
    assert float((r_guided - r_plain).mean()) > 0.02, (r_guided, r_plain)


def test_guided_step_is_the_reward_gradient_on_the_predicted_clean_latent():
    """One guided Euler step with a quadratic reward, worked by hand. Velocity v = 0 at sigma
    0.25, so x0_hat = x; reward r = -|x0_hat - c|^2 / 2 has gradient -(x - c); the guided velocity
    is v - scale * s/(1-s) * grad = (scale / 3)(x - c); the Euler step to 0 moves x by
    -0.25 * that."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 3, 2, 2, generator=gen, dtype=torch.float64)
    c = torch.randn(2, 3, 3, 2, 2, generator=gen, dtype=torch.float64)

    def reward(z):
        return {"r": -0.5 * (z - c).square().flatten(1).sum(1), "other": z.sum((1, 2, 3, 4))}

    zero = lambda z, s: torch.zeros_like(z)  # noqa: E731
    out = sample(zero, x, torch.tensor([0.25, 0.0]),
                 guidance=RewardGuidance(reward, 1.5, (0, 1), {"r": 1.0, "other": 0.0}))
    torch.testing.assert_close(out.final, x - 0.25 * (1.5 / 3.0) * (x - c), rtol=0, atol=1e-12)
    torch.testing.assert_close(out.guidance[0], reward(x)["r"].float())
    # Every weight 0: the step is the plain one, and the logged total is 0.
    plain = sample(zero, x, torch.tensor([0.25, 0.0]),
                   guidance=RewardGuidance(reward, 1.5, (0, 1), {"r": 0.0}))
    assert torch.equal(plain.final, x) and torch.equal(plain.guidance[0], torch.zeros(2))
    with pytest.raises(ValueError, match=r"guidance weights name rewards \['geo'\] the reward "
                                         r"does not give \(it gives \['other', 'r'\]\)"):
        sample(zero, x, torch.tensor([0.25, 0.0]),
               guidance=RewardGuidance(reward, 1.5, (0, 1), {"geo": 1.0}))


def test_bad_schedules_and_windows(transformer, sigmas):
    vel = wan_velocity(transformer, embeds(1))
    with pytest.raises(ValueError, match=r"sde_window \(4, 9\) lies outside the schedule's 6"):
        sample(vel, noise(1), sigmas, sde_window=(4, 9))
    with pytest.raises(ValueError, match="sde_window must be a"):
        sample(vel, noise(1), sigmas, sde_window=(1,))
    # True is an int to Python, but (True, 3) is a typo, not step 1.
    with pytest.raises(ValueError, match="sde_window must be a"):
        sample(vel, noise(1), sigmas, sde_window=(True, 3))
    with pytest.raises(ValueError, match="strictly decreasing"):
        sample(vel, noise(1), torch.tensor([1.0, 0.5, 0.5, 0.0]))
    g = RewardGuidance(lambda x: {"geo": x.sum((1, 2, 3, 4))}, 1.0, (0, 2), {"geo": 1.0})
    with pytest.raises(ValueError, match="sigma = 1"):
        sample(vel, noise(1), sigmas, guidance=g)
    with pytest.raises(ValueError, match="noise_level must be >= 0"):
        sde_step(torch.zeros(1, 2), torch.zeros(1, 2), 0.5, 0.4, -1.0)
    with pytest.raises(ValueError, match="sigma > sigma_next"):
        sde_step(torch.zeros(1, 2), torch.zeros(1, 2), 0.4, 0.5, 1.0)
    with pytest.raises(ValueError, match="prompt_embeds has batch 1, latents 2"):
        vel(noise(2), 0.5)


@pytest.mark.parametrize("kw,message", [
    (dict(scale=math.nan), "scale must be a finite number, got nan"),
    (dict(scale=math.inf), "scale must be a finite number, got inf"),
    (dict(scale="2"), "scale must be a finite number"),
    (dict(scale=1.0, weights={"geo": math.nan}), "weights must map reward names to finite"),
    (dict(scale=1.0, weights={"geo": True}), "weights must map reward names to finite"),
])
def test_guidance_settings_must_be_finite(kw, message):
    """A NaN scale or weight does not fail on its own: every guided latent would become NaN."""
    with pytest.raises(ValueError, match=message):
        RewardGuidance(lambda x: {}, steps=(1, 2), **kw)
    import numpy as np

    assert RewardGuidance(lambda x: {}, np.float32(2.0), (1, 2)).scale == 2.0


def test_reward_weights_must_be_finite_and_latents_need_three_frames(latent_reward):
    for w in (math.nan, math.inf, "1", None):
        with pytest.raises(ValueError, match="weights must be finite numbers"):
            LatentGeometryReward(latent_reward.lgm, {"geo": w})
    for T in (1, 2):
        with pytest.raises(ValueError, match=f"must have T' >= 3 latent frames .* got "
                                             rf"\[1, 16, {T}, 12, 20\]"):
            latent_reward(noise(1, shape=(16, T, 12, 20)))


def test_check_wan_inputs_against_the_model(transformer):
    ok = torch.randn(2, 8, 16)
    check_wan_inputs(transformer, prompt_embeds=ok, negative_prompt_embeds=ok.clone(),
                     latent_shape=(16, 3, 12, 20), min_frames=3)
    check_wan_inputs(object(), prompt_embeds=torch.randn(1, 4, 7), latent_shape=(8, 1, 3, 3))
    cases = [
        (dict(negative_prompt_embeds=torch.randn(2, 9, 16)), "must have the shape of prompt_emb"),
        (dict(negative_prompt_embeds=ok.clone().fill_(math.inf)), "negative_prompt_embeds holds"),
        (dict(prompt_embeds=ok.long()), "floating-point tensor"),
        (dict(latent_shape=(16, 3, 12, 21)), "w = 21 is not a multiple"),
        (dict(latent_shape=(16, 2, 12, 20), min_frames=3), "T = 2 latent frames"),
        (dict(latent_shape=(16, 3, 12, 20.0)), "positive ints"),
        (dict(latent_shape=(16, True, 12, 20)), "positive ints"),
    ]
    for kw, message in cases:
        kw = {"prompt_embeds": ok, **kw}
        with pytest.raises(ValueError, match=message):
            check_wan_inputs(transformer, **kw)
