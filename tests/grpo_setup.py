"""The tiny GRPO setup shared by tests/test_grpo.py and tests/scripts/grpo_worker.py."""

import torch

from vggrpo.defaults import TINY_WAN_TRANSFORMER_CONFIG as TINY_WAN  # noqa: F401 (re-export)
from vggrpo.defaults import tiny_wan_transformer as tiny_transformer


def prompt_embeds(P: int = 2, seed: int = 0):
    return torch.randn(P, 8, 16, generator=torch.Generator().manual_seed(seed))


def make_trainer(negative_prompt_embeds=None, *, dtype=torch.float32, reward=None, **overrides):
    """The tiny trainer: ``overrides`` are GRPOConfig fields; ``dtype`` the base model's;
    ``reward`` default: the embedded LGM's latent reward."""
    from vggrpo import LatentGeometryReward
    from vggrpo.defaults import load_default_lgm
    from vggrpo.grpo import GRPOConfig, GRPOTrainer

    kw = dict(group_size=4, prompts_per_step=2, num_inference_steps=6, sde_window=(0, 3),
              steps=4, lr=1e-2, lora_rank=4, lora_alpha=4.0, seed=0)
    kw.update(overrides)
    transformer = tiny_transformer()
    if dtype != torch.float32:
        transformer = transformer.to(dtype)
    reward = LatentGeometryReward(load_default_lgm()) if reward is None else reward
    torch.manual_seed(1)  # LoRA A is initialised from the global generator
    return GRPOTrainer(transformer, reward, prompt_embeds(), GRPOConfig(**kw),
                       negative_prompt_embeds=negative_prompt_embeds)
