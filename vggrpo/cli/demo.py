"""``vggrpo demo``: the world in miniature (docs/demo.md). GRPO on the embedded base generator
with the LGM's rewards, judged before and after by referees on the decoded RGB frames that the
training never sees; the same for reward guidance; the latent reward timed against the RGB
reward."""

from __future__ import annotations

import shutil
import statistics
import time
from pathlib import Path
from typing import Any, Dict, List

import torch

from .. import _io
from .options import non_negative_float, output_folder, positive_int, time_pair

#: Seed of the held-out real worlds the fidelity referee compares with (never trained on: the
#: build draws its generator's videos from seed + 2 = 2 and its LGM's scenes elsewhere).
REAL_WORLDS_SEED = 4_000_000
#: Seed of the held-out noise that before, after, unguided and guided samples all start from.
EVAL_NOISE_SEED = 4_100_000


def add_parser(sub) -> None:
    """Add this command to the ``vggrpo`` subparsers ``sub``."""
    d = sub.add_parser("demo", help="the world in miniature: GRPO on the base generator, "
                       "judged by referees", description=run.__doc__)
    d.add_argument("--out", default="out/demo", help="output folder (default: %(default)s)")
    d.add_argument("--steps", type=positive_int, default=24,
                   help="GRPO steps per run (default: %(default)s)")
    d.add_argument("--seeds", type=positive_int, default=1,
                   help="GRPO runs, seeds 0..N-1, each from the base model; the effect sizes "
                        "are reported per run and across runs (default: %(default)s)")
    d.add_argument("--samples-per-prompt", type=positive_int, default=2,
                   help="held-out samples per prompt (6 prompts) judged before and after "
                        "(default: %(default)s)")
    d.add_argument("--rounds", type=positive_int, default=3,
                   help="timing rounds of latent vs RGB reward; the median is reported "
                        "(default: %(default)s)")
    d.add_argument("--coverage-weight", type=non_negative_float, default=1.0,
                   help="GRPO's weight on the LGM's coverage term, the guard against the "
                        "geometry reward's exploit (docs/demo.md); 0 leaves it an instrument, "
                        "logged and never trained on (default: %(default)s)")
    d.set_defaults(fn=run)


def run(args) -> int:
    """The world in miniature, on the embedded models (no download): the base generator's
    samples of the six world prompts, GRPO with LoRA on the embedded LGM's rewards (--seeds
    runs), the same held-out noise sampled before and after and judged by referees on the
    decoded RGB frames (the RGB path's camera motion, the Sampson epipolar error, two fidelity
    checks), reward guidance against none from the same noise, and the latent reward timed
    against the RGB reward. Writes summary.json, reward_curve.png, strip.png,
    samples/{before,after,guided}/*.mp4 and the first run's LoRA to --out."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from ..data.worlds import WORLD_PROMPTS, world_prompt_embeddings, world_videos
    from ..defaults import (
        load_base_generator,
        load_default_lgm,
        load_tiny_backbone,
        load_tiny_wan_vae,
    )
    from ..grpo import GRPOConfig, GRPOTrainer
    from ..latent_reward import LatentGeometryReward
    from ..referees import HIGHER_IS_BETTER, REFEREE_NAMES, paired_effect, video_referees
    from ..rgb_reward import RGBGeometryReward
    from ..sampling import RewardGuidance, sample, scheduler_sigmas, wan_velocity
    from ..vae import decode_latents

    out = output_folder(args.out)
    t_start = time.perf_counter()
    P = len(WORLD_PROMPTS)
    summary: Dict[str, Any] = {"steps": args.steps, "seeds": args.seeds,
                               "samples_per_prompt": args.samples_per_prompt}
    cfg = dict(group_size=8, prompts_per_step=2, num_inference_steps=8, sde_window=(0, 3),
               steps=args.steps, lr=3e-3, lora_rank=8, lora_alpha=8.0,
               reward_weights={"motion": 1.0, "geo": 1.0, "coverage": args.coverage_weight})

    print("[1/6] the embedded models, held-out real worlds and noise")
    lgm, vae = load_default_lgm(), load_tiny_wan_vae()
    # The RGB path reads frames with the plain backbone, not the LGM's LoRA-adapted one.
    teacher = load_tiny_backbone()
    # coverage: the hacking instrument, always logged, and the guard GRPO trains on with weight
    # --coverage-weight (without it GRPO followed the exploit's direction: docs/demo.md).
    reward = LatentGeometryReward(lgm, coverage=1.0)
    embeds = world_prompt_embeddings(8, 16)
    real = world_videos(4 * P, seed=REAL_WORLDS_SEED, flaw_mix=(1.0, 0.0, 0.0))
    prompts = torch.arange(P).repeat_interleave(args.samples_per_prompt)
    noise = torch.randn((len(prompts), 16, 5, 12, 20),
                        generator=torch.Generator().manual_seed(EVAL_NOISE_SEED))
    sigmas = scheduler_sigmas(FlowMatchEulerDiscreteScheduler(shift=3.0),
                              cfg["num_inference_steps"])

    def judge(latents):
        """Decoded videos, their referees and the LGM's rewards (for the record)."""
        with torch.no_grad():
            videos = decode_latents(vae, latents)
            lgm_rewards = reward(latents)
        refs = video_referees(videos, backbone=teacher, real_videos=real["video"],
                              prompts=prompts, real_prompts=real["prompt"])
        refs.update({f"lgm_{k}": v for k, v in lgm_rewards.items()})
        return videos, refs

    print("[2/6] the base generator's samples, judged")
    base = load_base_generator()
    with torch.no_grad():
        base_latents = sample(wan_velocity(base, embeds[prompts]), noise, sigmas).final
    before_video, before = judge(base_latents)

    runs: List[Dict[str, Any]] = []
    after_video = None
    for seed in range(args.seeds):
        print(f"[3/6] GRPO run {seed + 1}/{args.seeds}: {args.steps} steps with LoRA on the "
              f"LGM's rewards")
        torch.manual_seed(seed)
        trainer = GRPOTrainer(load_base_generator(), reward, embeds, GRPOConfig(
            **cfg, seed=seed))
        history = trainer.train(progress=True)
        with torch.no_grad():
            latents = sample(wan_velocity(trainer.transformer, embeds[prompts]), noise,
                             sigmas).final
        video, after = judge(latents)
        runs.append({"seed": seed, "after": after, "history": history,
                     "effects": _effects(before, after, HIGHER_IS_BETTER, paired_effect)})
        if seed == 0:
            after_video = video
            shutil.rmtree(out / "lora", ignore_errors=True)  # the demo's own folder, remade
            trainer.save_checkpoint(out / "lora")

    print("[4/6] reward guidance vs none, same noise")
    guidance = RewardGuidance(reward, scale=2.0, steps=(1, 5), weights={"motion": 1.0,
                                                                         "geo": 1.0})
    guided_latents = sample(wan_velocity(base, embeds[prompts]), noise, sigmas,
                            guidance=guidance).final
    guided_video, guided = judge(guided_latents.detach())

    print("[5/6] latent reward vs RGB reward timing (batch 4)")
    rgb_reward = RGBGeometryReward(vae, teacher)
    z = torch.randn(4, 16, 5, 12, 20, generator=torch.Generator().manual_seed(3))
    summary["latent_vs_rgb"] = time_pair(lambda: reward(z), lambda: rgb_reward(z),
                                         rounds=args.rounds)

    print("[6/6] writing outputs")
    from ..data.video import write_video
    from ..data.worlds import prompt_name

    def write_samples(folder: Path) -> None:
        for kind, videos in (("before", before_video), ("after", after_video),
                             ("guided", guided_video)):
            for i, v in enumerate(videos):
                name = prompt_name(int(prompts[i])).replace("/", "_")
                write_video(folder / kind / f"{i:02d}_{name}.mp4", v)

    # One unit: an earlier run's extra samples (a larger --samples-per-prompt) do not linger.
    _io.commit_folder(out / "samples", write_samples)
    names = list(REFEREE_NAMES) + [k for k in before if k.startswith("lgm_")]
    mean = {k: _mean(before[k]) for k in names}
    after_means = {k: statistics.fmean(_mean(r["after"][k]) for r in runs) for k in names}
    summary["referees"] = {"before": mean, "after": after_means,
                           "guided": {k: _mean(guided[k]) for k in names}}
    summary["effects"] = {"grpo": _across_runs([r["effects"] for r in runs]),
                          "guidance": _effects(before, guided, HIGHER_IS_BETTER,
                                               paired_effect)}
    summary["hacking"] = _hacking(before, runs, guided)
    summary["runs"] = [{"seed": r["seed"],
                        "effects": r["effects"],
                        "history": [{k: h[k] for k in ("step", "reward_motion", "reward_geo",
                                                       "reward_coverage", "kl",
                                                       "time_rollout_s", "time_reward_s",
                                                       "time_update_s")} for h in r["history"]]}
                       for r in runs]
    summary["grpo_config"] = {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}
    _strip(before_video, after_video, guided_video, prompts, args.samples_per_prompt,
           out / "strip.png", prompt_name)
    _reward_curve(runs[0]["history"], before, runs[0]["after"], out / "reward_curve.png")
    summary["wall_s"] = round(time.perf_counter() - t_start, 1)
    _io.save_json(out / "summary.json", summary)

    for what, eff in (("GRPO", summary["effects"]["grpo"]),
                      ("guidance", summary["effects"]["guidance"])):
        print(f"{what}, after vs before (paired effect size, + is better):")
        for k in names:
            e = eff[k]
            print(f"  {k:18s} {e['before']:8.4f} -> {e['after']:8.4f}  "
                  f"effect {e['effect_size']:+.2f}  better in {e['better_share']:.0%}")
    lv = summary["latent_vs_rgb"]
    print(f"latent reward {lv['a_median_s'] * 1e3:.1f} ms vs RGB {lv['b_median_s'] * 1e3:.1f} ms"
          f" (latent / RGB = {lv['ratio']:.3f})")
    print(f"wrote {out / 'summary.json'}, reward_curve.png, strip.png, samples/, lora/ "
          f"({summary['wall_s']} s)")
    return 0


def _mean(x: torch.Tensor) -> float:
    x = x[torch.isfinite(x)]
    return float(x.mean()) if x.numel() else float("nan")


def _effects(before, after, higher_is_better, paired_effect) -> Dict[str, Dict[str, float]]:
    return {k: paired_effect(before[k], after[k], higher_is_better.get(k, True))
            for k in before}


def _across_runs(effects: List[Dict[str, Dict[str, float]]]) -> Dict[str, Dict[str, float]]:
    """Per referee: the runs' means of before/after/change/effect size/better share, and the
    effect size's spread across runs (0 for one run)."""
    out: Dict[str, Dict[str, float]] = {}
    for k in effects[0]:
        vals = {f: [e[k][f] for e in effects] for f in ("before", "after", "change",
                                                        "effect_size", "better_share")}
        out[k] = {f: statistics.fmean(v) for f, v in vals.items()}
        out[k]["effect_size_sd"] = statistics.stdev(vals["effect_size"]) if len(effects) > 1 \
            else 0.0
        out[k]["runs"] = len(effects)
    return out


def _hacking(before, runs, guided) -> Dict[str, Any]:
    """Item 5's instruments: the share of pixels with a valid view (the coverage term; GRPO
    trains on it with weight --coverage-weight) and how many videos read the best possible
    geometry reward (0, which a video whose static points project nowhere gets for free)."""
    def stats(r):
        return {"coverage_mean": _mean(r["lgm_coverage"]),
                "coverage_min": float(r["lgm_coverage"].min()),
                "geo_at_zero": int((r["lgm_geo"] >= 0).sum())}
    return {"before": stats(before), "after": [stats(r["after"]) for r in runs],
            "guided": stats(guided)}


def _strip(before, after, guided, prompts, per_prompt: int, path: Path, prompt_name) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(range(0, len(prompts), per_prompt))  # the first sample of each prompt
    frames = (0, 8, 16)
    fig, axes = plt.subplots(len(rows), 9, figsize=(15, 1.45 * len(rows) + 0.4))
    for r, i in enumerate(rows):
        for j, (name, videos) in enumerate((("before", before), ("after GRPO", after),
                                            ("guided", guided))):
            for f, t in enumerate(frames):
                ax = axes[r, 3 * j + f]
                ax.imshow(videos[i, t].permute(1, 2, 0).clamp(0, 1).numpy())
                ax.set_xticks([])
                ax.set_yticks([])
                if r == 0:
                    ax.set_title(f"{name}, frame {t}", fontsize=8)
        axes[r, 0].set_ylabel(prompt_name(int(prompts[i])), fontsize=7)
    fig.suptitle("same noise and prompt: base generator | after GRPO | base with reward guidance",
                 fontsize=9)
    fig.tight_layout()
    _io.atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=80))
    plt.close(fig)


def _reward_curve(history, before, after, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    end = steps[-1] + 1 if steps else 1
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    panels = ((axes[0], "motion", "rgb_motion", "RGB-path motion (referee)"),
              (axes[1], "geo", "sampson_px", "Sampson error, px (referee)"))
    for ax, name, ref, ref_label in panels:
        ax.plot(steps, [h[f"reward_{name}"] for h in history], marker="o", ms=3, alpha=0.6,
                label="rollout mean (2 prompts)")
        ax.plot([0, end], [_mean(before[f"lgm_{name}"]), _mean(after[f"lgm_{name}"])], "s--",
                color="tab:green", label="held-out samples, before / after")
        ax.set_xlabel("GRPO step")
        ax.set_ylabel(f"LGM {name} reward")
        ax.set_title(f"{name} reward (LGM, latents) and a referee")
        twin = ax.twinx()
        twin.plot([0, end], [_mean(before[ref]), _mean(after[ref])], "D:", color="tab:red",
                  label=ref_label)
        twin.set_ylabel(ref_label, color="tab:red")
        lines = ax.get_legend_handles_labels()
        more = twin.get_legend_handles_labels()
        ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=7, loc="lower left")
    fig.suptitle("vggrpo demo: GRPO on the base generator with the LGM's rewards; referees on "
                 "decoded RGB, before and after")
    fig.tight_layout()
    _io.atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
