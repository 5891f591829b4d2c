"""The `darkfix` command line: parses options and wires the pipeline's stages together."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import click

from . import __version__
from .errors import DarkfixError

DEVICE = click.Choice(["auto", "cpu", "cuda"])
PRECISION = click.Choice(["auto", "fp32", "fp16", "bf16"])


class Brightness(click.ParamType):
    """A brightness change: a factor (2, 0.5) or stops with an `ev` suffix (+1ev, -0.5ev)."""

    name = "FACTOR|STOPSev"

    def convert(self, value, param, ctx) -> float:
        if isinstance(value, (int, float)):
            factor = float(value)
        else:
            text = str(value).strip().lower()
            try:
                factor = 2.0 ** float(text[:-2]) if text.endswith("ev") else float(text)
            except ValueError:
                self.fail(f"{value!r} is neither a factor (e.g. 2) nor stops (e.g. +1ev)", param, ctx)
        if not 0.01 <= factor <= 100.0:
            self.fail(f"{value!r} is a factor of {factor:g}; expected 0.01 to 100 (-6.6ev to +6.6ev)", param, ctx)
        return factor


def _fail(message: str, code: int = 2) -> None:
    click.echo(f"darkfix: error: {message}", err=True)
    sys.exit(code)


def _lab(name: str):
    """A module of darkfix.lab, or a one-line error when the lab extra is not installed."""
    import importlib

    try:
        return importlib.import_module(f"darkfix.lab.{name}")
    except ImportError as e:
        _fail(f"this command needs darkfix's lab extra ({e.name} is missing): pip install 'darkfix[lab]'")


def network_options(f):
    """Options shared by every command that runs the network."""
    for option in reversed([
        click.option("--weights", type=click.Path(path_type=Path, dir_okay=False),
                     help="Weights file (darkfix .safetensors or the authors' .pth). Default: packaged."),
        click.option("--device", type=DEVICE, default="auto", show_default=True,
                     help="auto = CUDA when available."),
        click.option("--precision", type=PRECISION, default="auto", show_default=True,
                     help="auto = fp16 on CUDA; on CPU bf16 where the CPU has native bf16 (AMX, "
                          "AVX512-BF16), else fp32."),
        click.option("--threads", type=click.IntRange(1, 256), default=None,
                     help="CPU threads for the network (default: torch's choice)."),
        click.option("--tile", type=click.IntRange(64, 65536), default=None,
                     help="Tile side in packed pixels (mosaic/2); frames larger than this run in "
                          "overlapping tiles. Default 512 on CPU (256 for frames over 30 MP), 2048 on CUDA."),
    ]):
        f = option(f)
    return f


def restore_options(f):
    """Options that decide how a frame is amplified, coloured and written."""
    for option in reversed([
        click.option("--brightness", "-m", type=Brightness(), default="1", show_default=True,
                     help="Brighter or darker than the chosen amplification: a factor (2 = twice as bright) or "
                          "stops (+1ev, -0.5ev)."),
        click.option("--exposure", type=click.Choice(["auto", "paper"]), default="auto", show_default=True,
                     help="How the amplification is chosen without --ratio: auto = a normally exposed picture; "
                          "paper = Lamba & Mitra's estimate (darker; the authors brighten it with -m 5 to 8)."),
        click.option("--ratio", type=click.FloatRange(1.0, 10000.0), default=None,
                     help="Amplify by this exposure ratio instead of an estimate (SID protocol)."),
        click.option("--wb", type=click.Choice(["camera", "daylight"]), default="camera", show_default=True,
                     help="White balance: as shot, or the camera's daylight multipliers."),
        click.option("--format", "fmt", type=click.Choice(["png", "tiff", "jpeg", "dng"]), default=None,
                     help="Output format (default: from the -o suffix, else png). dng = the denoised linear "
                          "camera RGB as a DNG that raw editors open (darkfix weights only)."),
        click.option("--bit-depth", type=click.Choice(["8", "16"]), default="8", show_default=True,
                     help="Bits per channel of PNG and TIFF (JPEG is 8, DNG 16)."),
        click.option("--quality", type=click.IntRange(1, 100), default=95, show_default=True,
                     help="JPEG quality."),
        click.option("--compression", type=click.IntRange(0, 9), default=1, show_default=True,
                     help="PNG zlib level: 0 is fastest and largest, 9 smallest and slowest."),
        click.option("--overwrite", is_flag=True, help="Replace existing output files."),
    ]):
        f = option(f)
    return f


def _restorer(weights, device, precision, threads, tile):
    import torch

    from .inference import Restorer, limit_malloc_arenas
    from .weights import load_weights

    if threads:
        torch.set_num_threads(threads)
    model, info = load_weights(weights)
    try:
        restorer = Restorer(model, device=device, precision=precision, tile=tile)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    if restorer.device.type == "cpu":
        limit_malloc_arenas()
    return restorer, info


def _opts(brightness, exposure, ratio, wb, fmt, bit_depth, quality, compression, overwrite):
    from .options import RestoreOptions

    if fmt == "jpeg" and bit_depth == "16":
        _fail("JPEG holds 8 bits per channel: use --bit-depth 8, or --format tiff/png for 16")
    return RestoreOptions(brightness=brightness, ratio=ratio, exposure=exposure, wb=wb, bit_depth=int(bit_depth),
                          compression=compression, overwrite=overwrite, format=fmt or "png", quality=quality)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="darkfix")
def main() -> None:
    """Restore extremely dark camera raw photos into clean, bright sRGB PNGs."""


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(),
              help="Output PNG for one input, or a directory for several (or ending in /). "
                   "Default: beside each input.")
@restore_options
@network_options
@click.option("-v", "--verbose", is_flag=True, help="Print the amplification used and timings.")
def restore(files, output, brightness, exposure, ratio, wb, fmt, bit_depth, quality, compression, overwrite,
            weights, device, precision, threads, tile, verbose) -> None:
    """Restore each raw FILE into a picture (PNG unless --format or the -o suffix says otherwise)."""
    from .imagefile import format_of
    from .pipeline import check_output, claim_outputs, clash_message, default_output, make_output_dir, restore_file

    several = len(files) > 1
    as_dir = output is not None and (several or output.endswith(("/", os.sep)) or Path(output).is_dir())
    out = Path(output) if output is not None else None
    try:
        fmt = format_of(None if as_dir else out, fmt)
    except DarkfixError as e:
        _fail(str(e), e.exit_code)
    opts = _opts(brightness, exposure, ratio, wb, fmt, bit_depth, quality, compression, overwrite)
    if as_dir and out.exists() and not out.is_dir():
        _fail(f"{out}: -o must be a directory when restoring several files")
    try:
        if as_dir:
            make_output_dir(out)
        jobs = [(Path(f), default_output(Path(f), out, as_dir, opts.format)) for f in files]
        clashes = claim_outputs(jobs)
        for src, dst in jobs:  # refuse before loading the network
            if not src.exists():
                raise DarkfixError(f"{src}: no such file")
            if src in clashes:
                raise DarkfixError(clash_message(src, dst, clashes[src]))
            check_output(src, dst, overwrite, opts.format)
        restorer, info = _restorer(weights, device, precision, threads, tile)
        if opts.format == "dng":
            from .pipeline import check_camera_output

            check_camera_output(jobs[0][1], info)
        failures = 0
        done = 0
        signal.signal(signal.SIGTERM, _raise_interrupt)
        for src, dst in jobs:
            started = time.monotonic()
            try:
                res = restore_file(src, dst, restorer, info, opts)
            except KeyboardInterrupt:
                # the PNG being written is a temporary file until it is whole: it has been removed
                click.echo(f"darkfix: interrupted: {done} of {len(jobs)} restored, {src} not written", err=True)
                sys.exit(130)
            except DarkfixError as e:
                if not several:
                    raise
                click.echo(f"darkfix: error: {e}", err=True)
                failures += 1
                continue
            if verbose:
                amp = res.amplification * brightness
                what = {"ratio": "ratio", "auto": "automatic exposure", "paper": "paper's estimate"}[res.how]
                click.echo(f"{src}: amplification {amp:.2f} "
                           f"({what} {res.amplification:.2f} x brightness {brightness:g}); "
                           f"{res.size[0]}x{res.size[1]} in {time.monotonic() - started:.2f} s")
            click.echo(str(res.output))
            done += 1
    except DarkfixError as e:
        _fail(str(e), e.exit_code)
    if failures:
        sys.exit(1)


@main.command()
@click.option("--weights", type=click.Path(path_type=Path, dir_okay=False), help="Default: packaged weights.")
def info(weights) -> None:
    """Print what a weights file is."""
    from .weights import load_weights

    try:
        model, meta = load_weights(weights)
    except DarkfixError as e:
        _fail(str(e), e.exit_code)
    click.echo(f"file:          {meta.path}")
    click.echo(f"format:        {meta.format}")
    how = "rendered with each file's colour metadata" if meta.output == "camera" else "written as is"
    click.echo(f"output:        {meta.output} ({how})")
    click.echo(f"parameters:    {sum(p.numel() for p in model.parameters()):,}")
    for key in sorted(meta.metadata):
        if key not in ("output",):
            click.echo(f"{key + ':':<14} {meta.metadata[key]}")


def _files_per_second():
    """A progress column showing files per second (rich is imported only where progress is shown)."""
    from rich.progress import ProgressColumn
    from rich.text import Text

    class FilesPerSecond(ProgressColumn):
        def render(self, task) -> Text:
            return Text(f"{task.speed or 0:.2f} files/s", style="cyan")

    return FilesPerSecond()


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _ray_runner(folder, outdir, files, outputs, opts, address, actors, gpus, weights, device, precision, threads,
                tile):
    """Checks for `batch --ray` before any work, then the function that runs it."""
    try:
        import ray  # noqa: F401  (only to say in one line that the extra is missing)
    except ImportError:
        _fail("--ray needs Ray: pip install 'darkfix[ray]'")
    from .pipeline import check_camera_output
    from .raybatch import RaySettings, is_remote, run_ray_batch
    from .weights import load_weights

    if is_remote(address) and not all(p is None or p.is_absolute() for p in (folder, outdir)):
        raise DarkfixError("a remote Ray cluster's workers cannot see relative paths: give FOLDER and -o as "
                           "absolute paths on storage every node mounts")
    if device == "cuda" and not gpus:
        gpus = 1.0
    info = load_weights(weights)[1]  # a bad weights file is refused here, not on every worker
    if opts.format == "dng":
        check_camera_output(outputs[0], info)
    settings = RaySettings(address=address, actors=actors, threads=threads or 1, gpus=gpus)
    absolute = [p.resolve() for p in files], [p.resolve() for p in outputs]
    weights_path = str(info.path.resolve())
    names = dict(zip(absolute[0], files))  # report the files as the user named them

    def execute(on_file):
        report = run_ray_batch(*absolute, opts, weights=weights_path, device=device, precision=precision, tile=tile,
                               settings=settings, on_file=lambda src, status: on_file(names[src], status))
        report.done = [names[p] for p in report.done]
        report.skipped = [names[p] for p in report.skipped]
        report.failed = [(names[p], why) for p, why in report.failed]
        return report

    return execute


@main.command()
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("-o", "--output", "outdir", type=click.Path(path_type=Path, file_okay=False),
              help="Directory for the PNGs (sub-folders mirrored). Default: beside each raw file.")
@click.option("-r", "--recursive", is_flag=True, help="Include sub-folders.")
@click.option("--pattern", default=None, help="Glob on file names, e.g. '*.ARW'. Default: every raw extension.")
@click.option("--ray", "use_ray", is_flag=True,
              help="Run on a Ray cluster (pip install 'darkfix[ray]'): the one `ray start` made, RAY_ADDRESS, "
                   "--ray-address, or a new local one. Outputs must be on storage every node sees.")
@click.option("--ray-address", default=None, metavar="ADDR", help="Ray cluster to connect to (implies --ray).")
@click.option("--ray-actors", type=click.IntRange(1), default=None,
              help="Restoring actors (each loads the weights once). Default: as many as the cluster's CPUs "
                   "(or GPUs) allow.")
@click.option("--ray-gpus", type=click.FloatRange(0.0), default=0.0, show_default=True,
              help="GPUs per actor (use with --device cuda).")
@restore_options
@network_options
def batch(folder, outdir, recursive, pattern, use_ray, ray_address, ray_actors, ray_gpus, brightness, exposure, ratio,
          wb, fmt, bit_depth, quality, compression, overwrite, weights, device, precision, threads, tile) -> None:
    """Restore every raw file in FOLDER; files already restored are skipped, so a rerun resumes."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    from rich.table import Table

    from .batch import find_raws, output_for, remove_stale_parts, run_batch

    if not folder.is_dir():
        _fail(f"{folder}: not a directory")
    if outdir is not None:
        from .pipeline import make_output_dir

        try:
            make_output_dir(outdir)
        except DarkfixError as e:
            _fail(str(e), e.exit_code)
    opts = _opts(brightness, exposure, ratio, wb, fmt, bit_depth, quality, compression, overwrite)
    files = list(find_raws(folder, recursive, pattern))
    outputs = [output_for(f, folder, outdir, opts.format) for f in files]
    for d in {o.parent for o in outputs if o.parent.is_dir()}:
        remove_stale_parts(d)
    if not files:
        click.echo(f"{folder}: no raw files found" + ("" if recursive else " (use --recursive for sub-folders)"))
        return
    try:
        if use_ray or ray_address:
            execute = _ray_runner(folder, outdir, files, outputs, opts, ray_address, ray_actors, ray_gpus, weights,
                                  device, precision, threads, tile)
        else:
            restorer, info = _restorer(weights, device, precision, threads, tile)
            if opts.format == "dng":
                from .pipeline import check_camera_output

                check_camera_output(outputs[0], info)

            def execute(on_file):
                return run_batch(files, outputs, restorer, info, opts, on_file=on_file)
    except DarkfixError as e:
        _fail(str(e), e.exit_code)
    console = Console(stderr=True)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), _files_per_second(),
               TextColumn("ETA"), TimeRemainingColumn()]
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("restoring", total=len(files))

        def on_file(src: Path, status: str) -> None:
            progress.advance(task)
            if status == "failed":
                progress.console.print(f"failed: {src}", style="red", markup=False, soft_wrap=True)

        report = execute(on_file)
    table = Table(title="darkfix batch")
    for col in ("restored", "skipped (output exists)", "failed", "seconds", "files/s"):
        table.add_column(col, justify="right")
    rate = len(report.done) / report.seconds if report.seconds > 0 else 0.0
    table.add_row(str(len(report.done)), str(len(report.skipped)), str(len(report.failed)),
                  f"{report.seconds:.1f}", f"{rate:.2f}")
    console.print(table)
    for src, reason in report.failed:
        console.print(f"failed: {reason if str(src) in reason else f'{src}: {reason}'}", markup=False, soft_wrap=True)
    if report.interrupted:
        left = len(files) - len(report.done) - len(report.skipped) - len(report.failed)
        console.print(f"interrupted: {len(report.done)} restored, {left} left; run the same command again to resume",
                      markup=False, soft_wrap=True)
        sys.exit(130)
    if report.failed:
        sys.exit(1)


@main.command()
@click.argument("photos", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.argument("out", type=click.Path(path_type=Path, file_okay=False))
@click.option("--ratios", default="100,250,300", show_default=True, help="Exposure ratios, comma-separated.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--limit", type=click.IntRange(1), default=None, help="Use only the first N photos.")
@click.option("--max-side", type=click.IntRange(32), default=None, help="Shrink photos to this long side first.")
@click.option("--sensors", type=click.Choice(["sony", "broad"]), default="sony", show_default=True,
              help="sony: SID's Sony A7S II; broad: a random sensor per photo (8-16 bits, black 0-10 %, "
                   "white balance 1-3; ratios scaled to what the bit depth holds).")
def synth(photos, out, ratios, seed, limit, max_side, sensors) -> None:
    """Make a benchmark folder of dark DNGs and ground truth from clean PHOTOS."""
    make_benchmark = _lab("benchset").make_benchmark

    try:
        ratio_list = tuple(float(r) for r in ratios.split(","))
    except ValueError:
        raise click.BadParameter(f"not a list of numbers: {ratios!r}", param_hint="--ratios") from None
    try:
        manifest = make_benchmark(photos, out, ratio_list, seed=seed, limit=limit, max_side=max_side, sensors=sensors,
                                  progress=lambda name: click.echo(f"wrote {out / name}", err=True))
    except (FileNotFoundError, OSError) as e:
        _fail(str(e))
    click.echo(f"{out}: {len(manifest['pairs'])} dark raws and their ground truth; manifest in {out / 'manifest.json'}")


@main.command()
@click.option("--images", type=click.Path(path_type=Path, exists=True, file_okay=False), required=True,
              help="Folder of clean photos to synthesise training pairs from.")
@click.option("--val", type=click.Path(path_type=Path, exists=True, file_okay=False), default=None,
              help="Folder of clean photos for periodic validation (PSNR/SSIM); the best weights are kept.")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), required=True,
              help="Weights file to write (.safetensors); the checkpoint goes to OUT.ckpt.")
@click.option("--iterations", type=click.IntRange(1), default=20000, show_default=True)
@click.option("--batch", "batch_size", type=click.IntRange(1), default=8, show_default=True)
@click.option("--crop", type=click.IntRange(192), default=256, show_default=True,
              help="Mosaic crop side (a multiple of 32; MS-SSIM needs more than 160).")
@click.option("--lr", type=float, default=3e-4, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", type=DEVICE, default="auto", show_default=True)
@click.option("--threads", type=click.IntRange(1, 256), default=None)
@click.option("--resume", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              help="Checkpoint to continue from exactly (OUT.ckpt of an earlier run).")
@click.option("--init", "init_weights", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              help="Start from these weights (fine-tune) instead of a random initialisation.")
@click.option("--validate-every", type=click.IntRange(1), default=1000, show_default=True)
@click.option("--msssim-from", type=click.FloatRange(0.0, 1.0), default=0.75, show_default=True,
              help="Fraction of the run after which 0.2 (1 - MS-SSIM) joins the L1 loss (it doubles a CPU step).")
def train(images, val, out, iterations, batch_size, crop, lr, seed, device, threads, resume, init_weights,
          validate_every, msssim_from) -> None:
    """Train darkfix weights on synthetic low-light pairs made from clean photos."""
    import torch
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from .inference import pick_device
    training = _lab("train")
    TrainConfig, run_training = training.TrainConfig, training.train

    if crop % 32:
        raise click.BadParameter("must be a multiple of 32", param_hint="--crop")
    if threads:
        torch.set_num_threads(threads)
    try:
        dev = pick_device(device)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--device") from None
    cfg = TrainConfig(images=str(images), val=str(val) if val else None, out=str(out), iterations=iterations,
                      batch=batch_size, crop=crop, lr=lr, seed=seed, device=dev.type,
                      validate_every=validate_every, msssim_from=msssim_from,
                      init=str(init_weights) if init_weights else None)
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("loss {task.fields[loss]:.4f}  val {task.fields[val]}"), TimeRemainingColumn()]
    with Progress(*columns) as progress:
        task = progress.add_task("training", total=iterations, loss=float("nan"), val="-")

        def report(event: dict) -> None:
            fields = {"loss": event["loss"]}
            if "val_psnr" in event:
                fields["val"] = f"{event['val_psnr']:.2f} dB / {event['val_ssim']:.3f}"
                progress.console.print(f"step {event['step']}: validation {fields['val']}")
            progress.update(task, completed=event["step"], **fields)

        try:
            summary = run_training(cfg, resume=str(resume) if resume else None, report=report)
        except (FileNotFoundError, ValueError) as e:
            _fail(str(e))
    click.echo(f"{out}: best validation PSNR {summary['best_val_psnr']:.2f} dB after {summary['steps']} steps")


# --- bench command ---


@main.command()
@click.option("--size", default="4256x2848", show_default=True,
              help="Synthetic frame WIDTHxHEIGHT in mosaic pixels (ignored with --input).")
@click.option("--input", "input_path", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="Time this raw file instead of a synthetic frame.")
@click.option("--runs", type=click.IntRange(1, 1000), default=3, show_default=True,
              help="Timed runs after the warm-up; figures are medians.")
@click.option("--json", "json_path", type=click.Path(path_type=Path, dir_okay=False),
              help="Also write the results to this JSON file.")
@click.option("--compression", type=click.IntRange(0, 9), default=1, show_default=True,
              help="PNG zlib level for the encode stage.")
@click.option("--no-reference", is_flag=True,
              help="Skip the reference network (eager fp32, weight norm per call, whole frame).")
@network_options
def bench(size, input_path, runs, json_path, compression, no_reference, weights, device, precision, threads,
          tile) -> None:
    """Time each stage of a restoration and the network against the reference way of running it."""
    import json

    from rich.console import Console

    from .lab.bench import parse_size, print_report, run_bench

    try:
        dims = parse_size(size)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--size") from None
    console = Console(stderr=True)
    try:
        result = run_bench(dims, runs=runs, device=device, precision=precision, threads=threads, tile=tile,
                           weights=weights, input_path=input_path, reference=not no_reference,
                           compression=compression, progress=lambda msg: console.log(msg))
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    except DarkfixError as e:
        _fail(str(e), e.exit_code)
    print_report(result)
    if json_path is not None:
        json_path.write_text(json.dumps(result, indent=1))


# --- eval command ---


@main.command("eval")
@click.argument("benchmark", required=False, type=click.Path(path_type=Path))
@click.option("--sid", "sid_dir", type=click.Path(path_type=Path),
              help="Evaluate SID's Sony test set instead: the folder holding Sony/short, Sony/long and "
                   "Sony_test_list.txt (amplification min(long/short exposure, 300), ground truth = LibRaw's "
                   "rendering of the long exposure).")
@click.option("--ratio-from-manifest/--auto-amp", "use_ratio", default=True, show_default=True,
              help="Amplify every method by the true exposure ratio, or by an estimate (--exposure).")
@click.option("--exposure", type=click.Choice(["auto", "paper"]), default="auto", show_default=True,
              help="The estimate --auto-amp uses: darkfix's automatic exposure or the paper's (whose m = 1 "
                   "is darker than the ground truth's exposure).")
@click.option("--brightness", "-m", type=Brightness(), default="1", show_default=True,
              help="Multiply the amplification by this factor (or stops, e.g. +1ev).")
@click.option("--baseline-weights", "baseline_weights", multiple=True,
              type=click.Path(path_type=Path, dir_okay=False),
              help="Also evaluate these weights (e.g. the authors' .pth checkpoint); repeatable.")
@click.option("--no-libraw", is_flag=True, help="Skip the LibRaw (no denoising) baseline.")
@click.option("--limit", type=click.IntRange(1), default=None, help="Evaluate only the first N pairs.")
@click.option("--ratios", default=None, metavar="LIST",
              help="Only pairs with these exposure ratios, comma-separated (e.g. 100,300).")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None,
              help="Also write the full report (per image, per ratio, overall) as JSON to this file.")
@click.option("--per-image/--summary-only", default=True, show_default=True,
              help="Print the per-image table, or only the per-ratio and overall one.")
@network_options
@click.option("-q", "--quiet", is_flag=True, help="No progress lines.")
def eval_command(benchmark, sid_dir, use_ratio, exposure, brightness, baseline_weights, no_libraw, limit, ratios,
                 json_path, per_image, weights, device, precision, threads, tile, quiet) -> None:
    """Score restorations of a benchmark folder (from darkfix synth) against its ground truth.

    Reports PSNR and SSIM per image, per exposure ratio and overall for the network (--weights),
    any --baseline-weights, and LibRaw's un-denoised rendering brightened by the same amount.
    """
    from rich.console import Console

    ev = _lab("evaluate")

    if (benchmark is None) == (sid_dir is None):
        _fail("give either a BENCHMARK folder or --sid SID_SONY_DIR (exactly one)")
    try:
        wanted = ev.parse_ratios(ratios)
        source = sid_dir if sid_dir is not None else benchmark
        if sid_dir is not None:
            ev.sid_cases(source, wanted, limit)  # refuse a bad layout before loading any network
        else:
            ev.benchmark_cases(source, wanted, limit)
        if json_path is not None:
            ev.check_json_target(json_path)
        methods = []
        for path in (weights, *baseline_weights):
            restorer, info = _restorer(path, device, precision, threads, tile)
            name = ev.network_name(info, [m.name for m in methods],
                                   default="darkfix" if not methods else "baseline")
            methods.append(ev.NetworkMethod(name, restorer, info))
        if not no_libraw:
            methods.append(ev.LibRawMethod())
        report = ev.evaluate(source, methods, sid=sid_dir is not None, auto_amp=not use_ratio, exposure=exposure,
                             brightness=brightness, ratios=wanted, limit=limit,
                             progress=None if quiet else (lambda line: click.echo(line, err=True)))
        # a pipe or file gets full-width rows rather than rich's 80-column default
        ev.print_report(report, Console() if sys.stdout.isatty() else Console(width=200), per_image=per_image)
        if json_path is not None:
            ev.write_json(report, json_path)
            click.echo(f"report written to {json_path}")
    except DarkfixError as e:
        _fail(str(e), e.exit_code)
