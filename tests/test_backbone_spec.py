"""--backbone SPEC (vggt:DIR, any4d:DIR, MODULE:FUNCTION) on reward, train, sample and train-lgm,
end to end: stitch an LGM to a real-kind backbone from the command line, then use it there.

The real VGGT and Any4D cannot be installed here. ``vggt:DIR`` runs on a stand-in ``vggt`` package
(tests/vggt_standin.py). ``any4d:DIR`` runs on a stand-in checkout of Any4D: an ``any4d`` package
whose ``init_model`` builds tests/any4d_standin.py's network, and Hydra configs laid out as
Any4D's, composed with the same overrides as the real one.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from vggrpo.cli import main
from vggrpo.data import make_scene
from vggrpo.geometry.backbone_spec import load_backbone, parse_backbone_spec
from vggrpo.lgm import LatentGeometryModel
from vggrpo.vae import encode_video

from helpers import tiny_vae
from vggt_standin import write_vggt_package

# Videos of 9 frames at 112x112 give latents [B,16,3,14,14], tokens 7x7, depth maps 98x98 for
# the patch-14 stand-ins.
SIZE = ["--frames", "9", "--height", "112", "--width", "112"]
STITCH = ["--synthetic", "2", "--epochs", "1", "--batch-size", "2", *SIZE]


def _one_line_error(capsys, argv, expected):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    assert expected in err, err


@pytest.fixture(scope="module")
def latents(tmp_path_factory):
    video = make_scene(batch=2, frames=9, height=112, width=112, trajectory="orbit",
                       moving_objects=1, seed=8).video
    path = tmp_path_factory.mktemp("latents") / "z.safetensors"
    with torch.no_grad():
        save_file({"latents": encode_video(tiny_vae(0), video)}, str(path))
    return path


def _scores(path):
    return [(row["motion"], row["geo"]) for row in json.loads(Path(path).read_text())["rows"]]


def _python_scores(lgm_dir, spec, latents):
    from vggrpo import LatentGeometryReward

    lgm = LatentGeometryModel.from_pretrained(lgm_dir, backbone=load_backbone(spec))
    with torch.no_grad():
        r = LatentGeometryReward(lgm)(load_file(latents)["latents"])
    return list(zip(r["motion"].tolist(), r["geo"].tolist()))


# --------------------------------------------------------------------------------------------------
# any4d:DIR
# --------------------------------------------------------------------------------------------------

ANY4D_MODELS = '''
import torch


def init_model(model_str, model_config):
    """As Any4D's: the model's class by name, built from the resolved config."""
    from omegaconf import OmegaConf

    from any4d_standin import Any4DStandIn
    from vggrpo.data import make_scene

    cfg = OmegaConf.to_container(model_config, resolve=True)
    assert model_str == "any4d", model_str
    # The overrides vggrpo passes took effect, as in Any4D's own demo.
    assert cfg["encoder_config"]["uses_torch_hub"] is False
    assert cfg["encoder_config"]["torch_hub_pretrained"] is False
    assert cfg["geometric_input_config"]["images_prob"] == 1
    s = cfg["scene"]
    scene = make_scene(batch=1, frames=s["frames"], height=s["size"], width=s["size"],
                       trajectory="orbit", moving_objects=1, seed=s["seed"])
    torch.manual_seed(0)
    return Any4DStandIn(scene, gain=0.5)
'''

ANY4D_CONFIGS = {
    "train.yaml": "defaults:\n  - machine: psc\n  - model: default\n  - _self_\n\n"
                  "output_dir: out\n",
    "machine/local.yaml": "root_data_dir: /nonexistent\n",
    "model/default.yaml": "model_str: null\n",
    "model/any4d.yaml": textwrap.dedent("""\
        defaults:
          - default
          - encoder: dinov2_large
          - task: default

        model_str: "any4d"
        model_config:
          name: "any4d"
          encoder_config: ${model.encoder}
          geometric_input_config: ${model.task}
          scene: {frames: 3, size: 98, seed: 5}
        """),
    "model/encoder/dinov2_large.yaml": "data_norm_type: dinov2\nuses_torch_hub: True\n",
    "model/task/default.yaml": "images_prob: 0.5\n",
    "model/task/images_only.yaml": "images_prob: 1\n",
}


@pytest.fixture(scope="module")
def any4d_checkout(tmp_path_factory):
    """A folder laid out as an Any4D checkout after its README's set-up: the package (put on
    sys.path, as `pip install -e .` does), configs/, and checkpoints/any4d_4v_combined.pth."""
    import sys

    from any4d_standin import Any4DStandIn

    root = tmp_path_factory.mktemp("Any4D")
    (root / "any4d" / "models").mkdir(parents=True)
    (root / "any4d" / "__init__.py").write_text("")
    (root / "any4d" / "models" / "__init__.py").write_text(ANY4D_MODELS)
    for name, text in ANY4D_CONFIGS.items():
        (root / "configs" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "configs" / name).write_text(text)
    (root / "checkpoints").mkdir()
    scene = make_scene(batch=1, frames=3, height=98, width=98, trajectory="orbit",
                       moving_objects=1, seed=5)
    torch.manual_seed(1)  # other weights than init_model's: loading them must show
    trained = Any4DStandIn(scene, gain=0.5)
    torch.save({"model": trained.state_dict(), "epoch": 3},
               root / "checkpoints" / "any4d_4v_combined.pth")
    sys.path.insert(0, str(root))
    yield root, trained
    sys.path.remove(str(root))
    for name in [n for n in sys.modules if n == "any4d" or n.startswith("any4d.")]:
        del sys.modules[name]


def test_any4d_spec_builds_the_network_from_its_configs_and_loads_the_checkpoint(
        any4d_checkout):
    root, trained = any4d_checkout
    backbone = load_backbone(f"any4d:{root}")
    assert type(backbone).__name__ == "Any4DAdapter" and not backbone.training
    for name, value in trained.state_dict().items():
        assert torch.equal(backbone.model.state_dict()[name], value), name
    other = root / "other.pth"
    torch.save({"model": {**trained.state_dict(), "gain": torch.tensor(0.25)}}, other)
    assert float(load_backbone(f"any4d:{root},checkpoint={other}").model.gain.detach()) == 0.25


def test_train_lgm_then_reward_with_any4d(any4d_checkout, latents, tmp_path, capsys):
    root, _ = any4d_checkout
    spec = f"any4d:{root}"
    assert main(["train-lgm", "--backbone", spec, *STITCH, "--out", str(tmp_path / "s")]) == 0
    lgm_dir = tmp_path / "s" / "lgm"
    config = json.loads((lgm_dir / "config.json").read_text())
    assert config["backbone"] == {"type": "Any4DAdapter"} and config["lgm"]["token_dim"] == 8
    assert not (lgm_dir / "backbone.safetensors").exists()  # its weights stay in the checkout
    out = tmp_path / "scores.json"
    assert main(["reward", str(latents), "--lgm", str(lgm_dir), "--backbone", spec,
                 "--out", str(out)]) == 0
    got = _scores(out)
    assert len(got) == 2 and got == _python_scores(lgm_dir, spec, latents)
    capsys.readouterr()
    # The LGM does not hold the backbone: without --backbone, one line says what to pass.
    _one_line_error(capsys, ["reward", str(latents), "--lgm", str(lgm_dir)],
                    "was stitched to a Any4DAdapter backbone, whose weights it does not hold: "
                    "pass that backbone (backbone= in Python; on the command line --backbone")


# --------------------------------------------------------------------------------------------------
# vggt:DIR
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vggt_checkpoint(tmp_path_factory):
    import sys

    site = write_vggt_package(tmp_path_factory.mktemp("site"))
    sys.path.insert(0, str(site))
    from vggt.models.vggt import VGGT

    torch.manual_seed(1)
    folder = tmp_path_factory.mktemp("VGGT-1B")
    save_file(VGGT().state_dict(), str(folder / "model.safetensors"))
    yield folder
    sys.path.remove(str(site))
    for name in [n for n in sys.modules if n == "vggt" or n.startswith("vggt.")]:
        del sys.modules[name]


@pytest.fixture(scope="module")
def vggt_lgm(vggt_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("stitch")
    assert main(["train-lgm", "--backbone", f"vggt:{vggt_checkpoint}", *STITCH,
                 "--out", str(out)]) == 0
    return out / "lgm"


def test_sample_with_a_vggt_lgm_guides_through_the_real_kind_backbone(vggt_checkpoint, vggt_lgm,
                                                                      tmp_path):
    assert json.loads((vggt_lgm / "config.json").read_text())["backbone"] == \
        {"type": "VGGTAdapter"}
    spec = f"vggt:{vggt_checkpoint}"
    common = ["sample", "--lgm", str(vggt_lgm), "--backbone", spec, "--steps", "3",
              "--latent-height", "14", "--latent-width", "14", "--latent-frames", "3"]
    assert main(common + ["--out", str(tmp_path / "g.safetensors")]) == 0
    assert main(common + ["--guidance-scale", "0", "--out", str(tmp_path / "u.safetensors")]) == 0
    guided = load_file(tmp_path / "g.safetensors")["latents"]
    plain = load_file(tmp_path / "u.safetensors")["latents"]
    assert guided.shape == (1, 16, 3, 14, 14)
    assert (guided - plain).abs().max() > 1e-4  # the backbone's reward gradient did act


def test_train_takes_the_backbone_from_its_config(vggt_checkpoint, vggt_lgm, tmp_path):
    config = tmp_path / "grpo.toml"
    config.write_text(f'model = "tiny"\nlgm = "{vggt_lgm}"\nbackbone = "vggt:{vggt_checkpoint}"\n'
                      '\n[grpo]\ngroup_size = 2\nprompts_per_step = 1\nnum_inference_steps = 3\n'
                      'sde_window = [0, 1]\nsteps = 1\nlora_rank = 2\nlora_alpha = 2.0\n'
                      'latent_shape = [16, 3, 14, 14]\n')
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "run")]) == 0
    history = json.loads((tmp_path / "run" / "history.json").read_text())["history"]
    assert len(history) == 1 and all(k in history[0] for k in ("reward_motion", "reward_geo"))


def test_a_backbone_of_another_kind_than_the_lgm_s_is_refused(vggt_lgm, any4d_checkout, latents,
                                                              capsys):
    root, _ = any4d_checkout
    _one_line_error(capsys, ["reward", str(latents), "--lgm", str(vggt_lgm), "--backbone",
                             f"any4d:{root}"],
                    "was stitched to a VGGTAdapter backbone, not to the Any4DAdapter given")


# --------------------------------------------------------------------------------------------------
# MODULE:FUNCTION
# --------------------------------------------------------------------------------------------------

USER_MODULE = '''
"""A user's own backbone: a class of theirs around vggrpo's tiny one."""
import torch

from helpers import OwnBackbone
from vggrpo.geometry import TinyVGGT, TinyVGGTConfig


class MyBackbone(OwnBackbone):
    pass


def build():
    torch.manual_seed(3)
    return MyBackbone(TinyVGGT(TinyVGGTConfig(dim=32, num_heads=2, encoder_depth=1,
                                              aggregator_depth=1, head_channels=8)))


def not_a_backbone():
    return 42


raise_on_call = None
'''


def test_a_user_module_from_the_current_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mybackbone.py").write_text(USER_MODULE)
    try:
        stitch = ["--synthetic", "2", "--epochs", "1", "--batch-size", "2", "--frames", "9",
                  "--height", "96", "--width", "160"]
        assert main(["train-lgm", "--backbone", "mybackbone:build", *stitch,
                     "--out", "s"]) == 0
        lgm_dir = tmp_path / "s" / "lgm"
        assert json.loads((lgm_dir / "config.json").read_text())["backbone"] == \
            {"type": "MyBackbone"}
        video = make_scene(batch=1, frames=9, height=96, width=160, seed=2).video
        with torch.no_grad():
            save_file({"latents": encode_video(tiny_vae(0), video)}, "z.safetensors")
        assert main(["reward", "z.safetensors", "--lgm", str(lgm_dir), "--backbone",
                     "mybackbone:build", "--out", "scores.json"]) == 0
        assert _scores("scores.json") == _python_scores(lgm_dir, "mybackbone:build",
                                                        "z.safetensors")
        capsys.readouterr()
        # Each way a spec can be wrong is one line naming what was expected.
        cases = [
            ("foo", "backbone spec 'foo': expected vggt:DIR, any4d:DIR[,checkpoint=PATH] or "
                    "MODULE:FUNCTION"),
            ("any4d:x,flavour=y", "backbone spec 'any4d:x,flavour=y': unknown option "
                                  "'flavour=y'"),
            ("no_such_module:build", "module 'no_such_module' does not import "
                                     "(ModuleNotFoundError"),
            ("mybackbone:nope", "module 'mybackbone' has no function 'nope'"),
            ("mybackbone:raise_on_call", "module 'mybackbone' has no function 'raise_on_call'"),
            ("mybackbone:not_a_backbone", "backbone spec 'mybackbone:not_a_backbone' gave a "
                                          "int, not a geometry backbone: it lacks patch_size, "
                                          "dim, stitch_layer, blocks, embed, forward_tokens, "
                                          "heads"),
            (f"vggt:{tmp_path / 'absent'}", "does not exist"),
            (f"any4d:{tmp_path / 'absent'}", "Any4D folder"),
        ]
        for spec, expected in cases:
            _one_line_error(capsys, ["reward", "z.safetensors", "--lgm", str(lgm_dir),
                                     "--backbone", spec], expected)
            _one_line_error(capsys, ["train-lgm", "--backbone", spec, *stitch, "--out", "t"],
                            expected)
        _one_line_error(capsys, ["reward", "z.safetensors", "--backbone", "mybackbone:build"],
                        "--backbone is for an LGM folder stitched to a real backbone")
    finally:
        import sys

        sys.modules.pop("mybackbone", None)


def test_parse_backbone_spec():
    assert parse_backbone_spec("vggt:/w/VGGT-1B") == ("vggt", "/w/VGGT-1B", {})
    assert parse_backbone_spec("any4d:/w/Any4D,checkpoint=/c/a.pth") == \
        ("any4d", "/w/Any4D", {"checkpoint": "/c/a.pth"})
    assert parse_backbone_spec("pkg.sub:make_backbone") == \
        ("callable", "pkg.sub:make_backbone", {})
    for bad in ("", "vggt:", "pkg:", ":fn", "pkg:fn:x", "vggt:x,checkpoint=y"):
        with pytest.raises(ValueError, match="backbone spec"):
            parse_backbone_spec(bad)


def test_the_docs_real_backbone_recipe_runs_at_toy_size(vggt_checkpoint, tmp_path, monkeypatch):
    """docs/lgm.md's recipe, line for line, with its paths pointing at toy stand-ins: a folder in
    the diffusers Wan layout, the stand-in VGGT checkpoint, two videos, toy sizes, one epoch."""
    import re
    import shlex

    from vggrpo.data import write_video
    from vggrpo.defaults import tiny_wan_transformer

    text = (Path(__file__).resolve().parents[1] / "docs" / "lgm.md").read_text(encoding="utf-8")
    section = text.split("## Real backbones", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"^```bash\n(.*?)^```", section, re.S | re.M)
    lines = [ln for ln in block.replace("\\\n", " ").splitlines() if ln.startswith("vggrpo ")]
    assert [ln.split()[1] for ln in lines] == ["train-lgm", "reward", "sample"]

    monkeypatch.chdir(tmp_path)
    pipe = tmp_path / "Wan-Diffusers"
    tiny_wan_transformer(0).save_pretrained(pipe / "transformer")
    tiny_vae(0).save_pretrained(pipe / "vae")
    (pipe / "model_index.json").write_text(json.dumps({"_class_name": "WanPipeline"}))
    for seed in (1, 2):
        write_video(tmp_path / "my_videos" / f"v{seed}.mp4",
                    make_scene(1, 17, 112, 112, trajectory="orbit", seed=seed).video[0])
    write_video(tmp_path / "clip.mp4", make_scene(1, 17, 112, 112, seed=3).video[0])
    save_file({"prompt_embeds": torch.randn(1, 8, 16)}, "prompts.safetensors")
    swaps = {"/data/Wan2.1-T2V-1.3B-Diffusers": str(pipe), "/data/VGGT-1B": str(vggt_checkpoint),
             "--height 480": "--height 112", "--width 832": "--width 112",
             "--latent-frames 21": "--latent-frames 5", "--latent-height 60": "--latent-height 14",
             "--latent-width 104": "--latent-width 14"}
    for line in lines:
        for old, new in swaps.items():
            line = line.replace(old, new)
        argv = shlex.split(line)[1:]
        if argv[0] == "train-lgm":
            argv += ["--epochs", "1"]
        assert main(argv) == 0, line
    assert load_file("z.safetensors")["latents"].shape == (1, 16, 5, 14, 14)
