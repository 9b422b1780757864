"""Training a Wan VAE from scratch (vggrpo.vae_training): the frame-by-frame start, the folded
latent mean, the statistics, and that training reconstructs better; checked against plain
torch arithmetic on diffusers' own forward passes."""

import math

import pytest
import torch

from vggrpo.data.synthetic import make_scene
from vggrpo.vae import decode_latents, encode_video, reconstruction_psnr
from vggrpo.vae_training import (
    LinearVideoCode,
    VAETrainingConfig,
    init_frame_by_frame,
    set_latent_statistics,
    train_wan_vae,
)

from helpers import tiny_vae


@pytest.fixture(scope="module")
def videos():
    return torch.cat([make_scene(1, 9, 32, 48, trajectory=t, moving_objects=1, seed=s).video
                      for s, t in enumerate(("orbit", "dolly", "pan", "orbit"))])


def test_a_frame_by_frame_vae_encodes_each_latent_frame_from_its_own_rgb_frame(videos):
    vae = tiny_vae(3, base_dim=8)
    init_frame_by_frame(vae)
    x = videos[:2].permute(0, 2, 1, 3, 4) * 2 - 1  # [B,3,9,H,W]
    with torch.no_grad():
        whole = vae.encode(x).latent_dist.mean  # [B,16,3,h,w]
        for k in range(3):
            alone = vae.encode(x[:, :, 4 * k:4 * k + 1]).latent_dist.mean[:, :, 0]
            torch.testing.assert_close(whole[:, :, k], alone, rtol=1e-4, atol=1e-5)
        # ...and decodes each latent frame to 4 copies of the decoding of that frame alone.
        z = torch.randn(2, 16, 3, 4, 6, generator=torch.Generator().manual_seed(0))
        out = vae.decode(z).sample  # [B,3,9,H,W]
        for k in range(3):
            alone = vae.decode(z[:, :, k:k + 1]).sample[:, :, 0]
            for t in range(max(4 * k - 3, 0), 4 * k + 1):
                torch.testing.assert_close(out[:, :, t], alone, rtol=1e-4, atol=1e-5)


def test_a_fresh_vae_does_not_encode_frame_by_frame(videos):
    # The check above can fail: without init_frame_by_frame past frames leak into latent frame 1.
    vae = tiny_vae(3, base_dim=8)
    x = videos[:1].permute(0, 2, 1, 3, 4) * 2 - 1
    with torch.no_grad():
        whole = vae.encode(x).latent_dist.mean[:, :, 1]
        alone = vae.encode(x[:, :, 4:5]).latent_dist.mean[:, :, 0]
    assert (whole - alone).abs().max() > 1e-3


def test_latent_statistics_normalise_the_latents_and_folding_centres_them_exactly(videos):
    vae = tiny_vae(4, latents_mean=None, latents_std=None)
    raw = vae.encode(videos.permute(0, 2, 1, 3, 4) * 2 - 1).latent_dist.mean.detach()
    want_mean = raw.double().mean(dim=(0, 2, 3, 4))
    want_std = raw.double().std(dim=(0, 2, 3, 4), unbiased=False)
    stats = set_latent_statistics(vae, videos, batch=3)
    assert stats["latents_mean"] == pytest.approx(want_mean.tolist(), abs=1e-5)
    assert stats["latents_std"] == pytest.approx(want_std.tolist(), rel=1e-4)
    assert list(vae.config.latents_std) == stats["latents_std"]
    z = encode_video(vae, videos).double()
    assert z.mean(dim=(0, 2, 3, 4)).abs().max() < 1e-4
    assert (z.std(dim=(0, 2, 3, 4), unbiased=False) - 1).abs().max() < 1e-3

    before = vae.encode(videos.permute(0, 2, 1, 3, 4) * 2 - 1).latent_dist.mean.detach()
    set_latent_statistics(vae, videos, fold_mean=True)
    after = vae.encode(videos.permute(0, 2, 1, 3, 4) * 2 - 1).latent_dist.mean.detach()
    shift = before.double().mean(dim=(0, 2, 3, 4)).view(1, -1, 1, 1, 1)
    torch.testing.assert_close(after.double(), before.double() - shift, rtol=0, atol=1e-5)
    assert vae.config.latents_mean == [0.0] * 16
    assert list(vae.config.latents_std) == pytest.approx(want_std.tolist(), rel=1e-4)


def _psnr(vae, videos):
    # Independent of reconstruction_psnr: the same round trip written out.
    with torch.no_grad():
        back = decode_latents(vae, encode_video(vae, videos))
    return 10 * math.log10(1 / float(((back - videos) ** 2).mean()))


def test_training_reconstructs_better_and_saves_a_centred_normalised_vae(videos, tmp_path):
    from vggrpo.vae import load_vae_folder

    vae = tiny_vae(5, base_dim=8, latents_mean=None, latents_std=None)
    init_frame_by_frame(vae)
    set_latent_statistics(vae, videos)
    start = _psnr(vae, videos)
    history = train_wan_vae(vae, videos, VAETrainingConfig(
        image_steps=40, video_steps=4, image_batch=8, video_batch=2, crop=32, lr=3e-3,
        warmup_steps=5, seed=0))
    assert [h["stage"] for h in history] == [0] * 40 + [1] * 4
    assert all(math.isfinite(h["loss"]) for h in history)
    end = _psnr(vae, videos)
    assert end > start + 1.0, (start, end)
    assert reconstruction_psnr(vae, videos) == pytest.approx(end, abs=1e-6)
    vae.save_pretrained(tmp_path / "vae", safe_serialization=True)
    back = load_vae_folder(tmp_path / "vae")
    z = encode_video(back, videos).double()
    assert z.mean(dim=(0, 2, 3, 4)).abs().max() < 1e-4
    assert (z.std(dim=(0, 2, 3, 4), unbiased=False) - 1).abs().max() < 1e-3


def test_training_is_reproducible(videos):
    def run():
        vae = tiny_vae(6)
        train_wan_vae(vae, videos, VAETrainingConfig(image_steps=3, video_steps=1,
                                                     image_batch=2, video_batch=1, crop=32))
        return torch.cat([p.detach().flatten() for p in vae.parameters()])

    assert torch.equal(run(), run())


@pytest.mark.parametrize("fields, match", [
    ({"lr": float("inf")}, r"VAETrainingConfig.lr must be a finite number > 0, got inf"),
    ({"image_steps": -1}, r"VAETrainingConfig.image_steps must be an int >= 0, got -1"),
    ({"crop": 0}, r"VAETrainingConfig.crop must be a positive int, got 0"),
    ({"teacher_weight": -1.0}, r"VAETrainingConfig.teacher_weight must be a finite number >= 0, "
                               r"got -1.0"),
    ({"image_steps": 0, "video_steps": 0}, r"image_steps \+ video_steps must be > 0"),
])
def test_bad_configs_are_refused_in_one_line(fields, match):
    with pytest.raises(ValueError, match=match):
        VAETrainingConfig(**fields)


def test_bad_videos_and_crops_are_refused_before_training(videos):
    vae = tiny_vae(7)
    config = VAETrainingConfig(image_steps=1, video_steps=1, crop=32)
    with pytest.raises(ValueError,
                       match=r"videos must be a \[N,T,3,H,W\] tensor.*\[4, 3, 32, 48\]"):
        train_wan_vae(vae, videos[:, 0], config)
    with pytest.raises(ValueError, match="non-finite"):
        train_wan_vae(vae, videos * float("nan"), config)
    with pytest.raises(ValueError, match=r"crop must be a multiple of the VAE's spatial factor 8 "
                                         r"and at most the videos' 32x48, got 36"):
        train_wan_vae(vae, videos, VAETrainingConfig(crop=36))
    with pytest.raises(ValueError, match=r"crop .* got 40"):
        train_wan_vae(vae, videos, VAETrainingConfig(crop=40))
    with pytest.raises(ValueError, match="videos has 8 frames"):
        train_wan_vae(vae, videos[:, :8], config)
    # Single frames only: any frame count will do.
    train_wan_vae(vae, videos[:, :8], VAETrainingConfig(image_steps=1, video_steps=0, crop=32))


def test_a_non_finite_loss_stops_training_by_name(videos):
    vae = tiny_vae(8)
    with torch.no_grad():
        vae.encoder.conv_in.bias.fill_(float("nan"))  # as a corrupt checkpoint would
    with pytest.raises(FloatingPointError, match=r"train_wan_vae: the loss became nan at step 0; "
                                                 r"lower VAETrainingConfig.lr \(0.001\)"):
        train_wan_vae(vae, videos, VAETrainingConfig(image_steps=2, video_steps=0, crop=32,
                                                     lr=1e-3))


def _block_rows(clips, start, end, t, s):
    # Independent of LinearVideoCode's reshapes: every block's pixels gathered by explicit loops,
    # in the order (block time, row, column); each row frame-major, then colour, row, column.
    rows = []
    for b in range(clips.shape[0]):
        for k in range((end - start) // t):
            for i in range(clips.shape[3] // s):
                for j in range(clips.shape[4] // s):
                    block = clips[b, :, start + k * t:start + (k + 1) * t,
                                  i * s:(i + 1) * s, j * s:(j + 1) * s]  # [3,t,s,s]
                    rows.append(block.permute(1, 0, 2, 3).reshape(-1))
    return torch.stack(rows).double()


def test_the_linear_code_is_the_principal_components_at_the_latent_layout(videos):
    clips = videos.permute(0, 2, 1, 3, 4) * 2 - 1  # [4,3,9,32,48]
    code = LinearVideoCode.fit(clips, channels=16, spatial=8, temporal=4)
    z = code.encode(clips)
    assert z.shape == (4, 16, 3, 4, 6)
    back = code.decode(z)
    assert back.shape == clips.shape
    for (start, end, t), frames in (((0, 1, 1), slice(0, 1)), ((1, 9, 4), slice(1, 3))):
        rows = _block_rows(clips, start, end, t, 8)
        centred = rows - rows.mean(0)
        singular = torch.linalg.svdvals(centred)
        # PCA: the squared error left is the energy of the components not kept.
        left = float((singular[16:] ** 2).sum())
        got = float(((back[:, :, start:end] - clips[:, :, start:end]).double() ** 2).sum())
        assert got == pytest.approx(left, rel=1e-3)
        # ...and each kept component has unit variance on the data it was fitted on.
        part = z[:, :, frames].double()
        torch.testing.assert_close(part.mean(dim=(0, 2, 3, 4)),
                                   torch.zeros(16, dtype=torch.float64), rtol=0, atol=1e-4)
        torch.testing.assert_close(part.var(dim=(0, 2, 3, 4), unbiased=False),
                                   torch.ones(16, dtype=torch.float64), rtol=1e-3, atol=1e-3)


def test_the_linear_code_puts_each_block_at_its_latent_position(videos):
    clips = videos.permute(0, 2, 1, 3, 4) * 2 - 1
    code = LinearVideoCode.fit(clips, channels=16, spatial=8, temporal=4)
    changed = clips.clone()
    changed[1, :, 5:9, 16:24, 8:16] += 0.3  # latent frame 2, row 2, column 1 of video 1
    diff = (code.encode(changed) - code.encode(clips)).abs().amax(dim=1)  # [4,3,4,6]
    assert diff[1, 2, 2, 1] > 1e-3
    diff[1, 2, 2, 1] = 0
    assert diff.max() < 1e-5


def test_a_full_rank_linear_code_round_trips_exactly(videos):
    # 2x2 patches of 3 colours: 12 pixels per block of frame 0, fewer than 16 channels; the
    # missing components code to 0 and the round trip is exact.
    clips = videos[:, :1].permute(0, 2, 1, 3, 4) * 2 - 1
    code = LinearVideoCode.fit(clips, channels=16, spatial=2, temporal=4)
    z = code.encode(clips)
    assert z.shape == (4, 16, 1, 16, 24)
    assert torch.isfinite(z).all() and z[:, 12:].abs().max() == 0
    torch.testing.assert_close(code.decode(z), clips, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="clips has 9 frames, but this LinearVideoCode was "
                                         "fitted on single frames only"):
        code.encode(videos.permute(0, 2, 1, 3, 4))


def test_the_teacher_weight_falls_linearly_and_zero_turns_it_off(videos):
    config = dict(image_steps=3, video_steps=1, image_batch=2, video_batch=1, crop=32)
    history = train_wan_vae(tiny_vae(9), videos, VAETrainingConfig(teacher_weight=2.0, **config))
    assert [h["teacher_weight"] for h in history] == pytest.approx([2.0, 1.5, 1.0, 0.5])
    off = train_wan_vae(tiny_vae(9), videos, VAETrainingConfig(teacher_weight=0.0, **config))
    assert [h["teacher_weight"] for h in off] == [0.0] * 4
    # The reconstruction term is logged alone, so the teacher does not change what step 0 logs
    # (same VAE, same batch, before any update).
    assert history[0]["loss"] == pytest.approx(off[0]["loss"], rel=1e-6)
    assert history[1]["loss"] != pytest.approx(off[1]["loss"], rel=1e-6)


def test_bad_inputs_to_the_linear_code_are_refused_in_one_line(videos):
    clips = videos.permute(0, 2, 1, 3, 4) * 2 - 1  # [4,3,9,32,48]
    with pytest.raises(ValueError, match=r"LinearVideoCode.fit: channels must be a positive "
                                         r"int, got 0"):
        LinearVideoCode.fit(clips, channels=0, spatial=8, temporal=4)
    with pytest.raises(ValueError, match=r"LinearVideoCode.fit: clips must be a float "
                                         r"\[N,3,T,H,W\] tensor in \[-1, 1\], "
                                         r"got \[4, 9, 32, 48\]"):
        LinearVideoCode.fit(clips[:, 0], channels=16, spatial=8, temporal=4)
    with pytest.raises(ValueError, match=r"height and width multiples of 8, got 30x48"):
        LinearVideoCode.fit(clips[..., :30, :], channels=16, spatial=8, temporal=4)
    code = LinearVideoCode.fit(clips, channels=16, spatial=8, temporal=4)
    with pytest.raises(ValueError, match=r"LinearVideoCode.encode: clips must have 1 \+ 4k "
                                         r"frames, got 8"):
        code.encode(clips[:, :, :8])
    with pytest.raises(ValueError, match=r"LinearVideoCode.encode: clips must be a float "
                                         r".*torch.int64"):
        code.encode(clips.long())
