"""The LGM: VAE side, connector, stitching training, files, LoRA, bad input."""

import json
import types

import pytest
import torch
import torch.nn.functional as F

from vggrpo import _io
from vggrpo.data.synthetic import make_scene
from vggrpo.geometry import TinyVGGT, TinyVGGTConfig
from vggrpo.lgm import LatentConnector, LatentGeometryModel, LGMConfig
from vggrpo.schedules import warmup_cosine
from vggrpo.stitching import StitchingConfig, stitching_targets, train_stitching
from vggrpo.vae import (
    TINY_WAN_VAE_CONFIG,
    aligned_frames,
    decode_latents,
    encode_video,
    latent_frame_count,
    vae_mismatch,
    vae_signature,
)

from helpers import OwnBackbone, assert_same_vae_signature, tiny_vae

SMALL = TinyVGGTConfig(dim=32, num_heads=2, encoder_depth=1, aggregator_depth=1, head_channels=8)


@pytest.fixture(scope="module")
def vae():
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    return AutoencoderKLWan(**TINY_WAN_VAE_CONFIG).eval()


def make_lgm(vae, seed=0):
    torch.manual_seed(seed)
    backbone = TinyVGGT(SMALL).eval().requires_grad_(False)
    return LatentGeometryModel(backbone, LGMConfig.from_vae(vae, backbone.dim)).eval()


def videos(n=2, frames=9, H=32, W=48, seed=0):
    return make_scene(n, frames, H, W, trajectory="orbit", seed=seed).video


class Videos(torch.utils.data.Dataset):
    def __init__(self, v):
        self.v = v

    def __len__(self):
        return self.v.shape[0]

    def __getitem__(self, i):
        return {"video": self.v[i]}


# -- VAE side -------------------------------------------------------------------------------------

def test_encode_shapes_and_frame_alignment(vae):
    v = videos(1, 9)
    with torch.no_grad():
        z = encode_video(vae, v)
    assert z.shape == (1, 16, 3, 4, 6) and latent_frame_count(9) == 3
    assert torch.equal(aligned_frames(v), v[:, [0, 4, 8]])
    # Latent frame k stands for RGB frames up to 4k: the VAE is causal, so changing frames after
    # 4k leaves latent frames 0..k unchanged, and changing frame 4k changes latent frame k.
    later = v.clone()
    later[:, 5:] = torch.rand_like(later[:, 5:])
    with torch.no_grad():
        z_later = encode_video(vae, later)
    assert torch.equal(z_later[:, :, :2], z[:, :, :2])
    assert not torch.allclose(z_later[:, :, 2], z[:, :, 2])
    at4 = v.clone()
    at4[:, 4] = torch.rand_like(at4[:, 4])
    with torch.no_grad():
        z4 = encode_video(vae, at4)
    assert torch.equal(z4[:, :, 0], z[:, :, 0]) and not torch.allclose(z4[:, :, 1], z[:, :, 1])


def test_latents_are_normalised_like_the_pipeline(vae):
    v = videos(1, 5)
    with torch.no_grad():
        raw = vae.encode(v.permute(0, 2, 1, 3, 4) * 2 - 1).latent_dist.mean
        z = encode_video(vae, v)
    mean = torch.tensor(vae.config.latents_mean).view(1, 16, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, 16, 1, 1, 1)
    assert torch.allclose(z, (raw - mean) / std, atol=1e-6)
    with torch.no_grad():
        back = decode_latents(vae, z)
    assert back.shape == v.shape and float(back.min()) >= 0 and float(back.max()) <= 1


def _stats(vae):
    """The VAE config's latent mean and std, ``[1,16,1,1,1]`` each."""
    return (torch.tensor(vae.config.latents_mean).view(1, 16, 1, 1, 1),
            torch.tensor(vae.config.latents_std).view(1, 16, 1, 1, 1))


def _spy(vae, method):
    """Record, per call of ``vae.<method>``: the batch, whether the input and every 5-D weight
    are channels-last."""
    calls = []
    inner = getattr(vae, method)

    def spy(x, *a, **k):
        cl = torch.channels_last_3d
        calls.append((x.shape[0], x.is_contiguous(memory_format=cl),
                      all(p.is_contiguous(memory_format=cl)
                          for p in vae.parameters() if p.dim() == 5)))
        return inner(x, *a, **k)
    return calls, spy


def test_cpu_passes_equal_diffusers_one_pass_and_restore_the_weights(vae, monkeypatch):
    v = videos(3, 5)
    x = v.permute(0, 2, 1, 3, 4) * 2 - 1
    mean, std = _stats(vae)
    weights = {n: (p.data_ptr(), p.clone()) for n, p in vae.named_parameters()}
    with torch.no_grad():
        want_z = (vae.encode(x).latent_dist.mode() - mean) / std
        want_v = ((vae.decode(want_z * std + mean).sample.permute(0, 2, 1, 3, 4) + 1) / 2
                  ).clamp(0, 1)
        enc_calls, spy = _spy(vae, "encode")
        monkeypatch.setattr(vae, "encode", spy)
        z = encode_video(vae, v)
        dec_calls, spy = _spy(vae, "decode")
        monkeypatch.setattr(vae, "decode", spy)
        back = decode_latents(vae, want_z)
        lone = decode_latents(vae, want_z[2:])
    # Two videos a pass, the third beside a copy of itself, all channels-last.
    assert enc_calls == [(2, True, True), (2, True, True)] == dec_calls[:2]
    assert dec_calls[2:] == [(2, True, True)]
    torch.testing.assert_close(z, want_z, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(back, want_v, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lone, want_v[2:], atol=1e-5, rtol=1e-5)
    # The weights are the same tensors afterwards, contiguous again (safetensors needs it).
    for n, p in vae.named_parameters():
        assert p.is_contiguous() and p.data_ptr() == weights[n][0]
        assert torch.equal(p, weights[n][1])


def test_cpu_passes_restore_the_weights_when_the_vae_raises(vae, monkeypatch):
    ptrs = {n: p.data_ptr() for n, p in vae.named_parameters()}

    def broken(x, *a, **k):
        raise RuntimeError("out of memory")
    monkeypatch.setattr(vae, "decode", broken)
    with torch.no_grad(), pytest.raises(RuntimeError, match="out of memory"):
        decode_latents(vae, torch.zeros(2, 16, 2, 4, 6))
    for n, p in vae.named_parameters():
        assert p.is_contiguous() and p.data_ptr() == ptrs[n]


def test_cpu_passes_under_inference_mode_leave_trainable_weights(vae):
    z = torch.randn(3, 16, 2, 4, 6)
    with torch.no_grad():
        want = decode_latents(vae, z)
    with torch.inference_mode():
        got = decode_latents(vae, z)
    torch.testing.assert_close(got, want, atol=0, rtol=0)
    # No weight is left an inference tensor: autograd can still train them.
    assert not any(p.is_inference() for p in vae.parameters())
    decode_latents(vae, z).sum().backward()
    assert vae.post_quant_conv.weight.grad is not None
    vae.zero_grad(set_to_none=True)


@pytest.mark.parametrize("bad", [0, -2, 1.5, "2"])
def test_a_bad_videos_per_pass_is_one_clear_error(vae, monkeypatch, bad):
    import vggrpo.vae

    monkeypatch.setattr(vggrpo.vae, "CPU_VIDEOS_PER_PASS", bad)
    with torch.no_grad(), pytest.raises(ValueError, match="CPU_VIDEOS_PER_PASS must be a "
                                                         "positive int"):
        decode_latents(vae, torch.zeros(2, 16, 2, 4, 6))


@pytest.mark.parametrize("per_pass", [1, 3])
def test_other_videos_per_pass_give_the_same_videos(vae, monkeypatch, per_pass):
    import vggrpo.vae

    z = torch.randn(4, 16, 2, 4, 6)
    with torch.no_grad():
        want = decode_latents(vae, z)
        monkeypatch.setattr(vggrpo.vae, "CPU_VIDEOS_PER_PASS", per_pass)
        got = decode_latents(vae, z)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_decoding_with_autograd_is_one_pass_with_the_same_gradient(vae, monkeypatch):
    z = torch.randn(3, 16, 2, 4, 6, requires_grad=True)
    mean, std = _stats(vae)
    want = ((vae.decode(z * std + mean).sample.permute(0, 2, 1, 3, 4) + 1) / 2).clamp(0, 1)
    (g_want,) = torch.autograd.grad(want.square().sum(), z)
    calls, spy = _spy(vae, "decode")
    monkeypatch.setattr(vae, "decode", spy)
    got = decode_latents(vae, z)
    (g_got,) = torch.autograd.grad(got.square().sum(), z)
    assert calls == [(3, False, False)]  # autograd records it: diffusers' own single pass
    torch.testing.assert_close(got, want, atol=0, rtol=0)
    torch.testing.assert_close(g_got, g_want, atol=0, rtol=0)


@pytest.mark.parametrize("frames", [4, 8, 10])
def test_video_frame_count_must_be_one_plus_4k(vae, frames):
    with pytest.raises(ValueError, match=r"1 \+ 4k frames"):
        encode_video(vae, torch.rand(1, frames, 3, 32, 48))


def test_video_size_must_fit_the_vae(vae):
    with pytest.raises(ValueError, match="multiples of the VAE's spatial factor 8"):
        encode_video(vae, torch.rand(1, 5, 3, 30, 48))


# -- connector and LGM ----------------------------------------------------------------------------

def test_connector_is_the_papers_conv3d():
    cfg = LGMConfig(latent_channels=16, token_dim=24)
    conn = LatentConnector(cfg)
    conv = conn.proj
    assert isinstance(conv, torch.nn.Conv3d)
    assert conv.kernel_size == (5, 5, 5) and conv.stride == (1, 2, 2) and conv.padding == (2, 2, 2)
    z = torch.randn(2, 16, 3, 5, 7)
    out = conn(z)
    assert out.shape == (2, 3, 3, 4, 24)  # ceil(5/2), ceil(7/2)
    ref = F.conv3d(z, conv.weight, conv.bias, stride=(1, 2, 2), padding=2).permute(0, 2, 3, 4, 1)
    assert torch.allclose(out, ref)


@pytest.mark.parametrize("field, value, expected", [
    ("kernel_size", 5, "kernel_size must be three ints >= 1, got 5"),
    ("kernel_size", (5, 0, 5), r"kernel_size must be three ints >= 1, got \(5, 0, 5\)"),
    ("stride", (1, 2), r"stride must be three ints >= 1, got \(1, 2\)"),
    ("stride", (1, 2.0, 2), r"stride must be three ints >= 1"),
    ("padding", (2, -1, 2), r"padding must be three ints >= 0"),
    ("padding", (True, 2, 2), r"padding must be three ints >= 0"),
])
def test_lgm_config_refuses_a_connector_conv3d_cannot_run(field, value, expected):
    with pytest.raises(ValueError, match=expected):
        LGMConfig(token_dim=24, **{field: value})
    # A JSON config's lists are taken as triples; padding 0 is a valid convolution.
    cfg = LGMConfig(token_dim=24, kernel_size=[3, 3, 3], stride=[1, 1, 1], padding=[0, 0, 0])
    assert (cfg.kernel_size, cfg.stride, cfg.padding) == ((3, 3, 3), (1, 1, 1), (0, 0, 0))


def test_config_from_vae_reads_channels_and_factors(vae):
    assert LGMConfig.from_vae(vae, 32).to_dict()["latent_channels"] == 16
    wan22 = types.SimpleNamespace(config=types.SimpleNamespace(
        z_dim=48, scale_factor_spatial=16, scale_factor_temporal=4))
    cfg = LGMConfig.from_vae(wan22, 64)
    assert (cfg.latent_channels, cfg.spatial_factor, cfg.temporal_factor) == (48, 16, 4)


def test_lgm_outputs_geometry_per_latent_frame(vae):
    lgm = make_lgm(vae)
    with torch.no_grad():
        z = encode_video(vae, videos(2, 9))
        g = lgm(z)
    # Patch 16 = 2 x the VAE's factor 8: depth maps at the video's resolution.
    assert g.depths.shape == (2, 3, 32, 48) and g.extrinsics.shape == (2, 3, 3, 4)
    assert lgm.rgb_frame_of(2) == 8
    r = g.rewards()
    assert r["motion"].shape == r["geo"].shape == (2,)


def test_lgm_is_differentiable_wrt_latents(vae):
    lgm = make_lgm(vae)
    z = encode_video(vae, videos(1, 9)).detach().requires_grad_(True)
    grad = torch.autograd.grad(lgm(z).rewards()["geo"].sum(), z)[0]
    assert grad.shape == z.shape and bool(torch.isfinite(grad).all())


def test_bad_latents_are_clear_errors(vae):
    lgm = make_lgm(vae)
    with pytest.raises(ValueError, match=r"latents have 48 channels .* Wan2.1-style VAE"):
        lgm(torch.randn(1, 48, 3, 4, 6))
    with pytest.raises(ValueError, match=r"latents must be \[B,C,T,h,w\]"):
        lgm(torch.randn(16, 3, 4, 6))
    with pytest.raises(TypeError, match="floating point"):
        lgm(torch.zeros(1, 16, 3, 4, 6, dtype=torch.int64))
    with pytest.raises(ValueError, match="token_dim"):
        LatentGeometryModel(lgm.backbone, LGMConfig(token_dim=33))
    with pytest.raises(TypeError, match=r"backbone must follow .*GeometryBackbone; this Linear "
                                        r"lacks patch_size, dim, stitch_layer, blocks, embed, "
                                        r"forward_tokens, heads"):
        LatentGeometryModel(torch.nn.Linear(2, 2), LGMConfig(token_dim=32))


# -- files ----------------------------------------------------------------------------------------

def test_save_load_round_trip(vae, tmp_path):
    lgm = make_lgm(vae)
    lgm.save_pretrained(tmp_path / "m")
    loaded = LatentGeometryModel.from_pretrained(tmp_path / "m")
    z = torch.randn(1, 16, 3, 4, 6)
    with torch.no_grad():
        a, b = lgm(z), loaded(z)
    assert torch.equal(a.depths, b.depths) and torch.equal(a.extrinsics, b.extrinsics)
    assert not any(p.requires_grad for p in loaded.backbone.parameters())
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        "backbone.safetensors", "config.json", "connector.safetensors"]


def test_load_weights_reads_its_own_folder_and_refuses_another_lgms(vae, tmp_path):
    """What a resume uses: the trained weights of a folder into a built LGM, after checking the
    folder describes this LGM (connector config, LoRA, VAE); a refusal changes nothing."""
    trained = make_lgm(vae, seed=1)
    trained.add_lora(2, 2.0, ["qkv"])
    with torch.no_grad():
        for p in trained.lora_state_dict().values():
            p.normal_()
    trained.record_vae(vae)
    trained.save_pretrained(tmp_path / "m")
    fresh = make_lgm(vae, seed=2)  # another initialisation: the load must change it
    fresh.add_lora(2, 2.0, ["qkv"])
    fresh.record_vae(vae)
    before = {k: v.clone() for k, v in fresh.connector.state_dict().items()}
    fresh.load_weights(tmp_path / "m")
    for k, v in trained.connector.state_dict().items():
        assert torch.equal(fresh.connector.state_dict()[k], v), k
        assert not torch.equal(before[k], v), k
    for k, v in trained.lora_state_dict().items():
        assert torch.equal(fresh.lora_state_dict()[k], v), k

    other_rank = make_lgm(vae, seed=1)
    other_rank.add_lora(4, 2.0, ["qkv"])
    with pytest.raises(ValueError, match="its LoRA weights are not this LGM's adapters"):
        other_rank.load_weights(tmp_path / "m")
    wider = LatentGeometryModel(make_lgm(vae).backbone, LGMConfig(latent_channels=48,
                                                                   token_dim=32))
    untouched = {k: v.clone() for k, v in wider.connector.state_dict().items()}
    with pytest.raises(ValueError, match="its connector config is not this LGM's"):
        wider.load_weights(tmp_path / "m")
    assert all(torch.equal(wider.connector.state_dict()[k], v) for k, v in untouched.items())
    another_vae = make_lgm(vae, seed=1)
    another_vae.add_lora(2, 2.0, ["qkv"])
    another_vae.record_vae(tiny_vae(1))
    with pytest.raises(ValueError, match="^vae is not the VAE it was stitched to"):
        another_vae.load_weights(tmp_path / "m")


def test_missing_and_broken_files_are_clear_errors(vae, tmp_path):
    with pytest.raises(FileNotFoundError, match="LGM folder not found"):
        LatentGeometryModel.from_pretrained(tmp_path / "nope")
    lgm = make_lgm(vae)
    lgm.save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "connector.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="connector weights not found"):
        LatentGeometryModel.from_pretrained(tmp_path / "m")
    lgm.save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "connector.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        LatentGeometryModel.from_pretrained(tmp_path / "m")
    other = LatentGeometryModel(lgm.backbone, LGMConfig(latent_channels=48, token_dim=32))
    _io.save_tensors(tmp_path / "m" / "connector.safetensors", other.connector.state_dict())
    with pytest.raises(ValueError, match="shape mismatch for proj.weight"):
        LatentGeometryModel.from_pretrained(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text('{"format": "something-else"}')
    with pytest.raises(ValueError, match="is not an LGM config"):
        LatentGeometryModel.from_pretrained(tmp_path / "m")


def test_tampered_config_and_weights_are_clear_errors(vae, tmp_path):
    lgm = make_lgm(vae)
    folder = tmp_path / "m"
    lgm.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    for text, expected in [
        ("{not json", r"LGM config .*config.json is not valid JSON"),
        ("[1, 2]", r"LGM config .*config.json must hold a JSON object, got list"),
        (json.dumps({**config, "lgm": [16]}), r"LGMConfig: expected a JSON object, got list"),
        (json.dumps({**config, "lgm": {**config["lgm"], "bogus": 1}}),
         r"LGMConfig: unknown keys \['bogus'\]"),
    ]:
        (folder / "config.json").write_text(text)
        with pytest.raises(ValueError, match=expected):
            LatentGeometryModel.from_pretrained(folder)
    (folder / "config.json").write_text(json.dumps(config))
    weights = dict(lgm.connector.state_dict())
    first = sorted(weights)[0]
    _io.save_tensors(folder / "connector.safetensors",
                     {**{k: v for k, v in weights.items() if k != first},
                      "extra.bias": weights[first]})
    with pytest.raises(ValueError, match=rf"does not fit the model config: missing \['{first}'\]; "
                                         rf"unexpected \['extra.bias'\]"):
        LatentGeometryModel.from_pretrained(folder)


def test_training_state_is_never_unpickled(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Evil()}, tmp_path / "state.pt")
    with pytest.raises(ValueError, match="could not be loaded safely"):
        _io.load_state(tmp_path / "state.pt")


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    def boom(tmp):
        open(tmp, "w").write("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        _io.atomic_write(tmp_path / "out.json", boom)
    assert list(tmp_path.iterdir()) == []


# -- LoRA -----------------------------------------------------------------------------------------

def test_lora_on_remaining_blocks(vae, tmp_path):
    lgm = make_lgm(vae)
    z = torch.randn(1, 16, 3, 4, 6)
    with torch.no_grad():
        before = lgm(z).extrinsics  # the dense head starts at zero; cameras do not
    lgm.add_lora(rank=4, alpha=4.0)
    trainable = [n for n, p in lgm.backbone.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and n.startswith("blocks.") for n in trainable)
    with torch.no_grad():
        assert torch.equal(lgm(z).extrinsics, before)  # LoRA B starts at zero
        for p in lgm.lora_state_dict().values():
            p.add_(0.05 * torch.randn_like(p))
        changed = lgm(z).extrinsics
    assert not torch.equal(changed, before)
    lgm.save_pretrained(tmp_path / "m")
    loaded = LatentGeometryModel.from_pretrained(tmp_path / "m")
    with torch.no_grad():
        assert torch.equal(loaded(z).extrinsics, changed)
    with pytest.raises(ValueError, match="match no nn.Linear"):
        make_lgm(vae).add_lora(target_modules=("to_q",))


def test_adapters_disabled_gives_the_plain_backbone_and_restores_every_flag(vae):
    plain = make_lgm(vae)
    lgm = make_lgm(vae)
    lgm.add_lora(rank=4, alpha=4.0)
    with torch.no_grad():
        for p in lgm.lora_state_dict().values():
            p.add_(0.05 * torch.randn_like(p))
    video = torch.rand(1, 3, 3, 32, 48)
    flags = {n: p.requires_grad for n, p in lgm.backbone.named_parameters()}
    with torch.no_grad():
        with lgm.adapters_disabled() as teacher:
            assert teacher is lgm.backbone
            inside = teacher(video).extrinsics
        adapted = lgm.backbone(video).extrinsics
        reference = plain.backbone(video).extrinsics
    assert torch.equal(inside, reference)  # bitwise the backbone without adapters
    assert not torch.equal(adapted, reference)  # and the adapters are back on after
    assert {n: p.requires_grad for n, p in lgm.backbone.named_parameters()} == flags
    for p in lgm.backbone.parameters():  # a frozen (loaded) LGM stays frozen
        p.requires_grad_(False)
    with pytest.raises(RuntimeError, match="inside"):
        with lgm.adapters_disabled():
            raise RuntimeError("inside")
    assert not any(p.requires_grad for p in lgm.backbone.parameters())
    with torch.no_grad():
        assert torch.equal(lgm.backbone(video).extrinsics, adapted)
        with plain.adapters_disabled() as teacher:  # no adapters: nothing changes
            assert torch.equal(teacher(video).extrinsics, reference)


def test_read_backbone_gives_the_folders_backbone_without_adapters(vae, tmp_path):
    lgm = make_lgm(vae)
    lgm.add_lora(rank=2, alpha=2.0)
    with torch.no_grad():
        for p in lgm.lora_state_dict().values():
            p.add_(0.05 * torch.randn_like(p))
    lgm.save_pretrained(tmp_path / "m")
    backbone = LatentGeometryModel.read_backbone(tmp_path / "m")
    assert isinstance(backbone, TinyVGGT) and not backbone.training
    assert not any("lora_" in k for k in backbone.state_dict())
    assert not any(p.requires_grad for p in backbone.parameters())
    video = torch.rand(1, 3, 3, 32, 48)
    with torch.no_grad(), lgm.adapters_disabled() as teacher:
        assert torch.equal(backbone(video).depths, teacher(video).depths)
    torch.manual_seed(1)
    LatentGeometryModel(_own_backbone(seed=0), LGMConfig.from_vae(vae, SMALL.dim)).save_pretrained(
        tmp_path / "own")
    with pytest.raises(ValueError, match="whose weights it does not hold: pass that backbone"):
        LatentGeometryModel.read_backbone(tmp_path / "own")


def _own_backbone(seed):
    torch.manual_seed(seed)
    return OwnBackbone(TinyVGGT(SMALL).eval().requires_grad_(False))


def test_an_lgm_on_a_users_backbone_saves_without_it_and_loads_with_it(vae, tmp_path):
    torch.manual_seed(1)
    lgm = LatentGeometryModel(_own_backbone(seed=0), LGMConfig.from_vae(vae, SMALL.dim)).eval()
    lgm.add_lora(rank=2, alpha=2.0)
    with torch.no_grad():
        for p in lgm.lora_state_dict().values():
            p.add_(0.05 * torch.randn_like(p))
    lgm.save_pretrained(tmp_path / "m")
    # The backbone's weights stay where the user keeps them: no backbone file, its type named.
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        "config.json", "connector.safetensors", "lora.safetensors"]
    with pytest.raises(ValueError, match="stitched to a OwnBackbone backbone, whose weights it "
                                         "does not hold: pass that backbone \\(backbone= in "
                                         "Python"):
        LatentGeometryModel.from_pretrained(tmp_path / "m")
    with pytest.raises(ValueError, match="stitched to a OwnBackbone backbone, not to the "
                                         "tiny_vggt given"):
        LatentGeometryModel.from_pretrained(tmp_path / "m", backbone=TinyVGGT(SMALL))
    loaded = LatentGeometryModel.from_pretrained(tmp_path / "m", backbone=_own_backbone(seed=0))
    z = torch.randn(1, 16, 3, 4, 6)
    with torch.no_grad():
        a, b = lgm(z), loaded(z)
    assert torch.equal(a.depths, b.depths) and torch.equal(a.extrinsics, b.extrinsics)
    with pytest.raises(ValueError, match="this LGM already has LoRA adapters"):
        loaded.add_lora(rank=2)
    # The adapters file of another rank does not half-load.
    other = LatentGeometryModel(_own_backbone(seed=0), LGMConfig.from_vae(vae, SMALL.dim))
    other.add_lora(rank=4, alpha=4.0, target_modules=("qkv",))
    _io.save_tensors(tmp_path / "m" / "lora.safetensors", other.lora_state_dict())
    with pytest.raises(ValueError, match="do not match the config's adapters"):
        LatentGeometryModel.from_pretrained(tmp_path / "m", backbone=_own_backbone(seed=0))


# -- stitching ------------------------------------------------------------------------------------

def test_warmup_cosine_schedule():
    assert warmup_cosine(0, 100, 1000) == pytest.approx(0.01)
    assert warmup_cosine(99, 100, 1000) == pytest.approx(1.0)
    assert warmup_cosine(550, 100, 1000) == pytest.approx(0.5)
    assert warmup_cosine(1000, 100, 1000) == pytest.approx(0.0)


def test_stitching_targets_are_the_backbone_on_aligned_frames(vae):
    lgm = make_lgm(vae)
    v = videos(1, 9)
    y = stitching_targets(lgm.backbone, v, (2, 3))
    with torch.no_grad():
        assert torch.equal(y, lgm.backbone.embed(v[:, ::4]))
    # A grid the patch size does not tile the video into: frames are resized first.
    y = stitching_targets(lgm.backbone, v, (1, 2))
    assert y.shape == (1, 3, 1, 2, 32)


def test_stitching_lowers_the_feature_loss(vae):
    lgm = make_lgm(vae)
    data = Videos(videos(4, 9, seed=3))
    history = train_stitching(lgm, vae, data, StitchingConfig(epochs=15, batch_size=2, lr=3e-3,
                                                              warmup_steps=4), progress=False)
    assert len(history) == 30
    first = sum(h["loss"] for h in history[:2]) / 2
    last = sum(h["loss"] for h in history[-2:]) / 2
    assert last < 0.5 * first, (first, last)
    assert not any(p.requires_grad for p in lgm.backbone.parameters())


def test_a_non_finite_loss_stops_stitching_before_any_checkpoint(vae, tmp_path):
    lgm = make_lgm(vae)
    with torch.no_grad():
        next(lgm.connector.parameters()).fill_(float("nan"))  # as a corrupt checkpoint would
    with pytest.raises(FloatingPointError, match=r"train_stitching: the loss became nan at step "
                                                 r"0; lower StitchingConfig.lr \(0.001\)"):
        train_stitching(lgm, vae, Videos(videos(2, 9, seed=4)),
                        StitchingConfig(epochs=2, batch_size=2, lr=1e-3, warmup_steps=1),
                        out_dir=tmp_path, progress=False)
    assert not (tmp_path / "checkpoint").exists()  # nothing NaN was written


def test_resume_reproduces_the_uninterrupted_run(vae, tmp_path):
    data = Videos(videos(3, 9, seed=4))
    cfg = StitchingConfig(epochs=4, batch_size=2, lr=1e-3, warmup_steps=2)
    straight = make_lgm(vae)
    h1 = train_stitching(straight, vae, data, cfg, out_dir=tmp_path / "a", progress=False)
    resumed = make_lgm(vae)
    train_stitching(resumed, vae, data, cfg, out_dir=tmp_path / "b", stop_after=2, progress=False)
    assert len(list((tmp_path / "b" / "checkpoint").iterdir())) == 4
    fresh = make_lgm(vae)  # a new process: same init, weights come from the checkpoint
    h2 = train_stitching(fresh, vae, data, cfg, out_dir=tmp_path / "b", resume=True,
                         progress=False)
    assert [h["loss"] for h in h2] == [h["loss"] for h in h1]
    for k, v in straight.connector.state_dict().items():
        assert torch.equal(v, fresh.connector.state_dict()[k]), k
    with pytest.raises(ValueError, match="cannot resume"):
        train_stitching(make_lgm(vae), vae, data, StitchingConfig(epochs=5), out_dir=tmp_path / "b",
                        resume=True, progress=False)


def test_stitching_with_lora_distils_outputs_trains_only_adapters_and_resumes_exactly(vae,
                                                                                       tmp_path):
    data = Videos(videos(3, 9, seed=5))
    cfg = StitchingConfig(epochs=4, batch_size=2, lr=1e-3, warmup_steps=2, output_weight=1.0)

    def lora_lgm():
        lgm = make_lgm(vae)
        lgm.add_lora(rank=2, alpha=2.0)
        return lgm

    straight = lora_lgm()
    base = {k: v.clone() for k, v in straight.backbone.state_dict().items() if "lora_" not in k}
    h1 = train_stitching(straight, vae, data, cfg, out_dir=tmp_path / "a", progress=False)
    # The output term (depth and camera against the backbone on RGB) is in the loss.
    assert all(h["loss"] > h["feature_loss"] for h in h1)
    after = straight.backbone.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in base.items())  # the base stays frozen
    assert any(v.abs().max() > 0 for k, v in straight.lora_state_dict().items()
               if "lora_B" in k)  # B starts at zero: the adapters did train

    resumed = lora_lgm()
    train_stitching(resumed, vae, data, cfg, out_dir=tmp_path / "b", stop_after=2, progress=False)
    fresh = lora_lgm()  # a new process: same init, connector and adapters from the checkpoint
    h2 = train_stitching(fresh, vae, data, cfg, out_dir=tmp_path / "b", resume=True,
                         progress=False)
    assert [h["loss"] for h in h2] == [h["loss"] for h in h1]
    for k, v in straight.lora_state_dict().items():
        assert torch.equal(v, fresh.lora_state_dict()[k]), k
    for k, v in straight.connector.state_dict().items():
        assert torch.equal(v, fresh.connector.state_dict()[k]), k
    other = make_lgm(vae)
    other.add_lora(rank=2, alpha=2.0, target_modules=("qkv",))
    with pytest.raises(ValueError, match="its LoRA weights are not this LGM's adapters"):
        train_stitching(other, vae, data, cfg, out_dir=tmp_path / "b", resume=True,
                        progress=False)


@pytest.mark.parametrize("field,value,expected", [
    ("lr", float("inf"), "lr must be a finite number > 0, got inf"),
    ("lr", float("nan"), "lr must be a finite number > 0, got nan"),
    ("lr", 0.0, "lr must be a finite number > 0"),
    ("grad_clip", float("inf"), "grad_clip must be a finite number > 0"),
    ("output_weight", float("nan"), "output_weight must be a finite number >= 0, got nan"),
    ("output_weight", -1.0, "output_weight must be a finite number >= 0"),
    ("warmup_steps", True, "warmup_steps must be an int >= 0, got True"),
    ("seed", 1.5, "seed must be an int, got 1.5"),
    ("batch_size", True, "batch_size must be a positive int, got True"),
])
def test_stitching_config_refuses_values_that_would_train_to_nan_or_mean_nothing(field, value,
                                                                                  expected):
    with pytest.raises(ValueError, match=f"StitchingConfig.{expected}"):
        StitchingConfig(**{field: value})


def test_stitching_bad_input(vae):
    lgm = make_lgm(vae)
    with pytest.raises(ValueError, match="epochs must be a positive int"):
        StitchingConfig(epochs=0)
    with pytest.raises(ValueError, match="dataset items must be a video"):
        train_stitching(lgm, vae, [torch.rand(9, 32, 48)], progress=False)
    with pytest.raises(ValueError, match=r"1 \+ 4k frames"):
        train_stitching(lgm, vae, Videos(torch.rand(1, 8, 3, 32, 48)), progress=False)
    with pytest.raises(ValueError, match="resume=True needs out_dir"):
        train_stitching(lgm, vae, Videos(videos(1, 5)), resume=True, progress=False)


# -- the VAE an LGM reads -------------------------------------------------------------------------

def test_vae_signature_covers_exactly_the_encoder_side(vae):
    sig = vae_signature(vae)
    encoder = [p for n, p in vae.named_parameters() if n.split(".")[0] in ("encoder", "quant_conv")]
    assert sig["encoder_numels"] == [p.numel() for p in encoder]
    assert sig["encoder_norms"] == pytest.approx(
        [torch.linalg.vector_norm(p.detach().double()).item() for p in encoder], rel=1e-12)
    assert (sig["channels"], sig["spatial"], sig["temporal"]) == (16, 8, 4)
    assert json.loads(json.dumps(sig)) == sig  # goes into config.json as it is
    # The decoder does not change what the LGM reads: a new decoder keeps the signature.
    other = tiny_vae(0)
    with torch.no_grad():
        for p in other.decoder.parameters():
            p.mul_(3.0)
    assert vae_mismatch(sig, other) is None


def test_vae_mismatch_names_what_differs_and_accepts_a_half_precision_copy(vae):
    sig = vae_signature(vae)
    assert vae_mismatch(sig, tiny_vae(0)) is None
    assert vae_mismatch(sig, tiny_vae(0).to(torch.bfloat16)) is None
    assert vae_mismatch(sig, tiny_vae(0).half()) is None
    assert "encoder weights differ" in vae_mismatch(sig, tiny_vae(1))
    assert "channels 8" in vae_mismatch(sig, tiny_vae(0, z_dim=8))
    assert "encoder has" in vae_mismatch(sig, tiny_vae(0, base_dim=4))
    stats = {"latents_mean": [0.1] * 16, "latents_std": [2.0] * 16}
    assert "latent normalisation (latents_mean)" in vae_mismatch(sig, tiny_vae(0, **stats))
    with_stats = vae_signature(tiny_vae(0, **stats))
    assert vae_mismatch(with_stats, tiny_vae(0, **stats)) is None
    assert "latents_std" in vae_mismatch(
        with_stats, tiny_vae(0, **{**stats, "latents_std": [2.0] * 15 + [2.1]}))


def test_stitching_records_the_vae_and_the_file_keeps_it(vae, tmp_path):
    lgm = make_lgm(vae)
    assert lgm.vae_signature is None
    lgm.check_vae(tiny_vae(1))  # nothing recorded (an older file): nothing to check against
    train_stitching(lgm, vae, Videos(videos(1, 5)), StitchingConfig(epochs=1), progress=False)
    assert_same_vae_signature(lgm.vae_signature, vae_signature(vae))
    lgm.save_pretrained(tmp_path / "m")
    loaded = LatentGeometryModel.from_pretrained(tmp_path / "m")
    assert_same_vae_signature(loaded.vae_signature, vae_signature(vae))
    loaded.check_vae(vae)
    with pytest.raises(ValueError, match=r"^--vae x is not the VAE this LGM was stitched to: its "
                                         r"encoder weights differ .*vggrpo train-lgm"):
        loaded.check_vae(tiny_vae(1), name="--vae x")
    # Re-stitching moves the LGM to the new VAE.
    train_stitching(loaded, tiny_vae(1), Videos(videos(1, 5)), StitchingConfig(epochs=1),
                    progress=False)
    loaded.check_vae(tiny_vae(1))
    with pytest.raises(ValueError, match="not the VAE this LGM was stitched to"):
        loaded.check_vae(vae)
    # A model never stitched saves no record and loads with none.
    make_lgm(vae).save_pretrained(tmp_path / "n")
    assert json.loads((tmp_path / "n" / "config.json").read_text())["vae"] is None
    assert LatentGeometryModel.from_pretrained(tmp_path / "n").vae_signature is None


@pytest.mark.parametrize("edit, expected", [
    (lambda s: "16", "expected an object, got str"),
    (lambda s: {**s, "channels": True}, "channels must be a positive int, got True"),
    (lambda s: {**s, "latents_mean": [0.0] * 3}, "latents_mean must be null or 16 numbers"),
    (lambda s: {**s, "encoder_numels": "many"}, "encoder_numels must be a list of ints"),
    (lambda s: {**s, "encoder_norms": s["encoder_norms"][:-1]},
     "encoder_norms must be 58 finite numbers"),
    (lambda s: {**s, "encoder_norms": [float("nan")] * 58}, "encoder_norms must be 58 finite"),
    (lambda s: {**s, "channels": 48, "latents_mean": None, "latents_std": None},
     "inconsistent: its VAE has 48 latent channels, its connector reads 16"),
], ids=["not-object", "bool-channels", "short-mean", "numels", "short-norms", "nan-norms",
        "channels"])
def test_a_tampered_vae_record_is_a_clear_error(vae, tmp_path, edit, expected):
    lgm = make_lgm(vae)
    lgm.record_vae(vae)
    lgm.save_pretrained(tmp_path / "m")
    path = tmp_path / "m" / "config.json"
    config = json.loads(path.read_text())
    path.write_text(json.dumps({**config, "vae": edit(config["vae"])}))
    with pytest.raises(ValueError) as err:
        LatentGeometryModel.from_pretrained(tmp_path / "m")
    assert str(path) in str(err.value) and expected in str(err.value), str(err.value)


def test_resume_with_another_vae_is_refused(vae, tmp_path):
    data, cfg = Videos(videos(1, 5)), StitchingConfig(epochs=2)
    train_stitching(make_lgm(vae), vae, data, cfg, out_dir=tmp_path, stop_after=1, progress=False)
    with pytest.raises(ValueError, match=r"cannot resume .*checkpoint: vae is not the VAE it was "
                                         r"stitched to \(its encoder weights differ"):
        train_stitching(make_lgm(vae), tiny_vae(1), data, cfg, out_dir=tmp_path, resume=True,
                        progress=False)
    history = train_stitching(make_lgm(vae), vae, data, cfg, out_dir=tmp_path, resume=True,
                              progress=False)
    assert [h["epoch"] for h in history] == [0, 1]
