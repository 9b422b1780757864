"""``vggrpo train-lgm``: train an LGM connector by feature stitching
(:func:`vggrpo.stitching.train_stitching`): frozen Wan VAE + frozen geometry backbone, videos
from a folder or synthetic scenes. Writes ``--out/lgm`` and a resumable ``--out/checkpoint``."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from .. import _io
from ..defaults import load_tiny_backbone, load_tiny_wan_vae
from ..geometry.backbone_spec import BACKBONE_SPEC_HELP
from ..lgm import LatentGeometryModel, LGMConfig
from ..recipe import DefaultsRecipe, scene_pool
from ..stitching import StitchingConfig, train_stitching
from .options import UsageError, add_video_size_options, positive_int, wan_frames

_FIELD_HELP = {
    "epochs": "passes over the clips",
    "batch_size": "clips per optimisation step",
    "lr": "peak AdamW learning rate",
    "warmup_steps": "linear warm-up steps before the cosine decay",
    "grad_clip": "gradient-norm clip",
    "seed": "seed of the connector's initialisation and of the batch order",
    "checkpoint_every": "write the checkpoint every this many epochs",
    "output_weight": "weight of the output distillation term; used only with LoRA adapters",
}


def add_parser(sub) -> None:
    """Add this command to the ``vggrpo`` subparsers ``sub``; option values are checked here
    or by :class:`~vggrpo.stitching.StitchingConfig`, before any work."""
    parser = sub.add_parser(
        "train-lgm", help="stitch an LGM connector to a VAE",
        description="Train an LGM connector by feature stitching: frozen Wan VAE + frozen "
                    "geometry backbone (the embedded tiny one, VGGT, Any4D or your own), videos "
                    "from a folder (mp4/png frames) or synthetic scenes.")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--videos", help="folder of videos / frame folders (each clip >= --frames)")
    src.add_argument("--synthetic", type=positive_int, metavar="N", help="use N synthetic scenes")
    parser.add_argument("--vae", default="tiny", help="local diffusers AutoencoderKLWan folder, or "
                        "'tiny' for the embedded tiny VAE (default: %(default)s)")
    parser.add_argument("--backbone", default="default", metavar="SPEC",
                        help="the backbone to stitch to: 'default' (the embedded tiny one), an "
                             "LGM folder whose tiny backbone to take, or a real one: "
                             f"{BACKBONE_SPEC_HELP} (default: %(default)s)")
    parser.add_argument("--out", required=True, help="output folder (LGM + checkpoint)")
    add_video_size_options(parser, frames_type=wan_frames,
                           frames_help="frames per clip, 1 + 4k", what="clips")
    for f in dataclasses.fields(StitchingConfig):
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default),
                            default=f.default, help=f"{_FIELD_HELP[f.name]} (default: %(default)s)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from --out's checkpoint (same options)")
    parser.set_defaults(fn=run)


def run(args) -> int:
    """Stitch a connector to a local VAE (see --help)."""
    # Where the LGM and checkpoint go, first: a file there would fail only after training.
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise UsageError(f"--out {args.out} exists and is not a folder; expected the "
                         f"folder to write the LGM and its checkpoint to")
    _io.check_can_create(args.out, "--out")
    # The config and the source first: a bad option is reported before any work.
    config = StitchingConfig(**{f.name: getattr(args, f.name)
                                for f in dataclasses.fields(StitchingConfig)})
    if args.vae == "tiny":
        vae = load_tiny_wan_vae()
    else:
        from ..vae import load_vae_folder

        if not Path(args.vae).is_dir():
            raise FileNotFoundError(f"VAE folder not found: {args.vae}")
        vae = load_vae_folder(args.vae)
    if args.backbone == "default" or Path(args.backbone).is_dir():
        # The plain backbone, without the folder's LoRA adapters: a new connector is stitched
        # to what reads RGB.
        backbone = load_tiny_backbone(None if args.backbone == "default" else args.backbone)
    else:
        from ..geometry.backbone_spec import load_backbone

        backbone = load_backbone(args.backbone)
    if args.videos:
        from ..data.video import VideoFolderDataset

        data = VideoFolderDataset(args.videos, args.frames, args.height, args.width)
    else:
        recipe = DefaultsRecipe(height=args.height, width=args.width, frames=args.frames)
        data = scene_pool(args.synthetic, recipe, seed=0, progress=True)
    torch.manual_seed(args.seed)
    lgm = LatentGeometryModel(backbone, LGMConfig.from_vae(vae, backbone.dim))
    history = train_stitching(lgm, vae, data, config, out_dir=args.out, resume=args.resume)
    lgm.save_pretrained(Path(args.out) / "lgm")
    print(f"final loss {history[-1]['loss']:.5g}; LGM written to {Path(args.out) / 'lgm'}")
    return 0


