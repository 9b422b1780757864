"""The real Wan video transformers' diffusers configurations, to build them with random weights
(nothing is downloaded): for benchmarks and memory planning at the paper's scale.

Each entry is the ``WanTransformer3DModel`` config of a released checkpoint's ``transformer/``
folder (the Wan team's own sizes: width, FFN, heads, layers; diffusers' names), with the latent
shape a video of that model has at its usual resolution:

=================  ======  =====  =====  ======  ========  ===========================
arch               width   FFN    heads  layers  channels  latent (C, T, h, w)
=================  ======  =====  =====  ======  ========  ===========================
``wan2.1-1.3b``    1536    8960   12     30      16        16x21x60x104 (81 x 480x832)
``wan2.2-5b``      3072    14336  24     30      48        48x31x44x80 (121 x 704x1280)
``wan2.1-14b``     5120    13824  40     40      16        16x21x60x104 (81 x 480x832)
``tiny``           diffusers' test size (:data:`TINY_WAN_CONFIG`)
=================  ======  =====  =====  ======  ========  ===========================

Text embeddings are ``[P, 512, 4096]`` (umT5-XXL) for the real ones.
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

import torch

__all__ = ["TINY_WAN_CONFIG", "WAN_ARCHITECTURES", "LATENT_SHAPES", "TEXT_SHAPES",
           "wan_transformer_config", "build_wan_transformer", "tokens_per_video"]


def _wan(heads: int, ffn: int, layers: int, channels: int) -> Dict[str, Any]:
    return {"patch_size": (1, 2, 2), "num_attention_heads": heads, "attention_head_dim": 128,
            "in_channels": channels, "out_channels": channels, "text_dim": 4096, "freq_dim": 256,
            "ffn_dim": ffn, "num_layers": layers, "cross_attn_norm": True,
            "qk_norm": "rms_norm_across_heads", "eps": 1e-6, "image_dim": None,
            "added_kv_proj_dim": None, "rope_max_seq_len": 1024}


#: diffusers' own test size of WanTransformer3DModel, with Wan2.1's 16 latent channels: the
#: video model of the demo and the tests (``vggrpo.defaults.tiny_wan_transformer``).
TINY_WAN_CONFIG: Dict[str, Any] = {
    "patch_size": [1, 2, 2], "num_attention_heads": 2, "attention_head_dim": 12,
    "in_channels": 16, "out_channels": 16, "text_dim": 16, "freq_dim": 256, "ffn_dim": 32,
    "num_layers": 2, "cross_attn_norm": True, "qk_norm": "rms_norm_across_heads",
    "rope_max_seq_len": 32,
}

#: arch -> WanTransformer3DModel config (the released checkpoints').
WAN_ARCHITECTURES: Dict[str, Dict[str, Any]] = {
    "wan2.1-1.3b": _wan(12, 8960, 30, 16),
    "wan2.2-5b": _wan(24, 14336, 30, 48),
    "wan2.1-14b": _wan(40, 13824, 40, 16),
}

#: arch -> the latent ``(C, T, h, w)`` of one video at the model's usual size.
LATENT_SHAPES: Dict[str, Tuple[int, int, int, int]] = {
    "tiny": (16, 5, 12, 20),
    "wan2.1-1.3b": (16, 21, 60, 104),
    "wan2.2-5b": (48, 31, 44, 80),
    "wan2.1-14b": (16, 21, 60, 104),
}

#: arch -> the text embeddings' ``(L, D)`` of one prompt.
TEXT_SHAPES: Dict[str, Tuple[int, int]] = {
    "tiny": (8, 16), "wan2.1-1.3b": (512, 4096), "wan2.2-5b": (512, 4096),
    "wan2.1-14b": (512, 4096),
}


def wan_transformer_config(arch: str) -> Dict[str, Any]:
    """The ``WanTransformer3DModel`` config of ``arch`` (a key of :data:`LATENT_SHAPES`)."""
    if arch == "tiny":
        return dict(TINY_WAN_CONFIG)
    if arch not in WAN_ARCHITECTURES:
        raise ValueError(f"arch: expected one of {sorted(LATENT_SHAPES)}, got {arch!r}")
    return dict(WAN_ARCHITECTURES[arch])


def build_wan_transformer(arch: str, dtype: torch.dtype = torch.bfloat16,
                          device: torch.device | str = "cpu", seed: int = 0):
    """``WanTransformer3DModel`` of ``arch`` with random weights (seeded), built directly in
    ``dtype`` on ``device`` (so a 14B model never exists in float32 first). Eval mode."""
    from diffusers import WanTransformer3DModel

    config = wan_transformer_config(arch)
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = WanTransformer3DModel(**config)
    finally:
        torch.set_default_dtype(previous)
    return model.eval()


def tokens_per_video(config: Dict[str, Any], latent_shape: Tuple[int, int, int, int]) -> int:
    """Transformer tokens of one video: the latent's ``T, h, w`` over the patch size."""
    pt, ph, pw = config["patch_size"]
    _, T, h, w = latent_shape
    return (T // pt) * (h // ph) * (w // pw)
