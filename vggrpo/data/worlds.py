"""Prompted box-room worlds: the training videos of the demo's tiny base generator, flaws
included on purpose.

A *prompt* is a trajectory kind times a room style (:data:`WORLD_PROMPTS`, 6 of them): the
camera path (``dolly``, ``orbit``, ``pan``; :func:`~vggrpo.data.trajectories.camera_trajectory`)
and how full the room is (``sparse``: one static box, ``cluttered``: three). A prompt also fixes
the look: every video of it has the same surface colours and textures (texture seed
:data:`WORLD_TEXTURE_SEEDS` ``[prompt]``), as a text prompt would name them, while its room size,
path phase and box layout are its own.

A *flaw* is what makes a video world-inconsistent, as real generators' videos sometimes are
(:data:`WORLD_FLAWS`):

* ``none``: a smooth camera (``jitter`` drawn from 0..0.3, see ``camera_trajectory``) in a
  world that stays put;
* ``shaky``: the same world filmed with camera jitter 2..4 (what the motion reward scores);
* ``jump``: a smooth camera, but from a random frame ``k`` (between a quarter and three
  quarters of the video) on, one static box stands 1-1.5 m away from where it stood, or is gone
  when no such place is free (what the geometry reward scores: the static world changes).

A generator trained on a mix of them (default: half ``none``, a quarter of each flaw) makes
inconsistent videos too, some of the time; GRPO on the latent rewards should make them rarer.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Dict, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .._checks import is_int, is_positive_int
from ..geometry.cameras import camera_centres
from ..seeds import element_seed
from .scene import CAMERA_CLEARANCE, Box
from .synthetic import BoxRoomSpec, sample_scene_specs
from .trajectories import TRAJECTORIES

__all__ = ["WORLD_STYLES", "WORLD_FLAWS", "WORLD_PROMPTS", "WORLD_TEXTURE_SEEDS", "prompt_name",
           "world_spec",
           "render_world", "world_videos", "world_prompt_embeddings"]

WORLD_STYLES = ("sparse", "cluttered")
WORLD_FLAWS = ("none", "shaky", "jump")
#: (trajectory, style) of prompt ``i``: the trajectory varies slowest.
WORLD_PROMPTS: Tuple[Tuple[str, str], ...] = tuple(
    (t, s) for t in TRAJECTORIES for s in WORLD_STYLES)
#: The texture seed (vggrpo.data.synthetic's surface colours and patterns) of each prompt's
#: videos; chosen once, so that the six looks are distinct.
WORLD_TEXTURE_SEEDS = (11, 22, 33, 44, 55, 66)

_STATIC_BOXES = {"sparse": 1, "cluttered": 3}
_SMOOTH_JITTER = (0.0, 0.3)
_SHAKY_JITTER = (2.0, 4.0)
_JUMPS = (1.5, 1.2, 1.0)  # metres, tried in this order
_GAP = 0.1  # metres a moved box keeps from the walls and the other boxes


def prompt_name(prompt: int) -> str:
    """``"dolly/sparse"`` for prompt 0, and so on (:data:`WORLD_PROMPTS`)."""
    _check_prompt(prompt)
    return "/".join(WORLD_PROMPTS[prompt])


def _check_prompt(prompt) -> None:
    if not is_int(prompt) or not 0 <= prompt < len(WORLD_PROMPTS):
        raise ValueError(f"prompt must be an int in [0, {len(WORLD_PROMPTS)}) (WORLD_PROMPTS), "
                         f"got {prompt!r}")


def _uniform(gen: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=gen, dtype=torch.float64))


def _fits(box: Box, room: Box, others: Sequence[Box], centres: Tensor) -> bool:
    """``box`` stays ``_GAP`` inside the room's walls (horizontally), ``_GAP`` from the other
    boxes, and ``CAMERA_CLEARANCE`` from every camera centre ``[T,3]``."""
    for a in (0, 2):
        if box.lo[a] < room.lo[a] + _GAP or box.hi[a] > room.hi[a] - _GAP:
            return False
    for other in others:
        if all(box.lo[a] < other.hi[a] + _GAP and other.lo[a] < box.hi[a] + _GAP
               for a in range(3)):
            return False
    lo = torch.tensor(box.lo, dtype=centres.dtype)
    hi = torch.tensor(box.hi, dtype=centres.dtype)
    gap = (torch.maximum(lo - centres, centres - hi)).clamp_min(0).norm(dim=-1)
    return bool((gap > CAMERA_CLEARANCE).all())


def _jumped(spec: BoxRoomSpec, gen: torch.Generator) -> Tuple[Box, ...]:
    """The static boxes after the jump: box 0 moved 1-1.5 m along x or z (the first of the
    shuffled candidates that fits), or dropped when none fits."""
    boxes = spec.static_boxes
    box, others = boxes[0], boxes[1:]
    centres = camera_centres(spec.extrinsics.to(torch.float64))
    order = torch.randperm(4, generator=gen).tolist()
    for dist in _JUMPS:
        for k in order:
            axis, sign = (0, 2)[k // 2], (1.0, -1.0)[k % 2]
            shift = [0.0, 0.0, 0.0]
            shift[axis] = sign * dist
            moved = Box(tuple(v + d for v, d in zip(box.lo, shift)),
                        tuple(v + d for v, d in zip(box.hi, shift)), colour=box.colour)
            if _fits(moved, spec.room, others, centres):
                return (moved,) + others
    return others


def world_spec(prompt: int, flaw: str, seed: int, *, frames: int = 17, height: int = 96,
               width: int = 160) -> Tuple[BoxRoomSpec, Optional[BoxRoomSpec], int]:
    """The scene of one world video: ``(spec, after, k)``.

    ``spec`` renders frames ``0..k-1`` and ``after`` (``None`` unless ``flaw == "jump"``) frames
    ``k..T-1``; without a jump ``k = frames``. Everything is drawn from ``seed`` (an int), so the
    same arguments give the same world."""
    _check_prompt(prompt)
    if flaw not in WORLD_FLAWS:
        raise ValueError(f"flaw must be one of {WORLD_FLAWS}, got {flaw!r}")
    if not is_int(seed):
        raise ValueError(f"seed must be an int, got {seed!r}")
    trajectory, style = WORLD_PROMPTS[prompt]
    gen = torch.Generator().manual_seed(element_seed(int(seed), prompt))
    lo, hi = _SHAKY_JITTER if flaw == "shaky" else _SMOOTH_JITTER
    jitter = _uniform(gen, lo, hi)
    spec = sample_scene_specs(1, frames, height, width, trajectory=trajectory, jitter=jitter,
                              static_objects=_STATIC_BOXES[style], moving_objects=0,
                              seed=int(torch.randint(0, 2**62, (), generator=gen)))[0]
    spec = dataclasses.replace(spec, texture_seed=WORLD_TEXTURE_SEEDS[prompt])
    if flaw != "jump":
        return spec, None, frames
    k = int(torch.randint(max(frames // 4, 1), max(3 * frames // 4, 1) + 1, (), generator=gen))
    return spec, dataclasses.replace(spec, static_boxes=_jumped(spec, gen)), k


def render_world(prompt: int, flaw: str, seed: int, *, frames: int = 17, height: int = 96,
                 width: int = 160) -> Tensor:
    """The RGB video ``[T,3,H,W]`` (float32 in [0, 1]) of :func:`world_spec`."""
    spec, after, k = world_spec(prompt, flaw, seed, frames=frames, height=height, width=width)
    video = spec.render(height, width).video[0]
    if after is not None:
        video = torch.cat([video[:k], after.render(height, width).video[0, k:]])
    return video


def world_videos(count: int, *, frames: int = 17, height: int = 96, width: int = 160,
                 seed: int = 0, flaw_mix: Sequence[float] = (0.5, 0.25, 0.25),
                 progress: bool = False) -> Dict[str, Tensor]:
    """``count`` world videos: prompt ``i % 6`` for video ``i``, its flaw drawn with the
    probabilities ``flaw_mix`` (of ``none``, ``shaky``, ``jump``), its world from
    ``element_seed(seed, i)``.

    Returns ``video [N,T,3,H,W]`` (float32 in [0, 1]), ``prompt [N]`` and ``flaw [N]`` (int64,
    indices into :data:`WORLD_PROMPTS` and :data:`WORLD_FLAWS`)."""
    from tqdm.auto import tqdm

    if not is_positive_int(count):
        raise ValueError(f"count must be a positive int, got {count!r}")
    mix = [float(p) for p in flaw_mix] if isinstance(flaw_mix, (list, tuple)) else []
    if (len(mix) != len(WORLD_FLAWS) or not all(math.isfinite(p) and p >= 0 for p in mix)
            or sum(mix) <= 0):
        raise ValueError(f"flaw_mix must be {len(WORLD_FLAWS)} finite weights >= 0 (of "
                         f"{WORLD_FLAWS}) with a positive sum, got {flaw_mix!r}")
    gen = torch.Generator().manual_seed(int(seed))
    flaws = torch.multinomial(torch.tensor(mix, dtype=torch.float64), count, replacement=True,
                              generator=gen)
    prompts = torch.arange(count) % len(WORLD_PROMPTS)
    videos = [render_world(int(prompts[i]), WORLD_FLAWS[int(flaws[i])],
                           element_seed(int(seed), i), frames=frames, height=height, width=width)
              for i in tqdm(range(count), desc="worlds", disable=not progress, leave=False)]
    return {"video": torch.stack(videos), "prompt": prompts, "flaw": flaws}


def world_prompt_embeddings(tokens: int = 8, dim: int = 16, seed: int = 0) -> Tensor:
    """Fixed stand-ins for the text encoder's output, one per prompt: ``[6, tokens, dim]``
    float32, unit-variance Gaussian from ``seed``. The generator learns what each means."""
    if not (is_positive_int(tokens) and is_positive_int(dim)):
        raise ValueError(f"tokens and dim must be positive ints, got {tokens!r} and {dim!r}")
    gen = torch.Generator().manual_seed(int(seed))
    return torch.randn(len(WORLD_PROMPTS), tokens, dim, generator=gen)
