"""Decoders that misbehave like a broken LibRaw would; imported by name in batch's worker process."""

from __future__ import annotations

import os
import signal
import time

from darkfix.decoder import decode


def crash_or_hang(path: str, opts, balanced: bool):
    name = os.path.basename(path)
    if name.startswith("crash"):
        os.kill(os.getpid(), signal.SIGSEGV)
    if name.startswith("exit"):
        os._exit(3)
    if name.startswith("hang"):
        time.sleep(600)
    return decode(path, opts, balanced)
