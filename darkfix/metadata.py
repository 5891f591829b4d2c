"""Capture metadata (camera, date, exposure, ISO, f-number, lens) read from a raw and written as EXIF.

Reading uses tifffile, which opens the TIFF-based raws (DNG, ARW, NEF, NRW, CR2, PEF, SRW, 3FR, ERF, DCR,
KDC, MOS, IIQ, ...); CR3, RAF, RW2, ORF, X3F and other non-TIFF containers come back empty (the picture
is restored all the same). Writing builds a small TIFF-structured EXIF block by hand: IFD0 (make, model,
date, software) and its EXIF sub-IFD, the form PNG's eXIf chunk, JPEG's APP1 and TIFF's own tags hold.
"""

from __future__ import annotations

import os
import struct
from dataclasses import asdict, dataclass
from fractions import Fraction
from functools import lru_cache

from . import __version__

SOFTWARE = f"darkfix {__version__}"


@dataclass(frozen=True)
class Capture:
    """What the camera recorded about a shot; None where the raw does not say."""

    make: str | None = None
    model: str | None = None
    datetime: str | None = None  # "YYYY:MM:DD HH:MM:SS", as EXIF writes it
    exposure_time: float | None = None  # seconds
    fnumber: float | None = None
    iso: int | None = None
    focal_length: float | None = None  # mm
    lens: str | None = None
    # the DNG NoiseProfile tag (S, O pairs: variance S x + O of the normalised signal), as written
    noise_profile: tuple[float, ...] | None = None

    def is_empty(self) -> bool:
        return not any(v is not None for v in asdict(self).values())


def _text(value) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if not isinstance(value, str):
        return None
    value = value.strip("\x00 ").strip()
    return value or None


def _number(value) -> float | None:
    if isinstance(value, (tuple, list)):
        if len(value) == 2 and value[1]:
            return value[0] / value[1]
        value = value[0] if value else None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number > 0 else None


def read_capture(path: str | os.PathLike) -> Capture:
    """The capture metadata of a raw file, or an empty Capture where it has none darkfix can read."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            if not isinstance(page, tifffile.TiffPage):
                return Capture()
            tags = page.tags
            exif = tags["ExifTag"].value if "ExifTag" in tags else {}
            base = {t.name: t.value for t in tags.values()}
    except Exception:  # not a TIFF container, or one tifffile cannot parse: no metadata, not an error
        return Capture()
    if not isinstance(exif, dict):
        exif = {}
    exif = {**base, **exif}  # some raws keep EXIF fields in IFD0 itself
    iso = exif.get("ISOSpeedRatings", exif.get("PhotographicSensitivity"))
    if isinstance(iso, (tuple, list)):
        iso = iso[0] if iso else None
    return Capture(
        make=_text(base.get("Make")),
        model=_text(base.get("Model")),
        datetime=_text(exif.get("DateTimeOriginal")) or _text(base.get("DateTime")),
        exposure_time=_number(exif.get("ExposureTime")),
        fnumber=_number(exif.get("FNumber")),
        iso=int(iso) if isinstance(iso, (int, float)) and iso > 0 else None,
        focal_length=_number(exif.get("FocalLength")),
        lens=_text(exif.get("LensModel")),
        noise_profile=_numbers(base.get("NoiseProfile")),
    )


def _numbers(value) -> tuple[float, ...] | None:
    if isinstance(value, (int, float)):
        value = (value,)
    if not isinstance(value, (tuple, list)) or not value:
        return None
    try:
        return tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None


# TIFF field types
_ASCII, _SHORT, _LONG, _RATIONAL = 2, 3, 4, 5
Entry = tuple[int, int, "str | int | float"]  # tag, field type, value


def _rational(value: float) -> tuple[int, int]:
    f = Fraction(value).limit_denominator(1_000_000)
    return f.numerator, f.denominator


def _ifd(entries: list[Entry], start: int, next_ifd: int = 0) -> bytes:
    """One little-endian IFD placed at file offset `start`: entries (tag, type, value), values that do not
    fit in 4 bytes stored after it."""
    entries = sorted(entries)
    head = struct.pack("<H", len(entries))
    data_at = start + 2 + 12 * len(entries) + 4
    body, data = b"", b""
    for tag, kind, value in entries:
        if kind == _ASCII:
            payload, count = str(value).encode("ascii", "replace") + b"\x00", len(str(value)) + 1
        elif kind == _SHORT:
            payload, count = struct.pack("<H", int(value)), 1
        elif kind == _LONG:
            payload, count = struct.pack("<I", int(value)), 1
        else:
            payload, count = struct.pack("<II", *_rational(float(value))), 1
        if len(payload) <= 4:
            body += struct.pack("<HHI", tag, kind, count) + payload.ljust(4, b"\x00")
        else:
            body += struct.pack("<HHII", tag, kind, count, data_at + len(data))
            data += payload + (b"\x00" if len(payload) % 2 else b"")
    return head + body + struct.pack("<I", next_ifd) + data


# (tag, field type, Capture field) of the EXIF sub-IFD and of IFD0, written where the capture has them
_EXIF_FIELDS = ((0x829A, _RATIONAL, "exposure_time"), (0x829D, _RATIONAL, "fnumber"), (0x8827, _SHORT, "iso"),
                (0x9003, _ASCII, "datetime"), (0x920A, _RATIONAL, "focal_length"), (0xA434, _ASCII, "lens"))
_BASE_FIELDS = ((0x010F, _ASCII, "make"), (0x0110, _ASCII, "model"), (0x0132, _ASCII, "datetime"))


def _entries(capture: Capture, fields: tuple[tuple[int, int, str], ...]) -> list[Entry]:
    out: list[Entry] = []
    for tag, kind, name in fields:
        value = getattr(capture, name)
        if value:
            out.append((tag, kind, min(value, 65535) if kind == _SHORT else value))
    return out


def exif_ifd(capture: Capture, start: int) -> bytes:
    """The EXIF sub-IFD of `capture` placed at file offset `start` (for a TIFF's ExifIFD pointer)."""
    return _ifd(_entries(capture, _EXIF_FIELDS) + [(0xA001, _SHORT, 1)], start)  # ColorSpace: sRGB


def base_entries(capture: Capture) -> list[Entry]:
    """IFD0 entries: make, model, date and software."""
    return [(0x0131, _ASCII, SOFTWARE), *_entries(capture, _BASE_FIELDS)]


def exif_tiff(capture: Capture) -> bytes:
    """A TIFF-structured EXIF block (little endian): IFD0 pointing at the EXIF sub-IFD."""
    entries = base_entries(capture)
    provisional = _ifd(entries + [(0x8769, _LONG, 0)], 8)
    exif_at = 8 + len(provisional) + len(provisional) % 2
    ifd0 = _ifd(entries + [(0x8769, _LONG, exif_at)], 8)
    return b"II*\x00" + struct.pack("<I", 8) + ifd0.ljust(exif_at - 8, b"\x00") + exif_ifd(capture, exif_at)


@lru_cache(maxsize=1)
def srgb_icc() -> bytes:
    """An sRGB ICC profile (littleCMS's, through Pillow), for formats that tag colour by profile."""
    from PIL import ImageCms

    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
