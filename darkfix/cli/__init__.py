"""The `darkfix` command line: thin command modules that parse options and wire the pipeline's stages.

restore.py, batch.py, calibrate.py and info.py are the product's commands, lab.py the lab's; common.py holds what they
share. Each command imports what it runs only when it runs.
"""

from __future__ import annotations

import click

from .. import __version__
from .batch import batch
from .calibrate import calibrate
from .info import info
from .lab import bench, eval_command, synth, train, tune
from .restore import restore


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="darkfix")
def main() -> None:
    """Restore extremely dark camera raw photos into clean, bright sRGB pictures."""


for command in (restore, batch, calibrate, info, synth, train, tune, bench, eval_command):
    main.add_command(command)

__all__ = ["main"]
