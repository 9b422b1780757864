"""What a hostile user gives the commands, each refused with one line ``error: ...`` and exit
code 2, before any work (issue #34, items 7-10; each case is a reproducer from its fuzzing)."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from vggrpo.cli import main
from vggrpo.defaults import load_default_lgm, load_tiny_backbone
from vggrpo.lgm import LatentGeometryModel


def _one_line(capsys, argv, expected):
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = [line for line in captured.err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0], err
    assert "usage:" not in captured.err and "Traceback" not in captured.err
    return err[0]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile")
    save_file({"latents": torch.randn(1, 16, 5, 12, 20)}, str(folder / "z.safetensors"))
    return folder


def _lgm_folder(root: Path, name: str, edit=None) -> str:
    folder = root / name
    load_default_lgm().save_pretrained(folder)
    if edit is not None:
        config = json.loads((folder / "config.json").read_text())
        edit(config)
        (folder / "config.json").write_text(json.dumps(config))
    return str(folder)


def _set(*path_and_value):
    *path, value = path_and_value

    def edit(config):
        for key in path[:-1]:
            config = config[key]
        config[path[-1]] = value
    return edit


@pytest.mark.parametrize("edit,expected", [
    (_set("backbone", "tiny_vggt"), '"backbone" must be an object {"type": name'),
    (_set("lora", "yes"), '"lora" must be null or {"rank": int >= 1'),
    (_set("lora", {"rank": 2}), "got {'rank': 2}"),
    (_set("lgm", "latent_channels", 10**12), "the connector of"),
    (_set("lgm", "kernel_size", [5000, 5000, 5000]), "more than this machine's memory"),
    (_set("backbone", "config", "dim", 10**6), "the tiny backbone of"),
    (_set("backbone", "config", "patch_size", 2**40), "its sizes cannot be built"),
], ids=["backbone-string", "lora-yes", "lora-rank-only", "channels-1e12", "kernel-5000^3",
        "dim-1e6", "patch-2^40"])
def test_a_tampered_lgm_config_is_one_line(world, tmp_path, capsys, edit, expected):
    lgm = _lgm_folder(tmp_path, "lgm", edit)
    _one_line(capsys, ["reward", "--lgm", lgm, str(world / "z.safetensors")], expected)


def test_a_deeply_nested_lgm_config_is_one_line(world, tmp_path, capsys):
    lgm = _lgm_folder(tmp_path, "lgm")
    (Path(lgm) / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    _one_line(capsys, ["reward", "--lgm", lgm, str(world / "z.safetensors")],
              "is nested too deeply to be a config")


def test_an_lgm_lora_file_of_other_shapes_is_one_line(world, tmp_path, capsys):
    def with_lora(config):
        config["lora"] = {"rank": 2, "alpha": 2.0, "target_modules": ["qkv"]}

    lgm = Path(_lgm_folder(tmp_path, "lgm", with_lora))
    # The adapter shapes a rank-2 "qkv" LoRA has, on the default's plain backbone (the default
    # LGM carries its own rank-16 adapters).
    model = LatentGeometryModel(load_tiny_backbone(), load_default_lgm().config)
    model.add_lora(2, 2.0, ["qkv"])
    save_file({k: torch.zeros(v.shape[0] + 1, v.shape[1])
               for k, v in model.lora_state_dict().items()}, str(lgm / "lora.safetensors"))
    _one_line(capsys, ["reward", "--lgm", str(lgm), str(world / "z.safetensors")],
              "lora_A.default.weight is [3, 96], the config's adapter [2, 96]")


def _png_header(width: int, height: int) -> bytes:
    """A small PNG file that declares ``width x height`` pixels."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 10)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("side,expected", [
    (30000, "could be decompression bomb"),
    (10000, "declares 10000x10000 pixels, more than the 67108864 a frame may have"),
])
def test_a_frame_declaring_a_huge_image_is_refused_from_its_header(tmp_path, capsys, side,
                                                                   expected):
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(17):
        (frames / f"{i:03d}.png").write_bytes(_png_header(side, side))
    _one_line(capsys, ["reward", str(frames)], expected)


@pytest.mark.parametrize("files,expected", [
    ({"config.json": json.dumps({"z_dim": "sixteen"})},
     "z_dim must be a positive int, got 'sixteen'"),
    ({"config.json": json.dumps({}), "diffusion_pytorch_model.bin": "x"},
     "holds no .safetensors weights (it has ['diffusion_pytorch_model.bin']: pickle files"),
], ids=["z_dim-string", "pickle-bin"])
def test_a_bad_vae_folder_is_one_line(world, tmp_path, capsys, files, expected):
    vae = tmp_path / "vae"
    vae.mkdir()
    for name, text in files.items():
        (vae / name).write_text(text)
    frames = tmp_path / "frames"
    frames.mkdir()
    _one_line(capsys, ["reward", "--vae", str(vae), str(frames)], expected)


def test_vae_weights_of_integer_dtype_are_refused(tmp_path):
    from vggrpo.vae import load_vae_folder

    (tmp_path / "config.json").write_text(json.dumps({"z_dim": 16}))
    save_file({"encoder.conv_in.weight": torch.zeros(2, dtype=torch.int32)},
              str(tmp_path / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(ValueError, match="expected floating-point tensors, but "
                                         "'encoder.conv_in.weight' is I32"):
        load_vae_folder(tmp_path)


GRPO = ('model = "tiny"\n[grpo]\ngroup_size = 2\nnum_inference_steps = 3\n'
        'sde_window = [0, 2]\nsteps = 1\nlora_rank = 2\n')


@pytest.mark.parametrize("extra,expected", [
    ('[reward]\nflow_threshold = "0.1"\n', "flow_threshold must be a finite number >= 0 (world "
                                           "units), got '0.1'"),
    ("[reward]\nflow_threshold = true\n", "got True"),
    ("[reward]\nflow_threshold = inf\n", "got inf"),
    ("[reward]\ntopk = true\n", "topk must be a positive int, got True"),
    ("same_noise_per_group = \"no\"\n", "same_noise_per_group must be true or false, got 'no'"),
    ("seed = 1.5\n", "GRPOConfig.seed must be an int, got 1.5"),
    ("latent_shape = [16, 5, 100000, 100000]\n", "more than the model's rope_max_seq_len"),
], ids=["flow-string", "flow-bool", "flow-inf", "topk-bool", "noise-string", "seed-float",
        "latent-1e5"])
def test_config_values_are_refused_up_front_not_coerced(tmp_path, capsys, extra, expected):
    # [grpo] keys go into the [grpo] table; a [reward] table comes after it.
    text = GRPO + extra
    (tmp_path / "grpo.toml").write_text(text)
    _one_line(capsys, ["train", "--config", str(tmp_path / "grpo.toml"), "--out",
                       str(tmp_path / "run")], expected)
    assert not (tmp_path / "run").exists()


def test_prompt_embeddings_without_prompts_are_one_line(tmp_path, capsys):
    save_file({"prompt_embeds": torch.zeros(0, 8, 16)}, str(tmp_path / "p.safetensors"))
    _one_line(capsys, ["sample", "--prompt-embeds", str(tmp_path / "p.safetensors"), "--out",
                       str(tmp_path / "s.safetensors")],
              "prompt_embeds must hold at least one prompt of at least one token [P,L,D], got "
              "[0, 8, 16]")


def test_a_yaml_alias_bomb_is_refused_at_its_first_alias(tmp_path, capsys):
    lines = ['a: &a ["x","x","x","x","x","x","x","x","x"]']
    for i in range(8):
        prev, name = chr(97 + i), chr(98 + i)
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    lines.append("model: *i")
    (tmp_path / "bomb.yaml").write_text("\n".join(lines) + "\n")
    assert len((tmp_path / "bomb.yaml").read_bytes()) < 600
    message = _one_line(capsys, ["train", "--config", str(tmp_path / "bomb.yaml"), "--out",
                                 str(tmp_path / "run")],
                        "line 2: YAML aliases (*name) are not allowed in a config")
    assert len(message) < 300


def test_a_yaml_python_tag_is_one_line(tmp_path, capsys):
    (tmp_path / "evil.yaml").write_text("model: !!python/object/apply:os.system ['echo hi']\n")
    _one_line(capsys, ["train", "--config", str(tmp_path / "evil.yaml")],
              "could not determine a constructor for the tag")


@pytest.mark.parametrize("argv,expected", [
    (["sample", "--steps", "x"],
     "error: vggrpo sample: argument --steps: expected a positive int, got 'x' (see vggrpo "
     "sample --help)"),
    (["sample"], "the following arguments are required: --out"),
    (["reward", "--flow-threshold", "-1", "x.mp4"],
     "argument --flow-threshold: expected a finite number >= 0, got '-1'"),
    (["train-lgm", "--steps"], "error: vggrpo train-lgm: "),
], ids=["bad-int", "missing", "flow-negative", "train-lgm"])
def test_parser_errors_are_one_line_without_the_usage_block(capsys, argv, expected):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err


def test_train_lgm_refuses_a_file_as_out_before_training(world, capsys):
    _one_line(capsys, ["train-lgm", "--synthetic", "1", "--out", str(world / "z.safetensors")],
              "exists and is not a folder; expected the folder to write the LGM")


def test_a_pickle_refusal_is_one_line(tmp_path):
    from vggrpo import _io

    torch.save({"a": json.dumps}, tmp_path / "state.pt")  # a global weights_only refuses
    with pytest.raises(ValueError) as err:
        _io.load_state(tmp_path / "state.pt")
    assert "could not be loaded safely" in str(err.value) and "\n" not in str(err.value)
