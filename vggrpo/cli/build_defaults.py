"""``vggrpo build-defaults``: rebuild the embedded models (backbone, Wan VAE, LGM connector, base
generator) on synthetic scenes and evaluate them (:func:`vggrpo.recipe.build_defaults`;
``--stage lgm``: :func:`vggrpo.recipe.build_lgm`; ``--stage generator``:
:func:`vggrpo.recipe.build_generator`)."""

from __future__ import annotations

import dataclasses
import re

from ..defaults import WEIGHTS_DIR
from ..geometry.tiny import TinyVGGTConfig
from ..recipe import (
    DefaultsRecipe,
    build_defaults,
    build_generator,
    build_lgm,
    check_build_size,
)
from .options import UsageError


def add_parser(sub) -> None:
    """Add this command to the ``vggrpo`` subparsers ``sub``: one option per
    :class:`~vggrpo.recipe.DefaultsRecipe` field, checked by the recipe before any work."""
    parser = sub.add_parser(
        "build-defaults", help="rebuild the embedded models, offline",
        description="Rebuild the embedded models (backbone, Wan VAE, LGM connector, base "
                    "generator) on synthetic scenes and evaluate them; writes --out/"
                    "{tiny_wan_vae, default_lgm, base_generator, quality.json}, each folder "
                    "complete before it appears.")
    parser.add_argument("--out", default=str(WEIGHTS_DIR), help="output folder (default: the "
                        "package's weights folder, %(default)s)")
    for field in dataclasses.fields(DefaultsRecipe):
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=type(field.default),
                            default=field.default,
                            help=f"DefaultsRecipe.{field.name} (default: %(default)s)")
    parser.add_argument("--stage", choices=("all", "lgm", "generator"), default="all",
                        help="'lgm': only re-stitch the LGM (connector, then LoRA) to the VAE "
                             "and backbone already in --out, and re-evaluate it; 'generator': "
                             "only retrain the base generator, on the VAE already in --out "
                             "(default: %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(fn=run)


def run(args) -> int:
    try:
        recipe = DefaultsRecipe(**{f.name: getattr(args, f.name)
                                   for f in dataclasses.fields(DefaultsRecipe)})
        check_build_size(recipe, TinyVGGTConfig.patch_size)
    except ValueError as err:  # in the option's name, which the user typed
        field = re.match(r"DefaultsRecipe\.(\w+) (.*)", str(err), re.S)
        raise UsageError(f"--{field[1].replace('_', '-')} {field[2]}" if field else str(err)) \
            from None
    if args.stage == "lgm":
        report = build_lgm(args.out, recipe, progress=not args.no_progress)
        print(report["quality"])
        return 0
    if args.stage == "generator":
        report = build_generator(args.out, recipe, progress=not args.no_progress)
        print({"final_generator_loss": report["final_generator_loss"]})
        return 0
    report = build_defaults(args.out, recipe, progress=not args.no_progress)
    print(report["quality"])
    return 0
