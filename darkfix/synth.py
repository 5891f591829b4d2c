"""Synthetic low-light raw pairs from clean sRGB photos: unprocessing (Brooks et al. 2019) and a
physics-based noise model (Wei et al., ELD 2020). Batched torch code that runs on the training device;
every random draw comes from one torch.Generator so that a run is reproducible and resumable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .colour import XYZ_FROM_SRGB

BLACK, WHITE = 512.0, 16383.0  # Sony A7S II levels, used for every synthetic sensor

# XYZ -> camera matrices (DNG ColorMatrix, D65) of real cameras; random convex mixes make new "cameras".
CAMERA_XYZ = torch.tensor(
    [
        [[1.0234, -0.2969, -0.2266], [-0.5625, 1.6328, -0.0469], [-0.0703, 0.2188, 0.6406]],
        [[0.4913, -0.0541, -0.0202], [-0.6130, 1.3513, 0.2906], [-0.1564, 0.2151, 0.7183]],
        [[0.8380, -0.2630, -0.0639], [-0.2887, 1.0725, 0.2496], [-0.0627, 0.1427, 0.5438]],
        [[0.6596, -0.2079, -0.0562], [-0.4782, 1.3016, 0.1933], [-0.0970, 0.1581, 0.5181]],
        [[0.5838, -0.1430, -0.0246], [-0.3497, 1.1477, 0.2297], [-0.0748, 0.1885, 0.5778]],  # Sony A7S II
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


def sample_camera(n: int, g: torch.Generator) -> Camera:
    weights = torch.rand(n, len(CAMERA_XYZ), generator=g, dtype=torch.float64)
    weights = weights / weights.sum(1, keepdim=True)
    cam_xyz = torch.einsum("nk,kij->nij", weights, CAMERA_XYZ)
    cam_rgb = cam_xyz @ torch.from_numpy(XYZ_FROM_SRGB)
    cam_rgb = cam_rgb / cam_rgb.sum(-1, keepdim=True)
    wb = torch.stack([_uniform(n, 1.9, 2.4, g), torch.ones(n, dtype=torch.float64), _uniform(n, 1.5, 1.9, g)], 1)
    return Camera(cam_xyz.float(), torch.linalg.inv(cam_rgb).float(), wb.float())


def unprocess(srgb: torch.Tensor, camera: Camera, g: torch.Generator) -> torch.Tensor:
    """sRGB (N, 3, H, W) in [0, 1] -> plausible linear camera RGB in [0, 1] for `camera`."""
    n = srgb.shape[0]
    x = srgb.clamp(0.0, 1.0)
    x = 0.5 - torch.sin(torch.asin((1.0 - 2.0 * x).clamp(-1.0, 1.0)) / 3.0)  # inverse smoothstep tone curve
    x = x.clamp_min(1e-8) ** 2.2
    cam_rgb = torch.linalg.inv(camera.rgb_cam.double()).float().to(x.device)
    x = torch.einsum("nij,njhw->nihw", cam_rgb, x)
    brightness = (0.8 + 0.1 * torch.randn(n, generator=g, dtype=torch.float64)).clamp(0.5, 1.2)
    gains = (1.0 / camera.wb.double()) * brightness[:, None]
    gains = gains.float().to(x.device)[:, :, None, None]
    # protect near-white pixels from being darkened, so highlights stay saturated
    grey = x.mean(1, keepdim=True)
    mask = ((grey - 0.9).clamp_min(0.0) / 0.1) ** 2
    safe = torch.maximum(mask + (1.0 - mask) * gains, gains)
    return (x * safe).clamp(0.0, 1.0)


def mosaic(camera_rgb: torch.Tensor) -> torch.Tensor:
    """Linear camera RGB (N, 3, H, W), H and W even -> packed RGGB (N, 4, H/2, W/2)."""
    r = camera_rgb[:, 0, 0::2, 0::2]
    g1 = camera_rgb[:, 1, 0::2, 1::2]
    g2 = camera_rgb[:, 1, 1::2, 0::2]
    b = camera_rgb[:, 2, 1::2, 1::2]
    return torch.stack([r, g1, g2, b], 1)


@dataclass
class NoiseParams:
    """Per-image noise parameters in DN (after black subtraction)."""

    K: torch.Tensor  # system gain, DN per electron
    read_sigma: torch.Tensor
    read_lambda: torch.Tensor  # Tukey-lambda shape; NaN means Gaussian read noise
    row_sigma: torch.Tensor
    bias: torch.Tensor  # (N, 4) per-channel black-level error


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


def _tukey(u: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    safe = torch.where(lam.abs() < 1e-6, torch.ones_like(lam), lam)
    general = (u**safe - (1.0 - u) ** safe) / safe
    return torch.where(lam.abs() < 1e-6, torch.log(u / (1.0 - u)), general)


def noisy_dn(clean: torch.Tensor, ratio: torch.Tensor, p: NoiseParams, g: torch.Generator) -> torch.Tensor:
    """Packed clean linear signal (N, 4, h, w) in [0, 1] -> the dark raw an exposure 1/ratio gives,
    in DN above black (negative below it), limited to what the ADC can hold."""
    n, _, h, w = clean.shape
    dev = clean.device
    col = lambda t: t.to(dev).view(n, 1, 1, 1)  # noqa: E731
    signal = clean * (WHITE - BLACK) / col(ratio)
    k = col(p.K)
    shot = k * torch.poisson(signal / k, generator=g if dev.type == "cpu" else None)
    u = torch.rand(clean.shape, generator=g, device=dev).clamp(1e-6, 1.0 - 1e-6)
    lam = col(p.read_lambda)
    gaussian = torch.randn(clean.shape, generator=g, device=dev)
    read = torch.where(torch.isnan(lam), gaussian, _tukey(u, torch.nan_to_num(lam)))
    read = read * col(p.read_sigma)
    rows = torch.randn(n, 2, h, generator=g, device=dev) * col(p.row_sigma).view(n, 1, 1)
    # mosaic rows 2i and 2i+1 hold channels (R, G1) and (G2, B): each row's offset is shared along it
    row_noise = rows[:, [0, 0, 1, 1], :, None]
    quant = torch.rand(clean.shape, generator=g, device=dev) - 0.5
    dn = shot + read + row_noise + quant + p.bias.to(dev)[:, :, None, None]
    return dn.clamp(-BLACK, WHITE - BLACK)


def add_noise(clean: torch.Tensor, ratio: torch.Tensor, p: NoiseParams, g: torch.Generator) -> torch.Tensor:
    """Like `noisy_dn`, normalised as real files are: max(raw - black, 0) / (white - black)."""
    return (noisy_dn(clean, ratio, p, g) / (WHITE - BLACK)).clamp(0.0, 1.0)


def sample_ratio(n: int, g: torch.Generator, low_fraction: float = 0.15) -> torch.Tensor:
    """Exposure ratios: mostly U(100, 300) as in SID, some log-uniform in [10, 100] for milder shots."""
    sid = _uniform(n, 100.0, 300.0, g)
    mild = torch.exp(_uniform(n, math.log(10.0), math.log(100.0), g))
    return torch.where(torch.rand(n, generator=g, dtype=torch.float64) < low_fraction, mild, sid).float()
