"""Row noise measured in the sensor's optically masked columns, and taken out of the mosaic.

Each read-out row of a CMOS sensor carries one offset of its own (row noise: the banding of deep shadows).
From the picture alone it cannot be told apart from a horizontal change of the scene at periods over
about 16 rows, which is what the network leaves (RESULTS.md, nineteenth session: removing it would bring
+0.12 dB on SID-like frames, +0.16 at x300, and the grid peak the README example keeps). Photosites that
the sensor covers from light (LibRaw's margins, a DNG's MaskedAreas) share their row's offset and see no
scene, so their mean per row measures it. Not every margin is masked: some carry picture or nothing.
Hence the margins are used only where their row means follow the picture's rows (the correlation of the
two, high-passed over rows), and subtracted times the regression gain of the one on the other, which is
also the right shrinkage for a narrow margin's own noise.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .rawio import RawFrame

MIN_COLUMNS = 8  # narrower margins average too little read noise away to measure a row
MIN_ROWS = 64  # fewer rows cannot show a correlation apart from chance
MIN_CORRELATION = 0.2  # of high-passed row means: unrelated series of >= 64 rows stay below it (about 4 sigma)
TREND_ROWS = 129  # the margins' slower changes (dark current, warming) are left: a moving mean over this many rows
# LibRaw states a black level it measures in masked areas in whole DN (rounded down, and seen 1.001 DN
# under the mean); the margin refines it where it is that close, and leaves a stated level it disagrees
# with more (masked photosites may sit a little off the picture's black on some sensors)
MAX_BLACK_SHIFT = 1.5


@dataclass(frozen=True)
class RowFix:
    """What was done to a frame's rows: how many masked columns were read, how closely their row means
    followed the picture's (high-passed over rows), the share of them subtracted and its size."""

    columns: int
    correlation: float
    gain: float  # 0: left as it was
    sigma_dn: float  # standard deviation of the offsets subtracted, DN
    black_shift: float | None = None  # largest change of a CFA position's black level, DN (None: kept)

    def describe(self) -> str:
        black = ("" if self.black_shift is None else
                 f"; black level measured there (moved up to {self.black_shift:.2f} DN)")
        if not self.gain:
            return (f"row noise left: the raw's {self.columns} margin columns do not follow the picture's rows "
                    f"(correlation {self.correlation:.2f}): not masked, or no row noise{black}")
        return (f"row noise: {self.sigma_dn:.2f} DN a row taken out, measured in {self.columns} masked columns "
                f"(correlation {self.correlation:.2f}, gain {self.gain:.2f}){black}")


def _high_pass(rows: np.ndarray) -> np.ndarray:
    """Each row against the mean of its same-colour neighbours two rows above and below (Bayer rows
    alternate colours): flat scenes and per-colour black levels cancel, a row's own offset stays."""
    return rows[2:-2] - 0.5 * (rows[:-4] + rows[4:])


def picture_rows(mosaic: np.ndarray) -> np.ndarray:
    """The picture's high-passed row offsets, DN: per row, a clipped mean of the vertical second difference
    (clipped at 4 robust sigmas, so that edges of the scene count little)."""
    m = mosaic.astype(np.float32, copy=False)
    d = m[2:-2] - 0.5 * (m[:-4] + m[4:])
    step = max(1, d.size // 200_000)
    sample = d.ravel()[::step]
    med = float(np.median(sample))
    bound = 4.0 * 1.4826 * float(np.median(np.abs(sample - med))) + 0.5  # + 0.5: integer codes of a flat dark
    np.clip(d, med - bound, med + bound, out=d)
    return d.mean(axis=1, dtype=np.float64)


def _trend(rows: np.ndarray) -> np.ndarray:
    """Moving mean over TREND_ROWS rows of each row parity (Bayer rows of one colour pair together)."""
    out = np.empty_like(rows)
    half = TREND_ROWS // 4  # rows of one parity on each side
    for parity in (0, 1):
        x = rows[parity::2]
        c = np.concatenate(([0.0], np.cumsum(x)))
        i = np.arange(x.size)
        lo, hi = np.maximum(i - half, 0), np.minimum(i + half + 1, x.size)
        out[parity::2] = (c[hi] - c[lo]) / (hi - lo)
    return out


def fix_rows(mosaic: np.ndarray, black: np.ndarray, white: float,
             margin: np.ndarray) -> tuple[np.ndarray | None, np.ndarray, RowFix]:
    """(mosaic, black, what was done) for a frame whose raw data has the `margin` (H, columns; columns in
    phase with the mosaic's CFA) beside it.

    Where the margin's row means follow the picture's rows, the mosaic comes back as float32 with each
    row's offset taken out (else None), and where the margin is masked, each CFA position's black level as
    the margin measures it: a fraction of a DN, where LibRaw states a black it measured there in whole DN,
    rounded down. The margin counts as masked where its rows follow the picture's (then a stated black up
    to MAX_BLACK_SHIFT away is refined) or where the stated black is LibRaw's rounding of its means.
    Photosites at white stay there (their light is unknown; rendering looks for them at white)."""
    h, columns = mosaic.shape[0], margin.shape[1]
    if margin.shape[0] != h:
        raise ValueError(f"margin of {margin.shape[0]} rows beside a mosaic of {h}")
    if h < MIN_ROWS or mosaic.shape[1] < 2 * MIN_COLUMNS or columns < MIN_COLUMNS:
        return None, black, RowFix(columns, 0.0, 0.0, 0.0)
    lo, hi = np.percentile(margin, (0.1, 99.9))  # hot photosites of the margin count as no more than these
    band = np.clip(margin, lo, hi).astype(np.float64)
    measured = np.array([[band[i::2, j::2].mean() for j in (0, 1)] for i in (0, 1)], np.float32)
    above = measured - black
    shift = float(np.abs(above).max())
    floored = bool(np.all((above > -0.02) & (above < 1.02)))  # LibRaw's whole DN, give or take its own area
    means = band.mean(axis=1)
    hm = _high_pass(means)
    hm -= hm.mean()
    var = float(hm @ hm)
    # each half of the picture on its own: row noise spans the width, the scene's horizontal edges (which a
    # margin of picture, not masked, would follow) seldom the same way in both
    half = mosaic.shape[1] // 4 * 2
    corr, gain = 1.0, 0.0
    for part in (mosaic[:, :half], mosaic[:, half:]):
        hp = picture_rows(part)
        hp -= hp.mean()
        both = float(np.sqrt(var * float(hp @ hp)))
        corr = min(corr, float(hm @ hp) / both if both > 0 else 0.0)
        gain += 0.5 * float(hm @ hp) / var if var > 0 else 0.0
    gain = min(gain, 1.0)
    if corr < MIN_CORRELATION or gain <= 0:
        return None, measured if floored else black, RowFix(columns, corr, 0.0, 0.0, shift if floored else None)
    offsets = (gain * (means - _trend(means))).astype(np.float32)
    out = mosaic.astype(np.float32) - offsets[:, None]
    out[mosaic >= white] = white
    refine = shift <= MAX_BLACK_SHIFT
    return out, measured if refine else black, RowFix(columns, corr, gain, float(offsets.std()),
                                                      shift if refine else None)


def correct(frame: RawFrame) -> RawFrame:
    """The frame with its row noise taken out, and its black level refined (unless a sensor profile measured
    it), where its margin is masked (`fix_rows`); `frame.rows` says what was done. Frames without a margin
    come back as they are."""
    if frame.margin is None:
        return frame
    fixed, black, fix = fix_rows(frame.mosaic, frame.black, frame.white, frame.margin)
    if frame.black_measured:  # a sensor profile's dark frames measured it better
        black, fix = frame.black, replace(fix, black_shift=None)
    return replace(frame, mosaic=frame.mosaic if fixed is None else fixed, black=black, rows=fix)
