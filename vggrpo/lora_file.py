"""The LoRA file of a GRPO run, in diffusers' own format: written by the trainer, read back by
``vggrpo sample --lora``, and loadable by diffusers and peft as they stand.

The file (``pytorch_lora_weights.safetensors``) holds:

* the adapter's tensors under ``transformer.<module>.lora_A.weight`` / ``.lora_B.weight``;
* in the safetensors header, ``format = "pt"`` and ``lora_adapter_metadata``: one JSON object
  whose keys are the adapter's ``LoraConfig`` fields, each prefixed ``transformer.``
  (``"transformer.r"``, ``"transformer.lora_alpha"``, ``"transformer.target_modules"``, ...),
  the layout diffusers' ``save_lora_weights`` writes.

**The trained scale is folded into** ``lora_B``. An adapter trained with ``lora_alpha != r``
acts as ``(lora_alpha / r) B A``; the file holds ``B' = (lora_alpha / r) B`` and says
``lora_alpha = r``. The reason: ``WanPipeline.load_lora_weights`` reads the metadata, but
``transformer.load_lora_adapter(path, prefix="transformer")`` does not (diffusers reads it only
with ``use_safetensors=True`` or a ``weight_name``) and takes ``lora_alpha = r``. With the scale
folded, every loader, reading the metadata or not, applies the adapter at its trained strength
(equal to float32 rounding). The trainer keeps its unfolded weights in its own state file, so
resuming stays exact.

Only the fields that change what the adapter computes are written, and only those every peft
that vggrpo admits (>= 0.14) accepts, so a file written with a newer peft loads with an older one.

vggrpo 0.1.0 wrote unfolded weights with the metadata as one nested value
(``{"transformer": {...}}``), which diffusers reads as "no metadata"; :func:`read_lora` still
understands it, and :func:`load_lora` loads such a file at its trained strength.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import torch
from torch import Tensor

from . import _io

__all__ = ["LORA_FILE", "LORA_PREFIX", "fold_lora_scale", "lora_metadata", "save_lora", "read_lora",
           "load_lora"]

LORA_FILE = "pytorch_lora_weights.safetensors"
LORA_PREFIX = "transformer"
# diffusers.loaders.lora_base.LORA_ADAPTER_METADATA_KEY (not imported: reading a file must not
# need diffusers).
_METADATA_KEY = "lora_adapter_metadata"
# The LoraConfig fields that decide what the adapter computes (peft >= 0.14 knows them all).
_FIELDS = ("r", "lora_alpha", "target_modules", "lora_dropout", "bias", "use_rslora", "use_dora",
           "lora_bias", "rank_pattern", "alpha_pattern")


def _scale(lora_config) -> float:
    # What peft multiplies B A by (peft.tuners.lora.layer.LoraLayer.update_layer).
    for name in ("rank_pattern", "alpha_pattern"):
        if getattr(lora_config, name, None):
            raise ValueError(f"lora_config.{name} is set: a per-module scale is not folded "
                             f"(the GRPO trainer never sets it)")
    if getattr(lora_config, "use_dora", False):
        raise ValueError("lora_config.use_dora is set: a DoRA adapter's scale cannot be folded "
                         "into lora_B")
    r, alpha = lora_config.r, lora_config.lora_alpha
    return alpha / math.sqrt(r) if getattr(lora_config, "use_rslora", False) else alpha / r


def fold_lora_scale(state_dict: Dict[str, Tensor], lora_config) -> Dict[str, Tensor]:
    """``state_dict`` (peft keys) with every ``lora_B`` weight multiplied by the adapter's scale
    (``lora_alpha / r``; ``/ sqrt(r)`` with rsLoRA), as new float tensors: the weights of an
    equal adapter with ``lora_alpha = r``, no rsLoRA. ValueError for a per-module pattern or DoRA.
    """
    scale = _scale(lora_config)
    return {k: (v * scale if ".lora_B." in k else v).detach().clone()
            for k, v in state_dict.items()}


def lora_metadata(lora_config, prefix: str = LORA_PREFIX, *, folded: bool = True
                  ) -> Dict[str, str]:
    """The safetensors header of a LoRA file for a peft ``LoraConfig``: ``{"format": "pt",
    "lora_adapter_metadata": JSON of {"<prefix>.<field>": value}}`` (module docstring). With
    ``folded``, the config of the folded adapter: ``lora_alpha = r``, no rsLoRA."""
    config = {}
    for name in _FIELDS:
        value = getattr(lora_config, name, None)
        if folded and name == "lora_alpha":
            value = lora_config.r
        elif folded and name == "use_rslora":
            value = False
        if value is None:
            continue
        config[f"{prefix}.{name}"] = sorted(value) if isinstance(value, (set, frozenset)) else value
    return {"format": "pt", _METADATA_KEY: json.dumps(config, indent=2, sort_keys=True)}


def save_lora(path: Union[str, Path], state_dict: Dict[str, Tensor], lora_config,
              prefix: str = LORA_PREFIX) -> Path:
    """Write ``state_dict`` (peft's keys, ``<module>.lora_A.weight``...) of an adapter made with
    ``lora_config`` as a LoRA file at ``path``, atomically: its scale folded into ``lora_B``, the
    metadata of the folded adapter (module docstring). Returns ``path``."""
    state = {f"{prefix}.{k}": v for k, v in fold_lora_scale(state_dict, lora_config).items()}
    return _io.save_tensors(path, state, metadata=lora_metadata(lora_config, prefix))


def read_lora(path: Union[str, Path], prefix: str = LORA_PREFIX
              ) -> Tuple[Dict[str, Tensor], Optional[Dict[str, Any]]]:
    """``(tensors, config)`` of a LoRA file: its ``<prefix>.*`` tensors with the prefix removed,
    and the adapter's ``LoraConfig`` fields (``{"r": 2, "lora_alpha": 8.0, ...}``) or None when
    the file carries none (diffusers then loads it with ``lora_alpha = r``).

    ValueError (one line, naming the file) when it is not a readable safetensors file or when
    its metadata is not JSON; FileNotFoundError when it does not exist.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    tensors = _io.load_tensors(path, "LoRA file")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except (SafetensorError, OSError) as err:  # load_tensors read it, so this is a race
        raise ValueError(f"LoRA file {path} is not a readable safetensors file: {err}") from None
    ours = {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
    raw = header.get(_METADATA_KEY)
    if not raw:
        return ours, None
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ValueError(f"LoRA file {path}: its {_METADATA_KEY} is not JSON ({err})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"LoRA file {path}: its {_METADATA_KEY} must be a JSON object, got "
                         f"{type(meta).__name__}")
    if isinstance(meta.get(prefix), dict):  # vggrpo 0.1.0's nested layout
        return ours, dict(meta[prefix])
    config = {k[len(prefix) + 1:]: v for k, v in meta.items() if k.startswith(prefix + ".")}
    return ours, config or None


def load_lora(transformer: torch.nn.Module, path: Union[str, Path],
              prefix: str = LORA_PREFIX) -> Dict[str, Any]:
    """Load a LoRA file into a diffusers model (``WanTransformer3DModel``) at the strength it was
    trained with, through diffusers' own ``load_lora_adapter``. Returns the adapter's config.

    Refused with one ValueError line naming the file: no ``<prefix>.*`` tensors; a NaN or
    infinite weight; a tensor whose layer the model lacks or whose shape does not fit it (checked
    here, before diffusers, which would log its size report first); diffusers or peft cannot
    load it; or not every tensor of the file became a parameter of the model (a LoRA
    trained for another model, or a partial file: diffusers would only warn). A file without
    adapter metadata loads with ``lora_alpha = r``, as diffusers does, with a warning.
    """
    path = Path(path)
    if not path.is_file():  # diffusers would take the name for a Hub repository
        raise FileNotFoundError(f"LoRA file not found: {path}")
    tensors, config = read_lora(path, prefix)
    if not tensors:
        raise ValueError(f"LoRA file {path} holds no LoRA tensors for the {prefix} (diffusers "
                         f"format: keys '{prefix}.*.lora_A.weight' / '.lora_B.weight')")
    _check_fits(transformer, tensors, path)
    if config is None:
        warnings.warn(f"LoRA file {path} carries no adapter metadata: loading it with "
                      f"lora_alpha = r (scale 1), as diffusers does", stacklevel=2)
    before = sum(1 for n, _ in transformer.named_parameters() if "lora_" in n)
    adapters = set(getattr(transformer, "peft_config", {}) or {})
    metadata = None if config is None else {f"{prefix}.{k}": v for k, v in config.items()}
    try:
        transformer.load_lora_adapter({f"{prefix}.{k}": v for k, v in tensors.items()},
                                      prefix=prefix, metadata=metadata)
    except Exception as err:  # diffusers/peft raise many types for a file that does not fit
        reason = " ".join(str(err).split())  # one line: torch's size report spans several
        raise ValueError(f"LoRA file {path} could not be loaded into the model: "
                         f"{type(err).__name__}: {reason[:300]}") from None
    added = sum(1 for n, _ in transformer.named_parameters() if "lora_" in n) - before
    if added != len(tensors):
        # Leave the model as it was: a half-fitting adapter must not stay in it.
        new = sorted(set(getattr(transformer, "peft_config", {}) or {}) - adapters)
        if new:
            transformer.delete_adapters(new)
        raise ValueError(f"LoRA file {path} holds {len(tensors)} LoRA tensors for the {prefix} "
                         f"but the adapter it makes in this model has {added}: it was trained "
                         f"for another model, or it is incomplete")
    return config or {}


def _check_fits(transformer: torch.nn.Module, tensors: Dict[str, Tensor], path: Path) -> None:
    """Each ``<layer>.lora_A.weight`` ``[r, in]`` / ``<layer>.lora_B.weight`` ``[out, r]`` must
    name a linear layer of the model with those features, and every weight must be finite."""
    modules = dict(transformer.named_modules())
    for key, value in sorted(tensors.items()):
        bad = int((~torch.isfinite(value)).sum()) if value.is_floating_point() else 0
        if bad:
            raise ValueError(f"LoRA file {path}: {key} holds {bad} NaN or infinite values")
        layer, _, kind = key.rpartition(".lora_")
        # peft wraps a targeted layer; the features are the wrapped base layer's.
        module = modules.get(layer)
        module = getattr(module, "base_layer", module)
        if kind not in ("A.weight", "B.weight") or not hasattr(module, "in_features"):
            raise ValueError(f"LoRA file {path}: {key} names no linear layer of this model "
                             f"({type(transformer).__name__}); was it trained for another?")
        a = kind == "A.weight"
        got = tuple(value.shape)
        if len(got) != 2 or got[1 if a else 0] != (module.in_features if a
                                                     else module.out_features):
            expected = f"[r, {module.in_features}]" if a else f"[{module.out_features}, r]"
            raise ValueError(f"LoRA file {path}: {key} is {list(got)}, expected {expected} for "
                             f"{layer} of this model ({module.in_features} -> "
                             f"{module.out_features} features)")
