"""A non-finite result is an error, never an output (issue #34): exit 2, nothing written."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from vggrpo.cli import main
from vggrpo.defaults import load_default_lgm


def _one_line(capsys, argv, expected):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0], err


@pytest.fixture(scope="module")
def nan_lgm(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lgm")
    load_default_lgm().save_pretrained(folder)
    weights = load_file(folder / "connector.safetensors")
    first = sorted(weights)[0]
    weights[first] = torch.full_like(weights[first], float("nan"))
    save_file(weights, str(folder / "connector.safetensors"))
    return folder, first


def test_an_lgm_with_nan_weights_is_refused_at_load(nan_lgm, tmp_path, capsys):
    folder, first = nan_lgm
    save_file({"latents": torch.randn(1, 16, 5, 12, 20)}, str(tmp_path / "z.safetensors"))
    _one_line(capsys, ["reward", "--lgm", str(folder), str(tmp_path / "z.safetensors"),
                       "--out", str(tmp_path / "r.json")],
              f"{first} holds NaN or infinite values (1 tensors in all); weights must be finite")
    assert not (tmp_path / "r.json").exists()


def test_latents_that_overflow_the_reward_are_an_error_not_a_nan_score(tmp_path, capsys):
    save_file({"latents": torch.randn(2, 16, 5, 12, 20) * 1e20}, str(tmp_path / "z.safetensors"))
    _one_line(capsys, ["reward", str(tmp_path / "z.safetensors"), "--out",
                       str(tmp_path / "r.json")], "reward is nan for video 0")
    assert not (tmp_path / "r.json").exists()
