"""Errors a user can cause: the CLI prints them as one line and exits with `exit_code`."""


class DarkfixError(Exception):
    """Base class for user-facing errors."""

    exit_code = 2


class RawReadError(DarkfixError):
    """The file is missing, not a raw, corrupt, or of a sensor darkfix cannot restore."""


class WeightsError(DarkfixError):
    """A weights file is missing, corrupt, or of another architecture."""


class ProfileError(DarkfixError):
    """A sensor profile or the dark frames for one cannot be used (damaged, mismatched, of another camera)."""


class OutputError(DarkfixError):
    """The output cannot be written (exists, unwritable, disk full, would overwrite an input)."""


class OutputExistsError(OutputError):
    """The output is already there (and --overwrite was not given): batch counts such a file as skipped."""


class OutputBusyError(OutputExistsError):
    """Another darkfix process is writing that output now (it holds the output's claim)."""
