"""What the shipped weights do to pictures, on sensors made here: colour balance kept across white balance,
bit depth, black level and CFA phase; highlights pushed past white come out white; default exposure."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from _util import SONY_XYZ, read_png
from darkfix.lab import synth
from darkfix.cli import main
from darkfix.colour import render, rgb_cam_from_xyz_cam
from darkfix.dng import DngSpec, write_dng
from darkfix.inference import Restorer
from darkfix.options import RestoreOptions
from darkfix.packing import crop, prepare_frame
from darkfix.rawio import read_raw
from darkfix.weights import load_weights

PHASES = {"RGGB": (0, 0), "GRBG": (0, 1), "GBRG": (1, 0), "BGGR": (1, 1)}


@pytest.fixture(scope="module")
def shipped():
    torch.set_num_threads(2)
    model, info = load_weights()
    assert info.balanced
    return Restorer(model, device="cpu"), info


def smooth_colours(h: int, w: int, seed: int, lo: float = 0.04, hi: float = 0.6,
                   saturation: float = 0.5, cell: int = 48) -> np.ndarray:
    """(3, h, w) white-balanced linear camera RGB: soft patches of many colours about `cell` px across,
    none near white, with chroma scaled by `saturation` (1: each channel drawn independently).

    The network carries colour mostly in its 1/8 and 1/32 branches (16 and 64 mosaic px a cell), as
    photos hold it; colour changing every few pixels is beyond it (and beyond a Bayer sensor's chroma)."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(lo, hi, (3, h // cell + 2, w // cell + 2))
    coarse = coarse.mean(0) + saturation * (coarse - coarse.mean(0))
    up = torch.nn.functional.interpolate(torch.from_numpy(coarse)[None], size=(h + 2 * cell, w + 2 * cell),
                                         mode="bicubic", align_corners=False)[0, :, cell:-cell, cell:-cell]
    return up.clamp(lo, hi).numpy()


def dark_dng(path, balanced: np.ndarray, wb: tuple[float, float, float], ratio: float, bits: int, black: float,
             cfa: str, seed: int, noise_gain: float = 1.0) -> tuple[np.ndarray, object]:
    """A dark DNG of the clean camera RGB `balanced / wb` at exposure 1/ratio, with ELD-style noise of a
    mid-ISO Sony scaled to the sensor's range; returns the clean camera RGB in the file's CFA phase."""
    g = torch.Generator().manual_seed(seed)
    camera = torch.from_numpy(balanced / np.asarray(wb, np.float64)[:, None, None]).float()[None]
    white = 2.0**bits - 1.0
    sensor = synth.Sensor(torch.tensor([round(black * white)], dtype=torch.float32), torch.tensor([white]))
    noise = synth.NoiseParams(K=torch.tensor([noise_gain]), read_sigma=torch.tensor([2.0 * noise_gain]),
                              read_lambda=torch.tensor([float("nan")]), row_sigma=torch.tensor([0.3]),
                              bias=torch.zeros(1, 4))
    raw = synth.to_raw(synth.noisy_dn(synth.mosaic(camera), torch.tensor([ratio]), noise, g, sensor), sensor)
    planes = raw[0].numpy()
    _, hh, ww = planes.shape
    dy, dx = PHASES[cfa]
    mosaic = planes.reshape(2, 2, hh, ww).transpose(2, 0, 3, 1).reshape(2 * hh, 2 * ww)[dy:, dx:]
    spec = DngSpec(cfa=cfa, black=float(sensor.black[0]), white=int(white),
                   as_shot_neutral=tuple(1.0 / np.asarray(wb)), color_matrix=SONY_XYZ)
    write_dng(path, np.ascontiguousarray(mosaic.astype(np.uint16)), spec)
    return camera[0, :, dy:, dx:].numpy(), spec


def test_colour_balance_survives_every_sensor(shipped, tmp_path):
    """Over white balance x bit depth x black level x CFA phase, the network's camera RGB keeps the clean
    input's mean R/G and B/G (where neither is clipped): no cast towards the training cameras' balance.
    The scenes are softly coloured, as photos mostly are (strongly coloured scenes also lose some
    saturation to the denoising, which moves their mean R/G towards 1 whatever the sensor).

    The goal (issue 10) is 5 %. Measured with the shipped v3 and the colour guide (model.guide_gain): 2.8 %
    at worst; without the guide 8.9 % (v2 8.2 %, v1 23.7 %)."""
    restorer, info = shipped
    worst = (0.0, None)
    case = 0
    for wb in ((1.05, 1.35), (2.0, 1.6), (2.9, 2.7), (1.3, 2.9)):
        for bits in (8, 10, 12, 14, 16):
            for black in (0.0, 0.06):
                cfa = tuple(PHASES)[case % 4]
                case += 1
                balanced = smooth_colours(96, 128, seed=case, saturation=0.3)
                ratio = float(max(4.0, 100 * min(1.0, (2.0**bits - 1) / 15871) ** 0.6))
                wb3 = (wb[0], 1.0, wb[1])
                clean, _ = dark_dng(tmp_path / "c.dng", balanced, wb3, ratio, bits, black, cfa, seed=case)
                frame = read_raw(tmp_path / "c.dng")
                prep = prepare_frame(frame, RestoreOptions(ratio=ratio), info.input)
                with torch.no_grad():
                    out = restorer.run_tile(torch.from_numpy(np.asarray(prep.packed))[None])
                out = crop(out, prep.layout)[0].float().numpy() / (prep.wb / prep.wb[1])[:, None, None]
                unclipped = (out * np.asarray(wb3)[:, None, None]).max(0) < 0.98
                for c in (0, 2):
                    got = out[c][unclipped].mean() / out[1][unclipped].mean()
                    want = clean[c][unclipped].mean() / clean[1][unclipped].mean()
                    err = abs(got / want - 1.0)
                    if err > worst[0]:
                        worst = (err, (wb, bits, black, cfa, "RB"[c // 2]))
    assert worst[0] < 0.05, f"balance off by {worst[0]:.1%} at (wb, bits, black, cfa, channel) = {worst[1]}"


def _chroma(image: np.ndarray) -> np.ndarray:
    return image.max(-1) - image.min(-1)


@pytest.mark.parametrize("sensor_clipped", [False, True])
def test_window_past_white_renders_white_without_fringe(shipped, tmp_path, sensor_clipped):
    """A window far brighter than the room: after amplification it is past white. Inside it and in a 6 px
    band around it the output's chroma (max - min channel) is within 0.05 of the ground truth's (issue 10).
    Pixels past white in all four planes go to the network in the colour of the room around them
    (packing.FILL_CELL) and render white. Before: over-range colour gave a warm fringe (v2, v3: 0.11-0.14
    off on average in the band); plain white in the window, a grey, brighter halo (0.084; 0.067 with the
    guide leaving the window out of its statistics). Measured now: 0.021 (OpenVINO bf16 and torch fp32)."""
    h, w = 128, 160
    balanced = smooth_colours(h, w, seed=7, lo=0.05, hi=0.4)
    win = (slice(32, 80), slice(48, 112))
    balanced[:, win[0], win[1]] = np.array([3.0, 2.6, 2.2])[:, None, None]  # a warm lamp-lit window
    wb, ratio = (2.2, 1.0, 1.7), 120.0
    clean, spec = dark_dng(tmp_path / "w.dng", balanced, wb, ratio, 14, 512 / 16383, "RGGB", seed=3)
    if sensor_clipped:  # the same window clipped by the sensor itself
        with __import__("rawpy").imread(str(tmp_path / "w.dng")) as raw:
            mosaic = raw.raw_image_visible.copy()
        mosaic[win] = 16383
        write_dng(tmp_path / "w.dng", mosaic, spec)
    out = tmp_path / "w.png"
    r = CliRunner().invoke(main, ["restore", str(tmp_path / "w.dng"), "-o", str(out), "--ratio", str(ratio),
                                  "--bit-depth", "16", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    got = read_png(out)[0].astype(np.float64) / 65535.0
    rgb_cam = torch.from_numpy(rgb_cam_from_xyz_cam(SONY_XYZ)).float()
    truth = render(torch.from_numpy(clean)[None].float(), torch.tensor(wb), rgb_cam)[0].permute(1, 2, 0).numpy()
    inside = np.zeros((h, w), bool)
    inside[win] = True
    grown = np.zeros_like(inside)
    grown[win[0].start - 6 : win[0].stop + 6, win[1].start - 6 : win[1].stop + 6] = True
    band = grown & ~inside
    assert _chroma(truth)[inside].max() < 1e-3  # the ground truth's window is white
    for name, region in (("window", inside), ("6 px band", band)):
        diff = np.abs(_chroma(got) - _chroma(truth))[region].mean()
        assert diff <= 0.05, f"{name}: chroma off by {diff:.3f} on average"
    # no warm (or blue) fringe: the 3 px next to the window keep the room's red-blue balance (v3 before
    # OVER_WHITE: about 0.2 warmer where the sensor did not clip, about 0.1 bluer where it did)
    near = np.zeros_like(inside)
    near[win[0].start - 3 : win[0].stop + 3, win[1].start - 3 : win[1].stop + 3] = True
    near &= ~inside
    cast = float((got[..., 0] - got[..., 2])[near].mean() - (truth[..., 0] - truth[..., 2])[near].mean())
    assert abs(cast) < 0.05, f"fringe: red - blue off by {cast:+.3f} next to the window"


def photo_like(h: int, w: int, seed: int) -> np.ndarray:
    """An sRGB (3, h, w) scene with a photo's statistics: a sky-to-ground gradient, soft objects, texture."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    base = np.stack([0.55 - 0.3 * yy, 0.6 - 0.25 * yy, 0.75 - 0.45 * yy])
    objects = smooth_colours(h, w, seed + 100, lo=0.05, hi=0.9)
    mix = (smooth_colours(h, w, seed + 200, 0.0, 1.0, saturation=1.0, cell=16)[0] > 0.5)[None]
    texture = rng.normal(0.0, 0.04, (1, h, w))
    return np.clip(np.where(mix, objects, base) + texture, 0.0, 1.0)


def test_default_exposure_is_normal(shipped, tmp_path):
    """Dark frames of photo-like scenes from several sensors, restored with no options, come out with a
    mean level between 25 % and 60 % of white (the paper's estimate leaves them at a few per cent)."""
    runner = CliRunner()
    for i, (bits, ratio, wb) in enumerate(((14, 200.0, (2.1, 1.0, 1.6)), (12, 60.0, (1.3, 1.0, 1.5)),
                                           (10, 25.0, (1.8, 1.0, 2.6)), (8, 8.0, (1.1, 1.0, 1.2)))):
        srgb = torch.from_numpy(photo_like(128, 192, seed=i)).float()[None]
        g = torch.Generator().manual_seed(i)
        camera = synth.sample_camera(1, g)
        camera.wb = torch.tensor([wb])
        balanced = (synth.unprocess(srgb, camera, g) * camera.wb[:, :, None, None])[0].numpy()
        black = 0.0 if bits == 8 else 0.03
        dark_dng(tmp_path / f"p{i}.dng", balanced, wb, ratio, bits, black, "GRBG", seed=i)
        r = runner.invoke(main, ["restore", str(tmp_path / f"p{i}.dng"), "--device", "cpu", "-v"])
        assert r.exit_code == 0, r.output
        level = read_png(tmp_path / f"p{i}.png")[0].mean() / 255.0
        assert 0.25 <= level <= 0.6, f"{bits}-bit frame at 1/{ratio:g}: mean level {level:.2f} ({r.output})"
        r = runner.invoke(main, ["restore", str(tmp_path / f"p{i}.dng"), "-o", str(tmp_path / "paper.png"),
                                 "--exposure", "paper", "--overwrite", "--device", "cpu"])
        assert r.exit_code == 0, r.output
        assert read_png(tmp_path / "paper.png")[0].mean() / 255.0 < level - 0.1


SATURATED = {"red": (1.0, 0.13, 0.03), "green": (0.39, 1.0, 0.31), "blue": (0.08, 0.2, 1.0),
             "magenta": (0.92, 0.31, 1.0), "cyan": (0.37, 0.93, 1.0), "yellow": (1.0, 0.91, 0.27)}


def saturated_patch_error(shipped, tmp_path, ratio: float) -> tuple[float, str]:
    """The largest channel error of a saturated square's mean output, as a share of its brightest channel,
    over SATURATED's colours (each a square on grey, 14 bits, `ratio`), and which colour it was."""
    restorer, info = shipped
    worst = (0.0, "")
    for i, (name, colour) in enumerate(SATURATED.items()):
        balanced = np.full((3, 192, 192), 0.15)
        balanced[:, 48:-48, 48:-48] = np.asarray(colour)[:, None, None] * 0.3
        dark_dng(tmp_path / "f.dng", balanced, (2.2, 1.0, 1.6), ratio, 14, 512 / 16383, "RGGB", seed=i)
        frame = read_raw(tmp_path / "f.dng")
        prep = prepare_frame(frame, RestoreOptions(ratio=ratio), info.input)
        with torch.no_grad():
            out = restorer.run_tile(torch.from_numpy(np.asarray(prep.packed))[None])
        # balanced camera RGB, as the truth is (the white balance is undone only after the network)
        mean = crop(out, prep.layout)[0].float().numpy()[:, 72:-72, 72:-72].mean((1, 2))
        truth = np.asarray(colour) * 0.3
        worst = max(worst, (float(np.abs(mean - truth).max() / truth.max()), name))
    return worst


@pytest.mark.parametrize("ratio", [100.0, 300.0])
def test_saturated_patches_keep_their_colour(shipped, tmp_path, ratio):
    """A square of each sRGB primary and secondary as a camera sees it (its channels overlap: sRGB red is
    camera 1, 0.13, 0.03) on grey, 14 bits, a high ratio: the mean output over the square's middle keeps
    every channel within 0.15 of the colour's brightest (benchmarks/flat_colour.py). Worst at x100 / x300:
    v3 0.08 / 0.10, v5 0.20 / 0.28 and v6 0.57 / 0.62 (all magenta's blue), v7 0.03 / 0.06, v8 0.02 / 0.05."""
    err, name = saturated_patch_error(shipped, tmp_path, ratio)
    assert err < 0.15, f"{name}: a channel off by {err:.2f} of its brightest at x{ratio:.0f}"


def dark_chroma_error(shipped, tmp_path, case: tuple, black_error: float, trust_black: bool) -> float:
    """Mean |log R/G - log R/G of the truth| (and B/G) over 25 x 25 px means of a frame of dark, strongly
    coloured soft patches (`smooth_colours`, balanced 0.01-0.1) at the case's (ratio, bits, noise gain),
    restored with `trust_black`; the file states the red photosites' black `black_error` DN high."""
    from dataclasses import replace

    from darkfix.pipeline import camera_image

    restorer, info = shipped
    ratio, bits, noise_gain, seed = case
    wb = (2.0, 1.0, 1.6)
    balanced = smooth_colours(256, 384, seed, lo=0.01, hi=0.1, saturation=1.0)
    truth, _ = dark_dng(tmp_path / "f.dng", balanced, wb, ratio, bits, 0.0625, "RGGB", seed, noise_gain)
    frame = read_raw(tmp_path / "f.dng")
    frame = replace(frame, black=frame.black + np.float32(black_error) * np.array([[1, 0], [0, 0]], np.float32))
    prep = prepare_frame(frame, RestoreOptions(ratio=ratio), info.input)
    out = camera_image(frame, prep, restorer, info, trust_black).transpose(2, 0, 1)
    scale = np.asarray(wb, np.float32)[:, None, None]

    def means(x: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(np.ascontiguousarray(np.maximum(x * scale, 1e-4), np.float32))[None]
        return torch.nn.functional.avg_pool2d(t, 25, stride=1, padding=12, count_include_pad=False)[0].numpy()

    o, t = means(out), means(truth)
    err = np.abs(np.log(o[[0, 2]] / o[1]) - np.log(t[[0, 2]] / t[1]))
    return float(err[:, 24:-24, 24:-24].mean())


@pytest.mark.parametrize("case", [(100, 14, 1.0, 1), (150, 12, 1.0, 3), (100, 16, 2.0, 4)],
                         ids=["14bit-x100", "12bit-x150", "16bit-x100"])
def test_wide_guide_brings_dark_colour_back(shipped, tmp_path, case):
    """Dark colours at an exact black level (what a sensor profile measures; `--trust-black`): the colour
    guide's wide pass (darkfix.wideguide) takes at least a tenth off their chroma error. v9, without ->
    with: 0.096 -> 0.078, 0.092 -> 0.069, 0.110 -> 0.078."""
    without = dark_chroma_error(shipped, tmp_path, case, 0.0, False)
    wide = dark_chroma_error(shipped, tmp_path, case, 0.0, True)
    assert wide <= 0.9 * without, (without, wide)


def test_wide_guide_needs_an_exact_black(shipped, tmp_path):
    """Why the wide pass waits for a measured black level: with the file's black 1 DN low on the red
    photosites above the truth (12 bits, x150) it copies the cast the network learned to ignore. v9: 0.76 ->
    1.13."""
    case = (150, 12, 1.0, 3)
    assert dark_chroma_error(shipped, tmp_path, case, 1.0, True) >= 1.2 * dark_chroma_error(shipped, tmp_path, case,
                                                                                             1.0, False)


def textured_scene(h: int, w: int, seed: int) -> np.ndarray:
    """(3, h, w) balanced linear camera RGB: `smooth_colours` under sharp-edged rectangles of other
    brightness, with fine stripes (period 5-12 px, any angle) over one quarter."""
    rng = np.random.default_rng(seed)
    lum = np.ones((h, w))
    for _ in range(12):
        y, x = rng.integers(0, h - 8), rng.integers(0, w - 8)
        lum[y : y + rng.integers(8, h // 2), x : x + rng.integers(8, w // 2)] *= rng.uniform(0.4, 1.6)
    yy, xx = np.mgrid[:h, :w]
    period, angle = rng.uniform(5.0, 12.0), rng.uniform(0.0, np.pi)
    stripes = 1.0 + 0.5 * np.sin(2.0 * np.pi * (np.cos(angle) * xx + np.sin(angle) * yy) / period)
    lum = np.where((yy < h // 2) & (xx < w // 2), lum * stripes, lum)
    return np.clip(smooth_colours(h, w, seed, lo=0.03, hi=0.5, saturation=0.6) * lum[None], 0.01, 0.7)


def box_and_bilinear(packed: np.ndarray, layout) -> list[np.ndarray]:
    """The packed RGGB frame box-filtered (1, 3, ..., 9 packed px), then demosaicked bilinearly (each colour
    from its own photosites) or scaled up by cells: (H, W, 3) images for the test to pick the best of (an
    oracle's choice)."""
    conv = torch.nn.functional.conv2d
    p = torch.from_numpy(np.asarray(packed)[:4].astype(np.float32))[None]
    rb = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]])[None, None]
    g = torch.tensor([[0.0, 1.0, 0.0], [1.0, 4.0, 1.0], [0.0, 1.0, 0.0]])[None, None]
    sites = {0: [0], 1: [1, 2], 2: [3]}  # colour -> its planes (R, G1, G2, B), each at its own 2 x 2 position
    images = []
    for k in (1, 3, 5, 7, 9):
        q = torch.nn.functional.avg_pool2d(p, k, stride=1, padding=k // 2, count_include_pad=False)
        channels = []
        for c, planes in sites.items():
            keep = torch.zeros(1, 4, 1, 1)
            keep[:, planes] = 1.0
            sparse = torch.nn.functional.pixel_shuffle(q * keep, 2)
            mask = torch.nn.functional.pixel_shuffle(keep.expand_as(q).contiguous(), 2)
            kernel = g if c == 1 else rb
            channels.append(conv(sparse, kernel, padding=1) / conv(mask, kernel, padding=1))
        images.append(crop(torch.cat(channels, 1), layout)[0].numpy().transpose(1, 2, 0))
        # and each cell's R, mean G and B scaled up as a whole (smoother, half a photosite off for R and B)
        cells = torch.cat([q[:, :1], 0.5 * (q[:, 1:2] + q[:, 2:3]), q[:, 3:]], 1)
        up = torch.nn.functional.interpolate(cells, scale_factor=2, mode="bilinear", align_corners=False)
        images.append(crop(up, layout)[0].numpy().transpose(1, 2, 0))
    return images


def test_denoising_on_every_sensor(shipped, tmp_path):
    """Textured scenes over bit depth (8-16) x noise (system gain 0.3-3) x CFA phase x black level, at
    ratios 8-250 (as deep as each bit depth allows): the restored camera RGB has its level right (plain
    PSNR within 0.5 dB of colour-aligned) and beats the best classical filter of `box_and_bilinear` by at
    least 2 dB, 3.5 dB on average. v10 and v11: level within 0.2 dB; margins 2.8-6.1 dB, mean 4.1. The
    self-ensemble (`ensemble`: the transposed frame too) gains everywhere: v11 +0.02 to +0.37 dB, mean 0.21."""
    from darkfix.lab.evaluate import aligned_psnr, psnr
    from darkfix.pipeline import camera_image

    restorer, info = shipped
    margins, gains, case = [], [], 0
    for bits in (8, 10, 12, 14, 16):
        for noise_gain in (0.3, 1.0, 3.0):
            case += 1
            cfa = tuple(PHASES)[case % 4]
            ratio = float(max(4.0, (100 if case % 2 else 250) * min(1.0, (2.0**bits - 1) / 15871) ** 0.6))
            black = 0.06 if case % 3 else 0.0
            clean, _ = dark_dng(tmp_path / "t.dng", textured_scene(128, 160, case), (2.0, 1.0, 1.6), ratio, bits,
                                black, cfa, case, noise_gain)
            truth = clean.transpose(1, 2, 0)
            frame = read_raw(tmp_path / "t.dng")
            prep = prepare_frame(frame, RestoreOptions(ratio=ratio), info.input)
            out = camera_image(frame, prep, restorer, info, False)
            aligned = aligned_psnr(out, truth)[0]
            where = f"{bits} bits, gain {noise_gain}, {cfa}, black {black}, x{ratio:.0f}"
            assert aligned - psnr(np.clip(out, 0.0, 1.0), truth) < 0.5, f"level off at {where}"
            best = max(aligned_psnr(b, truth)[0] for b in box_and_bilinear(prep.packed, prep.layout))
            assert aligned >= best + 2.0, f"{aligned:.2f} dB against a box filter's {best:.2f} at {where}"
            margins.append(aligned - best)
            ensemble = camera_image(frame, prep, restorer, info, False, ensemble=True)
            gains.append(aligned_psnr(ensemble, truth)[0] - aligned)
    assert np.mean(margins) >= 3.5, margins
    print("ensemble gains", np.round(gains, 3))
    assert np.mean(gains) >= 0.1 and min(gains) > 0.0, gains
