"""Decode a Bayer raw file with LibRaw (rawpy) into a plain mosaic plus the metadata darkfix needs."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rawpy

from .errors import RawReadError
from .metadata import Capture, read_capture
from .noise import NoiseLevel, from_dng_profile
from .rows import MIN_COLUMNS, RowFix

# LibRaw's xyz_rgb (linear sRGB -> XYZ, D65)
XYZ_FROM_SRGB = np.array(
    [[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]]
)

_COLOUR_LETTERS = "RGBG"  # LibRaw colour indices 0..3 (3 is the second green)


@dataclass
class RawFrame:
    """A decoded Bayer mosaic (visible area only) with what is needed to normalise and colour it."""

    mosaic: np.ndarray  # (H, W) uint16: a view of LibRaw's buffer (do not write to it)
    black: np.ndarray  # (2, 2) float32: black level at each position of the 2x2 CFA cell
    white: float
    cfa: str  # colours of the 2x2 cell at (0,0), (0,1), (1,0), (1,1), e.g. "RGGB"
    wb_camera: np.ndarray  # (3,) R, G, B multipliers, smallest 1
    wb_daylight: np.ndarray  # (3,)
    rgb_cam: np.ndarray  # (3, 3) camera RGB -> linear sRGB
    flip: int  # LibRaw orientation: 0 none, 3 = 180, 5 = 90 CCW, 6 = 90 CW
    cam_xyz: np.ndarray  # (3, 3) XYZ -> camera RGB, a ColorMatrix from which LibRaw derives rgb_cam
    capture: Capture  # camera, date, exposure... where the file has them (metadata.read_capture)
    # the frame's noise where the file or a sensor profile states it (packed planes R, G1, G2, B); noise-
    # aware weights otherwise get an estimate from the frame (darkfix.noise)
    noise: NoiseLevel | None = None
    # whether `black` was measured (a sensor profile's dark frames) rather than only stated by the file
    black_measured: bool = False
    # the raw data's margins beside the visible rows (LibRaw's left and right margins: optically masked
    # photosites on many sensors), each (H, columns), cut to whole CFA cells in phase with the mosaic's
    # columns; a side narrower than rows.MIN_COLUMNS is left out. darkfix.rows measures row noise and the
    # black level in them where they are masked (`rows` says what it did)
    margins: tuple[np.ndarray, ...] = ()
    rows: RowFix | None = None


@contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence file descriptor 2 while LibRaw runs: it prints its own complaints about damaged files,
    and darkfix reports them as one line instead."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _wb(mult: list[float] | np.ndarray) -> np.ndarray | None:
    m = np.asarray(list(mult)[:3], dtype=np.float64)
    if not np.all(np.isfinite(m)) or np.any(m <= 0):
        return None
    return (m / m.min()).astype(np.float32)


def read_raw(path: str | os.PathLike) -> RawFrame:
    """Read a Bayer raw file; raises RawReadError with a one-line reason for anything else."""
    p = Path(path)
    if not p.exists():
        raise RawReadError(f"{p}: no such file")
    if p.is_dir():
        raise RawReadError(f"{p}: is a directory, not a raw file")
    if not os.access(p, os.R_OK):
        raise RawReadError(f"{p}: permission denied")
    if p.stat().st_size == 0:
        raise RawReadError(f"{p}: empty file")
    try:
        return _decode(p)
    except RawReadError:
        raise
    except rawpy.LibRawFileUnsupportedError:
        raise RawReadError(f"{p}: not a raw file LibRaw can read") from None
    except (rawpy.LibRawIOError, rawpy.LibRawDataError, rawpy.LibRawTooBigError) as e:
        raise RawReadError(f"{p}: corrupt or truncated raw file ({type(e).__name__})") from None
    except rawpy.LibRawError as e:
        raise RawReadError(f"{p}: cannot decode ({type(e).__name__})") from None
    except MemoryError:
        raise RawReadError(f"{p}: image too large to decode") from None


def _decode(p: Path) -> RawFrame:
    raw = None
    try:
        with _quiet_stderr():
            raw = rawpy.imread(str(p))
            # not closed on success: the mosaic is a view of LibRaw's buffer (no copy of the largest array
            # darkfix holds), and the view keeps the RawPy object, and so the buffer and LibRaw's open
            # file, alive until the frame goes
            return _frame_from(raw, p)
    except BaseException:
        if raw is not None:
            raw.close()
        raise


def _frame_from(raw: rawpy.RawPy, p: Path) -> RawFrame:
    if raw.raw_type != rawpy.RawType.Flat:
        raise RawReadError(f"{p}: already demosaiced (linear) raw, e.g. Apple ProRAW; darkfix needs a Bayer mosaic")
    try:
        pattern = np.asarray(raw.raw_pattern)
    except NotImplementedError:  # rawpy cannot express this CFA (e.g. a damaged filters word)
        raise RawReadError(f"{p}: unsupported CFA layout") from None
    if pattern.shape == (2, 2):
        # the colours of the visible area's first cell (raw_pattern may refer to the uncropped sensor)
        # (raw_colors_visible would build a whole-frame array for these four values)
        top, left = raw.sizes.top_margin, raw.sizes.left_margin
        pattern = np.array([[raw.raw_color(top + i, left + j) for j in (0, 1)] for i in (0, 1)])
    if pattern.shape != (2, 2) and raw.num_colors >= 3:  # one-colour sensors get the monochrome message
        raise RawReadError(f"{p}: non-Bayer sensor (CFA {pattern.shape[0]}x{pattern.shape[1]}, e.g. X-Trans)")
    if raw.num_colors < 3 or len(set(pattern.ravel().tolist())) < 3:
        raise RawReadError(f"{p}: monochrome sensor; darkfix restores colour Bayer raws")
    cfa = "".join(_COLOUR_LETTERS[int(c)] for c in pattern.ravel())
    if cfa not in ("RGGB", "GRBG", "GBRG", "BGGR"):  # greens on a diagonal: the 4 Bayer phases
        raise RawReadError(f"{p}: unsupported CFA pattern {cfa}")
    mosaic = raw.raw_image_visible
    if mosaic.ndim != 2 or mosaic.shape[0] < 2 or mosaic.shape[1] < 2:
        raise RawReadError(f"{p}: image too small ({mosaic.shape})")
    per_channel = np.asarray(raw.black_level_per_channel, dtype=np.float32)
    black = per_channel[pattern]
    white = float(raw.white_level)
    if not white > float(black.max()):
        raise RawReadError(f"{p}: white level {white:g} not above black level {float(black.max()):g}")
    wb_daylight = _wb(raw.daylight_whitebalance)
    wb_camera = _wb(raw.camera_whitebalance)
    if wb_daylight is None:
        wb_daylight = wb_camera if wb_camera is not None else np.ones(3, np.float32)
    if wb_camera is None:
        wb_camera = wb_daylight
    rgb_cam = np.asarray(raw.color_matrix, dtype=np.float32)[:, :3]
    if not np.all(np.isfinite(rgb_cam)) or not np.any(rgb_cam) or abs(np.linalg.det(rgb_cam)) < 1e-6:
        rgb_cam = np.eye(3, dtype=np.float32)  # LibRaw knows no matrix for this camera: render camera RGB as is
    # an XYZ -> camera matrix that gives LibRaw this rgb_cam back (its rows are normalised there); LibRaw's
    # own rgb_xyz_matrix is empty for DNGs
    cam_xyz = (np.linalg.inv(rgb_cam.astype(np.float64)) @ np.linalg.inv(XYZ_FROM_SRGB)).astype(np.float32)
    capture = read_capture(p)
    return RawFrame(
        mosaic=mosaic,
        black=black,
        white=white,
        cfa=cfa,
        wb_camera=wb_camera,
        wb_daylight=wb_daylight,
        rgb_cam=rgb_cam,
        flip=int(raw.sizes.flip),
        cam_xyz=cam_xyz,
        capture=capture,
        noise=from_dng_profile(capture.noise_profile) if capture.noise_profile else None,
        margins=_margins(raw),
    )


def _margins(raw: rawpy.RawPy) -> tuple[np.ndarray, ...]:
    """The raw data's left and right margins beside the visible rows (copies), each cut to whole CFA cells
    in phase with the visible columns; sides narrower than rows.MIN_COLUMNS left out."""
    s = raw.sizes
    rows = raw.raw_image[s.top_margin : s.top_margin + s.height]
    if rows.shape[0] != s.height:
        return ()
    left, right = s.left_margin, s.left_margin + s.width + s.width % 2
    # the left margin's last even count of columns before the picture, the right's first
    sides = (rows[:, left % 2 : left], rows[:, right : right + max(rows.shape[1] - right, 0) // 2 * 2])
    return tuple(side.copy() for side in sides if side.shape[1] >= MIN_COLUMNS)
