"""A decoder whose worker starts slowly (this module takes 3 s to import, as imports do on a busy machine)
and then decodes at once; imported by name in batch's worker process."""

from __future__ import annotations

import time

from darkfix.errors import DarkfixError

time.sleep(3.0)


def quick(path: str, opts, convention: str):
    raise DarkfixError(f"{path}: decoded in time")
