"""`darkfix eval`: metrics, PNG reading, the synthetic benchmark and the SID layout, end to end on tiny files;
`darkfix synth`'s options and blind BM3D's noise estimate."""

from __future__ import annotations

import importlib.util
import json
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from pytorch_msssim import ssim as reference_ssim

from darkfix.lab import evaluate as ev
from darkfix.lab.benchset import make_benchmark
from darkfix.cli import main
from darkfix.dng import DngSpec, write_dng
from darkfix.model import LambaNet
from darkfix.pngio import encode_png
from darkfix.rawio import read_raw
from darkfix.weights import default_weights_path, save_weights

# XYZ -> camera of the Sony A7S II (the DNG ColorMatrix1 the SID-like files carry)
SONY_XYZ = np.array([[0.5838, -0.1430, -0.0246], [-0.3497, 1.1477, 0.2297], [-0.0748, 0.1885, 0.5778]])


def _smooth_photo(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """A photo-like image: smooth colour gradients, a few blobs and some texture."""
    y, x = np.mgrid[0:h, 0:w] / max(w, h)
    img = np.stack([0.5 + 0.4 * np.sin(6 * x + c) * np.cos(4 * y - c) for c in (0.0, 1.3, 2.6)], axis=-1)
    for _ in range(4):
        cy, cx, r = rng.uniform(0, 1, 3) * (h / max(w, h), w / max(w, h), 0.2)
        img += 0.3 * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * (0.02 + r) ** 2))[..., None] * rng.uniform(-1, 1, 3)
    img += 0.03 * rng.standard_normal(img.shape)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """These tiny frames run fastest on one thread, above all beside other work on a 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> str:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "random.safetensors"
    save_weights(LambaNet(), path, {"output": "camera"})
    return str(path)


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("bench")
    photos = root / "photos"
    photos.mkdir()
    rng = np.random.default_rng(1)
    for name in ("alpha", "beta"):
        Image.fromarray(_smooth_photo(rng, 160, 128)).save(photos / f"{name}.jpg", quality=95)
    make_benchmark(photos, root / "out", ratios=(100, 300), seed=3)
    return str(root / "out")


@pytest.fixture(scope="module")
def bench_unbiased(bench) -> str:
    """The same photos, seed and ratios as `bench`, without the black-level error."""
    out = Path(bench).parent / "unbiased"
    make_benchmark(Path(bench).parent / "photos", out, ratios=(100, 300), seed=3, black_error=False)
    return str(out)


def _check_summary(summary: dict, methods: list[str], count: int) -> None:
    assert set(summary) == set(methods)
    for m in methods:
        s = summary[m]
        assert s["count"] == count
        assert all(math.isfinite(s[k]) for k in ("psnr", "psnr_aligned", "ssim", "seconds"))
        assert -1.0 <= s["ssim"] <= 1.0 and s["seconds"] >= 0
        # the fitted gains can only lower the squared error (up to the clip at 1)
        assert s["psnr_aligned"] >= s["psnr"] - 0.05


# ---------------------------------------------------------------------------------------------- metrics


def test_perfect_prediction_scores_high():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 65536, (40, 56, 3), dtype=np.uint16)
    assert ev.psnr(truth, truth) == ev.PSNR_CAP
    assert ev.ssim(truth, truth) == pytest.approx(1.0, abs=1e-6)
    noisy = np.clip(truth.astype(np.float64) / 65535 + rng.normal(0, 0.01, truth.shape), 0, 1).astype(np.float32)
    assert 38.0 < ev.psnr(noisy, truth) < 42.0  # sigma 0.01 -> 40 dB
    with pytest.raises(ev.EvalError):
        ev.psnr(truth[:-1], truth)


def test_colour_aligned_psnr_recovers_a_channel_gain():
    rng = np.random.default_rng(5)
    truth = (_smooth_photo(rng, 64, 48).astype(np.float32) / 255.0) * 0.8  # no clipping at 1 after the gains
    gain = np.array([0.7, 1.15, 0.9], np.float32)
    off = truth * gain
    assert ev.psnr(off, truth) < 30.0
    aligned, fitted = ev.aligned_psnr(off, truth)
    assert aligned >= 60.0
    assert fitted == pytest.approx(1.0 / gain, rel=1e-4)
    s = ev.scores(off, truth)
    assert set(s) == {"psnr", "psnr_aligned", "ssim", "gains"} and s["psnr_aligned"] == aligned
    # noise is not a gain: aligning leaves a noisy image's PSNR where it was
    noisy = np.clip(truth + rng.normal(0, 0.01, truth.shape), 0, 1).astype(np.float32)
    assert ev.aligned_psnr(noisy, truth)[0] == pytest.approx(ev.psnr(noisy, truth), abs=0.1)
    assert ev.channel_gains(np.zeros_like(truth), truth) == pytest.approx([1.0, 1.0, 1.0])


def test_noise_bins():
    assert [ev.k_bin(k) for k in (0.1, 0.5, 1.9, 2.0, 30.0)] == ["K<0.5", "K 0.5-2", "K 0.5-2", "K>2", "K>2"]
    sony = {"noise": {"K": 1.5}, "black": 512.0, "white": 16383.0}
    assert ev.sony_gain(sony) == pytest.approx(1.5)
    # a 12-bit sensor's K in its own DN is about a quarter of the same sensor gain on the Sony's scale
    twelve = {"noise": {"K": 0.5}, "black": 0.0, "white": 4095.0}
    assert ev.sony_gain(twelve) == pytest.approx(0.5 * (16383 - 512) / 4095)
    assert ev.sony_gain({}) is None


def test_ssim_in_strips_equals_whole_image(monkeypatch):
    rng = np.random.default_rng(2)
    a = rng.random((70, 33, 3), dtype=np.float32)
    b = np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1).astype(np.float32)
    whole = float(reference_ssim(torch.from_numpy(a).permute(2, 0, 1)[None], torch.from_numpy(b).permute(2, 0, 1)[None],
                                 data_range=1.0))
    monkeypatch.setattr(ev, "_SSIM_STRIP", 16)
    assert ev.ssim(a, b) == pytest.approx(whole, abs=1e-6)


def test_read_png_matches_writers(tmp_path):
    rng = np.random.default_rng(3)
    img16 = rng.integers(0, 65536, (9, 13, 3), dtype=np.uint16)
    (tmp_path / "a.png").write_bytes(encode_png(img16, 6))
    assert np.array_equal(ev.read_png(tmp_path / "a.png"), img16)
    img8 = _smooth_photo(rng, 31, 17)
    Image.fromarray(img8).save(tmp_path / "b.png", optimize=True)  # Pillow picks Sub/Up/Avg/Paeth per row
    assert np.array_equal(ev.read_png(tmp_path / "b.png"), img8)
    # 16-bit rows with the Sub filter (the numpy path), built by hand
    raw = img16.astype(">u2").reshape(9, -1).view(np.uint8)
    sub = raw.copy()
    sub[:, 6:] = raw[:, 6:] - raw[:, :-6]  # each byte minus the same byte of the pixel to its left, mod 256
    body = np.hstack([np.ones((9, 1), np.uint8), sub]).tobytes()
    png = encode_png(img16, 0)
    head = png[: png.index(b"IDAT") - 4]
    idat = zlib.compress(body)
    chunk = struct.pack(">I", len(idat)) + b"IDAT" + idat + struct.pack(">I", zlib.crc32(b"IDAT" + idat))
    (tmp_path / "sub.png").write_bytes(head + chunk + png[png.index(b"IEND") - 4 :])
    assert np.array_equal(ev.read_png(tmp_path / "sub.png"), img16)
    (tmp_path / "c.png").write_bytes(b"not a png")
    with pytest.raises(ev.EvalError):
        ev.read_png(tmp_path / "c.png")


def test_parse_ratios():
    assert ev.parse_ratios("100, 300") == [100.0, 300.0]
    assert ev.parse_ratios(None) is None
    for bad in ("x", "100,-3", "nan"):
        with pytest.raises(ev.EvalError):
            ev.parse_ratios(bad)


# ------------------------------------------------------------------------------------ synthetic benchmark


class _Truth:
    """A method that returns the ground truth itself: the metric's ceiling, through the whole loop."""

    name = "truth"
    description = {"kind": "oracle"}

    def __call__(self, case, frame, amplification):
        return ev.load_truth(case)


def test_evaluate_benchmark(bench, weights):
    from darkfix.inference import Restorer
    from darkfix.weights import load_weights

    model, info = load_weights(weights)
    methods = [ev.NetworkMethod("darkfix", Restorer(model, device="cpu"), info), ev.LibRawMethod(), _Truth()]
    report = ev.evaluate(bench, methods)
    names = ["darkfix", "libraw", "truth"]
    assert report["protocol"] == "synthetic" and report["amplification"] == "ratio"
    assert list(report["methods"]) == names
    assert len(report["images"]) == 4
    for row in report["images"]:
        assert row["amplification"] == row["ratio"]
        assert set(row["results"]) == set(names)
        assert row["size"][0] in (159, 160) and row["size"][1] in (127, 128)  # cropped to the CFA phase
    assert set(report["per_ratio"]) == {"100", "300"}
    for summary in report["per_ratio"].values():
        _check_summary(summary, names, 2)
    _check_summary(report["overall"], names, 4)
    # per noise level: the K bins the rows fall in, each row's K from the manifest on the Sony's scale
    bins = [name for _, name in ev.K_BINS]
    assert report["per_noise"] and set(report["per_noise"]) <= set(bins)
    assert sum(s["darkfix"]["count"] for s in report["per_noise"].values()) == 4
    for row in report["images"]:
        assert row["k"] == pytest.approx(row["meta"]["noise"]["K"], abs=1e-3)  # a Sony: its own scale
        assert row["k_bin"] == ev.k_bin(row["k"]) and len(row["results"]["darkfix"]["gains"]) == 3
    for key, summary in report["per_noise"].items():
        _check_summary(summary, names, sum(r["k_bin"] == key for r in report["images"]))
    table = ev.markdown_summary(report)
    assert table.splitlines()[0].startswith("| method | x100 (n=2) | x300 (n=2) | ")
    assert "overall (n=4)" in table and len(table.splitlines()) == 2 + len(names)
    assert report["overall"]["truth"]["psnr"] == ev.PSNR_CAP
    assert report["overall"]["truth"]["psnr_aligned"] == ev.PSNR_CAP
    assert report["overall"]["truth"]["ssim"] == pytest.approx(1.0, abs=1e-6)
    # LibRaw brightened by the true ratio: right exposure and colour, but all the noise
    for row in report["images"]:
        assert 10.0 < row["results"]["libraw"]["psnr"] < 40.0
    json.dumps(report, allow_nan=False)


def test_cli_eval_json(bench, weights, tmp_path):
    out = tmp_path / "report.json"
    result = CliRunner().invoke(main, ["eval", bench, "--weights", weights, "--device", "cpu", "--ratios", "300",
                                       "--limit", "1", "--auto-amp", "--json", str(out), "-q",
                                       "--markdown", str(tmp_path / "summary.md")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "summary.md").read_text().startswith("| method | x300 (n=1) |")
    report = json.loads(out.read_text())
    assert report["amplification"] == "auto"
    assert [r["ratio"] for r in report["images"]] == [300.0]
    row = report["images"][0]
    assert 1.0 <= row["amplification"] <= 300.0 and row["amplification"] != 300.0
    assert set(row["results"]) == {"darkfix", "libraw"}
    assert "overall" in result.output and "darkfix" in result.output


def test_cli_eval_row_noise_flags_reach_the_network(bench, weights, tmp_path):
    """--no-masked-margin and --no-picture-rows restore as `darkfix restore` does with them, and the report
    says so (the default says nothing)."""
    for flags, said in (([], {}), (["--no-masked-margin", "--no-picture-rows"],
                                   {"masked_margin": False, "picture_rows": False})):
        out = tmp_path / f"r{len(flags)}.json"
        result = CliRunner().invoke(main, ["eval", bench, "--weights", weights, "--device", "cpu", "--limit", "1",
                                           "--no-libraw", "--json", str(out), "-q", *flags])
        assert result.exit_code == 0, result.output
        description = json.loads(out.read_text())["methods"]["darkfix"]
        assert {k: description[k] for k in ("masked_margin", "picture_rows") if k in description} == said


def test_cli_eval_stride_and_compare(bench, weights, tmp_path):
    """--stride selects what bm3d_baseline.py --stride scored; --compare joins an earlier report's methods."""
    cases = ev.benchmark_cases(bench, stride=2)
    assert [c.name for c in cases] == [c.name for c in ev.benchmark_cases(bench)][::2]
    earlier = ev.evaluate_cases(cases, [_Truth()])
    ev.write_json(earlier, tmp_path / "earlier.json")
    out = tmp_path / "merged.json"
    result = CliRunner().invoke(main, ["eval", bench, "--weights", weights, "--device", "cpu", "--stride", "2",
                                       "--no-libraw", "--compare", str(tmp_path / "earlier.json"), "--json",
                                       str(out), "-q", "--summary-only"])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert list(report["methods"]) == ["darkfix", "truth"]
    assert report["methods"]["truth"]["from"] == str(tmp_path / "earlier.json")
    _check_summary(report["overall"], ["darkfix", "truth"], 2)
    assert report["overall"]["truth"]["psnr_aligned"] == ev.PSNR_CAP
    (tmp_path / "bad.json").write_text("[]")
    result = CliRunner().invoke(main, ["eval", bench, "--compare", str(tmp_path / "bad.json")])
    assert result.exit_code == 2 and "not an evaluation report" in result.output


@pytest.mark.parametrize("args, message", [
    ([], "exactly one"),
    (["{bench}", "--sid", "{bench}"], "exactly one"),
    (["{missing}"], "no such benchmark folder"),
    (["{bench}", "--ratios", "abc"], "--ratios"),
    (["{bench}", "--ratios", "42"], "no pairs left"),
    (["--sid", "{bench}"], "Sony_test_list.txt"),
    (["{bench}", "--json", "{missing}/r.json"], "does not exist"),
    (["{bench}", "--weights", "{missing}/w.safetensors"], "weights file not found"),
])
def test_cli_eval_errors(bench, tmp_path, args, message):
    args = [a.format(bench=bench, missing=tmp_path / "nope") for a in args]
    result = CliRunner().invoke(main, ["eval", *args])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("darkfix: error:") and message in lines[0], result.output


# -------------------------------------------------------------------------------------------- SID layout


def _sid_layout(root) -> None:
    """SID's folder layout with DNG content under .ARW names: bright clean long exposures, dark noisy short ones."""
    rng = np.random.default_rng(4)
    (root / "Sony" / "short").mkdir(parents=True)
    (root / "Sony" / "long").mkdir(parents=True)
    spec = DngSpec(cfa="RGGB", black=512.0, white=16383, as_shot_neutral=(0.5, 1.0, 0.6), color_matrix=SONY_XYZ,
                   make="Sony", model="ILCE-7SM2")
    lines = []
    for scene, shorts in (("10003", ("0.1", "0.04")), ("10006", ("0.033",))):
        linear = (_smooth_photo(rng, 96, 64).astype(np.float64) / 255) ** 2.2 * 0.8
        gains = np.array([0.5, 1.0, 0.6])
        mosaic = np.empty((64, 96))
        mosaic[0::2, 0::2] = linear[0::2, 0::2, 0] * gains[0]
        mosaic[0::2, 1::2] = linear[0::2, 1::2, 1]
        mosaic[1::2, 0::2] = linear[1::2, 0::2, 1]
        mosaic[1::2, 1::2] = linear[1::2, 1::2, 2] * gains[2]
        signal = mosaic * (16383 - 512)
        long_name = f"{scene}_00_10s.ARW"
        write_dng(root / "Sony" / "long" / long_name, np.round(signal + 512).astype(np.uint16), spec)
        for t in shorts:
            ratio = 10.0 / float(t)
            dark = rng.poisson(signal / ratio) + rng.normal(0, 1.5, signal.shape) + 512
            name = f"{scene}_00_{t}s.ARW"
            write_dng(root / "Sony" / "short" / name, np.clip(np.round(dark), 0, 16383).astype(np.uint16), spec)
            lines.append(f"./Sony/short/{name} ./Sony/long/{long_name} ISO200 F9")
    (root / "Sony_test_list.txt").write_text("\n".join(lines) + "\n")


def test_sid_cases_and_truth(tmp_path):
    _sid_layout(tmp_path)
    cases = ev.sid_cases(tmp_path)
    assert [c.ratio for c in cases] == pytest.approx([100.0, 250.0, 300.0])  # 10 / 0.033 = 303 -> capped
    assert ev.sid_exposure("10003_00_0.04s.ARW") == 0.04
    assert [c.ratio for c in ev.sid_cases(tmp_path, ratios=[300])] == [300.0]
    truth = ev.load_truth(cases[0])
    assert truth.shape == (64, 96, 3) and truth.dtype == np.uint16 and truth.max() > 10000


def test_cli_eval_sid(tmp_path, weights):
    _sid_layout(tmp_path / "sid")
    out = tmp_path / "sid.json"
    result = CliRunner().invoke(main, ["eval", "--sid", str(tmp_path / "sid"), "--weights", weights,
                                       "--device", "cpu", "--json", str(out), "-q", "--summary-only"])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["protocol"] == "sid"
    assert [r["amplification"] for r in report["images"]] == pytest.approx([100.0, 250.0, 300.0])
    assert set(report["per_ratio"]) == {"100", "250", "300"}
    _check_summary(report["overall"], ["darkfix", "libraw"], 3)
    # the short exposure brightened by the ratio is the long one plus noise
    for row in report["images"]:
        assert 15.0 < row["results"]["libraw"]["psnr"] < 45.0


# ------------------------------------------------------------------------------- darkfix synth's options


def test_no_black_error_changes_only_the_bias(bench, bench_unbiased):
    biased = json.loads((Path(bench) / "manifest.json").read_text())
    unbiased = json.loads((Path(bench_unbiased) / "manifest.json").read_text())
    assert biased["black_error"] is True and unbiased["black_error"] is False
    assert len(biased["pairs"]) == len(unbiased["pairs"]) == 4
    for a, b in zip(biased["pairs"], unbiased["pairs"]):
        assert b["noise"]["black_bias"] == [0.0] * 4 and any(v != 0 for v in a["noise"]["black_bias"])
        # the same draws otherwise: noise parameters, camera, ground truth
        assert {k: v for k, v in a["noise"].items() if k != "black_bias"} == \
            {k: v for k, v in b["noise"].items() if k != "black_bias"}
        assert (a["cfa"], a["wb"]) == (b["cfa"], b["wb"])
        assert (Path(bench) / a["gt"]).read_bytes() == (Path(bench_unbiased) / b["gt"]).read_bytes()
        fa, fb = read_raw(Path(bench) / a["raw"]), read_raw(Path(bench_unbiased) / b["raw"])
        diff = fa.mosaic.astype(np.float64) - fb.mosaic.astype(np.float64)
        # the frames differ by the bias alone, rounded: less than a code from it at each photosite
        red = a["cfa"].index("R")
        for i in (0, 1):
            for j in (0, 1):
                plane = ((i + red // 2) % 2) * 2 + (j + red % 2) % 2  # black_bias is per packed R, G1, G2, B
                d = diff[i::2, j::2]
                assert np.all(np.abs(d - a["noise"]["black_bias"][plane]) < 1.0)
                assert d.mean() == pytest.approx(a["noise"]["black_bias"][plane], abs=0.15)


def test_cli_synth_held_out_without_black_error(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(6)
    for name in ("urban100_img_004", "urban100_img_005", "other"):
        Image.fromarray(_smooth_photo(rng, 48, 40)).save(photos / f"{name}.png")
    out = tmp_path / "held"
    result = CliRunner().invoke(main, ["synth", str(photos), str(out), "--held-out", "--no-black-error",
                                       "--ratios", "100"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["black_error"] is False and manifest["photos"] == "held-out"
    assert [p["photo"] for p in manifest["pairs"]] == ["urban100_img_004.png"]
    assert manifest["pairs"][0]["noise"]["black_bias"] == [0.0] * 4
    # a second run does not replace the benchmark silently; bad ratios and no photos make nothing
    again = CliRunner().invoke(main, ["synth", str(photos), str(out), "--held-out", "--ratios", "100"])
    assert again.exit_code == 2 and "already holds a benchmark" in again.stderr
    assert json.loads((out / "manifest.json").read_text()) == manifest
    for ratios in ("-5", "0,100", "lots"):
        bad = CliRunner().invoke(main, ["synth", str(photos), str(tmp_path / "bad"), "--ratios", ratios])
        assert bad.exit_code == 2 and len(bad.stderr.splitlines()) == 1 and "--ratios" in bad.stderr, bad.output
    empty = tmp_path / "empty"
    empty.mkdir()
    none = CliRunner().invoke(main, ["synth", str(empty), str(tmp_path / "none")])
    assert none.exit_code == 2 and "no images found" in none.stderr
    assert not (tmp_path / "bad").exists() and not (tmp_path / "none").exists()


# ------------------------------------------------------------------------------ blind BM3D's noise estimate


def _benchmark(name: str = "bm3d_baseline"):
    """A script of benchmarks/ as a module."""
    path = Path(__file__).resolve().parent.parent / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_grain_position_bias():
    """grain.py's 2 x 2 position bias finds an even-row excess of one colour, and nothing in columns."""
    rng = np.random.default_rng(0)
    truth = np.clip(0.3 + 0.02 * rng.standard_normal((256, 256, 3)).cumsum(0).cumsum(1) / 256, 0, 1)
    out = truth.copy()
    out[0::2, :, 0] += 0.001
    grain = _benchmark("grain")
    rows, cols = grain.position_bias(out, truth, grain.flattest(grain.luminance(truth)))
    assert np.allclose(rows, [0.001, 0, 0], atol=1e-9) and np.allclose(cols, 0, atol=1e-9)


def test_grain_over_every_nth_frame(bench_unbiased):
    """grain.py --every: a line per frame and method, then each method's summary over those frames; a NAME
    and --every together, or neither, is a usage error."""
    from click.testing import CliRunner

    main_ = _benchmark("grain").main
    r = CliRunner().invoke(main_, [bench_unbiased, "--every", "2", "--weights",
                                   str(default_weights_path())])
    assert r.exit_code == 0, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 3 and lines[0].endswith(" dB") and "_x100.dng " in lines[0] + lines[1]
    summary = lines[-1]
    assert summary.startswith(f"{default_weights_path().name} over 2 frames: median grain ")
    psnr = float(summary.split("mean PSNR ")[1].split()[0])
    assert 15.0 < psnr < 50.0
    for args in ([bench_unbiased], [bench_unbiased, "alpha_x100.dng", "--every", "2"]):
        bad = CliRunner().invoke(main_, args + ["--weights", str(default_weights_path())])
        assert bad.exit_code == 2 and "give a frame's NAME or --every N" in bad.output


def test_blind_bm3d_noise_from_the_frame(tmp_path):
    """A flat-stepped frame of known Poisson-Gaussian noise: the blind mode's K and variance in DN."""
    rng = np.random.default_rng(7)
    k, read, black, white = 2.0, 6.0, 512.0, 16383
    # a dark frame's levels (up to 100 DN above black) in 16-px steps: each of the estimator's blocks flat
    levels = np.repeat(np.linspace(0.0, 100.0, 32), 16)
    signal = np.broadcast_to(levels[None, :], (512, 512))
    dark = k * rng.poisson(signal / k) + rng.normal(0.0, read, signal.shape) + black
    spec = DngSpec(cfa="GRBG", black=black, white=white, as_shot_neutral=(0.5, 1.0, 0.6), color_matrix=SONY_XYZ)
    write_dng(tmp_path / "flat.dng", np.clip(np.round(dark), 0, white).astype(np.uint16), spec)
    noise = _benchmark().blind_noise(read_raw(tmp_path / "flat.dng"))
    assert noise["K"] == pytest.approx(k, rel=0.2)
    assert noise["s2"] == pytest.approx(read**2 + 1.0 / 12.0, rel=0.3)


def test_bm3d_without_shot_noise_runs_gaussian():
    """An estimate with no shot noise (K = 0, as on 8-bit sensors) denoises as Gaussian noise, no VST."""
    pytest.importorskip("bm3d")
    rng = np.random.default_rng(8)
    clean = np.broadcast_to(np.linspace(5.0, 20.0, 32)[None, None, :], (4, 32, 32))
    noisy = clean + rng.normal(0.0, 2.0, clean.shape)
    method = _benchmark().BM3DMethod(blind=True, threads=1)
    out = method.denoise(noisy, 0.0, 4.0, {})
    assert method.last["vst"].startswith("none") and out.shape == clean.shape
    assert np.sqrt(np.mean((out - clean) ** 2)) < 0.5 * np.sqrt(np.mean((noisy - clean) ** 2))
