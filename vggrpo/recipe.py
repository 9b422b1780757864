"""The recipe that reproduces the embedded default models (:mod:`vggrpo.defaults`): synthetic
scenes, the small Wan VAE trained on them (:mod:`vggrpo.vae_training`), the tiny backbone
trained with ground truth, the connector stitched to the VAE, the held-out evaluation, and the
demo's base generator (:mod:`vggrpo.generator_training`). ``vggrpo build-defaults`` runs it::

    vggrpo build-defaults --out vggrpo/weights

Time on the 2-core dev VM: docs/lgm.md "The embedded default" gives each stage's.

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
from typing import Dict, List, Optional, Tuple, Union

import torch
from torch import Tensor

from . import _io
from ._checks import DictConfig, check_fields, is_int, is_positive_int
from .defaults import (
    GENERATOR_FOLDER,
    LGM_FOLDER,
    QUALITY_FILE,
    VAE_FOLDER,
    load_default_lgm,
    load_tiny_backbone,
    load_tiny_wan_vae,
)
from .provenance import build_environment

__all__ = ["DefaultsRecipe", "check_build_size", "scene_pool", "held_out_scenes",
           "ranking_scene_seed", "RANKING_JITTERS",
           "build_defaults", "evaluate_lgm",
           "train_backbone_stage", "train_lgm_stage", "train_generator_stage", "build_lgm",
           "build_generator"]

_HELD_OUT = 1_000_000  # seed offset of evaluation scenes: never drawn for training


@dataclass
class DefaultsRecipe(DictConfig):
    """Everything :func:`build_defaults` depends on (saved in quality.json).

    Video ``frames`` of ``height x width`` pixels; ``train_scenes`` / ``eval_scenes`` synthetic
    scenes; camera jitter drawn from ``[0, max_jitter]``; the backbone's and the connector's
    optimiser settings (``backbone_motion_weight``: the backbone's camera-step loss term,
    :mod:`vggrpo.geometry.training`); the LGM's LoRA stage after the connector's
    (``lgm_lora_rank`` adapters of alpha = rank on the backbone's remaining blocks, trained with
    the connector for ``lgm_lora_epochs`` more epochs at ``stitch_lr``, the RGB backbone's
    outputs distilled into the LGM's; epochs 0: no adapters); the VAE's training steps (single
    frames, then whole clips), learning rate and linear teacher's starting weight
    (:class:`~vggrpo.vae_training.VAETrainingConfig`); ``seed`` for scenes and training,
    ``vae_seed`` for the VAE's initialisation and the frames and crops it trains on. Checked
    on construction, so a recipe that cannot finish fails before minutes of training rather
    than after them:

    * ``frames = 1 + 4k`` (the Wan VAE's 4x temporal factor), ``height``, ``width``, counts,
      steps, epochs and batches positive ints, ``seed`` and ``vae_seed`` ints, the VAE's steps
      ints >= 0 and not both 0;
    * learning rates finite and > 0 (an infinite one trains to NaN and ships it), ``max_jitter``,
      ``backbone_motion_weight`` and ``vae_teacher_weight`` finite and >= 0.

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
    backbone_motion_weight: float = 0.0
    stitch_epochs: int = 200
    stitch_batch: int = 4
    stitch_lr: float = 5e-4
    lgm_lora_rank: int = 16
    lgm_lora_epochs: int = 20
    vae_image_steps: int = 2500
    vae_video_steps: int = 400
    vae_lr: float = 3e-4
    vae_teacher_weight: float = 0.0
    generator_videos: int = 480
    generator_steps: int = 3000
    generator_batch: int = 16
    generator_lr: float = 5e-4
    seed: int = 0
    vae_seed: int = 0

    def __post_init__(self) -> None:
        check_fields(self, "positive int", ("height", "width", "frames", "train_scenes",
                                            "eval_scenes", "backbone_steps", "backbone_batch",
                                            "stitch_epochs", "stitch_batch", "lgm_lora_rank",
                                            "generator_videos", "generator_steps",
                                            "generator_batch"))
        check_fields(self, "int >= 0", ("vae_image_steps", "vae_video_steps", "lgm_lora_epochs"))
        check_fields(self, "int", ("seed", "vae_seed"))
        check_fields(self, "finite number > 0", ("backbone_lr", "stitch_lr", "vae_lr",
                                                 "generator_lr"))
        check_fields(self, "finite number >= 0", ("max_jitter", "backbone_motion_weight",
                                                  "vae_teacher_weight"))
        if self.vae_image_steps + self.vae_video_steps == 0:
            raise ValueError("DefaultsRecipe.vae_image_steps must be > 0 when vae_video_steps is "
                             "0 (the VAE must train), got 0")
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


def held_out_scenes(count: int, recipe: DefaultsRecipe, *, progress: bool = False):
    """The first ``count`` held-out scenes, which :func:`evaluate_lgm` measures camera, depth and
    VAE quality on (:func:`scene_pool` from seeds no training stage draws)."""
    return scene_pool(count, recipe, seed=recipe.seed + _HELD_OUT, progress=progress)


#: The camera jitter levels of :func:`evaluate_lgm`'s motion-ranking sweep (the trajectories'
#: ``jitter``: shake in units of the mean frame step).
RANKING_JITTERS = (0.0, 0.5, 1.0, 2.0, 3.0, 4.0)


def ranking_scene_seed(recipe: DefaultsRecipe, index: int) -> int:
    """The seed of :func:`evaluate_lgm`'s ``index``-th ranking scene (the jitter and latent-noise
    sweeps): outside the training and the held-out evaluation scenes' seeds."""
    return recipe.seed + 2 * _HELD_OUT + index


def scene_pool(count: int, recipe: DefaultsRecipe, *, seed: int, jitter: Optional[float] = None,
               trajectory: Optional[str] = None,
               progress: bool = False) -> torch.utils.data.Dataset:
    """``count`` random synthetic videos as a Dataset of dicts (``video [T,3,H,W]``, cameras,
    ``depths``, ``pointmaps``, ``scene_flow``), scene ``i`` drawn from seed ``seed + i``, with
    the trajectory kind ``TRAJECTORIES[i % 3]`` (dolly, orbit, pan), or ``trajectory`` for
    every scene when given."""
    from tqdm.auto import tqdm

    from .data.synthetic import TRAJECTORIES, sample_scene_specs

    if trajectory is not None and trajectory not in TRAJECTORIES:
        raise ValueError(f"scene_pool: trajectory must be None or one of {TRAJECTORIES}, "
                         f"got {trajectory!r}")

    keys = ("video", "extrinsics", "intrinsics", "depths", "pointmaps", "scene_flow")
    out: Dict[str, List[Tensor]] = {k: [] for k in keys}
    for i in tqdm(range(count), desc="scenes", disable=not progress, leave=False):
        gen = torch.Generator().manual_seed(seed + i)
        u = torch.rand(4, generator=gen, dtype=torch.float64).tolist()
        spec = sample_scene_specs(
            1, recipe.frames, recipe.height, recipe.width,
            trajectory=trajectory or TRAJECTORIES[i % len(TRAJECTORIES)],
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
                 ranking_trajectory: str = "dolly",
                 progress: bool = False) -> Dict[str, object]:
    """Held-out quality of the tiny backbone (RGB) and the LGM (latents) against ground truth,
    the VAE's reconstruction PSNR (``vae.psnr_db``, dB over every pixel of every frame), and
    whether LGM rewards rank smooth over jittered and clean over noisy (Spearman; the motion
    sweep also for the backbone on the RGB frames and for the ground truth).
    ``vae`` must be the one the LGM was stitched to (:meth:`LatentGeometryModel.check_vae`).

    The ``ranking_scenes`` scenes of both sweeps are of one trajectory kind,
    ``ranking_trajectory``: ``"dolly"``, what every build's quality.json reports, or ``"orbit"``
    or ``"pan"`` (docs/lgm.md measures all three)."""
    from .evaluation import camera_errors, depth_abs_rel, spearman
    from .geometry.training import supervised_targets
    from .vae import encode_video, reconstruction_psnr

    if scenes is not None and not is_positive_int(scenes):
        raise ValueError(f"evaluate_lgm: scenes must be a positive int (or None for the "
                         f"recipe's eval_scenes), got {scenes!r}")
    if not (is_int(ranking_scenes) and ranking_scenes >= 0):
        raise ValueError(f"evaluate_lgm: ranking_scenes must be an int >= 0, got "
                         f"{ranking_scenes!r}")
    from .data.synthetic import TRAJECTORIES

    if ranking_trajectory not in TRAJECTORIES:
        raise ValueError(f"evaluate_lgm: ranking_trajectory must be one of {TRAJECTORIES}, "
                         f"got {ranking_trajectory!r}")
    check_build_size(recipe, lgm.backbone.patch_size, rewards=ranking_scenes > 0)
    lgm.check_vae(vae)
    n = scenes if scenes is not None else recipe.eval_scenes
    data = held_out_scenes(n, recipe, progress=progress)
    sums: Dict[str, float] = {}

    def add(name: str, value: Tensor) -> None:
        sums[name] = sums.get(name, 0.0) + float(value.sum())

    for start in range(0, n, 4):
        batch = {k: v[start:start + 4] for k, v in data.items.items()}
        tgt = supervised_targets(batch, lgm.temporal_factor)
        gt = tgt["geometry"]
        with lgm.adapters_disabled() as teacher:  # the RGB path is the plain backbone
            rgb = teacher(tgt["video"])
        for name, geo in (("rgb", rgb),
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
    quality["vae.psnr_db"] = reconstruction_psnr(vae, data.items["video"])

    # Rankings: the same scenes at increasing camera jitter, and at increasing latent noise.
    jitters = list(RANKING_JITTERS)
    noises = [0.0, 0.25, 0.5, 1.0, 2.0]
    rho_motion, rho_motion_rgb, rho_motion_gt, rho_geo = [], [], [], []
    for s in range(ranking_scenes):
        seed = ranking_scene_seed(recipe, s)
        motion, motion_rgb, motion_gt = [], [], []
        for j in jitters:
            item = scene_pool(1, recipe, seed=seed, jitter=j, trajectory=ranking_trajectory).items
            r = lgm(encode_video(vae, item["video"])).rewards()
            motion.append(float(r["motion"][0]))
            tgt = supervised_targets(item, lgm.temporal_factor)
            with lgm.adapters_disabled() as teacher:
                motion_rgb.append(float(teacher(tgt["video"]).rewards()["motion"][0]))
            motion_gt.append(float(tgt["geometry"].rewards()["motion"][0]))
        rho_motion.append(spearman(torch.tensor(jitters), torch.tensor(motion)))
        rho_motion_rgb.append(spearman(torch.tensor(jitters), torch.tensor(motion_rgb)))
        rho_motion_gt.append(spearman(torch.tensor(jitters), torch.tensor(motion_gt)))
        item = scene_pool(1, recipe, seed=seed, jitter=0.0, trajectory=ranking_trajectory).items
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
        "spearman_jitter_vs_rgb_motion_reward": rho_motion_rgb,
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
    """Train the small Wan VAE and the tiny backbone, stitch the connector, evaluate, train the
    base generator; write ``out/{tiny_wan_vae, default_lgm, base_generator, quality.json}``
    (each folder complete before it appears)."""
    from diffusers import AutoencoderKLWan

    from .geometry.tiny import TinyVGGTConfig
    from .vae import TRAINED_WAN_VAE_CONFIG
    from .vae_training import VAETrainingConfig, train_wan_vae

    check_build_size(recipe, TinyVGGTConfig.patch_size)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    timings: Dict[str, float] = {}
    t0 = time.perf_counter()
    train = scene_pool(recipe.train_scenes, recipe, seed=recipe.seed, progress=progress)
    timings["scenes_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    torch.manual_seed(recipe.vae_seed)
    vae = AutoencoderKLWan(**TRAINED_WAN_VAE_CONFIG)
    vae_history = train_wan_vae(vae, train.items["video"], VAETrainingConfig(
        image_steps=recipe.vae_image_steps, video_steps=recipe.vae_video_steps, lr=recipe.vae_lr,
        crop=min(48, recipe.height, recipe.width), seed=recipe.vae_seed,
        teacher_weight=recipe.vae_teacher_weight), progress=progress)
    timings["vae_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    backbone, backbone_history = train_backbone_stage(train, recipe, progress=progress)
    # The backbone ships in float16: stitch the connector to those rounded weights, not to
    # ones no user gets (a connector re-stitched from the saved files then matches too).
    with torch.no_grad():
        for p in backbone.parameters():
            p.copy_(p.half().float())
    timings["backbone_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    lgm, stitch_history = train_lgm_stage(backbone, vae, train, recipe, progress=progress)
    timings["stitching_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    generator, generator_history = train_generator_stage(vae, recipe, progress=progress)
    timings["generator_s"] = time.perf_counter() - t0

    with tempfile.TemporaryDirectory(dir=out) as tmp:
        _save_float16(generator, Path(tmp) / GENERATOR_FOLDER)
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
        _replace_dir(Path(tmp) / GENERATOR_FOLDER, out / GENERATOR_FOLDER)
    report = {
        "recipe": recipe.to_dict(),
        "quality": quality,
        "final_backbone_loss": backbone_history[-1],
        "final_vae_loss": vae_history[-1]["loss"],
        **_stitching_losses(stitch_history),
        "final_generator_loss": _late_loss(generator_history),
        "timings": timings,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        # What the bytes depend on besides the recipe; a stage rebuilt alone adds its own entry.
        "environments": {"build": build_environment()},
    }
    _io.save_json(out / QUALITY_FILE, report)
    return report


def train_backbone_stage(train: _Items, recipe: DefaultsRecipe = DefaultsRecipe(), *,
                         progress: bool = False):
    """The backbone stage of :func:`build_defaults`: a :class:`~vggrpo.geometry.TinyVGGT`
    (seeded with ``recipe.seed``) trained with ground truth on ``train`` (:func:`scene_pool`'s
    scenes) by :func:`~vggrpo.geometry.training.train_tiny_backbone` at the recipe's
    ``backbone_*`` settings. Returns ``(model frozen in eval mode, float32; loss history)``."""
    from .geometry.tiny import TinyVGGT, TinyVGGTConfig
    from .geometry.training import BackboneTrainingConfig, train_tiny_backbone

    torch.manual_seed(recipe.seed)
    backbone = TinyVGGT(TinyVGGTConfig())
    history = train_tiny_backbone(
        backbone, train, BackboneTrainingConfig(steps=recipe.backbone_steps,
                                                batch_size=recipe.backbone_batch,
                                                lr=recipe.backbone_lr,
                                                motion_weight=recipe.backbone_motion_weight,
                                                seed=recipe.seed),
        progress=progress)
    return backbone.requires_grad_(False).eval(), history


def train_lgm_stage(backbone, vae, train: _Items, recipe: DefaultsRecipe = DefaultsRecipe(), *,
                    progress: bool = False):
    """The LGM stage of :func:`build_defaults` on a frozen ``backbone`` (the float16-rounded one
    that ships) and ``vae``: the connector (seeded with ``recipe.seed + 1``) stitched for
    ``recipe.stitch_epochs``, then, when ``recipe.lgm_lora_epochs > 0``, LoRA adapters of rank
    ``recipe.lgm_lora_rank`` (alpha = rank, on the blocks after the stitch point; seeded with
    ``recipe.seed + 3``) trained with the connector for ``lgm_lora_epochs`` more, with the
    backbone's RGB outputs distilled into the LGM's (:func:`vggrpo.stitching.train_stitching`).
    Returns ``(LGM in eval mode, {"connector": history, "lora": history or []})``."""
    from .lgm import LatentGeometryModel, LGMConfig
    from .stitching import StitchingConfig, train_stitching

    def stitch(epochs: int):
        return train_stitching(lgm, vae, train, StitchingConfig(
            epochs=epochs, batch_size=recipe.stitch_batch, lr=recipe.stitch_lr,
            seed=recipe.seed), progress=progress)

    torch.manual_seed(recipe.seed + 1)
    lgm = LatentGeometryModel(backbone, LGMConfig.from_vae(vae, backbone.dim))
    histories = {"connector": stitch(recipe.stitch_epochs), "lora": []}
    if recipe.lgm_lora_epochs > 0:
        torch.manual_seed(recipe.seed + 3)
        lgm.add_lora(recipe.lgm_lora_rank, float(recipe.lgm_lora_rank))
        histories["lora"] = stitch(recipe.lgm_lora_epochs)
    return lgm.requires_grad_(False).eval(), histories


def _stitching_losses(histories: Dict[str, List[Dict[str, float]]]) -> Dict[str, float]:
    """quality.json's record of :func:`train_lgm_stage`'s losses (last batch of each part)."""
    losses = {"final_stitching_loss": histories["connector"][-1]["loss"],
              "first_stitching_loss": histories["connector"][0]["loss"]}
    if histories["lora"]:
        losses["final_lgm_lora_loss"] = histories["lora"][-1]["loss"]
    return losses


def build_lgm(out: Union[str, Path], recipe: DefaultsRecipe = DefaultsRecipe(), *,
              progress: bool = True) -> Dict[str, object]:
    """Only the LGM stage of :func:`build_defaults` (:func:`train_lgm_stage`), on the VAE and
    the plain backbone already in ``out``, on the recipe's training scenes: rewrite
    ``out/default_lgm`` (complete before it appears), evaluate it as the full build does
    (:func:`evaluate_lgm` on the files as saved), and update ``out/quality.json``: ``quality``,
    the stitching losses, ``timings.stitching_s`` and ``evaluation_s``, and the recipe's
    ``stitch_*`` and ``lgm_lora_*`` fields. Refused like :func:`build_generator` when
    ``out/quality.json`` records another ``frames``, ``height``, ``width`` or ``seed``."""
    from .geometry.tiny import TinyVGGTConfig

    out = Path(out)
    _check_recorded_build(out, recipe)
    check_build_size(recipe, TinyVGGTConfig.patch_size)
    vae = load_tiny_wan_vae(out / VAE_FOLDER)
    backbone = load_tiny_backbone(out / LGM_FOLDER)
    train = scene_pool(recipe.train_scenes, recipe, seed=recipe.seed, progress=progress)
    t0 = time.perf_counter()
    lgm, histories = train_lgm_stage(backbone, vae, train, recipe, progress=progress)
    seconds = time.perf_counter() - t0
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        lgm.save_pretrained(Path(tmp) / LGM_FOLDER, dtype=torch.float16)
        t0 = time.perf_counter()
        quality = evaluate_lgm(load_default_lgm(Path(tmp) / LGM_FOLDER), vae, recipe,
                               progress=progress)
        evaluation = time.perf_counter() - t0
        _replace_dir(Path(tmp) / LGM_FOLDER, out / LGM_FOLDER)
    return _update_report(out, recipe, "lgm", ("stitch_", "lgm_lora_"),
                          {"quality": quality, **_stitching_losses(histories)},
                          {"stitching_s": seconds, "evaluation_s": evaluation},
                          drop=("final_lgm_lora_loss",))


def train_generator_stage(vae, recipe: DefaultsRecipe = DefaultsRecipe(), *,
                          progress: bool = False):
    """The base generator of the demo: a ``WanTransformer3DModel`` of
    :data:`~vggrpo.generator_training.BASE_GENERATOR_CONFIG` (seeded with ``recipe.seed + 2``)
    trained by flow matching on ``vae``'s latents of ``recipe.generator_videos`` prompted world
    videos (:func:`vggrpo.data.worlds.world_videos`, seed ``recipe.seed + 2``, flaws included)
    with the prompt embeddings :func:`~vggrpo.data.worlds.world_prompt_embeddings` ``(8, 16)``.
    Depends on nothing else of the build, so it can be rerun alone on a saved VAE. Returns
    ``(model in eval mode, float32; loss history)``."""
    from diffusers import WanTransformer3DModel

    from .data.worlds import world_prompt_embeddings, world_videos
    from .generator_training import (
        BASE_GENERATOR_CONFIG,
        GeneratorTrainingConfig,
        train_base_generator,
    )
    from .vae import encode_video

    seed = recipe.seed + 2
    worlds = world_videos(recipe.generator_videos, frames=recipe.frames, height=recipe.height,
                          width=recipe.width, seed=seed, progress=progress)
    with torch.no_grad():
        latents = torch.cat([encode_video(vae, worlds["video"][i:i + 8])
                             for i in range(0, recipe.generator_videos, 8)])
    torch.manual_seed(seed)
    model = WanTransformer3DModel(**BASE_GENERATOR_CONFIG)
    history = train_base_generator(
        model, latents, worlds["prompt"], world_prompt_embeddings(8, 16),
        GeneratorTrainingConfig(steps=recipe.generator_steps, batch=recipe.generator_batch,
                                lr=recipe.generator_lr, seed=seed), progress=progress)
    return model, history


def build_generator(out: Union[str, Path], recipe: DefaultsRecipe = DefaultsRecipe(), *,
                    progress: bool = True) -> Dict[str, object]:
    """Only the last stage of :func:`build_defaults`, on the VAE already in ``out``: rewrite
    ``out/base_generator`` (complete before it appears) and its entries of ``out/quality.json``
    (``final_generator_loss``, ``timings.generator_s``, the recipe's ``generator_*`` fields).
    The same code as in the full build,
    which seeds the stage on its own, so the result is the full build's.

    Refused (ValueError naming the field, before any training) when ``out/quality.json``
    records a build whose ``frames``, ``height``, ``width`` or ``seed`` differ from ``recipe``'s:
    the generator would learn worlds of another size or draw, beside weights that say
    otherwise."""
    out = Path(out)
    _check_recorded_build(out, recipe)
    vae = load_tiny_wan_vae(out / VAE_FOLDER)
    t0 = time.perf_counter()
    generator, history = train_generator_stage(vae, recipe, progress=progress)
    seconds = time.perf_counter() - t0
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        _save_float16(generator, Path(tmp) / GENERATOR_FOLDER)
        _replace_dir(Path(tmp) / GENERATOR_FOLDER, out / GENERATOR_FOLDER)
    return _update_report(out, recipe, "generator", ("generator_",),
                          {"final_generator_loss": _late_loss(history)},
                          {"generator_s": seconds})


def _update_report(out: Path, recipe: DefaultsRecipe, stage: str, prefixes: Tuple[str, ...],
                   entries: Dict[str, object], timings: Dict[str, float],
                   drop: Tuple[str, ...] = ()) -> Dict[str, object]:
    """Rewrite ``out/quality.json`` after one ``stage`` rebuilt alone: the recorded recipe takes
    ``recipe``'s fields starting with ``prefixes`` (the settings the new weights came from),
    ``drop`` keys go (an earlier run's that no longer apply), ``entries`` and ``timings`` are set,
    and ``environments[stage]`` records where this stage ran (:func:`build_environment`).
    Returns the report written."""
    report = _io.load_json(out / QUALITY_FILE) if (out / QUALITY_FILE).is_file() else {}
    report.setdefault("recipe", {}).update(
        {k: v for k, v in recipe.to_dict().items() if k.startswith(prefixes)})
    for key in drop:
        report.pop(key, None)
    report.update(entries)
    report.setdefault("timings", {}).update(timings)
    report.setdefault("environments", {})[stage] = build_environment()
    _io.save_json(out / QUALITY_FILE, report)
    return report


def _check_recorded_build(out: Path, recipe: DefaultsRecipe) -> None:
    """A stage rebuilt alone must see the scenes of the build in ``out``: its ``frames``,
    ``height``, ``width`` and ``seed`` (quality.json's recipe) must be ``recipe``'s."""
    recorded = (_io.load_json(out / QUALITY_FILE).get("recipe", {})
                if (out / QUALITY_FILE).is_file() else {})
    for name in ("frames", "height", "width", "seed"):
        if name in recorded and recorded[name] != getattr(recipe, name):
            raise ValueError(f"DefaultsRecipe.{name} must match the build in {out} "
                             f"({recorded[name]}, its quality.json), got "
                             f"{getattr(recipe, name)}; rebuild everything, or pass "
                             f"--{name} {recorded[name]}")


def _save_float16(model, folder: Path) -> None:
    """``model.save_pretrained`` with float16 weights, the model itself left as it is. (Not
    ``model.to(float16)``: diffusers warns that some Wan modules should stay float32 to run;
    these files are loaded back in float32.)"""
    import copy

    half = copy.deepcopy(model)
    with torch.no_grad():
        for p in half.parameters():
            p.data = p.data.half()
    half.save_pretrained(folder, safe_serialization=True)


def _late_loss(history: List[Dict[str, float]]) -> float:
    """The mean loss of the last 100 steps (one step's loss is one batch's noise)."""
    late = history[-100:]
    return sum(h["loss"] for h in late) / len(late)
