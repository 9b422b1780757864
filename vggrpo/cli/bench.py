"""``vggrpo bench``: the latent reward against the RGB reward and the fused geometry reward
against its reference, timed on the tiny models; ``vggrpo bench grpo``: one GRPO step of a
real Wan architecture with random weights."""

from __future__ import annotations

import argparse
import json

import torch

from .. import _io
from ..wan_architectures import LATENT_SHAPES
from .options import int_at_least, output_file, positive_int, time_pair


def add_parser(sub) -> None:
    """Add this command to the ``vggrpo`` subparsers ``sub``."""
    b = sub.add_parser("bench", help="time the rewards (latent vs RGB, fused vs reference), "
                       "or one GRPO step of a real Wan architecture (bench grpo)",
                       description=run.__doc__)
    b.add_argument("suite", nargs="?", choices=["rewards", "grpo"], default="rewards",
                   help="rewards: latent vs RGB reward and fused vs reference on the tiny "
                        "models; grpo: one GRPO step of --arch with random weights "
                        "(default: %(default)s)")
    b.add_argument("--rounds", type=positive_int, default=5,
                   help="rewards: timing rounds; the median is reported (default: %(default)s)")
    b.add_argument("--arch", choices=sorted(LATENT_SHAPES), default="tiny",
                   help="grpo: the architecture, built from its diffusers configuration with "
                        "random weights (default: %(default)s)")
    b.add_argument("--latent", type=_latent_shape, metavar="C,T,h,w",
                   help="grpo: one video's latent (default: the architecture's usual one, "
                        "16,21,60,104 for Wan2.1 at 81 x 480x832)")
    b.add_argument("--group", type=int_at_least(2), default=8,
                   help="grpo: videos of the prompt group (default: %(default)s)")
    b.add_argument("--steps", type=positive_int, default=10,
                   help="grpo: sampling steps of the rollout (default: %(default)s)")
    b.add_argument("--window", type=_step_window, default="0,2", metavar="START,END",
                   help="grpo: the SDE steps trained, start <= i < end (default: %(default)s)")
    b.add_argument("--micro-batch", type=_micro_batch, default=1, metavar="N|all",
                   help="grpo: videos through the model at once (default: %(default)s)")
    b.add_argument("--checkpointing", action=argparse.BooleanOptionalAction, default=True,
                   help="grpo: activation checkpointing in the update (default: %(default)s)")
    b.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="bfloat16",
                   help="grpo: the base model's dtype (default: %(default)s)")
    b.add_argument("--out", help="JSON file to write (default: out/bench.json, "
                                 "out/bench-grpo.json for grpo)")
    b.set_defaults(fn=run)


def _ints(text: str, count: int, what: str):
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if len(values) != count:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return values


def _latent_shape(text: str):
    values = _ints(text, 4, "four positive ints C,T,h,w")
    if min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected four positive ints C,T,h,w, got {text!r}")
    return values


def _step_window(text: str):
    start, end = _ints(text, 2, "START,END step indices")
    if not 0 <= start < end:
        raise argparse.ArgumentTypeError(f"expected 0 <= START < END, got {text!r}")
    return start, end


def _micro_batch(text: str):
    return None if text == "all" else positive_int(text)


def _run_grpo(args) -> int:
    """One GRPO step of a real Wan architecture with random weights (vggrpo.grpo_bench)."""
    from ..grpo_bench import bench_grpo_step

    out = output_file(args.out or "out/bench-grpo.json")
    result = bench_grpo_step(args.arch, latent_shape=args.latent, group=args.group,
                             steps=args.steps, window=args.window, micro_batch=args.micro_batch,
                             checkpointing=args.checkpointing, dtype=args.dtype)
    _io.save_json(out, result)
    mib = 2 ** 20
    print(f"{result['arch']} ({result['parameters'] / 1e9:.2f}B params, {result['dtype']}), "
          f"latent {'x'.join(map(str, result['latent_shape']))} "
          f"({result['tokens_per_video']} tokens), group {result['group']}, micro-batch "
          f"{result['micro_batch'] or 'all'}, checkpointing "
          f"{'on' if result['checkpointing'] else 'off'}, on {result['machine']['device']}")
    for name, p in result["phases"].items():
        peak, extra = p["peak_memory_bytes"], p["extra_peak_memory_bytes"]
        print(f"  {name:8s} {p['seconds']:9.2f} s  peak "
              f"{'?' if peak is None else f'{peak / mib:.0f} MiB'} "
              f"({'?' if extra is None else f'{extra / mib:+.0f} MiB'} in the phase)")
    print(f"  step     {result['step_seconds']:9.2f} s  {result['tokens_per_second']:.1f} "
          f"video tokens/s; wrote {out}")
    return 0


def run(args) -> int:
    """``vggrpo bench``: the latent reward against the RGB reward and the fused geometry reward
    against its reference, timed on the tiny models; ``vggrpo bench grpo``: one GRPO step of a
    real Wan architecture (--arch) with random weights, each phase's time and peak memory."""
    if args.suite == "grpo":
        return _run_grpo(args)
    from .. import reference
    from ..data.synthetic import make_scene
    from ..defaults import load_default_lgm, load_tiny_backbone, load_tiny_wan_vae
    from ..latent_reward import LatentGeometryReward
    from ..rewards import geometry_reprojection_reward
    from ..rgb_reward import RGBGeometryReward

    out = output_file(args.out or "out/bench.json")
    lgm, vae = load_default_lgm(), load_tiny_wan_vae()
    z = torch.randn(4, 16, 5, 12, 20, generator=torch.Generator().manual_seed(0))
    lat, rgb = LatentGeometryReward(lgm), RGBGeometryReward(vae, load_tiny_backbone())
    s = make_scene(2, 8, 60, 104, moving_objects=2, seed=0)
    geo_args = (s.pointmaps, s.depths * 1.02, s.extrinsics, s.intrinsics, s.scene_flow)
    result = {
        "machine": {"torch": torch.__version__, "threads": torch.get_num_threads(),
                    "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None},
        "latent_vs_rgb_reward_b4": time_pair(lambda: lat(z), lambda: rgb(z), args.rounds),
        "fused_vs_reference_geometry_b2_t8_60x104": time_pair(
            lambda: geometry_reprojection_reward(*geo_args),
            lambda: reference.geometry_reprojection_reward(*geo_args), args.rounds),
        "notes": "a = ours (latent reward / fused op), b = baseline; ratio = a / b of medians. "
                 "The full suite with memory: pytest bench/ in the repository.",
    }
    _io.save_json(out, result)
    print(json.dumps(result, indent=2))
    return 0
