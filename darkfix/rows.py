"""Row noise measured in the sensor's optically masked columns and in the picture's greens, and taken out
of the mosaic.

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

Without a margin, the picture still shows the part of the row noise that alternates from row to row: a
Bayer frame's two greens lie on neighbouring rows, so each row's greens against the greens of the rows
above and below (their second difference, edges clipped) measure a row's offset against its neighbours'.
The scene's own rows change slowly, so its share falls at the highest vertical frequencies, where row noise
has most: the row noise's size is measured there (the two halves of the frame against each other: the
scene differs between them, the row noise does not) and each row's offset recovered by a Wiener filter;
rows where an edge spans the frame (or either half of it) are left out, and what the two halves share
beyond white row noise (a periodic pattern of the scene) counts as noise. `picture_offsets`; it applies
with a sensor profile too (its master dark takes the fixed pattern, not each frame's).
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
# where the picture's estimate measures the row noise's size (cycles per row): the scene's rows hold least
# there, and the smallest of the three is taken, as a scene adds to it in one band more than in another
PICTURE_BANDS = ((0.15, 0.25), (0.25, 0.35), (0.35, 0.51))
SPIKE = 4.0  # robust sigmas: a row whose second difference stands out this far (in either half) holds an edge
MIN_PICTURE_SIGMA = 0.02  # DN: less row noise than this the picture's estimate leaves alone
# cycles per row: slower banding is the scene's as much as the rows' (and the second difference barely sees it)
MIN_PICTURE_FREQUENCY = 0.05
MIN_PICTURE_COLUMNS = 256  # fewer leave each half's row means too noisy for the halves' cross-spectrum


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
    picture_sigma: float = 0.0  # the row noise the picture's greens show, DN (0: none measured)
    picture_dn: float = 0.0  # standard deviation of the offsets their estimate took out, DN

    def describe(self) -> str:
        parts = []
        if self.columns:
            black = ("" if self.black_shift is None else
                     f"; black level from {self.used} masked columns (moved up to {self.black_shift:.2f} DN)")
            if not self.gain:
                parts.append(f"row noise left: the raw's {self.columns} margin columns do not follow the picture's "
                             f"rows (correlation {self.correlation:.2f}; not masked, or no row noise){black}")
            else:
                parts.append(f"row noise: {self.sigma_dn:.2f} DN a row taken out, measured in {self.used} masked "
                             f"columns (correlation {self.correlation:.2f}, gain {self.gain:.2f}){black}")
        if self.picture_sigma:
            parts.append(f"row noise from the picture's greens: {self.picture_sigma:.2f} DN a row, "
                         f"{self.picture_dn:.2f} DN taken out (the part that alternates between rows)")
        return "; ".join(parts)


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
    out = subtract_rows(mosaic, offsets, white)
    # each margin is whole CFA cells wide (rawio), so joined they keep their columns' phase
    cell = _cell_means(np.concatenate([b for b, _ in passing], axis=1), np.concatenate([k for _, k in passing]))
    shift = None if cell is None else float(np.abs(cell - black).max())
    refine = shift is not None and shift <= MAX_BLACK_SHIFT
    return out, cell if refine and cell is not None else black, RowFix(columns, corr, gain, float(offsets.std()),
                                                                       shift if refine else None, used)


def subtract_rows(mosaic: np.ndarray, offsets: np.ndarray, white: float,
                  out: np.ndarray | None = None) -> np.ndarray:
    """float32 mosaic less each row's offset (H,); photosites at white stay there, none goes past it. `out`
    (float32, the mosaic's shape; may be the mosaic itself) takes the result instead of a new array."""
    out = np.empty(mosaic.shape, np.float32) if out is None else out
    for r in range(0, mosaic.shape[0], _BAND):
        raw = mosaic[r : r + _BAND]
        part = np.subtract(raw, offsets[r : r + _BAND, None], dtype=np.float32)
        np.minimum(part, white, out=part)
        out[r : r + _BAND] = np.where(raw >= white, np.float32(white), part)
    return out


def _green_rows(mosaic: np.ndarray, cfa: str, black: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """For rows 1 to h - 2 (h the even row count), over the left and the right half of the frame, each (2,
    h - 2): the mean of each green less the mean of its four diagonal neighbours (greens of the rows above
    and below) clipped at 3 robust sigmas about its row parity's median, and the mean of the greens; None
    where the CFA has no green on each row parity."""
    greens = [i for i, c in enumerate(cfa) if c == "G"]
    if len(greens) != 2 or greens[0] // 2 == greens[1] // 2:
        return None
    col = {i // 2: i % 2 for i in greens}  # each row parity's green column
    h, w = mosaic.shape[0] // 2 * 2, mosaic.shape[1] // 2 * 2
    views = [mosaic[p:h:2, col[p]:w:2] for p in (0, 1)]  # float copies of them are made a band at a time

    def plane(p: int, rows: slice | np.ndarray) -> np.ndarray:
        return views[p][rows].astype(np.float32) - black[p, col[p]]

    n = views[0].shape[1]
    j = np.arange(1, n - 1)
    half = n // 2
    out, level = np.empty((2, h - 2)), np.empty((2, h - 2))

    def second(centre: np.ndarray, up: np.ndarray, down: np.ndarray, c: int) -> np.ndarray:
        # a green at column c + 2j has its diagonal neighbours at indices j + c - 1 and j + c of the other rows
        s = c - 1
        return centre[:, j] - 0.25 * (up[:, j + s] + up[:, j + s + 1] + down[:, j + s] + down[:, j + s + 1])

    rows = np.unique(np.linspace(1, h // 2 - 1, 32).astype(int))
    # clipped about each row parity's own median: the two greens' black levels may differ by more than the noise
    probes = (second(plane(1, rows - 1), plane(0, rows - 1), plane(0, rows), col[1]),
              second(plane(0, rows), plane(1, rows - 1), plane(1, rows), col[0]))
    centre = [float(np.median(p)) for p in probes]
    bound = 3.0 * max(1.4826 * float(np.median(np.abs(probes[1] - centre[1]))), 0.5)
    for m in range(0, h // 2 - 1, _BAND // 2):
        stop = min(m + _BAND // 2, h // 2 - 1)
        even, odd = plane(0, slice(m, stop + 1)), plane(1, slice(m, stop + 1))  # rows m to stop of each
        # row 2k (k >= 1) between odd rows k - 1 and k; row 2k + 1 between even rows k and k + 1
        d_even = second(even[1:], odd[:-1], odd[1:], col[0])
        d_odd = second(odd[:-1], even[:-1], even[1:], col[1])
        centres = (odd[:-1, j], even[1:, j])
        for d, c, mid, first in ((d_odd, centres[0], centre[0], 2 * m),  # row 2m + 1 is [.., 2m]
                                 (d_even, centres[1], centre[1], 2 * m + 1)):
            np.clip(d, mid - bound, mid + bound, out=d)
            out[0, first : 2 * stop : 2] = d[:, : half - 1].mean(axis=1)
            out[1, first : 2 * stop : 2] = d[:, half - 1 :].mean(axis=1)
            level[0, first : 2 * stop : 2] = c[:, : half - 1].mean(axis=1)
            level[1, first : 2 * stop : 2] = c[:, half - 1 :].mean(axis=1)
    return out, level


def picture_offsets(mosaic: np.ndarray, cfa: str, black: np.ndarray) -> tuple[np.ndarray, float] | None:
    """(each row's offset (H,) in DN, the row noise's standard deviation in DN) as the picture's greens show
    it, or None where they show none (or the frame is too small, or its CFA not Bayer)."""
    h = mosaic.shape[0]
    if h < MIN_ROWS or mosaic.shape[1] < MIN_PICTURE_COLUMNS:
        return None
    found = _green_rows(mosaic, cfa, black)
    if found is None:
        return None
    a, level = found
    n = a.shape[1]
    # a difference between the two greens' black levels, or their responses (Gr/Gb imbalance: a share of
    # the light), alternates from row to row too: fitted (to each half) and taken out first, then rows
    # where an edge spans the frame are left out, and the fit made again without them
    sign = np.where(np.arange(n) % 2 == 0, 1.0, -1.0)
    edge = np.zeros(n, bool)
    raw = a.copy()
    for _ in range(2):
        for i in (0, 1):
            x = np.stack([np.ones(n), sign, sign * level[i]], axis=1)
            fit = np.linalg.lstsq(x[~edge], raw[i, ~edge], rcond=None)[0]
            a[i] = raw[i] - x @ fit
        spread = 1.4826 * np.median(np.abs(a[:, ~edge]), axis=1, keepdims=True)
        edge = np.any(np.abs(a) > SPIKE * spread, axis=0)
        edge[1:] |= edge[:-1].copy()
        edge[:-1] |= edge[1:].copy()
    a[:, edge] = 0.0
    f = np.fft.rfftfreq(n)
    response = 1.0 - np.cos(2.0 * np.pi * f)  # of a row's offset less the mean of its two neighbours'
    left, right = np.fft.rfft(a, axis=1)
    shared = (left * right.conj()).real / n  # the halves' own noise does not correlate: the row noise's power
    own = float((np.abs(left - right) ** 2)[f >= 0.1].mean()) / (4 * n)  # the noise of the halves' mean
    var = min(float(shared[(f >= lo) & (f < hi)].mean() / (response[(f >= lo) & (f < hi)] ** 2).mean())
              for lo, hi in PICTURE_BANDS)
    if not var > MIN_PICTURE_SIGMA**2:
        return None
    # what the halves share beyond white row noise is scene (stripes across the frame: blinds, courses of
    # brick): the Wiener filter counts it as noise, so that a periodic pattern of the scene stays
    smooth = np.convolve(np.pad(shared, 4, mode="edge"), np.ones(9) / 9, mode="valid")
    scene = np.maximum(smooth - var * response**2, 0.0)
    wiener = response * var / (response**2 * var + scene + max(own, 1e-3 * var))
    wiener[f < MIN_PICTURE_FREQUENCY] = 0.0
    offsets = np.zeros(h, np.float32)
    offsets[1 : n + 1] = np.fft.irfft(wiener * 0.5 * (left + right), n)
    if not offsets.std() > MIN_PICTURE_SIGMA / 2:
        return None
    return offsets, float(np.sqrt(var))


def correct(frame: RawFrame, margins: bool = True, picture: bool = True) -> RawFrame:
    """The frame with its row noise taken out: measured in its `margins` where they are masked, with its
    black level refined there (`fix_rows`; not after a sensor profile, `black_measured`), then what of it the
    `picture`'s greens still show (`picture_offsets`). `frame.rows` says what was done."""
    mosaic, black, fix = frame.mosaic, frame.black, None
    if margins and frame.margins and not frame.black_measured:
        fixed, black, fix = fix_rows(mosaic, black, frame.white, frame.margins)
        mosaic = mosaic if fixed is None else fixed
    found = picture_offsets(mosaic, frame.cfa, black) if picture else None
    if found is not None:
        offsets, sigma = found
        # in place where the margins' correction already made the mosaic a float copy of its own
        mosaic = subtract_rows(mosaic, offsets, frame.white, out=None if mosaic is frame.mosaic else mosaic)
        fix = replace(fix or RowFix(0, 0.0, 0.0, 0.0), picture_sigma=sigma, picture_dn=float(offsets.std()))
    if fix is None:
        return frame
    return replace(frame, mosaic=mosaic, black=black, rows=fix)
