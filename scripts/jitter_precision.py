"""How precise must a camera reader be for the motion reward to rank the jitter sweep?

quality.json's jitter sweep (:func:`vggrpo.recipe.evaluate_lgm`: the ranking scenes at camera
jitter 0, 0.5, 1, 2, 3, 4) asks the motion reward to rank each scene's six videos at Spearman
<= -0.9, which allows one swap of neighbours and no more. This script takes the ground-truth
cameras of the latent-aligned frames (0, 4, ..., the ones the LGM reads) and plays a camera
reader with known errors: every frame after the first gets a rotation error (a 3-D Gaussian
rotation vector) and a centre error (a 3-D Gaussian), scaled so that their mean sizes are
``scale x (--rotation-deg, --centre-m)``, the errors :func:`vggrpo.evaluation.camera_errors`
reports (both relative to the first frame). Two bounds:

* ``iid``: a new error for every video (pessimistic: a real reader's errors on one scene at two
  jitter levels are related);
* ``same``: one error per scene, the same at every jitter level (optimistic).

It prints one JSON line with the ground truth's rewards and Spearman, then one per scale: the
share of ``--draws`` draws in which each scene ranks at <= -0.9, and all of them at once.
``--teacher`` also prints the errors the embedded LGM's RGB teacher makes on each sweep video,
``--held-out N`` their spread over N held-out scenes::

    python scripts/jitter_precision.py [--rotation-deg 4.6] [--centre-m 0.65] [--draws 200]
                                       [--teacher] [--held-out 64]
"""

import argparse
import json
import math

import torch

from vggrpo.data import TRAJECTORIES
from vggrpo.recipe import RANKING_JITTERS as JITTERS

THRESHOLD = -0.9


def ranking_cameras(scenes: int, kind: str, temporal: int = 4) -> torch.Tensor:
    """Ground-truth camera-from-world ``[scenes, len(JITTERS), T', 3, 4]`` (float64) of the
    latent-aligned frames of evaluate_lgm's ranking scenes."""
    from vggrpo.recipe import DefaultsRecipe, ranking_scene_seed, scene_pool

    recipe = DefaultsRecipe()
    return torch.stack([torch.stack([
        scene_pool(1, recipe, seed=ranking_scene_seed(recipe, s), jitter=j,
                   trajectory=kind).items["extrinsics"][0, ::temporal]
        for j in JITTERS]) for s in range(scenes)]).double()


def teacher_camera_errors(lgm, batch: dict) -> dict:
    """``{"rotation_deg": [B], "centre": [B]}`` of the RGB teacher (the LGM's plain backbone on
    the frames, as evaluate_lgm runs it) on a batch of :func:`scene_pool` items."""
    from vggrpo.evaluation import camera_errors
    from vggrpo.geometry.training import supervised_targets

    target = supervised_targets(batch, lgm.temporal_factor)
    with torch.no_grad(), lgm.adapters_disabled() as teacher:
        read = teacher(target["video"])
    return camera_errors(read.extrinsics, target["geometry"].extrinsics)


def teacher_errors(scenes: int, kind: str) -> list:
    """The embedded LGM's RGB teacher (the tiny backbone on the frames), as evaluate_lgm runs
    it in the sweep: its ``[rotation_deg, centre_m]`` errors on each scene's six videos."""
    from vggrpo.defaults import load_default_lgm
    from vggrpo.recipe import DefaultsRecipe, ranking_scene_seed, scene_pool

    lgm, recipe = load_default_lgm(), DefaultsRecipe()
    out = []
    for s in range(scenes):
        row = []
        for j in JITTERS:
            item = scene_pool(1, recipe, seed=ranking_scene_seed(recipe, s), jitter=j,
                              trajectory=kind).items
            e = teacher_camera_errors(lgm, item)
            row.append([round(float(e["rotation_deg"][0]), 2), round(float(e["centre"][0]), 2)])
        out.append(row)
    return out


def teacher_error_spread(count: int) -> dict:
    """The RGB teacher's camera errors on ``count`` held-out scenes of the recipe's mix (the
    scenes quality.json's camera errors are measured on): mean, median, 90th percentile and the
    share over 10 deg (its misreads), per video."""
    from vggrpo.defaults import load_default_lgm
    from vggrpo.recipe import DefaultsRecipe, held_out_scenes

    lgm, recipe = load_default_lgm(), DefaultsRecipe()
    items = held_out_scenes(count, recipe).items
    rot, centre = [], []
    for i in range(0, count, 4):
        e = teacher_camera_errors(lgm, {k: v[i:i + 4] for k, v in items.items()})
        rot.append(e["rotation_deg"])
        centre.append(e["centre"])
    r, c = torch.cat(rot).double(), torch.cat(centre).double()
    good = r <= 10.0
    return {"videos": count, "rotation_deg": {"mean": round(float(r.mean()), 2),
                                              "median": round(float(r.median()), 2),
                                              "q90": round(float(r.quantile(0.9)), 2),
                                              "mean_of_those_under_10": round(
                                                  float(r[good].mean()), 2)},
            "share_over_10deg": round(float((~good).double().mean()), 3),
            "centre_m": {"mean": round(float(c.mean()), 2), "median": round(float(c.median()), 2),
                         "mean_where_rotation_under_10": round(float(c[good].mean()), 2)}}


def read_with_errors(extrinsics: torch.Tensor, rotation_rad: float, centre_m: float,
                     generator: torch.Generator, same_error_per_scene: bool) -> torch.Tensor:
    """``extrinsics [S, J, T, 3, 4]`` as a reader with mean errors ``rotation_rad`` and
    ``centre_m`` (relative to the first frame) reads them."""
    S, J, T = extrinsics.shape[:3]
    shape = (S, 1 if same_error_per_scene else J, T, 3)
    mean_norm = math.sqrt(8.0 / math.pi)  # E|N(0, I_3)|
    w = torch.randn(shape, generator=generator, dtype=torch.float64) * rotation_rad / mean_norm
    c = torch.randn(shape, generator=generator, dtype=torch.float64) * centre_m / mean_norm
    w[:, :, 0] = 0.0
    c[:, :, 0] = 0.0
    w, c = w.expand(S, J, T, 3), c.expand(S, J, T, 3)
    skew = torch.zeros(S, J, T, 3, 3, dtype=torch.float64)
    skew[..., 0, 1], skew[..., 0, 2], skew[..., 1, 2] = -w[..., 2], w[..., 1], -w[..., 0]
    skew = skew - skew.transpose(-1, -2)
    R = extrinsics[..., :3, :3]
    centres = -(R.transpose(-1, -2) @ extrinsics[..., :3, 3:])[..., 0] + c
    # A body-frame rotation error, as the jitter itself is applied.
    R_read = (R.transpose(-1, -2) @ torch.linalg.matrix_exp(skew)).transpose(-1, -2)
    return torch.cat([R_read, -(R_read @ centres[..., None])], dim=-1)


def rank_shares(extrinsics: torch.Tensor, rotation_deg: float, centre_m: float, draws: int,
                same_error_per_scene: bool, seed: int = 0) -> dict:
    """Shares of ``draws`` in which each scene, and all at once, rank at <= THRESHOLD."""
    from vggrpo.evaluation import spearman
    from vggrpo.rewards import camera_motion_reward

    S, J, T = extrinsics.shape[:3]
    levels = torch.tensor(JITTERS)
    gen = torch.Generator().manual_seed(seed)
    ok, all_ok = torch.zeros(S), 0
    for _ in range(draws):
        read = read_with_errors(extrinsics, math.radians(rotation_deg), centre_m, gen,
                                same_error_per_scene)
        reward = camera_motion_reward(read.reshape(S * J, T, 3, 4)).reshape(S, J)
        passed = torch.tensor([spearman(levels, reward[s].float()) <= THRESHOLD
                               for s in range(S)])
        ok += passed.float()
        all_ok += int(passed.all())
    return {"per_scene": [round(float(x) / draws, 3) for x in ok],
            "all": round(all_ok / draws, 3)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rotation-deg", type=float, default=4.6,
                        help="the reader's mean rotation error at scale 1 (default: the tiny "
                             "backbone's, docs/lgm.md)")
    parser.add_argument("--centre-m", type=float, default=0.65,
                        help="the reader's mean camera-centre error at scale 1, metres")
    parser.add_argument("--scales", type=float, nargs="+",
                        default=[1.0, 0.5, 0.25, 0.1, 0.05, 0.02])
    parser.add_argument("--draws", type=int, default=200)
    parser.add_argument("--scenes", type=int, default=4, help="ranking scenes (quality.json: 4)")
    parser.add_argument("--kind", choices=TRAJECTORIES, default="dolly")
    parser.add_argument("--teacher", action="store_true",
                        help="also print the RGB teacher's own errors on every sweep video")
    parser.add_argument("--held-out", type=int, default=0, metavar="N",
                        help="also print the spread of the RGB teacher's errors on N held-out "
                             "scenes (a multiple of 4)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    from vggrpo.evaluation import spearman
    from vggrpo.rewards import camera_motion_reward

    E = ranking_cameras(args.scenes, args.kind)
    S, J, T = E.shape[:3]
    truth = camera_motion_reward(E.reshape(S * J, T, 3, 4)).reshape(S, J)
    print(json.dumps({"kind": args.kind, "jitter": list(JITTERS),
                      "true_reward": [[round(float(x), 3) for x in row] for row in truth],
                      "true_spearman": [round(spearman(torch.tensor(JITTERS), row.float()), 2)
                                        for row in truth]}), flush=True)
    if args.teacher:
        print(json.dumps({"teacher_errors_deg_m": teacher_errors(args.scenes, args.kind)}),
              flush=True)
    if args.held_out:
        print(json.dumps({"teacher_on_held_out": teacher_error_spread(args.held_out)}),
              flush=True)
    for scale in args.scales:
        rot, cen = scale * args.rotation_deg, scale * args.centre_m
        print(json.dumps({"scale": scale, "rotation_deg": round(rot, 3),
                          "centre_m": round(cen, 3),
                          **{mode: rank_shares(E, rot, cen, args.draws, mode == "same")
                             for mode in ("iid", "same")}}), flush=True)


if __name__ == "__main__":
    main()
