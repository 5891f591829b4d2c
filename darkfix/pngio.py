"""PNG encoding (8 or 16 bits per channel) and atomic writes: a PNG appears whole or not at all."""

from __future__ import annotations

import errno
import os
import struct
import tempfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .errors import OutputError

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Rows are deflated in independent slices on threads (zlib releases the GIL); each slice ends on a
# full flush so the slices concatenate into one valid zlib stream.
_SLICE_BYTES = 4 << 20
# mkstemp creates 0600 files; outputs get the permissions an ordinary open() would give them
_UMASK = os.umask(0)
os.umask(_UMASK)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))


def _filtered_rows(image: np.ndarray) -> np.ndarray:
    """Rows prefixed with PNG filter 2 ("up"): cheap to compute and compresses smooth photos well."""
    h, w, c = image.shape
    big = image.astype(">u2") if image.dtype == np.uint16 else image
    raw = big.reshape(h, -1).view(np.uint8)
    out = np.empty((h, raw.shape[1] + 1), dtype=np.uint8)
    out[:, 0] = 2
    out[0, 1:] = raw[0]
    np.subtract(raw[1:], raw[:-1], out=out[1:, 1:])  # uint8 arithmetic wraps mod 256 as PNG requires
    return out


def encode_png(image: np.ndarray, compression: int = 1, threads: int = 0) -> bytes:
    """Encode an (H, W, 3) uint8 or uint16 array as PNG bytes; `compression` is zlib's level 0-9."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype not in (np.uint8, np.uint16):
        raise ValueError("expected an (H, W, 3) uint8 or uint16 image")
    if not 0 <= compression <= 9:
        raise ValueError("compression must be between 0 and 9")
    h, w, _ = image.shape
    depth = 16 if image.dtype == np.uint16 else 8
    data = _filtered_rows(np.ascontiguousarray(image)).reshape(-1)
    step = max(_SLICE_BYTES // (data.size // h) * (data.size // h), data.size // h)
    slices = [data[i : i + step] for i in range(0, data.size, step)]

    def deflate(part: np.ndarray) -> bytes:
        c = zlib.compressobj(compression, zlib.DEFLATED, -15)
        return c.compress(part) + c.flush(zlib.Z_FULL_FLUSH)

    workers = threads or min(len(slices), os.cpu_count() or 1)
    if workers > 1 and len(slices) > 1:
        with ThreadPoolExecutor(workers) as pool:
            bodies = list(pool.map(deflate, slices))
    else:
        bodies = [deflate(s) for s in slices]
    header = bytes([0x78, 0x01])  # zlib header: deflate, 32 KiB window
    final = zlib.compressobj(compression, zlib.DEFLATED, -15).flush(zlib.Z_FINISH)  # empty last block
    stream = b"".join([header, *bodies, final, struct.pack(">I", zlib.adler32(data))])
    ihdr = struct.pack(">IIBBBBB", w, h, depth, 2, 0, 0, 0)
    return _SIGNATURE + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", stream) + _chunk(b"IEND", b"")


def write_atomic(path: Path, data: bytes, overwrite: bool = False) -> Path:
    """Write `data` to a temporary file beside `path`, then rename it into place."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputError(f"{path}: already exists (use --overwrite to replace it)")
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise OutputError(f"{path}: output directory {directory} does not exist")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=directory)
    except OSError as e:
        raise OutputError(f"{path}: cannot write ({e.strerror})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            reason = "disk full" if e.errno == errno.ENOSPC else e.strerror
            raise OutputError(f"{path}: cannot write ({reason})") from None
        raise
    return path
