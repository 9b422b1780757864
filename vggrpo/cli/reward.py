"""``vggrpo reward``: score videos (files or frame folders) or saved latents with the LGM
rewards."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List

import torch

from .. import _io
from .options import (
    UsageError,
    add_backbone_option,
    add_video_size_options,
    check_finite_rewards,
    load_lgm,
    load_vae,
    non_negative_float,
    output_file,
    positive_int,
    wan_frames,
)


def add_parser(sub) -> None:
    """Add this command to the ``vggrpo`` subparsers ``sub``."""
    r = sub.add_parser("reward", help="score videos or saved latents with the LGM rewards")
    r.add_argument("inputs", nargs="+", help="video files, frame folders, or .safetensors with "
                   "floating-point latents [B,C,T,h,w]")
    r.add_argument("--lgm", default="default",
                   help="LGM folder, or 'default' for the embedded one (default: %(default)s)")
    add_backbone_option(r)
    r.add_argument("--vae", default="tiny", help="VAE folder (or pipeline folder) that encodes "
                   "the videos, or 'tiny' for the embedded one (default: %(default)s)")
    add_video_size_options(r, frames_type=wan_frames,
                           frames_help="frames read per video, 1 + 4k", what="videos")
    r.add_argument("--topk", type=positive_int, default=3,
                   help="the geometry reward averages the k worst views (default: %(default)s)")
    r.add_argument("--flow-threshold", type=non_negative_float, default=0.1,
                   help="a point whose scene-flow norm exceeds this (world units) is dynamic "
                        "and left out of the geometry reward (default: %(default)s)")
    r.add_argument("--coverage", action="store_true",
                   help="also print the share of pixels the geometry reward scored (0 for "
                        "geometry that projects nowhere, which the geometry reward scores 0, "
                        "its best; docs/conventions.md)")
    r.add_argument("--out", help="also write the scores to this JSON file")
    r.set_defaults(fn=run)


def run(args) -> int:
    from ..data.video import read_video
    from ..latent_reward import LatentGeometryReward
    from ..vae import encode_video

    out = output_file(args.out) if args.out else None
    lgm = load_lgm(args.lgm, args.backbone)
    reward = LatentGeometryReward(lgm, topk=args.topk, flow_threshold=args.flow_threshold,
                                  coverage=1.0 if args.coverage else None)
    vae = None
    rows: List[Dict[str, Any]] = []
    for item in args.inputs:
        path = Path(item)
        if not path.exists():
            raise FileNotFoundError(f"input not found: {path}")
        if path.suffix == ".safetensors":
            tensors = _io.load_tensors(path, "latents", floating=False)
            if "latents" not in tensors:
                raise UsageError(f"{path} must hold a 'latents' tensor [B,C,T,h,w]; it has "
                                 f"{sorted(tensors)}")
            latents = tensors["latents"]
            # Checked here, not by the reward: the .float() below would pass integer codes as
            # latents, a batch of 0 would print nothing and exit 0, and NaN / inf would print
            # (and save) NaN scores.
            if not latents.is_floating_point():
                raise UsageError(f"{path}: 'latents' must be a floating-point tensor [B,C,T,h,w], "
                                 f"got {latents.dtype}")
            if latents.dim() == 5 and latents.shape[0] == 0:
                raise UsageError(f"{path}: 'latents' {list(latents.shape)} holds no video "
                                 f"(batch 0); nothing to score")
            bad = int((~torch.isfinite(latents)).sum())
            if bad:
                raise UsageError(f"{path}: 'latents' must be finite; {bad} of its "
                                 f"{latents.numel()} values are NaN or inf")
            latents = latents.float()
        else:
            if vae is None:
                vae = load_vae(args.vae)
                lgm.check_vae(vae, name=f"--vae {args.vae}")
            video = read_video(path, frames=args.frames, height=args.height, width=args.width)
            latents = encode_video(vae, video[None])
        with torch.no_grad():
            r = reward(latents)
        check_finite_rewards(r, f"{path}")
        for b in range(latents.shape[0]):
            rows.append({"input": path.name, "index": b,
                         **{k: float(v[b]) for k, v in r.items()}})
    for row in rows:
        print(f"{row['input']}[{row['index']}]  motion {row['motion']:.4f}  geo {row['geo']:.4f}"
              + (f"  coverage {row['coverage']:.4f}" if "coverage" in row else ""))
    if out is not None:
        _io.save_json(out, {"rows": rows})
    return 0
