"""Every config dataclass of the package goes through one to_dict / from_dict (DictConfig) and
one field check (check_fields): a JSON round trip gives the same config, an unknown key or a
value of the wrong kind is one error naming the class and the field."""

import json

import pytest

from vggrpo._checks import DictConfig
from vggrpo.geometry.tiny import TinyVGGTConfig
from vggrpo.geometry.training import BackboneTrainingConfig
from vggrpo.grpo import GRPOConfig
from vggrpo.lgm import LGMConfig
from vggrpo.recipe import DefaultsRecipe
from vggrpo.stitching import StitchingConfig

CONFIGS = [
    GRPOConfig(sde_window=(1, 3), reward_weights={"geo": 2.0}, ema_decay=0.9),
    LGMConfig(latent_channels=48, spatial_factor=16, token_dim=64, stride=(1, 1, 1)),
    TinyVGGTConfig(dim=32, num_heads=2, extra={"note": "x"}),
    StitchingConfig(epochs=3, lr=1e-3),
    BackboneTrainingConfig(),
    DefaultsRecipe(frames=9, height=32, width=48),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: type(c).__name__)
def test_json_round_trip_and_strict_keys(config):
    assert isinstance(config, DictConfig)
    data = json.loads(json.dumps(config.to_dict()))
    assert type(config).from_dict(data) == config
    with pytest.raises(ValueError, match=rf"^{type(config).__name__}: unknown keys \['nope'\]"):
        type(config).from_dict({**data, "nope": 1})
    with pytest.raises(ValueError, match=rf"^{type(config).__name__}: expected a JSON object"):
        type(config).from_dict([1, 2])


@pytest.mark.parametrize("cls,field,value,expected", [
    (GRPOConfig, "fsdp", "no", "GRPOConfig.fsdp must be true or false, got 'no'"),
    (GRPOConfig, "guidance_scale", float("nan"), "GRPOConfig.guidance_scale must be a finite "
                                                 "number, got nan"),
    (GRPOConfig, "steps", True, "GRPOConfig.steps must be a positive int, got True"),
    (GRPOConfig, "seed", 1.5, "GRPOConfig.seed must be an int, got 1.5"),
    (LGMConfig, "token_dim", 0, "LGMConfig.token_dim must be a positive int, got 0"),
    (TinyVGGTConfig, "mlp_ratio", float("inf"), "TinyVGGTConfig.mlp_ratio must be a finite "
                                                "number > 0, got inf"),
    (StitchingConfig, "warmup_steps", -1, "StitchingConfig.warmup_steps must be an int >= 0, "
                                          "got -1"),
    (DefaultsRecipe, "max_jitter", -0.5, "DefaultsRecipe.max_jitter must be a finite number >= "
                                         "0, got -0.5"),
])
def test_one_sentence_for_every_bad_field(cls, field, value, expected):
    with pytest.raises(ValueError) as err:
        cls(**{field: value})
    assert str(err.value) == expected
