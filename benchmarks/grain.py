"""Grain and grid in flat areas (issue 21, item 5): a restored frame against its ground truth, in the
flattest windows of the ground truth.

    python benchmarks/grain.py BENCH_DIR NAME.dng --weights A.safetensors [--weights B.safetensors] [--bm3d]
                               [--ensemble]
    python benchmarks/grain.py BENCH_DIR --every 3 --weights A.safetensors [--weights B.safetensors]

With `--every N` instead of a NAME, every N-th frame of the benchmark, each printed, then per method the
medians of grain and grid, and the means of the position biases' absolute values and of PSNR.

For each weights file (each also with the self-ensemble with `--ensemble`; and blind BM3D with `--bm3d`,
`bm3d_baseline.py`'s), the frame is restored at its true ratio (the stages `darkfix restore` uses) and, in
the FLAT_WINDOWS flattest 64 x 64 windows of the ground truth (least gradient energy, not overlapping):

- grain: the power of the output's fine detail (the image less its 5 x 5 box mean, luminance) over the
  ground truth's in the same windows: 1 is as smooth as the truth, the goal is at most 2;
- grid: the largest peak of the error's (output less truth) luminance spectrum in those windows (mean of
  their power spectra) over the median of its ring of equal frequency (the lowest three rings left out):
  residual noise is spread over a ring, a periodic pattern peaks in it; the goal is at most 5. Also the
  peak off the spectrum's two axes: on them lies banding (the row noise the corrections leave), off them a
  grid of the network's own. (The
  truth's own spectrum falls steeply in flat areas, so the output's spectrum alone would show that fall,
  not a grid.)

- position bias: in the same windows, each colour's mean error on even rows less that on odd rows (and even
  columns less odd ones), in units of 1e-4 of the rendered range: a bias between the network's 2 x 2 output
  positions (frame-dependent; its mean over the windows barely moves without row noise, but the on-axis peak
  does: that peak is the row noise left, which varies from window to window; twenty-second session);

and, in the DARK_WINDOWS darkest windows of the ground truth that hold any light, the dark colour: R/G
and B/G of the output's linear-light sums beside the truth's (the README example's dark grass: the truth
green, the network greyer).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # darkfix from this checkout

from darkfix.lab.evaluate import (NetworkMethod, as_float, benchmark_cases, display_linear, load_truth,  # noqa: E402
                                  psnr)
from darkfix import engine as engines  # noqa: E402
from darkfix.rawio import read_raw  # noqa: E402

WINDOW = 64
FLAT_WINDOWS = 8
DARK_WINDOWS = 8
DARK_FLOOR = 0.002  # linear light: darker windows are black in the truth too, their colour undefined


def luminance(image: np.ndarray) -> np.ndarray:
    return image @ np.array([0.2126, 0.7152, 0.0722], np.float32)


def box(x: np.ndarray, r: int = 2) -> np.ndarray:
    p = np.pad(x, r, mode="reflect")
    c = p.cumsum(0).cumsum(1)
    c = np.pad(c, ((1, 0), (1, 0)))
    k = 2 * r + 1
    return (c[k:, k:] - c[:-k, k:] - c[k:, :-k] + c[:-k, :-k]) / (k * k)


def lowest(score: np.ndarray, count: int, above: float = -np.inf) -> list[tuple[int, int]]:
    """Top-left corners of the `count` (or fewer) non-overlapping WINDOW x WINDOW windows (on a half-window grid)
    of least mean `score`, among those whose mean is above `above`."""
    step = WINDOW // 2
    cands = [(float(score[y : y + WINDOW, x : x + WINDOW].mean()), y, x)
             for y in range(0, score.shape[0] - WINDOW + 1, step) for x in range(0, score.shape[1] - WINDOW + 1, step)]
    chosen: list[tuple[int, int]] = []
    for _, y, x in sorted(c for c in cands if c[0] > above):
        if all(abs(y - cy) >= WINDOW or abs(x - cx) >= WINDOW for cy, cx in chosen):
            chosen.append((y, x))
        if len(chosen) == count:
            break
    return chosen


def flattest(truth: np.ndarray, count: int = FLAT_WINDOWS) -> list[tuple[int, int]]:
    """The `count` flattest windows of a luminance image (least gradient energy)."""
    gy, gx = np.gradient(truth)
    return lowest(gy**2 + gx**2, count)


def dark_colour(out: np.ndarray, truth: np.ndarray, count: int = DARK_WINDOWS) -> tuple[np.ndarray, np.ndarray]:
    """(output, truth) R/G and B/G of the linear-light sums over the truth's `count` darkest windows that hold
    any light (mean luminance above DARK_FLOOR): where the network shrinks weak colour towards grey. NaN
    where no window qualifies."""
    lin_out, lin_truth = display_linear(out), display_linear(truth)
    windows = lowest(luminance(lin_truth), count, above=DARK_FLOOR)
    if not windows:
        return np.full(2, np.nan), np.full(2, np.nan)
    so = np.sum([lin_out[y : y + WINDOW, x : x + WINDOW].sum((0, 1)) for y, x in windows], axis=0)
    st = np.sum([lin_truth[y : y + WINDOW, x : x + WINDOW].sum((0, 1)) for y, x in windows], axis=0)
    return so[[0, 2]] / max(float(so[1]), 1e-12), st[[0, 2]] / max(float(st[1]), 1e-12)


def grain_and_grid(out: np.ndarray, truth: np.ndarray, windows: list[tuple[int, int]]) -> tuple[float, float, float]:
    """(grain power ratio, spectral peak over median, the same peak off the two axes) of luminance images
    in `windows` (the truth's flattest). On the axes lie patterns constant along a row or a column (banding: the
    sensor's row noise that the network leaves), off them a periodic grid of the network's own."""
    fine_out, fine_truth = out - box(out), truth - box(truth)
    grain = sum(float((fine_out[y : y + WINDOW, x : x + WINDOW] ** 2).mean()) for y, x in windows)
    base = sum(float((fine_truth[y : y + WINDOW, x : x + WINDOW] ** 2).mean()) for y, x in windows)
    spectrum = np.zeros((WINDOW, WINDOW))
    hann = np.outer(np.hanning(WINDOW), np.hanning(WINDOW))
    for y, x in windows:
        patch = out[y : y + WINDOW, x : x + WINDOW] - truth[y : y + WINDOW, x : x + WINDOW]
        spectrum += np.abs(np.fft.fft2((patch - patch.mean()) * hann)) ** 2
    f = np.fft.fftfreq(WINDOW)
    radius = np.hypot(f[:, None], f[None, :])
    ring = np.round(radius * WINDOW).astype(int)
    # the Hann window spreads a pattern constant along rows (or columns) over the two bins beside its axis
    bins = np.abs(np.fft.fftfreq(WINDOW, 1.0 / WINDOW))
    off_axes = (bins[:, None] > 2) & (bins[None, :] > 2)
    peak = off_peak = 0.0
    for k in range(3, WINDOW // 2):  # each ring of frequencies against its own median: the error's
        on_ring = ring == k  # spectrum falls with frequency, a grid stands out of its ring
        median = np.median(spectrum[on_ring])
        peak = max(peak, float(spectrum[on_ring].max() / median))
        off_peak = max(off_peak, float(spectrum[on_ring & off_axes].max(initial=0.0) / median))
    return grain / max(base, 1e-12), peak, off_peak


def position_bias(out: np.ndarray, truth: np.ndarray,
                  windows: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """(rows, columns): per colour, the mean error of even rows less odd rows (columns) in `windows` (the
    truth's flattest, by luminance), rendered RGB images (H, W, 3) in [0, 1]."""
    rows, cols = [], []
    for y, x in windows:
        e = out[y : y + WINDOW, x : x + WINDOW] - truth[y : y + WINDOW, x : x + WINDOW]
        rows.append(e[0::2].mean(axis=(0, 1)) - e[1::2].mean(axis=(0, 1)))
        cols.append(e[:, 0::2].mean(axis=(0, 1)) - e[:, 1::2].mean(axis=(0, 1)))
    return np.mean(rows, axis=0), np.mean(cols, axis=0)


@click.command()
@click.argument("bench", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.argument("name", required=False)
@click.option("--weights", "weights", multiple=True, type=click.Path(path_type=Path, exists=True))
@click.option("--bm3d", is_flag=True, help="Also blind BM3D (noise estimated on the frame), for scale.")
@click.option("--ensemble", is_flag=True, help="Also each weights file with the self-ensemble (restore --ensemble).")
@click.option("--every", type=click.IntRange(1), default=None,
              help="Instead of NAME: every N-th frame of BENCH, then each method's medians and means.")
def main(bench: Path, name: str | None, weights: tuple[Path, ...], bm3d: bool, ensemble: bool,
         every: int | None) -> None:
    """Grain power and grid peak of NAME (a frame of BENCH), or of every N-th frame, restored by each weights
    file."""
    if (name is None) == (every is None):
        raise click.UsageError("give a frame's NAME or --every N")
    if every:
        cases = benchmark_cases(bench)[::every]
    else:
        cases = [c for c in benchmark_cases(bench) if name in (c.name, c.raw.name)][:1]
        if not cases:
            raise click.BadParameter(f"no frame {name} in {bench}", param_hint="NAME")
    methods = []
    for w in weights:
        restorer, info = engines.load(w, engine="torch", device="cpu", precision="fp32")  # routed, as restore runs
        methods.append(NetworkMethod(w.name, restorer, info))
        if ensemble:
            methods.append(NetworkMethod(f"{w.name} --ensemble", restorer, info, ensemble=True))
    if bm3d:
        from bm3d_baseline import BM3DMethod

        methods.append(BM3DMethod(blind=True))
    scores: dict[str, list[tuple[float, ...]]] = {m.name: [] for m in methods}
    for case in cases:
        truth_rgb = as_float(load_truth(case))
        truth = luminance(truth_rgb)
        windows = flattest(truth)
        frame = read_raw(case.raw)
        for method in methods:
            out_rgb = as_float(method(case, frame, case.ratio))
            grain, grid, off_axes = grain_and_grid(luminance(out_rgb), truth, windows)
            got, want = dark_colour(out_rgb, truth_rgb)
            rows, cols = position_bias(out_rgb, truth_rgb, windows)
            db = psnr(out_rgb, truth_rgb)
            scores[method.name].append((grain, grid, off_axes, 1e4 * float(np.abs(rows).mean()),
                                        1e4 * float(np.abs(cols).mean()), db))
            by_rows, by_cols = (" ".join(f"{1e4 * c:+.1f}" for c in v) for v in (rows, cols))
            frame_name = f"{case.raw.name} " if every else ""
            click.echo(f"{frame_name}{method.name}: grain {grain:.2f} x the truth's (goal <= 2), grid peak {grid:.1f} "
                       f"x median "
                       f"(goal <= 5; off the axes, without banding: {off_axes:.1f}); dark colour R/G {got[0]:.2f}, "
                       f"B/G {got[1]:.2f} (truth {want[0]:.2f}, {want[1]:.2f}); 2 x 2 position bias (1e-4, R G B) "
                       f"rows {by_rows}, columns {by_cols}; {db:.2f} dB")
    if every:
        for label, values in scores.items():
            a = np.array(values)
            click.echo(f"{label} over {len(a)} frames: median grain {np.median(a[:, 0]):.2f}, grid peak "
                       f"{np.median(a[:, 1]):.1f}, off the axes {np.median(a[:, 2]):.1f}; mean |position bias| "
                       f"(1e-4) rows {a[:, 3].mean():.1f}, columns {a[:, 4].mean():.1f}; "
                       f"mean PSNR {a[:, 5].mean():.3f} dB")


if __name__ == "__main__":
    main()
