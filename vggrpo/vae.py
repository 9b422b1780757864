"""The video VAE side of the LGM: encoding videos into the diffusion latent space and back.

Wan's VAE (diffusers ``AutoencoderKLWan``) is causal in time: latent frame 0 encodes RGB frame 0
alone, and latent frame ``k >= 1`` encodes RGB frames ``4k-3 .. 4k``. A video of ``1 + 4k`` frames
gives ``1 + k`` latent frames, and **latent frame k stands for RGB frame 4k** (its last frame):
that is the frame the geometry backbone sees when the LGM connector is stitched
(:func:`aligned_frames`), and the frame the LGM's geometry describes.

Latents here are always in the *diffusion* space, i.e. normalised as the Wan pipelines do:
``(mode of the posterior - latents_mean) / latents_std`` per channel, with the statistics from the
VAE's config. The temporal factor (4) and spatial factor (8 for Wan2.1, 16 for Wan2.2) and the
channel count (16 / 48) are read from the VAE config.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, Optional

import torch
from torch import Tensor

from ._checks import is_finite_number, is_int, is_positive_int, short_repr

__all__ = ["TINY_WAN_VAE_CONFIG", "TRAINED_WAN_VAE_CONFIG", "load_vae_folder", "vae_factors",
           "encode_video", "decode_latents", "aligned_frames", "latent_frame_count",
           "check_video_frames",
           "vae_signature", "vae_mismatch", "signature_mismatch", "check_vae_signature",
           "reconstruction_psnr", "CPU_VIDEOS_PER_PASS"]

#: Videos per pass of the VAE on the CPU, without autograd (:func:`encode_video`,
#: :func:`decode_latents`). Two is the fastest on a 2-core VM for the embedded VAE (docs/vae.md,
#: "Speed on the CPU"); a lone video is run beside a copy of itself.
CPU_VIDEOS_PER_PASS = 2

# diffusers' own test size of AutoencoderKLWan (~14k parameters): runs in well under a second on a
# CPU, with Wan2.1's layout (16 latent channels, 8x spatial, 4x temporal).
TINY_WAN_VAE_CONFIG: Dict[str, Any] = {
    "base_dim": 3,
    "z_dim": 16,
    "dim_mult": [1, 1, 1, 1],
    "num_res_blocks": 1,
    "temperal_downsample": [False, True, True],
}

# The embedded, trained VAE (vggrpo.vae_training): Wan2.1's structure (16 latent channels, 8x
# spatial, 4x causal temporal, 3 down stages with a time downsampler in the last two, attention
# in the middle) at base width 16 instead of 96 and one residual block per stage instead of 2:
# 0.83M parameters, 3.3 MB in float32.
TRAINED_WAN_VAE_CONFIG: Dict[str, Any] = {
    "base_dim": 16,
    "z_dim": 16,
    "dim_mult": [1, 2, 2, 2],
    "num_res_blocks": 1,
    "temperal_downsample": [False, True, True],
}


_VAE_INT_KEYS = ("z_dim", "base_dim", "num_res_blocks", "scale_factor_spatial",
                 "scale_factor_temporal")


def load_vae_folder(folder) -> Any:
    """A local diffusers ``AutoencoderKLWan`` folder (``config.json`` and safetensors weights),
    checked before diffusers sees it, each a one-line ValueError naming the file: the config's
    sizes (``z_dim``, ``base_dim``... positive ints), weights in safetensors (a pickled ``.bin``
    is refused, never unpickled: convert it), every weight floating point. Returns the VAE in
    eval mode."""
    from pathlib import Path

    from safetensors import SafetensorError, safe_open

    from . import _io

    folder = Path(folder)
    config = _io.load_json(folder / "config.json", "VAE config")
    for key in _VAE_INT_KEYS:
        if key in config and config[key] is not None and not is_positive_int(config[key]):
            raise ValueError(f"VAE config {folder / 'config.json'}: {key} must be a positive "
                             f"int, got {short_repr(config[key])}")
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        pickles = sorted(p.name for p in folder.iterdir()
                         if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
        found = f" (it has {pickles}: pickle files, which vggrpo never loads; save them as " \
                f"safetensors)" if pickles else ""
        raise ValueError(f"VAE folder {folder} holds no .safetensors weights{found}")
    for f in weights:
        try:
            with safe_open(str(f), framework="pt") as handle:
                kinds = {k: handle.get_slice(k).get_dtype() for k in handle.keys()}
        except (SafetensorError, OSError) as err:
            raise ValueError(f"VAE weights {f} are not a readable safetensors file: "
                             f"{err}") from None
        wrong = sorted(k for k, d in kinds.items() if not d.startswith(("F", "BF")))
        if wrong:
            raise ValueError(f"VAE weights {f}: expected floating-point tensors, but "
                             f"{wrong[0]!r} is {kinds[wrong[0]]} ({len(wrong)} in all)")
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan.from_pretrained(str(folder), local_files_only=True,
                                            use_safetensors=True).eval()


def vae_factors(vae) -> Dict[str, int]:
    """``{"channels", "spatial", "temporal"}`` of a diffusers Wan VAE, read from its config."""
    cfg = vae.config
    return {
        "channels": int(cfg.z_dim),
        "spatial": int(getattr(cfg, "scale_factor_spatial", None) or 8),
        "temporal": int(getattr(cfg, "scale_factor_temporal", None) or 4),
    }


# Encoder weights whose norms agree within this relative tolerance count as the same weights: a
# bf16 copy of a VAE moves a norm by at most 2^-8 (0.4%: bf16 rounds each weight by at most that
# fraction of itself; fp16 by 2^-11), two random initialisations of the tiny VAE move 39 of its 58
# encoder norms by more than 1%.
_NORM_RTOL = 1e-2


def _encoder_parameters(vae):
    # Everything but the decoder side: those weights (and the latent statistics) fix what
    # encode_video returns.
    return [p for n, p in vae.named_parameters()
            if not n.startswith(("decoder.", "post_quant_conv."))]


def vae_signature(vae) -> Dict[str, Any]:
    """What identifies the latent space ``vae`` encodes to, as a JSON-ready dict.

    An LGM is stitched to one VAE's latents; another VAE with the same channel count (the tiny
    test VAE and Wan2.1's both have 16) gives latents of the right shape that mean something
    else, and a reward read from them is silently wrong. The LGM stores this signature
    (``config.json`` key ``"vae"``) and :func:`vae_mismatch` compares it with a VAE at hand.

    Returns:
        ``{"channels", "spatial", "temporal"}`` (:func:`vae_factors`), ``"latents_mean"`` and
        ``"latents_std"`` (lists of ``channels`` floats, or None when the config has none),
        ``"encoder_numels"`` (ints) and ``"encoder_norms"`` (float64 L2 norms), one entry per
        encoder-side parameter tensor in module order. The norms are dtype-robust (a bf16 copy
        matches) but tell different weights apart; the cost is one pass over the encoder weights.
    """
    cfg = vae.config
    stats = {}
    for key in ("latents_mean", "latents_std"):
        value = getattr(cfg, key, None)
        stats[key] = None if value is None else [float(v) for v in value]
    params = _encoder_parameters(vae)
    with torch.no_grad():
        # On the CPU in float64: the same on every device (MPS has no float64) and dtype.
        norms = [float(p.detach().to("cpu", torch.float64).norm()) for p in params]
    return {**vae_factors(vae), **stats, "encoder_numels": [int(p.numel()) for p in params],
            "encoder_norms": norms}


def check_vae_signature(value: Any, where: str) -> Dict[str, Any]:
    """``value`` (read from an untrusted file) if it is a well-formed :func:`vae_signature`;
    otherwise a ValueError naming ``where``."""
    def bad(why: str) -> ValueError:
        return ValueError(f"{where}: the VAE signature is malformed ({why})")

    if not isinstance(value, dict):
        raise bad(f"expected an object, got {type(value).__name__}")
    for key in ("channels", "spatial", "temporal"):
        if not is_positive_int(value.get(key)):
            raise bad(f"{key} must be a positive int, got {value.get(key)!r}")
    for key in ("latents_mean", "latents_std"):
        stats = value.get(key)
        if stats is not None and not (isinstance(stats, list) and len(stats) == value["channels"]
                                      and all(is_finite_number(v) for v in stats)):
            raise bad(f"{key} must be null or {value['channels']} numbers")
    numels, norms = value.get("encoder_numels"), value.get("encoder_norms")
    if not (isinstance(numels, list) and all(is_int(v) for v in numels)):
        raise bad("encoder_numels must be a list of ints")
    if not (isinstance(norms, list) and len(norms) == len(numels)
            and all(is_finite_number(v) for v in norms)):
        raise bad(f"encoder_norms must be {len(numels)} finite numbers, one per encoder tensor")
    return value


def vae_mismatch(expected: Dict[str, Any], vae) -> Optional[str]:
    """Why ``vae`` is not the VAE whose :func:`vae_signature` is ``expected`` (None when it is).

    The reason names the first difference found: the latent layout (channels, factors), the
    latent normalisation (``latents_mean`` / ``latents_std``, relative tolerance 1e-4), the
    encoder's architecture (tensor count and sizes), or its weights (norms more than 1% apart).
    """
    return signature_mismatch(expected, vae_signature(vae))


def signature_mismatch(expected: Dict[str, Any], got: Dict[str, Any]) -> Optional[str]:
    """:func:`vae_mismatch` of two signatures already computed (an LGM's resume compares the
    record it holds with its folder's), which saves a second pass over the encoder weights:
    why ``got`` is not ``expected``, or None."""
    for key in ("channels", "spatial", "temporal"):
        if got[key] != expected.get(key):
            return (f"its latents have {key} {got[key]}, the expected VAE's have "
                    f"{expected.get(key)}")
    for key in ("latents_mean", "latents_std"):
        a, b = expected.get(key), got[key]
        if (a is None) != (b is None) or (a is not None and (
                len(a) != len(b) or not all(math.isclose(x, y, rel_tol=1e-4, abs_tol=1e-6)
                                            for x, y in zip(a, b)))):
            return f"its latent normalisation ({key}) differs"
    numels = expected.get("encoder_numels")
    if numels != got["encoder_numels"]:
        return (f"its encoder has {len(got['encoder_numels'])} weight tensors of "
                f"{sum(got['encoder_numels'])} values, the expected VAE's "
                f"{len(numels or [])} of {sum(numels or [])}")
    off = sum(not math.isclose(x, y, rel_tol=_NORM_RTOL, abs_tol=1e-8)
              for x, y in zip(expected["encoder_norms"], got["encoder_norms"]))
    if off:
        return (f"its encoder weights differ ({off} of {len(numels)} weight tensors have norms "
                f"more than {_NORM_RTOL:.0%} from the expected VAE's)")
    return None


def latent_frame_count(frames: int, temporal: int = 4) -> int:
    """Latent frames of a ``frames``-frame video (``1 + (frames - 1) / temporal``)."""
    return 1 + (frames - 1) // temporal


def check_video_frames(frames: int, temporal: int = 4, name: str = "video") -> None:
    if frames < 1 or (frames - 1) % temporal != 0:
        lo = 1 + temporal * max((frames - 1) // temporal, 0)
        raise ValueError(
            f"{name} has {frames} frames; the Wan VAE needs 1 + {temporal}k frames "
            f"(e.g. {lo} or {lo + temporal}): trim or pad the video")


def aligned_frames(video: Tensor, temporal: int = 4) -> Tensor:
    """The RGB frames the latent frames stand for: ``video[:, ::temporal]``.

    ``video`` ``[B,T,3,H,W]`` with ``T = 1 + temporal*k`` -> ``[B,1+k,3,H,W]``.
    """
    check_video_frames(video.shape[1], temporal)
    return video[:, ::temporal]


def _latent_stats(vae, like: Tensor):
    cfg = vae.config
    C = int(cfg.z_dim)
    mean = getattr(cfg, "latents_mean", None)
    std = getattr(cfg, "latents_std", None)
    if mean is None or std is None:
        return torch.zeros(C).to(like), torch.ones(C).to(like)
    shape = (1, C, 1, 1, 1)
    return (torch.tensor(mean).to(like).view(shape), torch.tensor(std).to(like).view(shape))


def _fast_cpu_path(vae, x: Tensor) -> bool:
    """Whether ``x`` may go through the VAE by :func:`_passes`' CPU path: float32 on the CPU,
    with nothing for autograd to record (the path swaps the weights' layout for its duration)."""
    p = next(vae.parameters())
    if p.device.type != "cpu" or p.dtype != torch.float32 or x.device.type != "cpu":
        return False
    return not (torch.is_grad_enabled()
                and (x.requires_grad or any(q.requires_grad for q in vae.parameters())))


@contextmanager
def _channels_last_weights(vae) -> Iterator[None]:
    """Every 5-D weight of ``vae`` in ``channels_last_3d`` for the duration, restored after (the
    saved weights stay contiguous, which safetensors needs)."""
    convs = [p for p in vae.parameters() if p.dim() == 5]
    kept = [p.data for p in convs]
    try:
        for p in convs:
            p.data = p.data.contiguous(memory_format=torch.channels_last_3d)
        yield
    finally:
        for p, d in zip(convs, kept):
            p.data = d


def _passes(vae, x: Tensor, run: Callable[[Tensor], Tensor]) -> Tensor:
    """``run(x)`` (``x`` ``[B,C,T,H,W]``), on the CPU without autograd in passes of
    :data:`CPU_VIDEOS_PER_PASS` videos with the convolution weights and inputs channels-last.

    Why: for a batch of 1 at the embedded VAE's sizes torch's CPU ``conv3d`` leaves oneDNN for
    its slow native kernel (``aten::slow_conv3d_forward`` in the profiler), a large batch runs
    slower per video than small ones, and the channels-first layout makes Wan's RMS norm reduce
    over strided channels. Together about 3x on a 2-core VM (docs/vae.md); the result
    equals the one-pass one within float rounding. Elsewhere, one pass as diffusers does it."""
    if not _fast_cpu_path(vae, x):
        return run(x)
    step, out = CPU_VIDEOS_PER_PASS, []
    if not is_positive_int(step):
        raise ValueError(f"vggrpo.vae.CPU_VIDEOS_PER_PASS must be a positive int, got "
                         f"{short_repr(step)}")
    with _channels_last_weights(vae):
        for a in range(0, x.shape[0], step):
            part = x[a:a + step]
            if part.shape[0] == 1 and step > 1:  # beside a copy of itself: see above
                part = part.expand(2, *part.shape[1:])
            y = run(part.contiguous(memory_format=torch.channels_last_3d))
            out.append(y[:min(step, x.shape[0] - a)].contiguous())
    return torch.cat(out)


def encode_video(vae, video: Tensor) -> Tensor:
    """RGB video -> normalised diffusion latents (the posterior's mode, no sampling).

    Args:
        vae: a diffusers ``AutoencoderKLWan`` (any size).
        video: ``[B,T,3,H,W]`` in [0,1], ``T = 1 + 4k``, ``H, W`` multiples of the spatial factor.
    Returns:
        ``[B,C,1+k,H/s,W/s]`` latents in the VAE's dtype (``C`` and ``s`` from its config).
    """
    f = vae_factors(vae)
    if video.dim() != 5 or video.shape[2] != 3:
        raise ValueError(f"video must be [B,T,3,H,W] in [0,1], got {list(video.shape)}")
    check_video_frames(video.shape[1], f["temporal"])
    H, W = video.shape[-2:]
    if H % f["spatial"] or W % f["spatial"]:
        raise ValueError(f"video height and width must be multiples of the VAE's spatial factor "
                         f"{f['spatial']}, got {H}x{W}")
    dtype = next(vae.parameters()).dtype
    x = (video.permute(0, 2, 1, 3, 4) * 2.0 - 1.0).to(dtype)
    z = _passes(vae, x, lambda part: vae.encode(part).latent_dist.mode())
    mean, std = _latent_stats(vae, z)
    return (z - mean) / std


def decode_latents(vae, latents: Tensor) -> Tensor:
    """Normalised diffusion latents ``[B,C,T',h,w]`` -> RGB video ``[B,1+4(T'-1),3,H,W]`` in
    [0,1]."""
    f = vae_factors(vae)
    if latents.dim() != 5 or latents.shape[1] != f["channels"]:
        raise ValueError(f"latents must be [B,{f['channels']},T,h,w] for this VAE, "
                         f"got {list(latents.shape)}")
    mean, std = _latent_stats(vae, latents)
    z = latents.to(next(vae.parameters()).dtype) * std + mean
    x = _passes(vae, z, lambda part: vae.decode(part).sample)  # [B,3,T,H,W] in about [-1,1]
    return ((x.permute(0, 2, 1, 3, 4) + 1.0) / 2.0).clamp(0.0, 1.0)


@torch.no_grad()
def reconstruction_psnr(vae, videos: Tensor, batch: int = 4) -> float:
    """Peak signal-to-noise ratio (dB) of ``videos`` ``[N,T,3,H,W]`` in [0,1] against their
    round trip :func:`decode_latents` (:func:`encode_video`), over every pixel of every frame:
    ``10 log10(1 / MSE)``."""
    se, count = 0.0, 0
    for start in range(0, videos.shape[0], batch):
        x = videos[start:start + batch]
        back = decode_latents(vae, encode_video(vae, x)).to(x)
        se += float(((back - x).double() ** 2).sum())
        count += x.numel()
    return 10.0 * math.log10(count / max(se, 1e-30))
