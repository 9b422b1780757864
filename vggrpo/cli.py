"""The ``vggrpo`` command: ``vggrpo <subcommand> --help`` for each.

Subcommands:

* ``demo``: the main job on the embedded tiny models. It renders synthetic scenes and reads their
  latents with the embedded LGM, runs a short GRPO run on the tiny Wan model with LoRA, compares
  guided and unguided samples, and times the latent reward against the RGB reward. It writes
  ``reward_curve.png``, ``summary.json`` and the LoRA to ``--out``.
* ``reward``: score videos (files or frame folders) or saved latents (``.safetensors`` with a
  ``latents`` tensor ``[B,C,T,h,w]``).
* ``train-lgm``: stitch an LGM connector (the options of ``python -m vggrpo.stitching``).
* ``train``: GRPO from a TOML or YAML config, with a model from a local diffusers folder.
* ``sample``: sampling with reward guidance; writes latents, and a video with ``--decode``.
* ``eval``: the Sampson epipolar error and the rewards of a folder of videos, as a CSV and a
  summary.
* ``bench``: the latent reward against the RGB reward, and the fused geometry reward against its
  plain-PyTorch reference, timed on this machine; writes JSON.

Errors (a missing folder, a wrong layout, an unreadable video, a bad config, inputs that do not
fit the model) print one line, ``error: ...``, and exit with code 2; a bad option value (a count
below 1, a NaN weight) is refused by the parser, also with code 2, before anything loads. Every
output is written atomically, so nothing is left half-written.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch

from . import _io

__all__ = ["main"]


class UsageError(Exception):
    """A problem with what the user gave us: reported as one line, exit code 2."""


#: What a command reports as ``error: ...`` (one line, exit code 2) rather than a traceback:
#: the user's input, files and machine. RecursionError: JSON nested too deep for the parser;
#: MemoryError: a size that cannot be allocated.
USER_ERRORS = (UsageError, OSError, ValueError, ImportError, RecursionError, MemoryError,
               NotImplementedError)


def error_line(err: BaseException, limit: int = 600) -> str:
    """``error: <message>`` on one line, at most about ``limit`` characters: messages from
    parsers and libraries can span lines (torch's size reports, YAML's context marks)."""
    text = " ".join(str(err).split()) or type(err).__name__
    if isinstance(err, (RecursionError, MemoryError)):
        text = f"{type(err).__name__}: {text}"
    return "error: " + (text if len(text) <= limit else text[:limit] + "...")


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line, ``error: <prog>: <message>``, exit code
    2, without the usage block (``--help`` shows it)."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {' '.join(message.split())} (see {self.prog} "
                     f"--help)\n")


# -- option types: a bad value is refused by the parser, before any work ---------------------------

def _int_at_least(low: int):
    what = "a positive int" if low == 1 else f"an int >= {low}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
        return value

    return parse


_positive_int, _non_negative_int = _int_at_least(1), _int_at_least(0)


def _wan_frames(text: str) -> int:
    """A frame count the Wan VAE encodes: 1 + 4k (it maps frames 1 + 4k to latent frames 1 + k)."""
    value = _positive_int(text)
    if (value - 1) % 4:
        raise argparse.ArgumentTypeError(f"expected 1 + 4k frames (e.g. 9, 13, 17), got {value}")
    return value


def _finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _finite_float_above(low: float, *, or_equal: bool):
    what = f"a finite number {'>=' if or_equal else '>'} {low:g}"

    def parse(text: str) -> float:
        value = _finite_float(text)
        if value < low or (value == low and not or_equal):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


_positive_float = _finite_float_above(0.0, or_equal=False)
_non_negative_float = _finite_float_above(0.0, or_equal=True)


def _add_video_size_options(parser: argparse.ArgumentParser, *, frames_type,
                            frames_help: str, what: str) -> None:
    """``--frames`` (default 17), ``--height`` 96 and ``--width`` 160 (pixels): how the videos a
    command reads are cut and resized (``reward``, ``eval``, ``train-lgm``)."""
    parser.add_argument("--frames", type=frames_type, default=17,
                        help=f"{frames_help} (default: %(default)s)")
    for name, default in (("height", 96), ("width", 160)):
        parser.add_argument(f"--{name}", type=_positive_int, default=default,
                            help=f"{what} are resized to this {name} in pixels "
                                 f"(default: %(default)s)")


def _add_backbone_option(parser: argparse.ArgumentParser, extra: str = "") -> None:
    from .geometry.backbone_spec import BACKBONE_SPEC_HELP

    parser.add_argument("--backbone", metavar="SPEC",
                        help=f"the real backbone the LGM folder was stitched to: "
                             f"{BACKBONE_SPEC_HELP} (default: none, for an LGM with its own "
                             f"tiny backbone{extra})")


# -- loading what the user points at ------------------------------------------------------------

def _load_lgm(spec: str, backbone: Optional[str] = None):
    """The LGM of ``--lgm`` (a folder, or "default"), with the backbone of ``--backbone`` when
    it was stitched to a real one."""
    from .defaults import load_default_lgm
    from .geometry.backbone_spec import load_backbone
    from .lgm import LatentGeometryModel

    if spec == "default":
        if backbone is not None:
            raise UsageError("--backbone is for an LGM folder stitched to a real backbone "
                             "(--lgm DIR); the default LGM carries its own tiny one")
        return load_default_lgm()
    # Before the backbone, which may take minutes to build.
    LatentGeometryModel.read_config(spec)
    # Not through load_default_lgm: a missing folder of the user's is not a missing embedded
    # default, and that error's advice (rebuild the defaults) would send them the wrong way.
    return LatentGeometryModel.from_pretrained(
        spec, backbone=None if backbone is None else load_backbone(backbone))


def _load_vae(spec: str):
    from .defaults import load_tiny_wan_vae

    if spec == "tiny":
        return load_tiny_wan_vae()
    from .vae import load_vae_folder

    folder = Path(spec)
    sub = folder / "vae" if (folder / "vae" / "config.json").is_file() else folder
    if not (sub / "config.json").is_file():
        raise UsageError(f"{folder} is not a diffusers VAE folder: expected config.json (or "
                         f"vae/config.json in a pipeline folder)")
    return load_vae_folder(sub)


def _check_pipeline_layout(folder: Path) -> None:
    """A local diffusers Wan folder (Wan2.1 T2V-1.3B or Wan2.2 TI2V-5B layout)."""
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder not found: {folder}")
    need = ["model_index.json", "transformer/config.json", "vae/config.json"]
    missing = [n for n in need if not (folder / n).is_file()]
    if missing:
        raise UsageError(f"{folder} does not have the diffusers Wan layout: missing "
                         f"{', '.join(missing)} (expected e.g. Wan2.1-T2V-1.3B-Diffusers or "
                         f"Wan2.2-TI2V-5B-Diffusers)")


def _load_transformer(spec: str, dtype: torch.dtype):
    from diffusers import WanTransformer3DModel

    from .defaults import tiny_wan_transformer

    if spec == "tiny":
        model = tiny_wan_transformer(0)
        return model if dtype == torch.float32 else model.to(dtype)
    folder = Path(spec)
    _check_pipeline_layout(folder)
    return WanTransformer3DModel.from_pretrained(str(folder / "transformer"), torch_dtype=dtype,
                                                 local_files_only=True)


def _load_embeds(path: Optional[str], transformer, count: int = 2):
    """``(prompt_embeds [P,L,D], negative or None)`` from a safetensors file, or seeded random
    embeddings for the tiny model."""
    if path is None:
        dim = int(transformer.config.text_dim)
        gen = torch.Generator().manual_seed(0)
        return torch.randn(count, 8, dim, generator=gen), None
    tensors = _io.load_tensors(path, "prompt embeddings")
    if "prompt_embeds" not in tensors:
        raise UsageError(f"{path} must hold a 'prompt_embeds' tensor [P,L,D] (and optionally "
                         f"'negative_prompt_embeds'); it has {sorted(tensors)}")
    return tensors["prompt_embeds"], tensors.get("negative_prompt_embeds")


def _check_lgm_fits(lgm, transformer) -> None:
    if lgm.config.latent_channels != int(transformer.config.in_channels):
        raise UsageError(f"the LGM reads {lgm.config.latent_channels}-channel latents but the "
                         f"model makes {transformer.config.in_channels}-channel ones: stitch an "
                         f"LGM to this model's VAE (vggrpo train-lgm)")


def _check_lgm_vae(lgm, model: str, vae=None, name: Optional[str] = None) -> None:
    """When the LGM records the VAE it was stitched to, that VAE must be the model's: ``vae``
    when given (sample --decode has one; ``name`` names it), else the model's own (the tiny VAE
    for ``model == "tiny"``, ``model/vae`` for a pipeline folder). Run before the transformer
    loads, which takes minutes for a real model."""
    if lgm.vae_signature is None:
        return
    name = name or f"the VAE of model {model}"
    if vae is None:
        if model != "tiny":
            _check_pipeline_layout(Path(model))
        vae = _load_vae(model)
    # A matching channel count is not enough: the default LGM (tiny VAE) and Wan2.1 both read
    # 16, and its rewards on Wan2.1 latents would be noise that trains or guides nothing.
    lgm.check_vae(vae, name=name)


def _check_finite_rewards(rewards: Dict[str, torch.Tensor], what: str) -> None:
    """A NaN or infinite score is an error, not a result: it would print as ``nan``, and JSON
    cannot hold it."""
    for name, values in rewards.items():
        bad = (~torch.isfinite(values)).nonzero().flatten().tolist()
        if bad:
            raise UsageError(f"{what}: the {name} reward is {float(values[bad[0]])} for video "
                             f"{bad[0]} ({len(bad)} of {values.numel()} not finite): the LGM's "
                             f"weights or the latents are out of range; nothing written")


def _read_config(path: str) -> Dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"config not found: {p}")
    text = p.read_text(encoding="utf-8")
    try:
        if p.suffix == ".toml":
            if sys.version_info >= (3, 11):
                import tomllib
            else:  # the same parser, as a package before it joined the standard library
                import tomli as tomllib

            data = tomllib.loads(text)
        elif p.suffix in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError:
                raise UsageError("YAML configs need PyYAML (pip install pyyaml); or use TOML") \
                    from None
            # Data only: never executes anything (safe_load), and no aliases: nine levels of
            # *alias lists make a 281-byte file expand to a billion entries.
            class NoAliasLoader(yaml.SafeLoader):
                def compose_node(self, parent, index):
                    if self.check_event(yaml.AliasEvent):
                        mark = self.peek_event().start_mark
                        raise UsageError(f"config {p}: line {mark.line + 1}: YAML aliases "
                                         f"(*name) are not allowed in a config; write the "
                                         f"value out")
                    return super().compose_node(parent, index)

            data = yaml.load(text, Loader=NoAliasLoader)
        else:
            raise UsageError(f"config {p} must be .toml, .yaml or .yml")
    except UsageError:
        raise
    except Exception as err:  # parser errors of either format
        raise UsageError(f"config {p} could not be parsed: {err}") from None
    if not isinstance(data, dict):
        raise UsageError(f"config {p} must hold a table/mapping at the top level")
    return data


def _check_out_parents(out: Path) -> None:
    # The nearest existing ancestor must be a folder, or the write fails only after the work.
    parent = next((p for p in out.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise UsageError(f"--out {out}: {parent} is not a folder")


def _out_dir(path: str) -> Path:
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a folder")
    _check_out_parents(out)
    try:
        _io.check_can_create(out, "--out")
    except ValueError as err:
        raise UsageError(str(err)) from None
    return out


def _out_file(path: str) -> Path:
    """An --out that names a file, checked before any work (the atomic rename into it would
    fail only at the end): not a folder, FIFO or device, a name the file system takes, a
    place a file can be created. A symlink is written through (its target replaced)."""
    try:
        return _io.check_writable(path, "--out")
    except ValueError as err:
        raise UsageError(str(err)) from None


# -- subcommands -----------------------------------------------------------------------------------

def cmd_demo(args) -> int:
    """The main job on the embedded tiny models: synthetic scenes read by the LGM, a short GRPO
    run on the tiny Wan model with LoRA, guided vs unguided samples, latent vs RGB reward
    timing. Writes reward_curve.png, summary.json and the LoRA to --out."""
    from .baseline import RGBGeometryReward
    from .data.synthetic import make_scene
    from .defaults import load_default_lgm, load_tiny_wan_vae, tiny_wan_transformer
    from .grpo import GRPOConfig, GRPOTrainer
    from .latent_reward import LatentGeometryReward
    from .rewards import camera_motion_reward, geometry_reprojection_reward
    from .sampling import RewardGuidance, sample, wan_velocity
    from .vae import encode_video

    out = _out_dir(args.out)
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
    summary["latent_vs_rgb"] = _time_pair(lambda: latent_reward(z), lambda: rgb_reward(z),
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


def _time_pair(a, b, rounds: int) -> Dict[str, float]:
    """Median wall time of ``a()`` and ``b()`` called alternately under no_grad."""
    ta, tb = [], []
    with torch.no_grad():
        a(), b()  # warm-up
        for _ in range(rounds):
            for fn, acc in ((a, ta), (b, tb)):
                t0 = time.perf_counter()
                fn()
                acc.append(time.perf_counter() - t0)
    ma, mb = statistics.median(ta), statistics.median(tb)
    return {"a_median_s": ma, "b_median_s": mb, "ratio": ma / mb, "rounds": rounds}


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


def cmd_reward(args) -> int:
    from .data.video import read_video
    from .latent_reward import LatentGeometryReward
    from .vae import encode_video

    out = _out_file(args.out) if args.out else None
    lgm = _load_lgm(args.lgm, args.backbone)
    reward = LatentGeometryReward(lgm, topk=args.topk, flow_threshold=args.flow_threshold)
    vae = None
    rows: List[Dict[str, Any]] = []
    for item in args.inputs:
        path = Path(item)
        if not path.exists():
            raise FileNotFoundError(f"input not found: {path}")
        if path.suffix == ".safetensors":
            tensors = _io.load_tensors(path, "latents", floating=False)
            if "latents" not in tensors:
                raise UsageError(f"{path} must hold a 'latents' tensor [B,C,T,h,w]; it has "
                                 f"{sorted(tensors)}")
            latents = tensors["latents"]
            # Checked here, not by the reward: the .float() below would pass integer codes as
            # latents, a batch of 0 would print nothing and exit 0, and NaN / inf would print
            # (and save) NaN scores.
            if not latents.is_floating_point():
                raise UsageError(f"{path}: 'latents' must be a floating-point tensor [B,C,T,h,w], "
                                 f"got {latents.dtype}")
            if latents.dim() == 5 and latents.shape[0] == 0:
                raise UsageError(f"{path}: 'latents' {list(latents.shape)} holds no video "
                                 f"(batch 0); nothing to score")
            bad = int((~torch.isfinite(latents)).sum())
            if bad:
                raise UsageError(f"{path}: 'latents' must be finite; {bad} of its "
                                 f"{latents.numel()} values are NaN or inf")
            latents = latents.float()
        else:
            if vae is None:
                vae = _load_vae(args.vae)
                lgm.check_vae(vae, name=f"--vae {args.vae}")
            video = read_video(path, frames=args.frames, height=args.height, width=args.width)
            latents = encode_video(vae, video[None])
        with torch.no_grad():
            r = reward(latents)
        _check_finite_rewards(r, f"{path}")
        for b in range(latents.shape[0]):
            rows.append({"input": path.name, "index": b, "motion": float(r["motion"][b]),
                         "geo": float(r["geo"][b])})
    for row in rows:
        print(f"{row['input']}[{row['index']}]  motion {row['motion']:.4f}  geo {row['geo']:.4f}")
    if out is not None:
        _io.save_json(out, {"rows": rows})
    return 0


def _init_distributed() -> torch.device:
    """Under torchrun (RANK/WORLD_SIZE set): join the process group (NCCL on GPUs, gloo on CPUs)
    and pick this rank's GPU. Returns the device to train on."""
    import os

    cuda = torch.cuda.is_available()
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if cuda else "gloo")
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")


def cmd_train(args) -> int:
    from .grpo import GRPOConfig, GRPOTrainer, latest_checkpoint
    from .latent_reward import LatentGeometryReward

    cfg = _read_config(args.config)
    known = {"model", "lgm", "backbone", "prompt_embeds", "out", "dtype", "checkpoint_every",
             "keep_checkpoints", "grpo", "reward"}
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise UsageError(f"config {args.config}: unknown keys {unknown}; expected {sorted(known)}")
    text, table = (str, "a string"), (dict, "a table")
    kinds = {"model": text, "lgm": text, "backbone": text, "prompt_embeds": text, "out": text,
             "dtype": text,
             "checkpoint_every": (int, "an int >= 0 (0: at the end only)"),
             "keep_checkpoints": (int, "a positive int (the newest checkpoints kept)"),
             "grpo": table, "reward": table}
    lowest = {"checkpoint_every": 0, "keep_checkpoints": 1}
    for key, (kind, what) in kinds.items():
        value = cfg.get(key)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)
                                  or (kind is int and value < lowest[key])):
            raise UsageError(f"config {args.config}: {key} must be {what}, got {value!r}")
    # A misspelt reward setting would otherwise be ignored and the default used.
    reward_known = {"weights", "topk", "flow_threshold"}
    unknown = sorted(set(cfg.get("reward", {})) - reward_known)
    if unknown:
        raise UsageError(f"config {args.config}: unknown keys {unknown} in [reward]; expected "
                         f"{sorted(reward_known)}")
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16,
             "float16": torch.float16}.get(cfg.get("dtype", "float32"))
    if dtype is None:
        raise UsageError(f"config dtype must be float32, bfloat16 or float16, got "
                         f"{cfg.get('dtype')!r}")
    out = _out_dir(args.out or cfg.get("out", "runs/grpo"))
    resume_from = latest_checkpoint(out)
    if resume_from is not None and not args.resume:
        # Training afresh here would mix two runs' checkpoints, logs and history.
        raise UsageError(f"--out {out} holds a run ({resume_from.name}); pass --resume to "
                         f"continue it, or choose another folder")
    # The settings, then the small LGM, then the video model, which may take minutes to load:
    # a bad [grpo] or [reward] value must not wait for it.
    grpo = dict(cfg.get("grpo", {}))
    try:
        config = GRPOConfig(**grpo)
    except TypeError as err:
        raise UsageError(f"config [grpo]: {err}") from None
    device = _init_distributed()
    lgm = _load_lgm(cfg.get("lgm", "default"), args.backbone or cfg.get("backbone"))
    # [reward]'s keys were checked above; the reward's own defaults fill what is not given.
    reward = LatentGeometryReward(lgm.to(device), **cfg.get("reward", {}))
    _check_lgm_vae(lgm, cfg.get("model", "tiny"))
    transformer = _load_transformer(cfg.get("model", "tiny"), dtype).to(device)
    embeds, negative = _load_embeds(cfg.get("prompt_embeds"), transformer)
    _check_lgm_fits(lgm, transformer)
    trainer = GRPOTrainer(transformer, reward, embeds, config, negative_prompt_embeds=negative)
    if resume_from is not None:
        trainer.load_checkpoint(out)
    history = trainer.train(out_dir=out, checkpoint_every=int(cfg.get("checkpoint_every", 50)),
                            keep_checkpoints=int(cfg.get("keep_checkpoints", 2)))
    if trainer.rank == 0:
        print(f"trained {len(history)} steps (the run has {len(trainer.history)}); LoRA in {out}")
    return 0


def cmd_sample(args) -> int:
    from diffusers import FlowMatchEulerDiscreteScheduler

    from .data.video import write_video
    from .latent_reward import LatentGeometryReward
    from .sampling import (
        RewardGuidance,
        _check_window,
        check_wan_inputs,
        sample,
        scheduler_sigmas,
        wan_velocity,
    )
    from .vae import decode_latents, vae_factors

    out = _out_file(args.out)
    if args.guidance_scale > 0:
        # Before loading a model that may take minutes, and in the options' own names.
        end = args.guidance_end if args.guidance_end is not None else args.steps
        try:  # the sampler's own window rule, reworded for the options
            _check_window((args.guidance_start, end), args.steps, "guidance steps")
        except ValueError:
            default = " (its default, --steps)" if args.guidance_end is None else ""
            raise UsageError(f"--guidance-start {args.guidance_start} and --guidance-end "
                             f"{end}{default} must satisfy 0 <= start < end <= --steps "
                             f"({args.steps}); --guidance-scale 0 turns guidance off") from None
    vae = None
    if args.decode:
        # Before sampling, which may take minutes: a missing PyAV or a bad --vae must not surface
        # only after the latents are written.
        from .data.video import _import_av

        _import_av()
        # A pipeline folder's own VAE by default: the tiny one would decode its latents to noise.
        vae_spec = args.vae or ("tiny" if args.model == "tiny" else args.model)
        vae = _load_vae(vae_spec)
    lgm = _load_lgm(args.lgm, args.backbone)
    _check_lgm_vae(lgm, args.model, vae, f"--vae {args.vae}" if args.vae else None)
    transformer = _load_transformer(args.model, torch.float32)
    if args.lora:
        from .lora_file import load_lora

        try:  # at the strength it was trained with (its adapter metadata)
            load_lora(transformer, args.lora)
        except (ValueError, FileNotFoundError) as err:
            raise UsageError(f"--lora: {err}") from None
    if vae is not None and vae_factors(vae)["channels"] != int(transformer.config.in_channels):
        raise UsageError(f"--vae {vae_spec} decodes {vae_factors(vae)['channels']}-channel "
                         f"latents but the model makes {transformer.config.in_channels}-channel "
                         f"ones: pass the model's own VAE")
    embeds, negative = _load_embeds(args.prompt_embeds, transformer, count=1)
    latent = (int(transformer.config.in_channels), args.latent_frames, args.latent_height,
              args.latent_width)
    check_wan_inputs(transformer, prompt_embeds=embeds, negative_prompt_embeds=negative)
    try:
        check_wan_inputs(transformer, latent_shape=latent, min_frames=3)
    except ValueError as err:  # name the options the user gave
        raise UsageError(f"--latent-frames/--latent-height/--latent-width: {err}") from None
    _check_lgm_fits(lgm, transformer)
    reward = LatentGeometryReward(lgm, {"motion": args.w_motion, "geo": args.w_geo})
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
    _check_finite_rewards(r, "the sampled latents")
    _io.save_tensors(out, {"latents": final},
                     metadata={"rewards": json.dumps({k: v.tolist() for k, v in r.items()})})
    print(f"wrote {out}: motion {r['motion'].tolist()}, geo {r['geo'].tolist()}")
    if vae is not None:
        with torch.no_grad():
            video = decode_latents(vae, final)
        for b in range(video.shape[0]):
            write_video(out.with_name(f"{out.stem}-{b}.mp4"), video[b])
    return 0


def cmd_eval(args) -> int:
    from .metrics import evaluate_folder

    summary = evaluate_folder(args.folder, _out_dir(args.out), frames=args.frames,
                              height=args.height, width=args.width)
    print(json.dumps(summary, indent=2))
    return 0


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
    return None if text == "all" else _positive_int(text)


def cmd_bench_grpo(args) -> int:
    """One GRPO step of a real Wan architecture with random weights (vggrpo.grpo_bench)."""
    from .grpo_bench import bench_grpo_step

    out = _out_file(args.out or "out/bench-grpo.json")
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


def cmd_bench(args) -> int:
    """``vggrpo bench``: the latent reward against the RGB reward and the fused geometry reward
    against its reference, timed on the tiny models; ``vggrpo bench grpo``: one GRPO step of a
    real Wan architecture (--arch) with random weights, each phase's time and peak memory."""
    if args.suite == "grpo":
        return cmd_bench_grpo(args)
    from . import reference
    from .baseline import RGBGeometryReward
    from .data.synthetic import make_scene
    from .defaults import load_default_lgm, load_tiny_wan_vae
    from .latent_reward import LatentGeometryReward
    from .rewards import geometry_reprojection_reward

    out = _out_file(args.out or "out/bench.json")
    lgm, vae = load_default_lgm(), load_tiny_wan_vae()
    z = torch.randn(4, 16, 5, 12, 20, generator=torch.Generator().manual_seed(0))
    lat, rgb = LatentGeometryReward(lgm), RGBGeometryReward(vae, lgm.backbone)
    s = make_scene(2, 8, 60, 104, moving_objects=2, seed=0)
    geo_args = (s.pointmaps, s.depths * 1.02, s.extrinsics, s.intrinsics, s.scene_flow)
    result = {
        "machine": {"torch": torch.__version__, "threads": torch.get_num_threads(),
                    "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None},
        "latent_vs_rgb_reward_b4": _time_pair(lambda: lat(z), lambda: rgb(z), args.rounds),
        "fused_vs_reference_geometry_b2_t8_60x104": _time_pair(
            lambda: geometry_reprojection_reward(*geo_args),
            lambda: reference.geometry_reprojection_reward(*geo_args), args.rounds),
        "notes": "a = ours (latent reward / fused op), b = baseline; ratio = a / b of medians. "
                 "The full suite with memory: pytest bench/ in the repository.",
    }
    _io.save_json(out, result)
    print(json.dumps(result, indent=2))
    return 0


# -- the parser ------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="vggrpo", description="World-consistent video generation "
                                "with latent geometry rewards (VGGRPO).")
    sub = p.add_subparsers(dest="command", required=True, metavar="<command>")

    # Every option says what it is, in which units, and its default (%(default)s).
    d = sub.add_parser("demo", help="the main job on the embedded tiny models",
                       description=cmd_demo.__doc__)
    d.add_argument("--out", default="out/demo", help="output folder (default: %(default)s)")
    d.add_argument("--steps", type=_positive_int, default=30,
                   help="GRPO steps (default: %(default)s)")
    d.add_argument("--rounds", type=_positive_int, default=5,
                   help="timing rounds of latent vs RGB reward; the median is reported "
                        "(default: %(default)s)")
    d.add_argument("--seed", type=int, default=0,
                   help="seed of the synthetic scenes (default: %(default)s)")
    d.set_defaults(fn=cmd_demo)

    r = sub.add_parser("reward", help="score videos or saved latents with the LGM rewards")
    r.add_argument("inputs", nargs="+", help="video files, frame folders, or .safetensors with "
                   "floating-point latents [B,C,T,h,w]")
    r.add_argument("--lgm", default="default",
                   help="LGM folder, or 'default' for the embedded one (default: %(default)s)")
    _add_backbone_option(r)
    r.add_argument("--vae", default="tiny", help="VAE folder (or pipeline folder) that encodes "
                   "the videos, or 'tiny' for the embedded one (default: %(default)s)")
    _add_video_size_options(r, frames_type=_wan_frames,
                            frames_help="frames read per video, 1 + 4k", what="videos")
    r.add_argument("--topk", type=_positive_int, default=3,
                   help="the geometry reward averages the k worst views (default: %(default)s)")
    r.add_argument("--flow-threshold", type=_non_negative_float, default=0.1,
                   help="a point whose scene-flow norm exceeds this (world units) is dynamic "
                        "and left out of the geometry reward (default: %(default)s)")
    r.add_argument("--out", help="also write the scores to this JSON file")
    r.set_defaults(fn=cmd_reward)

    # Listed for --help; main() hands "train-lgm ..." to vggrpo.stitching's own parser.
    sub.add_parser("train-lgm", help="stitch an LGM connector to a VAE (vggrpo train-lgm --help)")

    g = sub.add_parser("train", help="GRPO from a TOML/YAML config")
    g.add_argument("--config", required=True, help="TOML or YAML: model, lgm, backbone, "
                   "prompt_embeds, out, dtype, checkpoint_every, [grpo] (GRPOConfig fields), "
                   "[reward]")
    _add_backbone_option(g, "; overrides the config's backbone")
    g.add_argument("--out", help="output folder (overrides the config's)")
    g.add_argument("--resume", action="store_true", help="continue from the folder's checkpoint")
    g.set_defaults(fn=cmd_train)

    s = sub.add_parser("sample", help="sampling with latent reward guidance")
    s.add_argument("--model", default="tiny",
                   help="diffusers Wan folder, or 'tiny' (default: %(default)s)")
    s.add_argument("--lora", help="a pytorch_lora_weights.safetensors to load (from vggrpo train)")
    s.add_argument("--prompt-embeds", help="safetensors with prompt_embeds [P,L,D] (and optionally "
                   "negative_prompt_embeds); default: seeded random ones, for the tiny model")
    s.add_argument("--lgm", default="default", help="LGM folder for the guidance reward, or "
                   "'default' for the embedded one (default: %(default)s)")
    _add_backbone_option(s)
    s.add_argument("--vae", help="VAE folder for --decode, or 'tiny' (default: the --model "
                   "folder's vae/, or 'tiny' with --model tiny)")
    s.add_argument("--steps", type=_positive_int, default=10,
                   help="sampling steps (default: %(default)s)")
    s.add_argument("--shift", type=_positive_float, default=3.0,
                   help="flow-matching schedule shift (default: %(default)s)")
    s.add_argument("--cfg", type=_finite_float, default=1.0,
                   help="classifier-free guidance scale; 1: off (default: %(default)s)")
    s.add_argument("--guidance-scale", type=_non_negative_float, default=2.0,
                   help="reward guidance scale; 0: off (default: %(default)s)")
    s.add_argument("--guidance-start", type=_non_negative_int, default=1,
                   help="first guided step index (default: %(default)s)")
    s.add_argument("--guidance-end", type=_positive_int,
                   help="guided steps end before this index (default: --steps)")
    s.add_argument("--w-motion", type=_finite_float, default=1.0,
                   help="weight of the camera motion reward in the guidance "
                        "(default: %(default)s)")
    s.add_argument("--w-geo", type=_finite_float, default=1.0,
                   help="weight of the geometry reward in the guidance (default: %(default)s)")
    s.add_argument("--latent-frames", type=_positive_int, default=5,
                   help="latent frames T' (a video of 4 T' - 3 frames; default: %(default)s)")
    s.add_argument("--latent-height", type=_positive_int, default=12,
                   help="latent height h (default: %(default)s)")
    s.add_argument("--latent-width", type=_positive_int, default=20,
                   help="latent width w (default: %(default)s)")
    s.add_argument("--seed", type=int, default=0,
                   help="seed of the initial noise (default: %(default)s)")
    s.add_argument("--decode", action="store_true",
                   help="also write decoded mp4s next to --out")
    s.add_argument("--out", required=True, help="latents .safetensors to write")
    s.set_defaults(fn=cmd_sample)

    e = sub.add_parser("eval", help="Sampson epipolar error and rewards of a folder of videos")
    e.add_argument("folder", help="folder of videos (mp4/webm) or frame folders")
    e.add_argument("--out", required=True, help="folder for metrics.csv and summary.json")
    _add_video_size_options(e, frames_type=_positive_int,
                            frames_help="frames read per video, at least 9", what="videos")
    e.set_defaults(fn=cmd_eval)

    b = sub.add_parser("bench", help="time the rewards (latent vs RGB, fused vs reference), "
                       "or one GRPO step of a real Wan architecture (bench grpo)",
                       description=cmd_bench.__doc__)
    b.add_argument("suite", nargs="?", choices=["rewards", "grpo"], default="rewards",
                   help="rewards: latent vs RGB reward and fused vs reference on the tiny "
                        "models; grpo: one GRPO step of --arch with random weights "
                        "(default: %(default)s)")
    b.add_argument("--rounds", type=_positive_int, default=5,
                   help="rewards: timing rounds; the median is reported (default: %(default)s)")
    from .wan_architectures import LATENT_SHAPES

    b.add_argument("--arch", choices=sorted(LATENT_SHAPES), default="tiny",
                   help="grpo: the architecture, built from its diffusers configuration with "
                        "random weights (default: %(default)s)")
    b.add_argument("--latent", type=_latent_shape, metavar="C,T,h,w",
                   help="grpo: one video's latent (default: the architecture's usual one, "
                        "16,21,60,104 for Wan2.1 at 81 x 480x832)")
    b.add_argument("--group", type=_int_at_least(2), default=8,
                   help="grpo: videos of the prompt group (default: %(default)s)")
    b.add_argument("--steps", type=_positive_int, default=10,
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
    b.set_defaults(fn=cmd_bench)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train-lgm"]:  # its own parser, so its --help is the full one
        from .stitching import main as stitching_main

        return stitching_main(argv[1:], prog="vggrpo train-lgm")
    args = build_parser().parse_args(argv)
    try:
        return int(args.fn(args) or 0)
    except USER_ERRORS as err:
        print(error_line(err), file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
