"""The embedded default models: they ship in the package, load with no network, and work."""

import json

import pytest
import torch

from vggrpo.defaults import (
    WEIGHTS_DIR,
    DefaultsRecipe,
    evaluate_lgm,
    load_default_lgm,
    load_tiny_backbone,
    load_tiny_wan_vae,
)
from vggrpo.geometry import TinyVGGT
from vggrpo.vae import TINY_WAN_VAE_CONFIG, encode_video


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    # Any attempt to reach a model hub would fail loudly instead of hanging.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def test_files_ship_in_the_package_and_are_small():
    files = sorted(p.relative_to(WEIGHTS_DIR).as_posix() for p in WEIGHTS_DIR.rglob("*")
                   if p.is_file())
    assert files == [
        "default_lgm/backbone.safetensors", "default_lgm/config.json",
        "default_lgm/connector.safetensors", "quality.json",
        "tiny_wan_vae/config.json", "tiny_wan_vae/diffusion_pytorch_model.safetensors"]
    total = sum(p.stat().st_size for p in WEIGHTS_DIR.rglob("*") if p.is_file())
    assert total < 5 * 2**20, total


def test_tiny_vae_is_the_documented_config():
    vae = load_tiny_wan_vae()
    for key, value in TINY_WAN_VAE_CONFIG.items():
        assert list(getattr(vae.config, key)) == value if isinstance(value, list) else \
            getattr(vae.config, key) == value, key


def test_default_lgm_reads_tiny_vae_latents():
    lgm, vae = load_default_lgm(), load_tiny_wan_vae()
    assert isinstance(lgm.backbone, TinyVGGT) and not lgm.training
    assert not any(p.requires_grad for p in lgm.backbone.parameters())
    video = torch.rand(1, 9, 3, 48, 80)
    with torch.no_grad():
        g = lgm(encode_video(vae, video))
    assert g.depths.shape == (1, 3, 48, 80)
    assert load_tiny_backbone().patch_size == 16


def test_missing_default_folder_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m vggrpo.defaults"):
        load_default_lgm(tmp_path / "absent")
    (tmp_path / "vae").mkdir()
    with pytest.raises(FileNotFoundError, match="diffusion_pytorch_model.safetensors"):
        load_tiny_wan_vae(tmp_path / "vae")


def test_default_quality_on_held_out_scenes():
    """The shipped models beat the trivial answers on scenes they never saw.

    Bounds (stated in docs/lgm.md next to the measured numbers): the RGB backbone's rotation
    error is under half the "camera never moves" baseline's and its depth abs-rel under 0.2; the
    LGM's depth abs-rel is under 0.3 and its rotation error under the baseline's.
    """
    q = evaluate_lgm(load_default_lgm(), load_tiny_wan_vae(), DefaultsRecipe(), scenes=4,
                     ranking_scenes=0)
    base = q["static_camera_baseline.rotation_deg"]
    assert q["rgb.rotation_deg"] < 0.5 * base, q
    assert q["rgb.depth_abs_rel"] < 0.2, q
    assert q["latent.depth_abs_rel"] < 0.3, q
    assert q["latent.rotation_deg"] < base, q


def test_quality_report_matches_the_recipe():
    report = json.loads((WEIGHTS_DIR / "quality.json").read_text())
    assert report["recipe"] == DefaultsRecipe().__dict__
    assert report["final_stitching_loss"] < report["first_stitching_loss"]


def test_stitching_command(tmp_path, capsys):
    from vggrpo.lgm import LatentGeometryModel
    from vggrpo.stitching import main

    code = main(["--synthetic", "2", "--frames", "5", "--height", "32", "--width", "48",
                 "--epochs", "1", "--batch-size", "2", "--out", str(tmp_path / "run")])
    assert code == 0
    lgm = LatentGeometryModel.from_pretrained(tmp_path / "run" / "lgm")
    assert lgm.config.latent_channels == 16
    assert (tmp_path / "run" / "checkpoint" / "trainer_state.pt").is_file()
    capsys.readouterr()
    assert main(["--synthetic", "2", "--vae", str(tmp_path / "no-vae"), "--out",
                 str(tmp_path / "run2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: VAE folder not found: {tmp_path / 'no-vae'}"]
    assert not (tmp_path / "run2").exists()
