"""Weights files: darkfix's own safetensors (with metadata and a checksum) and the authors' checkpoint.

Nothing here unpickles arbitrary objects: safetensors holds only tensors, and the authors' format
goes through `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from typing import TYPE_CHECKING

from .errors import WeightsError

if TYPE_CHECKING:  # torch is imported only to load or save tensors: reading metadata does without it
    import torch

    from .model import LambaNet

ARCHITECTURE = "lamba2021"  # the network of darkfix.model, as the paper has it
ARCHITECTURE_PLUS = "lamba2021-plus"  # the same with LambaNet(plus=True)'s extra layers
# LambaNet(noise_aware=True): a noise map as input and a non-linear path at the finest scales
ARCHITECTURE_NA = "lamba2021-na"
ARCHITECTURES = (ARCHITECTURE, ARCHITECTURE_PLUS, ARCHITECTURE_NA)
# ARCHITECTURE_NA's finest-scale path: its channels at packed resolution and at 2 x 2 packed pixels (metadata
# "fine_widths"; weights without it have these)
FINE_WIDTHS = (16, 24)
GUIDE_RADIUS = 6  # model.guide_gain's default radius (here, where reading metadata needs no torch)
GUIDE_CELL = 4  # and the packed pixels of its cells
# input at or above this in every channel (in [0, 1] after the guide's clamp) counts as clipped white
GUIDE_CLIPPED = 0.999

# The colour guide (`model.guide_gain`): its statistics are taken over cells of GUIDE_CELL packed pixels, in a
# box of 2 (radius // GUIDE_CELL) + 1 cells (radius GUIDE_RADIUS: 12 x 12 packed pixels); GUIDE_WIENER is
# how many times the variance of the input's local mean its difference from the output's must exceed to
# be trusted. First chosen on darkfix's Sony benchmarks with v3 (24 frames each, an exact 13 x 13 box, no
# bound); then, as shipped (cells, bounded), on the three whole benchmarks (sixth session, RESULTS.md):
# Wiener 16 -> 8 and the bound 1.2 -> 1.3 gained 0.12 dB on the Sony photos and 0.13 on the textures, at
# every ratio, and cost 0.01 overall on the many-sensor one; Wiener 4 with bound 1.5 gained 0.2 on both
# Sony benchmarks but lost 0.26 at ratio 300 on the many-sensor one. With v5 (eleventh session, all five
# benchmarks, 36 frames each): Wiener 4 gains more on average (bound 2: +0.37, +0.39, +0.23, +0.04, +0.10
# dB) but makes a third of the black-error frames worse; Wiener 8 keeps them (see the bound below).
GUIDE_WIENER = 8.0
GUIDE_EPS = 0.01  # a floor (in white-balanced, amplified units) under local means, against 0/0
# The gains stay within 1/2 .. 2. The network's own bias in dark, saturated colours is far more than its
# few % elsewhere (the README example's dark grass: blue 35 % too high), which a bound of 1.3 left
# brown. Against a black level the file states a few DN wrong (dark local means shifted far more: the
# network copes, an unbounded guide copied it, -5 dB on the worst frames with v3) the Wiener test does
# most of the work now: with v5, the bound 1.3 -> 2 gained +0.23, +0.22, +0.16, +0.01 and +0.14 dB on the
# photos, textures, many sensors, held-out detail and black-error benchmarks; 9 of the 180 frames lost
# more than 0.1 dB (8-bit sensors at ratio 300 whose files clip at black; black errors), the worst 1.6.
GUIDE_MAX_GAIN = 2.0

# what weights take (metadata "input"): raw planes, white-balanced planes, or (ARCHITECTURE_NA) those and
# each plane's noise standard deviation (darkfix.noise)
INPUT_NOISE = "balanced+noise"
INPUTS = ("raw", "balanced", INPUT_NOISE)

FORMAT_VERSION = "1"
DEFAULT_WEIGHTS_NAME = "darkfix-lamba2021-v14.safetensors"


@dataclass
class WeightsInfo:
    """What a weights file is: where it came from and how its network's output must be treated."""

    path: Path
    format: str  # "darkfix" (safetensors) or "authors" (the paper's .pth)
    output: str  # "camera" (camera RGB, rendered with the file's metadata) or "srgb" (written as is)
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def architecture(self) -> str:
        return self.metadata.get("architecture", ARCHITECTURE)

    @property
    def guide_radius(self) -> int:
        """The colour guide's radius (model.guide_gain), 0 for none: as trained, or for white-balanced weights
        trained before it existed, the default radius (it corrects their colour bias after the fact)."""
        default = GUIDE_RADIUS if self.balanced else 0
        return int(self.metadata.get("guide_radius", default))

    @property
    def input(self) -> str:
        """"balanced" when the network takes (and gives) white-balanced camera RGB, else "raw"."""
        return self.metadata.get("input", "raw")

    @property
    def balanced(self) -> bool:
        """Whether the network takes (and gives) white-balanced camera RGB."""
        return self.input != "raw"

    @property
    def noise_aware(self) -> bool:
        """Whether the network also reads each packed plane's noise level (darkfix.noise)."""
        return self.input == INPUT_NOISE

    @property
    def fine_signed(self) -> bool:
        """Whether a noise-aware network's finest-scale path reads the input as it is, negative noise
        included (metadata fine_input "signed"), rather than clipped at 0 ("clipped", weights before it)."""
        return self.metadata.get("fine_input", "clipped") == "signed"

    @property
    def fine_widths(self) -> tuple[int, int]:
        """A noise-aware network's finest-scale channels (metadata fine_widths "full,half")."""
        if "fine_widths" not in self.metadata:
            return FINE_WIDTHS
        full, half = self.metadata["fine_widths"].split(",")
        return int(full), int(half)


    @property
    def low_noise(self) -> tuple[Path, float] | None:
        """Companion weights for low-noise frames and the relative noise at mid-grey below which they run
        instead (metadata low_noise: {"weights": a file name beside this file, "below": r}), or None."""
        if "low_noise" not in self.metadata:
            return None
        spec = json.loads(self.metadata["low_noise"])
        return self.path.with_name(spec["weights"]), float(spec["below"])


def default_weights_path() -> Path:
    """The weights that ship inside the package: the wheel installs the repository's weights/ folder
    as darkfix/pretrained/; a source checkout uses weights/ itself."""
    here = Path(__file__).resolve().parent
    installed = here / "pretrained" / DEFAULT_WEIGHTS_NAME
    return installed if installed.is_file() else here.parent / "weights" / DEFAULT_WEIGHTS_NAME


def read_info(path: str | os.PathLike | None = None) -> WeightsInfo:
    """What a weights file says it is, from its header alone (no torch, no tensors read or checked:
    `load_weights` checks them)."""
    p = Path(path) if path is not None else default_weights_path()
    packaged = default_weights_path().with_name(p.name)
    if not p.is_file() and path is not None and str(path) == p.name and packaged.is_file():
        p = packaged  # a bare name of weights that ship with darkfix: --weights darkfix-lamba2021-v4.safetensors
    if not p.is_file():
        hint = "" if path is not None else " (no default weights installed; pass --weights PATH)"
        raise WeightsError(f"{p}: weights file not found{hint}")
    with open(p, "rb") as f:
        head = f.read(8)
        if f.read(1) != b"{":
            return _authors_info(p)
        try:
            size = int.from_bytes(head, "little")
            f.seek(8)
            meta = json.loads(f.read(size)).get("__metadata__") or {}
        except (ValueError, UnicodeDecodeError, AttributeError) as e:
            raise WeightsError(f"{p}: corrupt or truncated safetensors file ({e})") from None
    return _darkfix_info(p, meta)


def _authors_info(p: Path) -> WeightsInfo:
    return WeightsInfo(p, "authors", "srgb", {"architecture": ARCHITECTURE, "output": "srgb",
                                              "source": "Lamba & Mitra 2021 checkpoint"})


def _darkfix_info(p: Path, meta: dict[str, str]) -> WeightsInfo:
    if meta.get("architecture") not in ARCHITECTURES:
        raise WeightsError(f"{p}: architecture {meta.get('architecture')!r}, expected one of "
                           f"{', '.join(ARCHITECTURES)}")
    info = WeightsInfo(p, "darkfix", meta.get("output", "camera"), dict(meta))
    if info.output not in ("camera", "srgb"):
        raise WeightsError(f"{p}: unknown output colour space {info.output!r}")
    if info.input not in INPUTS or (info.input != "raw" and info.output != "camera") or \
            (info.input == INPUT_NOISE) != (info.architecture == ARCHITECTURE_NA):
        raise WeightsError(f"{p}: unknown input convention {info.input!r} for {info.output!r} output")
    try:
        widths = info.fine_widths
    except ValueError:
        widths = (0, 0)
    if not all(1 <= w <= 1024 for w in widths):
        raise WeightsError(f"{p}: fine_widths {meta.get('fine_widths')!r} is not two channel counts")
    if "low_noise" in meta:
        try:
            companion, below = info.low_noise or (p, 0.0)
            spec = json.loads(meta["low_noise"])["weights"]
        except (ValueError, TypeError, KeyError) as e:
            raise WeightsError(f"{p}: low_noise {meta['low_noise']!r} is not {{\"weights\": NAME, \"below\": "
                               f"NUMBER}} ({type(e).__name__})") from None
        if not info.noise_aware or companion.name != spec or companion == p or not 0.0 < below <= 10.0:
            raise WeightsError(f"{p}: low_noise {meta['low_noise']!r} must name another file beside it and a "
                               "relative noise in (0, 10], on noise-aware weights")
    return info


def file_sha256(path: str | os.PathLike) -> str:
    """The checksum of a weights file's bytes (what converted models are traced back to)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tensors_sha256(state: dict[str, torch.Tensor]) -> str:
    """A checksum over tensor names and float32 bytes, stored in and checked against the metadata."""
    import torch

    h = hashlib.sha256()
    for name in sorted(state):
        h.update(name.encode())
        h.update(state[name].detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def save_weights(model: LambaNet, path: str | os.PathLike, metadata: dict[str, object]) -> Path:
    """Save a (weight-normalised) model as darkfix safetensors with its metadata and checksum."""
    import torch
    from safetensors.torch import save_file

    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}
    if model.noise_aware:
        meta["fine_input"] = "signed" if model.fine_signed else "clipped"
        meta["fine_widths"] = ",".join(map(str, model.fine_widths))
    meta.update(
        architecture=model.architecture,
        format_version=FORMAT_VERSION,
        output=str(metadata.get("output", "camera")),
        sha256=tensors_sha256(state),
    )
    path = Path(path)
    tmp = path.with_name(f".{path.name}.part")
    save_file(state, str(tmp), metadata=meta)
    os.replace(tmp, path)
    return path


def with_low_noise(main: str | os.PathLike, companion: str | os.PathLike, below: float,
                   out: str | os.PathLike) -> Path:
    """Write `main`'s weights to `out` with `companion` as their low-noise network (WeightsInfo.low_noise):
    frames whose relative noise at mid-grey is below `below` run through it. The companion must sit beside
    `out` under its own name when the weights are used."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(main), framework="pt") as f:
        meta = dict(f.metadata() or {})
        state = {k: f.get_tensor(k) for k in f.keys()}
    meta["low_noise"] = json.dumps({"weights": Path(companion).name, "below": float(below)})
    out = Path(out)
    _darkfix_info(out, meta)  # a companion that is the file itself, or weights that cannot route: refused here
    tmp = out.with_name(f".{out.name}.part")
    save_file(state, str(tmp), metadata=meta)
    os.replace(tmp, out)
    return out


def _check_state(state: dict[str, torch.Tensor], model: LambaNet, path: Path) -> None:
    import torch

    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    if got != expected:
        missing = sorted(set(expected) - set(got))
        wrong = sorted(k for k in set(expected) & set(got) if expected[k] != got[k])
        detail = f"missing {missing[0]}" if missing else f"shape of {wrong[0]}" if wrong else "extra tensors"
        raise WeightsError(f"{path}: not {model.architecture} weights ({detail})")
    for k, v in state.items():
        if not torch.isfinite(v).all():
            raise WeightsError(f"{path}: tensor {k} holds non-finite values")


def load_weights(path: str | os.PathLike | None = None) -> tuple[LambaNet, WeightsInfo]:
    """Load a weights file (default: the packaged weights) into a weight-normalised LambaNet."""
    import torch
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    from .model import LambaNet

    info = read_info(path)
    p = info.path
    model = LambaNet(plus=info.architecture == ARCHITECTURE_PLUS, guide_radius=info.guide_radius,
                     noise_aware=info.architecture == ARCHITECTURE_NA, fine_signed=info.fine_signed,
                     fine_widths=info.fine_widths)
    if info.format == "darkfix":
        try:
            state = load_file(str(p))
            with safe_open(str(p), framework="pt") as f:
                meta = dict(f.metadata() or {})
        except (SafetensorError, OSError, ValueError) as e:
            raise WeightsError(f"{p}: corrupt or truncated safetensors file ({e})") from None
        _check_state(state, model, p)
        if meta.get("sha256") != tensors_sha256(state):
            raise WeightsError(f"{p}: checksum mismatch, the weights are damaged")
    else:
        try:
            obj = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises many types for damaged or foreign files
            raise WeightsError(f"{p}: not a readable weights file ({type(e).__name__})") from None
        if isinstance(obj, dict) and "optimizer" in obj:
            raise WeightsError(f"{p}: a darkfix training checkpoint, not weights (use the .safetensors "
                               "that `darkfix train` writes)")
        found = obj.get("model", obj) if isinstance(obj, dict) else None
        if not isinstance(found, dict) or not all(isinstance(v, torch.Tensor) for v in found.values()):
            raise WeightsError(f"{p}: not a state dict of tensors")
        state = found
        _check_state(state, model, p)
    model.load_state_dict({k: v.float() for k, v in state.items()})
    return model.eval(), info
