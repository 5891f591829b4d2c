"""What the command modules share: option groups, parameter types, the one-line failure, loading the network."""

from __future__ import annotations

import sys
from pathlib import Path

import click


DEVICE = click.Choice(["auto", "cpu", "cuda"])  # engine.DEVICES (tested equal; not imported: the CLI starts fast)
PRECISION = click.Choice(["auto", "fp32", "fp16", "bf16"])


class Brightness(click.ParamType):
    """A brightness change: a factor (2, 0.5) or stops with an `ev` suffix (+1ev, -0.5ev)."""

    name = "FACTOR|STOPSev"

    def convert(self, value, param, ctx) -> float:
        from ..options import parse_brightness

        try:
            return parse_brightness(value)
        except ValueError as e:  # the library raises the same message
            self.fail(str(e), param, ctx)


class Ratio(click.ParamType):
    """An exposure ratio, 1 to 10000."""

    name = "RATIO"

    def convert(self, value, param, ctx) -> float:
        from ..options import parse_ratio

        try:
            return parse_ratio(value)
        except ValueError as e:
            self.fail(str(e), param, ctx)


def fail(message: str, code: int = 2) -> None:
    click.echo(f"darkfix: error: {message}", err=True)
    sys.exit(code)


def lab_module(name: str):
    """A module of darkfix.lab, or a one-line error when the lab extra is not installed."""
    import importlib

    try:
        return importlib.import_module(f"darkfix.lab.{name}")
    except ImportError as e:
        fail(f"this command needs darkfix's lab extra ({e.name} is missing): pip install 'darkfix[lab]'")


def network_options(f):
    """Options shared by every command that runs the network."""
    for option in reversed([
        click.option("--weights", type=click.Path(path_type=Path, dir_okay=False),
                     help="Weights file (darkfix .safetensors or the authors' .pth). Default: packaged."),
        click.option("--device", type=DEVICE, default="auto", show_default=True,
                     help="auto = CUDA when available."),
        click.option("--engine", type=click.Choice(["auto", "torch", "openvino"]), default="auto",
                     show_default=True,
                     help="What runs the network: auto = OpenVINO on a CPU where it is installed, unless torch "
                          "measured 1.25x faster (once per machine); torch for CUDA."),
        click.option("--precision", type=PRECISION, default="auto", show_default=True,
                     help="auto = fp16 on CUDA; on CPU bf16 where the CPU has native bf16 (AMX, "
                          "AVX512-BF16), else fp32."),
        click.option("--threads", type=click.IntRange(1, 256), default=None,
                     help="CPU threads for the network (default: torch's choice)."),
        click.option("--tile", type=click.IntRange(64, 65536), default=None,
                     help="Tile side in packed pixels (mosaic/2); frames larger than this run in "
                          "overlapping tiles. Default 512 on CPU (256 for frames over 30 MP), 4096 on CUDA "
                          "(a frame that fits runs whole)."),
    ]):
        f = option(f)
    return f


def restore_options(f):
    """Options that decide how a frame is amplified, coloured and written."""
    for option in reversed([
        click.option("--brightness", "-m", type=Brightness(), default="1", show_default=True,
                     help="Brighter or darker than the chosen amplification: a factor (2 = twice as bright) or "
                          "stops (+1ev, -0.5ev)."),
        click.option("--exposure", type=click.Choice(["auto", "paper"]), default="auto", show_default=True,
                     help="How the amplification is chosen without --ratio: auto = a normally exposed picture; "
                          "paper = Lamba & Mitra's estimate (darker; the authors brighten it with -m 5 to 8)."),
        click.option("--ratio", type=Ratio(), default=None,
                     help="Amplify by this exposure ratio instead of an estimate (SID protocol)."),
        click.option("--wb", type=click.Choice(["camera", "daylight"]), default="camera", show_default=True,
                     help="White balance: as shot, or the camera's daylight multipliers."),
        click.option("--format", "fmt", type=click.Choice(["png", "tiff", "jpeg", "dng"]), default=None,
                     help="Output format (default: from the -o suffix, else png). dng = the denoised linear "
                          "camera RGB as a DNG that raw editors open (darkfix weights only)."),
        click.option("--bit-depth", type=click.Choice(["8", "16"]), default="8", show_default=True,
                     help="Bits per channel of PNG and TIFF (JPEG is 8, DNG 16)."),
        click.option("--quality", type=click.IntRange(1, 100), default=95, show_default=True,
                     help="JPEG quality."),
        click.option("--compression", type=click.IntRange(0, 9), default=1, show_default=True,
                     help="PNG deflate level: 0 stores, 9 is smallest and slowest; 1-3 deflate with "
                          "ISA-L, several times faster than zlib at about the same size."),
        click.option("--overwrite", is_flag=True, help="Replace existing output files."),
        click.option("--profile", type=click.Path(path_type=Path, dir_okay=False), default=None,
                     help="Sensor profile from `darkfix calibrate` (dark frames of this camera at these settings): "
                          "subtracts its master dark, uses its black levels, fills hot pixels."),
        click.option("--trust-black/--no-trust-black", default=None,
                     help="Whether the black level is exact, so that dark areas take their colour from wide "
                          "local means (greener grass, bluer dusk; an error of 1 DN casts the shadows). "
                          "Default: trusted where --profile measured it."),
        click.option("--ensemble", is_flag=True,
                     help="Also run the network on the transposed frame and average the two: about 0.1 dB "
                          "better (finer grain, truer fine colour) for twice the network's time."),
        click.option("--masked-margin/--no-masked-margin", default=True, show_default=True,
                     help="Measure the row noise (banding) and the black level in the raw's optically masked "
                          "margins, where it has them and they follow the picture's rows, and take the row "
                          "noise out."),
        click.option("--picture-rows/--no-picture-rows", default=True, show_default=True,
                     help="Measure the row noise that alternates between rows in the picture's own greens "
                          "(after --masked-margin's correction) and take it out."),
    ]):
        f = option(f)
    return f


def load_restorer(weights, engine, device, precision, threads, tile):
    from .. import engine as engines
    from ..tiling import limit_malloc_arenas

    try:
        restorer, info = engines.load(weights, engine=engine, device=device, precision=precision, threads=threads,
                                      tile=tile, say=lambda msg: click.echo(f"darkfix: {msg}", err=True))
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    if restorer.device.type == "cpu":
        limit_malloc_arenas()
    return restorer, info


def restore_settings(brightness, exposure, ratio, wb, fmt, bit_depth, quality, compression, overwrite, profile=None,
                     trust_black=None, ensemble=False, masked_margin=True,
                     picture_rows=True):
    from ..options import RestoreOptions

    if fmt == "jpeg" and bit_depth == "16":
        fail("JPEG holds 8 bits per channel: use --bit-depth 8, or --format tiff/png for 16")
    if profile is not None:  # a damaged profile is refused before any work; workers get its absolute path
        from ..errors import DarkfixError
        from ..profile import load_profile

        try:
            load_profile(profile)
        except DarkfixError as e:
            fail(str(e), e.exit_code)
        profile = str(Path(profile).resolve())
    return RestoreOptions(brightness=brightness, ratio=ratio, exposure=exposure, wb=wb, bit_depth=int(bit_depth),
                          compression=compression, overwrite=overwrite, format=fmt or "png", quality=quality,
                          profile=profile, trust_black=trust_black, ensemble=ensemble,
                          masked_margin=masked_margin, picture_rows=picture_rows)


def raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def stop_on_signals() -> None:
    """SIGTERM stops a run as Ctrl-C does (KeyboardInterrupt: temporary files removed, exit 130). Both are
    also unblocked: a blocked signal mask is inherited from the parent process (some job runners, and
    test runs that used libraries which block them), and a blocked SIGTERM would let the run finish."""
    import signal

    signal.signal(signal.SIGTERM, raise_interrupt)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
