"""A lean GRPO trainer for diffusers Wan video transformers with a peft LoRA adapter (paper
Sec. 3.5), scored by any reward of the final latents (by default
:class:`~vggrpo.LatentGeometryReward`: no VAE decode).

One optimisation step:

1. **Rollout** (no grad): for each prompt of the step, ``group_size`` videos are sampled with
   :func:`vggrpo.sampling.sample` (the same code path as guided sampling): ODE steps, and SDE
   steps with log-probabilities on ``sde_window``. The starting noise of a group is shared or not
   (``same_noise_per_group``); every random draw comes from a generator seeded by
   ``(seed, step, prompt slot[, video])``, so a run is reproducible whatever the rank layout and
   the micro-batch size. Only what the update needs is kept: the latents at the window's steps
   (on the CPU with ``offload_trajectory``), their log-probabilities and the final latents.
2. **Reward**: ``reward(final latents) -> {name: [B]}``, any callable (the latent reward, the RGB
   baseline, a user's own). Each reward is normalised within its group
   (:func:`vggrpo.group_advantages`: population std, float64) and weighted
   (``reward_weights``) -> advantage ``A``.
3. **Update**: for every SDE step ``i`` of the window (gradients accumulated across steps, one
   optimiser step): the policy's velocity at ``x_i`` gives the step's Gaussian mean; the log-prob
   of the stored ``x_{i+1}`` gives the ratio ``r = exp(logp - logp_old)``;
   ``L_pg = mean(max(-A r, -A clip(r, 1-eps, 1+eps)))``. The KL to the reference (the same model
   with the adapter disabled) is the closed form for two Gaussians of equal std,
   ``KL = mean |mu_theta - mu_ref|^2 / (2 std^2)`` (element mean), differentiated through
   ``mu_theta``. ``loss = (L_pg + beta KL) / n_window``; then grad-norm clip and AdamW.

**Micro-batches.** Every pass through the video model (rollout, reference, update) and the
reward take ``micro_batch_size`` videos at a time; the update's gradients accumulate over them
(each micro-batch's loss weighted by its share of the batch), so the update is the full batch's
up to float32 summation order. The rollout and the update use the same micro-batches, so the
model sees the same inputs at both and the first update's ratio is exactly 1, in bfloat16 too.
``gradient_checkpointing`` turns on the transformer's own (diffusers) activation checkpointing
for the update: the same update, less memory.

Everything SDE-related runs in float32 whatever the model dtype.

More than one process (``torchrun``): the prompts of a step are split across ranks (whole
groups), rewards are all-gathered before normalisation, and LoRA gradients are averaged with an
all-reduce before clipping (what DDP would do), so every rank holds the same adapter.

Checkpoints (``save_checkpoint``): ``pytorch_lora_weights.safetensors`` in diffusers' format,
with the ``lora_alpha / r`` scale folded into ``lora_B`` so that ``load_lora_weights``,
``load_lora_adapter(path, prefix="transformer")`` and :func:`vggrpo.lora_file.load_lora` all load
it at its trained strength (:mod:`vggrpo.lora_file`), and ``trainer_state.pt`` (the unfolded
adapter, optimiser, schedule, step; ``weights_only`` loading). Resuming reproduces the
uninterrupted run's next step exactly.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch
from torch import Tensor

from . import _io
from ._checks import DictConfig, check_fields, is_finite_number, is_int, is_positive_int, short_repr
from ._nvtx import nvtx_range
from .lora_file import LORA_FILE, fold_lora_scale, read_lora, save_lora
from .rewards import group_advantages
from .sampling import (
    check_wan_inputs,
    sample,
    scheduler_sigmas,
    sde_step,
    wan_velocity,
)
from .schedules import check_step_window
from .seeds import combined_seed
from .step_log import LOG_FILE, StepLog, clean_record, peak_memory, reset_peak_memory

__all__ = ["GRPOConfig", "GRPOTrainer", "Rollout", "LORA_FILE", "EMA_LORA_FILE",
           "CHECKPOINT_PREFIX", "HISTORY_FILE", "checkpoint_folders", "latest_checkpoint"]

_STATE_FILE = "trainer_state.pt"
#: A run folder's checkpoints: ``checkpoint-<step>/``, each committed whole.
CHECKPOINT_PREFIX = "checkpoint-"
#: Every step's record of a run, resumed steps included (``{"history": [...], ...}``).
HISTORY_FILE = "history.json"
#: The EMA of the adapter (``GRPOConfig.ema_decay``), in the LoRA file's format.
EMA_LORA_FILE = "pytorch_lora_weights_ema.safetensors"


@dataclass
class GRPOConfig(DictConfig):
    """Hyper-parameters of :class:`GRPOTrainer` (paper values for clip eps, KL beta, grad clip).

    ``prompts_per_step`` prompt groups of ``group_size`` videos per optimisation step (across all
    ranks); ``num_inference_steps`` sampling steps with a flow-matching schedule of ``shift``;
    ``sde_window`` = ``(start, end)`` step indices trained (SDE there, ODE elsewhere).
    ``updates_per_rollout`` optimiser steps reuse each rollout (1: fully on-policy, the ratio is
    exactly 1 at the update; more: the clipped ratio limits how far the policy moves).

    Memory (module docstring): ``micro_batch_size`` videos go through the model at once (None:
    all of a rank's videos of a step); ``gradient_checkpointing`` recomputes the transformer's
    blocks in the update's backward instead of keeping their activations;
    ``offload_trajectory`` keeps the rollout's window latents on the CPU until the update.
    ``reward_weights``: name -> weight of each reward after its per-group normalisation (None:
    weight 1 for every reward the reward returns; 0 logs a reward without training on it).
    ``fsdp``: shard the transformer across the processes of the process group with FSDP2
    (``fully_shard`` of every block, then the whole model), for models one GPU's memory cannot
    hold with room for activations; plain data parallelism (each rank a full copy, gradients
    all-reduced) otherwise. ``ema_decay``: keep an exponential moving average of the LoRA,
    ``ema = d ema + (1 - d) lora`` after every optimiser step (None: none);
    :meth:`GRPOTrainer.evaluate` uses it, and checkpoints save it beside the LoRA.
    """

    group_size: int = 4
    prompts_per_step: int = 1
    num_inference_steps: int = 10
    shift: float = 3.0
    sde_window: Tuple[int, int] = (0, 4)
    noise_level: float = 0.7
    clip_eps: float = 1e-3
    kl_beta: float = 0.004
    lora_rank: int = 16
    lora_alpha: float = 16.0
    lora_targets: Tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
    lr: float = 1e-4
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    steps: int = 100
    seed: int = 0
    same_noise_per_group: bool = True
    updates_per_rollout: int = 1
    guidance_scale: float = 1.0
    latent_shape: Tuple[int, int, int, int] = (16, 5, 12, 20)
    micro_batch_size: Optional[int] = None
    gradient_checkpointing: bool = False
    offload_trajectory: bool = False
    reward_weights: Optional[Dict[str, float]] = None
    ema_decay: Optional[float] = None
    fsdp: bool = False

    def __post_init__(self) -> None:
        # TOML / YAML give lists; anything else is left as it came for the checks below to name.
        for name in ("sde_window", "lora_targets", "latent_shape"):
            if isinstance(getattr(self, name), list):
                setattr(self, name, tuple(getattr(self, name)))
        # A bare string would iterate as one-letter module names.
        if (not isinstance(self.lora_targets, tuple) or not self.lora_targets
                or not all(isinstance(t, str) and t for t in self.lora_targets)):
            raise ValueError(f"lora_targets must be a non-empty list of module names, got "
                             f"{short_repr(self.lora_targets)}")
        if not isinstance(self.group_size, int) or self.group_size < 2:
            raise ValueError(f"group_size must be an int >= 2 (a group of one has no relative "
                             f"advantage), got {short_repr(self.group_size)}")
        check_fields(self, "positive int", ("prompts_per_step", "num_inference_steps",
                                            "lora_rank", "steps", "updates_per_rollout"))
        check_fields(self, "int", ("seed",))  # 1.5 would silently become 1
        if self.sde_window is None:  # the sampler reads None as "no SDE steps": nothing to train
            raise ValueError("sde_window must be a (start, end) pair of step indices (the steps "
                             "GRPO trains), got None")
        check_step_window(self.sde_window, self.num_inference_steps, "sde_window")
        # Finite too: an inf learning rate or a NaN alpha would not fail, it would train NaNs.
        check_fields(self, "finite number > 0", ("clip_eps", "lr", "grad_clip", "shift",
                                                 "lora_alpha"))
        check_fields(self, "finite number >= 0", ("kl_beta", "noise_level", "weight_decay"))
        check_fields(self, "finite number", ("guidance_scale",))
        if (not isinstance(self.latent_shape, tuple) or len(self.latent_shape) != 4
                or not all(map(is_positive_int, self.latent_shape))):
            raise ValueError(f"latent_shape must be (C, T, h, w) of positive ints, got "
                             f"{self.latent_shape}")
        if self.micro_batch_size is not None and not is_positive_int(self.micro_batch_size):
            raise ValueError(f"GRPOConfig.micro_batch_size must be a positive int or None (all "
                             f"of a rank's videos at once), got "
                             f"{short_repr(self.micro_batch_size)}")
        check_fields(self, "bool", ("gradient_checkpointing", "offload_trajectory",
                                    "same_noise_per_group", "fsdp"))
        if self.reward_weights is not None:
            w = self.reward_weights
            if (not isinstance(w, dict) or not w
                    or not all(isinstance(k, str) and is_finite_number(v) for k, v in w.items())):
                raise ValueError(f"GRPOConfig.reward_weights must map reward names to finite "
                                 f"numbers (or be None: weight 1 each), got {short_repr(w)}")
            if not any(v != 0 for v in w.values()):
                raise ValueError(f"GRPOConfig.reward_weights are all 0: nothing would be "
                                 f"trained, got {short_repr(w)}")
        if self.ema_decay is not None and not (is_finite_number(self.ema_decay)
                                               and 0 < self.ema_decay < 1):
            raise ValueError(f"GRPOConfig.ema_decay must be a number in (0, 1) or None, got "
                             f"{short_repr(self.ema_decay)}")


def _dist() -> Tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


@dataclass
class Rollout:
    """This rank's videos of one step, as the update needs them (``N`` videos, ``n`` SDE steps).

    * ``prompts``: ``[N]`` prompt index of each video (groups of ``group_size`` consecutive);
    * ``chunks``: the micro-batches ``(start, end)``, the same in the rollout and the update;
    * ``steps``: the ``n`` SDE step indices of the window;
    * ``window``: ``n + 1`` latents ``[N,C,T,h,w]``, at the window's steps and the one after
      (float32; on the CPU with ``offload_trajectory``);
    * ``log_probs``: ``[N, n]`` the rollout's log-probabilities (CPU);
    * ``final``: ``[N,C,T,h,w]`` the final latents, which the reward scores (the window's last
      latent when the window ends at the last step).
    """

    prompts: Tensor
    chunks: List[Tuple[int, int]]
    steps: List[int]
    window: List[Tensor]
    log_probs: Tensor
    final: Tensor


def _checked_rewards(out: Any, batch: int) -> Dict[str, Tensor]:
    if not isinstance(out, Mapping) or not out:
        raise ValueError(f"reward: must return a non-empty dict of name -> [B] tensor, got "
                         f"{type(out).__name__}")
    for k, v in out.items():
        if not isinstance(k, str) or not isinstance(v, Tensor) or tuple(v.shape) != (batch,):
            got = list(v.shape) if isinstance(v, Tensor) else type(v).__name__
            raise ValueError(f"reward: its output {k!r} must be a [B] tensor, one value per "
                             f"video (B = {batch}), got {got}")
    return dict(out)


class GRPOTrainer:
    """GRPO on a diffusers ``WanTransformer3DModel`` with a LoRA adapter (module docstring).

    Args:
        transformer: the video model; a LoRA adapter (``config.lora_*``) is added here and is the
            only thing trained.
        reward: any callable ``latents [B,C,T,h,w] -> {name: [B] tensor}``:
            :class:`~vggrpo.LatentGeometryReward` (``{"motion", "geo"}``), the RGB baseline, or a
            user's own (an aesthetic score, say). Called without grad, a micro-batch at a time.
        prompt_embeds: ``[P,L,D]`` text embeddings, one per prompt (given directly).
        config: :class:`GRPOConfig` (default: ``GRPOConfig()``).
        negative_prompt_embeds: ``[P,L,D]`` for classifier-free guidance (with
            ``config.guidance_scale != 1``).

    Checked against the model before anything runs, each a ValueError naming the argument:

    * the embeddings and ``config.latent_shape`` (:func:`~vggrpo.sampling.check_wan_inputs`,
      with at least 3 latent frames for the motion reward);
    * the latent channels the reward reads (its LGM's, or the RGB baseline's VAE's);
    * the device of the reward's weights;
    * what the reward returns, from one call on a zero latent: a dict of ``[B]`` tensors, whose
      names ``config.reward_weights`` must come from;
    * ``config.micro_batch_size`` against a rank's videos per step, and that the model can
      checkpoint its activations when ``config.gradient_checkpointing`` asks for it.

    Whether the LGM was stitched to the model's VAE is checked where the reward is built
    (``LatentGeometryReward(lgm, vae=vae)``): the trainer never sees the VAE.
    """

    def __init__(self, transformer, reward, prompt_embeds: Tensor,
                 config: Optional[GRPOConfig] = None, *,
                 negative_prompt_embeds: Optional[Tensor] = None) -> None:
        from diffusers import FlowMatchEulerDiscreteScheduler
        from peft import LoraConfig

        # A fresh default each time: the trainer keeps its config, and one shared default
        # instance would carry a change made through one trainer into the next.
        config = GRPOConfig() if config is None else config
        if not isinstance(config, GRPOConfig):
            raise TypeError(f"config: expected a GRPOConfig, got {type(config).__name__}")
        self.rank, self.world = _dist()
        if config.prompts_per_step % self.world != 0:
            raise ValueError(f"prompts_per_step ({config.prompts_per_step}) must be divisible by "
                             f"the number of ranks ({self.world}): each rank trains whole groups")
        # Up front, so a mismatch is one clear error and not a shape error deep in the model
        # after the first rollout.
        check_wan_inputs(transformer, prompt_embeds=prompt_embeds,
                         negative_prompt_embeds=negative_prompt_embeds,
                         latent_shape=config.latent_shape, min_frames=3)
        # Else the first rollout (minutes on a real model) would end in a shape error inside the
        # reward: the LGM's (LatentGeometryReward) or the decoder's (the RGB baseline).
        # Any callable latents -> {name: [N]} is a reward; one that says which channels it reads
        # (GeometryReward.check_latent_channels) is checked here.
        check = getattr(reward, "check_latent_channels", None)
        if callable(check):
            check(config.latent_shape[0], "the model",
                  f" (latent_shape {tuple(config.latent_shape)})")
        # Else the first rollout would end in a device error inside the reward.
        model_device = next(transformer.parameters()).device
        weights = reward.parameters() if isinstance(reward, torch.nn.Module) else ()
        reward_device = next((p.device for p in weights), model_device)
        if reward_device != model_device:
            raise ValueError(f"reward: its weights are on {reward_device} but the model is on "
                             f"{model_device}; move it first (reward.to({str(model_device)!r}))")
        videos = config.prompts_per_step // self.world * config.group_size
        if config.micro_batch_size is not None and config.micro_batch_size > videos:
            raise ValueError(f"GRPOConfig.micro_batch_size ({config.micro_batch_size}) is larger "
                             f"than a rank's videos per step ({videos} = prompts_per_step "
                             f"{config.prompts_per_step} / {self.world} ranks x group_size "
                             f"{config.group_size})")
        if config.fsdp and not (torch.distributed.is_available()
                                and torch.distributed.is_initialized()):
            raise ValueError("GRPOConfig.fsdp shards the model across the processes of a "
                             "torch.distributed process group, and none is initialized: run "
                             "under torchrun (vggrpo train joins the group itself) or set "
                             "fsdp = false")
        if config.fsdp and not hasattr(transformer, "blocks"):
            raise ValueError(f"GRPOConfig.fsdp shards the model block by block: the model "
                             f"({type(transformer).__name__}) has no .blocks")
        if config.gradient_checkpointing and not hasattr(transformer,
                                                         "enable_gradient_checkpointing"):
            raise ValueError(f"GRPOConfig.gradient_checkpointing: the model "
                             f"({type(transformer).__name__}) has no "
                             f"enable_gradient_checkpointing (a diffusers model has)")
        # One video through the reward now: its names (for reward_weights) and its output shape
        # are known before the first rollout, which takes minutes on a real model.
        with torch.no_grad():
            probe = _checked_rewards(
                reward(torch.zeros((1,) + tuple(config.latent_shape), device=model_device)), 1)
        if config.reward_weights is not None:
            unknown = sorted(set(config.reward_weights) - set(probe))
            if unknown:
                raise ValueError(f"GRPOConfig.reward_weights name {unknown}, which the reward "
                                 f"does not return (it returns {sorted(probe)})")
        self.reward_names = sorted(probe)
        self.config = config
        self.transformer = transformer
        self.reward = reward
        self.prompt_embeds = prompt_embeds
        self.negative_prompt_embeds = negative_prompt_embeds

        names = {n for n, _ in transformer.named_modules()}
        missing = [t for t in config.lora_targets
                   if not any(n == t or n.endswith("." + t) for n in names)]
        if missing:
            raise ValueError(f"the model has no modules named {missing} for LoRA (lora_targets); "
                             f"e.g. Wan attention projections are to_q, to_k, to_v, to_out.0")
        transformer.requires_grad_(False)
        self.lora_config = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha,
                                      target_modules=list(config.lora_targets),
                                      init_lora_weights=True)
        transformer.add_adapter(self.lora_config, adapter_name=_ADAPTER_NAME)
        for n, p in transformer.named_parameters():
            if "lora_" in n:
                p.requires_grad_(True)
                p.data = p.data.float()  # adapters train in float32 whatever the base dtype
        if config.fsdp:
            _fully_shard(transformer)
        # After sharding: FSDP2 replaces the parameters by sharded ones.
        self.params = [p for n, p in transformer.named_parameters() if "lora_" in n]
        self.optimizer = torch.optim.AdamW(self.params, lr=config.lr,
                                           weight_decay=config.weight_decay)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: 1.0)
        self.sigmas = scheduler_sigmas(FlowMatchEulerDiscreteScheduler(shift=config.shift),
                                       config.num_inference_steps)
        self.step_index = 0
        #: Every step's record (train_step's), this run's resumed steps included.
        self.history: List[Dict[str, Any]] = []
        self._saved_step: Optional[int] = None
        self.device = model_device
        # The EMA of the adapter, keyed as lora_state_dict() (float32, like the adapter).
        self.ema: Optional[Dict[str, Tensor]] = None
        if config.ema_decay is not None:
            self.ema = {k: v.detach().clone() for k, v in self.lora_state_dict().items()}

    # -- pieces ---------------------------------------------------------------------------------

    def _groups(self, step: int) -> List[Tuple[int, int]]:
        """``(global group slot, prompt index)`` of this step's groups, this rank's share."""
        P, n = self.prompt_embeds.shape[0], self.config.prompts_per_step
        chosen = [(k, (step * n + k) % P) for k in range(n)]
        per_rank = n // self.world
        return chosen[self.rank * per_rank:(self.rank + 1) * per_rank]

    def _velocity(self, prompts: Tensor):
        """The velocity function for videos of prompt indices ``prompts`` ``[B]``."""
        emb = self.prompt_embeds[prompts].to(self.device)
        neg = None
        if self.negative_prompt_embeds is not None:
            neg = self.negative_prompt_embeds[prompts].to(self.device)
        return wan_velocity(self.transformer, emb, negative_prompt_embeds=neg,
                            guidance_scale=self.config.guidance_scale)

    def _noise(self, step: int, slot: int) -> Tensor:
        c = self.config
        gen = torch.Generator().manual_seed(combined_seed(c.seed, step, slot, 1))
        G = 1 if c.same_noise_per_group else c.group_size
        z = torch.randn((G,) + c.latent_shape, generator=gen)
        return z.expand(c.group_size, *c.latent_shape) if c.same_noise_per_group else z

    def micro_batches(self, n: int) -> List[Tuple[int, int]]:
        """``(start, end)`` of the micro-batches of ``n`` videos (the last may be smaller)."""
        m = self.config.micro_batch_size or n
        return [(a, min(a + m, n)) for a in range(0, n, m)]

    def rollout(self, step: int) -> Rollout:
        """Sample this rank's groups of ``step`` (no grad), micro-batch by micro-batch, keeping
        only what the update and the reward need (:class:`Rollout`)."""
        c = self.config
        groups = self._groups(step)
        G = c.group_size
        N = len(groups) * G
        prompts = torch.tensor([p for _, p in groups for _ in range(G)])
        # One SDE generator per video: its trajectory depends neither on the rank layout nor on
        # the micro-batches.
        gens = [torch.Generator().manual_seed(combined_seed(c.seed, step, slot, 2, k))
                for slot, _ in groups for k in range(G)]
        start, end = c.sde_window
        store = torch.device("cpu") if c.offload_trajectory else self.device
        # Filled micro-batch by micro-batch (no concatenation at the end, which would hold every
        # latent twice). When the window ends at the last step, its last latent is the final one.
        kept = list(range(start, end + 1))
        if kept[-1] != len(self.sigmas) - 1:
            kept.append(len(self.sigmas) - 1)
        latents = {i: torch.empty((N,) + tuple(c.latent_shape), device=store) for i in kept}
        log_probs = torch.empty((N, end - start))
        chunks = self.micro_batches(N)
        group_noise: Dict[int, Tensor] = {}  # drawn once a group, kept while its videos run
        for a, b in chunks:
            # The starting noise of this micro-batch's videos only, from their groups' seeds.
            first, last = a // G, (b - 1) // G
            group_noise = {g: group_noise[g] if g in group_noise
                           else self._noise(step, groups[g][0]) for g in range(first, last + 1)}
            noise = torch.cat([group_noise[g] for g in range(first, last + 1)])
            noise = noise[a - first * G:b - first * G].to(self.device)
            traj = sample(self._velocity(prompts[a:b]), noise, self.sigmas,
                          sde_window=c.sde_window, noise_level=c.noise_level,
                          generator=gens[a:b])
            for i in kept:
                latents[i][a:b] = traj.latents[i]
            log_probs[a:b] = traj.log_probs.cpu()
            del traj, noise  # the other steps' latents go now, not at the end of the rollout
        final = latents[len(self.sigmas) - 1]
        return Rollout(prompts=prompts, chunks=chunks, steps=list(range(start, end)),
                       window=[latents[i] for i in range(start, end + 1)],
                       log_probs=log_probs, final=final.to(self.device))

    def score(self, latents: Tensor) -> Dict[str, Tensor]:
        """``{name: [B]}`` rewards of final latents ``[B,...]``, micro-batch by micro-batch
        (no grad), each output checked to be ``[b]`` for a micro-batch of ``b``."""
        parts: Dict[str, List[Tensor]] = {}
        with torch.no_grad():
            for a, b in self.micro_batches(latents.shape[0]):
                out = _checked_rewards(self.reward(latents[a:b]), b - a)
                for k, v in out.items():
                    parts.setdefault(k, []).append(v)
        return {k: torch.cat(v) for k, v in parts.items()}

    def _gather(self, x: Tensor) -> Tensor:
        if self.world == 1:
            return x
        parts = [torch.empty_like(x) for _ in range(self.world)]
        torch.distributed.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    def advantages(self, rewards: Dict[str, Tensor]) -> Tuple[Tensor, Dict[str, Tensor]]:
        """All-gather the rewards, normalise per group and reward, weight
        (``config.reward_weights``), return this rank's share and the gathered rewards."""
        gathered = {k: self._gather(v.detach().float()) for k, v in rewards.items()}
        adv = group_advantages(gathered, self.config.group_size, weights=self.config.reward_weights)
        n = next(iter(rewards.values())).shape[0]
        return adv[self.rank * n:(self.rank + 1) * n].to(torch.float32), gathered

    def update(self, rollout: Rollout, adv: Tensor) -> Dict[str, float]:
        """Accumulate the clipped-ratio + KL loss over the window's steps and the micro-batches,
        then one AdamW step."""
        c = self.config
        n = len(rollout.steps)
        N = rollout.prompts.shape[0]
        adv = adv.to(self.device)
        ratios, kls, clipped, losses = [], [], [], []
        self.optimizer.zero_grad(set_to_none=True)
        checkpointing = c.gradient_checkpointing  # the model's support was checked at __init__
        if checkpointing:
            self.transformer.enable_gradient_checkpointing()
        try:
            for j, i in enumerate(rollout.steps):
                s, s_next = float(self.sigmas[i]), float(self.sigmas[i + 1])
                kl_step, clip_step, loss_step = 0.0, 0.0, 0.0
                for a, b in rollout.chunks:
                    share = (b - a) / N
                    x = rollout.window[j][a:b].to(self.device)
                    x_next = rollout.window[j + 1][a:b].to(self.device)
                    vel = self._velocity(rollout.prompts[a:b])
                    with torch.no_grad():
                        self.transformer.disable_adapters()
                        try:
                            ref = sde_step(x, vel(x, s), s, s_next, c.noise_level,
                                           prev_sample=x_next)
                        finally:
                            self.transformer.enable_adapters()
                    cur = sde_step(x, vel(x, s), s, s_next, c.noise_level, prev_sample=x_next)
                    old = rollout.log_probs[a:b, j].to(self.device)
                    ratio = torch.exp(cur.log_prob - old)
                    A = adv[a:b]
                    pg = torch.maximum(-A * ratio,
                                       -A * ratio.clamp(1.0 - c.clip_eps, 1.0 + c.clip_eps)).mean()
                    kl = ((cur.mean - ref.mean).square().flatten(1).mean(1)
                          / (2.0 * cur.std.square())).mean()
                    # Weighted by the micro-batch's share: the sum over micro-batches is the
                    # full batch's mean.
                    loss = (pg + c.kl_beta * kl) * share / n
                    loss.backward()
                    ratios.append(ratio.detach())
                    kl_step += float(kl.detach()) * share
                    clip_step += float(((ratio.detach() - 1).abs() > c.clip_eps).float().sum()) / N
                    loss_step += float(loss.detach()) * n
                kls.append(kl_step)
                clipped.append(clip_step)
                losses.append(loss_step)
        finally:
            if checkpointing:
                self.transformer.disable_gradient_checkpointing()
        if self.world > 1 and not c.fsdp:  # FSDP2 reduce-scatters (and averages) itself
            for p in self.params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                torch.distributed.all_reduce(p.grad)
                p.grad /= self.world
        grad_norm = float(_full(torch.nn.utils.clip_grad_norm_(self.params, c.grad_clip)))
        self.optimizer.step()
        self.schedule.step()
        if self.ema is not None:
            with torch.no_grad():
                for k, v in self.lora_state_dict().items():
                    self.ema[k].mul_(c.ema_decay).add_(v, alpha=1.0 - c.ema_decay)
        r = torch.cat(ratios)
        return {"ratio_mean": float(r.mean()), "ratio_min": float(r.min()),
                "ratio_max": float(r.max()), "kl": sum(kls) / n,
                "clip_fraction": sum(clipped) / n, "loss": sum(losses) / n,
                "grad_norm": grad_norm}

    def train_step(self) -> Dict[str, float]:
        """One GRPO step (rollout, reward, update); returns the logged numbers (docs/grpo.md),
        ``peak_memory_bytes`` among them: the step's peak, CUDA ``max_memory_allocated`` or on
        the CPU the process's peak RSS (None where unknown)."""
        reset_peak_memory(self.device)
        t0 = time.perf_counter()
        with nvtx_range("vggrpo.rollout"):
            ro = self.rollout(self.step_index)
        t1 = time.perf_counter()
        with nvtx_range("vggrpo.reward"):
            rewards = self.score(ro.final)
            adv, gathered = self.advantages(rewards)
        t2 = time.perf_counter()
        with nvtx_range("vggrpo.update"):
            # Further updates on the same rollout are off-policy: there the ratio moves away
            # from 1 and the clip does its work. The log reports the last update's statistics.
            for _ in range(self.config.updates_per_rollout):
                log = self.update(ro, adv)
        t3 = time.perf_counter()
        log.update({f"reward_{k}": float(v.mean()) for k, v in gathered.items()})
        log.update({
            "step": self.step_index,
            "advantage_mean": float(adv.mean()), "advantage_std": float(adv.std(unbiased=False)),
            "time_rollout_s": t1 - t0, "time_reward_s": t2 - t1, "time_update_s": t3 - t2,
            "peak_memory_bytes": peak_memory(self.device),
        })
        # Here, not at the checkpoint: a checkpoint of broken weights is refused anyway, and a
        # run should stop at the step that broke it, not carry on training NaNs.
        bad = [k for k, v in self.lora_state_dict().items() if not torch.isfinite(v).all()]
        if bad:
            raise ValueError(f"step {self.step_index}: the update made the adapter non-finite "
                             f"({bad[0]}, {len(bad)} tensors in all; loss {log['loss']}): "
                             f"lower lr, or check the reward for NaN")
        self.step_index += 1
        self.history.append(log)
        return log

    @torch.no_grad()
    def evaluate(self, seed: int = 12345, samples_per_prompt: int = 2, *,
                 use_ema: bool = True) -> Dict[str, float]:
        """Mean rewards of ODE samples from fixed noise (seeded by ``seed``) for every prompt: a
        progress measure independent of the rollout noise. Micro-batched like a step. With an
        EMA (``config.ema_decay``) and ``use_ema``, the EMA adapter is evaluated, and the
        trained one put back afterwards."""
        if use_ema and self.ema is not None:
            own = self.lora_state_dict()
            trained = {k: v.detach().clone() for k, v in own.items()}
            for k, v in own.items():
                v.copy_(self.ema[k])
            try:
                return self.evaluate(seed, samples_per_prompt, use_ema=False)
            finally:
                for k, v in own.items():
                    v.copy_(trained[k])
        P = self.prompt_embeds.shape[0]
        gen = torch.Generator().manual_seed(seed)
        noise = torch.randn((P * samples_per_prompt,) + self.config.latent_shape, generator=gen)
        prompts = torch.arange(P).repeat_interleave(samples_per_prompt)
        finals = [sample(self._velocity(prompts[a:b]), noise[a:b].to(self.device),
                         self.sigmas).final
                  for a, b in self.micro_batches(len(prompts))]
        return {k: float(v.mean()) for k, v in self.score(torch.cat(finals)).items()}

    def train(self, steps: Optional[int] = None, *, out_dir=None, checkpoint_every: int = 0,
              keep_checkpoints: int = 2, progress: bool = True) -> List[Dict[str, float]]:
        """Run ``steps`` (default: up to ``config.steps``) GRPO steps. With ``out_dir``: every
        step is appended to ``out_dir/log.jsonl`` (and TensorBoard, when installed;
        :mod:`vggrpo.step_log`), and a checkpoint (:meth:`save_checkpoint`, keeping
        ``keep_checkpoints``) is written every ``checkpoint_every`` steps and at the end, unless
        the end's step is saved already. Returns this call's steps' records (all of the run's:
        :attr:`history`)."""
        from tqdm.auto import tqdm

        end = self.config.steps if steps is None else self.step_index + steps
        history = []
        log = StepLog(out_dir, self.step_index) if out_dir is not None and self.rank == 0 \
            else None
        bar = tqdm(range(self.step_index, end), desc="grpo", disable=not progress or self.rank)
        try:
            for _ in bar:
                history.append(self.train_step())
                if log is not None:
                    log.write(history[-1])
                bar.set_postfix({k[len("reward_"):]: f"{v:.3f}" for k, v in history[-1].items()
                                 if k.startswith("reward_")})
                if (out_dir is not None and checkpoint_every
                        and self.step_index % checkpoint_every == 0):
                    self.save_checkpoint(out_dir, keep=keep_checkpoints)
            if out_dir is not None and self._saved_step != self.step_index:
                self.save_checkpoint(out_dir, keep=keep_checkpoints)
            elif out_dir is not None:  # a kill may have kept an extra one
                failure = None
                if self.rank == 0:
                    try:
                        _prune_checkpoints(out_dir, keep_checkpoints)
                    except OSError as e:
                        failure = e
                self._rank0_outcome(failure, f"the pruning of {out_dir}")
        finally:
            if log is not None:
                log.close()
        return history

    # -- checkpoints ----------------------------------------------------------------------------

    def lora_state_dict(self) -> Dict[str, Tensor]:
        """The adapter's tensors, peft's keys (``blocks.0.attn1.to_q.lora_A.weight``...): the
        parameters themselves, detached (sharded ``DTensor``s under FSDP), so that writing into
        them writes the adapter.

        Read from the model, not from peft's ``get_peft_model_state_dict``: since peft 0.22 that
        returns gathered CPU copies of sharded parameters, and a checkpoint loaded into copies
        would leave the adapter as it was."""
        out = {}
        for name, p in self.transformer.named_parameters():
            parts = name.split(".")
            if not any(s.startswith("lora_") for s in parts):
                continue
            # blocks.0.attn1.to_q.lora_A.default.weight -> ...lora_A.weight, as peft keys it
            key = [s for i, s in enumerate(parts)
                   if not (s == _ADAPTER_NAME and i > 0 and parts[i - 1].startswith("lora_"))]
            out[".".join(key)] = p.detach()
        return out

    def full_lora_state_dict(self) -> Dict[str, Tensor]:
        """:meth:`lora_state_dict` as whole, plain tensors (copies). Under FSDP it gathers the
        shards: every rank must call it."""
        return {k: _full(v).detach().clone() for k, v in self.lora_state_dict().items()}

    def _assign_lora(self, tensors: Dict[str, Tensor], what: str) -> None:
        """Copy whole tensors (keys of :meth:`lora_state_dict`) into the adapter, each rank
        keeping its shard under FSDP."""
        own = self.lora_state_dict()
        if set(tensors) != set(own) or any(tuple(tensors[k].shape) != tuple(own[k].shape)
                                           for k in own):
            raise ValueError(f"{what} does not match this model's adapter ({len(tensors)} vs "
                             f"{len(own)} tensors, or other shapes)")
        with torch.no_grad():
            for k, t in own.items():
                t.copy_(_like(tensors[k], t))

    def save_checkpoint(self, directory: Union[str, Path], *, keep: int = 2) -> Path:
        """Commit this step's checkpoint to ``directory/checkpoint-<step>/`` as one unit, and
        export its adapter and the run's history to the top of ``directory``. Returns the
        checkpoint folder. Every rank must call it (under FSDP the shards are gathered); only
        rank 0 writes, and every rank returns once it has written (or raises when it could not).

        The folder (``pytorch_lora_weights.safetensors``, ``pytorch_lora_weights_ema.safetensors``
        with an EMA, ``trainer_state.pt``) is written under a hidden name and renamed into place:
        a kill at any moment leaves the previous checkpoints whole and this one either complete
        or absent. Then ``directory/pytorch_lora_weights.safetensors`` (and its EMA) and
        ``directory/history.json`` (every step of the run so far, resumed ones included) are
        replaced atomically; they are copies for users, never read back. The ``keep`` newest
        checkpoints stay (at least 1); older ones and a killed write's leftovers are removed.

        ValueError, before anything is written, when the adapter or its EMA holds a NaN or
        infinite weight: a checkpoint never replaces good weights with broken ones.
        """
        if not is_positive_int(keep):
            raise ValueError(f"keep: expected a positive int (checkpoints kept), got {keep!r}")
        directory = Path(directory)
        folder = directory / f"{CHECKPOINT_PREFIX}{self.step_index}"
        lora = self.full_lora_state_dict()
        ema = None if self.ema is None else {k: _full(v).detach().clone()
                                             for k, v in self.ema.items()}
        if self.config.fsdp:  # the whole optimizer state, keyed by parameter name, on rank 0
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                get_optimizer_state_dict,
            )

            optimizer = get_optimizer_state_dict(
                self.transformer, self.optimizer,
                options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        else:
            optimizer = self.optimizer.state_dict()
        for what, weights in (("adapter", lora), ("adapter's EMA", ema or {})):
            bad = sorted(k for k, v in weights.items() if not torch.isfinite(v).all())
            if bad:
                raise ValueError(f"step {self.step_index}: the {what} holds NaN or infinite "
                                 f"weights ({bad[0]}, {len(bad)} tensors in all); no checkpoint "
                                 f"written, the last one in {directory} is kept")
        failure = None
        if self.rank == 0:
            try:
                self._commit(directory, folder, keep, lora, ema, optimizer)
            except (OSError, ValueError) as e:
                failure = e
        self._rank0_outcome(failure, f"the checkpoint {folder}")
        self._saved_step = self.step_index
        return folder

    def _rank0_outcome(self, failure: Optional[BaseException], what: str) -> None:
        """Every rank returns once rank 0 has written ``what``, or raises: a rank that ran ahead
        would leave the process group (or the process) while rank 0 is still writing, and gloo
        aborts a process whose peer leaves under it. Rank 0 re-raises its own error; the others
        raise one naming rank 0."""
        if self.world > 1:
            flag = torch.tensor([0 if failure is None else 1], dtype=torch.int32,
                                device=self.device if torch.distributed.get_backend() == "nccl"
                                else "cpu")
            torch.distributed.broadcast(flag, src=0)
            if failure is None and flag.item():
                raise RuntimeError(f"rank 0 could not write {what} (its own error says why); "
                                   f"nothing was written by rank {self.rank}")
        if failure is not None:
            raise failure

    def _commit(self, directory: Path, folder: Path, keep: int, lora, ema, optimizer) -> None:
        """Rank 0's part of :meth:`save_checkpoint`: the folder, the exports, the pruning."""
        later = [k for k, _ in checkpoint_folders(directory) if k > self.step_index]
        if later:
            raise ValueError(f"{directory} holds {CHECKPOINT_PREFIX}{later[-1]}, a later step "
                             f"than this trainer's {self.step_index}: another run's; resume from "
                             f"it (load_checkpoint) or write to another folder")
        state = {"lora": lora, "ema": ema, "optimizer": optimizer,
                 "schedule": self.schedule.state_dict(), "step": self.step_index,
                 "config": self.config.to_dict(), "rng": torch.get_rng_state(),
                 "history": [clean_record(h) for h in self.history]}

        def write(tmp: Path) -> None:
            save_lora(tmp / LORA_FILE, lora, self.lora_config)
            if ema is not None:
                save_lora(tmp / EMA_LORA_FILE, ema, self.lora_config)
            # The unfolded weights too: the file's are scaled (lora_file), and x * s / s is not
            # x in float32 for every s, so resuming from the file alone would not be exact.
            _io.save_state(tmp / _STATE_FILE, state)

        _io.commit_folder(folder, write)
        self._export(directory, lora, ema, folder)
        _prune_checkpoints(directory, keep)

    def _export(self, directory: Path, lora, ema, folder: Path) -> None:
        """The users' copies at the top of a run folder (see :meth:`save_checkpoint`)."""
        save_lora(directory / LORA_FILE, lora, self.lora_config)
        if ema is not None:
            save_lora(directory / EMA_LORA_FILE, ema, self.lora_config)
        _io.save_json(directory / HISTORY_FILE, {
            "history": [clean_record(h) for h in self.history], "world_size": self.world,
            "checkpoint": folder.name})
        _io.remove_leftovers(directory, (CHECKPOINT_PREFIX, LORA_FILE, EMA_LORA_FILE,
                                         HISTORY_FILE, LOG_FILE))

    def load_checkpoint(self, directory: Union[str, Path]) -> Path:
        """Restore a checkpoint of :meth:`save_checkpoint`: ``directory``'s newest
        ``checkpoint-<step>/``, or ``directory`` itself when it is one (it holds
        ``trainer_state.pt``). Returns the folder read. Under FSDP every rank reads the files
        and keeps its shards, whatever the number of ranks.

        The config must be the one it was trained with, except ``steps``, which may grow (the
        run is extended) but not fall below the checkpoint's step; the first keys that differ
        are named. Everything is checked before the trainer changes, each a one-line
        ValueError naming the folder: the state's structure, step, RNG state, optimiser state
        (shapes, finite learning rate and moments) and history; that its LoRA (and EMA) files
        are the adapter it holds (not the files of another step).
        """
        directory = Path(directory)
        folder = latest_checkpoint(directory)
        if folder is None:
            raise FileNotFoundError(f"no checkpoint in {directory} (expected "
                                    f"{CHECKPOINT_PREFIX}<step>/ folders holding {_STATE_FILE})")
        state = _io.load_state(folder / _STATE_FILE)
        self._check_state(state, folder)
        in_file, _ = read_lora(folder / LORA_FILE)
        lora = state.get("lora")
        if lora is None:  # vggrpo 0.1.0 wrote the unfolded weights to the file only
            lora = in_file
        else:
            _check_same(fold_lora_scale(lora, self.lora_config), in_file, folder, LORA_FILE)
        self._assign_lora(lora, f"LoRA weights {folder / LORA_FILE}")
        if self.ema is not None:
            ema = state.get("ema")
            if not isinstance(ema, dict) or set(ema) != set(self.ema):
                raise ValueError(f"cannot resume from {folder}: it holds no EMA of this "
                                 f"adapter (config.ema_decay was set after it was written?)")
            if (folder / EMA_LORA_FILE).is_file():
                _check_same(fold_lora_scale(ema, self.lora_config),
                            read_lora(folder / EMA_LORA_FILE)[0], folder, EMA_LORA_FILE)
            self.ema = {k: _like(v.float(), self.ema[k]).clone() for k, v in ema.items()}
        if self.config.fsdp:
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                set_optimizer_state_dict,
            )

            set_optimizer_state_dict(self.transformer, self.optimizer, state["optimizer"],
                                     options=StateDictOptions(full_state_dict=True))
        else:
            self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        torch.set_rng_state(state["rng"])
        self.step_index = self._saved_step = state["step"]
        self.history = list(state.get("history") or [])
        if folder != directory:
            # A kill after the commit may have left the exports a step behind.
            failure = None
            if self.rank == 0:
                try:
                    self._export(directory, lora, state.get("ema"), folder)
                except OSError as e:
                    failure = e
            self._rank0_outcome(failure, f"the exports of {folder} to {directory}")
        return folder

    def _check_state(self, state: Any, folder: Path) -> None:
        """Everything :meth:`load_checkpoint` reads from ``trainer_state.pt``, before any of it
        is used (a tampered or foreign file is one line, never a traceback or a NaN run)."""
        where = f"cannot resume from {folder}: {_STATE_FILE}"
        if not isinstance(state, dict):
            raise ValueError(f"{where} holds a {type(state).__name__}, expected a dict")
        missing = sorted({"optimizer", "schedule", "step", "config", "rng"} - set(state))
        if missing:
            raise ValueError(f"{where} lacks {missing}")
        saved, ours = state["config"], self.config.to_dict()
        if not isinstance(saved, dict):
            raise ValueError(f"{where}: its config is a {type(saved).__name__}, expected a dict")
        diff = [k for k in sorted(set(saved) | set(ours))
                if k != "steps" and saved.get(k, "(absent)") != ours.get(k)]
        if diff:
            what = "; ".join(f"{k}: {short_repr(saved.get(k, '(absent)'))} there, "
                             f"{short_repr(ours.get(k))} here" for k in diff[:3])
            raise ValueError(f"cannot resume from {folder}: it was trained with another config "
                             f"({what}{'; ...' if len(diff) > 3 else ''}); only steps may "
                             f"change (to extend the run)")
        step = state["step"]
        if not is_int(step) or step < 0 or (is_positive_int(saved.get("steps"))
                                            and step > saved["steps"]):
            raise ValueError(f"{where}: step must be an int in [0, its config's steps], got "
                             f"{short_repr(step)}")
        if folder.name.startswith(CHECKPOINT_PREFIX) and folder.name != \
                f"{CHECKPOINT_PREFIX}{step}":
            raise ValueError(f"{where} is of step {step}, not of its folder's (files of "
                             f"different checkpoints)")
        if step > self.config.steps:
            raise ValueError(f"cannot resume from {folder}: it is at step {step}, beyond this "
                             f"config's steps = {self.config.steps} (steps may only grow)")
        rng = state["rng"]
        own_rng = torch.get_rng_state()
        if not isinstance(rng, Tensor) or rng.dtype != own_rng.dtype or rng.shape != \
                own_rng.shape:
            raise ValueError(f"{where}: rng must be torch's RNG state (a {own_rng.dtype} tensor "
                             f"of {own_rng.numel()} bytes)")
        history = state.get("history", [])
        if not isinstance(history, list) or not all(isinstance(h, dict) for h in history) \
                or len(history) > step:
            # Shorter than step for a run begun from a checkpoint of vggrpo 0.2 (none kept).
            raise ValueError(f"{where}: history must be a list of at most {step} step records")
        schedule = state["schedule"]
        if not isinstance(schedule, dict) or not is_int(schedule.get("last_epoch")):
            raise ValueError(f"{where}: schedule must be the LR schedule's state (a dict with "
                             f"an int last_epoch)")
        self._check_optimizer_state(state["optimizer"], where)

    def _check_optimizer_state(self, opt: Any, where: str) -> None:
        groups = opt.get("param_groups") if isinstance(opt, dict) else None
        if not isinstance(groups, list) or not isinstance(opt.get("state"), dict):
            raise ValueError(f"{where}: optimizer must be AdamW's state (param_groups, state)")
        for g in groups:
            for key in ("lr", "weight_decay", "betas", "eps"):
                values = g.get(key) if isinstance(g, dict) else None
                values = values if isinstance(values, (list, tuple)) else [values]
                if not all(is_finite_number(v) and v >= 0 for v in values):
                    raise ValueError(f"{where}: optimizer {key} must be finite and >= 0, got "
                                     f"{short_repr(g.get(key) if isinstance(g, dict) else g)}")
        if self.config.fsdp:  # keyed by parameter name; set_optimizer_state_dict checks them
            return
        ids = [i for g in groups for i in (g.get("params") or [])]
        if sorted(ids) != list(range(len(self.params))):
            raise ValueError(f"{where}: optimizer holds {len(ids)} parameters, this adapter "
                             f"{len(self.params)}")
        for i, moments in opt["state"].items():
            if not (is_int(i) and 0 <= i < len(self.params)) or not isinstance(moments, dict):
                raise ValueError(f"{where}: optimizer state entry {short_repr(i)} names no "
                                 f"parameter of this adapter")
            for key, value in moments.items():
                if not isinstance(value, Tensor) or not torch.isfinite(value).all():
                    raise ValueError(f"{where}: optimizer {key} of parameter {i} must be a "
                                     f"finite tensor")
                if key != "step" and value.shape != self.params[i].shape:
                    raise ValueError(f"{where}: optimizer {key} of parameter {i} is "
                                     f"{list(value.shape)}, the parameter "
                                     f"{list(self.params[i].shape)}")


def checkpoint_folders(directory: Union[str, Path]) -> List[Tuple[int, Path]]:
    """``(step, folder)`` of every committed ``checkpoint-<step>/`` in a run folder, oldest
    first (a hidden, uncommitted one is not listed)."""
    directory = Path(directory)
    found = []
    if directory.is_dir():
        for entry in directory.iterdir():
            step = entry.name[len(CHECKPOINT_PREFIX):]
            if entry.name.startswith(CHECKPOINT_PREFIX) and step.isdigit() and entry.is_dir() \
                    and (entry / _STATE_FILE).is_file():
                found.append((int(step), entry))
    return sorted(found)


def _prune_checkpoints(directory: Union[str, Path], keep: int) -> None:
    """Remove all but the ``keep`` newest checkpoints. Each is first renamed to a hidden
    leftover name (one atomic step), so a kill while it is deleted never leaves a half-deleted
    folder under a checkpoint's name."""
    directory = Path(directory)
    for _, old in checkpoint_folders(directory)[:-keep]:
        hidden = directory / f".{old.name}.pruned.tmp"
        shutil.rmtree(hidden, ignore_errors=True)
        os.rename(old, hidden)
        shutil.rmtree(hidden, ignore_errors=True)


def latest_checkpoint(directory: Union[str, Path]) -> Optional[Path]:
    """The folder :meth:`GRPOTrainer.load_checkpoint` reads for ``directory``: ``directory``
    itself when it holds ``trainer_state.pt`` (one checkpoint folder, or a run of vggrpo 0.2 and
    before, which kept its files at the top), else its newest ``checkpoint-<step>/``; None when
    it holds neither."""
    directory = Path(directory)
    if (directory / _STATE_FILE).is_file():
        return directory
    found = checkpoint_folders(directory)
    return found[-1][1] if found else None


def _check_same(expected: Dict[str, Tensor], in_file: Dict[str, Tensor], folder: Path,
                name: str) -> None:
    if set(expected) != set(in_file) or not all(torch.equal(expected[k], in_file[k])
                                                for k in expected):
        raise ValueError(f"cannot resume from {folder}: its {name} is not the adapter its "
                         f"{_STATE_FILE} holds (files from different steps)")


#: The adapter's name in the model's parameter names: diffusers' ``add_adapter`` default.
_ADAPTER_NAME = "default"


def _full(t):
    """A whole plain tensor of ``t`` (gathering a sharded ``DTensor``: a collective)."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def _like(value: Tensor, target: Tensor) -> Tensor:
    """``value`` (whole) in ``target``'s dtype, device and, for a ``DTensor``, its sharding."""
    value = value.to(device=getattr(target, "device", None), dtype=target.dtype)
    if hasattr(target, "device_mesh"):
        from torch.distributed.tensor import distribute_tensor

        return distribute_tensor(value, target.device_mesh, target.placements)
    return value


def _fully_shard(transformer) -> None:
    """FSDP2: each block its own unit (its parameters gathered only while it runs), then the
    rest of the model. The LoRA's trainable parameters are float32 in every unit, which FSDP2
    asks of the parameters it reduces; the frozen ones may mix dtypes."""
    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError:  # torch 2.4 and 2.5 keep FSDP2 here
        from torch.distributed._composable.fsdp import fully_shard
    for block in transformer.blocks:
        fully_shard(block)
    fully_shard(transformer)
