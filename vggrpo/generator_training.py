"""Training a small diffusers ``WanTransformer3DModel`` from scratch by flow matching: the demo's
tiny base generator (:data:`BASE_GENERATOR_CONFIG`), trained on the embedded VAE's latents of
prompted box-room worlds (:mod:`vggrpo.data.worlds`), flaws included.

Flow matching as the sampler (:mod:`vggrpo.sampling`) and Wan use it: for a clean latent ``x0``
(normalised, ``[C,T,h,w]``), noise ``eps`` and a noise level ``s`` in (0, 1), the model sees
``x_s = (1 - s) x0 + s eps`` at timestep ``1000 s`` and is trained to predict the velocity
``eps - x0`` (mean squared error). ``s`` is drawn as ``shift u / (1 + (shift - 1) u)`` with ``u``
logit-normal (``sigmoid`` of a standard normal): the distribution of the levels that a
``FlowMatchEulerDiscreteScheduler(shift=shift)`` samples with, so training spends its effort
where sampling does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List

import torch
import torch.nn.functional as F
from torch import Tensor

from ._checks import DictConfig, check_fields
from .schedules import finite_loss, warmup_cosine

__all__ = ["BASE_GENERATOR_CONFIG", "GeneratorTrainingConfig", "flow_matching_levels",
           "train_base_generator"]

#: The base generator: Wan2.1's transformer (patch 1x2x2, 16 latent channels, RoPE, QK norm,
#: cross-attention to 16-dim "prompt" tokens) at width 128 (4 heads of 32) and 4 blocks.
BASE_GENERATOR_CONFIG: Dict[str, Any] = {
    "patch_size": [1, 2, 2], "num_attention_heads": 4, "attention_head_dim": 32,
    "in_channels": 16, "out_channels": 16, "text_dim": 16, "freq_dim": 64, "ffn_dim": 512,
    "num_layers": 4, "cross_attn_norm": True, "qk_norm": "rms_norm_across_heads",
    "rope_max_seq_len": 32,
}


@dataclass
class GeneratorTrainingConfig(DictConfig):
    """Hyper-parameters of :func:`train_base_generator`: ``steps`` AdamW steps of ``batch``
    latents at ``lr`` (``warmup_steps`` of linear warm-up, then a cosine to 0), weight decay
    ``weight_decay``; noise levels with ``shift`` (:func:`flow_matching_levels`); ``seed`` draws
    the batches, levels and noise."""

    steps: int = 3000
    batch: int = 16
    lr: float = 5e-4
    warmup_steps: int = 100
    weight_decay: float = 0.01
    shift: float = 3.0
    seed: int = 0

    def __post_init__(self) -> None:
        check_fields(self, "positive int", ("steps", "batch"))
        check_fields(self, "int >= 0", ("warmup_steps",))
        check_fields(self, "int", ("seed",))
        check_fields(self, "finite number > 0", ("lr", "shift"))
        check_fields(self, "finite number >= 0", ("weight_decay",))


def flow_matching_levels(count: int, shift: float, generator: torch.Generator) -> Tensor:
    """``count`` noise levels in (0, 1) (float32 ``[count]``): ``shift u / (1 + (shift - 1) u)``,
    ``u = sigmoid(n)``, ``n ~ N(0, 1)``."""
    u = torch.sigmoid(torch.randn(count, generator=generator))
    return shift * u / (1.0 + (shift - 1.0) * u)


def _check_data(latents: Tensor, prompts: Tensor, prompt_embeds: Tensor, transformer) -> None:
    C = int(transformer.config.in_channels)
    if not isinstance(latents, Tensor) or latents.dim() != 5 or latents.shape[1] != C:
        got = list(latents.shape) if isinstance(latents, Tensor) else type(latents).__name__
        raise ValueError(f"latents must be a [N,{C},T,h,w] tensor (the model's in_channels), "
                         f"got {got}")
    if not latents.is_floating_point() or not bool(torch.isfinite(latents).all()):
        raise ValueError("latents must be finite floating-point values")
    if not isinstance(prompt_embeds, Tensor) or prompt_embeds.dim() != 3 or \
            prompt_embeds.shape[-1] != int(transformer.config.text_dim):
        got = list(prompt_embeds.shape) if isinstance(prompt_embeds, Tensor) else \
            type(prompt_embeds).__name__
        raise ValueError(f"prompt_embeds must be [P,L,{transformer.config.text_dim}] (the "
                         f"model's text_dim), got {got}")
    if not prompt_embeds.is_floating_point() or not bool(torch.isfinite(prompt_embeds).all()):
        raise ValueError("prompt_embeds must be finite floating-point values")
    P = prompt_embeds.shape[0]
    if (not isinstance(prompts, Tensor) or prompts.shape != (latents.shape[0],)
            or prompts.is_floating_point() or bool((prompts < 0).any())
            or bool((prompts >= P).any())):
        got = list(prompts.shape) if isinstance(prompts, Tensor) else type(prompts).__name__
        raise ValueError(f"prompts must be [N={latents.shape[0]}] integer indices in [0, {P}), "
                         f"got {got}")


def train_base_generator(transformer, latents: Tensor, prompts: Tensor, prompt_embeds: Tensor,
                         config: GeneratorTrainingConfig = GeneratorTrainingConfig(), *,
                         progress: bool = False) -> List[Dict[str, float]]:
    """Train ``transformer`` (a ``WanTransformer3DModel``, float32) by flow matching, in place.

    Args:
        latents: ``[N,C,T,h,w]`` float, normalised latents (:func:`vggrpo.vae.encode_video`).
        prompts: ``[N]`` int64, the prompt of each latent (a row of ``prompt_embeds``).
        prompt_embeds: ``[P,L,D]`` float, ``D`` the model's ``text_dim``.
        config: :class:`GeneratorTrainingConfig`.
    Returns:
        One dict per step: ``step``, ``loss`` (the batch's mean squared velocity error).
    Leaves the model in eval mode. Raises FloatingPointError on a non-finite loss.
    """
    from tqdm.auto import tqdm

    _check_data(latents, prompts, prompt_embeds, transformer)
    dtype = next(transformer.parameters()).dtype
    transformer.train()
    opt = torch.optim.AdamW(transformer.parameters(), lr=config.lr,
                            weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: warmup_cosine(s, config.warmup_steps, config.steps))
    gen = torch.Generator().manual_seed(config.seed)
    history: List[Dict[str, float]] = []
    bar = tqdm(range(config.steps), desc="generator", disable=not progress, leave=False)
    for step in bar:
        idx = torch.randint(0, latents.shape[0], (config.batch,), generator=gen)
        x0 = latents[idx].float()
        eps = torch.randn(x0.shape, generator=gen)
        s = flow_matching_levels(config.batch, config.shift, gen)
        sb = s.view(-1, 1, 1, 1, 1)
        xs = (1.0 - sb) * x0 + sb * eps
        v = transformer(hidden_states=xs.to(dtype), timestep=s * 1000.0,
                        encoder_hidden_states=prompt_embeds[prompts[idx]].to(dtype),
                        return_dict=False)[0]
        loss = F.mse_loss(v.float(), eps - x0)
        value = finite_loss(loss, "train_base_generator", step, "GeneratorTrainingConfig.lr",
                            config.lr)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(transformer.parameters(), 1.0)
        opt.step()
        sched.step()
        history.append({"step": step, "loss": value})
        bar.set_postfix(loss=f"{value:.3f}")
    transformer.eval()
    return history
