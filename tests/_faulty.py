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


def races_another_batch(path: str, opts, balanced: bool):
    """Decodes, but first writes the file's PNG the way another batch on the same folder would."""
    out_dir = os.environ.get("DARKFIX_TEST_RACE_DIR")
    name = os.path.basename(path)
    if out_dir and name.startswith("raced"):
        with open(os.path.join(out_dir, os.path.splitext(name)[0] + ".png"), "wb") as f:
            f.write(b"written by the other batch")
    return decode(path, opts, balanced)
