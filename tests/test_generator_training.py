"""Training a Wan transformer by flow matching (vggrpo.generator_training): the noise levels'
distribution, that a trained model samples what its prompt was shown, reproducibility, and
one-line errors."""

import pytest
import torch

from vggrpo.generator_training import (
    GeneratorTrainingConfig,
    flow_matching_levels,
    train_base_generator,
)
from vggrpo.sampling import sample, wan_velocity
from vggrpo.wan_architectures import TINY_WAN_CONFIG


def _tiny(seed=0):
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    return WanTransformer3DModel(**{**TINY_WAN_CONFIG, "ffn_dim": 64})


def _data():
    g = torch.Generator().manual_seed(0)
    patterns = torch.randn(2, 16, 2, 4, 4, generator=g)
    prompts = torch.arange(16) % 2
    return patterns, patterns[prompts], prompts, torch.randn(2, 8, 16, generator=g)


@pytest.mark.parametrize("shift, median", [(1.0, 0.5), (3.0, 0.75)])
def test_noise_levels_follow_the_shifted_logit_normal(shift, median):
    s = flow_matching_levels(40000, shift, torch.Generator().manual_seed(0))
    assert s.dtype == torch.float32 and bool(((s > 0) & (s < 1)).all())
    # sigmoid(N(0,1)) has median 1/2 and the shift map is increasing: median shift / (1 + shift).
    assert abs(float(s.median()) - median) < 0.01


def test_a_trained_model_samples_the_pattern_of_its_prompt():
    patterns, latents, prompts, embeds = _data()
    model = _tiny()
    history = train_base_generator(model, latents, prompts, embeds, GeneratorTrainingConfig(
        steps=600, batch=8, lr=1e-2, warmup_steps=20, weight_decay=0.0))
    assert len(history) == 600 and not model.training
    late = sum(h["loss"] for h in history[-50:]) / 50
    assert late < 0.5 * history[0]["loss"]
    # Plain Euler on s = 1, 0.9, ..., 0 from fresh noise, the trained velocity.
    sigmas = torch.linspace(1, 0, 11, dtype=torch.float64)
    noise = torch.randn(4, 16, 2, 4, 4, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        out = sample(wan_velocity(model, embeds[[0, 1, 0, 1]]), noise, sigmas).final
    for i, p in enumerate([0, 1, 0, 1]):
        own = float((out[i] - patterns[p]).pow(2).mean())
        other = float((out[i] - patterns[1 - p]).pow(2).mean())
        assert own < 0.6 * other, (i, own, other)


def test_training_is_reproducible():
    _, latents, prompts, embeds = _data()
    config = GeneratorTrainingConfig(steps=3, batch=4, seed=7)
    a, b = _tiny(), _tiny()
    train_base_generator(a, latents, prompts, embeds, config)
    train_base_generator(b, latents, prompts, embeds, config)
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("kwargs, match", [
    (dict(steps=0), "GeneratorTrainingConfig.steps"),
    (dict(lr=float("nan")), "GeneratorTrainingConfig.lr"),
    (dict(shift=0), "GeneratorTrainingConfig.shift"),
    (dict(weight_decay=-1), "GeneratorTrainingConfig.weight_decay"),
])
def test_bad_configs_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GeneratorTrainingConfig(**kwargs)


@pytest.mark.parametrize("change, match", [
    (lambda d: {**d, "latents": d["latents"][:, :8]}, r"latents must be a \[N,16,T,h,w\]"),
    (lambda d: {**d, "latents": d["latents"] * float("nan")}, "latents must be finite"),
    (lambda d: {**d, "prompts": d["prompts"] + 1}, r"prompts must be \[N=16\] integer indices"),
    (lambda d: {**d, "prompts": d["prompts"].float()}, "prompts must be"),
    (lambda d: {**d, "prompt_embeds": d["prompt_embeds"][..., :8]},
     r"prompt_embeds must be \[P,L,16\]"),
    (lambda d: {**d, "prompt_embeds": d["prompt_embeds"] * float("inf")},
     "prompt_embeds must be finite"),
])
def test_bad_data_is_named(change, match):
    _, latents, prompts, embeds = _data()
    data = change({"latents": latents, "prompts": prompts, "prompt_embeds": embeds})
    with pytest.raises(ValueError, match=match):
        train_base_generator(_tiny(), config=GeneratorTrainingConfig(steps=1), **data)


def test_a_non_finite_loss_stops_training_by_name():
    _, latents, prompts, embeds = _data()
    model = _tiny()
    with torch.no_grad():
        model.proj_out.bias.fill_(float("nan"))  # as a corrupt checkpoint would
    with pytest.raises(FloatingPointError, match=r"train_base_generator: the loss became nan at "
                                                 r"step 0; lower GeneratorTrainingConfig.lr"):
        train_base_generator(model, latents, prompts, embeds, GeneratorTrainingConfig(steps=2))
