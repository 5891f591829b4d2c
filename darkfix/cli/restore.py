"""`darkfix restore`: one or more raw files into pictures."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import click

from ..errors import DarkfixError
from .common import fail, load_restorer, network_options, restore_options, restore_settings, stop_on_signals

@click.command()
# readable=False: click would refuse an unreadable file in three lines of its own; rawio says why in one
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path, readable=False))
@click.option("-o", "--output", type=click.Path(),
              help="Output PNG for one input, or a directory for several (or ending in /). "
                   "Default: beside each input.")
@restore_options
@network_options
@click.option("-v", "--verbose", is_flag=True, help="Print the amplification used and timings.")
def restore(files, output, brightness, exposure, ratio, wb, fmt, bit_depth, quality, compression, overwrite,
            profile, trust_black, ensemble, masked_margin, picture_rows, weights, engine, device, precision, threads,
            tile, verbose) -> None:
    """Restore each raw FILE into a picture (PNG unless --format or the -o suffix says otherwise)."""
    from ..imagefile import format_of
    from ..pipeline import check_output, claim_outputs, clash_message, default_output, make_output_dir, restore_file

    unique: dict[tuple[str, str], Path] = {}  # the same file named twice (by one name) is restored once
    for f in files:
        unique.setdefault((os.path.realpath(f), Path(f).name), Path(f))
    sources = list(unique.values())
    several = len(sources) > 1
    as_dir = output is not None and (several or output.endswith(("/", os.sep)) or Path(output).is_dir())
    out = Path(output) if output is not None else None
    try:
        fmt = format_of(None if as_dir else out, fmt)
    except DarkfixError as e:
        fail(str(e), e.exit_code)
    opts = restore_settings(brightness, exposure, ratio, wb, fmt, bit_depth, quality, compression, overwrite,
                            profile, trust_black, ensemble, masked_margin, picture_rows)
    if as_dir and out.exists() and not out.is_dir():
        fail(f"{out}: -o names a directory here (several files, or a trailing /), but it is a file")
    try:
        jobs = [(f, default_output(f, out, as_dir, opts.format)) for f in sources]
        clashes = claim_outputs(jobs)
        for src, dst in jobs:  # refuse before making anything or loading the network
            if not src.exists():
                raise DarkfixError(f"{src}: no such file")
            if src in clashes:
                raise DarkfixError(clash_message(src, dst, clashes[src]))
        def check_outputs() -> None:
            for src, dst in jobs:
                check_output(src, dst, overwrite, opts.format)

        new_dir = as_dir and not out.is_dir()  # made only once the network has loaded: nothing left on a refusal
        if not new_dir:
            check_outputs()
        restorer, info = load_restorer(weights, engine, device, precision, threads, tile)
        if verbose:
            click.echo(f"engine {restorer.engine} ({restorer.engine_reason}); precision {restorer.precision} "
                       f"({restorer.precision_reason})", err=True)
        if opts.format == "dng":
            from ..pipeline import check_camera_output

            check_camera_output(jobs[0][1], info)
        if new_dir:
            make_output_dir(out)
            check_outputs()
        failures = 0
        done = 0
        stop_on_signals()
        for src, dst in jobs:
            started = time.monotonic()
            try:
                res = restore_file(src, dst, restorer, info, opts)
            except KeyboardInterrupt:
                # the PNG being written is a temporary file until it is whole: it has been removed
                click.echo(f"darkfix: interrupted: {done} of {len(jobs)} restored, {src} not written", err=True)
                sys.exit(130)
            except DarkfixError as e:
                if not several:
                    raise
                click.echo(f"darkfix: error: {e}", err=True)
                failures += 1
                continue
            if verbose:
                amp = res.amplification * brightness
                what = {"ratio": "ratio", "auto": "automatic exposure", "paper": "paper's estimate"}[res.how]
                click.echo(f"{src}: amplification {amp:.2f} "
                           f"({what} {res.amplification:.2f} x brightness {brightness:g}); "
                           f"{res.size[0]}x{res.size[1]} in {time.monotonic() - started:.2f} s")
                if res.noise:
                    click.echo(f"{src}: {res.noise}")
                if res.rows:
                    click.echo(f"{src}: {res.rows}")
                if res.network:
                    click.echo(f"{src}: {res.network}")
                if res.wide_guide:
                    how = "--trust-black" if opts.trust_black else "the sensor profile measured it"
                    click.echo(f"{src}: dark colour from wide local means (black level exact: {how})")
                if opts.ensemble:
                    click.echo(f"{src}: self-ensemble: the network also ran on the transposed mosaic, outputs averaged")
            click.echo(str(res.output))
            done += 1
    except DarkfixError as e:
        fail(str(e), e.exit_code)
    if failures:
        sys.exit(1)
