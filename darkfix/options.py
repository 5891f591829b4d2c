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
    profile: str | None = None  # a sensor profile (`darkfix calibrate`) applied to every frame: absolute path
    # whether the black level is exact, so that dark colour may come from wide local means (darkfix.wideguide):
    # None = where a sensor profile measured it
    trust_black: bool | None = None
    # self-ensemble: the network also runs on the transposed mosaic and the two outputs are averaged, for twice
    # the network's time (+0.1 dB; tiling.TiledEngine's call)
    ensemble: bool = False
    # row noise and black level measured in the raw's masked margins where it has them (darkfix.rows)
    masked_margin: bool = True
    # the row noise the picture's greens show (the part that alternates between rows) taken out (darkfix.rows)
    picture_rows: bool = True


def parse_brightness(value: float | int | str) -> float:
    """A brightness change as the CLI's `-m` takes it: a factor (2, "0.5") or stops ("+1ev", "-0.5ev"),
    0.01 to 100; ValueError with the CLI's message otherwise (the library and the CLI share it)."""
    if isinstance(value, bool):  # True would read as a factor of 1
        raise ValueError(f"{value!r} is neither a factor (e.g. 2) nor stops (e.g. +1ev)")
    if isinstance(value, (int, float)):
        factor = float(value)
    else:
        text = str(value).strip().lower()
        try:
            factor = 2.0 ** float(text[:-2]) if text.endswith("ev") else float(text)
        except (ValueError, OverflowError):
            raise ValueError(f"{value!r} is neither a factor (e.g. 2) nor stops (e.g. +1ev)") from None
    if not 0.01 <= factor <= 100.0:  # also refuses NaN
        raise ValueError(f"{value!r} is a factor of {factor:g}; expected 0.01 to 100 (-6.6ev to +6.6ev)")
    return factor


def parse_ratio(value: float | int | str | None) -> float | None:
    """An exposure ratio as the CLI's `--ratio` takes it (1 to 10000; None: estimate instead); ValueError
    with the CLI's message otherwise."""
    if value is None:
        return None
    try:
        if isinstance(value, bool):
            raise ValueError
        ratio = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{value!r} is not a number") from None
    if not 1.0 <= ratio <= 10000.0:
        raise ValueError(f"{value!r} is not an exposure ratio from 1 to 10000")
    return ratio
