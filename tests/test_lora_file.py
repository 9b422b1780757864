"""The GRPO LoRA file loads at its trained strength through every loader a user reaches for:
diffusers' pipeline, diffusers' transformer, vggrpo's own loader and ``vggrpo sample --lora``.

Trained with ``lora_alpha != lora_rank`` (r=2 with alpha 8, a power-of-two scale, and alpha 6, a
scale of 3 that float32 cannot undo exactly), which is where a file read with ``lora_alpha = r``
goes wrong.
"""

import json
import warnings

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from vggrpo.grpo import LORA_FILE
from vggrpo.lora_file import fold_lora_scale, load_lora, lora_metadata, read_lora

from grpo_setup import make_trainer, prompt_embeds, tiny_transformer


def _output(model):
    x = torch.randn(1, 16, 5, 12, 20, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        return model(hidden_states=x, timestep=torch.tensor([500.0]),
                     encoder_hidden_states=prompt_embeds()[:1], return_dict=False)[0]


@pytest.fixture(scope="module", params=[8.0, 6.0], ids=["alpha8", "alpha6"])
def trained(request, tmp_path_factory):
    """A trainer after 2 steps with r=2 and the given alpha, its checkpoint folder, and the
    outputs of the trained model and of the base model on one input."""
    folder = tmp_path_factory.mktemp("lora")
    trainer = make_trainer(lora_rank=2, lora_alpha=request.param, lr=5e-2)
    trainer.train(2, out_dir=folder, progress=False)
    ours = _output(trainer.transformer)
    trainer.transformer.disable_adapters()
    base = _output(trainer.transformer)
    trainer.transformer.enable_adapters()
    return trainer, folder, ours, base


def _close(theirs, ours, base):
    # float32 rounding of one extra product per LoRA layer, against a LoRA effect ~1e-1.
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-6)
    assert (ours - base).abs().max() > 1e-2  # the adapter does change the output


def test_the_file_has_diffusers_metadata_layout(trained):
    trainer, folder, _, _ = trained
    with safe_open(str(folder / LORA_FILE), framework="pt") as f:
        header = f.metadata()
        keys = list(f.keys())
    assert header["format"] == "pt"
    meta = json.loads(header["lora_adapter_metadata"])
    # Flat, every key prefixed "transformer.", as diffusers' save_lora_weights writes it.
    assert meta and all(k.startswith("transformer.") for k in meta)
    assert meta["transformer.r"] == 2
    assert meta["transformer.lora_alpha"] == 2  # the scale is in lora_B (folded)
    assert meta["transformer.target_modules"] == ["to_k", "to_out.0", "to_q", "to_v"]
    assert keys and all(k.startswith("transformer.") for k in keys)
    # lora_B is the trained B times alpha / r; lora_A as trained.
    own = trainer.lora_state_dict()
    scale = trainer.config.lora_alpha / trainer.config.lora_rank
    tensors = load_file(folder / LORA_FILE)
    for key, value in own.items():
        expected = value * scale if ".lora_B." in key else value
        assert torch.equal(tensors[f"transformer.{key}"], expected), key


def test_wan_pipeline_load_lora_weights(trained):
    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline

    from helpers import tiny_vae

    _, folder, ours, base = trained
    pipe = WanPipeline(tokenizer=None, text_encoder=None, transformer=tiny_transformer(),
                       vae=tiny_vae(0), scheduler=FlowMatchEulerDiscreteScheduler())
    pipe.load_lora_weights(str(folder))
    _close(_output(pipe.transformer), ours, base)


def test_transformer_load_lora_adapter_with_a_path(trained):
    _, folder, ours, base = trained
    fresh = tiny_transformer()
    # diffusers reads no metadata on this route (it takes lora_alpha = r): the folded scale is
    # what makes it right.
    fresh.load_lora_adapter(str(folder / LORA_FILE), prefix="transformer")
    _close(_output(fresh), ours, base)


def test_vggrpo_load_lora(trained):
    _, folder, ours, base = trained
    fresh = tiny_transformer()
    config = load_lora(fresh, folder / LORA_FILE)
    assert config["r"] == 2 and config["lora_alpha"] == 2
    _close(_output(fresh), ours, base)


def test_reading_the_unfolded_weights_at_scale_one_would_be_wrong(trained):
    """What the defect was: the trained B at lora_alpha = r. The tests above could fail."""
    trainer, folder, ours, _ = trained
    fresh = tiny_transformer()
    raw = {f"transformer.{k}": v for k, v in trainer.lora_state_dict().items()}
    fresh.load_lora_adapter(raw, prefix="transformer")
    assert (_output(fresh) - ours).abs().max() > 1e-2


def test_sample_cli_with_the_lora_is_the_trained_model(trained, tmp_path):
    from diffusers import FlowMatchEulerDiscreteScheduler

    from vggrpo.cli import main
    from vggrpo.sampling import sample, scheduler_sigmas, wan_velocity

    trainer, folder, _, _ = trained
    out = tmp_path / "s.safetensors"
    assert main(["sample", "--lora", str(folder / LORA_FILE), "--steps", "3",
                 "--guidance-scale", "0", "--out", str(out)]) == 0
    got = load_file(out)["latents"]
    # The same sampling written out with the trainer's own model: the CLI's seeded embeddings
    # (seed 0, [1,8,text_dim]) and noise (--seed 0), 3 steps of shift 3.
    embeds = torch.randn(1, 8, 16, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(1, 16, 5, 12, 20, generator=torch.Generator().manual_seed(0))
    sigmas = scheduler_sigmas(FlowMatchEulerDiscreteScheduler(shift=3.0), 3)
    with torch.no_grad():
        ours = sample(wan_velocity(trainer.transformer, embeds), noise, sigmas).final
        trainer.transformer.disable_adapters()
        base = sample(wan_velocity(trainer.transformer, embeds), noise, sigmas).final
        trainer.transformer.enable_adapters()
    torch.testing.assert_close(got, ours, rtol=1e-5, atol=1e-5)
    assert (ours - base).abs().max() > 1e-2


def test_resume_refuses_a_lora_file_from_another_step(tmp_path):
    trainer = make_trainer(lora_rank=2, lora_alpha=6.0)
    trainer.train(1, out_dir=tmp_path / "one", progress=False)
    trainer.train(1, out_dir=tmp_path / "two", progress=False)
    (tmp_path / "one" / "checkpoint-1" / LORA_FILE).write_bytes(
        (tmp_path / "two" / "checkpoint-2" / LORA_FILE).read_bytes())
    with pytest.raises(ValueError, match=f"its {LORA_FILE} is not the adapter its "
                                         "trainer_state.pt holds"):
        make_trainer(lora_rank=2, lora_alpha=6.0).load_checkpoint(tmp_path / "one")


def test_a_file_of_vggrpo_0_1_0_loads_at_its_trained_strength(trained, tmp_path):
    """Unfolded weights, with the metadata nested under "transformer" (diffusers sees none)."""
    trainer, _, ours, base = trained
    state = {f"transformer.{k}": v.contiguous() for k, v in trainer.lora_state_dict().items()}
    nested = {"transformer": {"r": 2, "lora_alpha": trainer.config.lora_alpha,
                              "target_modules": ["to_k", "to_out.0", "to_q", "to_v"],
                              "use_dora": False, "lora_bias": False}}
    old = tmp_path / "old.safetensors"
    save_file(state, str(old), metadata={"format": "pt",
                                         "lora_adapter_metadata": json.dumps(nested)})
    tensors, config = read_lora(old)
    assert config["lora_alpha"] == trainer.config.lora_alpha and len(tensors) == len(state)
    fresh = tiny_transformer()
    load_lora(fresh, old)
    _close(_output(fresh), ours, base)


def test_a_file_without_metadata_loads_at_scale_one_with_a_warning(trained, tmp_path):
    trainer, folder, ours, base = trained
    bare = tmp_path / "bare.safetensors"
    save_file(load_file(folder / LORA_FILE), str(bare))  # folded weights, no header
    fresh = tiny_transformer()
    with pytest.warns(UserWarning, match="carries no adapter metadata: loading it with "
                                         "lora_alpha = r"):
        load_lora(fresh, bare)
    _close(_output(fresh), ours, base)  # folded, so scale 1 is right here


def test_a_lora_that_does_not_fit_leaves_the_model_as_it_was(trained, tmp_path):
    _, folder, _, _ = trained
    tensors = load_file(folder / LORA_FILE)
    half = tmp_path / "half.safetensors"
    with safe_open(str(folder / LORA_FILE), framework="pt") as f:
        meta = f.metadata()
    save_file({k: v for k, v in tensors.items() if "lora_A" in k}, str(half), metadata=meta)
    fresh = tiny_transformer()
    before = _output(fresh)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # diffusers warns about the missing lora_B
        with pytest.raises(ValueError, match="holds 16 LoRA tensors for the transformer but the "
                                             "adapter it makes in this model has 32"):
            load_lora(fresh, half)
    assert not any("lora_" in n for n, _ in fresh.named_parameters())
    assert torch.equal(_output(fresh), before)


def test_fold_and_metadata_refuse_what_they_cannot_fold():
    from peft import LoraConfig

    sd = {"a.lora_A.weight": torch.ones(2, 3), "a.lora_B.weight": torch.ones(3, 2)}
    rs = LoraConfig(r=4, lora_alpha=8, target_modules=["a"], use_rslora=True)
    assert torch.equal(fold_lora_scale(sd, rs)["a.lora_B.weight"], torch.full((3, 2), 4.0))
    assert json.loads(lora_metadata(rs)["lora_adapter_metadata"])["transformer.use_rslora"] is False
    for kwargs, match in (({"use_dora": True}, "use_dora is set"),
                          ({"alpha_pattern": {"a": 4}}, "alpha_pattern is set")):
        with pytest.raises(ValueError, match=match):
            fold_lora_scale(sd, LoraConfig(r=2, lora_alpha=8, target_modules=["a"], **kwargs))
