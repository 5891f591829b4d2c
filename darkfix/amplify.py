"""Choosing the amplification of a dark frame: darkfix's automatic exposure (the default) and the
paper's estimate (a weighted log histogram, `--exposure paper`)."""

from __future__ import annotations

import numpy as np

AMP_MIN, AMP_MAX = 1.0, 300.0
_NBINS = 127
_EDGES = (2.0 ** np.linspace(0.0, 8.0, _NBINS + 1) - 1.0) / 255.0
_WEIGHTS = (np.logspace(0.0, 5.0, _NBINS) / 10.0**5)[::-1].copy()  # 1 for the darkest bin, 1e-5 brightest


_CHUNK = 1 << 20  # pixels per pass: bounds the temporary arrays to a few MB at any frame size
_HIST_ROWS = 256  # mosaic rows per histogram pass, for the same reason


def _bin_sums(flat: np.ndarray, counts: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-bin pixel counts and value sums; bin k holds edges[k] <= x < edges[k + 1].

    `counts`, when given, says how many pixels each value of `flat` stands for.
    """
    xd = flat.astype(np.float64)
    # a closed-form bin index, then exact fix-ups against the edges: much faster than searchsorted
    idx = np.floor(np.log2(xd * 255.0 + 1.0) * (_NBINS / 8.0)).astype(np.int64)
    np.clip(idx, 0, _NBINS, out=idx)
    idx -= xd < _EDGES[idx]
    idx += (idx < _NBINS) & (xd >= _EDGES[np.minimum(idx + 1, _NBINS)])
    inside = (idx >= 0) & (idx < _NBINS)
    n = np.ones_like(xd) if counts is None else counts.astype(np.float64)
    return (np.bincount(idx[inside], weights=n[inside], minlength=_NBINS),
            np.bincount(idx[inside], weights=(xd * n)[inside], minlength=_NBINS))


def _from_sums(counts: np.ndarray, sums: np.ndarray) -> float:
    num = float(np.dot(counts, _WEIGHTS))
    den = float(np.dot(sums, _WEIGHTS))
    if not num > 0.0:
        return AMP_MIN  # every pixel saturated: nothing to brighten
    if not den > 0.0:
        return AMP_MAX  # an all-black frame: amplify as much as allowed
    return float(np.clip(0.01 * num / den, AMP_MIN, AMP_MAX))


def estimate_amplification(x: np.ndarray) -> float:
    """Amplification for a normalised mosaic `x` (black 0, white 1), clipped to [1, 300].

    A = 0.01 * sum(w(x)) / sum(x * w(x)), with w the weight of x's log-spaced bin; values >= 1
    (saturated) fall in no bin.
    """
    flat = np.asarray(x).reshape(-1)
    counts = np.zeros(_NBINS)
    sums = np.zeros(_NBINS)
    for i in range(0, flat.size, _CHUNK):
        c, s = _bin_sums(flat[i : i + _CHUNK])
        counts += c
        sums += s
    return _from_sums(counts, sums)


def estimate_from_raw(mosaic: np.ndarray, black: np.ndarray, white: float) -> float:
    """The same estimate from an integer (H, W) mosaic with the (2, 2) black of its CFA cell.

    A histogram of the integer values replaces the per-pixel work, so a 12 MP frame costs milliseconds.
    A float mosaic (a sensor profile's corrected copy, darkfix.profile) is rounded to codes for it.
    """
    if not np.issubdtype(mosaic.dtype, np.integer):
        mosaic = np.clip(np.rint(mosaic), 0, 65535).astype(np.uint16)
    black = np.asarray(black).reshape(2, 2)
    planes = [mosaic[i::2, j::2] for i in (0, 1) for j in (0, 1)]
    counts = np.zeros(_NBINS)
    sums = np.zeros(_NBINS)
    for plane, b in zip(planes, black.ravel()):
        hist = np.zeros(1 << 16, dtype=np.int64)
        # in bands of rows: bincount makes an int64 copy of what it counts
        for r in range(0, plane.shape[0], _HIST_ROWS):
            hist += np.bincount(plane[r : r + _HIST_ROWS].reshape(-1), minlength=hist.size)
        values = np.arange(hist.size)
        # the normalisation in float32 (packing.PackedFrame agrees to rounding, before its gain)
        x = np.clip((values.astype(np.float32) - np.float32(b)) / (np.float32(white) - np.float32(b)), 0.0, 1.0)
        x = x.reshape(-1)
        c, s = _bin_sums(x, hist)
        counts += c
        sums += s
    return _from_sums(counts, sums)


# Automatic exposure. A thumbnail of 16 x 16 mosaic cells (noise averaged over 256 photosites) of the
# white-balanced, normalised frame; its mean and 98th percentile, each against what the training photos
# have at their own exposure (unprocessed as in darkfix.lab.synth, medians over photos/train), give two
# amplifications whose geometric mean is the estimate. The mean alone follows the scene's key; the
# percentile is steadier under noise and a clamped black level; a few lamps move neither much.
AUTO_CELL = 16
AUTO_MEAN, AUTO_P98 = 0.1755, 0.4017
AUTO_MAX = 2000.0


def exposure_thumbnail(mosaic: np.ndarray, black: np.ndarray, white: float, wb: np.ndarray) -> np.ndarray:
    """(H // 16, W // 16) means of max(raw - black, 0) / (white - black) (clipped at 1) times the white
    balance, over 16 x 16 mosaic cells. `black` and `wb` are (2, 2), per position of the CFA cell."""
    h, w = (s // AUTO_CELL * AUTO_CELL for s in mosaic.shape)
    if h == 0 or w == 0:
        return np.zeros((0, 0), np.float32)
    # per-photosite constants as whole rows, (1, 2, w): numpy broadcasts a long inner axis 10x faster
    # than a (.., 2) one
    b = np.asarray(black, np.float32).reshape(2, 2)
    scale = np.asarray(wb, np.float32).reshape(2, 2) / (np.float32(white) - b)
    b_row, scale_row = (np.tile(v, w // 2).reshape(1, 2, w) for v in (b, scale))
    top_row = scale_row * (np.float32(white) - b_row)  # the normalised value clipped at 1
    out = np.empty((h // AUTO_CELL, w // AUTO_CELL), np.float32)
    for r in range(0, h, _HIST_ROWS):
        band = mosaic[r : min(r + _HIST_ROWS, h), :w]
        x = band.reshape(band.shape[0] // 2, 2, w).astype(np.float32)
        x -= b_row
        np.clip(x, 0.0, None, out=x)
        x *= scale_row
        np.minimum(x, top_row, out=x)
        rows = x.reshape(band.shape[0] // AUTO_CELL, AUTO_CELL, w).sum(axis=1)
        cells = rows.reshape(rows.shape[0], w // AUTO_CELL, AUTO_CELL).sum(axis=2) / np.float32(AUTO_CELL**2)
        out[r // AUTO_CELL : r // AUTO_CELL + cells.shape[0]] = cells
    return out


def estimate_exposure(mosaic: np.ndarray, black: np.ndarray, white: float, wb: np.ndarray) -> float:
    """The amplification that gives the frame a normal exposure, in [1, AUTO_MAX]; see AUTO_MEAN."""
    thumb = exposure_thumbnail(mosaic, black, white, wb).reshape(-1)
    if thumb.size == 0:  # smaller than one cell: average what there is
        x = np.clip((mosaic.astype(np.float32) - np.asarray(black, np.float32).mean()) /
                    (white - float(np.asarray(black).mean())), 0.0, 1.0)
        thumb = x.reshape(-1)
    mean = float(thumb.mean(dtype=np.float64))
    p98 = float(np.percentile(thumb, 98))
    if not mean > 0.0 or not p98 > 0.0:
        return AUTO_MAX  # an all-black frame: amplify as much as allowed
    return float(np.clip(np.sqrt(AUTO_MEAN / mean * AUTO_P98 / p98), AMP_MIN, AUTO_MAX))
