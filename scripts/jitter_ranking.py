"""Rank camera jitter with the embedded LGM's motion reward, the RGB path's and the ground
truth's, on held-out scenes of each trajectory kind: the per-kind table of docs/lgm.md.

quality.json's sweep (:func:`vggrpo.recipe.evaluate_lgm`) runs on dollies only; this runs the
same sweep, same seeds, on ``--kinds`` and prints one JSON line per kind::

    python scripts/jitter_ranking.py [--kinds dolly orbit pan] [--scenes 4]
"""

import argparse
import json

import torch

from vggrpo.data import TRAJECTORIES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", nargs="+", choices=TRAJECTORIES, default=list(TRAJECTORIES))
    parser.add_argument("--scenes", type=int, default=4, help="ranking scenes per kind")
    args = parser.parse_args()

    from vggrpo.defaults import load_default_lgm, load_tiny_wan_vae
    from vggrpo.recipe import DefaultsRecipe, evaluate_lgm

    lgm, vae = load_default_lgm(), load_tiny_wan_vae()
    for kind in args.kinds:
        # scenes=4: the smallest camera-error pass; only the ranking is printed.
        ranking = evaluate_lgm(lgm, vae, DefaultsRecipe(), scenes=4, ranking_scenes=args.scenes,
                               ranking_trajectory=kind)["ranking"]
        print(json.dumps({"trajectory": kind, "threads": torch.get_num_threads(),
                          **{k: [round(x, 2) for x in v] for k, v in ranking.items()
                             if k.startswith("spearman_jitter")}}), flush=True)


if __name__ == "__main__":
    main()
