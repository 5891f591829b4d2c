"""The last stage: the restored picture as a file. PNG streams band by band (pngio); 16-bit TIFF, JPEG and
a denoised linear DNG are written from the whole image. All carry the capture metadata and are marked
sRGB (PNG's sRGB chunk, an ICC profile in TIFF and JPEG; the DNG keeps the camera's own colour data)."""

from __future__ import annotations

import io
import struct
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .errors import OutputError
from .metadata import SOFTWARE, Capture, base_entries, exif_ifd, exif_tiff, srgb_icc

# format -> (suffix of a default output name, suffixes that name it)
FORMATS = {"png": (".png", (".png",)), "tiff": (".tif", (".tif", ".tiff")), "jpeg": (".jpg", (".jpg", ".jpeg")),
           "dng": (".darkfix.dng", (".dng",))}
_EXIF_PLACEHOLDER = 34664
Tag = tuple[int, "int | str", int, object, bool]  # a tifffile extratag: code, type, count, value, in IFD0
# LibRaw's flip -> EXIF orientation (the inverse of LibRaw's own mapping)
_ORIENTATION = {0: 1, 1: 2, 2: 4, 3: 3, 4: 5, 5: 8, 6: 6, 7: 7}


def format_of(output: Path | None, fmt: str | None) -> str:
    """The output format: `fmt` if given (checked against the suffix of `output`), else from the suffix,
    else PNG. An unknown format, or a suffix that names another one, is refused."""
    by_suffix = None
    if output is not None:
        name = output.name.lower()
        by_suffix = next((f for f, (_, suffixes) in FORMATS.items() if name.endswith(suffixes)), None)
        if by_suffix is None and output.suffix and fmt is None:
            raise OutputError(f"{output}: unknown output format {output.suffix!r} (use .png, .tif, .jpg or .dng, "
                              "or say which with --format)")
    if fmt is not None:
        if fmt not in FORMATS:
            raise OutputError(f"unknown format {fmt!r} (expected {', '.join(FORMATS)})")
        if output is not None and output.suffix and by_suffix is not None and by_suffix != fmt:
            raise OutputError(f"{output}: the suffix says {by_suffix}, --format says {fmt}")
        return fmt
    return by_suffix or "png"


def default_suffix(fmt: str) -> str:
    return FORMATS[fmt][0]


def write_tiff(f: BinaryIO, image: np.ndarray, capture: Capture) -> None:
    """(H, W, 3) uint8 or uint16 RGB as an uncompressed TIFF with an sRGB ICC profile and EXIF."""
    import tifffile

    icc = srgb_icc()
    # ICC profile, EXIF IFD pointer
    extratags: list[Tag] = [(34675, 7, len(icc), icc, True), (_EXIF_PLACEHOLDER, 4, 1, 0, True)]
    for tag, _, value in base_entries(capture):
        if tag != 0x0131:  # software has its own argument
            extratags.append((tag, "s", 0, str(value), True))
    buf = io.BytesIO()
    tifffile.imwrite(buf, image, photometric="rgb", software=SOFTWARE, extratags=extratags, metadata=None)
    _append_exif(buf, capture)
    f.write(buf.getbuffer())


def _append_exif(buf: io.BytesIO, capture: Capture) -> None:
    """Append the EXIF sub-IFD to the little-endian TIFF in `buf` and point IFD0's ExifIFD entry at it."""
    data = buf.getbuffer()
    if bytes(data[:4]) != b"II*\x00":
        raise ValueError("expected a little-endian classic TIFF")
    (ifd0,) = struct.unpack_from("<I", data, 4)
    (count,) = struct.unpack_from("<H", data, ifd0)
    # tifffile will not write an ExifIFD tag itself: the entry was written as _EXIF_PLACEHOLDER, the code
    # just below 34665, so that renaming it keeps the entries sorted
    entry = next(ifd0 + 2 + 12 * i for i in range(count)
                 if struct.unpack_from("<H", data, ifd0 + 2 + 12 * i)[0] == _EXIF_PLACEHOLDER)
    end = len(data)
    del data  # release the buffer's export before growing it
    start = end + end % 2
    buf.seek(end)
    buf.write(b"\x00" * (start - end) + exif_ifd(capture, start))
    buf.seek(entry)
    buf.write(struct.pack("<HHII", 34665, 4, 1, start))


def write_jpeg(f: BinaryIO, image: np.ndarray, quality: int, capture: Capture) -> None:
    """(H, W, 3) uint8 RGB as a baseline JPEG with an sRGB ICC profile and EXIF."""
    from PIL import Image

    if image.dtype != np.uint8:
        raise OutputError("JPEG holds 8 bits per channel: use --bit-depth 8, or TIFF/PNG for 16")
    Image.fromarray(image).save(f, "JPEG", quality=quality, subsampling=0 if quality >= 90 else 2,
                                icc_profile=srgb_icc(), exif=b"Exif\x00\x00" + exif_tiff(capture))


def write_linear_dng(f: BinaryIO, camera_rgb: np.ndarray, cam_xyz: np.ndarray, neutral: np.ndarray, flip: int,
                     capture: Capture) -> None:
    """The restored linear camera RGB (H, W, 3) uint16 (white 65535, black 0, as stored, unrotated) as a
    LinearRaw DNG with the source's colour matrix, as-shot neutral and orientation, so that raw editors
    white-balance and colour it as they would the original."""
    import tifffile

    from .dng import _srational

    make, model = capture.make or "darkfix", capture.model or "restored"
    extratags: list[Tag] = [
        (50706, "B", 4, (1, 4, 0, 0), True),  # DNGVersion
        (50707, "B", 4, (1, 1, 0, 0), True),  # DNGBackwardVersion
        (50708, "s", 0, f"{make} {model}", True),  # UniqueCameraModel
        (50717, "I", 1, 65535, True),  # WhiteLevel
        (50721, "2i", 9, _srational(cam_xyz), True),  # ColorMatrix1
        (50778, "H", 1, 21, True),  # CalibrationIlluminant1: D65
        (50728, "2I", 3, _srational(neutral), True),  # AsShotNeutral
        (274, "H", 1, _ORIENTATION.get(flip, 1), True),  # Orientation
        (271, "s", 0, make, True),
        (272, "s", 0, model, True),
        (_EXIF_PLACEHOLDER, 4, 1, 0, True),  # EXIF IFD pointer
    ]
    if capture.datetime:
        extratags.append((306, "s", 0, capture.datetime, True))
    buf = io.BytesIO()
    tifffile.imwrite(buf, np.ascontiguousarray(camera_rgb), photometric=34892, planarconfig=1, compression=None,
                     subfiletype=0, software=SOFTWARE, extratags=extratags, metadata=None)
    _append_exif(buf, capture)
    f.write(buf.getbuffer())
