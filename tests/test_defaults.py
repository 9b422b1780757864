"""The embedded default models: they ship in the package, load with no network, and work."""

import json

import pytest
import torch

from vggrpo.cli import main
from vggrpo.data.worlds import world_prompt_embeddings
from vggrpo.defaults import (
    WEIGHTS_DIR,
    load_base_generator,
    load_default_lgm,
    load_tiny_backbone,
    load_tiny_wan_vae,
)
from vggrpo.geometry import TinyVGGT
from vggrpo.lgm import LatentGeometryModel
from vggrpo.recipe import (
    DefaultsRecipe,
    build_defaults,
    build_generator,
    build_lgm,
    evaluate_lgm,
    scene_pool,
)
from vggrpo.vae import TRAINED_WAN_VAE_CONFIG, encode_video, vae_mismatch, vae_signature

from helpers import assert_same_vae_signature, tiny_vae, untrained_embedded_vae


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    # Any attempt to reach a model hub would fail loudly instead of hanging.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def test_files_ship_in_the_package_and_are_small():
    files = sorted(p.relative_to(WEIGHTS_DIR).as_posix() for p in WEIGHTS_DIR.rglob("*")
                   if p.is_file())
    assert files == [
        "base_generator/config.json", "base_generator/diffusion_pytorch_model.safetensors",
        "default_lgm/backbone.safetensors", "default_lgm/config.json",
        "default_lgm/connector.safetensors", "default_lgm/lora.safetensors", "quality.json",
        "tiny_wan_vae/config.json", "tiny_wan_vae/diffusion_pytorch_model.safetensors"]
    total = sum(p.stat().st_size for p in WEIGHTS_DIR.rglob("*") if p.is_file())
    assert total < 12e6, total  # the budget README states: they travel to every GPU machine


def test_embedded_vae_is_the_documented_config():
    vae = load_tiny_wan_vae()
    for key, value in TRAINED_WAN_VAE_CONFIG.items():
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
    # The LGM carries LoRA adapters; the backbone alone (the RGB path) does not.
    assert lgm.lora_config == {"rank": 16, "alpha": 16.0, "target_modules": ["qkv", "proj"]}
    assert not any("lora_" in k for k in load_tiny_backbone().state_dict())
    # The shipped LGM names the shipped VAE as the one it reads, and refuses another one: of
    # another size, or of the same config (normalisation included) with untrained weights.
    assert_same_vae_signature(lgm.vae_signature, vae_signature(vae))
    assert vae_mismatch(lgm.vae_signature, tiny_vae(1))
    assert "encoder weights differ" in vae_mismatch(lgm.vae_signature, untrained_embedded_vae())


def test_missing_default_folder_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="vggrpo build-defaults"):
        load_default_lgm(tmp_path / "absent")
    (tmp_path / "vae").mkdir()
    with pytest.raises(FileNotFoundError, match="diffusion_pytorch_model.safetensors"):
        load_tiny_wan_vae(tmp_path / "vae")


def test_default_quality_on_held_out_scenes():
    """The shipped models beat the trivial answers on scenes they never saw.

    Bounds (stated in docs/lgm.md next to the measured numbers): the RGB backbone's and the
    LGM's rotation errors are under half the "camera never moves" baseline's, their depth
    abs-rel under 0.2 and 0.25, and the VAE's reconstruction PSNR over 20 dB.
    """
    q = evaluate_lgm(load_default_lgm(), load_tiny_wan_vae(), DefaultsRecipe(), scenes=4,
                     ranking_scenes=0)
    base = q["static_camera_baseline.rotation_deg"]
    assert q["rgb.rotation_deg"] < 0.5 * base, q
    assert q["rgb.depth_abs_rel"] < 0.2, q
    assert q["latent.depth_abs_rel"] < 0.25, q
    assert q["latent.rotation_deg"] < 0.5 * base, q
    assert q["vae.psnr_db"] > 20.0, q


def test_evaluation_reads_rgb_with_the_plain_backbone():
    """The ``rgb.*`` numbers are the backbone's without the LGM's adapters: the same as those
    of an LGM built on the plain backbone, while the LGM's own numbers differ."""
    shipped, vae = load_default_lgm(), load_tiny_wan_vae()
    plain = LatentGeometryModel(load_tiny_backbone(), shipped.config).eval()
    plain.connector.load_state_dict(shipped.connector.state_dict())
    q = [evaluate_lgm(m, vae, DefaultsRecipe(), scenes=1, ranking_scenes=0)
         for m in (shipped, plain)]
    for key in ("rgb.rotation_deg", "rgb.centre_m", "rgb.depth_abs_rel"):
        assert q[0][key] == q[1][key], key
    assert q[0]["latent.rotation_deg"] != q[1]["latent.rotation_deg"]


def test_quality_report_matches_the_recipe():
    report = json.loads((WEIGHTS_DIR / "quality.json").read_text())
    assert report["recipe"] == DefaultsRecipe().__dict__
    assert report["final_stitching_loss"] < report["first_stitching_loss"]


def test_stitching_command(tmp_path, capsys):
    from vggrpo.lgm import LatentGeometryModel

    code = main(["train-lgm", "--synthetic", "2", "--frames", "5", "--height", "32", "--width",
                 "48", "--epochs", "1", "--batch-size", "2", "--out", str(tmp_path / "run")])
    assert code == 0
    lgm = LatentGeometryModel.from_pretrained(tmp_path / "run" / "lgm")
    assert lgm.config.latent_channels == 16
    assert (tmp_path / "run" / "checkpoint" / "trainer_state.pt").is_file()
    capsys.readouterr()
    assert main(["train-lgm", "--synthetic", "2", "--vae", str(tmp_path / "no-vae"), "--out",
                 str(tmp_path / "run2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: VAE folder not found: {tmp_path / 'no-vae'}"]
    assert not (tmp_path / "run2").exists()


@pytest.mark.parametrize("field,value,expected", [
    ("frames", 16, r"frames must be 1 \+ 4k .*got 16"),
    ("width", 0, "width must be a positive int, got 0"),
    ("train_scenes", 0, "train_scenes must be a positive int, got 0"),
    ("eval_scenes", 0, "eval_scenes must be a positive int, got 0"),
    ("backbone_steps", 0, "backbone_steps must be a positive int, got 0"),
    ("stitch_batch", True, "stitch_batch must be a positive int, got True"),
    ("backbone_lr", float("inf"), "backbone_lr must be a finite number > 0, got inf"),
    ("stitch_lr", 0.0, "stitch_lr must be a finite number > 0, got 0.0"),
    ("max_jitter", -1.0, "max_jitter must be a finite number >= 0, got -1.0"),
    ("backbone_motion_weight", float("nan"),
     "backbone_motion_weight must be a finite number >= 0, got nan"),
    ("vae_seed", 0.5, "vae_seed must be an int, got 0.5"),
    ("vae_image_steps", -1, "vae_image_steps must be an int >= 0, got -1"),
    ("vae_lr", float("nan"), "vae_lr must be a finite number > 0, got nan"),
    ("generator_videos", 0, "generator_videos must be a positive int, got 0"),
    ("generator_lr", -1.0, "generator_lr must be a finite number > 0, got -1.0"),
])
def test_recipe_refuses_what_would_fail_late_or_ship_nan(field, value, expected):
    # Each of these once failed only after the backbone had trained (minutes at the full recipe),
    # or, for the learning rate, not at all: the build shipped NaN weights.
    with pytest.raises(ValueError, match=f"^DefaultsRecipe.{expected}"):
        DefaultsRecipe(**{field: value})


def test_recipe_refuses_a_vae_that_never_trains():
    DefaultsRecipe(vae_video_steps=0)  # single frames only is a recipe
    with pytest.raises(ValueError, match=r"^DefaultsRecipe.vae_image_steps must be > 0 when "
                                         r"vae_video_steps is 0 \(the VAE must train\), got 0$"):
        DefaultsRecipe(vae_image_steps=0, vae_video_steps=0)


@pytest.mark.parametrize("field,value,expected", [
    ("frames", 5, "frames must be >= 9 here .*got 5"),
    ("height", 100, "height must be a multiple of 16 .*got 100"),
    ("width", 40, "width must be a multiple of 16 .*got 40"),
])
def test_build_and_evaluation_check_the_size_before_any_work(field, value, expected, tmp_path):
    recipe = DefaultsRecipe(**{field: value})  # a valid scene size: stitching draws such scenes
    with pytest.raises(ValueError, match=f"^DefaultsRecipe.{expected}"):
        build_defaults(tmp_path / "weights", recipe, progress=False)
    assert not (tmp_path / "weights").exists()
    with pytest.raises(ValueError, match=f"^DefaultsRecipe.{expected}"):
        evaluate_lgm(load_default_lgm(), None, recipe)


def test_evaluation_without_rankings_takes_two_latent_frames():
    q = evaluate_lgm(load_default_lgm(), load_tiny_wan_vae(), DefaultsRecipe(frames=5, height=32,
                     width=48), scenes=1, ranking_scenes=0)
    assert q["eval_scenes"] == 1 and "ranking" not in q


def test_evaluate_lgm_refuses_a_vae_the_lgm_was_not_stitched_to():
    with pytest.raises(ValueError, match="vae is not the VAE this LGM was stitched to"):
        evaluate_lgm(load_default_lgm(), tiny_vae(1),
                     DefaultsRecipe(frames=5, height=32, width=48), scenes=1, ranking_scenes=0)


def test_evaluate_lgm_refuses_empty_counts():
    with pytest.raises(ValueError, match="scenes must be a positive int .*got 0"):
        evaluate_lgm(None, None, scenes=0)
    with pytest.raises(ValueError, match="ranking_scenes must be an int >= 0, got -1"):
        evaluate_lgm(None, None, ranking_scenes=-1)
    with pytest.raises(ValueError, match="ranking_trajectory must be one of .*got 'spiral'"):
        evaluate_lgm(None, None, ranking_trajectory="spiral")


def test_scene_pool_cycles_trajectory_kinds_unless_one_is_named():
    """Scene i is TRAJECTORIES[i % 3] (dolly, orbit, pan); a named kind holds for every scene.
    Told apart by their ground-truth centres: a pan's stand still, a dolly's and an orbit's move,
    and an orbit's turn (its centre steps are not parallel)."""
    recipe = DefaultsRecipe(frames=5, height=32, width=48)

    def centre_steps(pool):
        E = pool.items["extrinsics"].double()
        C = -(E[..., :3, :3].transpose(-1, -2) @ E[..., :3, 3:])[..., 0]
        return C[:, 1:] - C[:, :-1]

    def kind(steps):
        if float(steps.norm(dim=-1).max()) < 1e-4:
            return "pan"
        unit = steps / steps.norm(dim=-1, keepdim=True)
        return "dolly" if float((unit[1:] * unit[:-1]).sum(-1).min()) > 1 - 1e-6 else "orbit"

    mixed = centre_steps(scene_pool(3, recipe, seed=5, jitter=0.0))
    assert [kind(mixed[i]) for i in range(3)] == ["dolly", "orbit", "pan"]
    pans = centre_steps(scene_pool(2, recipe, seed=5, jitter=0.0, trajectory="pan"))
    assert [kind(pans[i]) for i in range(2)] == ["pan", "pan"]
    with pytest.raises(ValueError, match="trajectory must be None or one of .*got 'spiral'"):
        scene_pool(1, recipe, seed=5, trajectory="spiral")


@pytest.mark.parametrize("argv,expected", [
    (["--frames", "16"], "--frames must be 1 + 4k (5, 9, 13, 17, ...: the Wan VAE's 4x temporal "
                         "factor), got 16"),
    (["--frames", "5"], "--frames must be >= 9 here (3 latent frames, the fewest the camera "
                        "motion reward takes), got 5"),
    (["--height", "100"], "--height must be a multiple of 16 (the backbone's patch size), got 100"),
    (["--backbone-lr", "inf"], "--backbone-lr must be a finite number > 0, got inf"),
])
def test_defaults_command_names_the_bad_option_and_writes_nothing(argv, expected, tmp_path,
                                                                  capsys):
    out = tmp_path / "weights"
    assert main(["build-defaults", *argv, "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"error: {expected}"]
    assert not out.exists()


def test_tiny_build_writes_loadable_models_and_a_full_report_and_replaces_an_old_build(
        tmp_path, monkeypatch):
    """build_defaults end to end at a toy size (seconds): the path that made vggrpo/weights."""
    import vggrpo.vae_training as vae_training

    recipe = DefaultsRecipe(height=32, width=48, frames=9, train_scenes=2, eval_scenes=1,
                            backbone_steps=2, backbone_batch=2, stitch_epochs=1, stitch_batch=2,
                            lgm_lora_rank=2, lgm_lora_epochs=1,
                            vae_image_steps=2, vae_video_steps=1, vae_teacher_weight=0.5,
                            generator_videos=3, generator_steps=2, generator_batch=2)
    out = tmp_path / "weights"
    (out / "default_lgm").mkdir(parents=True)
    (out / "default_lgm" / "stale.txt").write_text("from an older build")
    seen, real = [], vae_training.train_wan_vae

    def spy(vae, videos, config, **kwargs):
        seen.append(config)
        return real(vae, videos, config, **kwargs)

    monkeypatch.setattr(vae_training, "train_wan_vae", spy)
    report = build_defaults(out, recipe, progress=False)
    assert [(c.image_steps, c.video_steps, c.lr, c.teacher_weight) for c in seen] == [
        (2, 1, recipe.vae_lr, 0.5)]

    assert sorted(p.name for p in out.iterdir()) == ["base_generator", "default_lgm",
                                                     "quality.json", "tiny_wan_vae"]
    assert not (out / "default_lgm" / "stale.txt").exists()  # replaced whole, not merged
    assert json.loads((out / "quality.json").read_text()) == report
    assert report["recipe"] == recipe.__dict__
    # Where the bytes came from: the versions and threads of this process, read independently.
    import diffusers
    import peft

    built_in = report["environments"]["build"]
    assert built_in["packages"]["torch"] == torch.__version__
    assert built_in["packages"]["diffusers"] == diffusers.__version__
    assert built_in["packages"]["peft"] == peft.__version__
    assert built_in["threads"] == torch.get_num_threads()
    assert list(report["environments"]) == ["build"]
    lgm, vae = load_default_lgm(out / "default_lgm"), load_tiny_wan_vae(out / "tiny_wan_vae")
    with torch.no_grad():
        g = lgm(encode_video(vae, torch.rand(1, 9, 3, 32, 48)))
    assert g.depths.shape == (1, 3, 32, 48) and bool(torch.isfinite(g.depths).all())
    assert_same_vae_signature(lgm.vae_signature, vae_signature(vae))
    assert lgm.lora_config["rank"] == 2 and report["final_lgm_lora_loss"] > 0

    ranking = report["quality"]["ranking"]
    for key in ("spearman_jitter_vs_lgm_motion_reward", "spearman_jitter_vs_rgb_motion_reward",
                "spearman_jitter_vs_true_motion_reward",
                "spearman_latent_noise_vs_lgm_geo_reward"):
        assert len(ranking[key]) == 4 and all(-1.0 <= r <= 1.0 for r in ranking[key]), key
    # The true geometry's motion reward falls as the camera shakes more, in every scene: the
    # ranking the LGM's reward is measured against is itself right.
    assert ranking["spearman_jitter_vs_true_motion_reward"] == [-1.0] * 4
    assert report["quality"]["eval_scenes"] == 1

    # The base generator: loads in float32, predicts velocities of the VAE's latent shape.
    generator = load_base_generator(out / "base_generator")
    assert next(generator.parameters()).dtype == torch.float32 and not generator.training
    z = torch.randn(2, 16, 3, 4, 6)
    with torch.no_grad():
        v = generator(hidden_states=z, timestep=torch.tensor([500.0, 500.0]),
                      encoder_hidden_states=world_prompt_embeddings(8, 16)[:2],
                      return_dict=False)[0]
    assert v.shape == z.shape and bool(torch.isfinite(v).all())

    # --stage generator retrains only the generator, on the VAE already there, and reports it.
    old = {p.name: p.read_bytes() for p in (out / "default_lgm").iterdir()}
    before = (out / "base_generator" / "diffusion_pytorch_model.safetensors").read_bytes()
    argv = ["build-defaults", "--stage", "generator", "--out", str(out), "--no-progress"]
    for field, value in recipe.to_dict().items():
        argv += [f"--{field.replace('_', '-')}", str(value)]
    argv[argv.index("--generator-steps") + 1] = "3"
    assert main(argv) == 0
    assert {p.name: p.read_bytes() for p in (out / "default_lgm").iterdir()} == old
    after = (out / "base_generator" / "diffusion_pytorch_model.safetensors").read_bytes()
    assert after != before  # one more step: other weights
    again = json.loads((out / "quality.json").read_text())
    assert again["quality"] == report["quality"]
    assert again["final_generator_loss"] > 0 and again["timings"]["generator_s"] > 0
    # The stage records its own environment beside the full build's, which stays as it was.
    assert sorted(again["environments"]) == ["build", "generator"]
    assert again["environments"]["build"] == report["environments"]["build"]
    assert again["environments"]["generator"]["packages"]["torch"] == torch.__version__

    # A generator stage of another world size or draw than the build in --out is refused
    # before any training, naming the option; nothing there changes.
    for option in ("--height", "--seed"):
        wrong = list(argv)
        wrong[wrong.index(option) + 1] = str(int(wrong[wrong.index(option) + 1]) + 16)
        with pytest.raises(ValueError, match=f"DefaultsRecipe.{option[2:]} must match the build"):
            build_generator(out, DefaultsRecipe(**{**recipe.to_dict(), "generator_steps": 3,
                                                   option[2:]: int(wrong[wrong.index(option)
                                                                         + 1])}))
        assert main(wrong) == 2
    assert (out / "base_generator" / "diffusion_pytorch_model.safetensors").read_bytes() == after


def test_lgm_stage_rewrites_only_the_lgm_as_the_full_build_made_it(tmp_path):
    """--stage lgm re-stitches the LGM to the VAE and backbone in --out: the same code and
    seeds as the full build, so with the build's recipe it writes the build's bytes; with
    another LoRA setting it rewrites only default_lgm and its quality.json entries."""
    recipe = DefaultsRecipe(height=32, width=48, frames=9, train_scenes=2, eval_scenes=1,
                            backbone_steps=2, backbone_batch=2, stitch_epochs=1, stitch_batch=2,
                            lgm_lora_rank=2, lgm_lora_epochs=1,
                            vae_image_steps=2, vae_video_steps=1, generator_videos=3,
                            generator_steps=2, generator_batch=2)
    out = tmp_path / "weights"
    built = build_defaults(out, recipe, progress=False)

    def files(folder):
        return {p.name: p.read_bytes() for p in (out / folder).iterdir()}

    lgm_files, others = files("default_lgm"), {f: files(f) for f in ("tiny_wan_vae",
                                                                       "base_generator")}
    again = build_lgm(out, recipe, progress=False)
    assert files("default_lgm") == lgm_files
    for key in ("quality", "final_stitching_loss", "first_stitching_loss",
                "final_lgm_lora_loss", "recipe"):
        assert again[key] == built[key], key

    argv = ["build-defaults", "--stage", "lgm", "--out", str(out), "--no-progress"]
    for field, value in {**recipe.to_dict(), "lgm_lora_epochs": 0}.items():
        argv += [f"--{field.replace('_', '-')}", str(value)]
    assert main(argv) == 0
    report = json.loads((out / "quality.json").read_text())
    assert LatentGeometryModel.from_pretrained(out / "default_lgm").lora_config is None
    assert sorted(files("default_lgm")) == ["backbone.safetensors", "config.json",
                                            "connector.safetensors"]
    assert files("default_lgm")["backbone.safetensors"] == lgm_files["backbone.safetensors"]
    assert "final_lgm_lora_loss" not in report and report["recipe"]["lgm_lora_epochs"] == 0
    assert sorted(report["environments"]) == ["build", "lgm"]
    assert report["environments"]["build"] == built["environments"]["build"]
    assert report["final_generator_loss"] == built["final_generator_loss"]
    assert {f: files(f) for f in others} == others
    wrong = list(argv)
    wrong[wrong.index("--width") + 1] = "64"
    assert main(wrong) == 2
    assert json.loads((out / "quality.json").read_text()) == report


def test_generator_stage_needs_a_vae(tmp_path):
    with pytest.raises(FileNotFoundError, match="vggrpo build-defaults"):
        build_generator(tmp_path / "nothing")


def test_a_build_is_reproducible(tmp_path):
    """Two builds of one recipe write the same bytes: every weight file, and the report but
    for its timings (the 90-minute rebuild's promise, at a toy size)."""
    recipe = DefaultsRecipe(height=32, width=48, frames=9, train_scenes=2, eval_scenes=1,
                            backbone_steps=2, backbone_batch=2, stitch_epochs=1, stitch_batch=2,
                            lgm_lora_rank=2, lgm_lora_epochs=1,
                            vae_image_steps=2, vae_video_steps=1, generator_videos=3,
                            generator_steps=2, generator_batch=2)
    reports = [build_defaults(tmp_path / name, recipe, progress=False) for name in "ab"]
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*")
                   if p.is_file() and p.name != "quality.json")
    assert len(files) == 8  # three configs, five weight files (the LGM's LoRA among them)
    assert files == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*")
                           if p.is_file() and p.name != "quality.json")
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    for report in reports:
        report.pop("timings")
    assert reports[0] == reports[1]
