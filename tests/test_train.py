"""Synthetic data and training: noise statistics, reproducibility, exact resume, the CLI commands."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import rawpy
import torch
from click.testing import CliRunner
from PIL import Image

from darkfix.lab import synth
from darkfix.packing import BALANCED_CEILING, OVER_WHITE, prepare
from darkfix.cli import main
from darkfix.colour import rgb_cam_from_xyz_cam
from darkfix.lab.train import TrainConfig, train
from darkfix.weights import load_weights


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        yy, xx = np.mgrid[0:240, 0:260]
        img = np.stack([(xx * (i + 1)) % 256, (yy * 2) % 256, (xx + yy) % 256], -1).astype(np.float64)
        img += rng.normal(0, 8, img.shape)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"p{i}.png")
    return folder


def test_noise_model_statistics():
    """Shot noise variance K * signal plus read variance, no bias: what ELD's model says."""
    g = torch.Generator().manual_seed(0)
    n = 2
    clean = torch.full((n, 4, 128, 128), 0.5)
    p = synth.NoiseParams(K=torch.tensor([2.0, 0.5]), read_sigma=torch.tensor([3.0, 1.0]),
                          read_lambda=torch.tensor([float("nan"), float("nan")]),
                          row_sigma=torch.zeros(n), bias=torch.zeros(n, 4))
    ratio = torch.tensor([100.0, 100.0])
    dn = synth.noisy_dn(clean, ratio, p, g)
    signal = 0.5 * (synth.WHITE - synth.BLACK) / 100.0
    for i in range(n):
        assert dn[i].mean().item() == pytest.approx(signal, rel=0.01)
        expected = p.K[i].item() * signal + p.read_sigma[i].item() ** 2
        assert dn[i].var().item() == pytest.approx(expected, rel=0.05)
        # the ADC's rounding adds its 1/12 DN^2
        raw = synth.to_raw(dn, synth.sony_sensor(n))
        assert torch.equal(raw, raw.round()) and raw[i].var().item() == pytest.approx(expected + 1 / 12, rel=0.05)


def test_row_noise_is_shared_along_mosaic_rows():
    g = torch.Generator().manual_seed(1)
    p = synth.NoiseParams(K=torch.tensor([1e-6]), read_sigma=torch.tensor([1e-6]),
                          read_lambda=torch.tensor([float("nan")]), row_sigma=torch.tensor([5.0]),
                          bias=torch.zeros(1, 4))
    dn = synth.noisy_dn(torch.zeros(1, 4, 16, 32), torch.tensor([100.0]), p, g)
    # R and G1 share mosaic row 2i, G2 and B row 2i+1: equal up to the (tiny) read noise
    assert (dn[0, 0] - dn[0, 1]).abs().max() <= 1e-3
    assert (dn[0, 2] - dn[0, 3]).abs().max() <= 1e-3
    assert dn[0, 0].std(dim=1).max() < 0.5 < dn[0, 0].mean(dim=1).std()


def test_synth_writes_dngs_that_libraw_reads_back(photos, tmp_path):
    out = tmp_path / "bench"
    r = CliRunner().invoke(main, ["synth", str(photos), str(out), "--ratios", "100,300", "--limit", "2"])
    assert r.exit_code == 0, r.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["pairs"]) == 4
    pair = manifest["pairs"][0]
    with rawpy.imread(str(out / pair["raw"])) as raw:
        assert raw.white_level == 16383 and list(raw.black_level_per_channel) == [512] * 4
        assert "".join("RGBG"[c] for c in raw.raw_colors_visible[:2, :2].ravel()) == pair["cfa"]
        visible = raw.raw_image_visible.astype(np.float64) - 512
        # a 1/100 exposure of a mid-grey-ish photo: a few tens of DN above black
        assert 1 < visible.mean() < 160
    gt = Image.open(out / pair["gt"])
    assert gt.size[::-1] == visible.shape
    # the DNG's ColorMatrix1 gives LibRaw the camera matrix that rendered the ground truth
    g = torch.Generator().manual_seed(0)
    cam = synth.sample_camera(1, g)
    assert np.allclose(rgb_cam_from_xyz_cam(cam.cam_xyz[0].numpy()), cam.rgb_cam[0].numpy(), atol=1e-5)


def _config(photos, out, iterations=4):
    return TrainConfig(images=str(photos), val=[str(photos)], out=str(out), iterations=iterations, batch=2, crop=192,
                       validate_every=2, checkpoint_every=2, val_crops=1)


class _Stop(Exception):
    pass


def _train_interrupted(cfg: TrainConfig, at: int) -> None:
    """Train `cfg`, stopped by an exception after step `at`, then resumed from its checkpoint."""
    def stop(event):
        if event["step"] == at:
            raise _Stop

    with pytest.raises(_Stop):
        train(cfg, report=stop)
    train(cfg, resume=f"{cfg.out}.ckpt")


def _same_weights(a_ckpt, b_ckpt) -> bool:
    a = torch.load(a_ckpt, weights_only=True)["model"]
    b = torch.load(b_ckpt, weights_only=True)["model"]
    return all(torch.equal(a[k], b[k]) for k in a)


def test_training_writes_weights_and_resumes_exactly(photos, tmp_path):
    torch.set_num_threads(1)
    straight = _config(photos, tmp_path / "a.safetensors")
    summary = train(straight)
    assert summary["steps"] == 4 and len(summary["history"]) == 2
    model, info = load_weights(straight.out)
    assert info.output == "camera" and json.loads(info.metadata["training"])["batch"] == 2

    _train_interrupted(_config(photos, tmp_path / "b.safetensors"), at=2)
    assert _same_weights(tmp_path / "a.safetensors.ckpt", tmp_path / "b.safetensors.ckpt")


def test_worker_processes_make_the_same_batches(photos, tmp_path, monkeypatch):
    """A step's batch comes from (seed, step) alone: made ahead by two forked workers, interrupted and
    resumed, training ends with the weights of a straight run that synthesises in its own process."""
    from dataclasses import replace

    import darkfix.lab.train as training

    torch.set_num_threads(1)
    straight = _config(photos, tmp_path / "a.safetensors")
    train(straight)
    made = []
    submit = training.ProcessPoolExecutor.submit
    monkeypatch.setattr(training.ProcessPoolExecutor, "submit",
                        lambda pool, fn, step: made.append(step) or submit(pool, fn, step))
    _train_interrupted(replace(_config(photos, tmp_path / "b.safetensors"), workers=2), at=3)
    assert _same_weights(tmp_path / "a.safetensors.ckpt", tmp_path / "b.safetensors.ckpt")
    assert made == [0, 1, 2, 3, 2, 3]  # by the workers, ahead, never past the last step; again from step 2


def _die(step):
    os._exit(9)  # a batch worker killed (as the kernel's out-of-memory killer would)


def test_a_dead_batch_worker_is_one_line_with_the_way_on(photos, tmp_path, monkeypatch):
    import darkfix.lab.train as training

    monkeypatch.setattr(training, "_make", _die)
    out = tmp_path / "w.safetensors"
    r = CliRunner().invoke(main, ["train", "--images", str(photos), "--out", str(out), "--iterations", "3",
                                  "--batch", "1", "--crop", "192", "--threads", "1", "--device", "cpu",
                                  "--workers", "1"])
    assert r.exit_code == 2 and "a batch worker died" in r.output and f"--resume {out}.ckpt" in r.output
    assert "Traceback" not in r.output


def test_train_command(photos, tmp_path):
    out = tmp_path / "w.safetensors"
    r = CliRunner().invoke(main, ["train", "--images", str(photos), "--val", str(photos), "--out", str(out),
                                  "--iterations", "2", "--batch", "1", "--crop", "192", "--validate-every", "1",
                                  "--threads", "1", "--device", "cpu", "--colour-patches", "0.5",
                                  "--black-error-spread", "1", "--relative-noise", "0.05,0.2"])
    assert r.exit_code == 0, r.output
    assert "best validation PSNR" in r.output
    info = load_weights(out)[1]
    assert info.format == "darkfix" and "0.5 of the crops scenes of saturated colour" in info.metadata["training"]
    assert "black-level error of the broad half bounded by 1 DN" in info.metadata["training"]
    assert "a mid-grey a relative noise of 0.05-0.2" in info.metadata["training"]
    for value in ("0.2,0.05", "0.1", "a,b"):
        bad = CliRunner().invoke(main, ["train", "--images", str(photos), "--out", str(out), "--relative-noise", value])
        assert bad.exit_code == 2 and "--relative-noise" in bad.output and "Traceback" not in bad.output
    bad = CliRunner().invoke(main, ["train", "--images", str(photos), "--out", str(out), "--crop", "200"])
    assert bad.exit_code == 2 and "multiple of 32" in bad.output
    bad = CliRunner().invoke(main, ["train", "--images", str(photos), "--out", str(out), "--half-crops", "0.5"])
    assert bad.exit_code == 2 and "at least 384" in bad.output
    bad = CliRunner().invoke(main, ["train", "--images", str(photos), "--out", str(out), "--fine-input", "signed"])
    assert bad.exit_code == 2 and "add --noise-aware" in bad.output
    for widths, why in (("24,48", "add --noise-aware"), ("24", "two channel counts"), ("0,8", "1 to 1024")):
        bad = CliRunner().invoke(main, ["train", "--images", str(photos), "--out", str(out), "--fine-widths", widths])
        assert bad.exit_code == 2 and why in bad.output, bad.output
    bad = CliRunner().invoke(main, ["train", "--images", str(photos), "--out", str(out), "--fine-only"])
    assert bad.exit_code == 2 and "add --noise-aware" in bad.output


def test_train_a_wider_fine_path_from_narrower_weights(photos, tmp_path):
    """--fine-widths with --init naming narrower noise-aware weights: it trains from their function, and the
    weights say their widths; narrower than the start is refused in one line."""
    from darkfix.model import LambaNet
    from darkfix.weights import save_weights

    start = save_weights(LambaNet(noise_aware=True), tmp_path / "na.safetensors",
                         {"output": "camera", "input": "balanced+noise"})
    out = tmp_path / "wide.safetensors"
    args = ["train", "--images", str(photos), "--iterations", "2", "--batch", "1", "--crop", "192", "--threads", "1",
            "--device", "cpu", "--noise-aware", "--init", str(start)]
    r = CliRunner().invoke(main, [*args, "--out", str(out), "--fine-widths", "20,32"])
    assert r.exit_code == 0, r.output
    model, info = load_weights(out)
    assert info.fine_widths == (20, 32) and model.fine_in[0].weight_v.shape[0] == 20
    assert model.fine_out.weight_v[:, 16:20].abs().max() > 0  # the new channels' way out trained from zero
    start_model = load_weights(start)[0].state_dict()
    only = tmp_path / "only.safetensors"
    r = CliRunner().invoke(main, [*args, "--out", str(only), "--fine-widths", "20,32", "--fine-only"])
    assert r.exit_code == 0, r.output
    trained = load_weights(only)[0].state_dict()
    assert all(torch.equal(trained[k], v) for k, v in start_model.items() if not k.startswith("fine_"))
    assert not torch.equal(trained["fine_out.weight_v"][:, :16], start_model["fine_out.weight_v"])
    narrow = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "n.safetensors"), "--fine-widths", "8,24"])
    assert narrow.exit_code == 2 and "narrower" in narrow.output and "Traceback" not in narrow.output


def test_train_plus_from_paper_weights(photos, tmp_path):
    """--plus --init with paper-architecture weights (here v3, by the name darkfix ships it under, as restore
    takes it) trains the plus network from their function."""
    out = tmp_path / "plus.safetensors"
    r = CliRunner().invoke(main, ["train", "--images", str(photos), "--out", str(out), "--iterations", "2",
                                  "--batch", "1", "--crop", "192", "--threads", "1", "--device", "cpu",
                                  "--plus", "--init", "darkfix-lamba2021-v3.safetensors"])
    assert r.exit_code == 0, r.output
    model, info = load_weights(out)
    assert model.plus and info.architecture == "lamba2021-plus"
    assert model.refine2x[1][0].weight_g.abs().max() > 0  # the extra layers trained from zero
    back = CliRunner().invoke(main, ["train", "--images", str(photos), "--out", str(tmp_path / "x.safetensors"),
                                     "--iterations", "1", "--batch", "1", "--crop", "192", "--device", "cpu",
                                     "--init", str(out)])
    assert back.exit_code == 2 and "cannot start a lamba2021 network" in back.output


def test_sensor_scaling_of_the_noise_model():
    """Another sensor's range scales the Sony-calibrated parameters: same noise relative to white."""
    g = torch.Generator().manual_seed(2)
    p = synth.NoiseParams(K=torch.tensor([2.0, 2.0]), read_sigma=torch.tensor([3.0, 3.0]),
                          read_lambda=torch.tensor([float("nan")] * 2), row_sigma=torch.zeros(2),
                          bias=torch.zeros(2, 4))
    sensor = synth.Sensor(torch.tensor([0.0, 64.0]), torch.tensor([1023.0, 65535.0]))
    dn = synth.noisy_dn(torch.full((2, 4, 128, 128), 0.5), torch.tensor([50.0, 50.0]), p, g, sensor)
    rel = dn / sensor.range.view(2, 1, 1, 1)
    assert rel[0].mean().item() == pytest.approx(rel[1].mean().item(), rel=0.02)
    assert rel[0].std().item() == pytest.approx(rel[1].std().item(), rel=0.05)
    raw = synth.to_raw(dn - 40.0, sensor)  # far below black: the 0-black sensor clamps its noise at 0
    assert raw[0].min().item() == 0.0 and raw[1].min().item() > 0.0


def test_white_stays_white_after_white_balance():
    """Unprocessing a white photo gives camera RGB that the camera's white balance makes neutral again
    (the example's pink sun came from highlights protected from the inverse white balance)."""
    g = torch.Generator().manual_seed(3)
    cam = synth.sample_camera(4, g)
    linear = synth.unprocess(torch.ones(4, 3, 8, 8), cam, g)
    balanced = linear * cam.wb[:, :, None, None]
    assert torch.allclose(balanced.amax(1), balanced.amin(1), rtol=1e-5)
    assert ((cam.wb[:, 0] >= 1.0) & (cam.wb[:, 0] <= 3.0)).all() and cam.wb[:, 1].eq(1).all()


def test_widened_gamut_reaches_past_srgb():
    """Half the crops get colours further from grey than any sRGB photo holds (as neon and LEDs are):
    grey stays grey, nothing leaves [0, 1] after white balance, and some colours fall outside sRGB."""
    g = torch.Generator().manual_seed(5)
    srgb = torch.rand(64, 3, 16, 16)
    srgb[:, :, :4] = 0.5  # a grey band
    scene = synth.make_scene(srgb, g)
    wide = synth.widen_gamut(scene, g)
    wb = scene.camera.wb[:, :, None, None]
    before, after = scene.linear * wb, wide.linear * wb
    assert torch.allclose(after[:, :, :4], before[:, :, :4], atol=1e-6)
    assert after.min() >= 0.0 and after.max() <= 1.0
    spread = lambda x: (x.amax(1) - x.amin(1)).mean((1, 2))  # noqa: E731
    grown = spread(after) / spread(before)
    assert 0.3 < (grown > 1.05).float().mean() < 0.7 and (grown >= 1.0 - 1e-5).all()
    srgb_of = lambda x: torch.einsum("nij,njhw->nihw", scene.camera.rgb_cam, x)  # noqa: E731
    assert (srgb_of(after) < -0.05).float().mean() > 2 * (srgb_of(before) < -0.05).float().mean()


def test_colour_patches_replace_a_share_of_crops_with_saturated_regions():
    """About `fraction` of the crops become a few flat regions of saturated colour (shaded by the photo),
    the rest stay as they were; fraction 0 takes no draws, so runs without patches are unchanged."""
    g = torch.Generator().manual_seed(2)
    photos = torch.rand(48, 3, 32, 40) * 0.5 + 0.25
    out = synth.colour_patches(photos, g, 0.5)
    changed = (out != photos).flatten(1).any(1)
    assert 0.25 < changed.float().mean() < 0.75
    assert torch.equal(out[~changed], photos[~changed]) and out.min() >= 0.0 and out.max() <= 1.0
    patched = out[changed]
    saturation = (patched.amax(1) - patched.amin(1)) / patched.amax(1).clamp_min(1e-6)
    assert saturation.median() > 0.5 > ((photos.amax(1) - photos.amin(1)) / photos.amax(1)).median()
    # flat regions: far fewer distinct hues than pixels, each crop at least two
    hue = torch.atan2(patched[:, 1] - patched[:, 2], 2 * patched[:, 0] - patched[:, 1] - patched[:, 2])
    counts = [len(torch.unique((h * 20).round())) for h in hue]
    assert all(2 <= c <= 200 for c in counts)
    state = g.get_state()
    assert torch.equal(synth.colour_patches(photos, g, 0.0), photos) and torch.equal(g.get_state(), state)


def test_half_crops_bring_in_the_photos_smaller_than_a_crop(tmp_path):
    """At --crop 384 a 200 px photo never trains; with half crops it fills the half-side steps (4 x the
    batch of 192 px crops, about the share asked), and a share of 0 leaves every batch as it was."""
    from darkfix.lab.train import BatchRecipe, PhotoPool

    folder = tmp_path / "mixed"
    folder.mkdir()
    Image.fromarray(np.full((400, 420, 3), 40, np.uint8)).save(folder / "large.png")
    Image.fromarray(np.full((200, 300, 3), 220, np.uint8)).save(folder / "small.png")
    pool = PhotoPool(folder, 384)
    assert len(pool.photos) == 1 and len(pool.everything) == 2
    g = torch.Generator().manual_seed(0)
    assert pool.batch(6, g).shape == (6, 3, 384, 384) and pool.batch(6, g).mean() < 0.2  # the large one alone
    halves = torch.cat([pool.batch(8, g, half=True) for _ in range(8)])
    assert halves.shape[2:] == (192, 192) and 0.2 < (halves.flatten(1).mean(1) > 0.5).float().mean() < 0.8
    sizes = [BatchRecipe(pool, 2, 5, half_crops=0.5)(step).inputs.shape for step in range(12)]
    assert {s[0] for s in sizes} == {2, 8} and {s[-1] for s in sizes} == {192, 96}
    assert 3 <= sum(s[0] == 8 for s in sizes) <= 9
    before = BatchRecipe(pool, 2, 5)(3).inputs
    assert torch.equal(before, BatchRecipe(pool, 2, 5, half_crops=0.0)(3).inputs)


def test_distillation_target_is_what_restore_ensemble_runs(photos, tmp_path):
    """`train --teacher`: the teacher's self-ensemble in training is the engine's `ensemble` output (the
    packed frame and its transpose, greens and their noise planes swapped); a short run with it trains and
    says so in the metadata; a teacher of another architecture is one line."""
    from _util import packed_frame, run_restorer

    from darkfix.inference import Restorer
    from darkfix.lab.train import ensemble_of

    model = load_weights()[0].eval()
    packed = packed_frame(model.in_channels, (64, 96))
    with torch.no_grad():
        taught = ensemble_of(model, torch.from_numpy(packed)[None])[0].numpy()
    engine = run_restorer(Restorer(model, device="cpu", precision="fp32", tile=4096), packed, ensemble=True)
    assert np.abs(taught - engine).max() < 1e-4
    out = tmp_path / "d.safetensors"
    r = CliRunner().invoke(main, ["train", "--images", str(photos), "--out", str(out), "--iterations", "2",
                                  "--batch", "2", "--crop", "192", "--threads", "1", "--device", "cpu",
                                  "--noise-aware", "--fine-widths", "24,48",
                                  "--init", "darkfix-lamba2021-v12.safetensors",
                                  "--teacher", "darkfix-lamba2021-v12.safetensors", "--teacher-weight", "0.3",
                                  "--msssim-from", "1.0", "--position-bias", "100", "--balance-crops"])
    assert r.exit_code == 0, r.output
    training = load_weights(out)[1].metadata["training"]
    assert "camera RGB, each crop's weighted by the inverse of its own (at most 4 x a crop's at the batch's" \
        in training
    assert "0.3 x the L1 terms towards darkfix-lamba2021-v12.safetensors's self-ensemble" in training
    assert "+ 100 x the mean square of its output positions' bias (4 px period, 32 px blocks)" in training
    bad = CliRunner().invoke(main, ["train", "--images", str(photos), "--out", str(out), "--iterations", "1",
                                    "--crop", "192", "--teacher", "darkfix-lamba2021-v12.safetensors"])
    assert bad.exit_code == 2 and "teacher for a lamba2021 network" in bad.output and "Traceback" not in bad.output


def test_black_spread_bounds_only_the_broad_frames_black_error():
    """`black_spread` scales the broad frames' extra black-level error and changes no other draw: 0 leaves
    ELD's 0.5 DN, the default (the CLI's too) reaches a few DN; Sony frames have no extra error."""
    photos = torch.rand(64, 3, 32, 32)

    def draw(**kw):
        return synth.synthesise(photos, torch.Generator().manual_seed(5), **kw).noise

    none, default, two = draw(black_spread=0.0), draw(), draw(black_spread=2 * synth.BLACK_SPREAD)
    assert torch.equal(none.K, default.K) and torch.equal(none.read_sigma, two.read_sigma)
    assert 0.4 < float(none.bias.std()) < 0.6
    extra, extra2 = default.bias - none.bias, two.bias - none.bias
    assert float(extra.std()) > 1.0 and torch.allclose(extra2, 2 * extra, atol=1e-5)
    sony = [synth.synthesise(photos[:8], torch.Generator().manual_seed(5), broad=False, black_spread=s).noise.bias
            for s in (0.0, 9.0)]
    assert torch.equal(sony[0], sony[1])
    cli_default = next(p for p in main.commands["train"].params if p.name == "black_spread").default
    assert cli_default == synth.BLACK_SPREAD


def test_loss_sees_colours_the_rendering_clips():
    """A magenta beyond sRGB with its blue collapsed renders the same after the clip; the camera-RGB term
    of the loss still sees it."""
    from darkfix.lab.train import Pair, loss_fn

    rgb_cam = torch.tensor([[1.8, -0.6, -0.2], [-0.2, 1.5, -0.3], [0.0, -0.5, 1.5]])
    flat = lambda *c: torch.tensor(c).view(1, 3, 1, 1).expand(1, 3, 32, 32).contiguous()  # noqa: E731
    target, less_blue = flat(1.0, 0.0, 0.9), flat(1.0, 0.0, 0.7)
    pair = Pair(torch.zeros(1, 8, 16, 16), target, rgb_cam[None], torch.ones(1))
    assert torch.equal(pair.render(less_blue), pair.render(target))
    assert loss_fn(target, pair, with_msssim=False) == 0.0
    assert loss_fn(less_blue, pair, with_msssim=False) > 0.015


def test_local_colour_term_sees_a_dark_colour_bias_that_noise_hides():
    """Dark green grass: an output with the right mean colour but pixel noise, against a smooth one turned
    brown. Per pixel the noisy one costs more; the block-mean term ranks them the other way round."""
    from darkfix.lab.train import Pair, loss_fn

    g = torch.Generator().manual_seed(3)
    rgb_cam = torch.eye(3)[None]
    target = torch.tensor([0.02, 0.05, 0.012]).view(1, 3, 1, 1).expand(1, 3, 64, 64).contiguous()
    noisy = (target * (1 + 0.8 * torch.randn(1, 3, 64, 64, generator=g))).clamp_min(0.0)
    noisy = noisy * target.mean((2, 3), keepdim=True) / noisy.mean((2, 3), keepdim=True)  # unbiased means
    brown = torch.tensor([0.03, 0.04, 0.015]).view(1, 3, 1, 1).expand(1, 3, 64, 64).contiguous()
    pair = Pair(torch.zeros(1, 8, 32, 32), target, rgb_cam, torch.ones(1))
    plain = [loss_fn(x, pair, with_msssim=False).item() for x in (noisy, brown)]
    local = [loss_fn(x, pair, with_msssim=False, local_weight=1.0).item() - p for x, p in zip((noisy, brown), plain)]
    assert plain[0] > plain[1]  # per pixel, the biased smooth output wins
    assert local[1] > 3 * local[0]  # by block means it loses


def test_position_term_sees_a_grid_that_noise_hides():
    """A flat grey with a faint 2 x 2 grid (what v12 leaves over flat areas) against the same grey with
    noise: per pixel the noisy one costs more; the output-position term ranks them the other way round, pulls
    the output towards the grid's removal, and `position_bias` gives a 4 px grid back exactly, whatever the
    block's level, ragged edges left out."""
    from darkfix.colour import bt709
    from darkfix.lab.train import POSITION_PERIOD, Pair, loss_fn, position_bias

    g = torch.Generator().manual_seed(4)
    level = torch.tensor([0.05, 0.08, 0.04]).view(1, 3, 1, 1)
    target = level.expand(1, 3, 128, 128).contiguous()
    grid = torch.tensor([[1.0, -1.0], [-1.0, 1.0]]).repeat(64, 64)
    gridded = target + 0.002 * grid
    noisy = target + 0.01 * torch.randn(1, 3, 128, 128, generator=g)
    pair = Pair(torch.zeros(1, 8, 64, 64), target, torch.eye(3)[None], torch.ones(1))
    plain = [loss_fn(x, pair, with_msssim=False).item() for x in (gridded, noisy)]
    term = [loss_fn(x, pair, with_msssim=False, position_weight=100.0).item() - p for x, p in zip((gridded, noisy),
                                                                                                   plain)]
    assert plain[1] > 3 * plain[0]
    assert term[0] > 2 * term[1]
    pred = gridded.clone().requires_grad_(True)
    loss_fn(pred, pair, with_msssim=False, position_weight=100.0).backward()
    assert pred.grad is not None and float((pred.grad * grid).sum()) > 0  # descent takes the grid away
    curved = position_bias(bt709(gridded) - bt709(target))
    assert torch.all(curved[..., 0, :, 0] > 0.002)  # the curve is steep in the dark: the grid grows there

    wide = torch.randn(4, 4, generator=g)
    wide -= wide.mean()
    ragged = wide.repeat(33, 25)[:130, :100] + torch.rand(2, 3, 1, 1, generator=g)
    bias = position_bias(ragged)
    assert bias.shape == (2, 3, 4, POSITION_PERIOD, 3, POSITION_PERIOD)
    assert torch.allclose(bias, wide.view(1, 1, 1, 4, 1, 4).expand_as(bias), atol=1e-5)
    with pytest.raises(ValueError, match="at least 32 x 32"):
        position_bias(ragged[..., :31])


def test_balanced_crops_weigh_a_quiet_crop_as_much_as_a_noisy_one():
    """With `balance`, each crop's L1 terms weigh by the inverse of its error, so a crop with a quarter of
    another's error pulls four times as hard, as much for its error's size (the gradient of the mean log
    error); a crop of nearly no error weighs at most BALANCE_CAP times one at the mean; equal errors give
    plain L1's value."""
    from darkfix.lab.train import BALANCE_CAP, Pair, crop_weights, loss_fn

    g = torch.Generator().manual_seed(6)
    target = 0.2 + 0.5 * torch.rand(2, 3, 64, 64, generator=g)
    noise = torch.randn(2, 3, 64, 64, generator=g)
    pair = Pair(torch.zeros(2, 8, 32, 32), target, torch.eye(3).expand(2, 3, 3), torch.ones(2))

    def grads(pred, **kw):
        pred = pred.clone().requires_grad_(True)
        loss = loss_fn(pred, pair, with_msssim=False, **kw)
        loss.backward()
        return loss.item(), pred.grad.abs().flatten(1).sum(1)

    unequal = target + noise * torch.tensor([0.01, 0.04]).view(2, 1, 1, 1)
    plain, plain_grad = grads(unequal)
    balanced, balanced_grad = grads(unequal, balance=True)
    assert abs(plain_grad[0] / plain_grad[1] - 1) < 0.05  # L1's pull is the same whatever the error's size
    assert 3.5 < balanced_grad[0] / balanced_grad[1] < 4.5  # balanced, the quiet crop's pull is 4x: d log
    assert balanced < plain  # its weighted mean leans to the quiet crop
    equal = target + 0.02 * noise
    same = grads(equal)[0]
    assert abs(same - grads(equal, balance=True)[0]) < 1e-3 * same

    w = crop_weights(torch.tensor([1e-6, 0.05, 0.05, 0.05]))
    assert abs(float(w.mean()) - 1) < 1e-6
    assert abs(float(w[0] / w[1]) - 0.05 / (0.0375 / BALANCE_CAP)) < 1e-3
    assert torch.equal(crop_weights(torch.zeros(4)), torch.ones(4))


def test_synthetic_pairs_cover_real_sensors_and_highlights():
    g = torch.Generator().manual_seed(4)
    s = synth.synthesise(torch.rand(64, 3, 32, 32), g, broad=True)
    bits = torch.log2(s.sensor.white + 1).round()
    assert {8.0, 10.0, 12.0, 14.0, 16.0} <= set(bits.tolist())
    assert (s.sensor.black == 0).any() and (s.sensor.black / s.sensor.white).max() <= 0.1
    x = s.network_input()
    assert x.min() >= -1.0 and (x < 0).any() and x.max() <= BALANCED_CEILING and (x > 1.0).any()
    # past OVER_WHITE in every plane: the colour around, as packing.PackedFrame gives real files
    unclipped = synth.normalise(s.raw, s.sensor, clip_black=False) * s.ratio.view(-1, 1, 1, 1) \
        * synth.packed_wb(s.camera.wb)
    over_white = (unclipped >= OVER_WHITE).all(1)
    assert over_white.any()
    partly = torch.nonzero(over_white.flatten(1).any(1) & ~over_white.flatten(1).all(1)).flatten()[:4].tolist()
    assert partly  # crops partly past white, filled from the rest
    for i in partly:
        planes = s.raw[i].numpy()
        mosaic = planes.reshape(2, 2, *planes.shape[1:]).transpose(2, 0, 3, 1).reshape(2 * planes.shape[1], -1)
        wb = s.camera.wb[i].numpy()
        real = prepare(mosaic.astype(np.uint16), "RGGB", np.full((2, 2), s.sensor.black[i].item()),
                       s.sensor.white[i].item(), ratio=s.ratio[i].item(), wb=wb, balanced=True)
        assert np.allclose(np.asarray(real.packed), x[i].numpy(), atol=2e-5)
    over = (s.linear * s.camera.wb[:, :, None, None]).amax((1, 2, 3)) > 1.0
    assert over.float().mean() > 0.1  # a good share of crops is pushed past white
    t = s.target_balanced()
    assert t.max() <= 1.0 and (t == 1.0).any()


@pytest.mark.parametrize("shape", [(46, 62), (94, 130), (40, 64)])
def test_training_fill_is_the_files_fill(shape):
    """lab.synth.fill_over_white gives training crops the fill packing.PackedFrame gives files, partial cells
    (packed sides no multiple of FILL_CELL) and a window reaching the corner included."""
    h, w = shape
    mosaic = np.random.default_rng(h).integers(600, 900, shape).astype(np.uint16)
    mosaic[10:30, 20:50] = 16383
    mosaic[-6:, -9:] = 16383
    wb = np.array([2.0, 1.0, 1.5], np.float32)
    real = np.asarray(prepare(mosaic, "RGGB", np.full((2, 2), 512.0), 16383.0, ratio=20.0, wb=wb,
                              balanced=True).packed)
    planes = mosaic.reshape(h // 2, 2, w // 2, 2).transpose(1, 3, 0, 2).reshape(4, h // 2, w // 2)
    x = torch.from_numpy((planes.astype(np.float32) - 512) / (16383 - 512) * 20)[None]
    x = x * torch.tensor([2.0, 1.0, 1.0, 1.5]).view(1, 4, 1, 1)
    filled = synth.fill_over_white(x.clamp(-1.0, BALANCED_CEILING), (x >= OVER_WHITE).all(1, keepdim=True))
    assert (x >= OVER_WHITE).all(1).any() and np.allclose(filled[0].numpy(), real, atol=1e-5)


def test_bf16_training_follows_fp32(photos, tmp_path):
    """Mixed bf16 (fp32 weights and loss) gives the same first losses as fp32 to within bf16 rounding, and
    the weights say which arithmetic trained them; 'auto' follows the CPU's native bf16 support."""
    from darkfix.inference import native_bf16
    from darkfix.lab.train import training_dtype

    torch.set_num_threads(1)
    losses = {}
    for precision in ("fp32", "bf16"):
        cfg = _config(photos, tmp_path / f"{precision}.safetensors")
        cfg.precision, cfg.iterations, cfg.val = precision, 2, None
        seen = []
        train(cfg, report=lambda e: seen.append(e["loss"]))
        losses[precision] = seen
        assert json.loads(load_weights(cfg.out)[1].metadata["training"])["precision"] == \
            {"fp32": "float32", "bf16": "bfloat16"}[precision]
    assert losses["fp32"][0] > 0.01
    assert np.allclose(losses["bf16"], losses["fp32"], rtol=0.03), losses
    cpu = torch.device("cpu")
    assert training_dtype("auto", cpu) == (torch.bfloat16 if native_bf16()[0] else torch.float32)
    with pytest.raises(ValueError, match="training precision"):
        training_dtype("fp16", cpu)


def test_time_budget_stops_with_a_resumable_checkpoint(photos, tmp_path):
    """--minutes: a run out of time validates, exports, checkpoints and says how to go on; resuming finishes."""
    torch.set_num_threads(1)
    out = tmp_path / "t.safetensors"
    r = CliRunner().invoke(main, ["train", "--images", str(photos), "--val", str(photos), "--out", str(out),
                                  "--iterations", "100000", "--batch", "1", "--crop", "192",
                                  "--validate-every", "100000", "--threads", "1", "--device", "cpu", "--minutes", "0.1",
                                  "--precision", "fp32"])
    assert r.exit_code == 0, r.output
    assert "stopped after 0.1 minutes at step" in r.output and f"--resume {out}.ckpt" in r.output
    state = torch.load(f"{out}.ckpt", weights_only=True)
    assert 0 < state["step"] < 100000 and out.is_file() and len(state["history"]) == 1
    done = train(TrainConfig(images=str(photos), out=str(out), iterations=state["step"] + 2, batch=1, crop=192,
                             precision="fp32"), resume=f"{out}.ckpt")
    assert done["finished"] and done["steps"] == state["step"] + 2


def test_tune_for_a_profiled_sensor(tmp_path):
    """`darkfix tune`: weights tuned on one sensor's noise, validated first (never worse than the start on
    that sensor's pairs), named after the profile; the same command resumes; a foreign output is refused."""
    import json as _json

    from click.testing import CliRunner
    from PIL import Image

    from darkfix.cli import main
    from darkfix.dng import DngSpec, write_dng
    from darkfix.profile import calibrate
    from darkfix.cli.lab import TUNE_BASE
    from darkfix.weights import read_info

    rng = np.random.default_rng(0)
    darks = [write_dng(tmp_path / f"dark{i}.dng", (256 + rng.normal(0, 3, (64, 96))).round().astype(np.uint16),
                       DngSpec(cfa="GBRG", black=256.0, white=4095)) for i in range(3)]
    prof = calibrate(darks)
    profile = prof.save(tmp_path / "cam.dfprofile")
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(2):
        yy, xx = np.mgrid[0:256, 0:288]
        img = np.stack([(xx + 40 * i) % 256, yy, (xx + yy) // 3 % 256], -1).astype(np.uint8)
        Image.fromarray(img).save(photos / f"p{i}.png")
    out = tmp_path / "tuned.safetensors"
    args = ["tune", "--profile", str(profile), "--images", str(photos), "-o", str(out), "--iterations", "2"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    meta = read_info(out).metadata
    tuned = _json.loads(meta["tuned_for"])
    assert tuned["profile"] == prof.checksum and tuned["base_weights"] == TUNE_BASE
    assert _json.loads(meta["training"])["iterations"] in (0, 2)
    assert "step 0: validation" in res.output
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0 and "best validation" in again.output
    other = tmp_path / "other.safetensors"
    other.write_bytes(b"x")
    refused = CliRunner().invoke(main, [*args[:5], "-o", str(other)])
    assert refused.exit_code == 2 and "already exists" in refused.output and other.read_bytes() == b"x"
    # --weights takes a shipped name as restore does; a name that is neither a file nor shipped: one line
    missing = CliRunner().invoke(main, [*args[:6], str(tmp_path / "new.safetensors"),
                                        "--weights", "nosuch.safetensors"])
    assert missing.exit_code == 2 and "nosuch.safetensors" in missing.output
    assert "Traceback" not in missing.output and not (tmp_path / "new.safetensors").exists()


def test_train_from_damaged_weights_is_one_line(photos, tmp_path):
    """--init naming weights whose header reads but whose tensors are damaged: one line, exit 2, no output;
    a name that is neither a file nor shipped: the same, before anything starts."""
    from darkfix.weights import default_weights_path

    damaged = tmp_path / "damaged.safetensors"
    data = bytearray(default_weights_path().with_name("darkfix-lamba2021-v3.safetensors").read_bytes())
    data[-64:] = bytes(64)
    damaged.write_bytes(bytes(data))
    out = tmp_path / "out.safetensors"
    for init in (str(damaged), "nosuch.safetensors"):
        r = CliRunner().invoke(main, ["train", "--images", str(photos), "--out", str(out), "--iterations", "1",
                                      "--batch", "1", "--crop", "192", "--threads", "1", "--device", "cpu",
                                      "--init", init])
        assert r.exit_code == 2 and "Traceback" not in r.output, r.output
        errors = [line for line in r.output.splitlines() if line.startswith("darkfix: error:")]
        assert len(errors) == 1 and Path(init).name in errors[0] and not out.exists()
