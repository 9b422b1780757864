"""``vggrpo sample``: sampling with latent reward guidance; writes latents, and a video with
``--decode``."""

from __future__ import annotations

import json

import torch

from .. import _io
from .options import (
    UsageError,
    add_backbone_option,
    check_finite_rewards,
    check_lgm_vae,
    finite_float,
    load_embeds,
    load_lgm,
    load_transformer,
    load_vae,
    non_negative_float,
    non_negative_int,
    output_file,
    positive_float,
    positive_int,
)


def add_parser(sub) -> None:
    """Add this command to the ``vggrpo`` subparsers ``sub``."""
    s = sub.add_parser("sample", help="sampling with latent reward guidance")
    s.add_argument("--model", default="tiny",
                   help="diffusers Wan folder, or 'tiny' (default: %(default)s)")
    s.add_argument("--lora", help="a pytorch_lora_weights.safetensors to load (from vggrpo train)")
    s.add_argument("--prompt-embeds", help="safetensors with prompt_embeds [P,L,D] (and optionally "
                   "negative_prompt_embeds); default: seeded random ones, for the tiny model")
    s.add_argument("--lgm", default="default", help="LGM folder for the guidance reward, or "
                   "'default' for the embedded one (default: %(default)s)")
    add_backbone_option(s)
    s.add_argument("--vae", help="VAE folder for --decode, or 'tiny' (default: the --model "
                   "folder's vae/, or 'tiny' with --model tiny)")
    s.add_argument("--steps", type=positive_int, default=10,
                   help="sampling steps (default: %(default)s)")
    s.add_argument("--shift", type=positive_float, default=3.0,
                   help="flow-matching schedule shift (default: %(default)s)")
    s.add_argument("--cfg", type=finite_float, default=1.0,
                   help="classifier-free guidance scale; 1: off (default: %(default)s)")
    s.add_argument("--guidance-scale", type=non_negative_float, default=2.0,
                   help="reward guidance scale; 0: off (default: %(default)s)")
    s.add_argument("--guidance-start", type=non_negative_int, default=1,
                   help="first guided step index (default: %(default)s)")
    s.add_argument("--guidance-end", type=positive_int,
                   help="guided steps end before this index (default: --steps)")
    s.add_argument("--w-motion", type=finite_float, default=1.0,
                   help="weight of the camera motion reward in the guidance "
                        "(default: %(default)s)")
    s.add_argument("--w-geo", type=finite_float, default=1.0,
                   help="weight of the geometry reward in the guidance (default: %(default)s)")
    s.add_argument("--latent-frames", type=positive_int, default=5,
                   help="latent frames T' (a video of 4 T' - 3 frames; default: %(default)s)")
    s.add_argument("--latent-height", type=positive_int, default=12,
                   help="latent height h (default: %(default)s)")
    s.add_argument("--latent-width", type=positive_int, default=20,
                   help="latent width w (default: %(default)s)")
    s.add_argument("--seed", type=int, default=0,
                   help="seed of the initial noise (default: %(default)s)")
    s.add_argument("--decode", action="store_true",
                   help="also write decoded mp4s next to --out")
    s.add_argument("--out", required=True, help="latents .safetensors to write")
    s.set_defaults(fn=run)


def run(args) -> int:
    from diffusers import FlowMatchEulerDiscreteScheduler

    from ..data.video import write_video
    from ..latent_reward import LatentGeometryReward
    from ..sampling import (
        RewardGuidance,
        check_wan_inputs,
        sample,
        scheduler_sigmas,
        wan_velocity,
    )
    from ..schedules import check_step_window
    from ..vae import decode_latents, vae_factors

    out = output_file(args.out)
    if args.guidance_scale > 0:
        # Before loading a model that may take minutes, and in the options' own names.
        end = args.guidance_end if args.guidance_end is not None else args.steps
        try:  # the sampler's own window rule, reworded for the options
            check_step_window((args.guidance_start, end), args.steps, "guidance steps")
        except ValueError:
            default = " (its default, --steps)" if args.guidance_end is None else ""
            raise UsageError(f"--guidance-start {args.guidance_start} and --guidance-end "
                             f"{end}{default} must satisfy 0 <= start < end <= --steps "
                             f"({args.steps}); --guidance-scale 0 turns guidance off") from None
    vae = None
    if args.decode:
        # Before sampling, which may take minutes: a missing PyAV or a bad --vae must not surface
        # only after the latents are written.
        from ..data.video import import_av

        import_av()
        # A pipeline folder's own VAE by default: the tiny one would decode its latents to noise.
        vae_spec = args.vae or ("tiny" if args.model == "tiny" else args.model)
        vae = load_vae(vae_spec)
    lgm = load_lgm(args.lgm, args.backbone)
    check_lgm_vae(lgm, args.model, vae, f"--vae {args.vae}" if args.vae else None)
    transformer = load_transformer(args.model, torch.float32)
    if args.lora:
        from ..lora_file import load_lora

        try:  # at the strength it was trained with (its adapter metadata)
            load_lora(transformer, args.lora)
        except (ValueError, FileNotFoundError) as err:
            raise UsageError(f"--lora: {err}") from None
    if vae is not None and vae_factors(vae)["channels"] != int(transformer.config.in_channels):
        raise UsageError(f"--vae {vae_spec} decodes {vae_factors(vae)['channels']}-channel "
                         f"latents but the model makes {transformer.config.in_channels}-channel "
                         f"ones: pass the model's own VAE")
    embeds, negative = load_embeds(args.prompt_embeds, transformer, count=1)
    latent = (int(transformer.config.in_channels), args.latent_frames, args.latent_height,
              args.latent_width)
    check_wan_inputs(transformer, prompt_embeds=embeds, negative_prompt_embeds=negative)
    try:
        check_wan_inputs(transformer, latent_shape=latent, min_frames=3)
    except ValueError as err:  # name the options the user gave
        raise UsageError(f"--latent-frames/--latent-height/--latent-width: {err}") from None
    reward = LatentGeometryReward(lgm, {"motion": args.w_motion, "geo": args.w_geo})
    reward.check_latent_channels(int(transformer.config.in_channels))
    noise = torch.randn((embeds.shape[0],) + latent,
                        generator=torch.Generator().manual_seed(args.seed))
    sigmas = scheduler_sigmas(FlowMatchEulerDiscreteScheduler(shift=args.shift), args.steps)
    vel = wan_velocity(transformer, embeds, negative_prompt_embeds=negative,
                       guidance_scale=args.cfg)
    guidance = None
    if args.guidance_scale > 0:
        end = args.guidance_end if args.guidance_end is not None else args.steps
        guidance = RewardGuidance(reward, args.guidance_scale, (args.guidance_start, end),
                                  reward.weights)
    final = sample(vel, noise, sigmas, guidance=guidance).final
    bad = int((~torch.isfinite(final)).sum())
    if bad:
        raise UsageError(f"the sampled latents hold {bad} NaN or infinite values (of "
                         f"{final.numel()}); nothing written: check --model, --lora and "
                         f"--guidance-scale")
    with torch.no_grad():
        r = reward(final)
    check_finite_rewards(r, "the sampled latents")
    _io.save_tensors(out, {"latents": final},
                     metadata={"rewards": json.dumps({k: v.tolist() for k, v in r.items()})})
    print(f"wrote {out}: motion {r['motion'].tolist()}, geo {r['geo'].tolist()}")
    if vae is not None:
        with torch.no_grad():
            video = decode_latents(vae, final)
        for b in range(video.shape[0]):
            write_video(out.with_name(f"{out.stem}-{b}.mp4"), video[b])
    return 0
