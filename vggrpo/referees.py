"""Referees: judges of generated videos that training never sees (the demo's before / after).

GRPO and reward guidance optimise the LGM's rewards on latents. Whether the *videos* got more
consistent is for other instruments to say, on the decoded RGB frames only:

* ``rgb_motion`` — the camera motion reward of the RGB path: the geometry backbone run on the
  frames the latent frames stand for (:func:`vggrpo.vae.aligned_frames`), not on latents. It is
  the camera jitter that the RGB path reads (higher is smoother; 1 is a constant-velocity
  camera).
* ``sampson_px`` — the Sampson epipolar error (pixels, lower is better) of consecutive frames
  from OpenCV's tracked corners (:func:`vggrpo.evaluation.sampson_error`, ``matcher="klt"``);
  NaN for a video with no usable frame pair.
* ``fidelity_l1`` — distance to real videos (lower is better): the mean absolute pixel
  difference, in [0, 1] units, to the nearest held-out real video of the same prompt (or of any
  prompt without prompts). A generator that collapses to grey frames, or hacks the reward with
  videos nothing like its training data (patterns no real video has), moves away from every
  real video. Every decoded video is blurrier than a real one, so this is never 0 for samples:
  it is a before / after comparison, not an absolute score. (Comparing 4x4-pooled frames, to
  discount that blur, was tried: it also averaged away the fine grid pattern GRPO's samples
  picked up in the demo, docs/demo.md, so the full frames are compared.)

A re-encoding check (``PSNR(x, decode(encode(x)))``) was tried as a second fidelity referee and
left out: the small VAE decodes at about 1.2 s a video on the 2-core VM, so it cost the demo 40 s
of its 3-minute budget.

:func:`paired_effect` compares two sets of referee values of the same noise and prompts
(before / after, unguided / guided).
"""

from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import Tensor

from .evaluation import sampson_error
from .vae import aligned_frames

__all__ = ["REFEREE_NAMES", "HIGHER_IS_BETTER", "video_referees", "paired_effect"]

REFEREE_NAMES = ("rgb_motion", "sampson_px", "fidelity_l1")
#: For each referee: is a larger value better?
HIGHER_IS_BETTER = {"rgb_motion": True, "sampson_px": False, "fidelity_l1": False}


def _check_video(name: str, video) -> None:
    if not isinstance(video, Tensor) or video.dim() != 5 or video.shape[2] != 3:
        got = list(video.shape) if isinstance(video, Tensor) else type(video).__name__
        raise ValueError(f"{name} must be [B,T,3,H,W] RGB in [0,1], got {got}")
    if not bool(torch.isfinite(video).all()):
        raise ValueError(f"{name} has non-finite values")


def _check_prompts(name: str, prompts, count: int) -> None:
    if not isinstance(prompts, Tensor) or prompts.shape != (count,) or prompts.is_floating_point():
        got = list(prompts.shape) if isinstance(prompts, Tensor) else type(prompts).__name__
        raise ValueError(f"{name} must be an integer tensor [{count}] (one prompt per video), "
                         f"got {got}")


@torch.no_grad()
def video_referees(videos: Tensor, *, backbone, real_videos: Tensor,
                   prompts: Optional[Tensor] = None, real_prompts: Optional[Tensor] = None,
                   temporal: int = 4) -> Dict[str, Tensor]:
    """The referees (module docstring) of each video.

    Args:
        videos: ``[B,T,3,H,W]`` float in [0,1], ``T = 1 + temporal k`` (decoded samples).
        backbone: a geometry backbone on RGB frames (``[B,T',3,H,W] -> Geometry``; the embedded
            tiny one: :func:`vggrpo.defaults.load_tiny_backbone`).
        real_videos: ``[N,T,3,H,W]`` held-out real videos in [0,1], same size.
        prompts / real_prompts: ``[B]`` / ``[N]`` integer prompt ids, both or neither; with them
            each video is compared with the real videos of its own prompt only.
        temporal: the VAE's temporal factor (4 for Wan).
    Returns:
        ``{name: [B] float32}`` for every name of :data:`REFEREE_NAMES` (``sampson_px`` NaN where
        a video had no usable frame pair).
    """
    _check_video("videos", videos)
    _check_video("real_videos", real_videos)
    if real_videos.shape[1:] != videos.shape[1:]:
        raise ValueError(f"real_videos must have the videos' frame count and size "
                         f"{list(videos.shape[1:])}, got {list(real_videos.shape[1:])}")
    if (prompts is None) != (real_prompts is None):
        raise ValueError("prompts and real_prompts: give both (compare within a prompt) or "
                         "neither")
    B = videos.shape[0]
    if prompts is not None:
        _check_prompts("prompts", prompts, B)
        _check_prompts("real_prompts", real_prompts, real_videos.shape[0])
        missing = sorted(set(prompts.tolist()) - set(real_prompts.tolist()))
        if missing:
            raise ValueError(f"real_videos have no video of prompts {missing}")
    motion = backbone(aligned_frames(videos, temporal)).rewards()["motion"].float()
    sampson = torch.tensor([sampson_error(v, matcher="klt")["sampson"] for v in videos])
    flat, real_flat = videos.flatten(1).float(), real_videos.flatten(1).float()
    fidelity = torch.empty(B)
    for i in range(B):
        pool = real_flat if prompts is None else real_flat[real_prompts == prompts[i]]
        fidelity[i] = (pool - flat[i]).abs().mean(1).min()
    return {"rgb_motion": motion.cpu(), "sampson_px": sampson.float(), "fidelity_l1": fidelity}


def paired_effect(before: Tensor, after: Tensor, higher_is_better: bool) -> Dict[str, float]:
    """How ``after`` ``[B]`` differs from ``before`` ``[B]``, video by video (same noise, same
    prompt), over the pairs where both are finite.

    Returns ``{"before", "after"}`` (means), ``"change"`` (mean of ``after - before``),
    ``"effect_size"`` (that mean over the standard deviation of the differences, sign turned
    so that positive is better; NaN for fewer than 2 pairs or no spread), ``"better_share"``
    (share of pairs that got strictly better) and ``"pairs"``.
    """
    if (not isinstance(before, Tensor) or not isinstance(after, Tensor)
            or before.dim() != 1 or before.shape != after.shape):
        got = [list(x.shape) if isinstance(x, Tensor) else type(x).__name__
               for x in (before, after)]
        raise ValueError(f"before and after must be 1-D tensors of one length, got {got}")
    b, a = before.double(), after.double()
    ok = torch.isfinite(b) & torch.isfinite(a)
    b, a = b[ok], a[ok]
    n = int(ok.sum())
    nan = float("nan")
    if n == 0:
        return {"before": nan, "after": nan, "change": nan, "effect_size": nan,
                "better_share": nan, "pairs": 0}
    diff = a - b
    sign = 1.0 if higher_is_better else -1.0
    sd = float(diff.std()) if n >= 2 else 0.0
    return {"before": float(b.mean()), "after": float(a.mean()), "change": float(diff.mean()),
            "effect_size": sign * float(diff.mean()) / sd if sd > 0 else nan,
            "better_share": float((sign * diff > 0).double().mean()), "pairs": n}
