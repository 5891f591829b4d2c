"""What the user chose for a restoration: plain values, no torch (decode workers receive them)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RestoreOptions:
    """What the user chose for one restoration."""

    brightness: float = 1.0  # a factor on top of the amplification (the paper's m)
    ratio: float | None = None  # fixed amplification (SID's exposure ratio) instead of the estimate
    exposure: str = "auto"  # the estimate when no ratio is given: "auto" (normal exposure) or "paper"
    wb: str = "camera"  # camera | daylight
    bit_depth: int = 8
    compression: int = 1  # deflate level: 1 (ISA-L) costs a tenth of the network's time
    overwrite: bool = False
    format: str = "png"  # png | tiff | jpeg | dng (imagefile.FORMATS)
    quality: int = 95  # JPEG quality
