"""``vggrpo demo``: the main job on the embedded tiny models."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any, Dict

import torch

from .. import _io
from .options import output_folder, positive_int, time_pair


def add_parser(sub) -> None:
    """Add this command to the ``vggrpo`` subparsers ``sub``."""
    d = sub.add_parser("demo", help="the main job on the embedded tiny models",
                       description=run.__doc__)
    d.add_argument("--out", default="out/demo", help="output folder (default: %(default)s)")
    d.add_argument("--steps", type=positive_int, default=30,
                   help="GRPO steps (default: %(default)s)")
    d.add_argument("--rounds", type=positive_int, default=5,
                   help="timing rounds of latent vs RGB reward; the median is reported "
                        "(default: %(default)s)")
    d.add_argument("--seed", type=int, default=0,
                   help="seed of the synthetic scenes (default: %(default)s)")
    d.set_defaults(fn=run)


def run(args) -> int:
    """The main job on the embedded tiny models: synthetic scenes read by the LGM, a short GRPO
    run on the tiny Wan model with LoRA, guided vs unguided samples, latent vs RGB reward
    timing. Writes reward_curve.png, summary.json and the LoRA to --out."""
    from ..data.synthetic import make_scene
    from ..defaults import load_default_lgm, load_tiny_wan_vae, tiny_wan_transformer
    from ..grpo import GRPOConfig, GRPOTrainer
    from ..latent_reward import LatentGeometryReward
    from ..rewards import camera_motion_reward, geometry_reprojection_reward
    from ..rgb_reward import RGBGeometryReward
    from ..sampling import RewardGuidance, sample, wan_velocity
    from ..vae import encode_video

    out = output_folder(args.out)
    summary: Dict[str, Any] = {"steps": args.steps}
    t_start = time.perf_counter()

    # 1. Synthetic scenes: exact geometry scores, and the LGM reading their latents.
    print("[1/5] synthetic scenes and the embedded LGM")
    scene = make_scene(2, 17, 96, 160, trajectory="orbit", moving_objects=1, seed=args.seed)
    shaky = make_scene(2, 17, 96, 160, trajectory="orbit", moving_objects=1, seed=args.seed,
                       jitter=2.0)
    lgm, vae = load_default_lgm(), load_tiny_wan_vae()
    latent_reward = LatentGeometryReward(lgm)
    with torch.no_grad():
        lgm_scores = latent_reward(encode_video(vae, scene.video))
    summary["synthetic"] = {
        "true_motion_smooth": camera_motion_reward(scene.extrinsics).tolist(),
        "true_motion_shaky": camera_motion_reward(shaky.extrinsics).tolist(),
        "true_geo": geometry_reprojection_reward(scene.pointmaps, scene.depths, scene.extrinsics,
                                                 scene.intrinsics, scene.scene_flow).tolist(),
        "lgm_motion": lgm_scores["motion"].tolist(), "lgm_geo": lgm_scores["geo"].tolist(),
    }

    # 2. GRPO on the tiny Wan transformer with LoRA, scored on latents.
    print(f"[2/5] GRPO: {args.steps} steps on the tiny Wan model with LoRA")
    transformer = tiny_wan_transformer(0)
    gen = torch.Generator().manual_seed(0)
    embeds = torch.randn(2, 8, 16, generator=gen)
    torch.manual_seed(1)
    trainer = GRPOTrainer(transformer, latent_reward, embeds, GRPOConfig(
        group_size=8, prompts_per_step=2, num_inference_steps=6, sde_window=(0, 3),
        steps=args.steps, lr=2e-2, lora_rank=4, lora_alpha=4.0, seed=0))
    before = trainer.evaluate()
    history = trainer.train(progress=True)
    after = trainer.evaluate()
    summary["grpo"] = {"eval_before": before, "eval_after": after,
                       "history": [{k: h[k] for k in ("step", "reward_motion", "reward_geo",
                                                      "kl", "time_rollout_s", "time_reward_s",
                                                      "time_update_s")} for h in history]}

    # 3. Guided vs unguided from the same noise.
    print("[3/5] reward guidance vs none, same noise")
    noise = torch.randn(4, 16, 5, 12, 20, generator=torch.Generator().manual_seed(7))
    vel = wan_velocity(transformer, embeds[[0, 0, 1, 1]])
    plain = sample(vel, noise, trainer.sigmas).final
    guided = sample(vel, noise, trainer.sigmas, guidance=RewardGuidance(
        latent_reward, scale=2.0, steps=(1, 5), weights={"geo": 1.0})).final
    with torch.no_grad():
        summary["guidance"] = {"unguided_geo": latent_reward(plain)["geo"].tolist(),
                               "guided_geo": latent_reward(guided)["geo"].tolist()}

    # 4. Latent reward vs the RGB reward on the same latents (batch 4).
    print("[4/5] latent reward vs RGB reward timing (batch 4)")
    rgb_reward = RGBGeometryReward(vae, lgm.backbone)
    z = torch.randn(4, 16, 5, 12, 20, generator=torch.Generator().manual_seed(3))
    summary["latent_vs_rgb"] = time_pair(lambda: latent_reward(z), lambda: rgb_reward(z),
                                         rounds=args.rounds)

    # 5. Files.
    print("[5/5] writing outputs")
    # The demo's own folder, remade each run: an earlier demo's checkpoint of a later step
    # (--steps was larger) would otherwise be refused as another run's.
    shutil.rmtree(out / "lora", ignore_errors=True)
    trainer.save_checkpoint(out / "lora")
    _reward_curve(history, before, after, out / "reward_curve.png")
    summary["wall_s"] = round(time.perf_counter() - t_start, 1)
    _io.save_json(out / "summary.json", summary)
    g = summary["guidance"]
    lv = summary["latent_vs_rgb"]
    print(f"GRPO eval reward: motion {before['motion']:.4f} -> {after['motion']:.4f}, "
          f"geo {before['geo']:.4f} -> {after['geo']:.4f}")
    print(f"guidance: geo {sum(g['unguided_geo']) / 4:.4f} -> {sum(g['guided_geo']) / 4:.4f}")
    print(f"latent reward {lv['a_median_s'] * 1e3:.1f} ms vs RGB {lv['b_median_s'] * 1e3:.1f} ms"
          f" (latent / RGB = {lv['ratio']:.3f})")
    print(f"wrote {out / 'summary.json'}, {out / 'reward_curve.png'}, {out / 'lora'} "
          f"({summary['wall_s']} s)")
    return 0


def _reward_curve(history, before, after, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, key, name in ((axes[0], "reward_motion", "motion"), (axes[1], "reward_geo", "geo")):
        ax.plot(steps, [h[key] for h in history], marker="o", ms=3, label="rollout mean")
        ax.axhline(before[name], color="grey", ls="--", lw=1, label="eval before")
        ax.axhline(after[name], color="tab:green", ls="--", lw=1, label="eval after")
        ax.set_xlabel("GRPO step")
        ax.set_title(f"{name} reward (LGM, latents)")
        ax.legend(fontsize=8)
    fig.suptitle("vggrpo demo: GRPO on the tiny Wan model, rewards from the embedded LGM")
    fig.tight_layout()
    _io.atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
