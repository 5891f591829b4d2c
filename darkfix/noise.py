"""The sensor noise model and its estimates (no torch: restoring and the lab's synthesis share it).

A raw value normalised as darkfix reads it, x = (raw - black) / (white - black), has the variance

    var(x) = shot * x + read ** 2

per packed plane (R, G1, G2, B after the CFA is aligned to RGGB): `shot` is the system gain K (DN per
electron) over the range, `read` the standard deviation of everything that does not depend on the signal
(read noise, row noise, the ADC's rounding), in the same units. Noise-aware weights (metadata
`input: balanced+noise`) read, beside the four packed planes, the standard deviation this predicts for
each packed pixel after amplification and white balance (`sigma_planes`).

Where a frame's noise level comes from, best first: a sensor profile (`darkfix calibrate`), the DNG's
NoiseProfile tag (S, O per plane: variance S x + O), an estimate from the frame itself (`estimate`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

MID_GREY = 0.18  # normalised, after amplification: where `NoiseLevel.relative` compares frames


@dataclass(frozen=True)
class NoiseLevel:
    """A frame's noise in normalised units, per packed plane (R, G1, G2, B): var(x) = shot * x + read ** 2."""

    shot: tuple[float, float, float, float]
    read: tuple[float, float, float, float]
    source: str = "given"  # where the numbers came from, for `restore -v`: profile, dng, estimate or given

    @classmethod
    def from_dn(cls, k: float, read_dn: float, white_range: float, row_dn: float = 0.0,
                source: str = "given") -> "NoiseLevel":
        """From a system gain K (DN per electron), read and row noise standard deviations (DN) and the
        sensor's range (white - black, DN); the ADC's rounding (1/12 DN^2) is added."""
        read = math.sqrt(read_dn**2 + row_dn**2 + 1.0 / 12.0) / white_range
        return cls((k / white_range,) * 4, (read,) * 4, source)

    def sigma(self, x: float) -> float:
        """The green planes' standard deviation at normalised signal x (mean of G1 and G2)."""
        return float(np.mean([math.sqrt(max(self.shot[i] * x + self.read[i] ** 2, 0.0)) for i in (1, 2)]))

    def relative(self, gain: float) -> float:
        """The noise of a mid-grey (MID_GREY once amplified by `gain`) relative to its level: one number for
        how noisy a frame is at the brightness it is restored to (`synth.ratio_for_noise` inverts it)."""
        x = MID_GREY / gain
        return self.sigma(x) / x

    def describe(self) -> str:
        """One line for `restore -v`."""
        return (f"noise from {self.source}: shot {np.mean(self.shot):.3g}, read {np.mean(self.read):.3g} "
                f"(sigma {self.sigma(0.01):.3g} at 1 % of white)")


def amplified_terms(level: NoiseLevel, gains: Any) -> tuple[np.ndarray, np.ndarray]:
    """(a, b), each (4,): after each plane is multiplied by `gains` (amplification times white balance),
    y = g x has var(y) = a * y + b (a = g shot, b = (g read)^2)."""
    g = np.asarray(gains, np.float64).reshape(4)
    return g * np.asarray(level.shot), (g * np.asarray(level.read)) ** 2


def sigma_planes(y: Any, a: Any, b: Any) -> Any:
    """The predicted standard deviation of each amplified packed pixel, from its own (noisy) value:
    sqrt(a max(y, 0) + b), `a` and `b` broadcast against y's planes. Works on numpy arrays and torch
    tensors alike (no functions of either library), so training and restoring compute it identically."""
    return (a * (y + abs(y)) * 0.5 + b) ** 0.5


def sigma_planes_into(y: np.ndarray, a: Any, b: Any, out: np.ndarray) -> np.ndarray:
    """`sigma_planes` for numpy, written into `out` without temporaries (the same values, bit for bit):
    restoring computes it for every tile, where the temporaries cost as much as the planes."""
    np.maximum(y, 0.0, out=out)
    out *= a
    out += b
    return np.sqrt(out, out=out)


BLOCK = 8  # cells (2 x 2 photosites) per side of the estimator's blocks: 64 samples each
BINS = 12  # signal levels the estimator fits its line through
QUANTILE = 0.1  # of the blocks' variances in a bin: the smoothest blocks, texture left out
# the QUANTILE of `_block_stats`' variance statistic on unit white noise (measured on 2048 x 2048 samples)
QUANTILE_OF_NOISE = 0.7497
MAX_BLOCKS = 32768  # larger frames are sampled on a regular grid of blocks


def _block_stats(g1: np.ndarray, g2: np.ndarray, step: int) -> tuple[np.ndarray, np.ndarray]:
    """Per BLOCK x BLOCK block of cells (every `step`-th block row and column): the mean of the two green
    planes and the variance of their difference over sqrt(2). The two greens of a cell are diagonal
    neighbours that see nearly the same light, so their difference is almost all noise (texture leaves
    little in it, unlike any difference within one plane), with the variance of one green photosite;
    row and column offsets cancel, and a constant offset between the greens goes with the block's mean."""
    h = (min(g1.shape[0], g2.shape[0]) // BLOCK) * BLOCK
    w = (min(g1.shape[1], g2.shape[1]) // BLOCK) * BLOCK
    cols = np.arange(0, w // BLOCK)[::step]
    means, variances = [], []
    for y in range(0, h, BLOCK * step):
        a = g1[y : y + BLOCK, :w].astype(np.float32).reshape(BLOCK, w // BLOCK, BLOCK)[:, cols]
        b = g2[y : y + BLOCK, :w].astype(np.float32).reshape(BLOCK, w // BLOCK, BLOCK)[:, cols]
        means.append(0.5 * (a + b).mean(axis=(0, 2)))
        d = (a - b) * np.float32(0.5**0.5)
        # white noise keeps a quarter of its variance in 2 x 2 means, texture (correlated) nearly all of it
        coarse = d.reshape(BLOCK // 2, 2, -1, BLOCK // 2, 2).mean(axis=(1, 4))
        variances.append(4.0 / 3.0 * (d.var(axis=(0, 2)) - coarse.var(axis=(0, 2))))
    return np.concatenate(means), np.concatenate(variances)


def _fit(means: np.ndarray, variances: np.ndarray) -> tuple[float, float]:
    """(shot, read^2): var = shot m + read^2 through the bins' levels and their smoother blocks' variance
    (relative least squares, both terms at least 0)."""
    order = np.argsort(means)
    levels, vs = [], []
    for chunk in np.array_split(order, min(BINS, max(1, len(order) // 8))):
        levels.append(np.median(means[chunk]))
        vs.append(np.quantile(variances[chunk], QUANTILE) / QUANTILE_OF_NOISE)
    m, v = np.asarray(levels, np.float64), np.maximum(np.asarray(vs, np.float64), 1e-20)
    w = 1.0 / v
    a = np.stack([m * w, w], axis=1)
    (shot, read2), *_ = np.linalg.lstsq(a, v * w, rcond=None)
    if shot < 0:  # no measurable signal dependence: read noise alone
        return 0.0, float(np.sum(w * v) / np.sum(w))
    if read2 < 0:  # shot noise alone, through the origin
        return float(np.sum(w * m * v) / max(np.sum(w * m * m), 1e-30)), 0.0
    return float(shot), float(read2)


def estimate(planes: Any, black: Any, white: float) -> NoiseLevel:
    """A frame's noise from the frame itself (a Poisson-Gaussian fit in the manner of Foi et al. 2008, on
    the two green planes' difference): `planes` are the four packed planes (R, G1, G2, B; raw codes, e.g.
    uint16 views), `black` their four black levels, `white` the white level. The same terms serve all four
    planes (one sensor, in normalised units). Heavily textured frames read a little high."""
    black = np.asarray(black, np.float64).reshape(4)
    g1, g2 = planes[1], planes[2]
    blocks = (min(g1.shape[0], g2.shape[0]) // BLOCK) * (min(g1.shape[1], g2.shape[1]) // BLOCK)
    if blocks == 0:
        raise ValueError(f"frame too small to estimate its noise ({g1.shape[0]} x {g1.shape[1]} cells)")
    step = max(1, int(math.ceil(math.sqrt(blocks / MAX_BLOCKS))))
    means, variances = _block_stats(g1, g2, step)
    b = 0.5 * (black[1] + black[2])
    rng = float(white) - b
    shot, read2 = _fit((means - b) / rng, variances / rng**2)
    # never below the ADC's rounding: flat areas of a sensor with less noise than that hold no detail
    read = max(math.sqrt(read2), math.sqrt(1.0 / 12.0) / rng)
    return NoiseLevel((shot,) * 4, (read,) * 4, "estimate")


def from_dng_profile(values: Any, plane_colours: str = "RGGB") -> NoiseLevel | None:
    """The DNG NoiseProfile tag (S, O pairs, one per colour plane R, G, B or one for all; variance
    S x + O of the normalised signal x) as a NoiseLevel for packed planes of `plane_colours`; None for a
    tag that does not parse."""
    v = np.asarray(values, np.float64).ravel()
    if v.size not in (2, 6) or not np.all(np.isfinite(v)) or np.any(v < 0):
        return None
    pairs = v.reshape(-1, 2)
    per = {c: pairs[min(i, len(pairs) - 1)] for i, c in enumerate("RGB")}
    shot = tuple(float(per[c][0]) for c in plane_colours)
    read = tuple(math.sqrt(float(per[c][1])) for c in plane_colours)
    return NoiseLevel(shot, read, "dng")  # type: ignore[arg-type]
