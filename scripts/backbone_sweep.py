"""Train the tiny backbone at one setting and print its held-out camera errors on RGB frames and
its jitter ranking: the separate runs behind the camera-step table of docs/lgm.md.

Trains on the recipe's training scenes (``--max-jitter`` changes only those), then evaluates
with the default recipe's held-out scenes through :func:`vggrpo.recipe.evaluate_lgm`; the LGM
there is the new backbone with an unstitched connector, so only its ``rgb.*`` numbers and the
RGB and true jitter rankings mean anything, and only those are printed (JSON)::

    python scripts/backbone_sweep.py --motion-weight 3 [--max-jitter 2] [--steps 1500]
"""

import argparse
import json
import time

import torch

from vggrpo.recipe import DefaultsRecipe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--motion-weight", type=float,
                        default=DefaultsRecipe.backbone_motion_weight)
    parser.add_argument("--max-jitter", type=float, default=DefaultsRecipe.max_jitter)
    parser.add_argument("--steps", type=int, default=DefaultsRecipe.backbone_steps)
    parser.add_argument("--eval-scenes", type=int, default=32)
    parser.add_argument("--ranking-scenes", type=int, default=8)
    args = parser.parse_args()

    from vggrpo.defaults import load_tiny_wan_vae
    from vggrpo.lgm import LatentGeometryModel, LGMConfig
    from vggrpo.recipe import evaluate_lgm, scene_pool, train_backbone_stage

    held_out = DefaultsRecipe(eval_scenes=args.eval_scenes)
    recipe = DefaultsRecipe(backbone_steps=args.steps, max_jitter=args.max_jitter,
                            backbone_motion_weight=args.motion_weight)
    t0 = time.perf_counter()
    train = scene_pool(recipe.train_scenes, recipe, seed=recipe.seed)
    backbone, history = train_backbone_stage(train, recipe)  # the build's own stage
    seconds = time.perf_counter() - t0
    vae = load_tiny_wan_vae()
    lgm = LatentGeometryModel(backbone, LGMConfig.from_vae(vae, backbone.dim)).eval()
    quality = evaluate_lgm(lgm, vae, held_out, ranking_scenes=args.ranking_scenes)
    ranking = quality.get("ranking", {})
    print(json.dumps({
        "motion_weight": args.motion_weight, "max_jitter": args.max_jitter,
        "steps": args.steps, "threads": torch.get_num_threads(), "train_s": round(seconds, 1),
        "final_loss": history[-1],
        **{k: v for k, v in quality.items() if k.startswith(("rgb.", "static_camera"))},
        "spearman_jitter_vs_rgb_motion_reward":
            ranking.get("spearman_jitter_vs_rgb_motion_reward"),
        "spearman_jitter_vs_true_motion_reward":
            ranking.get("spearman_jitter_vs_true_motion_reward"),
    }, indent=1))


if __name__ == "__main__":
    main()
