"""One raw file to one PNG: decode -> pack + amplify -> network (tiled) -> colour -> encode -> atomic write.

Each stage is a function of its own so that `darkfix bench` can time them separately.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .colour import orient, render
from .errors import OutputError
from .inference import Restorer, Tile
from .packing import Prepared, crop, prepare
from .pngio import encode_png, write_atomic
from .rawio import RawFrame, read_raw
from .weights import WeightsInfo

RAW_SUFFIXES = {".arw", ".dng", ".nef", ".nrw", ".cr2", ".cr3", ".crw", ".rw2", ".orf", ".pef", ".raf",
                ".srw", ".3fr", ".fff", ".iiq", ".erf", ".kdc", ".dcr", ".mos", ".mef", ".mrw", ".x3f",
                ".rwl", ".raw", ".sr2", ".srf", ".dcs", ".k25"}


@dataclass
class RestoreOptions:
    """What the user chose for one restoration."""

    brightness: float = 1.0  # the paper's m, on top of the amplification
    ratio: float | None = None  # fixed amplification (SID's exposure ratio) instead of the estimate
    wb: str = "camera"  # camera | daylight
    bit_depth: int = 8
    compression: int = 1  # zlib level: 1 costs a fraction of the network's time at ~the size of 6
    overwrite: bool = False


def prepare_frame(frame: RawFrame, opts: RestoreOptions) -> Prepared:
    """The packed, amplified network input for a decoded frame."""
    return prepare(frame.mosaic, frame.cfa, frame.black, frame.white, opts.ratio, opts.brightness)


def quantise(image: torch.Tensor, bit_depth: int) -> np.ndarray:
    """(1, 3, H, W) in [0, 1] -> (H, W, 3) uint8 or uint16, rounded."""
    top = 255.0 if bit_depth == 8 else 65535.0
    dtype = torch.uint8 if bit_depth == 8 else torch.int32
    q = (image[0].clamp(0.0, 1.0) * top + 0.5).to(dtype).permute(1, 2, 0).cpu().numpy()
    return q if bit_depth == 8 else q.astype(np.uint16)


def infer_and_render(frame: RawFrame, prep: Prepared, restorer: Restorer, info: WeightsInfo,
                     opts: RestoreOptions) -> np.ndarray:
    """Network and colour, tile by tile, into an (H, W, 3) image, upright and cropped to the frame."""
    _, h, w = prep.packed.shape
    canvas = np.empty((2 * h, 2 * w, 3), dtype=np.uint8 if opts.bit_depth == 8 else np.uint16)
    wb = torch.from_numpy(frame.wb_camera if opts.wb == "camera" else frame.wb_daylight).to(restorer.device)
    rgb_cam = torch.from_numpy(frame.rgb_cam).to(restorer.device)

    def sink(out: torch.Tensor, t: Tile) -> None:
        if info.output == "camera":
            out = render(out, wb, rgb_cam)
        canvas[2 * t.y0 : 2 * t.y1, 2 * t.x0 : 2 * t.x1] = quantise(out, opts.bit_depth)

    restorer(prep.packed, sink)
    return orient(crop(canvas.transpose(2, 0, 1), prep.layout).transpose(1, 2, 0), frame.flip)


@dataclass
class Result:
    source: Path
    output: Path
    amplification: float
    size: tuple[int, int]  # width, height of the PNG


def restore_file(source: Path, output: Path, restorer: Restorer, info: WeightsInfo,
                 opts: RestoreOptions) -> Result:
    """Restore one raw file into `output` (written atomically); raises DarkfixError subclasses."""
    check_output(source, output, opts.overwrite)
    frame = read_raw(source)
    try:
        prep = prepare_frame(frame, opts)
        image = infer_and_render(frame, prep, restorer, info, opts)
    except MemoryError:
        raise OutputError(f"{source}: out of memory while restoring; try a smaller --tile") from None
    write_atomic(output, encode_png(image, opts.compression), overwrite=opts.overwrite)
    return Result(source, output, prep.amplification, (image.shape[1], image.shape[0]))


def check_output(source: Path, output: Path, overwrite: bool) -> None:
    """Refuse before any work: an output that is an input, exists, or cannot be written."""
    if output.exists() and source.exists() and os.path.samefile(source, output):
        raise OutputError(f"{output}: output would overwrite its input")
    if output.suffix.lower() in RAW_SUFFIXES:
        raise OutputError(f"{output}: refusing to write a PNG under a raw file's name")
    if output.is_dir():
        raise OutputError(f"{output}: is a directory")
    if output.exists() and not overwrite:
        raise OutputError(f"{output}: already exists (use --overwrite to replace it)")
    parent = output.parent
    if not parent.is_dir():
        raise OutputError(f"{output}: output directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"{output}: output directory {parent} is not writable")


def default_output(source: Path, out: Path | None, out_is_dir: bool) -> Path:
    """`<stem>.png` beside the input, inside `out` when it is a directory, else `out` itself."""
    if out is None:
        return source.with_suffix(".png")
    return out / f"{source.stem}.png" if out_is_dir else out
