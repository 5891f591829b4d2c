"""Training on synthetic pairs: photos -> unprocessed, mosaiced, darkened, noisy raw -> network -> loss on
the final rendering. Each step's batch is drawn from a generator seeded by (seed, step), so that worker
processes can make batches ahead in any order and a resumed run continues exactly where it stopped
(checkpoints hold the model, optimiser and schedule).
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import re
import signal
import time
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from pytorch_msssim import ms_ssim, ssim

from . import synth
from .evaluate import psnr
from ..colour import bt709, render
from ..model import GUIDE_RADIUS, LambaNet
from ..tiling import TRANSPOSED_PLANES
from ..pipeline import IMAGE_SUFFIXES, RAW_SUFFIXES
from ..weights import ARCHITECTURE_NA, FINE_WIDTHS, INPUT_NOISE, save_weights


@dataclass
class TrainConfig:
    images: str
    out: str
    val: list[str] | None = None  # folders of validation photos (a training folder: its HELD_OUT photos)
    iterations: int = 20000
    batch: int = 8
    crop: int = 256
    lr: float = 3e-4
    seed: int = 0
    device: str = "cpu"
    checkpoint: str | None = None  # defaults to <out>.ckpt
    checkpoint_every: int = 250
    validate_every: int = 1000
    val_crops: int = 12
    msssim_from: float = 0.75  # fraction of the run after which the MS-SSIM term joins the L1 loss
    init: str | None = None  # weights to start from (fine-tuning) instead of a random initialisation
    plus: bool = False  # LambaNet(plus=True); `init` may then be paper-architecture weights
    noise_aware: bool = False  # LambaNet(noise_aware=True); `init` likewise
    fine_signed: bool = False  # LambaNet(fine_signed=True): the noise-aware fine path reads the signed input
    fine_widths: tuple[int, int] = FINE_WIDTHS  # LambaNet(fine_widths=...); `init` may be narrower
    fine_only: bool = False  # train the noise-aware finest-scale path alone, the rest kept as `init` has it
    guide_radius: int = GUIDE_RADIUS  # train through model.guide_gain of this radius (0: none)
    precision: str = "auto"  # network arithmetic: fp32, bf16 (mixed: fp32 weights and loss) or auto
    max_seconds: float | None = None  # stop (checkpointed, resumable) after this long in this call
    own_sensor: dict | None = None  # synth.OwnSensor's fields: every pair from that one sensor (`darkfix tune`)
    tuned_for: dict | None = None  # what the weights' metadata says they were tuned for (profile, camera)
    validate_start: bool = False  # validate the starting weights first: later weights must beat them
    local_weight: float = 0.0  # of the local-colour term in `loss_fn` (0: the loss v5 trained with)
    colour_patches: float = 0.0  # share of the crops replaced by scenes of saturated colour (synth.colour_patches)
    black_spread: float = synth.BLACK_SPREAD  # bound of the broad half's extra black-level error (synth.synthesise)
    workers: int = 0  # processes that synthesise batches ahead (0: the training process itself)
    half_crops: float = 0.0  # share of the steps whose batch is 4 x as many crops of half the side
    teacher: str | None = None  # weights whose self-ensemble (`ensemble_of`) is a second target
    teacher_weight: float = 0.5  # of the loss towards the teacher's self-ensemble
    position_weight: float = 0.0  # of the output-position term in `loss_fn` (0: the loss v12 trained with)
    balance_crops: bool = False  # `loss_fn`'s per-crop weights (False: the loss v13 trained with)
    relative_noise: tuple[float, float] | None = None  # synth.synthesise's: pairs (and validation) of this noise only


# Held out of training for a detail-rich benchmark and validation: every fourth Urban100 photograph
# (img_004, img_008, ..., img_100: 25 photos of buildings, dense edges and fine texture).
HELD_OUT = re.compile(r"urban100_img_\d*(00|04|08|12|16|20|24|28|32|36|40|44|48|52|56|60|64|68|72|76|80|84|88|92|96)\.")


def list_images(folder: str | os.PathLike, part: str = "all") -> list[Path]:
    """The photos of a folder, sorted; `part` "train" leaves out the HELD_OUT ones, "held-out" keeps only them."""
    paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES | RAW_SUFFIXES)
    if part != "all":
        paths = [p for p in paths if bool(HELD_OUT.match(p.name)) == (part == "held-out")]
    if not paths:
        which = {"all": "", "train": " that training may use (Urban100's held-out fourth is left out)",
                 "held-out": " among the held-out Urban100 photos"}.get(part, f" ({part})")
        raise FileNotFoundError(f"{folder}: no images found{which}")
    return paths


def load_photo(path: Path, min_side: int) -> torch.Tensor:
    """uint8 (3, H, W); photos large enough are halved first, which hides JPEG and noise residue. A raw
    file is LibRaw's rendering of it (camera white balance, half size: no demosaicing)."""
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        import rawpy

        with rawpy.imread(str(path)) as raw:
            img = Image.fromarray(raw.postprocess(half_size=True, use_camera_wb=True, output_bps=8))
    else:
        img = Image.open(path).convert("RGB")
    if min(img.size) >= 2 * min_side:
        img = img.resize((img.width // 2, img.height // 2), Image.Resampling.LANCZOS)
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).contiguous()


class PhotoPool:
    """All training photos in memory as uint8; draws random crops with flips and 90-degree turns."""

    def __init__(self, folder: str | os.PathLike, crop: int) -> None:
        self.crop = crop
        paths = list_images(folder, "train")
        # photos at least half a crop on their short side serve the half-side batches (`batch(half=True)`)
        self.everything = [p for p in (load_photo(path, crop) for path in paths) if min(p.shape[1:]) >= crop // 2]
        self.photos = [p for p in self.everything if min(p.shape[1:]) >= crop]
        if not self.photos:
            raise ValueError(f"{folder}: no photo is at least {crop} px on its short side")

    def batch(self, n: int, g: torch.Generator, half: bool = False) -> torch.Tensor:
        """n random crops of the crop's side from the photos that large, or with `half` of half the side from
        every photo at least that large (at 512 px, BSDS500's 481 x 321 photos join only so)."""
        photos, side = (self.everything, self.crop // 2) if half else (self.photos, self.crop)
        out = []
        for _ in range(n):
            img = photos[int(torch.randint(len(photos), (1,), generator=g))]
            _, h, w = img.shape
            y = int(torch.randint(h - side + 1, (1,), generator=g))
            x = int(torch.randint(w - side + 1, (1,), generator=g))
            c = img[:, y : y + side, x : x + side]
            t = torch.randint(8, (1,), generator=g).item()
            # flips and turns happen before mosaicing, so the CFA stays consistent
            if t & 1:
                c = c.flip(2)
            if t & 2:
                c = c.flip(1)
            if t & 4:
                c = c.transpose(1, 2)
            out.append(c)
        return torch.stack(out).float() / 255.0


INPUT = "balanced"  # what the network of weights trained here sees (metadata key "input")


@dataclass
class Pair:
    """A synthetic batch: the network input and what its rendering must look like.

    The input is white-balanced before the network and the target is the balanced camera RGB, so the
    network never has to know a camera's white balance (colour survives any sensor) and clipping the
    balanced input at 1 is what makes highlights white.
    """

    inputs: torch.Tensor  # (N, 4, h, w) packed, amplified by the true ratio, white-balanced, clipped at 1
    target_linear: torch.Tensor  # (N, 3, H, W) clean camera RGB, white-balanced, clipped at 1
    rgb_cam: torch.Tensor
    ratio: torch.Tensor

    def target(self) -> torch.Tensor:
        return render(self.target_linear, torch.ones(3), self.rgb_cam)

    def render(self, pred: torch.Tensor) -> torch.Tensor:
        return render(pred, torch.ones(3), self.rgb_cam.to(pred.device))

    def to(self, device: torch.device) -> Pair:
        return Pair(self.inputs.to(device), self.target_linear.to(device), self.rgb_cam.to(device), self.ratio)


def pair_from(s: synth.Synthetic, device: torch.device, g: torch.Generator | None = None) -> Pair:
    """The pair's input holds the four packed planes and their noise map (`Synthetic.noise_map`, its terms
    perturbed by `g` where given): eight channels, of which networks that are not noise-aware read four."""
    x = s.network_input()
    x = torch.cat([x, s.noise_map(x, g=g)], dim=1)
    return Pair(x.to(device), s.target_balanced().to(device), s.camera.rgb_cam.to(device), s.ratio)


def own_sensor_pair(srgb: torch.Tensor, g: torch.Generator, device: torch.device, own: synth.OwnSensor) -> Pair:
    """A batch all from one measured sensor (`darkfix tune`): its levels and noise, any camera colour, the
    exposure draws of the broad half."""
    return pair_from(synth.synthesise(srgb, g, broad=True, own=own), device, g)


def make_pair(srgb: torch.Tensor, g: torch.Generator, device: torch.device,
              black_spread: float = synth.BLACK_SPREAD, relative_noise: tuple[float, float] | None = None) -> Pair:
    """Half the batch from the Sony A7S II (SID's camera: its benchmarks are the reference), half from the
    broad range of sensors; both with the exposure draws that push highlights past white and half of each
    with colours beyond the photographs' gamut (`synth.widen_gamut`). The noise maps are off by up to 30 %
    (estimates at restore are). `black_spread`: synth.synthesise's, for the broad half; `relative_noise`
    likewise, for both."""
    half = srgb.shape[0] // 2
    sony = synth.synthesise(None, g, broad=False, exposure=synth.sample_exposure(half, g),
                            scene=synth.widen_gamut(synth.make_scene(srgb[:half], g, broad=False), g),
                            relative_noise=relative_noise)
    broad = synth.synthesise(None, g, broad=True, scene=synth.widen_gamut(synth.make_scene(srgb[half:], g), g),
                             black_spread=black_spread, relative_noise=relative_noise)
    a, b = pair_from(sony, device, g), pair_from(broad, device, g)
    return Pair(*(torch.cat([x, y]) for x, y in ((a.inputs, b.inputs), (a.target_linear, b.target_linear),
                                                  (a.rgb_cam, b.rgb_cam), (a.ratio, b.ratio))))


@dataclass
class BatchRecipe:
    """Step number -> that step's training batch (on the CPU), from a generator seeded by (seed, step)."""

    pool: PhotoPool
    batch: int
    seed: int
    own: synth.OwnSensor | None = None
    patches: float = 0.0  # synth.colour_patches' fraction (0: the photos alone, and the same draws as before it)
    black_spread: float = synth.BLACK_SPREAD
    half_crops: float = 0.0  # share of the steps with 4 x batch crops of half the side (PhotoPool.batch(half=True))
    relative_noise: tuple[float, float] | None = None

    def __call__(self, step: int) -> Pair:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        # drawn only when asked for, so that runs without half crops keep their earlier batches
        half = bool(self.half_crops) and float(torch.rand(1, generator=g)) < self.half_crops
        photos, cpu = self.pool.batch(4 * self.batch if half else self.batch, g, half), torch.device("cpu")
        photos = synth.colour_patches(photos, g, self.patches)
        if self.own is not None:
            return own_sensor_pair(photos, g, cpu, self.own)
        return make_pair(photos, g, cpu, self.black_spread, self.relative_noise)


_RECIPE: BatchRecipe | None = None  # a `Batches` worker's recipe, set when the worker starts


def _start_worker(recipe: BatchRecipe) -> None:
    global _RECIPE
    _RECIPE = recipe  # forked: inherited, not pickled
    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the training process's to handle


def _make(step: int) -> Pair:
    assert _RECIPE is not None
    return _RECIPE(step)


class Batches:
    """The training batches, step by step: made in this process when asked, or with `workers` > 0 by that
    many forked single-threaded processes, up to two per worker ahead (never past `stop`). On a GPU host
    synthesis is the bottleneck (the first H100 run kept the GPU 85 % idle with 16 threads synthesising),
    and one thread per batch scales where torch's threads over one batch do not."""

    def __init__(self, recipe: BatchRecipe, workers: int, stop: int) -> None:
        self.recipe, self.workers, self.stop, self.ahead = recipe, workers, stop, 0
        self.pending: dict[int, Future] = {}
        self.pool: ProcessPoolExecutor | None = None
        if workers:
            self.pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                                            initializer=_start_worker, initargs=(recipe,))

    def get(self, step: int) -> Pair:
        if self.pool is None:
            return self.recipe(step)
        self.ahead = max(self.ahead, step)
        while self.ahead < min(step + 2 * self.workers, self.stop):
            self.pending[self.ahead] = self.pool.submit(_make, self.ahead)
            self.ahead += 1
        return self.pending.pop(step).result()

    def __enter__(self) -> Batches:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


CAMERA_WEIGHT = 0.5  # of the camera-RGB term in `loss_fn`
LOCAL_SIZE = 8  # px: the local-colour term compares means over LOCAL_SIZE x LOCAL_SIZE blocks
BALANCE_CAP = 4.0  # with `balance`, a crop weighs at most this many times one at the batch's mean error
# The output-position term: the last layer's pixel shuffle gives each of the 2 x 2 output positions its own
# weights, fine_up's 4 x 4 ones at the next scale; a period of 4 px holds both (the 1/8 branch's shuffle
# into packed resolution repeats every 8 px, which this period sees only in part: it is smoother there).
POSITION_PERIOD = 4
POSITION_BLOCK = 32  # px: each position's error is averaged over such blocks (64 pixels of it per block)


def position_bias(error: torch.Tensor) -> torch.Tensor:
    """Per POSITION_BLOCK block, each of the POSITION_PERIOD x POSITION_PERIOD output positions' mean error less
    the block's mean error: (N, C, H // B, P, W // B, P), ragged edges left out. What repeats with the period (a
    grid over flat areas) and nearly nothing of the noise, which 64 pixels per mean average away."""
    n, c, h, w = error.shape
    b, p = POSITION_BLOCK, POSITION_PERIOD
    if h < b or w < b:
        raise ValueError(f"the output-position term needs crops of at least {b} x {b} px (not {h} x {w})")
    h, w = h // b * b, w // b * b
    means = error[..., :h, :w].reshape(n, c, h // b, b // p, p, w // b, b // p, p).mean((3, 6))
    return means - means.mean((3, 5), keepdim=True)


def crop_weights(errors: torch.Tensor) -> torch.Tensor:
    """Per-crop weights proportional to the inverse of each crop's own error (detached, mean 1): weighted so,
    the L1 terms' gradient is that of the batch's mean log L1 error, the L1 analogue of what a mean PSNR over
    frames rewards. Plain L1 weighs every crop alike, a mean PSNR each by the inverse of its error, so
    low-noise and flat crops, where grain shows and BM3D is strongest, count for less than PSNR would have
    them. An error below the batch's mean over BALANCE_CAP counts as that (a black or clipped crop must not
    take the whole batch's weight)."""
    errors = errors.detach()
    inverse = 1.0 / errors.clamp_min(max(float(errors.mean()) / BALANCE_CAP, 1e-12))
    return inverse / inverse.mean()


def loss_fn(pred_linear: torch.Tensor, pair: Pair, with_msssim: bool = True,
            local_weight: float = 0.0, position_weight: float = 0.0, balance: bool = False) -> torch.Tensor:
    """L1 + 0.2 (1 - MS-SSIM) on the final sRGB rendering (the paper's loss, moved after colour), plus L1 on
    the balanced camera RGB under the same curve: the rendering clips colours outside sRGB, which leaves
    the network free to turn a magenta light red where both render alike.

    With `local_weight`, also L1 between 8 x 8 block means of the camera RGB (same curve): per pixel, a
    dark area's noise outweighs a bias in its colour (dark green grass rendered brown costs little), while
    block means are nearly noise-free, so the bias is what this term sees.

    With `position_weight`, also the mean square of `position_bias` of the camera RGB's error (same curve): a
    bias between the output's positions that changes with the frame is a faint periodic grid over flat areas,
    which per pixel the noise outweighs. Squared, not L1: its gradient's expectation is the bias itself however
    noisy the block means (L1's would be their median's sign), and an L1 loss under noise of a skew that differs
    between positions (Bayer sites, clipping at black) is what leaves such a bias.

    With `balance`, each crop's two L1 terms are weighted by `crop_weights`.

    MS-SSIM costs twice the network on a CPU, so the early part of a run may use L1 alone.
    """
    pred = pair.render(pred_linear)
    target = pair.target()
    camera = pred_linear.clamp(0.0, 1.0)
    camera_curved, target_curved = bt709(camera), bt709(pair.target_linear)
    per_crop = ((pred - target).abs().flatten(1).mean(1)
                + CAMERA_WEIGHT * (camera_curved - target_curved).abs().flatten(1).mean(1))
    loss = (crop_weights(per_crop) * per_crop).mean() if balance else per_crop.mean()
    if local_weight:
        loss = loss + local_weight * F.l1_loss(bt709(F.avg_pool2d(camera, LOCAL_SIZE)),
                                               bt709(F.avg_pool2d(pair.target_linear, LOCAL_SIZE)))
    if position_weight:
        loss = loss + position_weight * position_bias(camera_curved - target_curved).square().mean()
    if with_msssim:
        loss = loss + 0.2 * (1.0 - ms_ssim(pred, target, data_range=1.0))
    return loss


def ensemble_of(model: LambaNet, inputs: torch.Tensor) -> torch.Tensor:
    """The self-ensemble `darkfix restore --ensemble` runs: the network on the packed input and on its
    transpose (an exact packed frame with its greens swapped: tiling.TRANSPOSED_PLANES), averaged."""
    planes = list(TRANSPOSED_PLANES[: inputs.shape[1]])
    other = model(inputs[:, planes].transpose(-1, -2)).transpose(-1, -2)
    return 0.5 * (model(inputs) + other)


def validation_pairs(folders: list[str], count: int, crop: int = 512,
                     own: synth.OwnSensor | None = None,
                     relative_noise: tuple[float, float] | None = None) -> list[Pair]:
    """A fixed set of validation crops at ratios 100, 250 and 300 (same seed every run), `count` from each
    folder (a training folder gives its HELD_OUT photos); every other crop from the broad range of
    sensors, the rest from the Sony A7S II; with `own`, all from that sensor; with `relative_noise`, each at
    a ratio drawn for a noise in that range (synth.synthesise)."""
    g = torch.Generator().manual_seed(1234)
    pairs = []
    paths = []
    for folder in folders:
        found = list_images(folder)
        held = [p for p in found if HELD_OUT.match(p.name)]
        paths += (held or found)[:count]
    for i, path in enumerate(paths):
        img = Image.open(path).convert("RGB")
        w, h = img.size
        s = min(crop, w, h) // 32 * 32
        box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
        srgb = torch.from_numpy(np.asarray(img.crop(box)).copy()).permute(2, 0, 1)[None].float() / 255.0
        broad = i % 2 == 1
        ratio = torch.tensor([(100.0, 250.0, 300.0)[i % 3]])
        if own is not None:
            broad, ratio = True, (ratio * synth.ratio_limit(own.sensor(1))).clamp_min(4.0)
        elif broad:
            ratio = ratio / 4
        pairs.append(pair_from(synth.synthesise(srgb, g, broad=broad, ratio=None if relative_noise else ratio,
                                                exposure=torch.ones(1), own=own, relative_noise=relative_noise),
                               torch.device("cpu")))
    return pairs


@torch.no_grad()
def validate(model: LambaNet, pairs: list[Pair], device: torch.device) -> tuple[float, float]:
    model.eval()
    ps, ss = [], []
    for p in pairs:
        pred = p.render(model(p.inputs.to(device)))
        target = p.target().to(device)
        ps.append(psnr(pred[0].permute(1, 2, 0).cpu().numpy(), target[0].permute(1, 2, 0).cpu().numpy()))
        ss.append(ssim(pred, target, data_range=1.0).item())
    model.train()
    return float(np.mean(ps)), float(np.mean(ss))


def training_dtype(name: str, device: torch.device) -> torch.dtype:
    """The network's arithmetic while training: 'auto' -> bf16 on CUDA and on CPUs that run it natively
    (about twice as fast a step with AMX), fp32 elsewhere; weights, optimiser and loss stay fp32."""
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16
        from ..inference import native_bf16

        return torch.bfloat16 if native_bf16()[0] else torch.float32
    if name not in ("fp32", "bf16"):
        raise ValueError(f"unknown training precision {name!r} (expected fp32, bf16 or auto)")
    return torch.bfloat16 if name == "bf16" else torch.float32


def widen_fine(model: LambaNet, start: LambaNet) -> None:
    """Load `start` into `model`, whose finest-scale path is as wide or wider: the new channels' outgoing
    weights are zero, so `model` computes what `start` computes and training grows them from there."""
    (full0, half0), (full, half) = start.fine_widths, model.fine_widths
    if full < full0 or half < half0:
        raise ValueError(f"fine widths {full},{half} are narrower than the starting weights' {full0},{half0}")
    # each layer's old input channels in the new layout (pixel_(un)shuffle keep a channel's 4 together)
    inputs = {"fine_in.0": range(20), "fine_down.0": range(4 * full0), "fine_mid.0": range(half0),
              "fine_up.0": range(half0), "fine_out": [*range(full0), *range(full, full + full0)]}
    target = model.state_dict()
    for name, tensor in start.state_dict().items():
        layer = name.rpartition(".")[0]
        new = target[name]
        if layer not in inputs or new.shape == tensor.shape:
            new.copy_(tensor)
        elif name.endswith("weight_v"):  # old outputs read old inputs only (fine_out's 12 are all old: the new
            # channels reach the output through zero weights); new outputs keep their random init
            new[: tensor.shape[0]] = 0
            new[: tensor.shape[0], list(inputs[layer])] = tensor
        else:  # weight_g, bias: per output channel
            new[: tensor.shape[0]] = tensor
    model.load_state_dict(target)


def _lr_at(step: int, cfg: TrainConfig) -> float:
    warm = min(500, cfg.iterations // 10)
    if step < warm:
        return cfg.lr * (step + 1) / warm
    t = (step - warm) / max(1, cfg.iterations - warm)
    return 1e-6 + 0.5 * (cfg.lr - 1e-6) * (1.0 + math.cos(math.pi * min(t, 1.0)))


def _save_checkpoint(path: Path, state: dict) -> None:
    tmp = path.with_name(f".{path.name}.part")
    torch.save(state, tmp)
    os.replace(tmp, path)


def train(cfg: TrainConfig, resume: str | None = None, report: Callable[[dict], None] | None = None) -> dict:
    """Run (or resume) training; writes the best-validated weights to cfg.out and returns a summary."""
    device = torch.device(cfg.device)
    ckpt_path = Path(cfg.checkpoint or f"{cfg.out}.ckpt")
    torch.manual_seed(cfg.seed)
    pool = PhotoPool(cfg.images, cfg.crop)
    own = synth.OwnSensor(**cfg.own_sensor) if cfg.own_sensor else None
    model = LambaNet(plus=cfg.plus, guide_radius=cfg.guide_radius, noise_aware=cfg.noise_aware,
                     fine_signed=cfg.fine_signed, fine_widths=tuple(cfg.fine_widths)).to(device).train()
    if cfg.fine_only and not cfg.noise_aware:
        raise ValueError("only the noise-aware network has a finest-scale path to train alone")
    for name, p in model.named_parameters():
        p.requires_grad_(not cfg.fine_only or name.startswith("fine_"))
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    step, best, history, seconds = 0, -1.0, [], 0.0
    if cfg.init and not resume:
        from ..weights import load_weights

        start = load_weights(cfg.init)[0]
        if start.architecture not in (model.architecture, LambaNet().architecture):
            raise ValueError(f"{cfg.init}: {start.architecture} weights cannot start a {model.architecture} network")
        if start.architecture == model.architecture == ARCHITECTURE_NA and start.fine_widths != model.fine_widths:
            widen_fine(model, start)
        else:  # paper weights into a wider network: its extra layers keep their identity initialisation
            model.load_state_dict(start.state_dict(), strict=start.architecture == model.architecture)
    if resume:
        # our own checkpoints hold only tensors and plain values: no arbitrary unpickling needed
        state = torch.load(resume, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step, best, history, seconds = state["step"], state["best"], state["history"], state["seconds"]
    val_pairs = validation_pairs(cfg.val, cfg.val_crops, own=own, relative_noise=cfg.relative_noise) if cfg.val else []
    teacher = None
    if cfg.teacher:
        from ..weights import load_weights

        teacher = load_weights(cfg.teacher)[0].to(device).eval()
        if teacher.architecture != model.architecture:
            raise ValueError(f"{cfg.teacher}: a {teacher.architecture} teacher for a {model.architecture} network")
        teacher.requires_grad_(False)
    started, last_loss = time.time() - seconds, float("nan")
    call_started = time.time()

    def checkpoint() -> None:
        _save_checkpoint(ckpt_path, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                                     "step": step, "best": best,
                                     "history": history, "seconds": time.time() - started,
                                     "config": json.dumps(asdict(cfg))})

    msssim_step = int(cfg.msssim_from * cfg.iterations)
    dtype = training_dtype(cfg.precision, device)

    def export(val_psnr: float, val_ssim: float) -> None:
        save_weights(model, cfg.out, {
            "output": "camera",
            "input": INPUT_NOISE if cfg.noise_aware else INPUT,
            "guide_radius": str(cfg.guide_radius),  # restoring applies what training went through, 0 too
            "amplification": "trained with the true exposure ratio times an exposure of 0.6-6",
            "training": {"iterations": step, "batch": cfg.batch, "crop": cfg.crop, "lr": cfg.lr,
                         "loss": f"L1 on the sRGB rendering + {CAMERA_WEIGHT} L1 on the balanced camera RGB" + (
                             ", each crop's weighted by the inverse of its own (at most "
                             f"{BALANCE_CAP:g} x a crop's at the batch's mean)" if cfg.balance_crops else "") + (
                             f" + {cfg.local_weight:g} L1 on its {LOCAL_SIZE} x {LOCAL_SIZE} block means"
                             if cfg.local_weight else "") + (
                             f" + {cfg.position_weight:g} x the mean square of its output positions' bias "
                             f"({POSITION_PERIOD} px period, {POSITION_BLOCK} px blocks)"
                             if cfg.position_weight else "") + (
                             f"; + 0.2 (1 - MS-SSIM) from step {msssim_step}" if step > msssim_step else "") + (
                             f"; + {cfg.teacher_weight:g} x the L1 terms towards "
                             f"{Path(cfg.teacher).name}'s self-ensemble"
                             if cfg.teacher else ""),
                         "data": "synthetic (unprocess + ELD noise, broad sensors) from " + Path(cfg.images).name + (
                             f"; {cfg.colour_patches:g} of the crops scenes of saturated colour (synth.colour_patches)"
                             if cfg.colour_patches else "") + (
                             f"; black-level error of the broad half bounded by {cfg.black_spread:g} DN"
                             if cfg.black_spread != synth.BLACK_SPREAD else "") + (
                             f"; {cfg.half_crops:g} of the steps {4 * cfg.batch} x {cfg.crop // 2} px crops"
                             " from every photo" if cfg.half_crops else "") + (
                             "; each pair's ratio the one that gives a mid-grey a relative noise of "
                             f"{cfg.relative_noise[0]:g}-{cfg.relative_noise[1]:g} (log-uniform)"
                             if cfg.relative_noise else ""),
                         "init": Path(cfg.init).name if cfg.init else None,
                         "seconds": round(time.time() - started), "device": cfg.device,
                         "precision": str(dtype).removeprefix("torch.")},
            "validation": {"psnr": round(val_psnr, 3), "ssim": round(val_ssim, 4), "crops": len(val_pairs)},
            **({"tuned_for": cfg.tuned_for} if cfg.tuned_for else {}),
        })

    if cfg.validate_start and val_pairs and step == 0:
        vp, vs = validate(model, val_pairs, device)
        history.append({"step": 0, "psnr": vp, "ssim": vs})
        best = vp
        export(vp, vs)
        if report:
            report({"step": 0, "loss": float("nan"), "lr": 0.0, "elapsed": 0.0, "val_psnr": vp, "val_ssim": vs})
    recipe = BatchRecipe(pool, cfg.batch, cfg.seed, own, cfg.colour_patches, cfg.black_spread, cfg.half_crops,
                         cfg.relative_noise)
    with Batches(recipe, cfg.workers, cfg.iterations) as batches:
        while step < cfg.iterations:
            for group in opt.param_groups:
                group["lr"] = _lr_at(step, cfg)
            pair = batches.get(step).to(device)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                pred = model(pair.inputs)
            loss = loss_fn(pred.float(), pair, with_msssim=step >= msssim_step, local_weight=cfg.local_weight,
                           position_weight=cfg.position_weight, balance=cfg.balance_crops)
            if teacher is not None:  # distillation: the teacher's self-ensemble, twice its network, in one pass
                with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                    taught = ensemble_of(teacher, pair.inputs).float().clamp(0.0, 1.0)
                loss = loss + cfg.teacher_weight * loss_fn(pred.float(), Pair(pair.inputs, taught, pair.rgb_cam,
                                                                              pair.ratio), with_msssim=False)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            last_loss = loss.item() if not math.isfinite(last_loss) else 0.98 * last_loss + 0.02 * loss.item()
            event = {"step": step, "loss": last_loss, "lr": opt.param_groups[0]["lr"],
                     "elapsed": time.time() - started}
            out_of_time = cfg.max_seconds is not None and time.time() - call_started >= cfg.max_seconds
            if val_pairs and (step % cfg.validate_every == 0 or step == cfg.iterations or out_of_time):
                vp, vs = validate(model, val_pairs, device)
                history.append({"step": step, "psnr": vp, "ssim": vs})
                event.update(val_psnr=vp, val_ssim=vs)
                if vp > best:
                    best = vp
                    export(vp, vs)
            if step % cfg.checkpoint_every == 0 or step == cfg.iterations or out_of_time:
                checkpoint()
            if report:
                report(event)
            if out_of_time:
                break
    if not val_pairs:  # nothing to pick the best by: the latest weights, also when out of time
        export(float("nan"), float("nan"))
    return {"steps": step, "finished": step == cfg.iterations, "best_val_psnr": best, "history": history,
            "seconds": time.time() - started}
