"""The network: the authors' checkpoint reproduces their reference output; folding; size; names."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from darkfix.model import LambaNet, WNConv2d, fold_weight_norm
from darkfix.weights import load_weights


@pytest.fixture(scope="module")
def official(reference):
    model, info = load_weights(reference / "lamba2021_sony_official.pth")
    return model, info


@pytest.fixture(scope="module")
def compat(reference):
    x = torch.from_numpy(np.load(reference / "compat_input.npy"))
    y = torch.from_numpy(np.load(reference / "compat_output.npy"))
    return x, y


def test_official_checkpoint_reproduces_reference_output(official, compat):
    model, info = official
    x, y = compat
    assert x.shape == (1, 1, 384, 512) and y.shape == (1, 3, 384, 512)
    assert info.format == "authors" and info.output == "srgb"
    with torch.inference_mode():
        out = model(F.pixel_unshuffle(x, 2))
    assert out.shape == y.shape
    err = (out - y).abs().max().item()
    assert err < 1e-4, f"max abs error {err:.3g} against the authors' output"
    # and the reference is not trivially matched: it has real dynamic range
    assert float(y.std()) > 0.05


def test_folded_equals_unfolded(official, compat):
    model, _ = official
    x, _ = compat
    packed = F.pixel_unshuffle(x, 2)[..., :128, :192]
    folded = fold_weight_norm(copy.deepcopy(model))
    assert not any(isinstance(m, WNConv2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.Conv2d) for m in folded.modules())
    with torch.inference_mode():
        a, b = model(packed), folded(packed)
    err = (a - b).abs().max().item()
    assert err < 1e-5, err
    assert float(a.std()) > 0.01  # the comparison is not between two constant images


def test_folded_equals_unfolded_random_model():
    torch.manual_seed(7)
    model = LambaNet().eval()
    x = torch.rand(1, 4, 48, 64) * 3
    folded = fold_weight_norm(copy.deepcopy(model))
    with torch.inference_mode():
        err = (model(x) - folded(x)).abs().max().item()
    assert err < 1e-5, err


def test_parameter_count():
    assert sum(p.numel() for p in LambaNet().parameters()) == 784_768


def test_state_dict_matches_official_keys(reference):
    expected = {}
    for line in (reference / "official_keys.txt").read_text().splitlines():
        if line.strip():
            name, shape = line.split()
            expected[name] = tuple(int(s) for s in shape.split("x"))
    assert len(expected) == 63
    got = {k: tuple(v.shape) for k, v in LambaNet().state_dict().items()}
    assert got == expected


def test_output_shape_and_range():
    torch.manual_seed(0)
    model = LambaNet().eval()
    with torch.inference_mode():
        out = model(torch.rand(2, 4, 32, 48) * 50)
    assert out.shape == (2, 3, 64, 96)
    assert out.min() >= 0.0 and out.max() <= 1.0
