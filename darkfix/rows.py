"""Row noise measured in the sensor's optically masked columns, and taken out of the mosaic.

Each read-out row of a CMOS sensor carries one offset of its own (row noise: the banding of deep shadows).
From the picture alone it cannot be told apart from a horizontal change of the scene at periods over
about 16 rows, which is what the network leaves (RESULTS.md, nineteenth session: removing it would bring
+0.12 dB on SID-like frames, +0.16 at x300, and the grid peak the README example keeps). Photosites that
the sensor covers from light (LibRaw's margins, a DNG's MaskedAreas) share their row's offset and see no
scene, so their mean per row measures it. Not every margin is masked: some carry picture or nothing.
Hence each margin (left, right) is used only where its row means follow the picture's rows in both halves
of the frame (the correlation of the two, high-passed over rows), columns that stand apart from the rest
of it (light, or dead) left out, and subtracted times the regression gain of the one on the other, which
is also the right shrinkage for a narrow margin's own noise.

The same margins give the black level: LibRaw measures it in a masked area where it knows one, and states
it rounded down to whole DN (0.5 DN low on average: at x300 a shadow cast). Where a margin follows the
rows, or the stated level is that rounding of a margin's means, each CFA position's black is the margin's
mean there. Not with a sensor profile: its dark frames measured the black, and its master dark took the
picture's fixed row pattern but not the margin's.
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
# a margin that follows the rows refines a stated black up to this far (LibRaw's rounding, seen up to 1.001
# DN, and its own choice of area); masked photosites may sit further off the picture's black on some sensors
MAX_BLACK_SHIFT = 1.5
_BAND = 256  # rows at a time: the float copies stay small beside the frame


@dataclass(frozen=True)
class RowFix:
    """What was done to a frame's rows: how many margin columns were read (and of them used), how
    closely their row means followed the picture's (high-passed over rows), the share subtracted and its
    size, and how far the black level moved."""

    columns: int
    correlation: float
    gain: float  # 0: left as it was
    sigma_dn: float  # standard deviation of the offsets subtracted, DN
    black_shift: float | None = None  # largest change of a CFA position's black level, DN (None: kept)
    used: int = 0  # margin columns the offsets and the black came from

    def describe(self) -> str:
        black = ("" if self.black_shift is None else
                 f"; black level from {self.used} masked columns (moved up to {self.black_shift:.2f} DN)")
        if not self.gain:
            return (f"row noise left: the raw's {self.columns} margin columns do not follow the picture's rows "
                    f"(correlation {self.correlation:.2f}; not masked, or no row noise){black}")
        return (f"row noise: {self.sigma_dn:.2f} DN a row taken out, measured in {self.used} masked columns "
                f"(correlation {self.correlation:.2f}, gain {self.gain:.2f}){black}")


def _high_pass(rows: np.ndarray) -> np.ndarray:
    """Each row against the mean of its same-colour neighbours two rows above and below (Bayer rows
    alternate colours): flat scenes and per-colour black levels cancel, a row's own offset stays."""
    return rows[2:-2] - 0.5 * (rows[:-4] + rows[4:])


def picture_rows(mosaic: np.ndarray) -> np.ndarray:
    """The picture's high-passed row offsets, DN (rows 2 to H - 3): per row, a mean of the vertical second
    difference clipped at 4 robust sigmas (so that edges of the scene count little), in bands of rows."""
    h, w = mosaic.shape
    probe = np.linspace(2, h - 3, min(h - 4, 64)).astype(int)
    cols = slice(None, None, max(1, w * len(probe) // 200_000))
    m = mosaic[:, cols]
    sample = (m[probe].astype(np.float32) - 0.5 * (m[probe - 2].astype(np.float32) + m[probe + 2])).ravel()
    med = float(np.median(sample))
    bound = 4.0 * 1.4826 * float(np.median(np.abs(sample - med))) + 0.5  # + 0.5: integer codes of a flat dark
    out = np.empty(h - 4)
    for r in range(0, h - 4, _BAND):
        d = _high_pass(mosaic[r : r + _BAND + 4].astype(np.float32))
        out[r : r + len(d)] = np.clip(d, med - bound, med + bound).mean(axis=1, dtype=np.float64)
    return out


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


def _dark_columns(margin: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the margin as float64 with hot photosites clipped to its 0.1-99.9 %, which of its columns to use):
    those whose mean and spread stand with the rest of the margin's (a column of picture light, or a dead
    one, does not)."""
    lo, hi = np.percentile(margin, (0.1, 99.9))
    band = np.clip(margin, lo, hi).astype(np.float64)
    mean, spread = band.mean(axis=0), band.std(axis=0)
    centre, typical = float(np.median(mean)), float(np.median(spread))
    # a column's mean wanders by spread / sqrt(rows) by chance, and black differs a little per CFA column
    off = 4.0 * 1.4826 * float(np.median(np.abs(mean - centre))) + 4.0 * typical / np.sqrt(len(band)) + 0.25
    # + 0.3: a sensor of little read noise has margins of one code, a stray code apart
    keep = (np.abs(mean - centre) <= off) & (spread <= 1.5 * typical + 0.3)
    return band, keep


def _cell_means(band: np.ndarray, keep: np.ndarray) -> np.ndarray | None:
    """(2, 2) mean of each CFA position over the kept columns (None where a position has none)."""
    parity = np.arange(band.shape[1]) % 2
    out = np.empty((2, 2))
    for j in (0, 1):
        cols = keep & (parity == j)
        if not cols.any():
            return None
        for i in (0, 1):
            out[i, j] = band[i::2, cols].mean()
    return out.astype(np.float32)


def fix_rows(mosaic: np.ndarray, black: np.ndarray, white: float,
             margins: tuple[np.ndarray, ...]) -> tuple[np.ndarray | None, np.ndarray, RowFix]:
    """(mosaic, black, what was done) for a frame whose raw data has these `margins` beside it (left,
    right: (H, columns), columns in phase with the mosaic's CFA).

    Where a margin's row means follow the picture's rows, the mosaic comes back as float32 with each row's
    offset taken out (else None) and the black as that margin measures it (within MAX_BLACK_SHIFT of the
    stated one). Where none does, the black is still a margin's where the stated one is LibRaw's rounding
    down of that margin's means. Photosites at white stay there, none goes past it."""
    h = mosaic.shape[0]
    columns = sum(m.shape[1] for m in margins)
    if h < MIN_ROWS or mosaic.shape[1] < 2 * MIN_COLUMNS or any(m.shape[0] != h for m in margins):
        return None, black, RowFix(columns, 0.0, 0.0, 0.0)
    candidates = []
    for margin in margins:
        if np.count_nonzero(margin <= 0) > 0.01 * margin.size:
            continue  # clipped at 0 (a black level of 0): its means sit above the black, its rows' flattened
        band, keep = _dark_columns(margin)
        if keep.sum() >= MIN_COLUMNS:
            candidates.append((band, keep))
    if not candidates:  # the picture's rows (a pass over the frame) only where a margin may use them
        return None, black, RowFix(columns, 0.0, 0.0, 0.0)
    half = mosaic.shape[1] // 4 * 2
    # each half of the picture on its own: row noise spans the width, the scene's horizontal edges (which a
    # margin of picture would follow) seldom the same way in both
    halves = [hp - hp.mean() for hp in (picture_rows(mosaic[:, :half]), picture_rows(mosaic[:, half:]))]

    def follow(means: np.ndarray) -> tuple[float, float]:
        hm = _high_pass(means)
        hm -= hm.mean()
        var = float(hm @ hm)
        if var <= 0:
            return 0.0, 0.0
        corr = min(float(hm @ hp) / max(float(np.sqrt(var * float(hp @ hp))), 1e-300) for hp in halves)
        return corr, min(sum(float(hm @ hp) / var for hp in halves) / 2, 1.0)

    sides = [(band, keep, *follow(band[:, keep].mean(axis=1))) for band, keep in candidates]
    best = max(corr for _, _, corr, _ in sides)
    passing = [(b, k) for b, k, corr, gain in sides if corr >= MIN_CORRELATION and gain > 0]
    if not passing:
        for band, keep, _, _ in sides:  # LibRaw's black from this margin, in whole DN?
            cell = _cell_means(band, keep)
            # (a hundredth of a DN either way: LibRaw's sums run over its own area, unclipped)
            if cell is not None and bool(np.all((cell > black - 0.01) & (cell < black + 1.01))):
                return None, cell, RowFix(columns, best, 0.0, 0.0, float(np.abs(cell - black).max()),
                                          int(keep.sum()))
        return None, black, RowFix(columns, best, 0.0, 0.0)
    means = np.concatenate([b[:, k] for b, k in passing], axis=1).mean(axis=1)
    used = int(sum(k.sum() for _, k in passing))
    corr, gain = follow(means)
    offsets = (gain * (means - _trend(means))).astype(np.float32)
    out = np.empty(mosaic.shape, np.float32)
    for r in range(0, h, _BAND):
        raw = mosaic[r : r + _BAND]
        part = np.subtract(raw, offsets[r : r + _BAND, None], dtype=np.float32)
        np.minimum(part, white, out=part)
        out[r : r + _BAND] = np.where(raw >= white, np.float32(white), part)
    # each margin is whole CFA cells wide (rawio), so joined they keep their columns' phase
    cell = _cell_means(np.concatenate([b for b, _ in passing], axis=1), np.concatenate([k for _, k in passing]))
    shift = None if cell is None else float(np.abs(cell - black).max())
    refine = shift is not None and shift <= MAX_BLACK_SHIFT
    return out, cell if refine and cell is not None else black, RowFix(columns, corr, gain, float(offsets.std()),
                                                                       shift if refine else None, used)


def correct(frame: RawFrame) -> RawFrame:
    """The frame with its row noise taken out and its black level refined where its margins say
    (`fix_rows`); `frame.rows` says what was done. Frames without margins, or with a sensor profile
    applied (`black_measured`), come back as they are."""
    if not frame.margins or frame.black_measured:
        return frame
    fixed, black, fix = fix_rows(frame.mosaic, frame.black, frame.white, frame.margins)
    return replace(frame, mosaic=frame.mosaic if fixed is None else fixed, black=black, rows=fix)
