"""The lab's commands: `synth`, `train`, `tune`, `bench` and `eval` (darkfix.lab does the work)."""

from __future__ import annotations

import sys
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import click
import numpy as np

from ..errors import DarkfixError
from ..weights import DEFAULT_WEIGHTS_NAME, FINE_WIDTHS, GUIDE_RADIUS
from .common import DEVICE, Brightness, fail, lab_module, load_restorer, network_options


class FineWidths(click.ParamType):
    """Two channel counts, `FULL,HALF` (1 to 1024 each)."""

    name = "FULL,HALF"

    def convert(self, value, param, ctx) -> tuple[int, int]:
        if isinstance(value, tuple):
            return value
        try:
            full, half = (int(v) for v in str(value).split(","))
        except ValueError:
            self.fail(f"{value!r} is not two channel counts such as 24,48", param, ctx)
        if not (1 <= full <= 1024 and 1 <= half <= 1024):
            self.fail(f"{value!r}: each channel count must be 1 to 1024", param, ctx)
        return full, half


FINE_WIDTHS_TYPE = FineWidths()


class NoiseRange(click.ParamType):
    """LO,HI: a range of relative noise, 0 < LO < HI."""

    name = "LO,HI"

    def convert(self, value, param, ctx) -> tuple[float, float]:
        if isinstance(value, tuple):
            return value
        try:
            lo, hi = (float(v) for v in str(value).split(","))
        except ValueError:
            self.fail(f"{value!r} is not two numbers such as 0.03,0.3", param, ctx)
        if not 0.0 < lo < hi <= 10.0:
            self.fail(f"{value!r}: need 0 < LO < HI <= 10", param, ctx)
        return lo, hi


NOISE_RANGE = NoiseRange()

@click.command()
@click.argument("photos", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.argument("out", type=click.Path(path_type=Path, file_okay=False))
@click.option("--ratios", default="100,250,300", show_default=True, help="Exposure ratios, comma-separated.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--limit", type=click.IntRange(1), default=None, help="Use only the first N photos.")
@click.option("--max-side", type=click.IntRange(32), default=None, help="Shrink photos to this long side first.")
@click.option("--sensors", type=click.Choice(["sony", "broad"]), default="sony", show_default=True,
              help="sony: SID's Sony A7S II; broad: a random sensor per photo (8-16 bits, black 0-10 %, "
                   "white balance 1-3; ratios scaled to what the bit depth holds).")
@click.option("--black-error/--no-black-error", default=True, show_default=True,
              help="Give each frame the training recipe's per-channel black-level error (a black level the "
                   "file states slightly wrong), or none: measures denoising apart from that robustness.")
@click.option("--held-out", is_flag=True,
              help="Use only the photos training holds out of PHOTOS (every fourth Urban100 photo): a "
                   "detail-rich benchmark the network has not trained on.")
@click.option("--masked-columns", type=click.IntRange(0, 1024), default=0, show_default=True,
              help="Columns of optically masked photosites left of each frame (even; the DNG's MaskedAreas): "
                   "black with the frame's read and row noise, as many sensors have.")
@click.option("--overwrite", is_flag=True, help="Replace the benchmark OUT already holds.")
def synth(photos, out, ratios, seed, limit, max_side, sensors, black_error, held_out, masked_columns,
          overwrite) -> None:
    """Make a benchmark folder of dark DNGs and ground truth from clean PHOTOS."""
    make_benchmark = lab_module("benchset").make_benchmark

    if masked_columns % 2:
        raise click.BadParameter(f"must be even (whole CFA cells), not {masked_columns}", param_hint="--masked-columns")

    try:
        ratio_list = tuple(float(r) for r in ratios.split(","))
    except ValueError:
        raise click.BadParameter(f"not a list of numbers: {ratios!r}", param_hint="--ratios") from None
    try:
        manifest = make_benchmark(photos, out, ratio_list, seed=seed, limit=limit, max_side=max_side, sensors=sensors,
                                  progress=lambda name: click.echo(f"wrote {out / name}", err=True),
                                  black_error=black_error, part="held-out" if held_out else "all", overwrite=overwrite,
                                  masked=masked_columns)
    except ValueError as e:  # a ratio outside 1-10000, refused before anything is written
        raise click.BadParameter(str(e), param_hint="--ratios") from None
    except OSError as e:  # FileNotFoundError, FileExistsError among them
        fail(str(e))
    click.echo(f"{out}: {len(manifest['pairs'])} dark raws and their ground truth; manifest in {out / 'manifest.json'}")


@click.command()
@click.option("--images", type=click.Path(path_type=Path, exists=True, file_okay=False), required=True,
              help="Folder of clean photos to synthesise training pairs from.")
@click.option("--val", type=click.Path(path_type=Path, exists=True, file_okay=False), multiple=True,
              help="Folder of clean photos for periodic validation (PSNR/SSIM; repeatable; a training folder "
                   "gives its held-out photos); the best weights are kept.")
@click.option("--val-crops", type=click.IntRange(1), default=12, show_default=True,
              help="Validation crops from each --val folder.")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), required=True,
              help="Weights file to write (.safetensors); the checkpoint goes to OUT.ckpt.")
@click.option("--iterations", type=click.IntRange(1), default=20000, show_default=True)
@click.option("--batch", "batch_size", type=click.IntRange(1), default=8, show_default=True)
@click.option("--crop", type=click.IntRange(192), default=256, show_default=True,
              help="Mosaic crop side (a multiple of 32; MS-SSIM needs more than 160). Photos smaller than a "
                   "crop are left out, but for --half-crops.")
@click.option("--lr", type=float, default=3e-4, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", type=DEVICE, default="auto", show_default=True)
@click.option("--threads", type=click.IntRange(1, 256), default=None)
@click.option("--resume", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              help="Checkpoint to continue from exactly (OUT.ckpt of an earlier run).")
@click.option("--init", "init_weights", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Start from these weights (fine-tune) instead of a random initialisation: a file, or the name "
                   "of weights darkfix ships.")
@click.option("--validate-every", type=click.IntRange(1), default=1000, show_default=True)
@click.option("--msssim-from", type=click.FloatRange(0.0, 1.0), default=0.75, show_default=True,
              help="Fraction of the run after which 0.2 (1 - MS-SSIM) joins the L1 loss (it doubles a CPU step).")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16"]), default="auto", show_default=True,
              help="Network arithmetic: auto = bf16 (mixed) on CUDA and on CPUs with native bf16, else fp32.")
@click.option("--minutes", type=click.FloatRange(0.1), default=None,
              help="Stop after this many minutes, with a checkpoint that --resume continues from.")
@click.option("--plus", is_flag=True,
              help="Train the lamba2021-plus network (more capacity at 1/8 and full resolution); --init may "
                   "then name paper-architecture weights, whose function it starts from.")
@click.option("--noise-aware", is_flag=True,
              help="Train the lamba2021-na network (a noise map as input, a non-linear path at the finest "
                   "scales); --init may name paper-architecture weights, whose function it starts from.")
@click.option("--fine-input", type=click.Choice(["clipped", "signed"]), default="clipped", show_default=True,
              help="What the noise-aware network's finest-scale path reads: the input clipped at 0, as the "
                   "paper's layers do, or signed (negative noise kept: weak colours in the dark keep their level).")
@click.option("--fine-widths", type=FINE_WIDTHS_TYPE, default=",".join(map(str, FINE_WIDTHS)), show_default=True,
              help="The noise-aware network's finest-scale channels: at packed resolution and at 2 x 2 packed "
                   "pixels. --init may name narrower noise-aware weights: the network starts computing what "
                   "they compute, its new channels joined through zero weights.")
@click.option("--fine-only", is_flag=True,
              help="Train the noise-aware network's finest-scale path alone, the rest kept as --init has it "
                   "(v6's trained body reddened saturated colours that v5's body keeps).")
@click.option("--guide-radius", type=click.IntRange(0, 32), default=GUIDE_RADIUS, show_default=True,
              help="Train through the colour guide of this radius (packed pixels; 0: none), as restoring applies it.")
@click.option("--local-colour", type=click.FloatRange(0.0), default=0.0, show_default=True,
              help="Weight of a loss term on 8 x 8 block means of the camera RGB, which holds the colour of dark "
                   "areas (per pixel, their noise hides a colour bias).")
@click.option("--colour-patches", type=click.FloatRange(0.0, 1.0), default=0.0, show_default=True,
              help="Share of the training crops replaced by scenes of saturated colour (random regions of "
                   "hues at saturation 0.6-1, shaded by the photo): red, blue and magenta areas at high ratios.")
@click.option("--black-error-spread", "black_spread", type=click.FloatRange(0.0, 20.0), default=3.0,
              show_default=True,
              help="Bound (DN of 14 bits) of the extra black-level error given to half of each batch, on top of "
                   "ELD's 0.5 DN: more makes the network ignore a file's wrong black level, less lets it keep "
                   "the colour of dark areas.")
@click.option("--workers", type=click.IntRange(0, 256), default=0, show_default=True,
              help="Processes that synthesise batches ahead (0: the training process itself). On a GPU host, "
                   "most of its cores: synthesis is what the GPU waits for.")
@click.option("--half-crops", type=click.FloatRange(0.0, 1.0), default=0.0, show_default=True,
              help="Share of the steps whose batch is four times as many crops of half the side, drawn from every "
                   "photo at least that large: at --crop 512, BSDS500's 300 photos (481 x 321) join only so.")
@click.option("--teacher", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Distil: the self-ensemble of these weights (what `restore --ensemble` runs: twice the "
                   "network) is a second target beside the ground truth; same architecture. A name of "
                   "weights darkfix ships will do.")
@click.option("--teacher-weight", type=click.FloatRange(0.0), default=0.5, show_default=True,
              help="Weight of the loss towards --teacher's self-ensemble.")
@click.option("--position-bias", "position_weight", type=click.FloatRange(0.0), default=0.0, show_default=True,
              help="Weight of a loss term, the mean square of the bias between the output's positions (a 4 px period, "
                   "averaged over 32 px blocks): the faint periodic grid over flat areas that per pixel the noise "
                   "hides. About 100 makes it matter.")
@click.option("--balance-crops", is_flag=True,
              help="Weight each crop's per-pixel L1 terms by the inverse of its own error (at most 4x a crop's at "
                   "the batch's mean error): the gradient of the mean log L1 error, the L1 analogue of what a mean "
                   "PSNR over frames rewards. Low-noise and flat crops, whose errors are small, then count more.")
@click.option("--relative-noise", type=NOISE_RANGE, default=None,
              help="LO,HI: train (and validate) only on pairs whose mid-grey, once amplified, has a relative noise "
                   "(its standard deviation over its level) in this range, e.g. 0.03,0.3: a network for the "
                   "low-noise frames (each pair's exposure ratio chosen so). Default: SID's ratios.")
def train(images, val, val_crops, out, iterations, batch_size, crop, lr, seed, device, threads, resume, init_weights,
          validate_every, msssim_from, precision, minutes, plus, noise_aware, fine_input, fine_widths, fine_only,
          guide_radius, local_colour, colour_patches, black_spread, workers, half_crops, teacher,
          teacher_weight, position_weight, balance_crops, relative_noise) -> None:
    """Train darkfix weights on synthetic low-light pairs made from clean photos."""
    import torch

    from ..inference import pick_device
    training = lab_module("train")

    if crop % 32:
        raise click.BadParameter("must be a multiple of 32", param_hint="--crop")
    if half_crops and (crop % 64 or crop < 384):
        raise click.BadParameter(f"half crops need a --crop of at least 384 and a multiple of 64 (not {crop})",
                                 param_hint="--half-crops")
    if threads:
        torch.set_num_threads(threads)
    try:
        dev = pick_device(device)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--device") from None
    if plus and noise_aware:
        raise click.BadParameter("choose one of --plus and --noise-aware", param_hint="--noise-aware")
    for hint, given in (("--fine-input", fine_input != "clipped"), ("--fine-widths", fine_widths != FINE_WIDTHS),
                        ("--fine-only", fine_only)):
        if given and not noise_aware:
            raise click.BadParameter("only the noise-aware network has a finest-scale path (add --noise-aware)",
                                     param_hint=hint)
    cfg = training.TrainConfig(images=str(images), val=[str(v) for v in val] or None, val_crops=val_crops, out=str(out),
                      iterations=iterations,
                      batch=batch_size, crop=crop, lr=lr, seed=seed, device=dev.type,
                      validate_every=validate_every, msssim_from=msssim_from, precision=precision,
                      max_seconds=minutes * 60 if minutes else None,
                      init=str(init_weights) if init_weights else None, plus=plus, noise_aware=noise_aware,
                      fine_signed=fine_input == "signed", fine_widths=fine_widths, fine_only=fine_only,
                      guide_radius=guide_radius, local_weight=local_colour, colour_patches=colour_patches,
                      black_spread=black_spread, workers=workers, half_crops=half_crops,
                      teacher=str(teacher) if teacher else None, teacher_weight=teacher_weight,
                      position_weight=position_weight, balance_crops=balance_crops,
                      relative_noise=relative_noise)
    _run_training(training.train, cfg, resume, minutes)


def _run_training(run_training, cfg, resume: Path | None, minutes: float | None, again: str | None = None) -> None:
    """Run (or resume) `cfg` with a progress bar and validation lines; say where the weights went and, when
    stopped on time, how to go on (`again`, else --resume with the checkpoint)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    out, iterations = cfg.out, cfg.iterations
    checkpoint = cfg.checkpoint or f"{out}.ckpt"
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
            fail(str(e))
        except DarkfixError as e:  # e.g. weights whose header reads but whose tensors do not
            fail(str(e), e.exit_code)
        except BrokenProcessPool:
            fail(f"a batch worker died (out of memory? try fewer --workers); continue with --resume {checkpoint}")
    if not summary["finished"]:
        click.echo(f"stopped after {minutes:g} minutes at step {summary['steps']} of {iterations}; continue with "
                   + (again or f"--resume {checkpoint}"))
    if summary["history"]:
        click.echo(f"{out}: best validation PSNR {summary['best_val_psnr']:.2f} dB after {summary['steps']} steps")
    else:
        click.echo(f"{out}: the weights after {summary['steps']} steps (no --val: none validated)")


# what `tune` starts from: the default weights, noise-aware ones, which learn a sensor's noise (the
# paper-architecture v3 gained 0.01 dB on the same camera in the same time, the noise-aware v4 0.59)
TUNE_BASE = DEFAULT_WEIGHTS_NAME


@click.command()
@click.option("--profile", "profile_path", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              required=True, help="The sensor profile (`darkfix calibrate`) to tune for.")
@click.option("--images", type=click.Path(path_type=Path, exists=True, file_okay=False), required=True,
              help="Folder of clean, well-exposed photos (JPEG, PNG, TIFF or raw): any will do, your own best.")
@click.option("-o", "--out", type=click.Path(path_type=Path, dir_okay=False), required=True,
              help="Weights file to write (.safetensors); the checkpoint goes to OUT.ckpt.")
@click.option("--weights", "base", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Weights to start from: a file, or the name of weights darkfix ships (default: darkfix's "
                   "default, the noise-aware v14; noise-aware weights "
                   "tune best: v4 +0.59 dB on benchmarks/tune_check.py's camera, v3 +0.01).")
@click.option("--minutes", type=click.FloatRange(0.1), default=15.0, show_default=True,
              help="Stop after this long (checkpointed: run the same command again to go on).")
@click.option("--iterations", type=click.IntRange(1), default=1500, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
def tune(profile_path, images, out, base, minutes, iterations, seed) -> None:
    """Fine-tune darkfix's weights for one sensor: synthetic pairs made from the --images photos with the noise the
    profile measured (its system gain, read-noise shape, row and column noise, black and bit depth).
    The weights start from darkfix's own and are validated on the same sensor's pairs before the
    first step: they are only replaced by better ones. Run the same command again to resume."""
    from ..profile import load_profile
    from ..weights import file_sha256, read_info

    training = lab_module("train")
    try:
        prof = load_profile(profile_path)
        start = read_info(base or TUNE_BASE)
        training.list_images(images, "train")  # none: refused now, not once the training has started
    except DarkfixError as e:
        fail(str(e), e.exit_code)
    except FileNotFoundError as e:
        fail(str(e))
    if start.format != "darkfix" or not start.balanced:
        fail(f"{start.path}: only darkfix's own (white-balanced) weights can be tuned")
    own = {"black": float(np.mean(prof.black)), "white": prof.white, "k": prof.k, "read_dn": prof.read_dn,
           "read_lambda": prof.read_lambda, "row_dn": prof.row_dn, "col_dn": prof.col_dn}
    ckpt = Path(f"{out}.ckpt")
    if out.exists() and not ckpt.is_file():
        fail(f"{out}: already exists and is not a tuning run to resume (no {ckpt.name}); choose another name")
    cfg = training.TrainConfig(
        images=str(images), val=[str(images)], val_crops=8, out=str(out), iterations=iterations, batch=4, crop=256,
        lr=5e-5, seed=seed, validate_every=max(1, iterations // 6), msssim_from=1.0, max_seconds=minutes * 60,
        init=str(start.path), plus=start.architecture == "lamba2021-plus", noise_aware=start.noise_aware,
        fine_signed=start.fine_signed, fine_widths=start.fine_widths,
        guide_radius=start.guide_radius, own_sensor=own, validate_start=True,
        tuned_for={"profile": prof.checksum, "camera": " ".join(x for x in (prof.make, prof.model) if x),
                   "base_weights": Path(start.path).name,
                   "base_sha256": file_sha256(start.path)})
    _run_training(training.train, cfg, ckpt if ckpt.is_file() else None, minutes, again="the same command")


# --- bench command ---


@click.command()
@click.option("--size", default="4256x2848", show_default=True,
              help="Synthetic frame WIDTHxHEIGHT in mosaic pixels (ignored with --input).")
@click.option("--input", "input_path", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="Time this raw file instead of a synthetic frame.")
@click.option("--runs", type=click.IntRange(1, 1000), default=3, show_default=True,
              help="Timed runs after the warm-up; figures are medians.")
@click.option("--json", "json_path", type=click.Path(path_type=Path, dir_okay=False),
              help="Also write the results to this JSON file.")
@click.option("--compression", type=click.IntRange(0, 9), default=1, show_default=True,
              help="PNG deflate level for the encode stage.")
@click.option("--no-reference", is_flag=True,
              help="Skip the reference network (eager fp32, weight norm per call, whole frame).")
@network_options
def bench(size, input_path, runs, json_path, compression, no_reference, weights, engine, device, precision, threads,
          tile) -> None:
    """Time each stage of a restoration and the network against the reference way of running it."""
    import json

    from rich.console import Console

    from ..lab.bench import parse_size, print_report, run_bench

    try:
        dims = parse_size(size)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--size") from None
    console = Console(stderr=True)
    try:
        result = run_bench(dims, runs=runs, device=device, precision=precision, threads=threads, tile=tile,
                           weights=weights, input_path=input_path, reference=not no_reference,
                           compression=compression, progress=lambda msg: console.log(msg), engine=engine)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    except DarkfixError as e:
        fail(str(e), e.exit_code)
    print_report(result)
    if json_path is not None:
        json_path.write_text(json.dumps(result, indent=1))


# --- eval command ---


@click.command("eval")
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
@click.option("--stride", type=click.IntRange(1), default=1, show_default=True,
              help="Only every STRIDE-th pair (after --ratios, before --limit): the frames benchmarks/"
                   "bm3d_baseline.py --stride scored.")
@click.option("--ratios", default=None, metavar="LIST",
              help="Only pairs with these exposure ratios, comma-separated (e.g. 100,300).")
@click.option("--compare", "compare_paths", multiple=True, type=click.Path(path_type=Path, dir_okay=False),
              help="An earlier JSON report (e.g. benchmarks/bm3d_baseline.py's) whose other methods join the "
                   "tables, matched by raw file; select the same frames for a paired comparison. Repeatable.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None,
              help="Also write the full report (per image, per ratio, overall) as JSON to this file.")
@click.option("--markdown", "markdown_path", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Also write the summary (per ratio, per noise level, overall) as a Markdown table.")
@click.option("--per-image/--summary-only", default=True, show_default=True,
              help="Print the per-image table, or only the per-ratio, per-noise-level and overall one.")
@click.option("--trust-black/--no-trust-black", default=None,
              help="Restore as `darkfix restore --trust-black` does (the benchmark's black levels exact: dark "
                   "colour from wide local means); default: as without a sensor profile.")
@click.option("--ensemble", is_flag=True, help="Restore as `darkfix restore --ensemble` does (every network).")
@click.option("--masked-margin/--no-masked-margin", default=True, show_default=True,
              help="Restore as `darkfix restore` does with (the default) or without --masked-margin (every "
                   "network).")
@click.option("--picture-rows/--no-picture-rows", default=True, show_default=True,
              help="Restore as `darkfix restore` does with (the default) or without --picture-rows (every "
                   "network).")
@network_options
@click.option("-q", "--quiet", is_flag=True, help="No progress lines.")
def eval_command(benchmark, sid_dir, use_ratio, exposure, brightness, baseline_weights, no_libraw, limit, stride,
                 ratios, compare_paths, json_path, markdown_path, per_image, trust_black, ensemble, masked_margin,
                 picture_rows, weights, engine,
                 device, precision, threads, tile, quiet) -> None:
    """Score restorations of a benchmark folder (from darkfix synth) against its ground truth.

    Reports PSNR, colour-aligned PSNR (a per-channel gain fitted to the ground truth first) and SSIM per
    image, per exposure ratio, per noise level (system gain K) and overall for the network (--weights),
    any --baseline-weights, and LibRaw's un-denoised rendering brightened by the same amount.
    """
    from rich.console import Console

    ev = lab_module("evaluate")

    if (benchmark is None) == (sid_dir is None):
        fail("give either a BENCHMARK folder or --sid SID_SONY_DIR (exactly one)")
    try:
        wanted = ev.parse_ratios(ratios)
        source = sid_dir if sid_dir is not None else benchmark
        if sid_dir is not None:
            ev.sid_cases(source, wanted, limit, stride)  # refuse a bad layout before loading any network
        else:
            ev.benchmark_cases(source, wanted, limit, stride)
        for target in (json_path, markdown_path):
            if target is not None:
                ev.check_json_target(target)
        earlier = [(path, ev.read_report(path)) for path in compare_paths]
        methods = []
        for path in (weights, *baseline_weights):
            restorer, info = load_restorer(path, engine, device, precision, threads, tile)
            name = ev.network_name(info, [m.name for m in methods],
                                   default="darkfix" if not methods else "baseline")
            methods.append(ev.NetworkMethod(name, restorer, info, trust_black, ensemble, masked_margin,
                                            picture_rows))
        if not no_libraw:
            methods.append(ev.LibRawMethod())
        report = ev.evaluate(source, methods, sid=sid_dir is not None, auto_amp=not use_ratio, exposure=exposure,
                             brightness=brightness, ratios=wanted, limit=limit, stride=stride,
                             progress=None if quiet else (lambda line: click.echo(line, err=True)))
        for path, old in earlier:
            report = ev.merge_reports(report, old, str(path))
        # a pipe or file gets full-width rows rather than rich's 80-column default
        ev.print_report(report, Console() if sys.stdout.isatty() else Console(width=200), per_image=per_image)
        ev.save_report(report, json_path, markdown_path, click.echo)
    except DarkfixError as e:
        fail(str(e), e.exit_code)
