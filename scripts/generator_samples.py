"""Show what the embedded base generator makes: docs/base_generator_samples.png.

One row per prompt (vggrpo.data.worlds): a held-out real world video of that prompt, through
the embedded VAE and back (what the generator was trained to make), then two samples of the
generator from fixed noise (ODE, 20 steps, shift 3), decoded by the same VAE. Frames 0, 8 and
16 of each. Then prints, for held-out real videos of each flaw and for 4 generator samples per
prompt: the embedded LGM's rewards on the latents, the tiny backbone's motion reward on the
decoded RGB frames, and the Sampson epipolar error (pixels) of the decoded frames. Run after
`vggrpo build-defaults`:

    python scripts/generator_samples.py [--out docs/base_generator_samples.png] [--weights DIR]
"""

import argparse
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/base_generator_samples.png")
    parser.add_argument("--weights", default=None, help="weights folder (default: embedded)")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from diffusers import FlowMatchEulerDiscreteScheduler

    from vggrpo.data.worlds import prompt_name, world_prompt_embeddings, world_videos
    from vggrpo.defaults import (
        GENERATOR_FOLDER,
        VAE_FOLDER,
        WEIGHTS_DIR,
        load_base_generator,
        load_tiny_wan_vae,
    )
    from vggrpo.sampling import sample, scheduler_sigmas, wan_velocity
    from vggrpo.vae import decode_latents, encode_video

    weights = Path(args.weights) if args.weights else WEIGHTS_DIR
    vae = load_tiny_wan_vae(weights / VAE_FOLDER)
    model = load_base_generator(weights / GENERATOR_FOLDER)
    embeds = world_prompt_embeddings(8, 16)
    real = world_videos(6, seed=2_000_000, flaw_mix=(1, 0, 0))  # held out: other seeds
    sigmas = scheduler_sigmas(FlowMatchEulerDiscreteScheduler(shift=3.0), args.steps)
    prompts = torch.arange(6).repeat_interleave(2)
    noise = torch.randn(12, 16, 5, 12, 20, generator=torch.Generator().manual_seed(123))
    with torch.no_grad():
        real_rt = decode_latents(vae, encode_video(vae, real["video"]))
        fake = decode_latents(vae, sample(wan_velocity(model, embeds[prompts]), noise,
                                          sigmas).final)
    frames = (0, 8, 16)
    fig, axes = plt.subplots(6, 9, figsize=(18, 7.2))
    for p in range(6):
        row = [real_rt[p]] + [fake[2 * p], fake[2 * p + 1]]
        for j, video in enumerate(row):
            for i, t in enumerate(frames):
                ax = axes[p, 3 * j + i]
                ax.imshow(video[t].permute(1, 2, 0).clamp(0, 1).numpy())
                ax.set_xticks([])
                ax.set_yticks([])
                if p == 0:
                    ax.set_title(("real (VAE round trip)", "sample 1", "sample 2")[j]
                                 + f", frame {t}", fontsize=8)
            axes[p, 0].set_ylabel(prompt_name(p), fontsize=8)
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=80)
    print(f"wrote {args.out}")
    _referees(vae, model, embeds, sigmas, weights)


def _referees(vae, model, embeds, sigmas, weights) -> None:
    import math

    from vggrpo.data.worlds import world_videos
    from vggrpo.defaults import LGM_FOLDER, load_default_lgm
    from vggrpo.evaluation import sampson_error
    from vggrpo.sampling import sample, wan_velocity
    from vggrpo.vae import aligned_frames, decode_latents, encode_video

    lgm = load_default_lgm(weights / LGM_FOLDER)
    groups = {}
    for i, flaw in enumerate(("none", "shaky", "jump")):
        mix = tuple(float(j == i) for j in range(3))
        videos = world_videos(24, seed=3_000_000 + i, flaw_mix=mix)["video"]
        with torch.no_grad():
            groups[f"real, {flaw}"] = encode_video(vae, videos)
    prompts = torch.arange(6).repeat_interleave(4)
    noise = torch.randn(24, 16, 5, 12, 20, generator=torch.Generator().manual_seed(456))
    with torch.no_grad():
        groups["generated"] = sample(wan_velocity(model, embeds[prompts]), noise, sigmas).final
    print("group | LGM motion | LGM geo | RGB-path motion | Sampson px (videos scored)")
    for name, z in groups.items():
        with torch.no_grad():
            r = lgm(z).rewards()
            frames = decode_latents(vae, z)
            rgb = lgm.backbone(aligned_frames(frames, 4)).rewards()["motion"]
        samp = [sampson_error(f)["sampson"] for f in frames]
        ok = [x for x in samp if not math.isnan(x)]
        print(f"{name} | {float(r['motion'].mean()):.3f} | {float(r['geo'].mean()):.3f} | "
              f"{float(rgb.mean()):.3f} | {sum(ok) / max(len(ok), 1):.3f} ({len(ok)})")


if __name__ == "__main__":
    main()
