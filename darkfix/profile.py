"""Sensor profiles: what lens-cap dark frames say about one camera's sensor, and their use on its shots.

`calibrate` builds a profile from dark frames (same camera, ISO, exposure time and temperature as the
shots): a master dark (a robust per-photosite mean: with 3 or more frames each photosite's highest and
lowest values are dropped, so a cosmic ray or other transient never enters), the black level of each
position of the CFA cell (the master dark's median over blocks, so glow does not lift it), a map of hot,
stuck and flickering photosites,
read noise (standard deviation and Tukey-lambda shape), row and column noise, and the system gain K: from
evenly lit flat frames by photon transfer (variance against mean), else from the DNG NoiseProfile tag
(metadata.Capture.noise_profile), else an estimate (read noise / 3 electrons); `k_source` says which.

`SensorProfile.apply` corrects a decoded shot: subtracts the master dark (its offsets from the per-channel
black, scaled by the shot's exposure time over the darks' where both are known and differ: dark current
grows with time, though a bias pattern would not, so darks at the shots' own exposure are best), takes
the profile's black levels, fills the mapped photosites from their same-colour neighbours, and gives the
frame its noise level (`RawFrame.noise`, source "profile").

The file (an .npz: a zip of numpy arrays, read with allow_pickle=False) holds three arrays:

    header   uint8    UTF-8 JSON: format "darkfix-sensor-profile", version, the fields of SensorProfile
                      (camera, size, CFA, levels, noise, K and its source, ...), and `checksum`: the
                      sha256 of the header without it (keys sorted), then of `offsets` and `hot`
    offsets  int16    (H, W) master dark minus the per-channel black, in units of `dark_step` DN (the largest
                      power of two within half the master's own noise), deflated
    hot      uint32   flat indices (y * W + x) of the mapped photosites, ascending

About 0.5-0.9 bytes per photosite (6-11 MB for 12 MP; the raw holds 2). Numpy only: no torch.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import zipfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path

import numpy as np

from . import __version__
from .errors import ProfileError
from .noise import NoiseLevel
from .packing import estimate_frame_noise
from .rawio import RawFrame, read_raw
from .rows import correct as correct_rows

FORMAT = "darkfix-sensor-profile"
VERSION = 1
K_SOURCES = ("flat", "dng", "estimate")
READ_ELECTRONS = 3.0  # the read noise of a modern sensor at night ISOs, for K's estimate without flats
LIT_SPREAD = 0.01  # a lens-cap frame's 16 x 16-cell means vary less than this (of the range) between quartiles
LIT_LEVEL = 0.05  # ... and its median cell is within this of the stated black
_BAND = 512  # rows at a time where a whole-frame float temporary would double memory


@dataclass
class SensorProfile:
    """One sensor at one setting; see the module's docstring for what each part is and the file format."""

    make: str | None
    model: str | None
    height: int
    width: int
    cfa: str
    white: float
    file_black: list[float]  # (4,) the darks' stated black, CFA cell positions (0,0), (0,1), (1,0), (1,1)
    black: list[float]  # (4,) measured: the master dark's level at each position (median of block medians)
    exposure_time: float | None  # seconds, of the darks
    iso: int | None
    frames: int  # dark frames in the master
    read_dn: float  # photosite read noise, standard deviation (row and column noise removed), DN
    read_channel_dn: list[float]  # (4,) the same per CFA position
    read_lambda: float | None  # Tukey-lambda shape of the read noise (0.14 ~ Gaussian; lower: heavier tails)
    row_dn: float  # row noise (a whole row moving together from frame to frame), DN
    col_dn: float  # column noise, likewise
    row_pattern_dn: float  # fixed row pattern in the master dark (subtracted), DN
    col_pattern_dn: float  # fixed column pattern in the master dark (subtracted), DN
    hot_count: int
    k: float  # system gain, DN per electron
    k_source: str  # one of K_SOURCES
    k_note: str  # how K was found, in words
    dark_step: float  # DN per unit of `offsets`
    created: str
    software: str
    offsets: np.ndarray = field(repr=False, default_factory=lambda: np.zeros((0, 0), np.int16))
    hot: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0, np.uint32))
    checksum: str = ""

    # --- the file ---

    def _header(self) -> dict:
        head = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("offsets", "hot", "checksum")}
        return {"format": FORMAT, "version": VERSION, **head}

    def _digest(self) -> str:
        h = hashlib.sha256(json.dumps(self._header(), sort_keys=True).encode())
        h.update(np.ascontiguousarray(self.offsets, "<i2").tobytes())
        h.update(np.ascontiguousarray(self.hot, "<u4").tobytes())
        return h.hexdigest()

    def to_bytes(self) -> bytes:
        """The profile file's bytes (see the module's docstring)."""
        self.checksum = self._digest()
        text = json.dumps({**self._header(), "checksum": self.checksum}, indent=1, sort_keys=True)
        buf = io.BytesIO()
        np.savez_compressed(buf, header=np.frombuffer(text.encode(), np.uint8),
                            offsets=self.offsets.astype("<i2"), hot=self.hot.astype("<u4"))
        return buf.getvalue()

    def save(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write the profile atomically; refuses an existing file unless `overwrite`."""
        from .pngio import write_atomic

        return write_atomic(Path(path), self.to_bytes(), overwrite)

    # --- using it ---

    def black_grid(self) -> np.ndarray:
        return np.asarray(self.black, np.float32).reshape(2, 2)

    def noise_level(self) -> NoiseLevel:
        """The noise of a shot this profile fits, in normalised units (source "profile"). The read noise
        measured on the darks includes the ADC's rounding, which NoiseLevel.from_dn adds itself."""
        read = math.sqrt(max(self.read_dn**2 - 1.0 / 12.0, 0.0))
        return NoiseLevel.from_dn(self.k, read, self.white - float(np.mean(self.black)), self.row_dn, "profile")

    def exposure_scale(self, exposure_time: float | None) -> float:
        """How much of the master dark a shot of `exposure_time` gets: the ratio of the exposure times where
        both are known (dark current grows with time), else 1."""
        if exposure_time is None or self.exposure_time is None:
            return 1.0
        scale = exposure_time / self.exposure_time
        return 1.0 if abs(scale - 1.0) < 0.01 else scale

    def check(self, frame: RawFrame, name: str | os.PathLike) -> None:
        """Refuse (ProfileError, one line) a frame of another camera, size, CFA, bit depth or ISO."""
        what = _mismatch(self._as_sensor(), _sensor(frame))
        if what:
            raise ProfileError(f"{name}: the profile does not fit this raw ({what}); make one with this camera's "
                               "dark frames")

    def apply(self, frame: RawFrame, name: str | os.PathLike) -> RawFrame:
        """A corrected copy of `frame` (its mosaic is LibRaw's read-only buffer): float32 mosaic with the
        master dark subtracted and the mapped photosites filled, the profile's black, its noise level."""
        self.check(frame, name)
        step = np.float32(self.dark_step * self.exposure_scale(frame.capture.exposure_time))
        white = np.float32(frame.white)
        out = np.empty(frame.mosaic.shape, np.float32)
        for r in range(0, out.shape[0], _BAND):
            raw = frame.mosaic[r : r + _BAND]
            band = np.subtract(raw, self.offsets[r : r + _BAND] * step, dtype=np.float32)
            # a photosite the sensor clipped stays at white: its light is unknown, and render code looks
            # for it there
            out[r : r + _BAND] = np.where(raw >= white, white, band)
        fill_photosites(out, self.hot, self.black_grid())
        noise = self.noise_level()
        if self.k_source == "estimate":
            # K is only a guess without flats or a NoiseProfile: the shot term from the corrected frame
            # itself, the read noise as the darks measured it (noise-aware weights restored 0.03-0.05 dB
            # under the plain mean of the darks, and kept more sparkles, with the guessed K)
            own = estimate_frame_noise(out, frame.cfa, self.black_grid(), frame.white)
            noise = NoiseLevel(own.shot, noise.read, "profile")
        return replace(frame, mosaic=out, black=self.black_grid(), noise=noise, black_measured=True)

    def describe(self) -> list[str]:
        """What `darkfix info --profile` and `darkfix calibrate` print."""
        cell = " ".join(f"{c}{b:.2f}" for c, b in zip(self.cfa, self.black))
        stated = " ".join(f"{b:g}" for b in self.file_black)
        exposure = "?" if self.exposure_time is None else f"{self.exposure_time:g} s"
        shape = "?" if self.read_lambda is None else f"{self.read_lambda:.2f}"
        lines = [
            f"camera:        {self.make or '?'} {self.model or '?'}",
            f"mosaic:        {self.width} x {self.height}, {self.cfa}, white {self.white:g}",
            f"darks:         {self.frames} frames, ISO {self.iso or '?'}, {exposure}",
            f"black:         {cell} (the files state {stated})",
            f"read noise:    {self.read_dn:.3f} DN (per position {' '.join(f'{v:.3f}' for v in self.read_channel_dn)}),"
            f" Tukey lambda {shape}",
            f"row/column:    noise {self.row_dn:.3f} / {self.col_dn:.3f} DN; fixed pattern "
            f"{self.row_pattern_dn:.3f} / {self.col_pattern_dn:.3f} DN (subtracted)",
            f"hot pixels:    {self.hot_count} ({100.0 * self.hot_count / max(self.width * self.height, 1):.3f} %), "
            "filled from same-colour neighbours",
            f"gain K:        {self.k:.4g} DN per electron, from {self.k_source} ({self.k_note})",
            f"created:       {self.created} by {self.software}; format {FORMAT} {VERSION}, sha256 {self.checksum[:16]}",
        ]
        return lines

    def _as_sensor(self) -> dict:
        return {"camera": _camera(self.make, self.model), "size": f"{self.width} x {self.height}", "CFA": self.cfa,
                "white level": f"{self.white:g}", "ISO": self.iso}


def fill_photosites(mosaic: np.ndarray, where: np.ndarray, black: np.ndarray) -> None:
    """Replace the photosites at flat indices `where` (ascending) in place by the mean of their nearest
    same-colour neighbours (left, right, up, down; else the diagonals) that are not in `where`; the
    position's black level where none is."""
    if where.size == 0:
        return
    h, w = mosaic.shape
    ys, xs = np.divmod(where.astype(np.int64), w)
    flat = mosaic.reshape(-1)
    todo = np.ones(where.size, bool)
    for ring in (((0, -2), (0, 2), (-2, 0), (2, 0)), ((-2, -2), (-2, 2), (2, -2), (2, 2))):
        total = np.zeros(where.size, np.float64)
        count = np.zeros(where.size, np.int64)
        for dy, dx in ring:
            ny, nx = ys + dy, xs + dx
            ok = todo & (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
            idx = np.where(ok, ny * w + nx, 0)
            pos = np.minimum(np.searchsorted(where, idx), where.size - 1)
            ok &= where[pos] != idx  # a mapped neighbour is no help
            total += np.where(ok, flat[idx], 0.0)
            count += ok
        done = todo & (count > 0)
        flat[where[done]] = total[done] / count[done]
        todo &= ~done
    if todo.any():
        flat[where[todo]] = black[ys[todo] % 2, xs[todo] % 2]


# --- reading and caching ---

def load_profile(path: str | os.PathLike) -> SensorProfile:
    """Read and verify a profile file; ProfileError (one line) for anything wrong with it."""
    p = Path(path)
    try:
        st = p.stat()
    except OSError:
        raise ProfileError(f"{p}: no such profile") from None
    if p.is_dir():
        raise ProfileError(f"{p}: is a directory, not a profile")
    return _load(str(p.resolve()), st.st_mtime_ns, st.st_size)


@lru_cache(maxsize=2)  # a batch applies one profile to every file: read it once per process
def _load(path: str, mtime_ns: int, size: int) -> SensorProfile:
    try:
        with np.load(path, allow_pickle=False) as z:
            header = json.loads(bytes(z["header"]).decode())
            offsets, hot = z["offsets"], z["hot"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error, UnicodeDecodeError,
            TypeError) as e:
        raise ProfileError(f"{path}: not a darkfix profile, or damaged ({type(e).__name__})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ProfileError(f"{path}: not a darkfix sensor profile")
    if header.get("version") != VERSION:
        raise ProfileError(f"{path}: profile version {header.get('version')} (this darkfix reads {VERSION}); "
                           "make it again with `darkfix calibrate`")
    names = {f.name for f in fields(SensorProfile)} - {"offsets", "hot"}
    try:
        profile = SensorProfile(**{k: header[k] for k in names}, offsets=offsets, hot=hot)
    except (KeyError, TypeError):
        raise ProfileError(f"{path}: profile header incomplete (damaged)") from None
    if (offsets.dtype != np.int16 or offsets.shape != (profile.height, profile.width) or hot.dtype != np.uint32
            or profile.checksum != profile._digest()):
        raise ProfileError(f"{path}: profile damaged (checksum mismatch)")
    return profile


def read_frame(path: str | os.PathLike, profile: str | os.PathLike | None = None,
               masked_margin: bool = True, picture_rows: bool = True) -> RawFrame:
    """read_raw, then the sensor profile at `profile` applied where one is given, then (unless
    `masked_margin` is off) the row noise the sensor's masked margins measure taken out, and (unless
    `picture_rows` is off) what of it the picture's greens still show (darkfix.rows):
    what every decode of a shot goes through (restore, batch and Ray workers, the library)."""
    frame = read_raw(path)
    frame = frame if profile is None else load_profile(profile).apply(frame, path)
    return correct_rows(frame, masked_margin, picture_rows)


# --- building one ---

def _camera(make: str | None, model: str | None) -> str | None:
    if not make and not model:
        return None
    return f"{make or ''} {model or ''}".strip()


def _sensor(frame: RawFrame) -> dict:
    c = frame.capture
    h, w = frame.mosaic.shape
    return {"camera": _camera(c.make, c.model), "size": f"{w} x {h}", "CFA": frame.cfa,
            "white level": f"{frame.white:g}", "ISO": c.iso}


def _mismatch(a: dict, b: dict) -> str:
    """'what: a vs b' for the first property two sensors (or settings) differ in; '' where they agree.
    Unknown values (None) agree with anything."""
    for key, va in a.items():
        vb = b.get(key)
        if va is not None and vb is not None and str(va).lower() != str(vb).lower():
            return f"{key} {va} vs {vb}"
    return ""


def _check_same(ref: tuple[Path, RawFrame], other: tuple[Path, RawFrame], kind: str, exposure: bool) -> None:
    (pa, a), (pb, b) = ref, other
    sa, sb = _sensor(a), _sensor(b)
    if exposure:
        sa["exposure time"] = a.capture.exposure_time
        sb["exposure time"] = b.capture.exposure_time
    what = _mismatch(sa, sb)
    if what:
        raise ProfileError(f"{pb}: does not match {pa} ({what}); {kind} must come from one camera at one setting")


def _looks_lit(frame: RawFrame) -> str:
    """Why a dark frame looks lit ('' where it does not): its 16 x 16-cell means spread, or sit well
    above the stated black (amp glow in a corner moves neither the median nor the quartiles)."""
    from .amplify import exposure_thumbnail

    thumb = exposure_thumbnail(frame.mosaic, frame.black, frame.white, np.ones((2, 2), np.float32))
    if thumb.size < 4:
        return ""
    q25, q50, q75 = np.percentile(thumb, (25, 50, 75))
    if q75 - q25 > LIT_SPREAD:
        return f"its brightness varies by {100 * (q75 - q25):.1f} % of the range across the frame"
    if q50 > LIT_LEVEL:
        return f"its median is {100 * q50:.1f} % of the range above black"
    return ""


def _same_colour_median(x: np.ndarray) -> np.ndarray:
    """Each photosite's median over the 3 x 3 same-colour neighbourhood (itself and the 8 nearest of its
    colour, 2 apart), mirrored at the edges (by 2: colours kept)."""
    h, w = x.shape
    out = np.empty((h, w), np.float32)
    for r in range(0, h, _BAND):
        r0, r1 = max(r - 2, 0), min(r + _BAND + 2, h)
        band = np.pad(x[r0:r1].astype(np.float32), ((2, 2), (2, 2)), mode="reflect" if min(h, w) > 2 else "edge")
        top = (r - r0) + 2
        rows = min(_BAND, h - r)
        stack = np.stack([band[top + dy : top + dy + rows, 2 + dx : 2 + dx + w]
                          for dy in (-2, 0, 2) for dx in (-2, 0, 2)])
        out[r : r + rows] = np.median(stack, axis=0)
    return out


def _per_position(x: np.ndarray, fn: Callable[[np.ndarray], float]) -> list[float]:
    return [float(fn(x[i::2, j::2])) for i in (0, 1) for j in (0, 1)]


def _tiled_median(plane: np.ndarray, tile: int = 16) -> float:
    """The median of the medians of `tile` x `tile` blocks: a level that amp glow over a corner or an
    edge (a minority of the blocks) does not lift."""
    h, w = plane.shape
    if h < 2 * tile or w < 2 * tile:
        return float(np.median(plane))
    hh, ww = h // tile * tile, w // tile * tile
    blocks = plane[:hh, :ww].reshape(hh // tile, tile, ww // tile, tile).transpose(0, 2, 1, 3)
    return float(np.median(np.median(blocks.reshape(hh // tile, ww // tile, -1), axis=2)))


def _dark_current(offsets: np.ndarray, good: np.ndarray, tile: int = 16) -> np.ndarray:
    """A smooth map of the master dark beyond its fixed row and column patterns (amp glow, a warm edge):
    means over `tile` x `tile` blocks of the offsets less their row and column medians, `good` only."""
    x = np.where(good, offsets, np.nan)
    x = x - np.nanmedian(x, axis=0, keepdims=True)
    x = x - np.nanmedian(x, axis=1, keepdims=True)
    h, w = x.shape
    hh, ww = -(-h // tile) * tile, -(-w // tile) * tile
    padded = np.full((hh, ww), np.nan, np.float32)
    padded[:h, :w] = x
    blocks = padded.reshape(hh // tile, tile, ww // tile, tile)
    with np.errstate(all="ignore"):
        means = np.nan_to_num(np.nanmean(blocks, axis=(1, 3)))
    return np.repeat(np.repeat(means, tile, axis=0), tile, axis=1)[:h, :w]


def _robust_std(v: np.ndarray) -> float:
    v = np.asarray(v, np.float64).ravel()
    return float(1.4826 * np.median(np.abs(v - np.median(v)))) if v.size else 0.0


def _line_noise(medians: np.ndarray, pixel_var: float, count: int) -> float:
    """Variance of a line's common offset from the spread of lines' medians (the median of `count`
    independent photosites varies by pi/2 pixel_var / count itself)."""
    return max(float(np.var(medians)) - math.pi / 2.0 * pixel_var / max(count, 1), 0.0)


def tukey_lambda(samples: np.ndarray) -> float | None:
    """The Tukey-lambda shape that fits `samples` best (probability-plot correlation over a grid)."""
    v = np.sort(np.asarray(samples, np.float64).ravel())
    n = v.size
    if n < 1000:
        return None
    p = (np.arange(1, n + 1) - 0.3175) / (n + 0.365)
    best, best_r = None, -1.0
    for lam in np.round(np.arange(-0.3, 0.51, 0.01), 2):
        q = np.log(p / (1 - p)) if abs(lam) < 1e-9 else (p**lam - (1 - p) ** lam) / lam
        r = float(np.corrcoef(q, v)[0, 1])
        if r > best_r:
            best, best_r = float(lam), r
    return best


def calibrate(darks: Sequence[str | os.PathLike], flats: Sequence[str | os.PathLike] = (),
              warn: Callable[[str], None] = lambda message: None) -> SensorProfile:
    """A sensor profile from dark frames (and flats for K); see the module's docstring. Mismatched or
    unreadable frames raise DarkfixError subclasses (one line); frames that look lit are left out with a
    warning."""
    if not darks:
        raise ProfileError("no dark frames given")
    paths = [Path(p) for p in darks]
    ref: tuple[Path, RawFrame] | None = None
    total = lo = hi = None
    used: list[Path] = []
    for p in paths:
        frame = read_raw(p)
        if ref is None:
            ref = (p, frame)
        else:
            _check_same(ref, (p, frame), "dark frames", exposure=True)
        lit = _looks_lit(frame)
        if lit:
            warn(f"{p}: looks lit ({lit}); left out of the profile")
            continue
        x = frame.mosaic
        if total is None:
            total, lo, hi = x.astype(np.float64), x.copy(), x.copy()
        else:
            total += x
            np.minimum(lo, x, out=lo)
            np.maximum(hi, x, out=hi)
        used.append(p)
    assert ref is not None
    first = ref[1]
    if not used:
        raise ProfileError("every dark frame looks lit: shoot them with the lens cap on and the viewfinder covered")
    n = len(used)
    # the robust mean: each photosite's highest and lowest values dropped (3 frames: the median)
    master = ((total - lo - hi) / (n - 2) if n >= 3 else total / n).astype(np.float32)
    mean = (total / n).astype(np.float32)
    del total
    black = _per_position(master, _tiled_median)
    grid = np.asarray(black, np.float32).reshape(2, 2)
    h, w = master.shape
    black_full = np.tile(grid, ((h + 1) // 2, (w + 1) // 2))[:h, :w]
    offsets_dn = master - black_full
    white = first.white

    if n >= 2:
        full, row_var, col_var, flicker, samples = _noise_from_darks(used, master, mean)
        read_total = float(np.median(full)) / _chi2_median(n - 1)
    else:
        read_total, row_var, col_var, samples = _noise_from_one(master)
        full = flicker = None
    # photosites to fill: far off their neighbours in the master (beyond what its own noise explains),
    # flickering (temporal noise 3x the sensor's), or clipped
    master_sigma = math.sqrt(read_total / max(n - 2 if n >= 3 else n, 1))
    dev = master - _same_colour_median(master)
    limit = max(8.0 * master_sigma, 4.0 * math.sqrt(read_total), 1.0)
    bad = np.abs(dev) > limit
    if flicker is not None:
        bad |= flicker > 9.0 * read_total
    bad |= master >= white - 1.0  # stuck at white (not a transient: the robust mean leaves those out)
    del hi, lo
    hot = np.flatnonzero(bad).astype(np.uint32)
    good = ~bad
    # the read noise of photosites with no dark current of note (glow's and hot pixels' shot noise is
    # dark current's, not read noise) and no transient (far beyond any chi-square tail)
    quiet = good & (np.abs(_dark_current(offsets_dn, good)) < 0.3 + 0.5 * master_sigma)
    if full is not None:
        calm = quiet & (full < 25.0 * read_total)
        pixel_var = [float(np.mean(full[i::2, j::2][calm[i::2, j::2]])) for i in (0, 1) for j in (0, 1)]
    else:
        pixel_var = [read_total] * 4
    row_dn, col_dn = math.sqrt(row_var), math.sqrt(col_var)
    read_channel = [math.sqrt(max(v - row_var - col_var, 0.0)) for v in pixel_var]
    read_dn = math.sqrt(max(float(np.mean(pixel_var)) - row_var - col_var, 0.0))
    # the shape from photosites with no dark current of note (glow's and hot pixels' shot noise would
    # mix in wider distributions: heavier tails) and no transient
    pick, values = samples
    values = values[:, quiet.reshape(-1)[pick]].ravel()
    lam = tukey_lambda(values[np.abs(values) < 10.0 * math.sqrt(read_total)])

    # fixed patterns (informational: the master holds them and is subtracted)
    smooth_rows = np.median(np.where(good, offsets_dn, np.nan), axis=1)
    smooth_cols = np.median(np.where(good, offsets_dn, np.nan), axis=0)
    row_pattern = _robust_std(np.diff(smooth_rows[np.isfinite(smooth_rows)])) / math.sqrt(2)
    col_pattern = _robust_std(np.diff(smooth_cols[np.isfinite(smooth_cols)])) / math.sqrt(2)

    # storage step: the largest power of two within half the master's own noise (its rounding then adds at
    # most 1/48 of that noise's variance: one step coarser cost 8-bit sensors 0.01-0.03 dB), fine enough
    # for the range
    step = 2.0 ** min(max(math.floor(math.log2(max(master_sigma / 2.0, 1e-6))), -6), 2)
    span = float(np.abs(offsets_dn[good]).max()) if good.any() else 0.0
    while span / step > 32000:
        step *= 2.0
    offsets = np.clip(np.rint(offsets_dn / step), -32767, 32767).astype(np.int16)

    c = first.capture
    k, k_source, k_note = _gain(paths[0], first, flats, offsets, step, grid, hot, read_dn, warn)
    return SensorProfile(
        make=c.make, model=c.model, height=h, width=w, cfa=first.cfa, white=white,
        file_black=[float(v) for v in first.black.ravel()], black=black, exposure_time=c.exposure_time,
        iso=c.iso, frames=n, read_dn=read_dn, read_channel_dn=read_channel, read_lambda=lam, row_dn=row_dn,
        col_dn=col_dn, row_pattern_dn=row_pattern, col_pattern_dn=col_pattern, hot_count=int(hot.size),
        k=k, k_source=k_source, k_note=k_note, dark_step=step,
        created=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), software=f"darkfix {__version__}",
        offsets=offsets, hot=hot)


def _noise_from_darks(used: list[Path], master: np.ndarray, mean: np.ndarray):
    """Read, row and column noise from each frame's difference to the master. Returns (photosite
    variance, row variance, column variance, per-photosite temporal variance, residual samples), the
    per-photosite variance with each photosite's largest difference left out where there are 4 or more
    frames (so that one transient does not make a photosite look flickering)."""
    h, w = master.shape
    n = len(used)
    sq = np.zeros((h, w), np.float32)
    top = np.zeros((h, w), np.float32) if n >= 4 else None
    row_vars, col_vars, samples = [], [], []
    pick = np.random.default_rng(0).choice(h * w, size=min(h * w, 50_000), replace=False)
    # the master holds about 1/n of each frame's noise (the robust mean a little more)
    correct = n / (n - 1)
    for i, p in enumerate(used):
        r = np.subtract(read_raw(p).mosaic, master, dtype=np.float32)
        r2 = r * r
        sq += r2
        if top is not None:
            np.maximum(top, r2, out=top)
        rows, cols = np.median(r, axis=1), np.median(r, axis=0)
        pixel = _robust_std(r[:: max(h // 64, 1), :: max(w // 64, 1)]) ** 2
        row_vars.append(_line_noise(rows, pixel, w) * correct)
        col_vars.append(_line_noise(cols, pixel, h) * correct)
        if i < 4:  # the shape against the plain mean: the robust one leaves a frame's extremes out, and
            # a residual from it has heavier tails than the noise
            plain = r.reshape(-1)[pick] + (master - mean).reshape(-1)[pick]
            samples.append(plain - rows[pick // w] - cols[pick % w])
    full = sq / (n - 1)
    flicker = (sq - top) / (n - 2) if top is not None else full
    return full, float(np.mean(row_vars)), float(np.mean(col_vars)), flicker, (pick, np.stack(samples))


def _chi2_median(dof: int) -> float:
    """median(chi2_dof) / dof (Wilson-Hilferty), to turn a median of variances into a variance."""
    return (1.0 - 2.0 / (9.0 * dof)) ** 3


def _noise_from_one(master: np.ndarray):
    """One frame: noise from neighbouring same-colour photosites, row noise from the rows' means (both
    include the fixed pattern; clipped means, as medians of integer codes are coarse)."""
    h, w = master.shape
    d = (master[:, 2:] - master[:, :-2]) / math.sqrt(2.0)
    limit = 5.0 * max(_robust_std(d), 0.5)
    pixel = float(np.var(np.clip(d, -limit, limit)))
    x = np.clip(master - np.median(master, axis=0, keepdims=True), -limit, limit)  # the column pattern out
    rows = x.mean(axis=1)
    row_var = max(float(np.var(np.diff(rows))) / 2.0 - pixel / w, 0.0)
    pick = np.arange(0, h * w, max(h * w // 50_000, 1))
    pick = pick[pick % w < w - 2]  # d has two columns fewer
    return pixel, row_var, 0.0, (pick, d.reshape(-1)[pick // w * (w - 2) + pick % w][None])


def _gain(path: Path, first: RawFrame, flats: Sequence[str | os.PathLike], offsets: np.ndarray, step: float,
          black: np.ndarray, hot: np.ndarray, read_dn: float,
          warn: Callable[[str], None]) -> tuple[float, str, str]:
    """(K, source, how) from flats, the DNG NoiseProfile, or the read noise."""
    span = first.white - float(black.mean())
    if flats:
        k, how = photon_transfer([Path(f) for f in flats], (path, first), offsets, step, black, hot, read_dn, warn)
        return k, "flat", how
    if first.noise is not None and first.noise.source == "dng" and np.mean(first.noise.shot) > 0:
        return float(np.mean(first.noise.shot)) * span, "dng", "the DNG NoiseProfile tag of the first dark frame"
    return (max(read_dn, 0.1) / READ_ELECTRONS, "estimate",
            f"read noise / {READ_ELECTRONS:g} electrons; give --flat frames to measure it")


def photon_transfer(flats: list[Path], ref: tuple[Path, RawFrame], offsets: np.ndarray, step: float,
                    black: np.ndarray, hot: np.ndarray, read_dn: float,
                    warn: Callable[[str], None]) -> tuple[float, str]:
    """K (DN per electron) as the slope of variance against mean over evenly lit frames, the master
    dark subtracted. Two frames at one exposure give their difference's variance (free of the sensor's
    per-photosite response and of uneven light); a frame alone, its neighbouring same-colour photosites'."""
    white = ref[1].white
    span = white - float(black.mean())
    h, w = offsets.shape
    good = np.ones(h * w, bool)
    good[hot] = False
    good = good.reshape(h, w)
    frames: list[tuple[Path, float | None, np.ndarray]] = []
    for p in flats:
        frame = read_raw(p)
        _check_same(ref, (p, frame), "flat frames and dark frames", exposure=False)
        scale = 1.0
        if frame.capture.exposure_time and ref[1].capture.exposure_time:
            scale = frame.capture.exposure_time / ref[1].capture.exposure_time
        x = np.subtract(frame.mosaic, offsets * np.float32(step * scale), dtype=np.float32)
        x -= np.tile(black, ((h + 1) // 2, (w + 1) // 2))[:h, :w]
        frames.append((p, frame.capture.exposure_time, x))
    points: list[tuple[float, float]] = []
    paired: set[int] = set()
    for i, (_, ta, a) in enumerate(frames):
        for j in range(i + 1, len(frames)):
            tb, b = frames[j][1:]
            if i in paired or j in paired:
                continue
            ma, mb = float(np.median(a)), float(np.median(b))
            if ta == tb and abs(ma - mb) <= 0.05 * max(ma, mb, 1.0):
                for ii, jj in ((0, 0), (0, 1), (1, 0), (1, 1)):
                    keep = good[ii::2, jj::2]
                    xa, xb = a[ii::2, jj::2][keep], b[ii::2, jj::2][keep]
                    points.append((float((xa.mean() + xb.mean()) / 2), float(np.var(xa - xb) / 2)))
                paired |= {i, j}
    for i, (_, _, a) in enumerate(frames):
        if i in paired:
            continue
        for ii, jj in ((0, 0), (0, 1), (1, 0), (1, 1)):
            plane, keep = a[ii::2, jj::2], good[ii::2, jj::2]
            both = keep[:, 1:] & keep[:, :-1]
            d = (plane[:, 1:] - plane[:, :-1])[both]
            points.append((float(plane[keep].mean()), float(np.var(d) / 2)))
    usable = [(m, v) for m, v in points if 5.0 * max(read_dn, 0.5) < m < 0.7 * span]
    if len(usable) < len(points):
        warn(f"{len(points) - len(usable)} of {len(points)} flat-frame channels left out of the photon transfer "
             "fit (too dark or near white)")
    means = np.array([m for m, _ in usable])
    if means.size < 2 or means.max() < 1.5 * means.min():
        raise ProfileError("--flat needs evenly lit frames at two or more levels (at least 1.5x apart, between "
                           "a few percent of white and 70 %)")
    variances = np.array([v for _, v in usable])
    k, _ = np.polyfit(means, variances, 1)
    if not k > 0:
        raise ProfileError("the flat frames' noise does not grow with their level: are they evenly lit?")
    return float(k), f"photon transfer over {len(frames)} flat frames, {means.min():.0f}-{means.max():.0f} DN"

