"""The recipe that reproduces the embedded default models (:mod:`vggrpo.defaults`): synthetic
scenes, the tiny backbone trained with ground truth, the tiny VAE from a seed, the connector
stitched to it, and the held-out evaluation. ``vggrpo build-defaults`` runs it.

Reproduce (measured: 11.6 minutes on the 2-core dev VM, which other jobs shared)::

    vggrpo build-defaults --out vggrpo/weights

Scenes: ``1 + 4*4 = 17`` frames at 96x160 (5 latent frames of 12x20, token grid 6x10), random
room sizes, 1-3 static and 0-2 moving boxes, dolly/orbit/pan trajectories with jitter drawn from
``[0, max_jitter]`` (so the model sees shaky cameras too); held-out scenes use other seeds.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Union

import torch
from torch import Tensor

from . import _io
from ._checks import DictConfig, check_fields, is_int, is_positive_int
from .defaults import LGM_FOLDER, QUALITY_FILE, VAE_FOLDER, load_default_lgm, load_tiny_wan_vae

__all__ = ["DefaultsRecipe", "check_build_size", "scene_pool", "build_defaults", "evaluate_lgm"]

_HELD_OUT = 1_000_000  # seed offset of evaluation scenes: never drawn for training


@dataclass
class DefaultsRecipe(DictConfig):
    """Everything :func:`build_defaults` depends on (saved in quality.json).

    Video ``frames`` of ``height x width`` pixels; ``train_scenes`` / ``eval_scenes`` synthetic
    scenes; camera jitter drawn from ``[0, max_jitter]``; the backbone's and the connector's
    optimiser settings; ``seed`` for scenes and training, ``vae_seed`` for the tiny VAE's
    initialisation. Checked on construction, so a recipe that cannot finish fails before
    minutes of training rather than after them:

    * ``frames = 1 + 4k`` (the Wan VAE's 4x temporal factor), ``height``, ``width``, counts,
      steps, epochs and batches positive ints, ``seed`` and ``vae_seed`` ints;
    * learning rates finite and > 0 (an infinite one trains to NaN and ships it), ``max_jitter``
      finite and >= 0.

    :func:`build_defaults` and :func:`evaluate_lgm` need more, and check it first:
    ``frames >= 9`` (3 latent frames for the camera motion reward) and ``height`` and ``width``
    multiples of the backbone's patch size (16 for the tiny one). ``vggrpo train-lgm
    --synthetic`` draws its scenes from a recipe at any valid size.
    """

    height: int = 96
    width: int = 160
    frames: int = 17
    train_scenes: int = 256
    eval_scenes: int = 32
    max_jitter: float = 2.0
    backbone_steps: int = 1500
    backbone_batch: int = 4
    backbone_lr: float = 1e-3
    stitch_epochs: int = 20
    stitch_batch: int = 4
    stitch_lr: float = 5e-4
    seed: int = 0
    vae_seed: int = 0

    def __post_init__(self) -> None:
        check_fields(self, "positive int", ("height", "width", "frames", "train_scenes",
                                            "eval_scenes", "backbone_steps", "backbone_batch",
                                            "stitch_epochs", "stitch_batch"))
        check_fields(self, "int", ("seed", "vae_seed"))
        check_fields(self, "finite number > 0", ("backbone_lr", "stitch_lr"))
        check_fields(self, "finite number >= 0", ("max_jitter",))
        if (self.frames - 1) % 4:
            raise ValueError(f"DefaultsRecipe.frames must be 1 + 4k (5, 9, 13, 17, ...: the Wan "
                             f"VAE's 4x temporal factor), got {self.frames}")


def check_build_size(recipe: DefaultsRecipe, patch: int, rewards: bool = True) -> None:
    """What training and evaluating need beyond a valid scene size: ``height`` and ``width``
    multiples of the backbone's ``patch``, and with ``rewards`` 3 latent frames (``vggrpo
    train-lgm --synthetic`` draws its scenes from a recipe too, at any size)."""
    if rewards and recipe.frames < 9:
        raise ValueError(f"DefaultsRecipe.frames must be >= 9 here (3 latent frames, the fewest "
                         f"the camera motion reward takes), got {recipe.frames}")
    for name in ("height", "width"):
        if getattr(recipe, name) % patch:
            raise ValueError(f"DefaultsRecipe.{name} must be a multiple of {patch} (the "
                             f"backbone's patch size), got {getattr(recipe, name)}")


# -- data -----------------------------------------------------------------------------------------

class _Items(torch.utils.data.Dataset):
    def __init__(self, items: Dict[str, Tensor]) -> None:
        self.items = items

    def __len__(self) -> int:
        return next(iter(self.items.values())).shape[0]

    def __getitem__(self, i: int) -> Dict[str, Tensor]:
        return {k: v[i] for k, v in self.items.items()}


def scene_pool(count: int, recipe: DefaultsRecipe, *, seed: int, jitter: Optional[float] = None,
               progress: bool = False) -> torch.utils.data.Dataset:
    """``count`` random synthetic videos as a Dataset of dicts (``video [T,3,H,W]``, cameras,
    ``depths``, ``pointmaps``, ``scene_flow``), scene ``i`` drawn from seed ``seed + i``."""
    from tqdm.auto import tqdm

    from .data.synthetic import TRAJECTORIES, sample_scene_specs

    keys = ("video", "extrinsics", "intrinsics", "depths", "pointmaps", "scene_flow")
    out: Dict[str, List[Tensor]] = {k: [] for k in keys}
    for i in tqdm(range(count), desc="scenes", disable=not progress, leave=False):
        gen = torch.Generator().manual_seed(seed + i)
        u = torch.rand(4, generator=gen, dtype=torch.float64).tolist()
        spec = sample_scene_specs(
            1, recipe.frames, recipe.height, recipe.width,
            trajectory=TRAJECTORIES[i % len(TRAJECTORIES)],
            jitter=recipe.max_jitter * u[0] ** 2 if jitter is None else jitter,
            static_objects=1 + int(u[1] * 3), moving_objects=int(u[2] * 3), seed=seed + i,
        )[0]
        scene = spec.render(recipe.height, recipe.width)
        for k in keys:
            out[k].append(getattr(scene, k)[0])
    return _Items({k: torch.stack(v) for k, v in out.items()})


# -- evaluation -----------------------------------------------------------------------------------

@torch.no_grad()
def evaluate_lgm(lgm, vae, recipe: DefaultsRecipe = DefaultsRecipe(), *,
                 scenes: Optional[int] = None, ranking_scenes: int = 4,
                 progress: bool = False) -> Dict[str, object]:
    """Held-out quality of the tiny backbone (RGB) and the LGM (latents) against ground truth,
    and whether LGM rewards rank smooth over jittered and clean over noisy (Spearman).
    ``vae`` must be the one the LGM was stitched to (:meth:`LatentGeometryModel.check_vae`)."""
    from .evaluation import camera_errors, depth_abs_rel, spearman
    from .geometry.training import supervised_targets
    from .vae import encode_video

    if scenes is not None and not is_positive_int(scenes):
        raise ValueError(f"evaluate_lgm: scenes must be a positive int (or None for the "
                         f"recipe's eval_scenes), got {scenes!r}")
    if not (is_int(ranking_scenes) and ranking_scenes >= 0):
        raise ValueError(f"evaluate_lgm: ranking_scenes must be an int >= 0, got "
                         f"{ranking_scenes!r}")
    check_build_size(recipe, lgm.backbone.patch_size, rewards=ranking_scenes > 0)
    lgm.check_vae(vae)
    n = scenes if scenes is not None else recipe.eval_scenes
    data = scene_pool(n, recipe, seed=recipe.seed + _HELD_OUT, progress=progress)
    sums: Dict[str, float] = {}

    def add(name: str, value: Tensor) -> None:
        sums[name] = sums.get(name, 0.0) + float(value.sum())

    for start in range(0, n, 4):
        batch = {k: v[start:start + 4] for k, v in data.items.items()}
        tgt = supervised_targets(batch, lgm.temporal_factor)
        gt = tgt["geometry"]
        for name, geo in (("rgb", lgm.backbone(tgt["video"])),
                          ("latent", lgm(encode_video(vae, batch["video"])))):
            add(f"{name}.depth_abs_rel", depth_abs_rel(geo.depths, gt.depths))
            cams = camera_errors(geo.extrinsics, gt.extrinsics)
            add(f"{name}.rotation_deg", cams["rotation_deg"])
            add(f"{name}.centre_m", cams["centre"])
        still = torch.zeros_like(gt.extrinsics)
        still[..., :3, :3] = torch.eye(3)
        cams = camera_errors(still, gt.extrinsics)
        add("static_camera_baseline.rotation_deg", cams["rotation_deg"])
        add("static_camera_baseline.centre_m", cams["centre"])
    quality: Dict[str, object] = {k: v / n for k, v in sorted(sums.items())}

    # Rankings: the same scenes at increasing camera jitter, and at increasing latent noise.
    jitters = [0.0, 0.5, 1.0, 2.0, 3.0, 4.0]
    noises = [0.0, 0.25, 0.5, 1.0, 2.0]
    rho_motion, rho_motion_gt, rho_geo = [], [], []
    for s in range(ranking_scenes):
        seed = recipe.seed + 2 * _HELD_OUT + s
        motion, motion_gt = [], []
        for j in jitters:
            item = scene_pool(1, recipe, seed=seed, jitter=j).items
            r = lgm(encode_video(vae, item["video"])).rewards()
            motion.append(float(r["motion"][0]))
            gt = supervised_targets(item, lgm.temporal_factor)["geometry"]
            motion_gt.append(float(gt.rewards()["motion"][0]))
        rho_motion.append(spearman(torch.tensor(jitters), torch.tensor(motion)))
        rho_motion_gt.append(spearman(torch.tensor(jitters), torch.tensor(motion_gt)))
        item = scene_pool(1, recipe, seed=seed, jitter=0.0).items
        z = encode_video(vae, item["video"])
        scale = z.std(dim=(2, 3, 4), keepdim=True)
        noise = torch.randn(z.shape, generator=torch.Generator().manual_seed(seed))
        geo = [float(lgm(z + sigma * scale * noise).rewards()["geo"][0]) for sigma in noises]
        rho_geo.append(spearman(torch.tensor(noises), torch.tensor(geo)))
    if ranking_scenes == 0:
        quality["eval_scenes"] = n
        return quality
    quality["ranking"] = {
        "jitter_levels": jitters,
        "latent_noise_levels": noises,
        "spearman_jitter_vs_lgm_motion_reward": rho_motion,
        "spearman_jitter_vs_true_motion_reward": rho_motion_gt,
        "spearman_latent_noise_vs_lgm_geo_reward": rho_geo,
    }
    quality["eval_scenes"] = n
    return quality


# -- building -------------------------------------------------------------------------------------

def _replace_dir(tmp: Path, final: Path) -> None:
    """Move a finished folder into place; the old one is removed only after the new one is in."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old)


def build_defaults(out: Union[str, Path], recipe: DefaultsRecipe = DefaultsRecipe(), *,
                   progress: bool = True) -> Dict[str, object]:
    """Train the tiny backbone, make the tiny VAE, stitch the connector, evaluate; write
    ``out/{tiny_wan_vae, default_lgm, quality.json}`` (each folder complete before it appears)."""
    from diffusers import AutoencoderKLWan

    from .geometry.tiny import TinyVGGT, TinyVGGTConfig
    from .geometry.training import BackboneTrainingConfig, train_tiny_backbone
    from .lgm import LatentGeometryModel, LGMConfig
    from .stitching import StitchingConfig, train_stitching
    from .vae import TINY_WAN_VAE_CONFIG

    check_build_size(recipe, TinyVGGTConfig.patch_size)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    timings: Dict[str, float] = {}
    t0 = time.perf_counter()
    train = scene_pool(recipe.train_scenes, recipe, seed=recipe.seed, progress=progress)
    timings["scenes_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    torch.manual_seed(recipe.seed)
    backbone = TinyVGGT(TinyVGGTConfig())
    backbone_history = train_tiny_backbone(
        backbone, train, BackboneTrainingConfig(steps=recipe.backbone_steps,
                                                batch_size=recipe.backbone_batch,
                                                lr=recipe.backbone_lr, seed=recipe.seed),
        progress=progress)
    backbone.requires_grad_(False).eval()
    timings["backbone_s"] = time.perf_counter() - t0

    torch.manual_seed(recipe.vae_seed)
    vae = AutoencoderKLWan(**TINY_WAN_VAE_CONFIG).eval()

    t0 = time.perf_counter()
    torch.manual_seed(recipe.seed + 1)
    lgm = LatentGeometryModel(backbone, LGMConfig.from_vae(vae, backbone.dim))
    stitch_history = train_stitching(
        lgm, vae, train, StitchingConfig(epochs=recipe.stitch_epochs,
                                         batch_size=recipe.stitch_batch, lr=recipe.stitch_lr,
                                         seed=recipe.seed), progress=progress)
    timings["stitching_s"] = time.perf_counter() - t0

    with tempfile.TemporaryDirectory(dir=out) as tmp:
        vae.save_pretrained(Path(tmp) / VAE_FOLDER, safe_serialization=True)
        # float16 halves the shipped size; quality is measured on these rounded weights.
        lgm.save_pretrained(Path(tmp) / LGM_FOLDER, dtype=torch.float16)
        # Evaluate what ships, loaded back from the files.
        shipped_vae = load_tiny_wan_vae(Path(tmp) / VAE_FOLDER)
        shipped = load_default_lgm(Path(tmp) / LGM_FOLDER)
        t0 = time.perf_counter()
        quality = evaluate_lgm(shipped, shipped_vae, recipe, progress=progress)
        timings["evaluation_s"] = time.perf_counter() - t0
        _replace_dir(Path(tmp) / VAE_FOLDER, out / VAE_FOLDER)
        _replace_dir(Path(tmp) / LGM_FOLDER, out / LGM_FOLDER)
    report = {
        "recipe": recipe.to_dict(),
        "quality": quality,
        "final_backbone_loss": backbone_history[-1],
        "final_stitching_loss": stitch_history[-1]["loss"],
        "first_stitching_loss": stitch_history[0]["loss"],
        "timings": timings,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    _io.save_json(out / QUALITY_FILE, report)
    return report
