"""`darkfix batch`: a folder, locally or on a Ray cluster."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from ..errors import DarkfixError
from .common import fail, load_restorer, network_options, restore_options, restore_settings, stop_on_signals

def _files_per_second():
    """A progress column showing files per second (rich is imported only where progress is shown)."""
    from rich.progress import ProgressColumn
    from rich.text import Text

    class FilesPerSecond(ProgressColumn):
        def render(self, task) -> Text:
            return Text(f"{task.speed or 0:.2f} files/s", style="cyan")

    return FilesPerSecond()


def _ray_runner(folder, outdir, files, outputs, opts, address, actors, gpus, weights, engine, device, precision,
                threads, tile):
    """Checks for `batch --ray` before any work, then the function that runs it."""
    try:
        import ray  # noqa: F401  (only to say in one line that the extra is missing)
    except ImportError:
        fail("--ray needs Ray: pip install 'darkfix[ray]'")
    from ..pipeline import check_camera_output
    from ..raybatch import RaySettings, is_remote, run_ray_batch
    from ..weights import load_weights

    if is_remote(address) and not all(p is None or p.is_absolute() for p in (folder, outdir)):
        raise DarkfixError("a remote Ray cluster's workers cannot see relative paths: give FOLDER and -o as "
                           "absolute paths on storage every node mounts")
    if gpus is None:
        gpus = 1.0 if device == "cuda" else 0.0
    info = load_weights(weights)[1]  # a bad weights file is refused here, not on every worker
    if opts.format == "dng":
        check_camera_output(outputs[0], info)
    settings = RaySettings(address=address, actors=actors, threads=threads or 1, gpus=gpus)
    absolute = [p.resolve() for p in files], [p.resolve() for p in outputs]
    weights_path = str(info.path.resolve())
    names = dict(zip(absolute[0], files))  # report the files as the user named them

    def execute(on_file):
        report = run_ray_batch(*absolute, opts, weights=weights_path, engine=engine, device=device,
                               precision=precision, tile=tile, settings=settings,
                               on_file=lambda src, status, reason: on_file(names[src], status, reason))
        report.done = [names[p] for p in report.done]
        report.skipped = [names[p] for p in report.skipped]
        report.failed = [(names[p], why) for p, why in report.failed]
        return report

    return execute


def failure_line(src: Path, reason: str) -> str:
    """`failed: <reason>`, naming the file where the reason does not."""
    return f"failed: {reason if str(src) in reason else f'{src}: {reason}'}"


@click.command()
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("-o", "--output", "outdir", type=click.Path(path_type=Path, file_okay=False),
              help="Directory for the PNGs (sub-folders mirrored). Default: beside each raw file.")
@click.option("-r", "--recursive", is_flag=True, help="Include sub-folders.")
@click.option("--pattern", default=None, help="Glob on file names, e.g. '*.ARW'. Default: every raw extension.")
@click.option("--ray", "use_ray", is_flag=True,
              help="Run on a Ray cluster (pip install 'darkfix[ray]'): the one `ray start` made, RAY_ADDRESS, "
                   "--ray-address, or a new local one. Outputs must be on storage every node sees. Each actor "
                   "runs the network on --threads CPU threads (default 1).")
@click.option("--ray-address", default=None, metavar="ADDR", help="Ray cluster to connect to (implies --ray).")
@click.option("--ray-actors", type=click.IntRange(1), default=None,
              help="Restoring actors (each loads the weights once). Default: as many as the cluster's CPUs "
                   "(or GPUs) allow.")
@click.option("--ray-gpus", type=click.FloatRange(0.0), default=None,
              help="GPUs per actor. Default: 1 with --device cuda, else 0.")
@restore_options
@network_options
def batch(folder, outdir, recursive, pattern, use_ray, ray_address, ray_actors, ray_gpus, brightness, exposure, ratio,
          wb, fmt, bit_depth, quality, compression, overwrite, profile, trust_black, ensemble, masked_margin,
          picture_rows, weights, engine, device, precision, threads, tile) -> None:
    """Restore every raw file in FOLDER; files already restored are skipped, so a rerun resumes."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    from rich.table import Table

    from ..batch import find_raws, output_for, run_batch
    from ..pngio import remove_stale_parts

    if not folder.is_dir():
        fail(f"{folder}: not a directory")
    opts = restore_settings(brightness, exposure, ratio, wb, fmt, bit_depth, quality, compression, overwrite,
                            profile, trust_black, ensemble, masked_margin, picture_rows)
    files = list(find_raws(folder, recursive, pattern))
    if not files:
        click.echo(f"{folder}: no raw files found" + ("" if recursive else " (use --recursive for sub-folders)"))
        return
    outputs = [output_for(f, folder, outdir, opts.format) for f in files]
    try:
        if use_ray or ray_address:
            execute = _ray_runner(folder, outdir, files, outputs, opts, ray_address, ray_actors, ray_gpus, weights,
                                  engine, device, precision, threads, tile)
        else:
            restorer, info = load_restorer(weights, engine, device, precision, threads, tile)
            if opts.format == "dng":
                from ..pipeline import check_camera_output

                check_camera_output(outputs[0], info)

            def execute(on_file):
                return run_batch(files, outputs, restorer, info, opts, on_file=on_file)

        if outdir is not None:  # made only once everything is checked: nothing left on a refusal
            from ..pipeline import make_output_dir

            make_output_dir(outdir)
    except DarkfixError as e:
        fail(str(e), e.exit_code)
    to_write = {o.parent for o in outputs if opts.overwrite or not o.exists()}  # a finished batch reruns anywhere
    for d in sorted({o.parent for o in outputs if o.parent.is_dir()}):
        if d in to_write and not os.access(d, os.W_OK):  # once, not once a file
            fail(f"{d}: output directory is not writable")
        remove_stale_parts(d)
    console = Console(stderr=True)
    stop_on_signals()
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), _files_per_second(),
               TextColumn("ETA"), TimeRemainingColumn()]
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("restoring", total=len(files))

        def on_file(src: Path, status: str, reason: str) -> None:
            progress.advance(task)
            if status == "failed":  # once, with its reason, above the bar where it is seen as it happens
                progress.console.print(failure_line(src, reason), style="red", markup=False, soft_wrap=True)

        try:
            report = execute(on_file)
        except DarkfixError as e:  # e.g. a Ray cluster that cannot be reached
            progress.stop()
            fail(str(e), e.exit_code)
    table = Table(title="darkfix batch")
    for col in ("restored", "skipped (output exists)", "failed", "seconds", "files/s"):
        table.add_column(col, justify="right")
    rate = len(report.done) / report.seconds if report.seconds > 0 else 0.0
    table.add_row(str(len(report.done)), str(len(report.skipped)), str(len(report.failed)),
                  f"{report.seconds:.1f}", f"{rate:.2f}")
    console.print(table)
    if report.interrupted:
        left = len(files) - len(report.done) - len(report.skipped) - len(report.failed)
        console.print(f"interrupted: {len(report.done)} restored, {left} left; run the same command again to resume",
                      markup=False, soft_wrap=True)
        sys.exit(130)
    if report.failed:
        sys.exit(1)
