"""Synthetic low-light raw pairs from clean sRGB photos: unprocessing (Brooks et al. 2019) and a
physics-based noise model (Wei et al., ELD 2020). Batched torch code that runs on the training device;
every random draw comes from one torch.Generator so that a run is reproducible and resumable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..colour import XYZ_FROM_SRGB
from ..noise import MID_GREY, sigma_planes
from ..packing import BALANCED_CEILING, FILL_CELL, OVER_WHITE

BLACK, WHITE = 512.0, 16383.0  # Sony A7S II levels: the reference sensor of the ELD calibration
SONY_RANGE = WHITE - BLACK  # the ELD parameters are in DN of this range; other sensors scale them

# XYZ -> camera matrices (DNG ColorMatrix, D65) of real cameras; random convex mixes make new "cameras".
CAMERA_XYZ = torch.tensor(
    [
        [[1.0234, -0.2969, -0.2266], [-0.5625, 1.6328, -0.0469], [-0.0703, 0.2188, 0.6406]],
        [[0.4913, -0.0541, -0.0202], [-0.6130, 1.3513, 0.2906], [-0.1564, 0.2151, 0.7183]],
        [[0.8380, -0.2630, -0.0639], [-0.2887, 1.0725, 0.2496], [-0.0627, 0.1427, 0.5438]],
        [[0.6596, -0.2079, -0.0562], [-0.4782, 1.3016, 0.1933], [-0.0970, 0.1581, 0.5181]],
        [[0.5838, -0.1430, -0.0246], [-0.3497, 1.1477, 0.2297], [-0.0748, 0.1885, 0.5778]],  # Sony A7S II
        [[0.6722, -0.0635, -0.0963], [-0.4287, 1.2460, 0.2028], [-0.0908, 0.2162, 0.5668]],  # Canon 5D Mk III
        [[1.0405, -0.3755, -0.1270], [-0.5461, 1.3787, 0.1793], [-0.1040, 0.2015, 0.6785]],  # Nikon D850
        [[0.5271, -0.0712, -0.0347], [-0.6153, 1.3653, 0.2763], [-0.1601, 0.2366, 0.7242]],  # Sony A7 III
    ],
    dtype=torch.float64,
)
TUKEY_LAMBDAS = torch.tensor([0.114, 0.129, 0.057, 0.043, 0.0, -0.043, -0.057, -0.086, -0.114, -0.143, -0.129])


@dataclass
class Camera:
    """The sampled colour of a synthetic camera, per image of a batch."""

    cam_xyz: torch.Tensor  # (N, 3, 3) XYZ -> camera (the DNG's ColorMatrix1)
    rgb_cam: torch.Tensor  # (N, 3, 3) camera -> linear sRGB, as LibRaw derives it
    wb: torch.Tensor  # (N, 3) white-balance multipliers (R, 1, B)


def _uniform(n: int, lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64)


def _log_uniform(n: int, lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    return torch.exp(_uniform(n, math.log(lo), math.log(hi), g))


# Red and blue white-balance gains: Brooks et al.'s ranges (the training cameras), and the span of real
# sensors (phones and Raspberry Pi cameras sit near 1.1-1.6, daylight DSLRs near 2).
WB_SONY = ((1.9, 2.4), (1.5, 1.9))
WB_BROAD = (1.0, 3.0)


def sample_camera(n: int, g: torch.Generator, broad: bool = True) -> Camera:
    """Random cameras: a convex mix of real colour matrices and white balance in the broad range
    (log-uniform in [1, 3] for red and blue), or Brooks et al.'s narrower one with `broad=False`."""
    weights = torch.rand(n, len(CAMERA_XYZ), generator=g, dtype=torch.float64) ** 2
    weights = weights / weights.sum(1, keepdim=True)
    cam_xyz = torch.einsum("nk,kij->nij", weights, CAMERA_XYZ)
    cam_rgb = cam_xyz @ torch.from_numpy(XYZ_FROM_SRGB)
    cam_rgb = cam_rgb / cam_rgb.sum(-1, keepdim=True)
    if broad:
        red, blue = _log_uniform(n, *WB_BROAD, g), _log_uniform(n, *WB_BROAD, g)
    else:
        red, blue = _uniform(n, *WB_SONY[0], g), _uniform(n, *WB_SONY[1], g)
    wb = torch.stack([red, torch.ones(n, dtype=torch.float64), blue], 1)
    return Camera(cam_xyz.float(), torch.linalg.inv(cam_rgb).float(), wb.float())


def unprocess(srgb: torch.Tensor, camera: Camera, g: torch.Generator) -> torch.Tensor:
    """sRGB (N, 3, H, W) in [0, 1] -> plausible linear camera RGB in [0, 1] for `camera`.

    White in the photo stays white after the camera's white balance: it becomes (1/wb_R, 1, 1/wb_B)
    times the brightness in camera RGB, as a real white object below saturation does. (Protecting
    near-white pixels from the inverse white balance, as Brooks et al. do, turns them pink once the
    white balance is applied again.)
    """
    n = srgb.shape[0]
    x = srgb.clamp(0.0, 1.0)
    x = 0.5 - torch.sin(torch.asin((1.0 - 2.0 * x).clamp(-1.0, 1.0)) / 3.0)  # inverse smoothstep tone curve
    x = x.clamp_min(1e-8) ** 2.2
    cam_rgb = torch.linalg.inv(camera.rgb_cam.double()).float().to(x.device)
    x = torch.einsum("nij,njhw->nihw", cam_rgb, x).clamp(0.0, 1.0)
    brightness = (0.8 + 0.1 * torch.randn(n, generator=g, dtype=torch.float64)).clamp(0.5, 1.0)
    gains = (brightness[:, None] / camera.wb.double()).float().to(x.device)[:, :, None, None]
    return x * gains


def mosaic(camera_rgb: torch.Tensor) -> torch.Tensor:
    """Linear camera RGB (N, 3, H, W), H and W even -> packed RGGB (N, 4, H/2, W/2)."""
    r = camera_rgb[:, 0, 0::2, 0::2]
    g1 = camera_rgb[:, 1, 0::2, 1::2]
    g2 = camera_rgb[:, 1, 1::2, 0::2]
    b = camera_rgb[:, 2, 1::2, 1::2]
    return torch.stack([r, g1, g2, b], 1)


def packed_wb(wb: torch.Tensor) -> torch.Tensor:
    """(N, 3) R, G, B multipliers -> (N, 4, 1, 1) for the packed R, G1, G2, B planes."""
    return wb[:, [0, 1, 1, 2], None, None]


@dataclass
class Sensor:
    """Per-image ADC levels of a synthetic sensor, in its own DN."""

    black: torch.Tensor  # (N,)
    white: torch.Tensor  # (N,)

    @property
    def range(self) -> torch.Tensor:
        return self.white - self.black


BIT_DEPTHS = (8, 10, 12, 14, 16)
_BIT_WEIGHTS = torch.tensor([0.1, 0.15, 0.25, 0.35, 0.15])


def sony_sensor(n: int) -> Sensor:
    return Sensor(torch.full((n,), BLACK), torch.full((n,), WHITE))


def sample_sensor(n: int, g: torch.Generator) -> Sensor:
    """Bit depths 8-16; black at 0 (clamped: the noise below it is lost) for a fifth, else up to 10 % of
    white, as real sensors have."""
    bits = torch.tensor(BIT_DEPTHS, dtype=torch.float64)[torch.multinomial(_BIT_WEIGHTS, n, True, generator=g)]
    white = 2.0**bits - 1.0
    frac = torch.where(torch.rand(n, generator=g, dtype=torch.float64) < 0.2, torch.zeros(n, dtype=torch.float64),
                       _uniform(n, 0.005, 0.1, g))
    return Sensor(torch.round(frac * white).float(), white.float())


def ratio_limit(sensor: Sensor) -> torch.Tensor:
    """A sensor with fewer levels than the Sony's cannot be darkened as far and still hold a picture:
    1 at 14 bits and above, about 0.08 at 8 bits (ratio 300 becomes ~25)."""
    return (sensor.range / SONY_RANGE).clamp(max=1.0) ** 0.6


@dataclass
class NoiseParams:
    """Per-image noise parameters in DN (after black subtraction)."""

    K: torch.Tensor  # system gain, DN per electron
    read_sigma: torch.Tensor
    read_lambda: torch.Tensor  # Tukey-lambda shape; NaN means Gaussian read noise
    row_sigma: torch.Tensor
    bias: torch.Tensor  # (N, 4) per-channel black-level error
    col_sigma: torch.Tensor | None = None  # column noise (a sensor profile measures it); none by default


def sample_noise(n: int, g: torch.Generator, broad: float = 0.25) -> NoiseParams:
    """Sony A7S II calibration (ELD); a fraction `broad` of images gets a wider virtual-camera gain range."""
    sony = _uniform(n, math.log(0.0939), math.log(6.0106), g)
    wide = _uniform(n, math.log(0.1), math.log(30.0), g)
    log_k = torch.where(torch.rand(n, generator=g, dtype=torch.float64) < broad, wide, sony)
    tukey = torch.rand(n, generator=g) < 0.5
    z = torch.randn(n, 2, generator=g, dtype=torch.float64)
    sig_tl = torch.exp(0.4621 * log_k + 0.5657 + 0.2634 * z[:, 0])
    sig_g = torch.exp(0.5407 * log_k + 1.2182 + 0.2675 * z[:, 0])
    row = torch.exp(0.5275 * log_k - 0.5917 + 0.2943 * z[:, 1])
    lam = TUKEY_LAMBDAS[torch.randint(len(TUKEY_LAMBDAS), (n,), generator=g)].double()
    return NoiseParams(
        K=torch.exp(log_k).float(),
        read_sigma=torch.where(tukey, sig_tl, sig_g).float(),
        read_lambda=torch.where(tukey, lam, torch.full_like(lam, float("nan"))).float(),
        row_sigma=row.float(),
        bias=(0.5 * torch.randn(n, 4, generator=g)).float(),
    )


def ratio_for_noise(rel: torch.Tensor, p: NoiseParams, sensor: Sensor) -> torch.Tensor:
    """The exposure ratios at which a mid-grey (`noise.MID_GREY` after amplification) has relative noise `rel`
    (`NoiseLevel.relative` of `noise_terms`), within [1, 300 x `ratio_limit`]."""
    shot, read = (t.double() for t in noise_terms(p, sensor))
    rel = rel.double()
    # rel^2 x^2 = shot x + read^2 for the signal x before amplification
    x = (shot + torch.sqrt(shot**2 + 4.0 * rel**2 * read**2)) / (2.0 * rel**2)
    return torch.minimum((MID_GREY / x).clamp_min(1.0), 300.0 * ratio_limit(sensor).double()).float()


def tukey_variance(lam: torch.Tensor) -> torch.Tensor:
    """The variance of `_tukey`'s distribution (unit scale) for shapes `lam` (> -1/2; pi^2 / 3 at 0)."""
    lam = lam.double()
    safe = torch.where(lam.abs() < 1e-6, torch.ones_like(lam), lam)
    beta = torch.exp(2.0 * torch.lgamma(safe + 1.0) - torch.lgamma(2.0 * safe + 2.0))
    general = 2.0 / safe**2 * (1.0 / (1.0 + 2.0 * safe) - beta)
    return torch.where(lam.abs() < 1e-6, torch.full_like(lam, math.pi**2 / 3.0), general)


def noise_terms(p: NoiseParams, sensor: Sensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(shot, read), each (N,): `darkfix.noise.NoiseLevel`'s terms for these parameters, in normalised
    units (var = shot x + read^2): read noise of its shape, row noise and the ADC's rounding together."""
    scale = sensor.range / SONY_RANGE
    shape = torch.where(torch.isnan(p.read_lambda), torch.ones_like(p.read_lambda.double()),
                        tukey_variance(torch.nan_to_num(p.read_lambda)))
    lines = p.row_sigma.double() ** 2 + (0.0 if p.col_sigma is None else p.col_sigma.double() ** 2)
    read_var = (p.read_sigma.double() * scale) ** 2 * shape + lines * scale**2 + 1.0 / 12.0
    return (p.K * scale / sensor.range).float(), (read_var.sqrt() / sensor.range).float()


def _tukey(u: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    safe = torch.where(lam.abs() < 1e-6, torch.ones_like(lam), lam)
    general = (u**safe - (1.0 - u) ** safe) / safe
    return torch.where(lam.abs() < 1e-6, torch.log(u / (1.0 - u)), general)


def _read_noise(shape: tuple[int, ...], p: NoiseParams, scale: torch.Tensor, g: torch.Generator,
                dev: torch.device) -> torch.Tensor:
    """Read noise of the frames' shapes (Tukey lambda, or Gaussian where lambda is NaN), in DN."""
    n = shape[0]
    u = torch.rand(shape, generator=g, device=dev).clamp(1e-6, 1.0 - 1e-6)
    lam = p.read_lambda.to(dev).view(n, 1, 1, 1)
    gaussian = torch.randn(shape, generator=g, device=dev)
    read = torch.where(torch.isnan(lam), gaussian, _tukey(u, torch.nan_to_num(lam)))
    return read * p.read_sigma.to(dev).view(n, 1, 1, 1) * scale


def _column_noise(n: int, w: int, p: NoiseParams, scale: torch.Tensor, g: torch.Generator,
                  dev: torch.device) -> torch.Tensor:
    """(N, 4, 1, w): mosaic columns 2j and 2j+1 hold channels (R, G2) and (G1, B)."""
    assert p.col_sigma is not None
    cols = torch.randn(n, 2, w, generator=g, device=dev) * (p.col_sigma.to(dev).view(n, 1, 1) * scale.view(n, 1, 1))
    return cols[:, [0, 1, 0, 1], None, :]


def noisy_dn(clean: torch.Tensor, ratio: torch.Tensor, p: NoiseParams, g: torch.Generator,
             sensor: Sensor | None = None, masked: int = 0, masked_g: torch.Generator | None = None) -> torch.Tensor:
    """Packed clean linear signal (N, 4, h, w) in [0, 1] of white -> the dark exposure 1/ratio gives, in
    the sensor's DN above black, before the ADC rounds and clips it (`to_raw`). The ELD parameters are
    calibrated in the Sony's DN; a sensor with another range has them scaled to its own.

    `masked` > 0 puts that many packed columns of optically masked photosites first: no light, read noise
    drawn from `masked_g` (the frame's own draws from `g` stay as without them), the frame's row noise."""
    n, _, h, w = clean.shape
    dev = clean.device
    sensor = sensor or sony_sensor(n)
    col = lambda t: t.to(dev).view(n, 1, 1, 1)  # noqa: E731
    scale = col(sensor.range / SONY_RANGE)
    signal = clean * col(sensor.range) / col(ratio)
    k = col(p.K) * scale
    shot = k * torch.poisson(signal / k, generator=g if dev.type == "cpu" else None)
    read = _read_noise(tuple(clean.shape), p, scale, g, dev)
    rows = torch.randn(n, 2, h, generator=g, device=dev) * (col(p.row_sigma) * scale).view(n, 1, 1)
    # mosaic rows 2i and 2i+1 hold channels (R, G1) and (G2, B): each row's offset is shared along it
    row_noise = rows[:, [0, 0, 1, 1], :, None]
    bias = p.bias.to(dev)[:, :, None, None] * scale
    lines = row_noise + _column_noise(n, w, p, scale, g, dev) if p.col_sigma is not None else row_noise
    out = shot + read + lines + bias
    if not masked:
        return out
    mg = masked_g if masked_g is not None else g
    dark = _read_noise((n, 4, h, masked), p, scale, mg, dev) + row_noise + bias
    if p.col_sigma is not None:
        dark = dark + _column_noise(n, masked, p, scale, mg, dev)
    return torch.cat([dark, out], dim=-1)


def to_raw(dn: torch.Tensor, sensor: Sensor) -> torch.Tensor:
    """The ADC: DN above black -> integer codes (as float), rounded and clipped to [0, white]. A black
    level of 0 clips the noise below it, as such sensors do."""
    n = dn.shape[0]
    black = sensor.black.to(dn.device).view(n, 1, 1, 1)
    white = sensor.white.to(dn.device).view(n, 1, 1, 1)
    return torch.minimum(torch.round(dn + black).clamp_min(0.0), white)


def normalise(raw: torch.Tensor, sensor: Sensor, clip_black: bool = True) -> torch.Tensor:
    """max(raw - black, 0) / (white - black); with `clip_black=False` negative below black, as darkfix
    reads real files (packing.PackedFrame)."""
    n = raw.shape[0]
    black = sensor.black.to(raw.device).view(n, 1, 1, 1)
    x = raw - black
    return ((x.clamp_min(0.0) if clip_black else x) / sensor.range.to(raw.device).view(n, 1, 1, 1)).clamp(max=1.0)


def sample_ratio(n: int, g: torch.Generator, low_fraction: float = 0.15) -> torch.Tensor:
    """Exposure ratios: mostly U(100, 300) as in SID, some log-uniform in [10, 100] for milder shots."""
    sid = _uniform(n, 100.0, 300.0, g)
    mild = torch.exp(_uniform(n, math.log(10.0), math.log(100.0), g))
    return torch.where(torch.rand(n, generator=g, dtype=torch.float64) < low_fraction, mild, sid).float()


def sample_exposure(n: int, g: torch.Generator, over_fraction: float = 0.25) -> torch.Tensor:
    """How much brighter than the photo the restored picture should be: mostly within +-0.7 stops (an
    amplification that misses the scene's exposure), a quarter 0.6-2.6 stops over, so that highlights
    are pushed past white as lamps and windows in night shots are."""
    near = _log_uniform(n, 0.6, 1.6, g)
    over = _log_uniform(n, 1.5, 6.0, g)
    return torch.where(torch.rand(n, generator=g, dtype=torch.float64) < over_fraction, over, near).float()


@dataclass
class OwnSensor:
    """One real sensor's noise, measured (`darkfix calibrate`), for pairs made with it alone (`darkfix tune`):
    levels and noise in its own DN."""

    black: float
    white: float
    k: float  # DN per electron
    read_dn: float  # read noise standard deviation
    read_lambda: float | None  # its Tukey-lambda shape, None for Gaussian
    row_dn: float
    col_dn: float
    spread: float = 0.1  # each draw's parameters off by up to this fraction: the measurement's own error

    def sensor(self, n: int) -> Sensor:
        return Sensor(torch.full((n,), float(self.black)), torch.full((n,), float(self.white)))

    def sample(self, n: int, g: torch.Generator) -> tuple[Sensor, NoiseParams]:
        """The sensor for n images and noise parameters in the Sony's DN (as `noisy_dn` takes them)."""
        sensor = self.sensor(n)
        scale = float(sensor.range[0]) / SONY_RANGE
        off = torch.exp((2.0 * torch.rand(n, 4, generator=g) - 1.0) * math.log1p(self.spread))
        lam = torch.full((n,), float("nan") if self.read_lambda is None else float(self.read_lambda))
        shape = 1.0 if self.read_lambda is None else float(tukey_variance(torch.tensor([self.read_lambda]))[0])
        return sensor, NoiseParams(
            K=self.k / scale * off[:, 0],
            read_sigma=self.read_dn / math.sqrt(shape) / scale * off[:, 1],
            read_lambda=lam,
            row_sigma=self.row_dn / scale * off[:, 2],
            bias=0.1 * torch.randn(n, 4, generator=g),  # the profile's black, right to a tenth of a DN
            col_sigma=self.col_dn / scale * off[:, 3],
        )


@dataclass
class Synthetic:
    """One batch of synthetic dark raws and what their restoration must look like."""

    raw: torch.Tensor  # (N, 4, h, w) packed RGGB ADC codes (integer-valued floats)
    sensor: Sensor
    camera: Camera
    noise: NoiseParams
    ratio: torch.Tensor  # (N,) the true exposure ratio: the amplification that restores `linear`
    linear: torch.Tensor  # (N, 3, H, W) the clean linear camera RGB at the restored exposure (may exceed 1)

    def network_input(self, amplification: torch.Tensor | None = None) -> torch.Tensor:
        """The packed input darkfix's camera-balanced weights see, as packing.PackedFrame makes it from real
        files: normalised (negative below black, down to -1 once amplified), amplified, white-balanced,
        clipped at BALANCED_CEILING, and where all four planes are past OVER_WHITE the colour around
        (`fill_over_white`)."""
        amp = self.ratio if amplification is None else amplification
        n = amp.shape[0]
        x = normalise(self.raw, self.sensor, clip_black=False) * amp.to(self.raw.device).view(n, 1, 1, 1)
        x = x * packed_wb(self.camera.wb).to(x.device)
        return fill_over_white(x.clamp(-1.0, BALANCED_CEILING), (x >= OVER_WHITE).all(dim=1, keepdim=True))

    def noise_map(self, x: torch.Tensor, amplification: torch.Tensor | None = None,
                  g: torch.Generator | None = None, spread: float = 0.3) -> torch.Tensor:
        """The (N, 4, h, w) noise map noise-aware weights read beside `network_input` `x`
        (`darkfix.noise.sigma_planes`). With `g`, the shot and read terms are each off by a random factor
        within 1 / (1 + spread) .. 1 + spread, as estimated noise levels are."""
        amp = self.ratio if amplification is None else amplification
        n = amp.shape[0]
        shot, read = noise_terms(self.noise, self.sensor)
        if g is not None:
            off = torch.exp((2.0 * torch.rand(n, 2, generator=g) - 1.0) * math.log1p(spread))
            shot, read = shot * off[:, 0], read * off[:, 1]
        gains = packed_wb(self.camera.wb) * amp.view(n, 1, 1, 1)
        a = (gains * shot.view(n, 1, 1, 1)).to(x.device)
        b = ((gains * read.view(n, 1, 1, 1)) ** 2).to(x.device)
        return sigma_planes(x, a, b)

    def target_balanced(self) -> torch.Tensor:
        """The clean image white-balanced and clipped, as LibRaw clips a normal exposure: highlights white."""
        return (self.linear * self.camera.wb.to(self.linear.device)[:, :, None, None]).clamp(0.0, 1.0)


def fill_over_white(x: torch.Tensor, over: torch.Tensor) -> torch.Tensor:
    """(N, 4, h, w) packed input with its over-white pixels (`over`, (N, 1, h, w)) given the colour around
    them, as packing.PackedFrame fills them: per cell of FILL_CELL pixels (partial at the bottom and right)
    the mean of the pixels with no plane past OVER_WHITE, empty cells from their neighbours ring by ring,
    bilinear between cell centres."""
    if not over.any():
        return x
    import torch.nn.functional as F

    h, w = x.shape[-2:]
    pad = (0, -w % FILL_CELL, 0, -h % FILL_CELL)  # partial cells: the padding counts as no pixel
    keep = F.pad((x < OVER_WHITE).all(dim=1, keepdim=True).to(x.dtype), pad)
    sums, counts = F.avg_pool2d(F.pad(x, pad) * keep, FILL_CELL), F.avg_pool2d(keep, FILL_CELL)
    filled = counts > 0
    means = torch.where(filled, sums / counts.clamp_min(1e-12), torch.ones_like(sums))
    n, c, hc, wc = means.shape
    ring = torch.ones(1, 1, 3, 3, dtype=x.dtype, device=x.device)
    while not filled.all():
        s = F.conv2d((means * filled).reshape(n * c, 1, hc, wc), ring, padding=1).reshape(n, c, hc, wc)
        k = F.conv2d(filled.to(x.dtype), ring, padding=1)
        new = ~filled & (k > 0)
        if not new.any():  # a crop with nothing under white stays plain white
            break
        means = torch.where(new, s / k.clamp_min(1.0), means)
        filled = filled | new
    fill = F.interpolate(means, scale_factor=FILL_CELL, mode="bilinear", align_corners=False)[..., :h, :w]
    return torch.where(over, fill, x)


@dataclass
class Scene:
    """A clean photo as some camera saw it: everything of a synthetic pair but the exposure and noise."""

    camera: Camera
    sensor: Sensor
    linear: torch.Tensor  # (N, 3, H, W) clean linear camera RGB at the photo's exposure, in [0, 1]


def make_scene(srgb: torch.Tensor, g: torch.Generator, broad: bool = True) -> Scene:
    """sRGB photos (N, 3, H, W) -> a random camera and sensor and the photo unprocessed for them.

    `broad` draws cameras, white balance, bit depth and black level from the whole range of real sensors;
    otherwise a Sony A7S II with Brooks et al.'s white balance."""
    n = srgb.shape[0]
    camera = sample_camera(n, g, broad=broad)
    linear = unprocess(srgb, camera, g)
    return Scene(camera, sample_sensor(n, g) if broad else sony_sensor(n), linear)


def widen_gamut(scene: Scene, g: torch.Generator, fraction: float = 0.5, most: float = 2.5) -> Scene:
    """The scene with the colours of a `fraction` of its images pushed away from grey (after white balance)
    by a factor log-uniform in 1 .. `most`, clipped to [0, 1]: photographs hold sRGB's gamut only, while
    cameras see neon, LEDs and flowers beyond it, and a network never shown those drifts on them."""
    n = scene.linear.shape[0]
    factor = torch.where(torch.rand(n, generator=g, dtype=torch.float64) < fraction,
                         _log_uniform(n, 1.0, most, g), torch.ones(n, dtype=torch.float64)).float()
    wb = scene.camera.wb.to(scene.linear.device)[:, :, None, None]
    balanced = scene.linear * wb
    grey = balanced.mean(1, keepdim=True)
    wide = (grey + factor.to(grey.device).view(n, 1, 1, 1) * (balanced - grey)).clamp(0.0, 1.0)
    return Scene(scene.camera, scene.sensor, wide / wb)


_HUE_OFFSETS = torch.tensor([0.0, 2.0 / 3.0, 1.0 / 3.0])  # R, G, B: where each sits on the hue circle


def colour_patches(srgb: torch.Tensor, g: torch.Generator, fraction: float, most: int = 12) -> torch.Tensor:
    """sRGB crops (N, 3, H, W) with a `fraction` of them replaced by scenes of saturated colour: 2 ..
    `most` regions (nearest of random seed points), each one colour of random hue, saturation 0.6-1 and
    value log-uniform in 0.05-1, shaded by the photo's own luminance to a random contrast (flat to the
    photo's). Photographs seldom hold large areas of fully saturated colour, and a network never shown
    them at high ratios greys them (v5 kept a third of the red of a frame filled with red at x100, and
    mixed up magenta under magenta light: benchmarks/flat_colour.py)."""
    n, _, h, w = srgb.shape
    if fraction <= 0:  # no draws: a run without patches takes the same batches as before they existed
        return srgb
    chosen = torch.rand(n, generator=g) < fraction
    if not chosen.any():
        return srgb
    out = srgb.clone()
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")
    for i in torch.nonzero(chosen).flatten().tolist():
        k = int(torch.randint(2, most + 1, (1,), generator=g))
        seeds = torch.rand(k, 2, generator=g) * torch.tensor([h, w], dtype=torch.float32)
        region = ((yy[None] - seeds[:, 0, None, None]) ** 2 + (xx[None] - seeds[:, 1, None, None]) ** 2).argmin(0)
        hue = torch.rand(k, generator=g)
        sat = 0.6 + 0.4 * torch.rand(k, generator=g)
        val = torch.exp(torch.empty(k).uniform_(math.log(0.05), 0.0, generator=g))
        # HSV -> RGB: each channel's distance around the hue circle from its primary
        d = ((hue[:, None] + _HUE_OFFSETS[None]) % 1.0 - 0.5).abs() * 6.0 - 1.0  # 1 at the primary, -1 opposite
        colours = val[:, None] * (1.0 - sat[:, None] * (1.0 - d.clamp(0.0, 1.0)))
        lum = srgb[i].mean(0)
        contrast = float(torch.rand(1, generator=g))
        shade = (lum / lum.mean().clamp_min(1e-3)).clamp(0.05, 3.0) ** contrast
        out[i] = (colours[region].permute(2, 0, 1) * shade[None]).clamp(0.0, 1.0)
    return out


# broad frames' extra black-level error: a standard deviation drawn from 0 to this, DN of 14 bits. Every
# frame also has ELD's 0.5 DN (`sample_noise`). It teaches the network to ignore dark local means of that
# size, the likeliest reason it greys dark colour where the black is right (RESULTS.md, fifteenth session).
BLACK_SPREAD = 3.0


def synthesise(srgb: torch.Tensor | None, g: torch.Generator, *, broad: bool = True,
               ratio: torch.Tensor | None = None, exposure: torch.Tensor | None = None,
               scene: Scene | None = None, own: OwnSensor | None = None, black_error: bool = True,
               black_spread: float = BLACK_SPREAD, masked: int = 0, masked_g: torch.Generator | None = None,
               relative_noise: tuple[float, float] | None = None) -> Synthetic:
    """The one synthetic-pair recipe (training, validation and `darkfix synth`): sRGB photos (N, 3, H, W)
    -> `make_scene` (or a given `scene`) -> exposure -> mosaic -> ELD noise (25 % virtual-camera gains
    when `broad`) -> ADC.

    `ratio` and `exposure` default to random draws (`sample_ratio` scaled by `ratio_limit`, and
    `sample_exposure`; 1 unless `broad`); pass them for fixed benchmarks. `own` replaces the sensor and
    its noise by one measured sensor's. `black_error=False` zeroes the per-channel black-level error after it
    is drawn (every other draw unchanged): denoising measured apart from that robustness. `black_spread`
    bounds the extra black-level error of `broad` frames (its standard deviation is drawn from 0 to it, DN
    of 14 bits; the same draws for any value). `masked`, `masked_g`: `noisy_dn`'s (the raw then holds
    that many packed columns of masked photosites first; the rest as without them). `relative_noise` (lo,
    hi), without `ratio`: each frame's ratio is the one that gives its mid-grey a relative noise drawn
    log-uniform in [lo, hi] (`ratio_for_noise`), for networks that serve one range of noise.
    """
    scene = scene or make_scene(srgb, g, broad)
    camera, sensor = scene.camera, scene.sensor
    n = scene.linear.shape[0]
    own_noise = None
    if own is not None:
        sensor, own_noise = own.sample(n, g)
    if ratio is None and relative_noise is None:
        ratio = (sample_ratio(n, g) * ratio_limit(sensor)).clamp_min(4.0)
    if exposure is None:
        exposure = sample_exposure(n, g) if broad else torch.ones(n)
    noise = sample_noise(n, g, broad=0.25 if broad else 0.0) if own_noise is None else own_noise
    if broad and own_noise is None:
        # black levels that the file states a little wrong, per channel, by up to a few DN of 14 bits
        noise.bias = noise.bias + torch.randn(n, 4, generator=g) * _uniform(n, 0.0, black_spread, g).float()[:, None]
    if not black_error:
        noise.bias = torch.zeros_like(noise.bias)
    if ratio is None:
        assert relative_noise is not None
        ratio = ratio_for_noise(_log_uniform(n, *relative_noise, g).float(), noise, sensor)
    linear = scene.linear * exposure.to(scene.linear.device).view(n, 1, 1, 1)
    raw = to_raw(noisy_dn(mosaic(linear), ratio.float(), noise, g, sensor, masked, masked_g), sensor)
    return Synthetic(raw, sensor, camera, noise, ratio.float(), linear)
