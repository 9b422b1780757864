"""The ``vggrpo`` command: every subcommand's help, the main jobs, and the one-line errors."""

import argparse
import json
import math
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from vggrpo.cli import main
from vggrpo.data import make_scene, read_video, write_video

from helpers import free_port, tiny_vae, untrained_embedded_vae

SUBCOMMANDS = ["demo", "reward", "train", "sample", "eval", "bench"]


@pytest.mark.parametrize("sub", SUBCOMMANDS)
def test_help(sub, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([sub, "--help"])
    assert exit_.value.code == 0
    assert f"usage: vggrpo {sub}" in capsys.readouterr().out


def _parsers(parser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _parsers(sub)


def test_every_option_says_what_it_is_and_its_default():
    from vggrpo.cli import build_parser

    parsers = list(_parsers(build_parser()))
    assert len(parsers) == 9  # vggrpo and its 8 commands
    for parser in parsers:
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            assert action.help, (parser.prog, action.dest)
            if action.default not in (None, False):
                assert "%(default)s" in action.help, (parser.prog, action.dest, action.help)
    text = next(p for p in parsers if p.prog == "vggrpo train-lgm").format_help()
    assert "peak AdamW learning rate (default: 0.0005)" in text


def test_console_script_and_train_lgm_help():
    out = subprocess.run([sys.executable, "-m", "vggrpo", "train-lgm", "--help"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "feature stitching" in out.stdout


def test_demo(tmp_path):
    out = tmp_path / "demo"
    stale = out / "samples" / "before" / "11_pan_cluttered.mp4"  # an earlier, larger run's
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old")
    assert main(["demo", "--out", str(out), "--steps", "2", "--rounds", "1",
                 "--samples-per-prompt", "1", "--coverage-weight", "0.5"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["grpo_config"]["reward_weights"] == {"motion": 1.0, "geo": 1.0,
                                                        "coverage": 0.5}
    assert [h["step"] for h in summary["runs"][0]["history"]] == [0, 1]
    assert set(summary["latent_vs_rgb"]) >= {"a_median_s", "b_median_s", "ratio"}
    names = {"rgb_motion", "sampson_px", "fidelity_l1", "lgm_motion", "lgm_geo", "lgm_coverage"}
    for when in ("before", "after", "guided"):
        assert set(summary["referees"][when]) == names
        assert all(math.isfinite(v) for v in summary["referees"][when].values()), when
    grpo = summary["effects"]["grpo"]
    for name in names:  # one run: the across-runs means are that run's
        assert grpo[name]["before"] == pytest.approx(summary["referees"]["before"][name])
        assert grpo[name]["after"] == pytest.approx(summary["referees"]["after"][name])
        assert grpo[name]["runs"] == 1 and grpo[name]["effect_size_sd"] == 0.0
    assert 0.0 < summary["hacking"]["before"]["coverage_mean"] <= 1.0
    for folder in ("before", "after", "guided"):
        files = sorted(p.name for p in (out / "samples" / folder).iterdir())
        assert files == ["00_dolly_sparse.mp4", "01_dolly_cluttered.mp4", "02_orbit_sparse.mp4",
                         "03_orbit_cluttered.mp4", "04_pan_sparse.mp4", "05_pan_cluttered.mp4"]
        assert read_video(out / "samples" / folder / files[0]).shape == (17, 3, 96, 160)
    for png in ("reward_curve.png", "strip.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    assert (out / "lora" / "pytorch_lora_weights.safetensors").is_file()


def test_reward_on_latents_and_videos(tmp_path, capsys):
    save_file({"latents": torch.randn(2, 16, 5, 12, 20)}, str(tmp_path / "z.safetensors"))
    write_video(tmp_path / "clip", make_scene(1, 17, 96, 160, seed=2).video[0])
    code = main(["reward", str(tmp_path / "z.safetensors"), str(tmp_path / "clip"), "--out",
                 str(tmp_path / "scores.json")])
    assert code == 0
    rows = json.loads((tmp_path / "scores.json").read_text())["rows"]
    assert [(r["input"], r["index"]) for r in rows] == [("z.safetensors", 0),
                                                        ("z.safetensors", 1), ("clip", 0)]
    assert all(0 < r["motion"] <= 1 and r["geo"] <= 0 for r in rows)
    assert all("coverage" not in r for r in rows)


def test_reward_coverage_prints_and_saves_the_share_of_pixels_scored(tmp_path, capsys):
    save_file({"latents": torch.randn(2, 16, 5, 12, 20)}, str(tmp_path / "z.safetensors"))
    assert main(["reward", str(tmp_path / "z.safetensors"), "--coverage", "--out",
                 str(tmp_path / "scores.json")]) == 0
    rows = json.loads((tmp_path / "scores.json").read_text())["rows"]
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(rows) == 2 and all(0 <= r["coverage"] <= 1 for r in rows)
    assert [line.split("coverage ")[1] for line in printed] == [f"{r['coverage']:.4f}"
                                                                 for r in rows]


@pytest.mark.parametrize("latents, expected", [
    (torch.randint(0, 5, (1, 16, 5, 12, 20)), "'latents' must be a floating-point tensor "
                                               "[B,C,T,h,w], got torch.int64"),
    (torch.randn(0, 16, 5, 12, 20), "'latents' [0, 16, 5, 12, 20] holds no video (batch 0)"),
    (torch.randn(2, 16, 5, 12, 20).index_put_((torch.tensor([1, 0]), torch.tensor([3, 0]),
                                               torch.tensor([2, 0]), torch.tensor([5, 0]),
                                               torch.tensor([7, 0])),
                                              torch.tensor([float("nan"), float("inf")])),
     "'latents' must be finite; 2 of its 38400 values are NaN or inf"),
], ids=["integer", "batch-0", "nan"])
def test_reward_refuses_latents_it_cannot_score(tmp_path, capsys, latents, expected):
    save_file({"latents": latents}, str(tmp_path / "z.safetensors"))
    _one_line_error(capsys, ["reward", str(tmp_path / "z.safetensors"), "--out",
                             str(tmp_path / "scores.json")], expected)
    assert not (tmp_path / "scores.json").exists()


def test_train_sample_eval_bench(tmp_path):
    config = tmp_path / "grpo.toml"
    config.write_text('model = "tiny"\nlgm = "default"\n\n[grpo]\ngroup_size = 2\n'
                      'prompts_per_step = 2\nnum_inference_steps = 3\nsde_window = [0, 2]\n'
                      'steps = 2\nlora_rank = 2\nlora_alpha = 2.0\n')
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "run")]) == 0
    lora = tmp_path / "run" / "pytorch_lora_weights.safetensors"
    assert lora.is_file() and len(json.loads(
        (tmp_path / "run" / "history.json").read_text())["history"]) == 2
    assert main(["sample", "--lora", str(lora), "--steps", "3", "--out",
                 str(tmp_path / "s.safetensors")]) == 0
    assert load_file(tmp_path / "s.safetensors")["latents"].shape == (1, 16, 5, 12, 20)
    videos = tmp_path / "videos"
    write_video(videos / "a", make_scene(1, 9, 96, 160, static_objects=3, seed=1).video[0])
    assert main(["eval", str(videos), "--out", str(tmp_path / "eval"), "--frames", "9"]) == 0
    assert (tmp_path / "eval" / "metrics.csv").is_file()
    assert main(["bench", "--rounds", "1", "--out", str(tmp_path / "bench.json")]) == 0
    assert "latent_vs_rgb_reward_b4" in json.loads((tmp_path / "bench.json").read_text())


def test_sample_decode_writes_one_readable_video_per_sample(tmp_path):
    from vggrpo.data import read_video

    out = tmp_path / "s.safetensors"
    assert main(["sample", "--steps", "2", "--decode", "--out", str(out)]) == 0
    video = read_video(tmp_path / "s-0.mp4")
    # 5 latent frames of 12x20 -> 1 + 4*4 RGB frames of 96x160.
    assert video.shape == (17, 3, 96, 160)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s-0.mp4", "s.safetensors"]


def test_sample_decode_checks_the_vae_before_sampling(tmp_path, capsys):
    from diffusers import AutoencoderKLWan

    from vggrpo.defaults import load_default_lgm
    from vggrpo.vae import TINY_WAN_VAE_CONFIG

    _one_line_error(capsys, ["sample", "--decode", "--vae", str(tmp_path / "no-vae"), "--out",
                             str(tmp_path / "a.safetensors")], "is not a diffusers VAE folder")
    # A VAE of other latents (Wan2.2's has 48 channels) would fail only after sampling. The
    # default LGM knows its VAE, so that check comes first; an LGM with no record (a file from
    # before records) still meets the model's own check.
    AutoencoderKLWan(**{**TINY_WAN_VAE_CONFIG, "z_dim": 8}).save_pretrained(tmp_path / "vae8")
    _one_line_error(capsys, ["sample", "--decode", "--vae", str(tmp_path / "vae8"), "--out",
                             str(tmp_path / "b.safetensors")],
                    "is not the VAE this LGM was stitched to: its latents have channels 8, the "
                    "expected VAE's have 16")
    lgm = load_default_lgm()
    lgm.vae_signature = None
    lgm.save_pretrained(tmp_path / "lgm")
    _one_line_error(capsys, ["sample", "--decode", "--vae", str(tmp_path / "vae8"), "--lgm",
                             str(tmp_path / "lgm"), "--out", str(tmp_path / "c.safetensors")],
                    "decodes 8-channel latents but the model makes 16-channel ones")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lgm", "vae8"]  # no latents written


def test_sample_from_a_local_diffusers_pipeline_folder(tmp_path):
    """The real-checkpoint path at toy size: a folder in the diffusers Wan layout (as
    Wan2.1-T2V-1.3B-Diffusers), its transformer for --model and, by default, its vae/ for
    --decode."""
    from diffusers import AutoencoderKLWan

    from vggrpo.data import read_video
    from vggrpo.defaults import load_default_lgm, tiny_wan_transformer

    pipe = tmp_path / "Wan-tiny-Diffusers"
    tiny_wan_transformer(0).save_pretrained(pipe / "transformer")
    tiny_vae(5).save_pretrained(pipe / "vae")  # unlike the embedded one: tells which decoded
    (pipe / "model_index.json").write_text(json.dumps({"_class_name": "WanPipeline"}))
    # The default LGM reads the embedded tiny VAE's latents; an LGM for this folder's VAE:
    lgm = load_default_lgm()
    lgm.record_vae(AutoencoderKLWan.from_pretrained(pipe / "vae"))
    lgm.save_pretrained(tmp_path / "lgm")
    args = ["sample", "--steps", "2", "--guidance-scale", "0"]
    for name, extra in (("a", ["--lgm", str(tmp_path / "lgm")]),
                        ("b", ["--vae", str(pipe), "--lgm", str(tmp_path / "lgm")]),
                        ("c", ["--vae", "tiny"])):
        assert main([*args, "--model", str(pipe), "--decode", *extra, "--out",
                     str(tmp_path / f"{name}.safetensors")]) == 0
    assert main([*args, "--out", str(tmp_path / "d.safetensors")]) == 0  # the same tiny model
    # Same weights, same seed: the folder's model is the tiny one, bit for bit.
    latents = [load_file(tmp_path / f"{n}.safetensors")["latents"] for n in "abcd"]
    assert all(torch.equal(z, latents[0]) for z in latents)
    videos = {n: read_video(tmp_path / f"{n}-0.mp4") for n in "abc"}
    # The folder's own vae/ by default. Compared through the mp4s, which x264 does not make
    # byte-reproducible (write_video's docstring): the same VAE differs by a few pixel levels at
    # most, another VAE everywhere.
    same = (videos["a"] - videos["b"]).abs()
    other = (videos["a"] - videos["c"]).abs()
    assert float(same.mean()) < 1e-3 and float(other.mean()) > 2e-2


def test_an_lgm_is_never_paired_with_a_vae_it_was_not_stitched_to(tmp_path, capsys):
    """Same channel count, other latent space: the default LGM (stitched to the embedded tiny
    VAE) on a model whose VAE differs would give rewards that mean nothing. Every command that
    pairs them refuses, before the video model loads or anything is written."""
    pipe = tmp_path / "pipe"
    untrained_embedded_vae(5).save_pretrained(pipe / "vae")
    (pipe / "model_index.json").write_text("{}")
    (pipe / "transformer").mkdir()
    (pipe / "transformer" / "config.json").write_text("not read: the check comes first")
    refusal = "is not the VAE this LGM was stitched to: its encoder weights differ"
    _one_line_error(capsys, ["sample", "--model", str(pipe), "--out",
                             str(tmp_path / "a.safetensors")],
                    f"the VAE of model {pipe} {refusal}")
    _one_line_error(capsys, ["sample", "--decode", "--vae", str(pipe), "--out",
                             str(tmp_path / "b.safetensors")], f"--vae {pipe} {refusal}")
    config = tmp_path / "c.toml"
    config.write_text(f'model = "{pipe}"\n')
    _one_line_error(capsys, ["train", "--config", str(config), "--out", str(tmp_path / "run")],
                    f"the VAE of model {pipe} {refusal}")
    write_video(tmp_path / "clip", make_scene(1, 9, 32, 48, seed=2).video[0])
    _one_line_error(capsys, ["reward", str(tmp_path / "clip"), "--vae", str(pipe), "--out",
                             str(tmp_path / "scores.json")], f"--vae {pipe} {refusal}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.toml", "clip", "pipe"]


def _one_line_error(capsys, argv, expected):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0], err


def test_errors_are_one_line_exit_2_and_write_nothing(tmp_path, capsys):
    config = tmp_path / "c.toml"
    config.write_text(f'model = "{tmp_path / "no-such-model"}"\n')
    _one_line_error(capsys, ["train", "--config", str(config), "--out", str(tmp_path / "o1")],
                    "model folder not found")
    (tmp_path / "wrong").mkdir()
    (tmp_path / "wrong" / "transformer").mkdir()
    config.write_text(f'model = "{tmp_path / "wrong"}"\n')
    _one_line_error(capsys, ["train", "--config", str(config), "--out", str(tmp_path / "o2")],
                    "does not have the diffusers Wan layout: missing model_index.json")
    (tmp_path / "broken.mp4").write_bytes(b"\x00\x01 this is not a video")
    _one_line_error(capsys, ["reward", str(tmp_path / "broken.mp4")], "broken.mp4")
    _one_line_error(capsys, ["reward", str(tmp_path / "absent.mp4")], "input not found")
    config.write_text('model = "tiny"\nbogus = 1\n')
    _one_line_error(capsys, ["train", "--config", str(config)], "unknown keys ['bogus']")
    config.write_text('model = "tiny"\n[grpo]\ngroup_size = 1\n')
    _one_line_error(capsys, ["train", "--config", str(config), "--out", str(tmp_path / "o3")],
                    "group_size must be an int >= 2")
    # A missing LGM of the user's is named as such: not as a missing embedded default, whose
    # advice (rebuild the defaults) would mislead.
    _one_line_error(capsys, ["reward", str(tmp_path / "broken.mp4"), "--lgm",
                             str(tmp_path / "no-lgm")],
                    f"error: LGM folder not found: {tmp_path / 'no-lgm'} (expected a folder")
    # Settings and the LGM are checked before the video model loads (minutes for a real one):
    # with a model folder that does not exist, the error is still about them.
    config.write_text(f'model = "{tmp_path / "no-such-model"}"\n[grpo]\nsteps = 0\n')
    _one_line_error(capsys, ["train", "--config", str(config), "--out", str(tmp_path / "o4")],
                    "GRPOConfig.steps must be a positive int, got 0")
    config.write_text(f'model = "{tmp_path / "no-such-model"}"\n[reward]\ntopk = 0\n')
    _one_line_error(capsys, ["train", "--config", str(config), "--out", str(tmp_path / "o5")],
                    "topk must be a positive int, got 0")
    config.write_text(f'model = "{tmp_path / "no-such-model"}"\nlgm = "{tmp_path / "no-lgm"}"\n')
    _one_line_error(capsys, ["train", "--config", str(config), "--out", str(tmp_path / "o6")],
                    f"error: LGM folder not found: {tmp_path / 'no-lgm'} (expected a folder")
    assert not any((tmp_path / d).exists() for d in ("o1", "o2", "o3", "o4", "o5", "o6"))


def test_train_under_torchrun_with_two_gloo_processes(tmp_path):
    config = tmp_path / "grpo.toml"
    config.write_text('model = "tiny"\n\n[grpo]\ngroup_size = 2\nprompts_per_step = 2\n'
                      'num_inference_steps = 3\nsde_window = [0, 2]\nsteps = 1\nlora_rank = 2\n'
                      'lora_alpha = 2.0\n')
    import os

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
         str(free_port()), "-m", "vggrpo", "train", "--config", str(config),
         "--out", str(tmp_path / "run")], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert history["world_size"] == 2 and len(history["history"]) == 1
    assert (tmp_path / "run" / "pytorch_lora_weights.safetensors").is_file()


def test_train_from_yaml(tmp_path):
    config = tmp_path / "grpo.yaml"
    config.write_text("model: tiny\ngrpo:\n  group_size: 2\n  prompts_per_step: 1\n"
                      "  num_inference_steps: 3\n  sde_window: [0, 1]\n  steps: 1\n"
                      "  lora_rank: 2\n  lora_alpha: 2.0\nreward:\n  weights: {geo: 1.0}\n")
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "run")]) == 0
    assert len(json.loads((tmp_path / "run" / "history.json").read_text())["history"]) == 1
    # [reward] weights are the GRPO weights when [grpo] reward_weights is not given (they were
    # checked, then ignored).
    state = torch.load(tmp_path / "run" / "checkpoint-1" / "trainer_state.pt",
                       weights_only=True)
    assert state["config"]["reward_weights"] == {"geo": 1.0}


def test_train_with_the_coverage_guard(tmp_path):
    """[reward] coverage = min_coverage adds the guard (docs/conventions.md), which
    [grpo] reward_weights weighs; its value is logged with the others."""
    config = tmp_path / "grpo.toml"
    config.write_text('model = "tiny"\n[reward]\ncoverage = 0.5\n[grpo]\ngroup_size = 2\n'
                      'prompts_per_step = 1\nnum_inference_steps = 3\nsde_window = [0, 1]\n'
                      'steps = 1\nlora_rank = 2\nlora_alpha = 2.0\n'
                      'reward_weights = { motion = 1.0, geo = 1.0, coverage = 2.0 }\n')
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "run")]) == 0
    step = json.loads((tmp_path / "run" / "history.json").read_text())["history"][0]
    assert 0 <= step["reward_coverage"] <= 1, step


@pytest.mark.parametrize("argv,expected", [
    (["sample", "--latent-frames", "0"],
     "argument --latent-frames: expected a positive int, got 0"),
    (["sample", "--steps", "-1"], "argument --steps: expected a positive int, got -1"),
    (["sample", "--shift", "0"], "argument --shift: expected a finite number > 0, got '0'"),
    (["sample", "--w-motion", "nan"], "argument --w-motion: expected a finite number, got 'nan'"),
    (["sample", "--guidance-scale", "inf"], "argument --guidance-scale: expected a finite"),
    # Before: a negative scale turned guidance off without a word.
    (["sample", "--guidance-scale", "-1"],
     "argument --guidance-scale: expected a finite number >= 0, got '-1'"),
    (["sample", "--shift", "-2"], "argument --shift: expected a finite number > 0, got '-2'"),
    (["sample", "--guidance-start", "-1"], "argument --guidance-start: expected an int >= 0"),
    (["reward", "x.mp4", "--topk", "0"], "argument --topk: expected a positive int, got 0"),
    (["reward", "x.mp4", "--flow-threshold", "nan"], "argument --flow-threshold: expected a"),
    (["eval", "videos", "--frames", "two"],
     "argument --frames: expected a positive int, got 'two'"),
    (["demo", "--rounds", "0"], "argument --rounds: expected a positive int, got 0"),
    (["demo", "--coverage-weight", "-1"],
     "argument --coverage-weight: expected a finite number >= 0, got '-1'"),
    (["bench", "--rounds", "0"], "argument --rounds: expected a positive int, got 0"),
    (["reward", "x.mp4", "--frames", "10"],
     "argument --frames: expected 1 + 4k frames (e.g. 9, 13, 17), got 10"),
    (["train-lgm", "--synthetic", "0"], "argument --synthetic: expected a positive int, got 0"),
    (["train-lgm", "--synthetic", "1", "--frames", "0"],
     "argument --frames: expected a positive int, got 0"),
    (["train-lgm", "--synthetic", "1", "--frames", "10"], "argument --frames: expected 1 + 4k"),
    (["train-lgm", "--synthetic", "1", "--height", "-5"],
     "argument --height: expected a positive int, got -5"),
])
def test_bad_option_values_are_refused_by_the_parser(argv, expected, capsys, tmp_path):
    """Before, these ran (some for minutes) and ended in a traceback, a NaN result, or an
    error naming none of the options ('no median for empty data' for --rounds 0)."""
    with pytest.raises(SystemExit) as exit_:
        main(argv + (["--out", str(tmp_path / "o")]
                     if argv[0] in ("sample", "eval", "train-lgm") else []))
    assert exit_.value.code == 2
    assert expected in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.fixture(scope="module")
def lora_files(tmp_path_factory):
    """A LoRA trained for the tiny model, and broken variants of it."""
    from safetensors import safe_open

    from vggrpo.grpo import LORA_FILE

    from grpo_setup import make_trainer

    folder = tmp_path_factory.mktemp("lora")
    make_trainer(lora_rank=2, lora_alpha=2.0).save_checkpoint(folder)
    good = folder / LORA_FILE
    with safe_open(str(good), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(good)
    variants = {
        "extra": {**tensors, "transformer.no_such_block.to_q.lora_A.weight": torch.zeros(2, 24)},
        "half": {k: v for k, v in tensors.items() if "lora_A" in k},
        "shape": {k: torch.zeros(v.shape[0] + 1, v.shape[1]) for k, v in tensors.items()},
        "other": {"text_encoder.q.lora_A.weight": torch.zeros(2, 2)},
        "nan": {k: v.fill_(float("nan")) if "lora_A" in k else v
                for k, v in load_file(good).items()},
        "int": {k: v.to(torch.int32) for k, v in tensors.items()},
    }
    for name, sd in variants.items():
        save_file(sd, str(folder / f"{name}.safetensors"), metadata=meta)
    (folder / "garbage.safetensors").write_bytes(b"\x00" * 64)
    return folder


def test_bad_sample_inputs_are_one_line_errors_before_sampling(tmp_path, capsys, lora_files):
    """Each of these used to end in a traceback from diffusers (a missing --lora was even looked
    up on the Hub), or, for a LoRA none of whose tensors fit, in a sample without the LoRA."""
    embeds = {"d7": {"prompt_embeds": torch.randn(1, 8, 7)},
              "nan": {"prompt_embeds": torch.full((1, 8, 16), float("nan"))},
              "neg": {"prompt_embeds": torch.randn(1, 8, 16),
                      "negative_prompt_embeds": torch.randn(2, 8, 16)}}
    for name, tensors in embeds.items():
        save_file(tensors, str(tmp_path / f"{name}.safetensors"))
    out = ["--steps", "2", "--out", str(tmp_path / "o" / "s.safetensors")]
    cases = [
        (["--latent-frames", "2"], "--latent-frames/--latent-height/--latent-width: latent_shape "
                                   "(16, 2, 12, 20) has T = 2 latent frames; at least 3"),
        (["--latent-height", "3"], "h = 3 is not a multiple of the model's patch size"),
        (["--lora", str(tmp_path / "absent.safetensors")], "--lora: LoRA file not found"),
        (["--lora", str(lora_files / "garbage.safetensors")], "not a readable safetensors file"),
        (["--lora", str(lora_files / "other.safetensors")], "holds no LoRA tensors for the "
                                                            "transformer"),
        (["--lora", str(lora_files / "extra.safetensors")], "no_such_block.to_q.lora_A.weight "
                                                            "names no linear layer of this "
                                                            "model (WanTransformer3DModel)"),
        (["--lora", str(lora_files / "half.safetensors")], "holds 16 LoRA tensors for the "
                                                           "transformer but the adapter it "
                                                           "makes in this model has 32"),
        # Checked before diffusers, whose size report would come first, 35 lines of it (#34).
        (["--lora", str(lora_files / "shape.safetensors")], "lora_B.weight is [25, 2], expected "
                                                            "[24, r] for blocks.0.attn1.to_k"),
        (["--lora", str(lora_files / "nan.safetensors")], "lora_A.weight holds 48 NaN or "
                                                          "infinite values"),
        (["--lora", str(lora_files / "int.safetensors")], "expected floating-point tensors, "
                                                          "but 'transformer.blocks.0"),
        (["--prompt-embeds", str(tmp_path / "d7.safetensors")], "width D = 7 but the model's "
                                                                 "text_dim is 16"),
        (["--prompt-embeds", str(tmp_path / "nan.safetensors")], "prompt_embeds holds NaN"),
        (["--prompt-embeds", str(tmp_path / "neg.safetensors"), "--cfg", "3"],
         "negative_prompt_embeds must have the shape of prompt_embeds"),
    ]
    for argv, expected in cases:
        _one_line_error(capsys, ["sample"] + argv + out, expected)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("argv,expected", [
    (["--steps", "1"], "--guidance-start 1 and --guidance-end 1 (its default, --steps) must "
                       "satisfy 0 <= start < end <= --steps (1); --guidance-scale 0 turns"),
    (["--guidance-end", "20"], "--guidance-start 1 and --guidance-end 20 must satisfy"),
    (["--guidance-start", "5", "--guidance-end", "3"], "--guidance-start 5 and --guidance-end 3"),
], ids=["one-step", "end-past-steps", "end-before-start"])
def test_sample_checks_the_guided_steps_against_the_options_before_loading(argv, expected,
                                                                           capsys, tmp_path,
                                                                           monkeypatch):
    import vggrpo.cli.sample

    def no_load(*_):
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr(vggrpo.cli.sample, "load_transformer", no_load)
    _one_line_error(capsys, ["sample", *argv, "--out", str(tmp_path / "z.safetensors")], expected)
    assert not (tmp_path / "z.safetensors").exists()


def test_sample_with_one_step_and_no_guidance(tmp_path):
    assert main(["sample", "--steps", "1", "--guidance-scale", "0", "--out",
                 str(tmp_path / "z.safetensors")]) == 0
    assert load_file(tmp_path / "z.safetensors")["latents"].shape == (1, 16, 5, 12, 20)


def test_an_out_file_that_cannot_be_written_is_refused_before_any_work(tmp_path, capsys):
    """Before: each ran to the end, then a traceback from the atomic rename (IsADirectoryError)."""
    folder = tmp_path / "folder"
    folder.mkdir()
    (tmp_path / "file").write_text("x")
    under_file = str(tmp_path / "file" / "out.json")
    save_file({"latents": torch.randn(1, 16, 5, 12, 20)}, str(tmp_path / "z.safetensors"))
    for argv in (["sample", "--steps", "2"], ["bench", "--rounds", "1"],
                 ["reward", str(tmp_path / "z.safetensors")]):
        _one_line_error(capsys, argv + ["--out", str(folder)],
                        f"--out {folder} is a folder; expected the path of a file to write")
        _one_line_error(capsys, argv + ["--out", under_file],
                        f"{tmp_path / 'file'} is not a folder")
    _one_line_error(capsys, ["eval", str(tmp_path), "--out", str(tmp_path / "file" / "o")],
                    f"{tmp_path / 'file'} is not a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "folder", "z.safetensors"]
    assert not any(folder.iterdir())


def test_eval_refuses_too_few_frames_and_train_lgm_an_infinite_lr(tmp_path, capsys):
    _one_line_error(capsys, ["eval", str(tmp_path), "--out", str(tmp_path / "o"), "--frames",
                             "5"], "frames must be >= 9")
    # Before: trained the connector to NaN and saved it.
    _one_line_error(capsys, ["train-lgm", "--synthetic", "1", "--lr", "inf", "--out",
                             str(tmp_path / "t")], "StitchingConfig.lr must be a finite number")
    assert not (tmp_path / "o").exists() and not (tmp_path / "t").exists()


@pytest.mark.parametrize("body,expected", [
    ('model = 3\n', "model must be a string, got 3"),
    ('prompt_embeds = 7\n', "prompt_embeds must be a string, got 7"),
    ('checkpoint_every = "abc"\n', "checkpoint_every must be an int >= 0"),
    ('checkpoint_every = -2\n', "checkpoint_every must be an int >= 0"),
    ('grpo = 5\n', "grpo must be a table, got 5"),
    ('[reward]\nflow_treshold = 0.2\n', "unknown keys ['flow_treshold'] in [reward]"),
    ('[reward]\nweights = 5\n', "weights must map reward names to numbers, got 5"),
    ('[reward]\nweights = { geo = nan }\n', "weights must be finite numbers"),
    ('[reward]\ncoverage = 2.0\n', "coverage must be None (off) or a min_coverage in (0, 1], "
                                    "got 2.0"),
    ('[reward]\nweights = { coverage = 2.0 }\n', "unknown reward names ['coverage']"),
    ('[reward]\nweights = { geo = 1.0 }\n[grpo]\nreward_weights = { geo = 2.0 }\n',
     "[reward] weights {'geo': 1.0} and [grpo] reward_weights {'geo': 2.0} differ; GRPO uses "
     "one: give reward_weights only"),
    ('[grpo]\nlatent_shape = [16, 2, 12, 20]\n', "T = 2 latent frames; at least 3"),
])
def test_config_values_of_the_wrong_kind_are_one_line_errors(body, expected, tmp_path, capsys):
    """Before, a wrong kind was a traceback, a negative checkpoint_every checkpointed at odd
    steps, and a misspelt [reward] key was ignored (the default used instead)."""
    config = tmp_path / "c.toml"
    body = body if body.startswith("model") else 'model = "tiny"\n' + body
    if "grpo" not in body:  # one short step, should a check ever let the run start
        body += ("[grpo]\nsteps = 1\ngroup_size = 2\nnum_inference_steps = 2\n"
                 "sde_window = [0, 1]\n")
    config.write_text(body)
    _one_line_error(capsys, ["train", "--config", str(config), "--out", str(tmp_path / "o")],
                    expected)
    assert not (tmp_path / "o").exists()
