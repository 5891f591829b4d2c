"""The library: what `darkfix restore` does, returning the picture as a numpy array.

    import darkfix
    image = darkfix.restore("night.dng")              # (H, W, 3) uint8, upright sRGB
    model = darkfix.load(device="cpu")                # load the weights once for many files
    for path in paths:
        image16 = model.restore(path, bit_depth=16)   # uint16

The array equals, pixel for pixel, the PNG the CLI writes with the same options.
"""

from __future__ import annotations

import numbers
import os
from pathlib import Path

import numpy as np

from .options import RestoreOptions, parse_brightness, parse_ratio
from .weights import WeightsInfo


def _check_count(name: str, value: object, low: int, high: int) -> None:
    """ValueError unless `value` is None or a whole number from `low` to `high` (not a bool)."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral)
                              or not low <= int(value) <= high):
        raise ValueError(f"{name} must be a whole number from {low} to {high}, not {value!r}")


class Darkfix:
    """Loaded weights on a device, ready to restore many files (see `load`)."""

    def __init__(self, weights: str | os.PathLike | None = None, device: str = "auto", precision: str = "auto",
                 tile: int | None = None, engine: str = "auto", threads: int | None = None) -> None:
        from . import engine as engines

        _check_count("tile", tile, 64, 65536)  # the CLI's ranges for --tile and --threads
        _check_count("threads", threads, 1, 256)
        self.restorer, self.info = engines.load(weights, engine=engine, device=device, precision=precision,
                                                threads=None if threads is None else int(threads),
                                                tile=None if tile is None else int(tile))

    @property
    def weights(self) -> WeightsInfo:
        """What the loaded weights are (path, format, input and output conventions, metadata)."""
        return self.info

    def restore(self, source: str | os.PathLike, *, ratio: float | str | None = None,
                brightness: float | str = 1.0, exposure: str = "auto", wb: str = "camera",
                bit_depth: int | str = 8, profile: str | os.PathLike | None = None,
                trust_black: bool | None = None, ensemble: bool = False,
                masked_margin: bool = True, picture_rows: bool = True) -> np.ndarray:
        """Restore one raw file into an upright sRGB (H, W, 3) array: uint8, or uint16 with bit_depth=16.

        `ratio` amplifies by a known exposure ratio; otherwise `exposure` picks the estimate ("auto": a
        normal exposure; "paper": Lamba & Mitra's). `brightness` multiplies the amplification: a factor
        (2, "0.5") or stops ("+1ev"), as the CLI's `-m` takes it. Raises `RawReadError` for files darkfix
        cannot read, `ValueError` for bad options (with the CLI's message). `profile` applies a sensor
        profile (`darkfix calibrate`; `ProfileError` where it is damaged or of another camera).
        `trust_black` says whether the black level is exact, so that dark areas take their colour from wide
        local means (darkfix.wideguide); None: where a profile measured it. `ensemble` also runs the network
        on the transposed frame and averages the two (about 0.1 dB better, twice the network's time).
        `masked_margin` measures row noise and the black level in the raw's masked margins where it has
        them (darkfix.rows), `picture_rows` the row noise that alternates between rows in the picture's greens.
        """
        from .packing import EXPOSURES, prepare_frame
        from .pipeline import infer_and_render
        from .profile import read_frame

        if str(bit_depth) not in ("8", "16") or isinstance(bit_depth, bool):
            raise ValueError(f"bit_depth must be 8 or 16, not {bit_depth!r}")
        bit_depth = int(bit_depth)
        if wb not in ("camera", "daylight"):
            raise ValueError(f"wb must be 'camera' or 'daylight', not {wb!r}")
        if trust_black is not None and not isinstance(trust_black, bool):
            raise ValueError(f"trust_black must be True, False or None, not {trust_black!r}")
        for name, flag in (("ensemble", ensemble), ("masked_margin", masked_margin), ("picture_rows", picture_rows)):
            if not isinstance(flag, bool):
                raise ValueError(f"{name} must be True or False, not {flag!r}")
        if exposure not in EXPOSURES:
            raise ValueError(f"exposure must be one of {', '.join(EXPOSURES)}, not {exposure!r}")
        brightness, ratio = parse_brightness(brightness), parse_ratio(ratio)
        opts = RestoreOptions(brightness=brightness, ratio=ratio, exposure=exposure, wb=wb, bit_depth=bit_depth,
                              profile=None if profile is None else str(Path(profile).resolve()),
                              trust_black=trust_black, ensemble=ensemble, masked_margin=masked_margin,
                              picture_rows=picture_rows)
        frame = read_frame(Path(source), opts.profile, masked_margin, picture_rows)
        prep = prepare_frame(frame, opts, self.info.input)
        return infer_and_render(frame, prep, self.restorer, self.info, opts)


def load(weights: str | os.PathLike | None = None, device: str = "auto", precision: str = "auto",
         tile: int | None = None, engine: str = "auto", threads: int | None = None) -> Darkfix:
    """Load weights (default: the packaged ones) once, for `Darkfix.restore` on many files. `engine`:
    "torch", "openvino" (CPU) or "auto" (see darkfix.engine); `device`, `precision`, `tile` and `threads`
    as the CLI's options take them (ValueError with its message otherwise)."""
    return Darkfix(weights, device=device, precision=precision, tile=tile, engine=engine, threads=threads)


def restore(source: str | os.PathLike, *, ratio: float | str | None = None, brightness: float | str = 1.0,
            exposure: str = "auto", wb: str = "camera", bit_depth: int | str = 8,
            weights: str | os.PathLike | None = None, device: str = "auto", engine: str = "auto",
            profile: str | os.PathLike | None = None, trust_black: bool | None = None,
            threads: int | None = None, ensemble: bool = False, masked_margin: bool = True,
            picture_rows: bool = True) -> np.ndarray:
    """Restore one raw file with freshly loaded weights; see `Darkfix.restore`."""
    model = load(weights, device=device, engine=engine, threads=threads)
    return model.restore(source, ratio=ratio, brightness=brightness, exposure=exposure, wb=wb, bit_depth=bit_depth,
                         profile=profile, trust_black=trust_black, ensemble=ensemble, masked_margin=masked_margin,
                         picture_rows=picture_rows)
