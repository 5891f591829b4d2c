"""The `darkfix` command line: parses options and wires the pipeline's stages together."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from . import __version__
from .errors import DarkfixError

DEVICE = click.Choice(["auto", "cpu", "cuda"])
PRECISION = click.Choice(["auto", "fp32", "fp16", "bf16"])


def _fail(message: str, code: int = 2) -> None:
    click.echo(f"darkfix: error: {message}", err=True)
    sys.exit(code)


def network_options(f):
    """Options shared by every command that runs the network."""
    for option in reversed([
        click.option("--weights", type=click.Path(path_type=Path, dir_okay=False),
                     help="Weights file (darkfix .safetensors or the authors' .pth). Default: packaged."),
        click.option("--device", type=DEVICE, default="auto", show_default=True,
                     help="auto = CUDA when available."),
        click.option("--precision", type=PRECISION, default="auto", show_default=True,
                     help="auto = fp16 on CUDA, fp32 on CPU; bf16 is an option on CPUs that support it."),
        click.option("--threads", type=click.IntRange(1, 256), default=None,
                     help="CPU threads for the network (default: torch's choice)."),
        click.option("--tile", type=click.IntRange(64, 65536), default=None,
                     help="Tile side in packed pixels (mosaic/2); frames larger than this run in "
                          "overlapping tiles. Default 1024 on CPU, 2048 on CUDA."),
    ]):
        f = option(f)
    return f


def restore_options(f):
    """Options that decide how a frame is amplified, coloured and written."""
    for option in reversed([
        click.option("--brightness", "-m", type=click.FloatRange(0.01, 100.0), default=1.0, show_default=True,
                     help="Multiplier on top of the amplification (the paper's m; 1 to 9 are typical)."),
        click.option("--ratio", type=click.FloatRange(1.0, 10000.0), default=None,
                     help="Amplify by this exposure ratio instead of the automatic estimate (SID protocol)."),
        click.option("--wb", type=click.Choice(["camera", "daylight"]), default="camera", show_default=True,
                     help="White balance: as shot, or the camera's daylight multipliers."),
        click.option("--bit-depth", type=click.Choice(["8", "16"]), default="8", show_default=True),
        click.option("--compression", type=click.IntRange(0, 9), default=1, show_default=True,
                     help="PNG zlib level: 0 is fastest and largest, 9 smallest and slowest."),
        click.option("--overwrite", is_flag=True, help="Replace existing output files."),
    ]):
        f = option(f)
    return f


def _restorer(weights, device, precision, threads, tile):
    import torch

    from .inference import Restorer
    from .weights import load_weights

    if threads:
        torch.set_num_threads(threads)
    model, info = load_weights(weights)
    try:
        return Restorer(model, device=device, precision=precision, tile=tile), info
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


def _opts(brightness, ratio, wb, bit_depth, compression, overwrite):
    from .pipeline import RestoreOptions

    return RestoreOptions(brightness=brightness, ratio=ratio, wb=wb, bit_depth=int(bit_depth),
                          compression=compression, overwrite=overwrite)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="darkfix")
def main() -> None:
    """Restore extremely dark camera raw photos into clean, bright sRGB PNGs."""


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path),
              help="Output PNG for one input, or a directory for several. Default: beside each input.")
@restore_options
@network_options
@click.option("-v", "--verbose", is_flag=True, help="Print the amplification used and timings.")
def restore(files, output, brightness, ratio, wb, bit_depth, compression, overwrite, weights, device,
            precision, threads, tile, verbose) -> None:
    """Restore each raw FILE into a PNG."""
    from .pipeline import check_output, default_output, restore_file

    opts = _opts(brightness, ratio, wb, bit_depth, compression, overwrite)
    several = len(files) > 1
    if several and output is not None and output.exists() and not output.is_dir():
        _fail(f"{output}: -o must be a directory when restoring several files")
    try:
        jobs = [(Path(f), default_output(Path(f), output, several)) for f in files]
        for src, dst in jobs:  # refuse before loading the network
            if not src.exists():
                raise DarkfixError(f"{src}: no such file")
            check_output(src, dst, overwrite)
        restorer, info = _restorer(weights, device, precision, threads, tile)
        failures = 0
        for src, dst in jobs:
            try:
                res = restore_file(src, dst, restorer, info, opts)
            except DarkfixError as e:
                if not several:
                    raise
                click.echo(f"darkfix: error: {e}", err=True)
                failures += 1
                continue
            if verbose:
                amp = res.amplification * brightness
                click.echo(f"{src}: amplification {amp:.2f} "
                           f"({'ratio' if ratio else 'estimate'} {res.amplification:.2f} x brightness {brightness:g})")
            click.echo(str(res.output))
    except DarkfixError as e:
        _fail(str(e), e.exit_code)
    if failures:
        sys.exit(1)


@main.command()
@click.option("--weights", type=click.Path(path_type=Path, dir_okay=False), help="Default: packaged weights.")
def info(weights) -> None:
    """Print what a weights file is."""
    from .weights import load_weights

    try:
        model, meta = load_weights(weights)
    except DarkfixError as e:
        _fail(str(e), e.exit_code)
    click.echo(f"file:          {meta.path}")
    click.echo(f"format:        {meta.format}")
    how = "rendered with each file's colour metadata" if meta.output == "camera" else "written as is"
    click.echo(f"output:        {meta.output} ({how})")
    click.echo(f"parameters:    {sum(p.numel() for p in model.parameters()):,}")
    for key in sorted(meta.metadata):
        if key not in ("output",):
            click.echo(f"{key + ':':<14} {meta.metadata[key]}")


# --- bench command ---


# --- eval command ---
