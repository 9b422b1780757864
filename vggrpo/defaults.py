"""The embedded default models, loaded from the package without any network.

Shipped inside the package (``vggrpo/weights``):

* ``tiny_wan_vae/`` — a diffusers ``AutoencoderKLWan`` with Wan2.1's structure (16 latent
  channels, 8x spatial, 4x causal temporal) at :data:`vggrpo.vae.TRAINED_WAN_VAE_CONFIG`'s small
  size, trained on synthetic box-room videos (:mod:`vggrpo.vae_training`, docs/vae.md).
* ``default_lgm/`` — a :class:`~vggrpo.geometry.TinyVGGT` trained with ground truth on synthetic
  box-room scenes, and the LGM connector stitched to that VAE (:mod:`vggrpo.stitching`).
* ``base_generator/`` — the demo's video model: a ``WanTransformer3DModel`` of
  :data:`vggrpo.generator_training.BASE_GENERATOR_CONFIG` trained by flow matching on the VAE's
  latents of prompted worlds (:mod:`vggrpo.data.worlds`, docs/generator.md).
* ``quality.json`` — the held-out evaluation written by the build (README "LGM quality").

:mod:`vggrpo.recipe` holds the recipe that rebuilds them (``vggrpo build-defaults``).
:func:`tiny_wan_transformer` is diffusers' test-size transformer with random weights, for tests
that need speed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Union

import torch

from .wan_architectures import TINY_WAN_CONFIG

__all__ = ["WEIGHTS_DIR", "LGM_FOLDER", "VAE_FOLDER", "QUALITY_FILE",
           "TINY_WAN_TRANSFORMER_CONFIG", "tiny_wan_transformer", "load_default_lgm",
           "load_tiny_wan_vae", "load_tiny_backbone", "GENERATOR_FOLDER", "load_base_generator"]

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
#: The names of the embedded models' folders and of the quality report inside WEIGHTS_DIR.
LGM_FOLDER = "default_lgm"
VAE_FOLDER = "tiny_wan_vae"
QUALITY_FILE = "quality.json"
GENERATOR_FOLDER = "base_generator"

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
    """The embedded trained ``AutoencoderKLWan`` (eval mode, float32; videos ``[B,3,1+4k,H,W]``
    <-> latents ``[B,16,1+k,H/8,W/8]``), from a local folder only. The name is historical: it is
    small, not diffusers' test size."""
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
    """The embedded :class:`~vggrpo.geometry.TinyVGGT` (RGB ``[B,T,3,H,W]`` in [0, 1] in), eval
    mode, float32, frozen: the plain backbone the default LGM was stitched to, without the
    LGM's LoRA adapters (:meth:`~vggrpo.lgm.LatentGeometryModel.read_backbone`)."""
    from .lgm import LatentGeometryModel

    return LatentGeometryModel.read_backbone(_folder(path or WEIGHTS_DIR / LGM_FOLDER,
                                                     "default LGM"))


def load_base_generator(path: Union[str, Path, None] = None):
    """The embedded base generator: a ``WanTransformer3DModel`` of
    :data:`vggrpo.generator_training.BASE_GENERATOR_CONFIG` trained on the embedded VAE's
    latents ``[B,16,T,h,w]`` of prompted box-room worlds (:mod:`vggrpo.data.worlds`; prompt
    embeddings ``[6,8,16]`` from :func:`~vggrpo.data.worlds.world_prompt_embeddings`), stored in
    float16, returned in float32 and eval mode, from a local folder only."""
    from diffusers import WanTransformer3DModel

    folder = _folder(path or WEIGHTS_DIR / GENERATOR_FOLDER, "base generator")
    if not (folder / "diffusion_pytorch_model.safetensors").is_file():
        raise FileNotFoundError(f"{folder} has no diffusion_pytorch_model.safetensors")
    return WanTransformer3DModel.from_pretrained(
        str(folder), local_files_only=True, use_safetensors=True,
        torch_dtype=torch.float32).eval()
