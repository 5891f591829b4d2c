"""Synthetic data and training: noise statistics, reproducibility, exact resume, the CLI commands."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rawpy
import torch
from click.testing import CliRunner
from PIL import Image

from darkfix import synth
from darkfix.cli import main
from darkfix.colour import rgb_cam_from_xyz_cam
from darkfix.train import TrainConfig, train
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
        expected = p.K[i].item() * signal + p.read_sigma[i].item() ** 2 + 1 / 12
        assert dn[i].var().item() == pytest.approx(expected, rel=0.05)


def test_row_noise_is_shared_along_mosaic_rows():
    g = torch.Generator().manual_seed(1)
    p = synth.NoiseParams(K=torch.tensor([1e-6]), read_sigma=torch.tensor([1e-6]),
                          read_lambda=torch.tensor([float("nan")]), row_sigma=torch.tensor([5.0]),
                          bias=torch.zeros(1, 4))
    dn = synth.noisy_dn(torch.zeros(1, 4, 16, 32), torch.tensor([100.0]), p, g)
    # R and G1 share mosaic row 2i, G2 and B row 2i+1: equal up to the quantisation noise
    assert (dn[0, 0] - dn[0, 1]).abs().max() <= 1.0
    assert (dn[0, 2] - dn[0, 3]).abs().max() <= 1.0
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
    return TrainConfig(images=str(photos), val=str(photos), out=str(out), iterations=iterations, batch=2, crop=192,
                       validate_every=2, checkpoint_every=2, val_crops=1)


def test_training_writes_weights_and_resumes_exactly(photos, tmp_path):
    torch.set_num_threads(1)
    straight = _config(photos, tmp_path / "a.safetensors")
    summary = train(straight)
    assert summary["steps"] == 4 and len(summary["history"]) == 2
    model, info = load_weights(straight.out)
    assert info.output == "camera" and json.loads(info.metadata["training"])["batch"] == 2

    class Stop(Exception):
        pass

    def stop_at_2(event):
        if event["step"] == 2:
            raise Stop

    interrupted = _config(photos, tmp_path / "b.safetensors")
    with pytest.raises(Stop):
        train(interrupted, report=stop_at_2)
    train(interrupted, resume=str(tmp_path / "b.safetensors.ckpt"))
    a = torch.load(tmp_path / "a.safetensors.ckpt", weights_only=True)["model"]
    b = torch.load(tmp_path / "b.safetensors.ckpt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_train_command(photos, tmp_path):
    out = tmp_path / "w.safetensors"
    r = CliRunner().invoke(main, ["train", "--images", str(photos), "--val", str(photos), "--out", str(out),
                                  "--iterations", "2", "--batch", "1", "--crop", "192", "--validate-every", "1",
                                  "--threads", "1", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert "best validation PSNR" in r.output
    assert load_weights(out)[1].format == "darkfix"
    bad = CliRunner().invoke(main, ["train", "--images", str(photos), "--out", str(out), "--crop", "200"])
    assert bad.exit_code == 2 and "multiple of 32" in bad.output
