"""One full GRPO step of a real Wan architecture with random weights, timed and measured phase by
phase: what ``vggrpo bench grpo`` runs.

The video model is built from its diffusers configuration
(:mod:`vggrpo.wan_architectures`; nothing is downloaded), with a LoRA of ``lora_rank`` /
``lora_alpha`` on ``to_q``/``to_k``/``to_v``/``to_out.0`` (Flow-GRPO's Wan recipe). The reward
is the latent reward of an LGM with random weights that reads the architecture's latent channels
(a tiny backbone of the embedded default's size behind a connector): its cost is the LGM's,
its values are meaningless. Prompt embeddings are random, of the real text encoder's shape.

Each phase (rollout, reward, update) is timed and its peak memory read on its own: CUDA
``max_memory_allocated`` on a GPU, the process's peak RSS on a Linux CPU
(:func:`vggrpo.step_log.peak_memory`), with the memory held when the phase began (the model,
the kept trajectory) and the difference, the phase's own extra peak. On the CPU the process
first asks glibc to return every freed block of 64 KiB or more at once, so that the RSS follows
the live tensors (as bench/conftest.py does for the op benchmarks). Throughput is in
transformer tokens: a video of latent ``(C, T, h, w)`` is ``T/pt * h/ph * w/pw`` tokens.
"""

from __future__ import annotations

import platform
import time
from typing import Any, Dict, Optional, Tuple

import torch

from ._nvtx import nvtx_range
from .step_log import current_memory, peak_memory, reset_peak_memory
from .wan_architectures import (
    LATENT_SHAPES,
    TEXT_SHAPES,
    build_wan_transformer,
    tokens_per_video,
    wan_transformer_config,
)

__all__ = ["bench_grpo_step"]

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _glibc():
    """glibc, when this process has it (Linux), else None."""
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_grpo_step(arch: str = "tiny", *, latent_shape: Optional[Tuple[int, ...]] = None,
                    group: int = 8, steps: int = 10, window: Tuple[int, int] = (0, 2),
                    micro_batch: Optional[int] = 1, checkpointing: bool = True,
                    dtype: str = "bfloat16", device: Optional[str] = None,
                    lora_rank: int = 32, lora_alpha: float = 64.0, seed: int = 0
                    ) -> Dict[str, Any]:
    """Build ``arch``, run one GRPO step of one prompt group (module docstring) and return what
    was measured: the settings, per phase ``{"seconds", "peak_memory_bytes"}``, the step's
    totals, and ``tokens_per_second`` (the group's video tokens over the step's time; and per
    phase, the tokens the transformer processed: ``steps`` forward passes a video in the
    rollout, 2 per window step in the update's reference and policy passes).

    Settings are checked as :class:`~vggrpo.grpo.GRPOConfig` and
    :class:`~vggrpo.grpo.GRPOTrainer` check them (one ValueError each), before the model is
    built, except those that need the model.
    """
    from . import LatentGeometryModel, LatentGeometryReward, LGMConfig
    from .geometry import TinyVGGT, TinyVGGTConfig
    from .grpo import GRPOConfig, GRPOTrainer

    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    config_of_model = wan_transformer_config(arch)
    latent = tuple(latent_shape or LATENT_SHAPES[arch])
    # The trainer's own checks, before a model of billions of parameters is built.
    config = GRPOConfig(group_size=group, prompts_per_step=1, num_inference_steps=steps,
                        sde_window=tuple(window), latent_shape=latent,
                        micro_batch_size=micro_batch, gradient_checkpointing=checkpointing,
                        lora_rank=lora_rank, lora_alpha=lora_alpha, seed=seed, steps=1)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    libc = _glibc() if dev.type == "cpu" else None
    if libc is not None:
        # A CPU peak RSS follows the live tensors only when glibc hands every freed block of
        # 64 KiB or more back at once (M_MMAP_THRESHOLD); else a phase reuses what the one
        # before freed and reads as needing nothing. This process only benchmarks.
        libc.mallopt(-3, 64 * 1024)

    t0 = time.perf_counter()
    transformer = build_wan_transformer(arch, _DTYPES[dtype], dev, seed=seed)
    build_s = time.perf_counter() - t0
    backbone = TinyVGGT(TinyVGGTConfig())  # the embedded default's size, random weights
    lgm = LatentGeometryModel(backbone, LGMConfig(latent_channels=latent[0],
                                                  token_dim=backbone.dim))
    reward = LatentGeometryReward(lgm.to(dev))
    L, D = TEXT_SHAPES[arch]
    embeds = torch.randn(1, L, D, generator=torch.Generator().manual_seed(seed))
    trainer = GRPOTrainer(transformer, reward, embeds, config)

    phases: Dict[str, Dict[str, Any]] = {}

    def phase(name, fn):
        _sync(dev)
        if libc is not None:
            libc.malloc_trim(0)
        before = current_memory(dev)
        reset_peak_memory(dev)
        start = time.perf_counter()
        with nvtx_range(f"vggrpo.{name}"):
            out = fn()
        _sync(dev)
        peak = peak_memory(dev)
        phases[name] = {"seconds": time.perf_counter() - start, "peak_memory_bytes": peak,
                        "memory_before_bytes": before,
                        "extra_peak_memory_bytes": (None if None in (peak, before)
                                                    else peak - before)}
        return out

    rollout = phase("rollout", lambda: trainer.rollout(0))
    rewards = phase("reward", lambda: trainer.score(rollout.final))
    adv, _ = trainer.advantages(rewards)
    log = phase("update", lambda: trainer.update(rollout, adv))

    tokens = tokens_per_video(config_of_model, latent)
    n_window = window[1] - window[0]
    total_s = sum(p["seconds"] for p in phases.values())
    phases["rollout"]["tokens_per_second"] = group * steps * tokens / phases["rollout"]["seconds"]
    phases["update"]["tokens_per_second"] = \
        group * 2 * n_window * tokens / phases["update"]["seconds"]
    peaks = [p["peak_memory_bytes"] for p in phases.values()]
    return {
        "arch": arch, "latent_shape": list(latent), "tokens_per_video": tokens, "group": group,
        "steps": steps, "window": list(window), "micro_batch": micro_batch,
        "checkpointing": checkpointing, "dtype": dtype, "lora_rank": lora_rank,
        "lora_alpha": lora_alpha,
        "parameters": sum(p.numel() for p in transformer.parameters()),
        "machine": {"device": str(dev), "torch": torch.__version__,
                    "name": (torch.cuda.get_device_name(dev) if dev.type == "cuda"
                             else platform.processor() or platform.machine()),
                    "threads": torch.get_num_threads()},
        "build_seconds": build_s,
        "phases": phases,
        "step_seconds": total_s,
        "peak_memory_bytes": None if None in peaks else max(peaks),
        "tokens_per_second": group * tokens / total_s,
        "update_log": {k: v for k, v in log.items() if isinstance(v, (int, float))},
        "memory_kind": "cuda max_memory_allocated" if dev.type == "cuda" else "process peak RSS",
    }
