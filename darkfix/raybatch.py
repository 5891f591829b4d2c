"""`darkfix batch --ray`: the same batch on a Ray cluster (install with `pip install "darkfix[ray]"`).

The driver plans exactly as the local batch does (batch.plan_batch: names, skip-existing, clashes); Ray Data
streams the (source, output) pairs through a pool of actors (`map_batches` with a callable class), each of
which loads the weights once and restores one file at a time: decoding in darkfix's own crash-isolated
decoder process, the network, colour and an atomic write straight into the output folder (shared storage
on a real cluster). Each file's outcome comes back as a row, so a bad file fails alone, and the driver's
progress follows completed files. Ray is imported only here, only under `--ray`.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

from .batch import BatchReport, OnFile, plan_batch
from .errors import DarkfixError, OutputExistsError
from .options import RestoreOptions
from .pngio import claim_output, remove_stale_parts


@dataclass(frozen=True)
class RaySettings:
    """How the batch uses the cluster."""

    address: str | None = None  # None: RAY_ADDRESS, else a cluster `ray start` made here, else a new local one
    actors: int | None = None  # default: as many as the cluster's CPUs (or GPUs) allow
    threads: int = 1  # CPU threads per actor (torch's and Ray's num_cpus)
    gpus: float = 0.0  # GPUs per actor (with --device cuda)


def is_remote(address: str | None) -> bool:
    """Whether `address` names a cluster elsewhere (whose workers may not see this machine's paths)."""
    address = address or os.environ.get("RAY_ADDRESS")
    if not address or address in ("auto", "local"):
        return False
    host = urlparse(address if "://" in address else f"ray://{address}").hostname or ""
    return host not in ("localhost", "127.0.0.1", "::1", "")


# Ray's token sources, in the order its own clients read them
TOKEN_SOURCES = "RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token"


def _token_available() -> bool:
    """Whether this machine has a Ray authentication token where Ray's clients look for one."""
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return True
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token"
    try:
        return bool(Path(path).expanduser().read_text().strip())
    except OSError:
        return False


def _use_token() -> None:
    """Send the cluster's token. Ray's driver sends one only in token mode (RAY_AUTH_MODE=token), which
    `ray.init` turns on by itself only for a cluster it finds without an address: with `--ray-address`, a
    `ray start` cluster (token authentication on, Ray 2.60) refused darkfix with InvalidAuthToken. A token
    the user has, in RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token, turns it on here."""
    if os.environ.get("RAY_AUTH_MODE") or not _token_available():
        return  # the user's explicit mode stands; without a token there is nothing to send
    os.environ["RAY_AUTH_MODE"] = "token"
    try:  # Ray caches its configuration when imported: read the mode again, as Ray's own helper does
        from ray._raylet import Config

        Config.initialize("")
    except (ImportError, AttributeError):  # pragma: no cover - a Ray without token authentication
        pass


def connect(address: str | None) -> None:
    """`ray.init` for the batch: a cluster at `address`, RAY_ADDRESS, one `ray start` made here, or a new
    local instance; failures become one line that says what to do. Ray's usage statistics are off for
    every instance darkfix starts (nothing leaves the machine)."""
    import ray

    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")  # not a line a second while a connection fails
    if address or os.environ.get("RAY_ADDRESS"):
        _use_token()
    where = address or os.environ.get("RAY_ADDRESS") or "a local cluster"
    try:
        ray.init(address=address, logging_level="ERROR", log_to_driver=False, include_dashboard=False,
                 ignore_reinit_error=True)
    except (ConnectionError, RuntimeError, ValueError, ray.exceptions.RayError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if where != "a local cluster":
            if os.environ.get("RAY_AUTH_MODE", "").lower() == "token":
                reason += (f" (if the cluster uses token authentication: is the token in {TOKEN_SOURCES} the "
                           "one `ray get-auth-token` prints on its head node?)")
            else:
                reason += (f" (if the cluster uses token authentication, Ray's default: put its token in "
                           f"{TOKEN_SOURCES}; `ray get-auth-token` on its head node prints it)")
        raise DarkfixError(f"cannot start or reach Ray at {where}: {reason}") from None


class _RestoreActor:
    """One per Ray worker: the weights loaded once, a decoder process of its own."""

    def __init__(self, weights: str | None, engine: str, device: str, precision: str, tile: int | None,
                 threads: int, opts: RestoreOptions) -> None:
        from . import engine as engines
        from .decoder import DecodeWorker
        from .tiling import limit_malloc_arenas

        self.restorer, self.info = engines.load(weights, engine=engine, device=device, precision=precision,
                                                threads=threads, tile=tile)
        if self.restorer.device.type == "cpu":
            limit_malloc_arenas()
        self.opts = opts
        self.worker = DecodeWorker(opts, self.info.input)

    def __call__(self, batch: dict) -> dict:
        from .pipeline import make_output_dir, restore_frame

        status, reason = [], []
        for src, dst in zip(batch["src"], batch["dst"]):
            src, dst = Path(src), Path(dst)
            try:
                make_output_dir(dst.parent)
                with claim_output(dst, self.opts.overwrite):  # as the local batch: one writer per output
                    self.worker.submit(src)
                    frame, prep = self.worker.result()
                    restore_frame(src, frame, prep, dst, self.restorer, self.info, self.opts)
                status.append("done")
                reason.append("")
            except OutputExistsError:  # another batch wrote it meanwhile, or is writing it
                status.append("skipped")
                reason.append("")
            except DarkfixError as e:
                status.append("failed")
                reason.append(str(e))
            except Exception as e:  # anything else is this file's failure, not the batch's
                status.append("failed")
                reason.append(f"{src}: {type(e).__name__}: {e}")
        return {"src": list(batch["src"]), "status": status, "reason": reason}


def run_ray_batch(files: list[Path], outputs: list[Path], opts: RestoreOptions, *, weights: str | None,
                  device: str, precision: str, tile: int | None, settings: RaySettings, engine: str = "auto",
                  on_file: OnFile | None = None,
                  on_start: Callable[[int], None] | None = None) -> BatchReport:
    """Restore `files` into `outputs` on Ray; per-file failures are recorded, never raised. `on_start`
    gets the number of actors once the cluster is up."""
    import ray

    report = BatchReport()
    started = time.monotonic()
    todo = plan_batch(files, outputs, opts, report, on_file)
    if not todo:
        report.seconds = time.monotonic() - started
        return report
    connect(settings.address)
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # darkfix shows its own progress
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        resources = ray.cluster_resources()
        per = "GPU" if settings.gpus > 0 else "CPU"
        need = settings.gpus if settings.gpus > 0 else settings.threads
        actors = settings.actors or max(1, int(resources.get(per, 1) // need))
        actors = min(actors, len(todo))
        if on_start:
            on_start(actors)
        ds = ray.data.from_items([{"src": str(s), "dst": str(d)} for s, d in todo])
        results = ds.map_batches(
            _RestoreActor, batch_size=1, concurrency=actors, num_cpus=settings.threads, num_gpus=settings.gpus,
            fn_constructor_kwargs={"weights": weights, "engine": engine, "device": device, "precision": precision,
                                   "tile": tile, "threads": settings.threads, "opts": opts})
        seen: set[Path] = set()
        try:
            for row in results.iter_rows():
                src = Path(row["src"])
                seen.add(src)
                if row["status"] == "done":
                    report.done.append(src)
                elif row["status"] == "skipped":
                    report.skipped.append(src)
                else:
                    report.failed.append((src, row["reason"]))
                if on_file:
                    on_file(src, row["status"], row["reason"])
        except (ray.exceptions.RayError, RuntimeError) as e:  # actors lost beyond Ray's own retries
            for src, _ in todo:
                if src not in seen:
                    reason = f"{src}: Ray worker lost ({type(e).__name__})"
                    report.failed.append((src, reason))
                    if on_file:
                        on_file(src, "failed", reason)
    except KeyboardInterrupt:
        report.interrupted = True
    finally:
        ray.shutdown()  # ends the actors (a file being written stays a temporary file, removed below)
        for d in {dst.parent for _, dst in todo if dst.parent.is_dir()}:
            remove_stale_parts(d)
        report.seconds = time.monotonic() - started
    return report
