"""The `darkfix` command line: thin command modules that parse options and wire the pipeline's stages.

restore.py, batch.py, calibrate.py and info.py are the product's commands, lab.py the lab's; common.py holds what they
share. Each command imports what it runs only when it runs.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from .. import __version__
from .batch import batch
from .calibrate import calibrate
from .info import info
from .lab import bench, eval_command, synth, train, tune
from .restore import restore


_NO_ARGS = getattr(click.exceptions, "NoArgsIsHelpError", ())  # click >= 8.2


class _OneLineErrors(click.Group):
    """click's group, with its usage errors (a bad option value, an unknown option, a missing argument) in
    one line, as darkfix's own errors are, instead of click's usage block: still exit code 2."""

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except _NO_ARGS as e:  # `darkfix` alone: the help, as click gives it
            click.echo(e.format_message(), err=True)
            sys.exit(e.exit_code)
        except click.UsageError as e:
            where = e.ctx.command_path if e.ctx is not None else "darkfix"
            click.echo(f"darkfix: error: {e.format_message()} (see {where} -h)", err=True)
            sys.exit(e.exit_code)
        except click.ClickException as e:
            e.show()
            sys.exit(e.exit_code)
        except (click.Abort, KeyboardInterrupt, EOFError):
            click.echo("darkfix: interrupted", err=True)
            sys.exit(130)
        sys.exit(code if type(code) is int else 0)  # ctx.exit(n)'s n; a command's own return value is not a code


@click.group(cls=_OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="darkfix")
def main() -> None:
    """Restore extremely dark camera raw photos into clean, bright sRGB pictures."""


for command in (restore, batch, calibrate, info, synth, train, tune, bench, eval_command):
    main.add_command(command)

__all__ = ["main"]
