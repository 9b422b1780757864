"""One flow-matching sampler for everything: ODE steps, SDE steps with log-probabilities (GRPO
rollouts), and test-time reward guidance. The rollouts of :mod:`vggrpo.grpo` and the guided
sampler are this same function, :func:`sample`.

Convention (rectified flow, as Wan): ``x_s = (1 - s) x0 + s eps`` for a noise level ``s`` in
[0, 1] (the scheduler's *sigma*); the model predicts the velocity ``v = dx/ds = eps - x0``; the
clean estimate at any step is ``x0_hat = x - s v``. Sampling walks a decreasing schedule
``s_0 = 1 > s_1 > ... > s_N = 0`` with steps ``dt = s_{i+1} - s_i < 0``.

* **ODE (Euler) step**: ``x' = x + dt v``.
* **SDE step** (the reverse-time SDE with the same marginals, discretised as Flow-GRPO does),
  with noise scale ``sigma_t = a sqrt(s / (1 - s))`` (``a`` = ``noise_level``)::

      mean = x + dt [ v + sigma_t^2 / (2 s) (x + (1 - s) v) ]
      std  = sigma_t sqrt(-dt)
      x'   = mean + std * eps,   eps ~ N(0, I)

  ``log_prob`` is the Gaussian log-density of ``x'`` under ``N(mean, std^2 I)``, **averaged over
  the elements** of each sample (``[B]``; the per-element mean keeps ratios of long latents in a
  usable range, as Flow-GRPO). ``noise_level = 0`` gives exactly the ODE step. At ``s = 1``
  ``sigma_t`` would be infinite; the noise scale uses ``min(s, max_noise_sigma)`` (default 0.99).
  All SDE math runs in float32 (float64 if the latents are float64) whatever the model's dtype.
* **Reward guidance** (paper appendix) on a chosen interval of steps::

      v <- v - scale * s / (1 - s) * grad r(x0_hat),   r = sum_k w_k r_k

  The gradient is taken with respect to ``x0_hat`` with ``v`` held fixed (no backpropagation
  through the video model: for a fixed ``v``, ``grad_x r(x - s v) = grad r(x0_hat)``). Since
  ``dt < 0``, the update moves ``x`` up the reward. ``s = 1`` cannot be in the interval.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor

from ._checks import is_finite_number, is_positive_int
from .schedules import check_step_window

__all__ = [
    "SDEStep",
    "Trajectory",
    "RewardGuidance",
    "check_wan_inputs",
    "scheduler_sigmas",
    "wan_velocity",
    "ode_step",
    "sde_step",
    "sde_noise_std",
    "draw_noise",
    "sample",
]

Velocity = Callable[[Tensor, float], Tensor]

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


@dataclass
class SDEStep:
    """One SDE step: ``sample``, ``mean`` (latent shape), ``std`` (scalar tensor),
    ``log_prob [B]``."""

    sample: Tensor
    mean: Tensor
    std: Tensor
    log_prob: Tensor


@dataclass
class Trajectory:
    """What :func:`sample` walked through.

    * ``latents``: ``N + 1`` tensors ``[B,C,T,h,w]``, ``latents[0]`` the starting noise and
      ``latents[-1]`` the final sample (float32 / float64).
    * ``sigmas``: ``[N + 1]`` float64 schedule.
    * ``sde_steps``: indices ``i`` of the SDE steps (``latents[i] -> latents[i+1]``).
    * ``log_probs``: ``[B, len(sde_steps)]``; ``stds``: ``[len(sde_steps)]``.
    * ``guidance``: per guided step, the weighted reward of ``x0_hat`` before the update ``[B]``.
    """

    latents: List[Tensor]
    sigmas: Tensor
    sde_steps: List[int]
    log_probs: Tensor
    stds: Tensor
    guidance: Dict[int, Tensor] = field(default_factory=dict)

    @property
    def final(self) -> Tensor:
        return self.latents[-1]


@dataclass
class RewardGuidance:
    """Test-time reward guidance: ``reward(x0_hat) -> {name: [B]}`` weighted by ``weights``.

    ``steps``: ``(start, end)``, the step indices ``start <= i < end`` that are guided; ``scale``
    multiplies the guidance term (see the module docstring). ``scale`` and the weights must be
    finite numbers (a NaN would turn every guided latent into NaN).
    """

    reward: Callable[[Tensor], Dict[str, Tensor]]
    scale: float
    steps: Tuple[int, int]
    weights: Dict[str, float] = field(default_factory=lambda: {"motion": 1.0, "geo": 1.0})

    def __post_init__(self) -> None:
        if not is_finite_number(self.scale):
            raise ValueError(f"RewardGuidance.scale must be a finite number, got {self.scale!r}")
        if not isinstance(self.weights, dict) or not all(
                isinstance(k, str) and is_finite_number(w) for k, w in self.weights.items()):
            raise ValueError(f"RewardGuidance.weights must map reward names to finite numbers, "
                             f"got {self.weights!r}")


def check_wan_inputs(transformer, *, prompt_embeds: Optional[Tensor] = None,
                     negative_prompt_embeds: Optional[Tensor] = None,
                     latent_shape: Optional[Tuple[int, ...]] = None, min_frames: int = 1) -> None:
    """Check, before any sampling, what a video model is about to be given; raise one
    ``ValueError`` naming the argument, what the model expects and what came.

    * ``prompt_embeds``: ``[P,L,D]`` floating point, finite, ``D`` = the model's ``text_dim``.
    * ``negative_prompt_embeds``: the same shape as ``prompt_embeds`` (they are batched
      together for classifier-free guidance), finite.
    * ``latent_shape``: ``(C, T, h, w)`` of one sample: positive ints, ``C`` = the model's
      ``in_channels``, ``T, h, w`` multiples of its ``patch_size``, at most
      ``rope_max_seq_len`` patches along each, and ``T >= min_frames`` (the camera motion reward
      needs 3 latent frames).

    What the model's config does not state (a model that is not a diffusers Wan transformer) is
    not checked. The finiteness test reads the embeddings back (one device sync): call this once
    at set-up, not per step.
    """
    config = getattr(transformer, "config", None)
    text_dim = getattr(config, "text_dim", None)
    for name, emb in (("prompt_embeds", prompt_embeds),
                      ("negative_prompt_embeds", negative_prompt_embeds)):
        if emb is None:
            continue
        if not isinstance(emb, Tensor) or emb.dim() != 3 or not emb.is_floating_point():
            what = (f"{emb.dtype} {list(emb.shape)}" if isinstance(emb, Tensor)
                    else type(emb).__name__)
            raise ValueError(f"{name} must be a floating-point tensor [P,L,D], got {what}")
        if emb.shape[0] < 1 or emb.shape[1] < 1:
            raise ValueError(f"{name} must hold at least one prompt of at least one token "
                             f"[P,L,D], got {list(emb.shape)}")
        if text_dim is not None and emb.shape[-1] != int(text_dim):
            raise ValueError(f"{name} has width D = {emb.shape[-1]} but the model's text_dim is "
                             f"{int(text_dim)}: {list(emb.shape)}")
        if name == "negative_prompt_embeds" and prompt_embeds is not None \
                and emb.shape != prompt_embeds.shape:
            raise ValueError(f"negative_prompt_embeds must have the shape of prompt_embeds "
                             f"{list(prompt_embeds.shape)} (they are batched together for "
                             f"classifier-free guidance), got {list(emb.shape)}")
        if not bool(torch.isfinite(emb).all()):
            raise ValueError(f"{name} holds NaN or inf values")
    if latent_shape is None:
        return
    shape = tuple(latent_shape)
    if len(shape) != 4 or not all(is_positive_int(n) for n in shape):
        raise ValueError(f"latent_shape must be (C, T, h, w) of positive ints, got {latent_shape}")
    channels = getattr(config, "in_channels", None)
    if channels is not None and shape[0] != int(channels):
        raise ValueError(f"latent_shape {shape} has C = {shape[0]} channels but the model takes "
                         f"{int(channels)}")
    if shape[1] < min_frames:
        raise ValueError(f"latent_shape {shape} has T = {shape[1]} latent frames; at least "
                         f"{min_frames} are needed (the camera motion reward needs 3)")
    patch = getattr(config, "patch_size", None)
    if patch is not None and len(patch) == 3:
        for axis, n, p in zip("Thw", shape[1:], patch):
            if n % int(p):
                raise ValueError(f"latent_shape {shape}: {axis} = {n} is not a multiple of the "
                                 f"model's patch size {tuple(patch)} (T, h, w)")
        # Wan's rotary embedding has positions for rope_max_seq_len patches along each axis;
        # beyond, the model fails with a reshape error naming none of this.
        rope = getattr(config, "rope_max_seq_len", None)
        if rope is not None:
            for axis, n, p in zip("Thw", shape[1:], patch):
                if n // int(p) > int(rope):
                    raise ValueError(f"latent_shape {shape}: {axis} = {n} is {n // int(p)} "
                                     f"patches, more than the model's rope_max_seq_len "
                                     f"{int(rope)}")


def scheduler_sigmas(scheduler, num_steps: int) -> Tensor:
    """The schedule of a diffusers flow-matching scheduler (``FlowMatchEulerDiscreteScheduler``,
    ``UniPCMultistepScheduler`` with flow prediction, ...) as a float64 ``[num_steps + 1]`` tensor
    ending at 0."""
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive int, got {num_steps!r}")
    scheduler.set_timesteps(num_steps)
    sigmas = torch.as_tensor(scheduler.sigmas, dtype=torch.float64).flatten().cpu()
    if sigmas.numel() == num_steps:
        sigmas = torch.cat([sigmas, sigmas.new_zeros(1)])
    return sigmas


def wan_velocity(transformer, prompt_embeds: Tensor, *, negative_prompt_embeds: Optional[Tensor]
                 = None, guidance_scale: float = 1.0, num_train_timesteps: int = 1000) -> Velocity:
    """A velocity function ``(x [B,C,T,h,w], s) -> v`` (float32) around a diffusers
    ``WanTransformer3DModel``, with prompt embeddings given directly ``[B,L,D]``.

    Classifier-free guidance when ``guidance_scale != 1`` and negative embeddings are given:
    ``v = v_neg + g (v_pos - v_neg)`` (one batched call). The model runs in its own dtype; the
    timestep is ``s * num_train_timesteps`` as in the Wan pipelines.
    """
    cfg = negative_prompt_embeds is not None and guidance_scale != 1.0
    dtype = next(transformer.parameters()).dtype

    def velocity(x: Tensor, s: float) -> Tensor:
        B = x.shape[0]
        if prompt_embeds.shape[0] != B:
            raise ValueError(f"prompt_embeds has batch {prompt_embeds.shape[0]}, latents {B}")
        if cfg:
            xin = torch.cat([x, x]).to(dtype)
            emb = torch.cat([prompt_embeds, negative_prompt_embeds]).to(dtype)
        else:
            xin, emb = x.to(dtype), prompt_embeds.to(dtype)
        t = torch.full((xin.shape[0],), float(s) * num_train_timesteps, device=x.device)
        out = transformer(hidden_states=xin, timestep=t, encoder_hidden_states=emb,
                          return_dict=False)[0].float()
        if cfg:
            pos, neg = out[:B], out[B:]
            return neg + guidance_scale * (pos - neg)
        return out

    return velocity


def _math_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def ode_step(x: Tensor, v: Tensor, sigma: float, sigma_next: float) -> Tensor:
    """Euler step ``x + (sigma_next - sigma) v`` in float32 (float64 for float64 latents)."""
    dt = float(sigma_next) - float(sigma)
    dtype = _math_dtype(x)
    return x.to(dtype) + dt * v.to(dtype)


def sde_noise_std(sigma: float, noise_level: float, max_noise_sigma: float = 0.99) -> float:
    """``sigma_t = noise_level * sqrt(s / (1 - s))`` with ``s`` capped at ``max_noise_sigma``."""
    s = min(float(sigma), max_noise_sigma)
    return float(noise_level) * math.sqrt(s / (1.0 - s)) if s > 0 else 0.0


def draw_noise(shape, generator, dtype: torch.dtype, device) -> Tensor:
    """Standard normal noise of ``shape``. ``generator``: None, a ``torch.Generator``, or a list
    of generators, one per equal slice of the batch (dimension 0), e.g. one per prompt group so a
    group's draws do not depend on what else shares its batch."""
    if isinstance(generator, (list, tuple)):
        n = len(generator)
        if n == 0 or shape[0] % n != 0:
            raise ValueError(f"a list of {n} generators needs a batch divisible by it, "
                             f"got batch {shape[0]}")
        part = (shape[0] // n,) + tuple(shape[1:])
        return torch.cat([draw_noise(part, g, dtype, device) for g in generator])
    where = device if generator is None else generator.device
    return torch.randn(shape, generator=generator, dtype=dtype, device=where).to(device)


def sde_step(x: Tensor, v: Tensor, sigma: float, sigma_next: float, noise_level: float, *,
             generator: Optional[torch.Generator] = None, noise: Optional[Tensor] = None,
             prev_sample: Optional[Tensor] = None, max_noise_sigma: float = 0.99) -> SDEStep:
    """One SDE step (module docstring). ``prev_sample`` given: no sampling, its log-probability
    under this step's Gaussian is returned (the GRPO ratio's numerator); else ``noise`` (or a draw
    from ``generator``) makes the sample.

    ``x``, ``v``: ``[B,...]`` latents and velocity; ``sigma > sigma_next >= 0``. Returns
    :class:`SDEStep` in float32 (float64 for float64 latents).
    """
    sigma, sigma_next = float(sigma), float(sigma_next)
    if not sigma > sigma_next >= 0.0:
        raise ValueError(f"an SDE step needs sigma > sigma_next >= 0, got {sigma} -> {sigma_next}")
    if noise_level < 0:
        raise ValueError(f"noise_level must be >= 0, got {noise_level}")
    dtype = _math_dtype(x)
    x, v = x.to(dtype), v.to(dtype)
    dt = sigma_next - sigma
    std_t = sde_noise_std(sigma, noise_level, max_noise_sigma)
    drift = v + (std_t ** 2 / (2.0 * sigma)) * (x + (1.0 - sigma) * v)
    mean = x + dt * drift
    std = std_t * math.sqrt(-dt)
    std_tensor = torch.tensor(std, dtype=dtype, device=x.device)
    if prev_sample is None:
        if noise is None:
            noise = draw_noise(x.shape, generator, dtype, x.device)
        sample_ = mean + std * noise.to(device=x.device, dtype=dtype)
    else:
        sample_ = prev_sample.to(dtype)
    if std > 0:
        z = (sample_.detach() - mean) / std
        log_prob = (-0.5 * z * z - math.log(std) - _LOG_SQRT_2PI).flatten(1).mean(1)
    else:  # a deterministic step has no density; 0 keeps ratios at exactly 1
        log_prob = torch.zeros(x.shape[0], dtype=dtype, device=x.device)
    return SDEStep(sample=sample_, mean=mean, std=std_tensor, log_prob=log_prob)


def _guided(velocity_v: Tensor, x: Tensor, sigma: float, g: RewardGuidance
            ) -> Tuple[Tensor, Tensor]:
    x0_hat = (x - sigma * velocity_v).detach().requires_grad_(True)
    with torch.enable_grad():
        rewards = g.reward(x0_hat)
        unknown = sorted(set(g.weights) - set(rewards))
        if unknown:
            raise ValueError(f"guidance weights name rewards {unknown} the reward does not give "
                             f"(it gives {sorted(rewards)})")
        total = sum(w * rewards[k].float() for k, w in g.weights.items() if w != 0)
        if not torch.is_tensor(total):
            return velocity_v, torch.zeros(x.shape[0])
        grad = torch.autograd.grad(total.sum(), x0_hat)[0]
    return velocity_v - g.scale * sigma / (1.0 - sigma) * grad.to(velocity_v.dtype), total.detach()


def sample(
    velocity: Velocity,
    noise: Tensor,
    sigmas: Tensor,
    *,
    sde_window: Optional[Tuple[int, int]] = None,
    noise_level: float = 0.7,
    generator: Optional[torch.Generator] = None,
    guidance: Optional[RewardGuidance] = None,
    max_noise_sigma: float = 0.99,
) -> Trajectory:
    """Integrate from ``noise`` (``x`` at ``sigmas[0]``) to ``sigmas[-1]``.

    Args:
        velocity: ``(x, s) -> v``, e.g. :func:`wan_velocity`. Called under ``torch.no_grad``.
        noise: ``[B,C,T,h,w]`` starting latents.
        sigmas: ``[N + 1]`` decreasing schedule (e.g. :func:`scheduler_sigmas`).
        sde_window: ``(start, end)``: steps ``start <= i < end`` are SDE steps with
            log-probabilities (the GRPO-trained steps); the others are ODE steps. None: all ODE.
        noise_level: ``a`` of the SDE noise scale.
        generator: draws the SDE noise: a ``torch.Generator`` or a list of them (one per equal
            slice of the batch, see :func:`draw_noise`).
        guidance: :class:`RewardGuidance`, or None.
    Returns:
        :class:`Trajectory`.
    """
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64).flatten().cpu()
    steps = sigmas.numel() - 1
    if steps < 1 or not bool((sigmas[1:] < sigmas[:-1]).all()) or float(sigmas[-1]) < 0:
        raise ValueError(f"sigmas must be a strictly decreasing schedule of >= 2 values ending "
                         f">= 0, got {sigmas.tolist()}")
    sde = check_step_window(sde_window, steps, "sde_window")
    guided = check_step_window(guidance.steps if guidance else None, steps, "guidance steps")
    if guidance is not None and any(float(sigmas[i]) >= 1.0 for i in guided):
        raise ValueError("guidance steps must not include a step at sigma = 1 (s/(1-s) is "
                         "infinite there); start the interval at step 1 or later")
    if noise.dim() != 5:
        raise ValueError(f"noise must be latents [B,C,T,h,w], got {list(noise.shape)}")

    x = noise.to(_math_dtype(noise))
    latents, log_probs, stds, guidance_log = [x], [], [], {}
    for i in range(steps):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        with torch.no_grad():
            v = velocity(x, s).to(x.dtype)
        if i in guided:
            v, guidance_log[i] = _guided(v, x, s, guidance)
        with torch.no_grad():
            if i in sde:
                step = sde_step(x, v, s, s_next, noise_level, generator=generator,
                                max_noise_sigma=max_noise_sigma)
                x = step.sample
                log_probs.append(step.log_prob)
                stds.append(step.std)
            else:
                x = ode_step(x, v, s, s_next)
        latents.append(x)
    B = noise.shape[0]
    return Trajectory(
        latents=latents,
        sigmas=sigmas,
        sde_steps=list(sde),
        log_probs=torch.stack(log_probs, 1) if log_probs else torch.zeros(B, 0, dtype=x.dtype),
        stds=torch.stack(stds) if stds else torch.zeros(0, dtype=x.dtype),
        guidance=guidance_log,
    )
