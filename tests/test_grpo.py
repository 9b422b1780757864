"""The GRPO trainer on the tiny diffusers Wan model with a LoRA adapter."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vggrpo.grpo import GRPOConfig, GRPOTrainer

from grpo_setup import make_trainer, prompt_embeds, tiny_transformer
from helpers import free_port


def test_first_update_is_on_policy_with_zero_kl():
    trainer = make_trainer()
    log = trainer.train_step()
    # Same model, same batch, same inputs: the recomputed log-probabilities are the rollout's
    # bits, so every ratio is exactly 1 and nothing is clipped.
    assert log["ratio_min"] == log["ratio_max"] == 1.0 and log["clip_fraction"] == 0.0
    # LoRA B starts at zero: the adapted model is the reference, KL exactly 0.
    assert log["kl"] == 0.0
    assert log["grad_norm"] > 0
    for key in ("reward_motion", "reward_geo", "advantage_mean", "time_rollout_s",
                "time_reward_s", "time_update_s"):
        assert key in log
    # The advantages of each group are normalised: mean 0 over the step.
    assert abs(log["advantage_mean"]) < 1e-6


def test_rollouts_with_classifier_free_guidance_use_each_prompts_negative_and_stay_on_policy():
    negative = prompt_embeds(seed=7)
    trainer = make_trainer(negative_prompt_embeds=negative, guidance_scale=4.0, group_size=2)
    model = trainer.transformer
    x = torch.randn(4, 16, 5, 12, 20, generator=torch.Generator().manual_seed(3))
    s = 0.7
    t = torch.full((4,), s * 1000)
    with torch.no_grad():
        got = trainer._velocity(torch.tensor([1, 1, 0, 0]))(x, s)
        # Written out: prompts 1, 1, 0, 0 (a group of 2 each), positive and negative run apart.
        idx = torch.tensor([1, 1, 0, 0])
        pos = model(hidden_states=x, timestep=t, encoder_hidden_states=prompt_embeds()[idx],
                    return_dict=False)[0]
        neg = model(hidden_states=x, timestep=t, encoder_hidden_states=negative[idx],
                    return_dict=False)[0]
    torch.testing.assert_close(got, neg + 4.0 * (pos - neg), rtol=1e-5, atol=1e-5)
    assert (pos - neg).abs().max() > 1e-3  # the negative prompt does change the velocity
    # The rollout and the recomputed log-probabilities make the same guided calls: on-policy.
    log = trainer.train_step()
    assert log["ratio_min"] == log["ratio_max"] == 1.0 and log["kl"] == 0.0


def test_only_lora_is_trained_and_the_kl_grows_after_updates():
    trainer = make_trainer()
    base = {n: p.detach().clone() for n, p in trainer.transformer.named_parameters()
            if "lora_" not in n}
    logs = [trainer.train_step() for _ in range(3)]
    for n, p in trainer.transformer.named_parameters():
        if "lora_" not in n:
            assert torch.equal(p, base[n]), n
    assert logs[-1]["kl"] > 0


def test_short_run_raises_the_mean_reward():
    """Seeded: 30 steps, 2 prompts x 8 videos, lr 2e-2. The rewards of ODE samples from fixed
    evaluation noise, before vs after. Measured for training seeds 0, 1, 2, 3 (one SDE generator
    per video): motion rose by 0.024, 0.018, 0.025, 0.011 and geometry by 0.081, -0.024, 0.010,
    0.046. This test runs seed 0 and asks for motion + geo to rise by at least 0.05."""
    trainer = make_trainer(group_size=8, steps=30, lr=2e-2, seed=0)
    before = trainer.evaluate()
    trainer.train(progress=False)
    after = trainer.evaluate()
    gain = (after["motion"] + after["geo"]) - (before["motion"] + before["geo"])
    assert gain > 0.05, (before, after)


def test_each_trainer_gets_its_own_default_config_and_a_wrong_kind_is_refused():
    from vggrpo import LatentGeometryReward
    from vggrpo.defaults import load_default_lgm

    reward = LatentGeometryReward(load_default_lgm())
    first = GRPOTrainer(tiny_transformer(), reward, prompt_embeds())
    first.config.lr = 0.5
    second = GRPOTrainer(tiny_transformer(), reward, prompt_embeds())
    assert second.config is not first.config and second.config == GRPOConfig()
    with pytest.raises(TypeError, match="config: expected a GRPOConfig, got dict"):
        GRPOTrainer(tiny_transformer(), reward, prompt_embeds(), {"lr": 1e-3})


# alpha / r = 3: the LoRA file's B * 3 / 3 is not B in every float32 bit, so the trainer resumes
# from its own unfolded copy (vggrpo.lora_file) and is exact all the same.
@pytest.mark.parametrize("overrides", [{}, {"lora_rank": 2, "lora_alpha": 6.0}],
                         ids=["alpha-is-rank", "alpha-3-rank"])
def test_resume_reproduces_the_uninterrupted_run(tmp_path, overrides):
    straight = make_trainer(**overrides)
    logs = straight.train(3, progress=False)
    first = make_trainer(**overrides)
    first.train(2, out_dir=tmp_path, progress=False)
    resumed = make_trainer(**overrides)  # a fresh process: same init, state from the checkpoint
    resumed.load_checkpoint(tmp_path)
    assert resumed.step_index == 2
    log = resumed.train_step()
    skip = {"time_rollout_s", "time_reward_s", "time_update_s", "peak_memory_bytes"}
    assert {k: v for k, v in log.items() if k not in skip} == \
        {k: v for k, v in logs[2].items() if k not in skip}
    a, b = straight.lora_state_dict(), resumed.lora_state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="cannot resume"):
        make_trainer(**overrides, lr=5e-3).load_checkpoint(tmp_path)


def _torchrun(n: int, out: Path) -> None:
    out.mkdir()
    script = Path(__file__).parent / "scripts" / "grpo_worker.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n),
           "--master_port", str(free_port()), str(script), str(out)]
    if n == 1:
        cmd = [sys.executable, str(script), str(out)]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def test_lora_state_dict_is_the_adapter_itself_under_peft_keys():
    """peft's keys (the LoRA file's), and the parameters' own memory: writing into it (a resume,
    the EMA's evaluation) writes the adapter. peft 0.22's get_peft_model_state_dict returns
    gathered copies of sharded parameters, which made resuming an FSDP run load into copies."""
    from peft.utils import get_peft_model_state_dict

    trainer = make_trainer()
    own = trainer.lora_state_dict()
    assert set(own) == set(get_peft_model_state_dict(trainer.transformer)) and len(own) == 32
    assert sorted(v.data_ptr() for v in own.values()) == sorted(p.data_ptr()
                                                               for p in trainer.params)
    key = "blocks.0.attn1.to_q.lora_B.weight"
    with torch.no_grad():
        own[key].fill_(0.25)
    block = trainer.transformer.blocks[0].attn1.to_q
    assert (block.lora_B["default"].weight == 0.25).all()


def test_two_gloo_processes_match_one(tmp_path):
    """torchrun with 2 CPU processes (gloo), one prompt group each, gives the same LoRA gradients
    on both ranks as one process training both groups."""
    _torchrun(1, tmp_path / "one")
    _torchrun(2, tmp_path / "two")
    single = load_file(tmp_path / "one" / "grads-rank0.safetensors")
    ranks = [load_file(tmp_path / "two" / f"grads-rank{r}.safetensors") for r in (0, 1)]
    assert set(single) == set(ranks[0]) == set(ranks[1])
    for k in single:
        assert torch.equal(ranks[0][k], ranks[1][k]), k  # DDP-style: identical on every rank
        assert torch.allclose(ranks[0][k], single[k], rtol=1e-4, atol=1e-9), k
    logs = [json.loads((tmp_path / "two" / f"log-rank{r}.json").read_text()) for r in (0, 1)]
    one = json.loads((tmp_path / "one" / "log-rank0.json").read_text())
    # Rewards were all-gathered: every rank logs the mean over both groups.
    assert logs[0]["reward_geo"] == logs[1]["reward_geo"]
    assert logs[0]["reward_geo"] == pytest.approx(one["reward_geo"], abs=1e-5)


def test_bad_configurations_are_clear_errors():
    with pytest.raises(ValueError, match="group_size must be an int >= 2"):
        GRPOConfig(group_size=1)
    with pytest.raises(ValueError, match=r"sde_window \(3, 12\) lies outside the schedule's 10"):
        GRPOConfig(sde_window=(3, 12))
    # The sampler's rule, at construction: a non-int or odd-length window used to pass the config
    # (or read as "lies outside") and fail only inside the first rollout.
    for window in ((0.5, 2), (0, 1, 2), (False, 2), 3, None):
        with pytest.raises(ValueError, match=r"sde_window must be a \(start, end\) pair"):
            GRPOConfig(sde_window=window)
    for targets in ("to_q", (), ("to_q", 3), None):
        with pytest.raises(ValueError, match="lora_targets must be a non-empty list of module"):
            GRPOConfig(lora_targets=targets)
    for shape in (16, (16, 5, 12), None):
        with pytest.raises(ValueError, match=r"latent_shape must be \(C, T, h, w\)"):
            GRPOConfig(latent_shape=shape)
    # TOML / YAML lists are taken as tuples.
    cfg = GRPOConfig(sde_window=[0, 2], lora_targets=["to_q"], latent_shape=[16, 5, 12, 20])
    assert (cfg.sde_window, cfg.lora_targets, cfg.latent_shape) == ((0, 2), ("to_q",),
                                                                    (16, 5, 12, 20))
    with pytest.raises(ValueError, match="no modules named"):
        make_trainer(lora_targets=("q_proj",))
    with pytest.raises(ValueError, match="clip_eps must be a finite number > 0"):
        GRPOConfig(clip_eps=0.0)


@pytest.mark.parametrize("field,value,message", [
    ("lr", math.inf, "lr must be a finite number > 0, got inf"),
    ("lr", "1e-4", "lr must be a finite number > 0, got '1e-4'"),
    ("grad_clip", math.nan, "grad_clip must be a finite number > 0"),
    ("shift", 0.0, "shift must be a finite number > 0"),
    ("lora_alpha", math.nan, "lora_alpha must be a finite number > 0"),
    ("lora_alpha", 0.0, "lora_alpha must be a finite number > 0"),
    ("kl_beta", math.inf, "kl_beta must be a finite number >= 0"),
    ("noise_level", -0.1, "noise_level must be a finite number >= 0"),
    ("guidance_scale", math.nan, "guidance_scale must be a finite number"),
    ("latent_shape", (16, 5, 0, 20), r"latent_shape must be \(C, T, h, w\) of positive ints"),
    ("latent_shape", (16, 5, 12), r"latent_shape must be \(C, T, h, w\)"),
])
def test_non_finite_and_out_of_range_settings_are_refused(field, value, message):
    """A NaN/inf learning rate, alpha or guidance scale would not fail: it would train NaNs."""
    with pytest.raises(ValueError, match=message):
        GRPOConfig(**{field: value})


@pytest.mark.parametrize("overrides,embeds,message", [
    ({"latent_shape": (16, 2, 12, 20)}, None, "T = 2 latent frames; at least 3"),
    ({"latent_shape": (8, 5, 12, 20)}, None, "C = 8 channels but the model takes 16"),
    ({"latent_shape": (16, 5, 13, 20)}, None, r"h = 13 is not a multiple of the model's patch "
                                              r"size \(1, 2, 2\)"),
    ({}, torch.randn(2, 8, 7), "width D = 7 but the model's text_dim is 16"),
    ({}, torch.randn(2, 16), r"prompt_embeds must be a floating-point tensor \[P,L,D\]"),
    ({}, torch.full((2, 8, 16), math.nan), "prompt_embeds holds NaN or inf"),
])
def test_inputs_that_do_not_fit_the_model_are_refused_before_any_rollout(overrides, embeds,
                                                                          message):
    """Each of these used to fail only inside the model (or, for T < 3, in the reward) after the
    first rollout, with a shape error naming none of the arguments."""
    from vggrpo import LatentGeometryReward
    from vggrpo.defaults import load_default_lgm

    kw = dict(group_size=2, num_inference_steps=3, sde_window=(0, 2), lora_rank=2,
              lora_alpha=2.0, **overrides)
    with pytest.raises(ValueError, match=message):
        GRPOTrainer(tiny_transformer(), LatentGeometryReward(load_default_lgm()),
                    prompt_embeds() if embeds is None else embeds, GRPOConfig(**kw))


def test_a_reward_of_other_latents_is_refused_before_any_rollout():
    """A 48-channel model (Wan2.2 TI2V's VAE) with the shipped 16-channel LGM, or with the RGB
    baseline decoding through the 16-channel tiny VAE: refused when the trainer is built, not by
    a shape error inside the reward after the first rollout."""
    from diffusers import WanTransformer3DModel

    from vggrpo import LatentGeometryReward, RGBGeometryReward
    from vggrpo.defaults import TINY_WAN_TRANSFORMER_CONFIG, load_default_lgm, load_tiny_wan_vae

    transformer = WanTransformer3DModel(**{**TINY_WAN_TRANSFORMER_CONFIG, "in_channels": 48,
                                           "out_channels": 48})
    kw = dict(group_size=2, num_inference_steps=3, sde_window=(0, 2), lora_rank=2,
              lora_alpha=2.0, latent_shape=(48, 3, 12, 20))
    lgm = load_default_lgm()
    for reward, reader, fix in (
            (LatentGeometryReward(lgm), "LGM reads", "stitch an LGM to this model's VAE"),
            (RGBGeometryReward(load_tiny_wan_vae(), lgm.backbone), "VAE decodes",
             "pass this model's VAE")):
        with pytest.raises(ValueError, match=rf"^reward: its {reader} 16-channel latents but the "
                                             rf"model makes 48-channel ones \(latent_shape "
                                             rf"\(48, 3, 12, 20\)\): {fix}"):
            GRPOTrainer(transformer, reward, prompt_embeds(), GRPOConfig(**kw))


def test_a_reward_on_another_device_is_refused_before_any_rollout():
    """The meta device stands in for a GPU: a reward left on another device than the model is
    refused when the trainer is built, not by a device error after the first rollout."""
    from vggrpo import LatentGeometryReward
    from vggrpo.defaults import load_default_lgm

    kw = dict(group_size=2, num_inference_steps=3, sde_window=(0, 2), lora_rank=2,
              lora_alpha=2.0)
    with pytest.raises(ValueError, match=r"^reward: its weights are on meta but the model is on "
                                         r"cpu; move it first \(reward.to\('cpu'\)\)"):
        GRPOTrainer(tiny_transformer(), LatentGeometryReward(load_default_lgm().to("meta")),
                    prompt_embeds(), GRPOConfig(**kw))


def test_prompts_must_split_across_ranks(monkeypatch):
    import vggrpo.grpo as grpo

    monkeypatch.setattr(grpo, "_dist", lambda: (0, 2))
    with pytest.raises(ValueError, match=r"prompts_per_step \(3\) must be divisible by the "
                                         r"number of ranks \(2\)"):
        make_trainer(prompts_per_step=3)


def test_bfloat16_model_keeps_the_ratio_exactly_one():
    """The Flow-GRPO complaint "ratio != 1 under bf16": the model runs in bfloat16, the SDE math
    and the adapters in float32, and rollout and update call the model on the same batch, so the
    first update's ratios are still exactly 1."""
    from vggrpo import LatentGeometryReward
    from vggrpo.defaults import load_default_lgm

    transformer = tiny_transformer().to(torch.bfloat16)
    torch.manual_seed(1)
    trainer = GRPOTrainer(transformer, LatentGeometryReward(load_default_lgm()), prompt_embeds(),
                          GRPOConfig(group_size=2, prompts_per_step=2, num_inference_steps=4,
                                     sde_window=(0, 2), lora_rank=4, lora_alpha=4.0))
    assert all(p.dtype == torch.float32 for p in trainer.params)
    log = trainer.train_step()
    assert log["ratio_min"] == log["ratio_max"] == 1.0 and log["kl"] == 0.0
    assert log["grad_norm"] > 0


def test_several_updates_per_rollout_are_clipped():
    """The second update on the same rollout is off-policy: its ratios leave 1 and, with a small
    clip range, some are clipped (the clip zeroes their gradient)."""
    trainer = make_trainer(updates_per_rollout=1, lr=5e-2, clip_eps=1e-4)
    ro = trainer.rollout(0)
    adv, _ = trainer.advantages(trainer.score(ro.final))
    first = trainer.update(ro, adv)
    second = trainer.update(ro, adv)
    assert first["ratio_min"] == first["ratio_max"] == 1.0 and first["clip_fraction"] == 0.0
    assert second["ratio_max"] > 1.0 or second["ratio_min"] < 1.0
    assert second["clip_fraction"] > 0.0
    log = make_trainer(updates_per_rollout=2).train_step()
    assert log["ratio_max"] != 1.0 or log["ratio_min"] != 1.0
    with pytest.raises(ValueError, match="updates_per_rollout must be a positive int"):
        GRPOConfig(updates_per_rollout=0)
