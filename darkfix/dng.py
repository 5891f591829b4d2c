"""Write Bayer DNG files that LibRaw reads back: used by `darkfix synth`, the tests and the example."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
import tifffile

# LibRaw's CFA colour codes in the CFAPattern tag: 0 = red, 1 = green, 2 = blue.
_CFA_CODES = {"R": 0, "G": 1, "B": 2}
# EXIF orientation values we accept; DNG readers map them onto LibRaw's `flip`.
_ORIENTATIONS = (1, 3, 6, 8)


@dataclass
class DngSpec:
    """Metadata written into a DNG beside its mosaic."""

    cfa: str = "RGGB"
    black: float | tuple[float, float, float, float] = 512.0
    white: int = 16383
    as_shot_neutral: tuple[float, float, float] = (0.5, 1.0, 0.6)
    color_matrix: np.ndarray = field(default_factory=lambda: np.eye(3))  # XYZ -> camera, D65
    orientation: int = 1
    make: str = "darkfix"
    model: str = "synthetic"
    exposure_time: float | None = None
    iso: int | None = None
    fnumber: float | None = None
    datetime: str | None = None  # "YYYY:MM:DD HH:MM:SS"
    description: str = ""
    noise_profile: tuple[float, ...] | None = None  # DNG NoiseProfile: S, O pairs (variance S x + O)
    margin_left: int = 0  # the mosaic's first columns lie outside the picture (ActiveArea says so)...
    margin_masked: bool = True  # ...and are optically masked (MaskedAreas says so: LibRaw measures black there)
    margin_right: int = 0  # the mosaic's last columns lie outside the picture too (not declared masked)


def _srational(values: np.ndarray) -> list[int]:
    out: list[int] = []
    for v in np.asarray(values, dtype=np.float64).ravel():
        f = Fraction(float(v)).limit_denominator(1_000_000)
        out += [f.numerator, f.denominator]
    return out


def write_dng(path: str | os.PathLike, mosaic: np.ndarray, spec: DngSpec) -> Path:
    """Write a uint16 Bayer mosaic as an uncompressed DNG; returns the path written."""
    if mosaic.ndim != 2 or mosaic.dtype != np.uint16:
        raise ValueError("mosaic must be a 2-D uint16 array")
    if len(spec.cfa) != 4 or set(spec.cfa) - set("RGB"):
        raise ValueError(f"bad CFA pattern {spec.cfa!r}")
    if spec.orientation not in _ORIENTATIONS:
        raise ValueError(f"orientation must be one of {_ORIENTATIONS}")
    black = spec.black if isinstance(spec.black, tuple) else (spec.black,) * 4
    extratags = [
        (50706, "B", 4, (1, 4, 0, 0), True),  # DNGVersion
        (50707, "B", 4, (1, 1, 0, 0), True),  # DNGBackwardVersion
        (50708, "s", 0, f"{spec.make} {spec.model}", True),  # UniqueCameraModel
        (33421, "H", 2, (2, 2), True),  # CFARepeatPatternDim
        (33422, "B", 4, tuple(_CFA_CODES[c] for c in spec.cfa), True),  # CFAPattern
        (50710, "B", 3, (0, 1, 2), True),  # CFAPlaneColor
        (50711, "H", 1, 1, True),  # CFALayout: rectangular
        (50713, "H", 2, (2, 2), True),  # BlackLevelRepeatDim
        (50714, "2I", 4, _srational(np.array(black)), True),  # BlackLevel (RATIONAL)
        (50717, "I", 1, int(spec.white), True),  # WhiteLevel
        (50721, "2i", 9, _srational(spec.color_matrix), True),  # ColorMatrix1
        (50778, "H", 1, 21, True),  # CalibrationIlluminant1: D65
        (50728, "2I", 3, _srational(np.array(spec.as_shot_neutral)), True),  # AsShotNeutral
        (274, "H", 1, spec.orientation, True),  # Orientation
        (271, "s", 0, spec.make, True),  # Make
        (272, "s", 0, spec.model, True),  # Model
    ]
    # capture fields in IFD0 itself, as some raws keep them (darkfix reads either place)
    if spec.exposure_time is not None:
        extratags.append((33434, "2I", 1, _srational(np.array([spec.exposure_time])), True))
    if spec.fnumber is not None:
        extratags.append((33437, "2I", 1, _srational(np.array([spec.fnumber])), True))
    if spec.iso is not None:
        extratags.append((34855, "H", 1, int(spec.iso), True))
    if spec.datetime is not None:
        extratags.append((306, "s", 0, spec.datetime, True))
    if spec.margin_left or spec.margin_right:
        h, w = mosaic.shape
        # ActiveArea: top, left, bottom, right
        extratags.append((50829, "I", 4, (0, spec.margin_left, h, w - spec.margin_right), True))
        if spec.margin_masked and spec.margin_left:
            extratags.append((50830, "I", 4, (0, 0, h, spec.margin_left), True))  # MaskedAreas
    if spec.noise_profile is not None:
        extratags.append((51041, "d", len(spec.noise_profile), tuple(spec.noise_profile), True))
    path = Path(path)
    tifffile.imwrite(
        path,
        mosaic,
        photometric=32803,  # CFA
        planarconfig=1,
        compression=None,
        subfiletype=0,
        description=spec.description or None,
        software="darkfix",
        extratags=extratags,
        metadata=None,
    )
    return path
