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

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import WeightsError
from .model import ARCHITECTURE, LambaNet

FORMAT_VERSION = "1"
DEFAULT_WEIGHTS_NAME = "darkfix-lamba2021-v2.safetensors"


@dataclass
class WeightsInfo:
    """What a weights file is: where it came from and how its network's output must be treated."""

    path: Path
    format: str  # "darkfix" (safetensors) or "authors" (the paper's .pth)
    output: str  # "camera" (camera RGB, rendered with the file's metadata) or "srgb" (written as is)
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def input(self) -> str:
        """"balanced" when the network takes (and gives) white-balanced camera RGB, else "raw"."""
        return self.metadata.get("input", "raw")


def default_weights_path() -> Path:
    """The weights that ship inside the package: the wheel installs the repository's weights/ folder
    as darkfix/pretrained/; a source checkout uses weights/ itself."""
    here = Path(__file__).resolve().parent
    installed = here / "pretrained" / DEFAULT_WEIGHTS_NAME
    return installed if installed.is_file() else here.parent / "weights" / DEFAULT_WEIGHTS_NAME


def tensors_sha256(state: dict[str, torch.Tensor]) -> str:
    """A checksum over tensor names and float32 bytes, stored in and checked against the metadata."""
    h = hashlib.sha256()
    for name in sorted(state):
        h.update(name.encode())
        h.update(state[name].detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def save_weights(model: LambaNet, path: str | os.PathLike, metadata: dict[str, object]) -> Path:
    """Save a (weight-normalised) model as darkfix safetensors with its metadata and checksum."""
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}
    meta.update(
        architecture=ARCHITECTURE,
        format_version=FORMAT_VERSION,
        output=str(metadata.get("output", "camera")),
        sha256=tensors_sha256(state),
    )
    path = Path(path)
    tmp = path.with_name(f".{path.name}.part")
    save_file(state, str(tmp), metadata=meta)
    os.replace(tmp, path)
    return path


def _check_state(state: dict[str, torch.Tensor], model: LambaNet, path: Path) -> None:
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    if got != expected:
        missing = sorted(set(expected) - set(got))
        wrong = sorted(k for k in set(expected) & set(got) if expected[k] != got[k])
        detail = f"missing {missing[0]}" if missing else f"shape of {wrong[0]}" if wrong else "extra tensors"
        raise WeightsError(f"{path}: not {ARCHITECTURE} weights ({detail})")
    for k, v in state.items():
        if not torch.isfinite(v).all():
            raise WeightsError(f"{path}: tensor {k} holds non-finite values")


def load_weights(path: str | os.PathLike | None = None) -> tuple[LambaNet, WeightsInfo]:
    """Load a weights file (default: the packaged weights) into a weight-normalised LambaNet."""
    p = Path(path) if path is not None else default_weights_path()
    if not p.is_file():
        hint = "" if path is not None else " (no default weights installed; pass --weights PATH)"
        raise WeightsError(f"{p}: weights file not found{hint}")
    with open(p, "rb") as f:
        head = f.read(16)
    model = LambaNet()
    if head[8:9] == b"{":
        try:
            state = load_file(str(p))
            from safetensors import safe_open

            with safe_open(str(p), framework="pt") as f:
                meta = dict(f.metadata() or {})
        except (SafetensorError, OSError, ValueError) as e:
            raise WeightsError(f"{p}: corrupt or truncated safetensors file ({e})") from None
        if meta.get("architecture") != ARCHITECTURE:
            raise WeightsError(f"{p}: architecture {meta.get('architecture')!r}, expected {ARCHITECTURE!r}")
        _check_state(state, model, p)
        if meta.get("sha256") != tensors_sha256(state):
            raise WeightsError(f"{p}: checksum mismatch, the weights are damaged")
        info = WeightsInfo(p, "darkfix", meta.get("output", "camera"), meta)
    else:
        try:
            obj = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises many types for damaged or foreign files
            raise WeightsError(f"{p}: not a readable weights file ({type(e).__name__})") from None
        if isinstance(obj, dict) and "optimizer" in obj:
            raise WeightsError(f"{p}: a darkfix training checkpoint, not weights (use the .safetensors "
                               "that `darkfix train` writes)")
        state = obj.get("model", obj) if isinstance(obj, dict) else None
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise WeightsError(f"{p}: not a state dict of tensors")
        _check_state(state, model, p)
        info = WeightsInfo(p, "authors", "srgb", {"architecture": ARCHITECTURE, "output": "srgb",
                                                  "source": "Lamba & Mitra 2021 checkpoint"})
    if info.output not in ("camera", "srgb"):
        raise WeightsError(f"{p}: unknown output colour space {info.output!r}")
    if info.input not in ("raw", "balanced") or (info.input == "balanced" and info.output != "camera"):
        raise WeightsError(f"{p}: unknown input convention {info.input!r} for {info.output!r} output")
    model.load_state_dict({k: v.float() for k, v in state.items()})
    return model.eval(), info
