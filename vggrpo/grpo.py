"""A lean GRPO trainer for diffusers Wan video transformers with a peft LoRA adapter (paper
Sec. 3.5), scored by :class:`~vggrpo.LatentGeometryReward` on the latents (no VAE decode).

One optimisation step:

1. **Rollout** (no grad): for each prompt of the step, ``group_size`` videos are sampled with
   :func:`vggrpo.sampling.sample` (the same code path as guided sampling): ODE steps, and SDE
   steps with log-probabilities on ``sde_window``. The starting noise of a group is shared or not
   (``same_noise_per_group``); every random draw comes from a generator seeded by
   ``(seed, step, prompt index)``, so a run is reproducible whatever the rank layout.
2. **Reward**: ``{"motion", "geo"}`` of the final latents; each reward normalised within its group
   (:func:`vggrpo.group_advantages`: population std, float64), then averaged -> advantage ``A``.
3. **Update**: for every SDE step ``i`` of the window (gradients accumulated across steps, one
   optimiser step): the policy's velocity at ``x_i`` gives the step's Gaussian mean; the log-prob
   of the stored ``x_{i+1}`` gives the ratio ``r = exp(logp - logp_old)``;
   ``L_pg = mean(max(-A r, -A clip(r, 1-eps, 1+eps)))``. The KL to the reference (the same model
   with the adapter disabled) is the closed form for two Gaussians of equal std,
   ``KL = mean |mu_theta - mu_ref|^2 / (2 std^2)`` (element mean), differentiated through
   ``mu_theta``. ``loss = (L_pg + beta KL) / n_window``; then grad-norm clip and AdamW.

Everything SDE-related runs in float32 whatever the model dtype (the ratio is exactly 1 on the
first update: the same model, batch and inputs give the same bits).

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

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from . import _io
from ._checks import is_finite_number, is_positive_int
from ._nvtx import nvtx_range
from .lora_file import LORA_FILE, fold_lora_scale, read_lora, save_lora
from .rewards import group_advantages
from .sampling import (
    _check_window,
    check_wan_inputs,
    sample,
    scheduler_sigmas,
    sde_step,
    wan_velocity,
)

__all__ = ["GRPOConfig", "GRPOTrainer", "LORA_FILE"]

_STATE_FILE = "trainer_state.pt"


@dataclass
class GRPOConfig:
    """Hyper-parameters of :class:`GRPOTrainer` (paper values for clip eps, KL beta, grad clip).

    ``prompts_per_step`` prompt groups of ``group_size`` videos per optimisation step (across all
    ranks); ``num_inference_steps`` sampling steps with a flow-matching schedule of ``shift``;
    ``sde_window`` = ``(start, end)`` step indices trained (SDE there, ODE elsewhere).
    ``updates_per_rollout`` optimiser steps reuse each rollout (1: fully on-policy, the ratio is
    exactly 1 at the update; more: the clipped ratio limits how far the policy moves).
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

    def __post_init__(self) -> None:
        # TOML / YAML give lists; anything else is left as it came for the checks below to name.
        for name in ("sde_window", "lora_targets", "latent_shape"):
            if isinstance(getattr(self, name), list):
                setattr(self, name, tuple(getattr(self, name)))
        # A bare string would iterate as one-letter module names.
        if (not isinstance(self.lora_targets, tuple) or not self.lora_targets
                or not all(isinstance(t, str) and t for t in self.lora_targets)):
            raise ValueError(f"lora_targets must be a non-empty list of module names, got "
                             f"{self.lora_targets!r}")
        if not isinstance(self.group_size, int) or self.group_size < 2:
            raise ValueError(f"group_size must be an int >= 2 (a group of one has no relative "
                             f"advantage), got {self.group_size!r}")
        for name in ("prompts_per_step", "num_inference_steps", "lora_rank", "steps",
                     "updates_per_rollout"):
            value = getattr(self, name)
            if not is_positive_int(value):
                raise ValueError(f"GRPOConfig.{name} must be a positive int, got {value!r}")
        if self.sde_window is None:  # the sampler reads None as "no SDE steps": nothing to train
            raise ValueError("sde_window must be a (start, end) pair of step indices (the steps "
                             "GRPO trains), got None")
        _check_window(self.sde_window, self.num_inference_steps, "sde_window")
        # Finite too: an inf learning rate or a NaN alpha would not fail, it would train NaNs.
        for name in ("clip_eps", "lr", "grad_clip", "shift", "lora_alpha"):
            value = getattr(self, name)
            if not (is_finite_number(value) and value > 0):
                raise ValueError(f"GRPOConfig.{name} must be a finite number > 0, got {value!r}")
        for name in ("kl_beta", "noise_level", "weight_decay"):
            value = getattr(self, name)
            if not (is_finite_number(value) and value >= 0):
                raise ValueError(f"GRPOConfig.{name} must be a finite number >= 0, got {value!r}")
        if not is_finite_number(self.guidance_scale):
            raise ValueError(f"GRPOConfig.guidance_scale must be a finite number, got "
                             f"{self.guidance_scale!r}")
        if (not isinstance(self.latent_shape, tuple) or len(self.latent_shape) != 4
                or not all(map(is_positive_int, self.latent_shape))):
            raise ValueError(f"latent_shape must be (C, T, h, w) of positive ints, got "
                             f"{self.latent_shape}")

    def to_dict(self) -> Dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v
                for k, v in dataclasses.asdict(self).items()}


def _dist() -> Tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _seed(*parts: int) -> int:
    from .data.synthetic import _element_seed

    s = 0
    for p in parts:
        s = _element_seed(s, int(p))
    return s


class GRPOTrainer:
    """GRPO on a diffusers ``WanTransformer3DModel`` with a LoRA adapter (module docstring).

    Args:
        transformer: the video model; a LoRA adapter (``config.lora_*``) is added here and is the
            only thing trained.
        reward: :class:`~vggrpo.LatentGeometryReward` (latents -> ``{"motion", "geo"}``).
        prompt_embeds: ``[P,L,D]`` text embeddings, one per prompt (given directly).
        config: :class:`GRPOConfig` (default: ``GRPOConfig()``).
        negative_prompt_embeds: ``[P,L,D]`` for classifier-free guidance (with
            ``config.guidance_scale != 1``).

    Checked against the model before anything runs, each a ValueError naming the argument:

    * the embeddings and ``config.latent_shape`` (:func:`~vggrpo.sampling.check_wan_inputs`,
      with at least 3 latent frames for the motion reward);
    * the latent channels the reward reads (its LGM's, or the RGB baseline's VAE's);
    * the device of the reward's weights.

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
        lgm_config = getattr(getattr(reward, "lgm", None), "config", None)
        vae_config = getattr(getattr(reward, "vae", None), "config", None)
        for reader, channels, fix in (
                ("LGM reads", getattr(lgm_config, "latent_channels", None),
                 "stitch an LGM to this model's VAE (vggrpo train-lgm)"),
                ("VAE decodes", getattr(vae_config, "z_dim", None), "pass this model's VAE")):
            if channels is not None and int(channels) != config.latent_shape[0]:
                raise ValueError(f"reward: its {reader} {int(channels)}-channel latents but the "
                                 f"model makes {config.latent_shape[0]}-channel ones "
                                 f"(latent_shape {tuple(config.latent_shape)}): {fix}")
        # Else the first rollout would end in a device error inside the reward.
        model_device = next(transformer.parameters()).device
        weights = reward.parameters() if isinstance(reward, torch.nn.Module) else ()
        reward_device = next((p.device for p in weights), model_device)
        if reward_device != model_device:
            raise ValueError(f"reward: its weights are on {reward_device} but the model is on "
                             f"{model_device}; move it first (reward.to({str(model_device)!r}))")
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
        transformer.add_adapter(self.lora_config)
        self.params = [p for n, p in transformer.named_parameters() if "lora_" in n]
        for p in self.params:
            p.requires_grad_(True)
            p.data = p.data.float()  # adapters train in float32 whatever the base dtype
        self.optimizer = torch.optim.AdamW(self.params, lr=config.lr,
                                           weight_decay=config.weight_decay)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: 1.0)
        self.sigmas = scheduler_sigmas(FlowMatchEulerDiscreteScheduler(shift=config.shift),
                                       config.num_inference_steps)
        self.step_index = 0
        self.device = model_device

    # -- pieces ---------------------------------------------------------------------------------

    def _groups(self, step: int) -> List[Tuple[int, int]]:
        """``(global group slot, prompt index)`` of this step's groups, this rank's share."""
        P, n = self.prompt_embeds.shape[0], self.config.prompts_per_step
        chosen = [(k, (step * n + k) % P) for k in range(n)]
        per_rank = n // self.world
        return chosen[self.rank * per_rank:(self.rank + 1) * per_rank]

    def _velocity(self, prompts: Sequence[int]):
        G = self.config.group_size
        idx = torch.tensor([p for p in prompts for _ in range(G)])
        emb = self.prompt_embeds[idx].to(self.device)
        neg = None
        if self.negative_prompt_embeds is not None:
            neg = self.negative_prompt_embeds[idx].to(self.device)
        return wan_velocity(self.transformer, emb, negative_prompt_embeds=neg,
                            guidance_scale=self.config.guidance_scale)

    def _noise(self, step: int, slot: int) -> Tensor:
        c = self.config
        gen = torch.Generator().manual_seed(_seed(c.seed, step, slot, 1))
        G = 1 if c.same_noise_per_group else c.group_size
        z = torch.randn((G,) + c.latent_shape, generator=gen)
        return z.expand(c.group_size, *c.latent_shape) if c.same_noise_per_group else z

    def rollout(self, step: int) -> Dict[str, Any]:
        """Sample this rank's groups of ``step`` (no grad). Returns the trajectory pieces."""
        c = self.config
        groups = self._groups(step)
        prompts = [p for _, p in groups]
        noise = torch.cat([self._noise(step, slot) for slot, _ in groups])
        vel = self._velocity(prompts)
        # One SDE generator per group: a group's trajectory does not depend on the rank layout.
        gens = [torch.Generator().manual_seed(_seed(c.seed, step, slot, 2)) for slot, _ in groups]
        traj = sample(vel, noise.to(self.device), self.sigmas, sde_window=c.sde_window,
                      noise_level=c.noise_level, generator=gens)
        latents, log_probs = traj.latents, traj.log_probs
        return {"prompts": prompts, "latents": latents, "log_probs": log_probs,
                "steps": traj.sde_steps, "velocity": vel}

    def _gather(self, x: Tensor) -> Tensor:
        if self.world == 1:
            return x
        parts = [torch.empty_like(x) for _ in range(self.world)]
        torch.distributed.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    def advantages(self, rewards: Dict[str, Tensor]) -> Tuple[Tensor, Dict[str, Tensor]]:
        """All-gather the rewards, normalise per group and reward, return this rank's share."""
        gathered = {k: self._gather(v.detach().float()) for k, v in rewards.items()}
        adv = group_advantages(gathered, self.config.group_size)
        n = rewards["geo"].shape[0]
        return adv[self.rank * n:(self.rank + 1) * n].to(torch.float32), gathered

    def update(self, rollout: Dict[str, Any], adv: Tensor) -> Dict[str, float]:
        """Accumulate the clipped-ratio + KL loss over the window's steps, then one AdamW step."""
        c = self.config
        latents, old_lp, vel = rollout["latents"], rollout["log_probs"], rollout["velocity"]
        n = len(rollout["steps"])
        adv = adv.to(self.device)
        ratios, kls, clipped, losses = [], [], [], []
        self.optimizer.zero_grad(set_to_none=True)
        for j, i in enumerate(rollout["steps"]):
            s, s_next = float(self.sigmas[i]), float(self.sigmas[i + 1])
            x, x_next = latents[i], latents[i + 1]
            with torch.no_grad():
                self.transformer.disable_adapters()
                try:
                    ref = sde_step(x, vel(x, s), s, s_next, c.noise_level, prev_sample=x_next)
                finally:
                    self.transformer.enable_adapters()
            cur = sde_step(x, vel(x, s), s, s_next, c.noise_level, prev_sample=x_next)
            ratio = torch.exp(cur.log_prob - old_lp[:, j])
            pg = torch.maximum(-adv * ratio,
                               -adv * ratio.clamp(1.0 - c.clip_eps, 1.0 + c.clip_eps)).mean()
            kl = ((cur.mean - ref.mean).square().flatten(1).mean(1)
                  / (2.0 * cur.std.square())).mean()
            loss = (pg + c.kl_beta * kl) / n
            loss.backward()
            ratios.append(ratio.detach())
            kls.append(float(kl.detach()))
            clipped.append(float(((ratio.detach() - 1).abs() > c.clip_eps).float().mean()))
            losses.append(float(loss.detach()) * n)
        if self.world > 1:
            for p in self.params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                torch.distributed.all_reduce(p.grad)
                p.grad /= self.world
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, c.grad_clip))
        self.optimizer.step()
        self.schedule.step()
        r = torch.stack(ratios)
        return {"ratio_mean": float(r.mean()), "ratio_min": float(r.min()),
                "ratio_max": float(r.max()), "kl": sum(kls) / n,
                "clip_fraction": sum(clipped) / n, "loss": sum(losses) / n,
                "grad_norm": grad_norm}

    def train_step(self) -> Dict[str, float]:
        """One GRPO step (rollout, reward, update); returns the logged numbers."""
        t0 = time.perf_counter()
        with nvtx_range("vggrpo.rollout"):
            ro = self.rollout(self.step_index)
        t1 = time.perf_counter()
        with nvtx_range("vggrpo.reward"), torch.no_grad():
            rewards = self.reward(ro["latents"][-1])
            adv, gathered = self.advantages(rewards)
        t2 = time.perf_counter()
        with nvtx_range("vggrpo.update"):
            # Further updates on the same rollout are off-policy: there the ratio moves away
            # from 1 and the clip does its work. The log reports the last update's statistics.
            for _ in range(self.config.updates_per_rollout):
                log = self.update(ro, adv)
        t3 = time.perf_counter()
        log.update({
            "step": self.step_index,
            "reward_motion": float(gathered["motion"].mean()),
            "reward_geo": float(gathered["geo"].mean()),
            "advantage_mean": float(adv.mean()), "advantage_std": float(adv.std(unbiased=False)),
            "time_rollout_s": t1 - t0, "time_reward_s": t2 - t1, "time_update_s": t3 - t2,
        })
        self.step_index += 1
        return log

    @torch.no_grad()
    def evaluate(self, seed: int = 12345, samples_per_prompt: int = 2) -> Dict[str, float]:
        """Mean rewards of ODE samples from fixed noise (seeded by ``seed``) for every prompt: a
        progress measure independent of the rollout noise."""
        P = self.prompt_embeds.shape[0]
        gen = torch.Generator().manual_seed(seed)
        noise = torch.randn((P * samples_per_prompt,) + self.config.latent_shape, generator=gen)
        idx = torch.arange(P).repeat_interleave(samples_per_prompt)
        neg = None if self.negative_prompt_embeds is None else \
            self.negative_prompt_embeds[idx].to(self.device)
        vel = wan_velocity(self.transformer, self.prompt_embeds[idx].to(self.device),
                           negative_prompt_embeds=neg, guidance_scale=self.config.guidance_scale)
        final = sample(vel, noise.to(self.device), self.sigmas).final
        return {k: float(v.mean()) for k, v in self.reward(final).items()}

    def train(self, steps: Optional[int] = None, *, out_dir=None, checkpoint_every: int = 0,
              progress: bool = True) -> List[Dict[str, float]]:
        """Run ``steps`` (default: up to ``config.steps``) GRPO steps; checkpoint every
        ``checkpoint_every`` steps (and at the end) when ``out_dir`` is given."""
        from tqdm.auto import tqdm

        end = self.config.steps if steps is None else self.step_index + steps
        history = []
        bar = tqdm(range(self.step_index, end), desc="grpo", disable=not progress or self.rank)
        for _ in bar:
            history.append(self.train_step())
            bar.set_postfix(motion=f"{history[-1]['reward_motion']:.3f}",
                            geo=f"{history[-1]['reward_geo']:.3f}")
            if out_dir is not None and checkpoint_every and self.step_index % checkpoint_every == 0:
                self.save_checkpoint(out_dir)
        if out_dir is not None:
            self.save_checkpoint(out_dir)
        return history

    # -- checkpoints ----------------------------------------------------------------------------

    def lora_state_dict(self) -> Dict[str, Tensor]:
        from peft.utils import get_peft_model_state_dict

        return get_peft_model_state_dict(self.transformer)

    def save_checkpoint(self, directory: Union[str, Path]) -> Path:
        """LoRA weights (diffusers format, safetensors) and the trainer state, atomically.
        Only rank 0 writes."""
        directory = Path(directory)
        if self.rank != 0:
            return directory
        lora = {k: v.detach().clone() for k, v in self.lora_state_dict().items()}
        save_lora(directory / LORA_FILE, lora, self.lora_config)
        # The unfolded weights too: the file's are scaled (lora_file), and x * s / s is not x
        # in float32 for every s, so resuming from the file alone would not be exact.
        _io.save_state(directory / _STATE_FILE, {
            "lora": lora, "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "step": self.step_index, "config": self.config.to_dict(),
            "rng": torch.get_rng_state()})
        return directory

    def load_checkpoint(self, directory: Union[str, Path]) -> None:
        """Restore what :meth:`save_checkpoint` wrote (same config required)."""
        from peft.utils import set_peft_model_state_dict

        directory = Path(directory)
        state = _io.load_state(directory / _STATE_FILE)
        if state.get("config") != self.config.to_dict():
            raise ValueError(f"cannot resume from {directory}: it was trained with config "
                             f"{state.get('config')}, not {self.config.to_dict()}")
        in_file, _ = read_lora(directory / LORA_FILE)
        lora = state.get("lora")
        if lora is None:  # vggrpo 0.1.0 wrote the unfolded weights to the file only
            lora = in_file
        else:
            folded = fold_lora_scale(lora, self.lora_config)
            if set(folded) != set(in_file) or not all(torch.equal(folded[k], in_file[k])
                                                      for k in folded):
                raise ValueError(f"cannot resume from {directory}: its {LORA_FILE} is not the "
                                 f"adapter its {_STATE_FILE} holds (files from different steps)")
        own = self.lora_state_dict()
        if set(lora) != set(own):
            raise ValueError(f"LoRA weights {directory / LORA_FILE} do not match this model's "
                             f"adapter ({len(lora)} vs {len(own)} tensors)")
        result = set_peft_model_state_dict(self.transformer, lora)
        unexpected = getattr(result, "unexpected_keys", [])
        if unexpected:
            raise ValueError(f"unexpected LoRA keys in {directory / LORA_FILE}: {unexpected[:3]}")
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        torch.set_rng_state(state["rng"])
        self.step_index = int(state["step"])

