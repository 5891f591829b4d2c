"""`darkfix info`: what a weights file is, and which engine would run it here."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import DarkfixError
from .common import fail

@click.command()
@click.option("--weights", type=click.Path(path_type=Path, dir_okay=False), help="Default: packaged weights.")
@click.option("--profile", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Print this sensor profile (from `darkfix calibrate`) instead.")
def info(weights, profile) -> None:
    """Print what a weights file is, and which engine `--engine auto` picks on this machine; or, with
    --profile, what a sensor profile holds."""
    if profile is not None:
        from ..profile import load_profile

        try:
            sensor = load_profile(profile)
        except DarkfixError as e:
            fail(str(e), e.exit_code)
        click.echo(f"file:          {profile}")
        for line in sensor.describe():
            click.echo(line)
        return
    from .. import engine, ovengine
    from ..weights import load_weights

    try:
        model, meta = load_weights(weights)
    except DarkfixError as e:
        fail(str(e), e.exit_code)
    click.echo(f"file:          {meta.path}")
    click.echo(f"format:        {meta.format}")
    how = "rendered with each file's colour metadata" if meta.output == "camera" else "written as is"
    click.echo(f"output:        {meta.output} ({how})")
    click.echo(f"parameters:    {sum(p.numel() for p in model.parameters()):,}")
    guide = f"radius {model.guide_radius} (packed pixels)" if model.guide_radius else "none"
    click.echo(f"colour guide:  {guide}")
    for key in sorted(meta.metadata):
        if key not in ("output", "guide_radius"):
            click.echo(f"{key + ':':<14} {meta.metadata[key]}")
    chosen, why = engine.choose("auto", "auto", "auto", model.architecture)
    if ovengine.available():
        ov = ovengine.import_openvino()
        native = ovengine.native_bf16()[1]
        click.echo(f"openvino:      {ov.get_version()} ({native}); models cached in {ovengine.cache_root()}")
    else:
        click.echo("openvino:      not installed (pip install openvino for the CPU engine)")
    click.echo(f"engine:        {chosen} ({why})")
