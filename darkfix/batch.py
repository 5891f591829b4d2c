"""`darkfix batch`: a folder streamed through the pipeline.

Decoding runs in a worker process one file ahead of the network (see decoder.py), and PNG encoding
and writing run band by band on a thread while the network makes the next band (pipeline.restore_frame).
"""

from __future__ import annotations

import fnmatch
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .decoder import DecodeWorker
from .errors import DarkfixError, OutputExistsError
from .imagefile import default_suffix
from .pipeline import (RAW_SUFFIXES, Restorer, RestoreOptions, check_output, claim_outputs, clash_message,
                       default_output, make_output_dir, restore_frame)
from .pngio import OutputClaim, claim_output
from .weights import WeightsInfo


def find_raws(folder: Path, recursive: bool = False, pattern: str | None = None) -> Iterator[Path]:
    """Raw files under `folder` in name order, lazily; symlinked directories are not followed (no loops).
    darkfix's own linear DNGs (`*.darkfix.dng`) are outputs, not inputs."""
    def wanted(name: str) -> bool:
        if name.lower().endswith(default_suffix("dng")):
            return False
        if pattern:
            return fnmatch.fnmatch(name, pattern) or fnmatch.fnmatch(name.lower(), pattern.lower())
        return Path(name).suffix.lower() in RAW_SUFFIXES

    for root, dirs, files in os.walk(folder, followlinks=False, onerror=None):
        dirs.sort()
        if not recursive:
            dirs.clear()
        for name in sorted(files):
            if wanted(name) and not name.startswith("."):
                yield Path(root) / name


def output_for(source: Path, folder: Path, outdir: Path | None, fmt: str = "png") -> Path:
    """Beside the input, or under `outdir` with the same relative sub-folder (named as `restore` names it)."""
    return default_output(source, None if outdir is None else outdir / source.relative_to(folder).parent, True,
                          fmt)


@dataclass
class BatchReport:
    done: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    interrupted: bool = False
    seconds: float = 0.0


# told of each file's outcome: (source, "done" | "skipped" | "failed", the reason of a failure, else "")
OnFile = Callable[[Path, str, str], None]


def plan_batch(files: list[Path], outputs: list[Path], opts: RestoreOptions, report: BatchReport,
               on_file: OnFile | None = None) -> list[tuple[Path, Path]]:
    """The (source, output) pairs to restore: a file whose output another file already claims fails, one
    whose output exists is skipped (unless overwriting); both are recorded in `report`."""
    todo: list[tuple[Path, Path]] = []
    clashes = claim_outputs(list(zip(files, outputs)))
    for src, dst in zip(files, outputs):
        if src in clashes:
            reason = clash_message(src, dst, clashes[src])
            report.failed.append((src, reason))
            if on_file:
                on_file(src, "failed", reason)
        elif dst.exists() and not opts.overwrite:
            report.skipped.append(src)
            if on_file:
                on_file(src, "skipped", "")
        else:
            todo.append((src, dst))
    return todo


def run_batch(files: list[Path], outputs: list[Path], restorer: Restorer, info: WeightsInfo, opts: RestoreOptions,
              on_file: OnFile | None = None, worker: DecodeWorker | None = None) -> BatchReport:
    """Restore `files` into `outputs`; per-file failures are recorded, never raised.

    KeyboardInterrupt (SIGINT, or SIGTERM turned into it by the CLI) stops the run cleanly: the file
    in progress is removed (outputs are atomic), and the report says what was done.
    """
    report = BatchReport()
    started = time.monotonic()
    todo = plan_batch(files, outputs, opts, report, on_file)
    worker = worker or DecodeWorker(opts, info.input)
    queue = iter(todo)

    def record(src: Path, status: str, reason: str = "") -> None:
        if status == "failed":
            report.failed.append((src, reason))
        elif status == "done":
            report.done.append(src)
        elif status == "skipped":
            report.skipped.append(src)
        if on_file:
            on_file(src, status, reason)

    def submit_next() -> tuple[Path, OutputClaim] | None:
        """Claim the next output no other process has or is writing, and send its file to the decoder."""
        for src, dst in queue:
            try:
                make_output_dir(dst.parent)
                check_output(src, dst, opts.overwrite, opts.format)
                # a claim per output, held until it is written: a second batch on the same folder skips
                # this file instead of restoring it too, and takes it if this process dies first
                claim = claim_output(dst, opts.overwrite)
            except OutputExistsError:  # another process wrote it meanwhile, or is writing it now
                record(src, "skipped")
                continue
            except DarkfixError as e:
                record(src, "failed", str(e))
                continue
            try:
                worker.submit(src)
            except BaseException:
                claim.release()
                raise
            return src, claim
        return None

    current = None
    try:
        current = submit_next()
        while current is not None:
            (src, claim), current = current, None
            with claim:
                try:
                    decoded = worker.result()
                except DarkfixError as e:
                    decoded = None
                    record(src, "failed", str(e))
                current = submit_next()  # the next file decodes while the network runs on this one
                if decoded is not None:
                    try:
                        restore_frame(src, *decoded, claim.path, restorer, info, opts)
                        record(src, "done")
                    except OutputExistsError:
                        record(src, "skipped")
                    except DarkfixError as e:
                        record(src, "failed", str(e))
                    decoded = None  # this mosaic goes before the next one arrives
    except KeyboardInterrupt:
        report.interrupted = True
    finally:
        if current is not None:  # claimed, never restored: free for the next run
            current[1].release()
        worker.close()
        report.seconds = time.monotonic() - started
    return report
