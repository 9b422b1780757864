"""The tiny GRPO setup shared by tests/test_grpo.py and tests/scripts/grpo_worker.py."""

import torch

# diffusers' own test size of the Wan transformer, with Wan2.1's 16 latent channels.
TINY_WAN = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12,
                in_channels=16, out_channels=16, text_dim=16, freq_dim=256, ffn_dim=32,
                num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
                rope_max_seq_len=32)


def tiny_transformer(seed: int = 0):
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    return WanTransformer3DModel(**TINY_WAN)


def prompt_embeds(P: int = 2, seed: int = 0):
    return torch.randn(P, 8, 16, generator=torch.Generator().manual_seed(seed))


def make_trainer(**overrides):
    from vggrpo import LatentGeometryReward
    from vggrpo.defaults import load_default_lgm
    from vggrpo.grpo import GRPOConfig, GRPOTrainer

    kw = dict(group_size=4, prompts_per_step=2, num_inference_steps=6, sde_window=(0, 3),
              steps=4, lr=1e-2, lora_rank=4, lora_alpha=4.0, seed=0)
    kw.update(overrides)
    transformer = tiny_transformer()
    torch.manual_seed(1)  # LoRA A is initialised from the global generator
    return GRPOTrainer(transformer, LatentGeometryReward(load_default_lgm()), prompt_embeds(),
                       GRPOConfig(**kw))
