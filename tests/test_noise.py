"""The noise model and its sources (darkfix.noise): the estimate from a frame on many synthetic sensors,
the DNG NoiseProfile, the noise map noise-aware weights read (packing and training compute the same),
and the noise-aware network (identity start, inference and tiling, restore end to end)."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from _util import run_restorer
from darkfix.cli import main
from darkfix.dng import DngSpec, write_dng
from darkfix.inference import InferenceNet, Restorer
from darkfix.lab import synth
from darkfix.model import LambaNet
from darkfix.noise import NoiseLevel, amplified_terms, estimate, from_dng_profile, sigma_planes, sigma_planes_into
from darkfix.packing import aligned_planes, prepare
from darkfix.rawio import read_raw
from darkfix.errors import WeightsError
from darkfix.weights import default_weights_path, load_weights, save_weights

# the paper-architecture weights the noise-aware network was started from
V3 = default_weights_path().with_name("darkfix-lamba2021-v3.safetensors")


def _scene(g: torch.Generator, h: int = 256, w: int = 256) -> torch.Tensor:
    """A smooth clean scene (N=1, 4 packed planes, in [0, 1] of white): gradients, blobs, a few edges."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    base = 0.1 + 0.5 * xx * (0.4 + yy)
    for _ in range(4):
        cy, cx, r = torch.rand(3, generator=g)
        base = base + 0.3 * torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (0.02 + 0.1 * r))
    base = base + 0.2 * (xx > torch.rand(1, generator=g)).float()
    colour = 0.4 + 0.6 * torch.rand(4, 1, 1, generator=g)
    colour[2] = colour[1]
    return (base * colour).clamp(0, 1)[None]


def _sensor_frame(g: torch.Generator, bits: int, k: float, read_dn: float, ratio: float, tukey: bool):
    white = 2.0**bits - 1
    sensor = synth.Sensor(torch.tensor([round(0.05 * white)], dtype=torch.float32), torch.tensor([white]))
    p = synth.NoiseParams(K=torch.tensor([k]), read_sigma=torch.tensor([read_dn]),
                          read_lambda=torch.tensor([-0.043 if tukey else float("nan")]),
                          row_sigma=torch.tensor([0.1 * read_dn]), bias=torch.zeros(1, 4))
    scale = sensor.range / synth.SONY_RANGE
    # the ELD parameters are in the Sony's DN: give them so that the sensor gets k and read_dn
    p.K, p.read_sigma, p.row_sigma = p.K / scale, p.read_sigma / scale, p.row_sigma / scale
    raw = synth.to_raw(synth.noisy_dn(_scene(g), torch.tensor([ratio]), p, g, sensor), sensor)
    return raw[0].numpy(), sensor, p


def test_estimate_on_many_synthetic_sensors():
    """Sigma at the level that renders mid-grey (0.18 / ratio) within 20 % on at least 90 % of frames:
    bit depths 10-16, system gains 0.2-20 DN/e, read noise 1-12 DN (Gaussian and Tukey), ratios 20-300."""
    g = torch.Generator().manual_seed(5)
    errors = []
    for i in range(40):
        bits = (10, 12, 14, 16)[i % 4]
        k = math.exp(torch.empty(1).uniform_(math.log(0.2), math.log(20.0), generator=g).item())
        k *= (2.0**bits / 2**14) ** 0.5  # fewer levels, fewer DN per electron
        read_dn = math.exp(torch.empty(1).uniform_(0.0, math.log(12.0), generator=g).item())
        ratio = math.exp(torch.empty(1).uniform_(math.log(20.0), math.log(300.0), generator=g).item())
        raw, sensor, p = _sensor_frame(g, bits, k, read_dn, ratio, tukey=i % 2 == 1)
        est = estimate(raw, np.full(4, sensor.black.item()), sensor.white.item())
        shot, read = synth.noise_terms(p, sensor)
        x = 0.18 / ratio
        true = math.sqrt(shot.item() * x + read.item() ** 2)
        errors.append(est.sigma(x) / true - 1.0)
        assert est.source == "estimate"
    errors = np.abs(errors)
    assert np.mean(errors < 0.2) >= 0.9, np.round(sorted(errors), 2)
    assert np.median(errors) < 0.1, np.median(errors)


def test_estimate_separates_shot_from_read_noise():
    """A smooth frame whose shot and read noise are of a size (8 DN read, 16-190 DN^2 of shot variance):
    each term within 25 %."""
    g = torch.Generator().manual_seed(1)
    raw, sensor, p = _sensor_frame(g, 14, 2.0, 8.0, 60.0, tukey=False)
    est = estimate(raw, np.full(4, sensor.black.item()), sensor.white.item())
    shot, read = synth.noise_terms(p, sensor)
    assert est.shot[1] == pytest.approx(shot.item(), rel=0.25)
    assert est.read[1] == pytest.approx(read.item(), rel=0.25)


def test_estimate_floor_is_the_adc_rounding():
    """A flat 8-bit frame without noise estimates the ADC's rounding, never zero."""
    raw = np.full((4, 64, 64), 20, np.uint16)
    est = estimate(raw, np.full(4, 4.0), 255.0)
    assert est.read[0] == pytest.approx(math.sqrt(1 / 12) / 251.0)
    assert est.shot[0] < 1e-12
    with pytest.raises(ValueError, match="too small"):
        estimate(np.zeros((4, 4, 4), np.uint16), np.zeros(4), 255.0)


def test_sigma_planes_same_in_numpy_and_torch():
    y = np.linspace(-0.5, 3.0, 64, dtype=np.float32).reshape(4, 4, 4)
    a, b = np.array([0.1, 0.2, 0.2, 0.3]).reshape(4, 1, 1), np.array([1e-3, 2e-3, 2e-3, 4e-3]).reshape(4, 1, 1)
    s_np = sigma_planes(y, a, b)
    s_t = sigma_planes(torch.from_numpy(y), torch.from_numpy(a), torch.from_numpy(b)).numpy()
    np.testing.assert_allclose(s_np, s_t, rtol=1e-6)
    np.testing.assert_allclose(s_np, np.sqrt(a * np.maximum(y, 0) + b), rtol=1e-6)
    assert s_np[0, 0, 0] == pytest.approx(math.sqrt(1e-3))  # below black: the read noise alone
    # the in-place form restoring uses gives the same float32 values, bit for bit
    a32, b32 = a.astype(np.float32), b.astype(np.float32)
    out = np.empty_like(y)
    assert sigma_planes_into(y, a32, b32, out) is out
    np.testing.assert_array_equal(out, sigma_planes(y, a32, b32))


def test_dng_noise_profile():
    three = from_dng_profile([1e-4, 4e-6, 2e-4, 9e-6, 3e-4, 1.6e-5])
    assert three.source == "dng"
    assert three.shot == (1e-4, 2e-4, 2e-4, 3e-4)
    assert three.read == pytest.approx((2e-3, 3e-3, 3e-3, 4e-3))
    one = from_dng_profile((5e-5, 1e-6))
    assert one.shot == (5e-5,) * 4 and one.read == pytest.approx((1e-3,) * 4)
    for bad in ([1.0], [1e-4, -1e-6], [float("nan"), 1e-6], [1, 2, 3, 4]):
        assert from_dng_profile(bad) is None
    level = NoiseLevel.from_dn(2.0, 3.0, 16000.0, row_dn=1.0)
    assert level.shot[0] == pytest.approx(2.0 / 16000)
    assert level.read[0] == pytest.approx(math.sqrt(9 + 1 + 1 / 12) / 16000)


def test_raw_file_with_a_noise_profile_gives_it_to_noise_aware_packing(tmp_path):
    rng = np.random.default_rng(0)
    mosaic = (512 + rng.poisson(30.0, (96, 128))).astype(np.uint16)
    path = write_dng(tmp_path / "phone.dng", mosaic, DngSpec(cfa="GRBG", noise_profile=(2e-4, 1e-7) * 3))
    frame = read_raw(path)
    assert frame.noise is not None and frame.noise.source == "dng"
    assert frame.noise.shot == (2e-4,) * 4
    prep = prepare(frame.mosaic, frame.cfa, frame.black, frame.white, ratio=100.0, wb=frame.wb_camera,
                   balanced=True, noise_aware=True, noise=frame.noise)
    planes = np.asarray(prep.packed)
    assert planes.shape == (8, 48, 65) and prep.noise is frame.noise  # GRBG: aligned by one column
    rel = frame.wb_camera / frame.wb_camera[1]
    a, b = amplified_terms(frame.noise, 100.0 * rel[[0, 1, 1, 2]])
    np.testing.assert_allclose(planes[4:], sigma_planes(planes[:4], a.reshape(4, 1, 1), b.reshape(4, 1, 1)),
                               rtol=1e-5)
    # without a profile the frame's own estimate is used; weights that are not noise-aware get 4 planes
    estimated = prepare(frame.mosaic, frame.cfa, frame.black, frame.white, ratio=100.0, noise_aware=True)
    assert estimated.noise.source == "estimate" and estimated.packed.shape[0] == 8
    assert prepare(frame.mosaic, frame.cfa, frame.black, frame.white, ratio=100.0).packed.shape[0] == 4


def test_training_noise_map_is_what_packing_computes():
    """The lab's noise map (exact terms) equals packing's for the same raw, levels and amplification."""
    g = torch.Generator().manual_seed(3)
    srgb = torch.rand(1, 3, 64, 64, generator=g)
    s = synth.synthesise(srgb, g, broad=True, ratio=torch.tensor([50.0]), exposure=torch.ones(1))
    x = s.network_input()
    lab = s.noise_map(x)[0].numpy()
    shot, read = synth.noise_terms(s.noise, s.sensor)
    level = NoiseLevel((shot.item(),) * 4, (read.item(),) * 4)
    mosaic = s.raw[0].numpy().reshape(2, 2, 32, 32).transpose(2, 0, 3, 1).reshape(64, 64).astype(np.uint16)
    wb = s.camera.wb[0].numpy()
    prep = prepare(mosaic, "RGGB", np.full((2, 2), s.sensor.black.item()), s.sensor.white.item(), ratio=50.0,
                   wb=wb, balanced=True, noise_aware=True, noise=level)
    np.testing.assert_allclose(np.asarray(prep.packed)[4:], lab, rtol=2e-4, atol=1e-6)
    # perturbed maps stay within the spread
    off = s.noise_map(x, g=torch.Generator().manual_seed(0))[0].numpy() / lab
    assert off.min() >= 1 / 1.3 - 1e-4 and off.max() <= 1.3 + 1e-4 and abs(off.mean() - 1) > 1e-3
    assert len(aligned_planes(mosaic, prep.layout)) == 4


@pytest.fixture(scope="module")
def noise_aware_model():
    """v3 in the noise-aware architecture, its new path given random weights."""
    paper, _ = load_weights(V3)
    model = LambaNet(noise_aware=True, guide_radius=paper.guide_radius)
    model.load_state_dict(paper.state_dict(), strict=False)
    torch.manual_seed(0)
    with torch.no_grad():
        model.fine_out.weight_g.normal_(0.0, 0.2)
    return paper.eval(), model.eval()


def test_noise_aware_network_starts_as_the_paper_network():
    paper, _ = load_weights(V3)
    model = LambaNet(noise_aware=True, guide_radius=paper.guide_radius).eval()
    model.load_state_dict(paper.state_dict(), strict=False)
    x = torch.rand(1, 8, 64, 96) * 0.5
    with torch.no_grad():
        assert torch.equal(model(x), paper(x[:, :4]))
    assert model.architecture == "lamba2021-na" and model.in_channels == 8


def test_noise_aware_inference_and_tiles_agree(noise_aware_model):
    paper, model = noise_aware_model
    g = torch.Generator().manual_seed(2)
    x = torch.cat([torch.rand(1, 4, 96, 160, generator=g) * 0.6 - 0.05, 0.05 + 0.1 * torch.rand(1, 4, 96, 160,
                                                                                                generator=g)], 1)
    with torch.no_grad():
        ref = model(x)
        assert (ref - paper(x[:, :4])).abs().max() > 0.01  # the new path does something
        assert (InferenceNet(model)(x) - ref).abs().max() < 1e-5
    r = Restorer(model, "cpu", "fp32", tile=32)
    assert r.margin == 48
    assert np.abs(run_restorer(r, x[0].numpy()) - ref[0].numpy()).max() < 1e-5


def test_restore_with_noise_aware_weights_says_where_the_noise_came_from(noise_aware_model, make_dng, tmp_path):
    _, model = noise_aware_model
    weights = save_weights(model, tmp_path / "na.safetensors", {"output": "camera", "input": "balanced+noise",
                                                                "guide_radius": str(model.guide_radius)})
    src = make_dng(size=(96, 128))
    res = CliRunner().invoke(main, ["restore", str(src), "-o", str(tmp_path / "a.png"), "--weights", str(weights),
                                    "--engine", "torch", "-v"])
    assert res.exit_code == 0, res.output
    assert "noise from estimate" in res.output
    phone = write_dng(tmp_path / "phone.dng", np.asarray(read_raw(src).mosaic).copy(),
                      DngSpec(cfa="RGGB", noise_profile=(1e-4, 1e-7)))
    res = CliRunner().invoke(main, ["restore", str(phone), "-o", str(tmp_path / "b.png"), "--weights", str(weights),
                                    "--engine", "torch", "-v"])
    assert res.exit_code == 0, res.output
    assert "noise from dng" in res.output


def _signed(model: LambaNet) -> LambaNet:
    """A copy of `model` whose finest-scale path reads the signed input."""
    signed = copy.deepcopy(model)
    signed.fine_signed = True
    return signed


def test_signed_fine_input(noise_aware_model, tmp_path):
    """`fine_signed` weights' finest path reads negative noise, which changes their output, in the training
    network and the folded one alike, tiled too; the choice travels in the file's metadata."""
    _, model = noise_aware_model
    signed = _signed(model)
    g = torch.Generator().manual_seed(4)
    x = torch.cat([torch.rand(1, 4, 64, 96, generator=g) * 0.2 - 0.1, torch.full((1, 4, 64, 96), 0.06)], 1)
    with torch.no_grad():
        a, b = model(x), signed(x)
        assert (a - b).abs().max() > 0.003
        assert (InferenceNet(signed)(x) - b).abs().max() < 1e-5
    r = Restorer(signed, "cpu", "fp32", tile=32)
    assert np.abs(run_restorer(r, x[0].numpy()) - b[0].numpy()).max() < 1e-5
    meta = {"output": "camera", "input": "balanced+noise", "guide_radius": str(model.guide_radius)}
    for net, kind in ((signed, "signed"), (model, "clipped")):
        path = save_weights(net, tmp_path / f"{kind}.safetensors", meta)
        loaded, info = load_weights(path)
        assert info.metadata["fine_input"] == kind and loaded.fine_signed == (kind == "signed")


def _wider(model: LambaNet, start_only: bool = False) -> LambaNet:
    """`model` with a finest-scale path of 24 and 40 channels (`widen_fine`), its new channels then given
    weights into the output unless `start_only`."""
    from darkfix.lab.train import widen_fine

    wide = LambaNet(noise_aware=True, guide_radius=model.guide_radius, fine_widths=(24, 40)).eval()
    widen_fine(wide, model)
    if not start_only:
        g = torch.Generator().manual_seed(5)
        with torch.no_grad():
            wide.fine_out.weight_v[:, 16:24].normal_(0.0, 1.0, generator=g)
            wide.fine_out.weight_v[:, 40:].normal_(0.0, 1.0, generator=g)
    return wide


def test_wider_fine_path_starts_as_the_narrower_and_travels_in_metadata(noise_aware_model, tmp_path):
    """`widen_fine`: a wider finest-scale path computes what the narrower one did until training moves its
    new weights; then it differs, and the folded, tiled and reloaded networks agree with it."""
    from darkfix.lab.train import widen_fine

    _, narrow = noise_aware_model
    g = torch.Generator().manual_seed(5)
    x = torch.cat([torch.rand(1, 4, 64, 96, generator=g) * 0.4, torch.full((1, 4, 64, 96), 0.05)], 1)
    wide = _wider(narrow)
    with torch.no_grad():
        assert (_wider(narrow, start_only=True)(x) - narrow(x)).abs().max() < 1e-5
        ref = wide(x)
        assert (ref - narrow(x)).abs().max() > 0.003
        assert (InferenceNet(wide)(x) - ref).abs().max() < 1e-5
    assert np.abs(run_restorer(Restorer(wide, "cpu", "fp32", tile=32), x[0].numpy()) - ref[0].numpy()).max() < 1e-5
    meta = {"output": "camera", "input": "balanced+noise", "guide_radius": str(wide.guide_radius)}
    loaded, info = load_weights(save_weights(wide, tmp_path / "wide.safetensors", meta))
    assert info.fine_widths == (24, 40) and info.metadata["fine_widths"] == "24,40"
    with torch.no_grad():
        assert (loaded.eval()(x) - ref).abs().max() < 1e-6
    assert load_weights(save_weights(narrow, tmp_path / "n.safetensors", meta))[1].fine_widths == (16, 24)
    with pytest.raises(ValueError, match="narrower"):
        widen_fine(LambaNet(noise_aware=True, fine_widths=(8, 24)), narrow)


def test_bad_fine_widths_metadata_refused(noise_aware_model, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    _, model = noise_aware_model
    path = save_weights(model, tmp_path / "na.safetensors", {"output": "camera", "input": "balanced+noise"})
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
    for bad in ("24", "a,b", "0,24", "16,24,32"):
        save_file(load_file(str(path)), str(tmp_path / "bad.safetensors"), metadata={**meta, "fine_widths": bad})
        with pytest.raises(WeightsError, match="fine_widths"):
            load_weights(tmp_path / "bad.safetensors")
    save_file(load_file(str(path)), str(tmp_path / "bad.safetensors"), metadata={**meta, "fine_widths": "24,48"})
    with pytest.raises(WeightsError, match="shape of fine"):  # a width that is not the tensors'
        load_weights(tmp_path / "bad.safetensors")


@pytest.mark.parametrize("fine_input", ["clipped", "signed", "wider"])
def test_noise_aware_weights_convert_to_openvino(noise_aware_model, tmp_path, monkeypatch, fine_input):
    """The OpenVINO engine takes the 8-plane input and agrees with torch (>= 50 dB), tiled or not, with the
    finest path reading the input clipped or signed, or wider than v5's."""
    from darkfix import ovengine

    if not ovengine.available():
        pytest.skip("OpenVINO is not installed")
    monkeypatch.setenv("DARKFIX_CACHE", str(tmp_path / "cache"))
    _, model = noise_aware_model
    model = _signed(model) if fine_input == "signed" else _wider(model) if fine_input == "wider" else model
    path = save_weights(model, tmp_path / "na.safetensors", {"output": "camera", "input": "balanced+noise",
                                                             "guide_radius": str(model.guide_radius)})
    rng = np.random.default_rng(3)
    smooth = np.kron(rng.random((4, 6, 8)), np.ones((1, 24, 24)))[:, :130, :190]
    values = (0.3 * smooth + 0.06 * rng.standard_normal((4, 130, 190))).astype(np.float32)
    packed = np.concatenate([values, sigma_planes(values, 0.01, 4e-4).astype(np.float32)])

    ref = run_restorer(Restorer(load_weights(path)[0], "cpu", "fp32", tile=4096), packed)
    models = ovengine.load_models(path)
    for tile in (4096, 64):
        got = run_restorer(ovengine.OpenVINORestorer(models, "fp32", tile=tile), packed)
        assert 10 * np.log10(1.0 / np.mean((got - ref) ** 2)) >= 50.0


def test_strided_finest_path_is_the_same_function():
    """The OpenVINO conversion computes the finest path as strided and transposed convolutions (faster: fewer
    tensor reorders); with every weight and bias random it is the training network's function to rounding."""
    from darkfix.model import fold_weight_norm
    from darkfix.ovexport import strided

    torch.manual_seed(1)
    model = LambaNet(noise_aware=True, guide_radius=6, fine_widths=(24, 48)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("fine_") and name.endswith("bias"):
                p.normal_(0.0, 0.3)
        model.fine_out.weight_g.normal_(0.0, 0.2)
    plain = fold_weight_norm(copy.deepcopy(model))
    fast = strided(fold_weight_norm(copy.deepcopy(model)))
    assert hasattr(fast, "strided_refine") and not hasattr(plain, "strided_refine")
    out, x, sigma = torch.rand(1, 12, 48, 80), torch.rand(1, 4, 48, 80), torch.rand(1, 4, 48, 80) * 0.1
    with torch.no_grad():
        want = LambaNet.refine(plain, out, x, sigma)
        got = fast.refine(out, x, sigma)
        assert (want - out).abs().max() > 0.1  # the path does something
        assert (got - want).abs().max() < 1e-5
        whole = torch.cat([x, sigma], 1).repeat(1, 1, 2, 2)
        assert (fast(whole) - plain(whole)).abs().max() < 1e-5


def _relative(s: synth.Synthetic, i: int) -> float:
    shot, read = synth.noise_terms(s.noise, s.sensor)
    return NoiseLevel((float(shot[i]),) * 4, (float(read[i]),) * 4).relative(float(s.ratio[i]))


def test_ratio_for_noise_gives_each_frame_the_relative_noise_asked():
    """On the broad range of sensors (8-16 bits, any gain), the ratio drawn for a target relative noise gives
    a mid-grey exactly that noise, as `NoiseLevel.relative` (what routing reads at restore) measures it."""
    g = torch.Generator().manual_seed(3)
    scene = synth.make_scene(torch.rand(64, 3, 32, 32, generator=g), g, True)
    noise = synth.sample_noise(64, g, broad=1.0)
    rel = synth._log_uniform(64, 0.02, 1.0, g).float()
    ratio = synth.ratio_for_noise(rel, noise, scene.sensor)
    shot, read = synth.noise_terms(noise, scene.sensor)
    inside = (ratio > 1.0) & (ratio < 300.0 * synth.ratio_limit(scene.sensor))
    assert int(inside.sum()) >= 32  # most frames reach their target; the rest are clamped
    for i in range(64):
        got = NoiseLevel((float(shot[i]),) * 4, (float(read[i]),) * 4).relative(float(ratio[i]))
        if inside[i]:
            assert got == pytest.approx(float(rel[i]), rel=1e-3)
        elif ratio[i] == 1.0:  # even unamplified, a mid-grey is noisier than asked
            assert got > float(rel[i])
        else:  # at the deepest ratio the sensor holds it is still less noisy than asked
            assert got < float(rel[i])


def test_training_pairs_keep_to_their_range_of_noise():
    g = torch.Generator().manual_seed(4)
    photos = torch.rand(8, 3, 64, 64, generator=g)
    for broad in (False, True):
        s = synth.synthesise(photos, g, broad=broad, relative_noise=(0.05, 0.2))
        rels = [_relative(s, i) for i in range(8)]
        deepest = 300.0 * synth.ratio_limit(s.sensor)
        assert all(r <= 0.2 * 1.001 or s.ratio[i] == 1.0 for i, r in enumerate(rels))
        assert all(r >= 0.05 * 0.999 or s.ratio[i] >= deepest[i] * 0.999 for i, r in enumerate(rels))
        assert max(rels) / min(rels) > 1.3  # drawn across the range, not one value
    default = synth.synthesise(photos, torch.Generator().manual_seed(4), broad=False)
    assert float(default.ratio.min()) >= 4.0  # without the option: SID's ratios, as before
