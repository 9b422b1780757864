"""The embedded default models, loaded from the package without any network.

Shipped inside the package (``vggrpo/weights``):

* ``tiny_wan_vae/`` — diffusers ``AutoencoderKLWan`` at diffusers' own test size
  (:data:`vggrpo.vae.TINY_WAN_VAE_CONFIG`: 16 latent channels, 8x spatial, 4x temporal), random
  initialisation with ``torch.manual_seed(vae_seed)``; stored so that a different diffusers or
  torch version cannot change it under the connector.
* ``default_lgm/`` — a :class:`~vggrpo.geometry.TinyVGGT` trained with ground truth on synthetic
  box-room scenes, and the LGM connector stitched to the tiny VAE (:mod:`vggrpo.stitching`).
* ``quality.json`` — the held-out evaluation written by the build (README "LGM quality").

:mod:`vggrpo.recipe` holds the recipe that rebuilds them (``vggrpo build-defaults``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Union

import torch

from .wan_architectures import TINY_WAN_CONFIG

__all__ = ["WEIGHTS_DIR", "LGM_FOLDER", "VAE_FOLDER", "QUALITY_FILE",
           "TINY_WAN_TRANSFORMER_CONFIG", "tiny_wan_transformer", "load_default_lgm",
           "load_tiny_wan_vae", "load_tiny_backbone"]

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
#: The names of the embedded models' folders and of the quality report inside WEIGHTS_DIR.
LGM_FOLDER = "default_lgm"
VAE_FOLDER = "tiny_wan_vae"
QUALITY_FILE = "quality.json"

# The video model of the demo and the tests (random weights from a seed; prompt embeddings
# [P,L,16]); its config lives with the real architectures' (vggrpo.wan_architectures).
TINY_WAN_TRANSFORMER_CONFIG = TINY_WAN_CONFIG


def tiny_wan_transformer(seed: int = 0):
    """A ``WanTransformer3DModel`` of :data:`TINY_WAN_TRANSFORMER_CONFIG`, initialised from
    ``seed``."""
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    return WanTransformer3DModel(**TINY_WAN_TRANSFORMER_CONFIG)


def _folder(path: Union[str, Path], what: str) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{what} folder not found: {path}. The embedded defaults ship "
                                f"with the package; rebuild them with "
                                f"`vggrpo build-defaults --out {path.parent}`")
    return path


def load_tiny_wan_vae(path: Union[str, Path, None] = None):
    """The embedded tiny ``AutoencoderKLWan`` (eval mode, float32), from a local folder only."""
    from diffusers import AutoencoderKLWan

    folder = _folder(path or WEIGHTS_DIR / VAE_FOLDER, "tiny Wan VAE")
    if not (folder / "diffusion_pytorch_model.safetensors").is_file():
        raise FileNotFoundError(f"{folder} has no diffusion_pytorch_model.safetensors")
    return AutoencoderKLWan.from_pretrained(str(folder), local_files_only=True,
                                            use_safetensors=True).eval()


def load_default_lgm(path: Union[str, Path, None] = None):
    """The embedded :class:`~vggrpo.lgm.LatentGeometryModel` (tiny backbone + connector)."""
    from .lgm import LatentGeometryModel

    folder = _folder(path or WEIGHTS_DIR / LGM_FOLDER, "default LGM")
    return LatentGeometryModel.from_pretrained(folder)


def load_tiny_backbone(path: Union[str, Path, None] = None):
    """The embedded :class:`~vggrpo.geometry.TinyVGGT` (RGB in), eval mode, frozen."""
    return load_default_lgm(path).backbone
