"""PNG encoding (8 or 16 bits per channel) and atomic writes: a PNG appears whole or not at all."""

from __future__ import annotations

import atexit
import errno
import io
import os
import signal
import struct
import threading
import zlib
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .errors import OutputBusyError, OutputError, OutputExistsError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: outputs stay atomic; concurrent runs are not told apart
    fcntl = None

try:  # ISA-L's deflate: 3-4x zlib's speed at levels 1-3, files as small as zlib's level 1-2 or smaller
    from isal import isal_zlib as _isal
except ImportError:  # pragma: no cover - isal is a requirement; darkfix still writes PNGs with zlib alone
    _isal = None

ISAL_LEVELS = (1, 2, 3)  # PNG levels deflated by ISA-L when it is installed (it has no stored level 0)
_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_SLICE_BYTES = 4 << 20
# part files are created 0600; outputs get the permissions an ordinary open() would give them
_UMASK = os.umask(0)
os.umask(_UMASK)


def _checksums():
    """The module whose crc32 and adler32 PNGs use: ISA-L's are 5x zlib's (20 ms a 12 MP frame)."""
    return _isal if _isal is not None else zlib


def deflater(level: int):
    """The module whose raw-deflate `compressobj` makes a PNG's slices at zlib `level` 0-9: ISA-L for
    ISAL_LEVELS when it is installed (the same level numbers), zlib otherwise."""
    return _isal if _isal is not None and level in ISAL_LEVELS else zlib


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc32 = _checksums().crc32
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc32(data, crc32(kind)))


def _raw_rows(rows: np.ndarray) -> np.ndarray:
    """(n, W, 3) pixels -> (n, W * 3 * itemsize) bytes as PNG stores them (16 bits big-endian)."""
    big = rows.astype(">u2") if rows.dtype == np.uint16 else rows
    return big.reshape(rows.shape[0], -1).view(np.uint8)


def _filtered_rows(raw: np.ndarray, above: np.ndarray | None) -> np.ndarray:
    """Byte rows prefixed with PNG filter 2 ("up"): cheap to compute and compresses smooth photos well.
    `above` is the byte row before the first (None at the top of the image)."""
    out = np.empty((raw.shape[0], raw.shape[1] + 1), dtype=np.uint8)
    out[:, 0] = 2
    if above is None:
        out[0, 1:] = raw[0]
    else:
        np.subtract(raw[0], above, out=out[0, 1:])
    np.subtract(raw[1:], raw[:-1], out=out[1:, 1:])  # uint8 arithmetic wraps mod 256 as PNG requires
    return out


class PngStream:
    """Writes a PNG to a binary file band by band: memory holds a band or two, never the whole image.

    `write(rows)` takes the next (n, W, 3) rows. They are filtered, deflated (`deflater`, in slices on
    threads: zlib and ISA-L release the GIL; each slice ends on a full flush so the slices concatenate
    into one zlib stream)
    and written as IDAT chunks, a few slices at a time. With `background`, deflating and writing run
    on a thread while the caller makes the next band. `close()` ends the stream and checks the height;
    used as a context manager it closes on success and only waits for the thread on an error.
    """

    def __init__(self, f: BinaryIO, width: int, height: int, depth: int = 8, compression: int = 1,
                 threads: int = 0, background: bool = False, exif: bytes | None = None) -> None:
        if depth not in (8, 16):
            raise ValueError("depth must be 8 or 16")
        if not 0 <= compression <= 9:
            raise ValueError("compression must be between 0 and 9")
        self.f, self.width, self.height, self.depth, self.level = f, width, height, depth, compression
        self.rows = 0
        self._above: np.ndarray | None = None
        self._adler = _checksums().adler32(b"")
        self._zlib = deflater(compression)
        self._threads = threads or os.cpu_count() or 1
        self._slicer = ThreadPoolExecutor(self._threads, thread_name_prefix="darkfix-deflate") \
            if self._threads > 1 else None
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="darkfix-png") if background else None
        self._pending: Future | None = None
        ihdr = struct.pack(">IIBBBBB", width, height, depth, 2, 0, 0, 0)
        # sRGB (perceptual intent) for colour-managed viewers; eXIf holds the capture metadata
        head = _SIGNATURE + _chunk(b"IHDR", ihdr) + _chunk(b"sRGB", b"\x00")
        self.f.write(head + (_chunk(b"eXIf", exif) if exif else b""))

    def write(self, rows: np.ndarray) -> None:
        """Append the next rows, (n, width, 3) uint8 (depth 8) or uint16 (depth 16). With `background`
        the array is read later, on the thread: do not change it after handing it over."""
        dtype = np.uint8 if self.depth == 8 else np.uint16
        if rows.ndim != 3 or rows.shape[1:] != (self.width, 3) or rows.dtype != dtype:
            raise ValueError(f"expected ({self.width} columns, 3 channels) {np.dtype(dtype).name} rows, "
                             f"got {rows.shape} {rows.dtype}")
        if self.rows + rows.shape[0] > self.height:
            raise ValueError("more rows than the image's height")
        if rows.shape[0] == 0:
            return
        self.rows += rows.shape[0]
        if self._writer is None:
            self._emit(rows)
        else:
            self._wait()
            self._pending = self._writer.submit(self._emit, rows)

    def _emit(self, rows: np.ndarray) -> None:
        """Filter, deflate and write `rows` in chunks of a few slices (the filtered copy stays small)."""
        row_bytes = rows.shape[1] * rows.shape[2] * rows.itemsize + 1
        chunk = max(1, _SLICE_BYTES * self._threads // row_bytes)
        step = max(1, _SLICE_BYTES // row_bytes) * row_bytes

        def deflate(part: np.ndarray) -> bytes:
            c = self._zlib.compressobj(self.level, self._zlib.DEFLATED, -15)
            return c.compress(part) + c.flush(self._zlib.Z_FULL_FLUSH)

        for i in range(0, rows.shape[0], chunk):
            raw = _raw_rows(rows[i : i + chunk])
            header = b"\x78\x01" if self._above is None else b""  # zlib header before the first row
            data = _filtered_rows(raw, self._above).reshape(-1)
            self._above = raw[-1].copy()  # the up filter of the next row reads it
            self._adler = _checksums().adler32(data, self._adler)
            slices = [data[j : j + step] for j in range(0, data.size, step)]
            if self._slicer is not None and len(slices) > 1:
                bodies = list(self._slicer.map(deflate, slices))
            else:
                bodies = [deflate(p) for p in slices]
            self.f.write(_chunk(b"IDAT", b"".join([header, *bodies])))

    def _wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def close(self) -> None:
        """Finish the stream: the final deflate block, the checksum and the end chunk."""
        try:
            self._wait()
            if self.rows != self.height:
                raise ValueError(f"PNG has {self.rows} of its {self.height} rows")
            final = zlib.compressobj(self.level, zlib.DEFLATED, -15).flush(zlib.Z_FINISH)  # empty last block
            self.f.write(_chunk(b"IDAT", final + struct.pack(">I", self._adler)) + _chunk(b"IEND", b""))
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        for pool in (self._writer, self._slicer):
            if pool is not None:
                pool.shutdown(wait=True)

    def __enter__(self) -> "PngStream":
        return self

    def __exit__(self, kind, value, tb) -> None:
        if kind is None:
            self.close()
        else:
            self._shutdown()


def encode_png(image: np.ndarray, compression: int = 1, threads: int = 0) -> bytes:
    """Encode an (H, W, 3) uint8 or uint16 array as PNG bytes; `compression` is zlib's level 0-9."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype not in (np.uint8, np.uint16):
        raise ValueError("expected an (H, W, 3) uint8 or uint16 image")
    buf = io.BytesIO()
    h, w, _ = image.shape
    with PngStream(buf, w, h, 16 if image.dtype == np.uint16 else 8, compression, threads) as png:
        png.write(image)
    return buf.getvalue()


# Hard links that a file system does not make (FAT, some FUSE and SMB mounts): the output is then renamed
# into place after a check that it does not exist, exclusive among darkfix processes by the claim's lock.
_NO_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK, errno.ENOSYS}
_claims: dict[str, "OutputClaim"] = {}  # claims this process holds, by absolute output path
_swept: set[str] = set()  # directories whose stale part files this process removed
_DEFERRED = (signal.SIGINT, signal.SIGTERM)


def part_path(path: Path) -> Path:
    """The temporary file an output is written to, beside it: `.NAME.part`, locked while it is written."""
    return path.with_name(f".{path.name}.part")


def _lock(fd: int) -> bool | None:
    """Take an exclusive lock on `fd` without waiting: True, False where another open file holds it (a
    live writer), None where the file system has no locks (then nothing can be told apart)."""
    if fcntl is None:  # pragma: no cover - Windows
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        return None  # ENOLCK, EOPNOTSUPP, EINVAL: a file system without flock


def _still_named(fd: int, path: Path) -> bool:
    """Whether `path` still names the file open as `fd` (its last holder may have removed it between our
    open and our lock)."""
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


@contextmanager
def signals_deferred() -> Iterator[None]:
    """Ctrl-C and SIGTERM that arrive inside the block take effect when it ends (in the main thread,
    where Python runs signal handlers; elsewhere the block runs as it is)."""
    if threading.current_thread() is not threading.main_thread() or \
            any(signal.getsignal(s) is None for s in _DEFERRED):  # a handler installed outside Python: kept
        yield
        return
    caught: list[int] = []
    saved = {s: signal.signal(s, lambda signum, frame: caught.append(signum)) for s in _DEFERRED}
    try:
        yield
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)
        if caught:  # the first signal, as it would have been handled
            handler = saved[caught[0]]
            if callable(handler):
                handler(caught[0], None)
            elif handler == signal.SIG_DFL:
                signal.raise_signal(caught[0])


def _is_output_part(name: str) -> bool:
    """`.NAME.png.part` (and the `.NAME.png.XXXXXXXX.part` of darkfix before issue 23) for every output
    format's suffix: never a weights file's or a checkpoint's part file."""
    from .imagefile import FORMATS

    if not (name.startswith(".") and name.endswith(".part")):
        return False
    stem = name[: -len(".part")].lower()
    suffixes = {s for _, names in FORMATS.values() for s in names}
    return any(stem.endswith(s) or stem.rpartition(".")[0].endswith(s) for s in suffixes)


def _remove_if_unheld(part: Path) -> bool:
    """Remove the part file `part` if no open file holds its lock (no live writer): True if removed."""
    try:
        fd = os.open(part, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return False
    try:
        if _lock(fd) and _still_named(fd, part):
            part.unlink()
            return True
    except OSError:  # another user's directory: left as it is
        pass
    finally:
        os.close(fd)
    return False


def remove_stale_parts(directory: Path) -> int:
    """Remove the part files in `directory` that a killed darkfix left: those no live writer holds locked
    (a running writer's stay). The number removed."""
    try:
        entries = [e.name for e in os.scandir(directory) if _is_output_part(e.name)]
    except OSError:
        return 0
    return sum(_remove_if_unheld(Path(directory) / name) for name in entries)


class OutputClaim:
    """This process's exclusive right to write `path`: its part file `.NAME.part`, open and locked (flock)
    from the claim to the end. A second claim on the same output, from any process, is refused while the
    first lives (OutputBusyError) and granted once that process ends, however it ended: the lock goes with
    it, and the part file it left is truncated and reused. Without `overwrite`, an existing output is
    refused (OutputExistsError), at the claim and again, atomically, when the file is put in place.
    """

    def __init__(self, path: Path, overwrite: bool = False) -> None:
        self.path, self.part, self.overwrite = Path(path), part_path(Path(path)), overwrite
        self.committed = False
        directory = self.path.parent if str(self.path.parent) else Path(".")
        if not directory.is_dir():
            raise OutputError(f"{self.path}: output directory {directory} does not exist")
        if str(directory.resolve()) not in _swept:  # the first write here: what a killed run left goes
            _swept.add(str(directory.resolve()))
            remove_stale_parts(directory)
        with signals_deferred():  # a Ctrl-C or SIGTERM here would leave a part file no claim knows
            self.fd = self._open_part()
            _claims.setdefault(os.path.abspath(self.path), self)  # an interrupt from here on: removed at exit
        if self.path.exists() and not overwrite:
            self.release()
            raise OutputExistsError(f"{self.path}: already exists (use --overwrite to replace it)")

    def _open_part(self) -> int:
        """The part file, open and locked by this process."""
        for _ in range(100):
            try:
                fd = os.open(self.part, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
            except OSError as e:
                raise OutputError(f"{self.path}: cannot write ({os_reason(e)})") from None
            if _lock(fd) is False:
                os.close(fd)
                raise OutputBusyError(f"{self.path}: another darkfix process is writing it")
            if _still_named(fd, self.part):
                return fd
            os.close(fd)  # its last holder removed it meanwhile: open the name again
        raise OutputError(f"{self.path}: cannot claim {self.part.name}")  # pragma: no cover

    def open(self) -> BinaryIO:
        """The part file, emptied (of an earlier try, or of what a killed writer left), for writing."""
        os.ftruncate(self.fd, 0)
        os.lseek(self.fd, 0, os.SEEK_SET)
        return os.fdopen(os.dup(self.fd), "wb")  # its own descriptor: closing it keeps the lock

    def commit(self) -> None:
        """Put the written part file in place as the output: a hard link that fails where the output
        exists (unless overwriting, then a rename), then the part's name removed."""
        os.fchmod(self.fd, 0o666 & ~_UMASK)  # the permissions an ordinary open() would give
        if self.overwrite:
            os.replace(self.part, self.path)
        else:
            try:
                os.link(self.part, self.path)
                os.unlink(self.part)
            except FileExistsError:
                raise OutputExistsError(f"{self.path}: already exists (use --overwrite to replace it)") from None
            except OSError as e:
                if e.errno not in _NO_LINKS:
                    raise
                if self.path.exists():
                    raise OutputExistsError(f"{self.path}: already exists (use --overwrite to replace it)") from None
                os.replace(self.part, self.path)
        self.committed = True

    def release(self) -> None:
        """End the claim: an uncommitted part file is removed (it is ours: we hold its lock), the lock let go."""
        if self.fd < 0:
            return
        # the part file goes before the claim is forgotten: interrupted here, the exit handler does it again
        try:
            if not self.committed and _still_named(self.fd, self.part):
                self.part.unlink()
        except OSError:
            pass
        fd, self.fd = self.fd, -1
        _claims.pop(os.path.abspath(self.path), None)
        os.close(fd)

    def __enter__(self) -> "OutputClaim":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


@atexit.register
def _release_claims() -> None:
    """At exit (Ctrl-C and SIGTERM end in sys.exit too), no claim of this process keeps its part file."""
    for claim in list(_claims.values()):
        claim.release()


def claim_output(path: Path, overwrite: bool = False) -> OutputClaim:
    """Claim `path` for this process (see OutputClaim) until `.release()`: `atomic_output` writes through
    a claim held here, so a batch claims each output before decoding it and no other process does it too."""
    claim = OutputClaim(path, overwrite)
    _claims[os.path.abspath(claim.path)] = claim
    return claim


def os_reason(e: OSError) -> str:
    """An OSError in a few words for a one-line message."""
    return "disk full" if e.errno == errno.ENOSPC else (e.strerror or str(e))


@contextmanager
def atomic_output(path: Path, overwrite: bool = False) -> Iterator[BinaryIO]:
    """A binary file that appears at `path` whole, when the block ends without error, or not at all.

    It is written to the locked part file beside `path` (through this process's claim on `path` if it
    holds one, else a claim taken here; see OutputClaim), synced and put in place: without `overwrite`
    exclusively, so that of several processes writing one name one succeeds and the others get
    OutputExistsError. On any error or interruption the part file is removed. OSErrors become
    OutputError with a one-line reason.
    """
    path = Path(path)
    held = _claims.get(os.path.abspath(path))
    claim = held if held is not None and held.fd >= 0 else OutputClaim(path, overwrite)
    try:
        with claim.open() as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        claim.commit()
    except BaseException as e:
        if claim is held and not claim.committed:
            try:
                os.ftruncate(claim.fd, 0)  # a claim held on keeps an empty part file until its release
            except OSError:
                pass
        if isinstance(e, OSError):
            raise OutputError(f"{path}: cannot write ({os_reason(e)})") from None
        raise
    finally:
        if claim is not held:
            claim.release()


def write_atomic(path: Path, data: bytes, overwrite: bool = False) -> Path:
    """Write `data` to `path` atomically (see `atomic_output`)."""
    with atomic_output(path, overwrite) as f:
        f.write(data)
    return Path(path)


# --- reading (the lab's ground truth; Pillow drops 16-bit colour) ---


def read_png(path: str | Path) -> np.ndarray:
    """Read an 8- or 16-bit RGB(A)/grey PNG into (H, W, 3) uint8/uint16 (Pillow drops 16-bit colour).

    Rows filtered with None, Sub or Up (all darkfix writes) decode with numpy; PNGs that use the Avg or
    Paeth filters go through pypng when it is installed.
    """
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise OSError(f"{p}: cannot read ({e.strerror})") from None
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"{p}: not a PNG file")
    pos, idat, ihdr = 8, [], None
    try:
        while pos < len(data):
            (length,) = struct.unpack(">I", data[pos : pos + 4])
            kind = data[pos + 4 : pos + 8]
            body = data[pos + 8 : pos + 8 + length]
            if kind == b"IHDR":
                ihdr = struct.unpack(">IIBBBBB", body)
            elif kind == b"IDAT":
                idat.append(body)
            elif kind == b"IEND":
                break
            pos += 12 + length
        if ihdr is None:
            raise ValueError(f"{p}: corrupt PNG (no IHDR)")
        w, h, depth, colour, _, _, interlace = ihdr
        channels = {0: 1, 2: 3, 4: 2, 6: 4}.get(colour)
        if channels is None or depth not in (8, 16) or interlace:
            raise ValueError(f"{p}: unsupported PNG (colour type {colour}, {depth} bits, interlace {interlace})")
        raw = np.frombuffer(zlib.decompress(b"".join(idat)), dtype=np.uint8)
        bpp = channels * depth // 8
        rows = raw[: h * (1 + w * bpp)].reshape(h, 1 + w * bpp)
    except (struct.error, zlib.error) as e:
        raise ValueError(f"{p}: corrupt PNG ({e})") from None
    filters = rows[:, 0]
    if np.any(filters > 2):
        return _read_png_slow(p)
    out = np.empty((h, w * bpp), dtype=np.uint8)
    prev = np.zeros(w * bpp, dtype=np.uint8)
    for y in range(h):
        line = rows[y, 1:]
        if filters[y] == 1:  # Sub: running sum along each byte position of the pixel, modulo 256
            line = np.cumsum(line.reshape(w, bpp), axis=0, dtype=np.uint8).reshape(-1)
        elif filters[y] == 2:  # Up
            line = line + prev
        out[y] = line
        prev = out[y]
    image = out.view(">u2").astype(np.uint16) if depth == 16 else out
    image = image.reshape(h, w, channels)
    return _rgb(image)


def _rgb(image: np.ndarray) -> np.ndarray:
    c = image.shape[2]
    if c in (1, 2):
        return np.repeat(image[:, :, :1], 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3])


def _read_png_slow(p: Path) -> np.ndarray:
    try:
        import png  # pypng
    except ImportError:
        raise ValueError(f"{p}: PNG uses Avg/Paeth filters; install pypng to read it") from None
    w, h, rows, info = png.Reader(filename=str(p)).asDirect()
    dtype = np.uint16 if info["bitdepth"] > 8 else np.uint8
    image = np.vstack([np.asarray(r, dtype=dtype) for r in rows]).reshape(h, w, info["planes"])
    return _rgb(image)
