"""The strongest classical pipeline on a `darkfix synth` benchmark: VST + BM3D on the packed raw, blind
(the noise estimated from the frame, what a user gets) and oracle (the benchmark's true noise).

    python benchmarks/bm3d_baseline.py BENCH_DIR --weights W.safetensors --limit 3 --json bm3d.json

Per dark raw:
1. subtract the file's per-CFA black level (the one `darkfix restore` and `darkfix eval` give the network:
   RawFrame.black) and pack the mosaic into R, G1, G2, B planes (DN above black);
2. generalized Anscombe transform (Makitalo & Foi) for Poisson-Gaussian noise z = K * Poisson(y / K) + n,
   n ~ N(0, s^2): f(z) = 2 sqrt(max(z / K + 3/8 + (s / K)^2, 0)), which makes the noise ~ unit variance.
   BLIND ("bm3d-blind"): K and s^2 from `darkfix.noise.estimate` on the frame's packed planes (the estimate
   noise-aware weights get at restore: a Poisson-Gaussian fit on the two greens' difference; its read term
   holds read, row and quantisation noise together).
   ORACLE ("bm3d-oracle"): K is the benchmark's true system gain from manifest.json, and s^2 is the true
   Gaussian-equivalent variance of the signal-independent noise (read + row + quantisation) -- the best case
   for BM3D. The manifest records the read-noise scale but not the Tukey-lambda shape that half of the frames
   use (whose variance is 2.2 to 5.7 times scale^2), so unless the manifest
   carries `read_lambda`, the read variance is measured on the frame itself (a texture-robust second-difference
   estimator, with the true K) and the manifest's row-noise variance is added;
3. an orthonormal 4-point Hadamard transform across the planes (the first output is the luminance-like sum,
   on which BM3D matches blocks), BM3D with sigma 1 (the `bm3d` package), the inverse Hadamard;
4. the exact unbiased inverse of the transform (computed numerically for this frame's s / K), or with
   --inverse closed-form Makitalo & Foi's closed-form approximation of it;
5. unpack, write the denoised raw back into LibRaw's visible raw brightened by the amplification
   (black + y * ratio, clipped to white) and render it like the "libraw" baseline of `darkfix eval`
   (rawpy postprocess with camera WB, no auto-brightening, 16 bits).

The network (--weights, repeatable) and the libraw baseline run in the same loop on the same frames, and
every method is scored by `darkfix.lab.evaluate` (PSNR, colour-aligned PSNR, SSIM; per ratio, per noise
level, overall); timings are seconds per image per method on this machine (BM3D dominates: --limit).
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import click
import numpy as np
import rawpy
from scipy.special import gammaln

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # darkfix from this checkout

from darkfix.lab import evaluate as ev  # noqa: E402
from darkfix.errors import DarkfixError  # noqa: E402
from darkfix.noise import estimate  # noqa: E402
from darkfix.packing import aligned_planes, channel_black, pack, unpack  # noqa: E402
from darkfix.rawio import RawFrame  # noqa: E402

# Orthonormal 4-point Hadamard transform across R, G1, G2, B: keeps unit-variance white noise unit-variance.
HADAMARD = 0.5 * np.array([[1, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]], dtype=np.float64)
_SQ32 = math.sqrt(1.5)
# s / K (read noise in electrons) above which the shot noise is left out: below z ~ s^2 / K, where a dark
# frame's signal lies, it adds less than the read noise; the exact inverse's table also fails far above it
SHOT_NEGLIGIBLE = 100.0


# ------------------------------------------------------------------------------------- noise variance


def tukey_lambda_variance(lam: float) -> float:
    """Variance of the standard Tukey-lambda distribution (scale 1)."""
    if abs(lam) < 1e-6:
        return math.pi**2 / 3.0
    return 2.0 / lam**2 * (1.0 / (1.0 + 2.0 * lam) - math.exp(2 * math.lgamma(1 + lam) - math.lgamma(2 + 2 * lam)))


def estimate_read_variance(planes: np.ndarray, K: float, block: int = 16) -> float:
    """Variance of the signal-independent noise of packed planes (DN above black), given the gain K.

    Along each row, d = (p[x-1] - 2 p[x] + p[x+1]) / sqrt(6) has variance K * m + s^2 with
    m = (p[x-1] + 4 p[x] + p[x+1]) / 6, and cancels linear shading, per-channel offsets and row noise.
    r = d^2 - K m is then unbiased for s^2 plus texture; its mean per block, medianed over blocks, keeps
    out the few textured blocks.
    """
    p = planes.astype(np.float64)
    d = (p[:, :, :-2] - 2.0 * p[:, :, 1:-1] + p[:, :, 2:]) / math.sqrt(6.0)
    m = (p[:, :, :-2] + 4.0 * p[:, :, 1:-1] + p[:, :, 2:]) / 6.0
    r = d * d - K * m
    c, h, w = r.shape
    hb, wb = h // block, w // block
    if hb == 0 or wb == 0:
        return float(max(np.mean(r), 0.0))
    means = r[:, : hb * block, : wb * block].reshape(c, hb, block, wb, block).mean(axis=(2, 4))
    return float(max(np.median(means), 0.0))


def noise_variance(noise: dict, planes: np.ndarray, how: str) -> tuple[float, dict]:
    """s^2 of the signal-independent noise, in DN^2, and how it was found."""
    K = float(noise["K"])
    row = float(noise.get("row_sigma", 0.0)) ** 2
    quant = 1.0 / 12.0
    lam = noise.get("read_lambda")
    if how == "manifest" or (how == "auto" and "read_lambda" in noise):
        scale = float(noise["read_sigma"]) ** 2
        if lam is None or (isinstance(lam, float) and math.isnan(lam)):
            read = scale  # Gaussian read noise (or a manifest that does not say)
            source = "manifest (Gaussian read noise assumed)" if lam is None else "manifest (Gaussian)"
        else:
            read = scale * tukey_lambda_variance(float(lam))
            source = f"manifest (Tukey lambda {float(lam):g})"
        return read + row + quant, {"source": source, "read_var": read}
    measured = estimate_read_variance(planes, K)  # read + quantisation, measured (row noise cancels)
    return measured + row, {"source": "measured on the frame (true K)", "read_var": measured,
                            "manifest_read_sigma": float(noise["read_sigma"])}


def blind_noise(frame: RawFrame) -> dict:
    """The frame's own noise in DN: {"K": DN per electron, "s2": signal-independent variance, DN^2}, from
    `darkfix.noise.estimate` on its packed planes with the file's black and white levels (NoiseLevel.shot is
    K / range and .read the signal-independent standard deviation over the range, range = white - the
    greens' black, as the estimate normalises)."""
    layout = pack(np.zeros((2, 2)), frame.cfa)[1]  # the CFA alignment alone (no copy of the frame)
    black = channel_black(frame.black, layout)
    level = estimate(aligned_planes(frame.mosaic, layout), black, frame.white)
    span = float(frame.white) - 0.5 * float(black[1] + black[2])
    return {"K": float(np.mean(level.shot)) * span, "s2": (float(np.mean(level.read)) * span) ** 2,
            "source": "estimated on the frame (darkfix.noise.estimate)"}


# ------------------------------------------------------------------------------ variance stabilisation


def gat(z: np.ndarray, K: float, s2: float) -> np.ndarray:
    """Generalized Anscombe transform of z (DN above black) for gain K and Gaussian variance s2."""
    return 2.0 * np.sqrt(np.maximum(z / K + 0.375 + s2 / (K * K), 0.0))


def closed_form_inverse(D: np.ndarray, sigma_n: float) -> np.ndarray:
    """Makitalo & Foi's closed-form approximation of the exact unbiased inverse (normalised units)."""
    D = np.maximum(D, 1e-6)
    y = 0.25 * D**2 + 0.25 * _SQ32 / D - 1.375 / D**2 + 0.625 * _SQ32 / D**3 - 0.125 - sigma_n**2
    return np.where(D < 1.0, 0.0, np.maximum(y, 0.0))  # below D ~ 1 the expansion diverges; E f(0) > 1 anyway


class ExactInverse:
    """The exact unbiased inverse of the GAT for one sigma: y such that E[f(z) | y] = D, by table.

    E[f] = sum_k Poisson(k; y) E_n[2 sqrt(max(k + n + 3/8 + sigma^2, 0))], n ~ N(0, sigma^2) (normalised units,
    z / K); beyond the table the closed form (which converges to it) takes over.
    """

    def __init__(self, sigma_n: float, y_max: float = 300.0) -> None:
        self.sigma_n = sigma_n
        y = np.concatenate([np.linspace(0.0, 2.0, 81), np.geomspace(2.05, y_max, 400)])
        k = np.arange(0, int(y_max + 10 * math.sqrt(y_max) + 20))
        logp = k[None, :] * np.log(np.maximum(y[:, None], 1e-300)) - y[:, None] - gammaln(k + 1)[None, :]
        p = np.exp(logp)
        p[0, :] = 0.0
        p[0, 0] = 1.0  # y = 0: all mass at k = 0
        nodes = np.linspace(-6.0, 6.0, 241)
        weights = np.exp(-0.5 * nodes**2)
        weights /= weights.sum()
        inner = k[:, None] + sigma_n * nodes[None, :] + 0.375 + sigma_n**2
        g = (2.0 * np.sqrt(np.maximum(inner, 0.0))) @ weights
        self.y, self.ef = y, p @ g
        if not np.all(np.diff(self.ef) > 0):
            raise ValueError("E[f | y] is not increasing: table too coarse")

    def __call__(self, D: np.ndarray) -> np.ndarray:
        inside = np.interp(D, self.ef, self.y, left=0.0, right=np.nan)
        return np.where(D > self.ef[-1], closed_form_inverse(D, self.sigma_n), inside)


# ---------------------------------------------------------------------------------------------- method


class BM3DMethod:
    """VST + BM3D on the packed raw (noise from the frame, `blind`, or from the manifest), rendered by LibRaw
    like the libraw baseline."""

    def __init__(self, inverse: str = "exact", profile: str = "np", threads: int = 0, sigma: str = "auto",
                 blind: bool = False) -> None:
        import bm3d

        self.bm3d = bm3d
        self.name = "bm3d-blind" if blind else "bm3d-oracle"
        self.inverse, self.sigma, self.blind = inverse, sigma, blind
        if profile == "np":
            self.profile = bm3d.BM3DProfile()
            self.profile.num_threads = threads
        else:
            self.profile = profile  # a named profile ('refilter', 'high', ...): bm3d takes the string
        self.description = {
            "kind": "bm3d", "oracle": not blind,
            "noise": "K and the signal-independent variance estimated on the frame (darkfix.noise.estimate)"
                     if blind else
                     "true K from the manifest; signal-independent variance from the manifest when it has "
                     "read_lambda, else measured on the frame with the true K, plus the manifest's row variance",
            "black": "the file's per-CFA black level (RawFrame.black), as the network gets it",
            "vst": "generalized Anscombe", "inverse": "exact unbiased (numerical)" if inverse == "exact"
            else "closed-form approximation (Makitalo & Foi)", "bm3d_profile": profile,
            "channels": "orthonormal Hadamard across R, G1, G2, B; block matching on their sum",
            "render": "denoised raw brightened by the amplification, rawpy postprocess like libraw"}
        self.last: dict = {}

    def denoise(self, planes: np.ndarray, K: float, s2: float, info: dict) -> np.ndarray:
        """Packed planes (4, h, w) in DN above black, gain K and signal-independent variance s2 (DN^2) ->
        denoised planes (DN). Where the shot noise is negligible (K = 0, as the estimate gives an 8-bit
        sensor, or s / K > SHOT_NEGLIGIBLE) the noise is taken as Gaussian: no VST, BM3D at sigma s."""
        sigma_n = math.sqrt(s2) / K if K > 0 else math.inf
        self.last = {"K": K, "sigma_eff": math.sqrt(s2), **info}
        gaussian = sigma_n > SHOT_NEGLIGIBLE
        if gaussian:
            self.last["vst"] = "none (Gaussian noise)"
            t = planes.astype(np.float64) / math.sqrt(s2)
        else:
            t = gat(planes.astype(np.float64), K, s2)
        coeffs = np.einsum("ij,jhw->hwi", HADAMARD, t)
        den = np.asarray(self.bm3d.bm3d(coeffs, 1.0, profile=self.profile), dtype=np.float64)
        t_hat = np.einsum("ji,hwj->ihw", HADAMARD, den)  # HADAMARD is orthonormal: its transpose inverts it
        if gaussian:
            return t_hat * math.sqrt(s2)
        inv = ExactInverse(sigma_n) if self.inverse == "exact" else (lambda d: closed_form_inverse(d, sigma_n))
        return K * inv(t_hat)

    def __call__(self, case: ev.Case, frame: RawFrame, amplification: float) -> np.ndarray:
        if not self.blind and "noise" not in case.meta:
            raise DarkfixError(f"{case.raw}: the manifest has no noise parameters for the oracle VST "
                               "(rebuild the benchmark with a current darkfix synth)")
        h, w = frame.mosaic.shape
        black = np.tile(frame.black.astype(np.float64), (h // 2 + 1, w // 2 + 1))[:h, :w]
        planes, layout = pack(frame.mosaic.astype(np.float64) - black, frame.cfa)
        if self.blind:
            noise = blind_noise(frame)
            K, s2, info = noise["K"], noise["s2"], {"source": noise["source"]}
        else:
            K = float(case.meta["noise"]["K"])
            s2, info = noise_variance(case.meta["noise"], planes, self.sigma)
        clean = unpack(self.denoise(planes, K, s2, info), layout)
        with rawpy.imread(str(case.raw)) as raw:
            # LibRaw renders with its own black level: the same numbers RawFrame.black was read from
            visible = raw.raw_image_visible
            scaled = np.clip(black + clean * amplification, 0.0, float(raw.white_level))
            visible[...] = np.rint(scaled).astype(np.uint16)
            return ev.libraw_postprocess(raw, case.libraw_flip)


# ------------------------------------------------------------------------------------------------- CLI


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("benchmark", type=click.Path(path_type=Path, file_okay=False))
@click.option("--weights", multiple=True, type=click.Path(path_type=Path, dir_okay=False),
              help="Network weights to run beside BM3D (darkfix .safetensors or the authors' .pth); repeatable.")
@click.option("--limit", type=click.IntRange(1), default=3, show_default=True, help="First N pairs only.")
@click.option("--stride", type=click.IntRange(1), default=1, show_default=True,
              help="Every STRIDE-th pair (before --limit; `darkfix eval --stride` selects the same): with 3 "
                   "ratios per photo, 4 takes each photo once, the ratios in turn.")
@click.option("--ratios", default=None, help="Only these exposure ratios, comma-separated.")
@click.option("--noise", "modes", type=click.Choice(["both", "blind", "oracle"]), default="both", show_default=True,
              help="BM3D's noise parameters: estimated on each frame (bm3d-blind), the manifest's (bm3d-oracle), "
                   "or both side by side.")
@click.option("--inverse", type=click.Choice(["exact", "closed-form"]), default="exact", show_default=True)
@click.option("--sigma", type=click.Choice(["auto", "manifest", "measured"]), default="auto", show_default=True,
              help="Signal-independent noise variance: auto = from the manifest when it records read_lambda, "
                   "else measured; manifest = read_sigma^2 (Gaussian assumed when lambda is unknown).")
@click.option("--profile", default="np", show_default=True, help="bm3d profile: np, refilter, high, ...")
@click.option("--bm3d-threads", type=click.IntRange(0, 256), default=0, show_default=True,
              help="BM3D threads (0 = all cores; only with the 'np' profile).")
@click.option("--threads", type=click.IntRange(1, 256), default=None, help="torch threads for the network.")
@click.option("--no-libraw", is_flag=True, help="Skip the un-denoised LibRaw baseline.")
@click.option("--json", "json_path", type=click.Path(path_type=Path, dir_okay=False), default=None)
@click.option("--markdown", "markdown_path", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Also write the summary as a Markdown table.")
def main(benchmark, weights, limit, stride, ratios, modes, inverse, sigma, profile, bm3d_threads, threads, no_libraw,
         json_path, markdown_path) -> None:
    """Blind and oracle VST + BM3D vs the network vs LibRaw on the first LIMIT pairs of a darkfix synth
    BENCHMARK."""
    import torch
    from rich.console import Console

    from darkfix import engine as engines

    if threads:
        torch.set_num_threads(threads)
    try:
        cases = ev.benchmark_cases(benchmark, ev.parse_ratios(ratios), limit, stride)
        for target in (json_path, markdown_path):
            if target is not None:
                ev.check_json_target(target)
        methods: list = []
        for w in weights:
            restorer, info = engines.load(w, engine="torch", device="cpu", precision="fp32")  # routed, as restore runs
            name = ev.network_name(info, [m.name for m in methods])
            methods.append(ev.NetworkMethod(name, restorer, info))
        bm3d_methods = [BM3DMethod(inverse=inverse, profile=profile, threads=bm3d_threads, sigma=sigma, blind=b)
                        for b in {"both": (True, False), "blind": (True,), "oracle": (False,)}[modes]]
        methods.extend(bm3d_methods)
        if not no_libraw:
            methods.append(ev.LibRawMethod())
        noise_notes = []

        def progress(line: str) -> None:
            noise_notes.append({m.name: dict(m.last) for m in bm3d_methods})
            notes = ", ".join(f"{m.name} K {m.last.get('K', float('nan')):.3g} sigma_eff "
                              f"{m.last.get('sigma_eff', float('nan')):.2f} DN" for m in bm3d_methods)
            click.echo(f"{line}  [{notes}]", err=True)

        t0 = time.perf_counter()
        report = ev.evaluate_cases(cases, methods, progress=progress)
        for row, note in zip(report["images"], noise_notes):
            row["bm3d_noise"] = note
        report = {"protocol": "synthetic", "source": str(benchmark), "wall_seconds": time.perf_counter() - t0,
                  **report}
    except DarkfixError as e:
        click.echo(f"bm3d_baseline: error: {e}", err=True)
        sys.exit(2)
    ev.print_report(report, Console() if sys.stdout.isatty() else Console(width=200))
    ev.save_report(report, json_path, markdown_path, click.echo)


if __name__ == "__main__":
    main()
