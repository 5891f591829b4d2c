"""The paper's automatic amplification: reference cases, an independent implementation, properties."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from darkfix.amplify import (AMP_MAX, AMP_MIN, AUTO_MAX, AUTO_MEAN, AUTO_P98, estimate_amplification,
                             estimate_exposure, estimate_from_raw)
from darkfix.packing import channel_black, pack


def normalise(planes: np.ndarray, black: np.ndarray, white: float) -> np.ndarray:
    """The paper's normalisation in float32: max(raw - black, 0) / (white - black), clipped at 1."""
    b = np.asarray(black, dtype=np.float32).reshape(-1, 1, 1)
    return np.clip((planes.astype(np.float32) - b) / (np.float32(white) - b), 0.0, 1.0)

BLACK, WHITE = 512.0, 16383.0
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def spec_amplification(x: np.ndarray) -> float:
    """DESIGN.md's definition, written out directly (searchsorted, float64 sums)."""
    x = np.asarray(x, dtype=np.float64).ravel()
    edges = (2.0 ** np.linspace(0.0, 8.0, 128) - 1.0) / 255.0
    w = np.logspace(0.0, 5.0, 127)
    w = (w / w.max())[::-1]
    idx = np.searchsorted(edges, x, side="right") - 1  # edges[k] <= x < edges[k + 1]
    inside = (idx >= 0) & (idx < 127)
    ww = w[idx[inside]]
    den = float(np.sum(x[inside] * ww))
    if not inside.any():
        return AMP_MIN  # all saturated
    if den <= 0:
        return AMP_MAX
    return float(np.clip(0.01 * np.sum(ww) / den, AMP_MIN, AMP_MAX))


@pytest.fixture(scope="module")
def cases(reference):
    z = np.load(reference / "amplifier_cases.npz")
    return [(z[f"raw{i}"], float(z[f"amp{i}"])) for i in range(5)]


def test_reference_cases_from_normalised(cases):
    for raw, expected in cases:
        x = np.maximum(raw.astype(np.float32) - np.float32(BLACK), 0) / np.float32(WHITE - BLACK)
        got = estimate_amplification(x)
        assert got == pytest.approx(expected, rel=1e-4), (got, expected)


def test_reference_cases_from_raw(cases):
    for raw, expected in cases:
        got = estimate_from_raw(raw, np.full((2, 2), BLACK, np.float32), WHITE)
        assert got == pytest.approx(expected, rel=1e-4), (got, expected)


def test_reference_cases_span_a_range(cases):
    # the five cases are not one number five times: the test above really discriminates
    amps = sorted(a for _, a in cases)
    assert amps[-1] / amps[0] > 4


def test_design_example_value(reference):
    raw = np.load(reference / "compat_raw.npy")
    x = normalise(raw[None], np.array([BLACK]), WHITE)
    assert estimate_amplification(x) == pytest.approx(7.32, abs=0.01)


def test_bin_edges_exact():
    """Values exactly on a bin edge belong to the bin above; 1.0 and above to none."""
    edges = (2.0 ** np.linspace(0.0, 8.0, 128) - 1.0) / 255.0
    rng = np.random.default_rng(3)
    probes = np.concatenate([edges, np.nextafter(edges, 0), np.nextafter(edges, 2), [1.0, 1.5, 0.0]])
    for _ in range(20):
        sample = rng.choice(probes, size=300)
        assert estimate_amplification(sample) == pytest.approx(spec_amplification(sample), rel=1e-12)


def test_limits():
    assert estimate_amplification(np.zeros(1000)) == AMP_MAX  # black frame
    assert estimate_amplification(np.ones(1000)) == AMP_MIN  # all saturated: nothing to brighten
    assert estimate_amplification(np.full(1000, 0.5)) == AMP_MIN  # bright frame: 0.01 / 0.5 < 1
    # a frame at 1/100 of full scale: A = 0.01 / 0.01 = 1 would be clipped; at 1e-3: A = 10
    assert estimate_amplification(np.full(1000, 1e-3)) == pytest.approx(10.0, rel=1e-9)


def test_chunking_does_not_change_the_result(monkeypatch):
    import darkfix.amplify as amp

    rng = np.random.default_rng(0)
    x = rng.gamma(1.0, 0.004, size=50_000).astype(np.float32)
    whole = estimate_amplification(x)
    monkeypatch.setattr(amp, "_CHUNK", 997)
    assert estimate_amplification(x) == pytest.approx(whole, rel=1e-12)
    assert whole == pytest.approx(spec_amplification(x), rel=1e-12)


@SETTINGS
@given(hnp.arrays(np.float32, st.integers(1, 400),
                  elements=st.floats(0.0, 2.0, width=32, allow_nan=False, allow_infinity=False)))
def test_random_normalised_inputs(x):
    a = estimate_amplification(x)
    assert np.isfinite(a) and AMP_MIN <= a <= AMP_MAX
    assert a == pytest.approx(spec_amplification(x), rel=1e-9)


@st.composite
def raw_mosaics(draw):
    h = 2 * draw(st.integers(1, 12))
    w = 2 * draw(st.integers(1, 12))
    white = draw(st.integers(600, 65535))
    black = draw(st.lists(st.integers(0, 599), min_size=4, max_size=4))
    hi = draw(st.sampled_from([white, min(white, max(black) + 50), 65535]))
    mosaic = draw(hnp.arrays(np.uint16, (h, w), elements=st.integers(0, hi)))
    return mosaic, np.asarray(black, np.float32).reshape(2, 2), float(white)


@SETTINGS
@given(raw_mosaics())
def test_estimate_from_raw_equals_estimate_of_normalised(args):
    mosaic, black, white = args
    a = estimate_from_raw(mosaic, black, white)
    planes, layout = pack(mosaic, "RGGB")
    b = estimate_amplification(normalise(planes, channel_black(black, layout), white))
    assert np.isfinite(a) and AMP_MIN <= a <= AMP_MAX
    assert a == pytest.approx(b, rel=1e-9)


# --- automatic exposure (the default) ---


def _synthetic_dark(balanced: np.ndarray, wb: tuple[float, float, float], ratio: float, black: float = 512.0,
                    white: float = 16383.0, seed: int = 0) -> np.ndarray:
    """An RGGB mosaic of the white-balanced linear image (3, H, W) at exposure 1/ratio with shot noise."""
    rng = np.random.default_rng(seed)
    cam = balanced / np.asarray(wb)[:, None, None]
    mosaic = np.empty(balanced.shape[1:])
    mosaic[0::2, 0::2], mosaic[0::2, 1::2] = cam[0, 0::2, 0::2], cam[1, 0::2, 1::2]
    mosaic[1::2, 0::2], mosaic[1::2, 1::2] = cam[1, 1::2, 0::2], cam[2, 1::2, 1::2]
    dn = rng.poisson(mosaic * (white - black) / ratio) + rng.normal(0, 2.0, mosaic.shape)
    return np.clip(np.round(dn + black), 0, white).astype(np.uint16)


def _cell(wb):
    return np.array([[wb[0], wb[1]], [wb[1], wb[2]]]) / wb[1]


@pytest.mark.parametrize("ratio", [20.0, 100.0, 300.0])
@pytest.mark.parametrize("wb", [(1.0, 1.0, 1.0), (2.4, 1.0, 1.6), (1.2, 1.0, 2.9)])
def test_auto_exposure_recovers_the_ratio_of_a_typical_scene(ratio, wb):
    """A scene with the training photos' typical levels (mean and 98th percentile of its 16 px cells at
    AUTO_MEAN and AUTO_P98 of white) is given back its true ratio, whatever the white balance and noise."""
    rng = np.random.default_rng(1)
    h, w = 256, 384
    # cells drawn so that their mean and 98th percentile are what the calibration expects
    cells = np.clip(rng.gamma(1.6, AUTO_MEAN / 1.6, (h // 16, w // 16)), 0, 1)
    cells *= AUTO_MEAN / cells.mean()
    balanced = np.repeat(np.repeat(cells, 16, 0), 16, 1)[None].repeat(3, 0)
    raw = _synthetic_dark(balanced, wb, ratio)
    estimate = estimate_exposure(raw, np.full((2, 2), 512.0), 16383.0, _cell(wb))
    p98 = np.percentile(cells, 98)
    expected = ratio * np.sqrt(AUTO_P98 / p98)  # only the percentile's own spread moves it
    assert abs(np.log2(estimate / expected)) < 0.1


def test_auto_exposure_is_robust_to_lamps_and_black_error():
    rng = np.random.default_rng(2)
    balanced = np.full((3, 256, 256), 0.18) * rng.uniform(0.5, 1.5, (1, 256, 256))
    base = estimate_exposure(_synthetic_dark(balanced, (2, 1, 1.5), 100.0), np.full((2, 2), 512.0), 16383.0,
                             _cell((2, 1, 1.5)))
    lamps = balanced.copy()
    lamps[:, 10:20, 10:20] = 50.0  # a lamp, saturating the sensor
    lit = estimate_exposure(_synthetic_dark(lamps, (2, 1, 1.5), 100.0), np.full((2, 2), 512.0), 16383.0,
                            _cell((2, 1, 1.5)))
    off = estimate_exposure(_synthetic_dark(balanced, (2, 1, 1.5), 100.0), np.full((2, 2), 515.0), 16383.0,
                            _cell((2, 1, 1.5)))
    assert abs(np.log2(lit / base)) < 0.5 and abs(np.log2(off / base)) < 0.5


def test_auto_exposure_limits_and_tiny_frames():
    black = np.full((2, 2), 512.0)
    assert estimate_exposure(np.full((64, 64), 512, np.uint16), black, 16383.0, np.ones((2, 2))) == AUTO_MAX
    assert estimate_exposure(np.full((64, 64), 16383, np.uint16), black, 16383.0, np.ones((2, 2))) == AMP_MIN
    tiny = np.full((6, 10), 600, np.uint16)  # smaller than one 16 px cell
    assert AMP_MIN < estimate_exposure(tiny, black, 16383.0, np.ones((2, 2))) < AUTO_MAX


@pytest.mark.parametrize("shape", [(600, 1003), (33, 47), (512, 768)])
def test_exposure_thumbnail_is_the_plain_formula(shape):
    """Cell means of max(raw - black, 0) / (white - black), clipped at 1, times the white balance, per CFA
    position: the banded, row-broadcast computation against the formula written out (bands of 256 rows
    and widths that are no multiple of 16 included)."""
    from darkfix.amplify import AUTO_CELL, exposure_thumbnail

    rng = np.random.default_rng(shape[0])
    mosaic = rng.integers(0, 16384, shape).astype(np.uint16)
    black = np.array([[512.3, 511.0], [509.5, 513.7]])
    wb = np.array([[2.1, 1.0], [1.0, 1.6]])
    got = exposure_thumbnail(mosaic, black, 16383.0, wb)
    h, w = (s // AUTO_CELL * AUTO_CELL for s in shape)
    b = np.tile(black, (h // 2, w // 2))
    x = np.clip((mosaic[:h, :w] - b) / (16383.0 - b), 0.0, 1.0) * np.tile(wb, (h // 2, w // 2))
    want = x.reshape(h // AUTO_CELL, AUTO_CELL, w // AUTO_CELL, AUTO_CELL).mean(axis=(1, 3))
    assert got.shape == want.shape and np.allclose(got, want, rtol=1e-5, atol=1e-6)
