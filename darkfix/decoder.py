"""Decoding in a child process: LibRaw is C code, and a file that crashes or hangs it must only cost
that file. The worker decodes and prepares one file at a time; a dead or hung worker is replaced.

This module imports no torch, so a worker starts in a fraction of a second.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from pathlib import Path
from typing import Callable

from .errors import DarkfixError
from .options import RestoreOptions
from .packing import Prepared, prepare_frame
from .profile import read_frame
from .rawio import RawFrame

DECODE_TIMEOUT = 120.0  # seconds for one file's decode before its worker is killed
STARTUP_TIMEOUT = 120.0  # seconds for a new worker to start (its imports) before it counts as hung


def decode(path: str, opts: RestoreOptions, convention: str) -> tuple[RawFrame, Prepared]:
    """Read and prepare one file (what the worker runs)."""
    frame = read_frame(path, opts.profile, opts.masked_margin, opts.picture_rows)
    # prep refers to frame.mosaic: one pickle sends the mosaic once for both
    return frame, prepare_frame(frame, opts, convention)


def _worker(conn, fn: Callable, opts: RestoreOptions, convention: str) -> None:
    # Ctrl-C reaches the whole process group: the parent decides what happens, the worker carries on
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # decoding ahead should fill the network's idle moments, not take cores from it
    try:
        os.nice(10)
    except OSError:
        pass
    # the decode's time starts when the worker is ready: a slow start (imports on a busy machine) is not
    # the file's fault
    conn.send(("ready", time.monotonic()))
    while True:
        path = conn.recv()
        if path is None:
            return
        try:
            conn.send(("ok", fn(path, opts, convention)))
        except DarkfixError as e:
            conn.send(("error", str(e)))
        except Exception as e:  # anything else from the decoder is this file's failure, not the batch's
            conn.send(("error", f"{path}: decode failed ({type(e).__name__}: {e})"))


def _ending(code: int | None) -> str:
    """How a process ended, from its exit code (negative: killed by that signal)."""
    if code is None:
        return "exit code ?"
    if code >= 0:
        return f"exit code {code}"
    try:
        return f"signal {signal.Signals(-code).name}"
    except ValueError:
        return f"signal {-code}"


class DecodeWorker:
    """A child process that decodes and prepares one file at a time, replaceable when it dies or hangs."""

    def __init__(self, opts: RestoreOptions | None = None, convention: str = "raw",
                 timeout: float = DECODE_TIMEOUT, fn: Callable = decode) -> None:
        # fn must be importable by name in a fresh interpreter (spawn); tests pass faulty decoders
        self.args, self.timeout = (fn, opts or RestoreOptions(), convention), timeout
        self.ctx = mp.get_context("spawn")  # no fork of a process holding torch threads
        self.proc = None
        self.pending: str | None = None
        self.sent_at = 0.0
        self.ready_at: float | None = None  # when the worker said it was ready (its monotonic clock)

    def _start(self) -> None:
        self.conn, child = self.ctx.Pipe()
        self.proc = self.ctx.Process(target=_worker, args=(child, *self.args), daemon=True)
        self.proc.start()
        self.ready_at = None
        child.close()

    def submit(self, path: Path) -> None:
        if self.proc is None or not self.proc.is_alive():
            self._start()
        self.conn.send(str(path))
        self.pending, self.sent_at = str(path), time.monotonic()

    def result(self) -> tuple[RawFrame, Prepared]:
        """The submitted file's decode; raises DarkfixError if it failed, crashed or timed out."""
        path, self.pending = self.pending, None
        try:
            if self.ready_at is None:  # a new worker: first its word that it has started
                started = self.conn.poll(max(0.0, STARTUP_TIMEOUT - (time.monotonic() - self.sent_at)))
                status, value = self.conn.recv() if started else ("timeout", None)
                if status == "ready":
                    self.ready_at = value
            if self.ready_at is not None:
                remaining = self.timeout - (time.monotonic() - max(self.sent_at, self.ready_at))
                ready = self.conn.poll(max(0.0, remaining))
                status, value = self.conn.recv() if ready else ("timeout", None)
        except (EOFError, OSError):
            status, value = "crash", None
        if status == "ok":
            return value
        if status == "error":
            raise DarkfixError(value)
        if status == "timeout":
            self.kill()
            if self.ready_at is None:
                raise DarkfixError(f"{path}: the decoder did not start within {STARTUP_TIMEOUT:g} s; skipped")
            raise DarkfixError(f"{path}: decoder hung for {self.timeout:g} s; skipped")
        if self.proc is not None:
            self.proc.join(1)  # it is gone (its pipe closed): collect how it ended
        raise DarkfixError(f"{path}: decoder crashed ({_ending(self.kill())})")

    def kill(self) -> int | None:
        """Stop the worker now; returns its exit code if it had already ended by itself."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        code = proc.exitcode
        if proc.pid is not None:  # None: it never started
            proc.kill()
            proc.join(5)
        return code

    def close(self) -> None:
        if self.proc is not None and self.proc.is_alive():
            try:
                self.conn.send(None)
                self.proc.join(2)
            except (OSError, BrokenPipeError):
                pass
        self.kill()
