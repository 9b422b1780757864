"""The Latent Geometry Model (paper Sec. 3.2): geometry straight from a video diffusion latent.

The LGM is a geometry backbone whose first ``stitch_layer`` layers (those that read RGB) are
replaced by a connector reading the video VAE's latent::

    latents [B,C,T',h,w] --Conv3d(k=5, stride=(1,2,2), pad=2)--> tokens [B,T',h/2,w/2,D]
            --> backbone.forward_tokens (the remaining blocks and the heads) --> Geometry

* ``C`` (16 for Wan2.1, 48 for Wan2.2) comes from the VAE config; ``D`` is the backbone's token
  width at the stitch point. With a spatial VAE factor ``s`` and backbone patch size ``p``, the
  depth maps are ``(h/2)*p x (w/2)*p`` pixels (``H x W`` of the RGB video when ``p = 2s``, as for
  the embedded tiny models: ``s = 8``, ``p = 16``).
* Time: latent frame ``k`` stands for RGB frame ``4k`` (see :mod:`vggrpo.vae`); the Geometry has
  one frame per latent frame, its scene flow is per latent frame step (4 RGB frames).
* The connector is trained by feature stitching (:mod:`vggrpo.stitching`); the backbone stays
  frozen, optionally with LoRA adapters on its remaining blocks (:meth:`add_lora`).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from . import _io
from ._checks import (
    DictConfig,
    check_buildable,
    check_fields,
    is_finite_number,
    is_int,
    is_positive_int,
    short_repr,
)
from ._nvtx import nvtx_range
from .geometry.backbone import missing_backbone_members
from .geometry.record import Geometry
from .geometry.tiny import TinyVGGT, TinyVGGTConfig

__all__ = ["LGMConfig", "LatentConnector", "LatentGeometryModel", "LGM_FORMAT"]

LGM_FORMAT = "vggrpo-lgm"
_CONNECTOR_FILE = "connector.safetensors"
_BACKBONE_FILE = "backbone.safetensors"
_LORA_FILE = "lora.safetensors"
_CONFIG_FILE = "config.json"


@dataclass
class LGMConfig(DictConfig):
    """Shape of the connector (the paper's Conv3d; kernel, stride and padding are fixed there).

    ``latent_channels``/``spatial_factor``/``temporal_factor`` describe the VAE the LGM was
    stitched to (:meth:`from_vae`); ``token_dim`` is the backbone's width at the stitch point.
    ``kernel_size``/``stride``/``padding``: the Conv3d's, ``(t, y, x)`` triples of ints (>= 1,
    >= 1, >= 0); lists (a JSON config's) are taken as triples.
    """

    latent_channels: int = 16
    spatial_factor: int = 8
    temporal_factor: int = 4
    token_dim: int = 96
    kernel_size: Tuple[int, int, int] = (5, 5, 5)
    stride: Tuple[int, int, int] = (1, 2, 2)
    padding: Tuple[int, int, int] = (2, 2, 2)

    def __post_init__(self) -> None:
        check_fields(self, "positive int",
                     ("latent_channels", "spatial_factor", "temporal_factor", "token_dim"))
        # Conv3d takes a kernel or stride of 0 only to fail in its forward; an int here (not a
        # triple) would be a TypeError naming nothing.
        for name, least in (("kernel_size", 1), ("stride", 1), ("padding", 0)):
            value = getattr(self, name)
            value = tuple(value) if isinstance(value, (list, tuple)) else value
            if (not isinstance(value, tuple) or len(value) != 3
                    or not all(is_int(v) and v >= least for v in value)):
                raise ValueError(f"LGMConfig.{name} must be three ints >= {least}, got {value!r}")
            setattr(self, name, value)

    @classmethod
    def from_vae(cls, vae, token_dim: int) -> "LGMConfig":
        """Channels and factors from a diffusers Wan VAE's config (16/8/4 Wan2.1,
        48/16/4 Wan2.2)."""
        from .vae import vae_factors

        f = vae_factors(vae)
        return cls(latent_channels=f["channels"], spatial_factor=f["spatial"],
                   temporal_factor=f["temporal"], token_dim=token_dim)


class LatentConnector(nn.Module):
    """``Conv3d(C, D, kernel 5, stride (1,2,2), padding 2)``: latents -> stitch-point tokens.

    ``forward(latents [B,C,T',h,w]) -> [B,T',ceil(h/2),ceil(w/2),D]`` (same frame count).
    """

    def __init__(self, config: LGMConfig) -> None:
        super().__init__()
        self.config = config
        self.proj = nn.Conv3d(config.latent_channels, config.token_dim, config.kernel_size,
                              stride=config.stride, padding=config.padding)

    def forward(self, latents: Tensor) -> Tensor:
        return self.proj(latents).permute(0, 2, 3, 4, 1)


def _check_latents(latents: Tensor, config: LGMConfig) -> None:
    if not isinstance(latents, Tensor) or latents.dim() != 5:
        shape = list(latents.shape) if isinstance(latents, Tensor) else type(latents).__name__
        raise ValueError("latents must be [B,C,T,h,w] (diffusers video latent layout), "
                         f"got {shape}")
    C = latents.shape[1]
    if C != config.latent_channels:
        hint = {16: "a Wan2.1-style VAE (16 channels)", 48: "a Wan2.2-style VAE (48 channels)"}
        raise ValueError(
            f"latents have {C} channels but this LGM's connector was stitched to "
            f"{hint.get(config.latent_channels, f'{config.latent_channels}-channel latents')}; "
            f"use an LGM stitched to your VAE (vggrpo train-lgm)")
    T, h, w = latents.shape[2:]
    if T < 1 or h < 1 or w < 1:
        raise ValueError("latents must have >= 1 frame and a non-empty grid, "
                         f"got {list(latents.shape)}")
    if not latents.is_floating_point():
        raise TypeError(f"latents must be floating point, got {latents.dtype}")


class LatentGeometryModel(nn.Module):
    """Latents ``[B,C,T',h,w]`` -> :class:`Geometry` with ``T'`` frames (see the module docstring).

    Args:
        backbone: a :class:`~vggrpo.geometry.GeometryBackbone` (frozen by the caller).
        connector: the :class:`LatentConnector` (built from ``config`` when None).
        config: the connector shape; ``token_dim`` must equal ``backbone.dim``.
    """

    def __init__(self, backbone: nn.Module, config: LGMConfig,
                 connector: Optional[LatentConnector] = None) -> None:
        super().__init__()
        missing = missing_backbone_members(backbone)
        if missing:
            raise TypeError(f"backbone must follow vggrpo.geometry.GeometryBackbone; this "
                            f"{type(backbone).__name__} lacks {', '.join(missing)}")
        if config.token_dim != backbone.dim:
            raise ValueError(f"LGMConfig.token_dim ({config.token_dim}) must equal the backbone's "
                             f"token width at the stitch point ({backbone.dim})")
        self.config = config
        self.backbone = backbone
        self.connector = connector if connector is not None else LatentConnector(config)
        self.lora_config: Optional[Dict[str, Any]] = None
        # The signature of the VAE the connector was stitched to (vggrpo.vae.vae_signature);
        # None for an LGM not stitched yet, or loaded from a file written before it was recorded.
        self.vae_signature: Optional[Dict[str, Any]] = None

    @property
    def temporal_factor(self) -> int:
        return self.config.temporal_factor

    @property
    def latent_channels(self) -> int:
        """The channel count ``C`` of the latents ``[B,C,T',h,w]`` this LGM reads."""
        return self.config.latent_channels

    def rgb_frame_of(self, latent_frame: int) -> int:
        """The RGB frame a latent frame stands for (``temporal_factor * k``)."""
        return self.config.temporal_factor * latent_frame

    def tokens(self, latents: Tensor) -> Tensor:
        """The connector's stitch-point tokens ``[B,T',ceil(h/2),ceil(w/2),D]``."""
        _check_latents(latents, self.config)
        dtype = self.connector.proj.weight.dtype
        return self.connector(latents.to(dtype))

    def forward(self, latents: Tensor) -> Geometry:
        with nvtx_range("vggrpo.lgm"):
            return self.backbone.forward_tokens(self.tokens(latents))

    # -- the VAE the connector reads ---------------------------------------------------------

    def record_vae(self, vae) -> None:
        """Remember ``vae`` as the VAE this LGM reads latents of (stitching calls this); the
        record is saved with the model and checked by :meth:`check_vae`."""
        from .vae import vae_signature

        self.vae_signature = vae_signature(vae)

    def check_vae(self, vae, name: str = "vae") -> None:
        """Raise a ValueError when ``vae`` is not the VAE this LGM was stitched to.

        Latents of another VAE with the same channel count have the right shape and the wrong
        meaning, so the LGM's geometry (and every reward read from it) would be silently wrong.
        An LGM with no record (``vae_signature`` None: files from before the record existed)
        passes. ``name`` is how the error names the argument (a CLI passes ``"--vae PATH"``).
        """
        from .vae import vae_mismatch

        if self.vae_signature is None:
            return
        why = vae_mismatch(self.vae_signature, vae)
        if why is not None:
            raise ValueError(f"{name} is not the VAE this LGM was stitched to: {why}. Pass the "
                             f"VAE its connector was trained on, or stitch a connector to this "
                             f"VAE (vggrpo train-lgm)")

    # -- LoRA on the remaining blocks -------------------------------------------------------

    def add_lora(self, rank: int = 16, alpha: float = 16.0,
                 target_modules: Sequence[str] = ("qkv", "proj")) -> None:
        """Put peft LoRA adapters on ``target_modules`` of the backbone's remaining blocks.

        Only the backbone's ``blocks`` (after the stitch point) get adapters; the adapters are
        trainable, everything else in the backbone is frozen by this call.
        """
        from peft import LoraConfig, inject_adapter_in_model

        if self.lora_config is not None:
            raise ValueError("this LGM already has LoRA adapters")
        if not isinstance(rank, int) or rank < 1:
            raise ValueError(f"rank must be a positive int, got {rank!r}")
        names = [n for n, m in self.backbone.blocks.named_modules()
                 if isinstance(m, nn.Linear) and n.split(".")[-1] in set(target_modules)]
        if not names:
            raise ValueError(f"target_modules {list(target_modules)} match no nn.Linear in the "
                             f"backbone's blocks")
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        cfg = LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(target_modules))
        inject_adapter_in_model(cfg, self.backbone.blocks)
        self.lora_config = {"rank": rank, "alpha": float(alpha),
                            "target_modules": list(target_modules)}

    @contextmanager
    def adapters_disabled(self) -> Iterator[nn.Module]:
        """Within ``with lgm.adapters_disabled() as backbone:`` the backbone computes without
        its LoRA adapters: the plain backbone, the RGB teacher the LGM was stitched to (an LGM
        without adapters is unchanged). On leaving, each adapter layer returns to the state it
        had (so nested uses compose) and every parameter's ``requires_grad`` is restored
        (peft's switch changes them)."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        layers = [(m, m.disable_adapters) for m in self.backbone.modules()
                  if isinstance(m, BaseTunerLayer)]
        trainable = [(p, p.requires_grad) for p in self.backbone.parameters()]
        try:
            for layer, _ in layers:
                layer.enable_adapters(False)
            yield self.backbone
        finally:
            for layer, was_disabled in layers:
                layer.enable_adapters(not was_disabled)
            for p, flag in trainable:
                p.requires_grad_(flag)

    def lora_state_dict(self) -> Dict[str, Tensor]:
        return {k: v for k, v in self.backbone.blocks.state_dict().items() if "lora_" in k}

    # -- files --------------------------------------------------------------------------------

    def save_pretrained(self, directory: Union[str, Path], *, dtype: torch.dtype = torch.float32
                        ) -> Path:
        """Write ``config.json``, ``connector.safetensors``, ``backbone.safetensors`` (tiny
        backbones only: a real backbone's weights stay where the user keeps them) and
        ``lora.safetensors`` (when adapters are present). Each file is written atomically.
        ``config.json`` also records :attr:`vae_signature`, which :meth:`from_pretrained` restores
        so that :meth:`check_vae` still works on the loaded model.
        """
        directory = Path(directory)
        config: Dict[str, Any] = {"format": LGM_FORMAT, "version": 1,
                                  "lgm": self.config.to_dict(), "lora": self.lora_config,
                                  "vae": self.vae_signature}
        cast = lambda sd: {k: v.to(dtype) for k, v in sd.items()}  # noqa: E731
        _io.save_tensors(directory / _CONNECTOR_FILE, cast(self.connector.state_dict()))
        if isinstance(self.backbone, TinyVGGT):
            config["backbone"] = {"type": "tiny_vggt", "config": self.backbone.config.to_dict()}
            # peft renames a wrapped layer's own weights to "<name>.base_layer.*": undo that so
            # the file loads into a plain backbone.
            base = {k.replace(".base_layer.", "."): v
                    for k, v in self.backbone.state_dict().items() if "lora_" not in k}
            _io.save_tensors(directory / _BACKBONE_FILE, cast(base))
        else:
            config["backbone"] = {"type": type(self.backbone).__name__}
        if self.lora_config is not None:
            _io.save_tensors(directory / _LORA_FILE, cast(self.lora_state_dict()))
        _io.save_json(directory / _CONFIG_FILE, config)
        return directory

    @staticmethod
    def read_config(directory: Union[str, Path]) -> Dict[str, Any]:
        """The ``config.json`` of an LGM folder, as :meth:`save_pretrained` wrote it (its
        ``"backbone"`` entry names the backbone's type). Reads nothing else, so a caller can
        check a folder before building a large backbone. FileNotFoundError for a missing folder
        or file, ValueError for a file that is not an LGM config."""
        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"LGM folder not found: {directory} (expected a folder with "
                                    f"{_CONFIG_FILE} and {_CONNECTOR_FILE})")
        meta = _io.load_json(directory / _CONFIG_FILE, "LGM config")
        if meta.get("format") != LGM_FORMAT:
            raise ValueError(f"{directory / _CONFIG_FILE} is not an LGM config "
                             f"(format {short_repr(meta.get('format'))}, expected "
                             f"{LGM_FORMAT!r})")
        _check_entries(meta, directory / _CONFIG_FILE)
        return meta

    @classmethod
    def from_pretrained(cls, directory: Union[str, Path], backbone: Optional[nn.Module] = None
                        ) -> "LatentGeometryModel":
        """Load what :meth:`save_pretrained` wrote (local folder only; nothing is downloaded).

        For a tiny backbone the weights come from the folder; for any other backbone pass the
        loaded model as ``backbone`` (its class must be the one recorded at saving, e.g.
        ``VGGTAdapter``). Returns the model in eval mode, float32, backbone frozen.
        """
        directory = Path(directory)
        meta = cls.read_config(directory)
        config = LGMConfig.from_dict(meta.get("lgm", {}))
        spec = meta.get("backbone") or {}
        stitched = spec.get("type", "unknown")
        if backbone is not None:
            # Its class, as save_pretrained recorded it: another backbone of the same width
            # would load and read the connector's tokens as nonsense.
            given = "tiny_vggt" if isinstance(backbone, TinyVGGT) else type(backbone).__name__
            if given != stitched:
                raise ValueError(f"the LGM in {directory} was stitched to a {stitched} backbone, "
                                 f"not to the {given} given")
        if backbone is None:
            backbone = cls._tiny_backbone(directory, meta)
        check_buildable(lambda: LatentConnector(config),
                        f"the connector of {directory / _CONFIG_FILE}")
        model = cls(backbone, config)
        if meta.get("vae") is not None:
            from .vae import check_vae_signature

            model.vae_signature = check_vae_signature(meta["vae"], str(directory / _CONFIG_FILE))
            if model.vae_signature["channels"] != config.latent_channels:
                raise ValueError(f"{directory / _CONFIG_FILE} is inconsistent: its VAE has "
                                 f"{model.vae_signature['channels']} latent channels, its "
                                 f"connector reads {config.latent_channels}")
        lora = meta.get("lora")
        if lora:
            model.add_lora(lora["rank"], lora["alpha"], lora["target_modules"])
        model._load_trained(directory)
        for p in model.backbone.parameters():
            p.requires_grad_(False)
        return model.float().eval()

    @classmethod
    def read_backbone(cls, directory: Union[str, Path]) -> TinyVGGT:
        """The tiny backbone an LGM folder holds, without the LGM's connector or LoRA adapters:
        the plain RGB backbone ``[B,T,3,H,W]`` in [0, 1] -> Geometry that the connector was
        stitched to. Eval mode, float32, frozen. A folder of a real backbone (which holds no
        backbone weights) is refused in one line."""
        directory = Path(directory)
        backbone = cls._tiny_backbone(directory, cls.read_config(directory))
        return backbone.float().eval().requires_grad_(False)

    @staticmethod
    def _tiny_backbone(directory: Path, meta: Dict[str, Any]) -> TinyVGGT:
        spec = meta.get("backbone") or {}
        stitched = spec.get("type", "unknown")
        if stitched != "tiny_vggt":
            raise ValueError(f"the LGM in {directory} was stitched to a {stitched} backbone, "
                             f"whose weights it does not hold: pass that backbone "
                             f"(backbone= in Python; on the command line --backbone SPEC, "
                             f"e.g. vggt:DIR)")
        tiny_config = TinyVGGTConfig.from_dict(spec.get("config", {}))
        check_buildable(lambda: TinyVGGT(tiny_config),
                        f"the tiny backbone of {directory / _CONFIG_FILE}")
        backbone = TinyVGGT(tiny_config)
        _io.load_state_dict_strict(
            backbone, _io.load_tensors(directory / _BACKBONE_FILE, "backbone weights"),
            f"backbone weights {directory / _BACKBONE_FILE}")
        return backbone

    def load_weights(self, directory: Union[str, Path]) -> None:
        """Load the trained weights (the connector's, and the LoRA's) of the LGM folder
        ``directory`` (:meth:`save_pretrained`'s) into this model, as a resume does. The folder
        must describe this model: its connector config and its LoRA (rank, alpha, targets) equal
        this model's, and the VAE it records, when both record one, this model's VAE. A
        ValueError names the difference; nothing is changed before every check has passed.
        The backbone's own weights are not read."""
        directory = Path(directory)
        meta = self.read_config(directory)
        if LGMConfig.from_dict(meta.get("lgm", {})) != self.config:
            raise ValueError(f"{directory / _CONFIG_FILE}: its connector config is not this "
                             f"LGM's")
        if meta.get("lora") != self.lora_config:
            raise ValueError(f"its LoRA weights are not this LGM's adapters: "
                             f"{directory / _CONFIG_FILE} has {short_repr(meta.get('lora'))}, "
                             f"this LGM {short_repr(self.lora_config)}")
        if meta.get("vae") is not None and self.vae_signature is not None:
            from .vae import check_vae_signature, signature_mismatch

            why = signature_mismatch(
                check_vae_signature(meta["vae"], str(directory / _CONFIG_FILE)),
                self.vae_signature)
            if why is not None:
                raise ValueError(f"vae is not the VAE it was stitched to ({why})")
        self._load_trained(directory)

    def _load_trained(self, directory: Path) -> None:
        # Read and check every file first, then load: a bad LoRA file leaves the connector as
        # it was.
        connector = _io.load_tensors(directory / _CONNECTOR_FILE, "connector weights")
        tensors = None
        if self.lora_config:
            tensors = _io.load_tensors(directory / _LORA_FILE, "LoRA weights")
            own = self.lora_state_dict()
            if set(own) != set(tensors):
                raise ValueError(f"LoRA weights {directory / _LORA_FILE} do not match the "
                                 f"config's adapters")
            wrong = sorted(k for k in own if own[k].shape != tensors[k].shape)
            if wrong:
                raise ValueError(f"LoRA weights {directory / _LORA_FILE}: {wrong[0]} is "
                                 f"{list(tensors[wrong[0]].shape)}, the config's adapter "
                                 f"{list(own[wrong[0]].shape)} ({len(wrong)} in all)")
            bad = sorted(k for k, v in tensors.items() if not torch.isfinite(v).all())
            if bad:
                raise ValueError(f"LoRA weights {directory / _LORA_FILE}: {bad[0]} holds NaN or "
                                 f"infinite values")
        _io.load_state_dict_strict(self.connector, connector,
                                   f"connector weights {directory / _CONNECTOR_FILE}")
        if tensors is not None:
            self.backbone.blocks.load_state_dict(tensors, strict=False)


def _check_entries(meta: Dict[str, Any], path: Path) -> None:
    """The entries of an LGM ``config.json`` that :meth:`LatentGeometryModel.from_pretrained`
    reads, each checked for its type before use, so that a tampered file is one line, not a
    traceback (``lgm`` is :meth:`LGMConfig.from_dict`'s to check): ``backbone`` absent or
    ``{"type": str, "config": {...}}``; ``lora`` null or ``{"rank": int >= 1, "alpha": number
    > 0, "target_modules": [str, ...]}``."""
    spec = meta.get("backbone")
    if spec is not None and (not isinstance(spec, dict) or not isinstance(spec.get("type"), str)
                             or not isinstance(spec.get("config", {}), dict)):
        raise ValueError(f"{path}: \"backbone\" must be an object {{\"type\": name, \"config\": "
                         f"{{...}}}}, got {short_repr(spec)}")
    lora = meta.get("lora")
    if lora is not None:
        fields = {"rank", "alpha", "target_modules"}
        ok = (isinstance(lora, dict) and set(lora) == fields and is_positive_int(lora["rank"])
              and is_finite_number(lora["alpha"]) and lora["alpha"] > 0
              and isinstance(lora["target_modules"], list) and lora["target_modules"]
              and all(isinstance(t, str) and t for t in lora["target_modules"]))
        if not ok:
            raise ValueError(f"{path}: \"lora\" must be null or {{\"rank\": int >= 1, \"alpha\": "
                             f"number > 0, \"target_modules\": [names]}}, got {short_repr(lora)}")
