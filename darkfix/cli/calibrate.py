"""`darkfix calibrate`: lens-cap dark frames (and optional flats) into a sensor profile."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import DarkfixError
from .common import fail


def _raws(paths: tuple[Path, ...]) -> list[Path]:
    """The files named, a directory standing for the raw files in it."""
    from ..batch import find_raws

    out: list[Path] = []
    for p in paths:
        out.extend(sorted(find_raws(p)) if p.is_dir() else [p])
    return out


@click.command()
@click.argument("darks", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="The profile file to write (e.g. night-iso3200-30s.npz).")
@click.option("--flat", "flats", multiple=True, type=click.Path(path_type=Path),
              help="An evenly lit frame (or a folder of them) for the system gain K, by photon transfer: give "
                   "frames at two or more brightness levels, two per level at best. Repeatable.")
@click.option("--overwrite", is_flag=True, help="Replace an existing profile.")
def calibrate(darks, output, flats, overwrite) -> None:
    """Make a sensor profile from DARK frames: raws shot with the lens cap on at the ISO, exposure time and
    temperature of the shots they will correct (10-20 frames; one works). A DARK may be a folder.
    Restore with `--profile`; `darkfix info --profile` shows it again."""
    from ..pipeline import check_target
    from ..profile import calibrate as build

    try:
        dark_files, flat_files = _raws(darks), _raws(flats)
        if not dark_files:
            raise DarkfixError("no raw files among the dark frames given")
        check_target(output, overwrite, dark_files + flat_files, "profile")  # before the work, not after
        profile = build(dark_files, flat_files, warn=lambda msg: click.echo(f"darkfix: warning: {msg}", err=True))
        profile.save(output, overwrite)
    except DarkfixError as e:
        fail(str(e), e.exit_code)
    for line in profile.describe():
        click.echo(line)
    click.echo(f"wrote {output}")
