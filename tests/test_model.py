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


def test_plus_network_starts_as_the_paper_network():
    """Paper weights in a plus network compute exactly what they compute; its extra layers then train."""
    torch.manual_seed(2)
    paper = LambaNet().eval()
    plus = LambaNet(plus=True).eval()
    missing, unexpected = plus.load_state_dict(paper.state_dict(), strict=False)
    assert not unexpected and all(k.split(".")[0] in ("resblock8x_2", "refine2x") for k in missing)
    assert sum(p.numel() for p in plus.parameters()) == 784_768 + 80_104
    x = torch.rand(1, 4, 64, 96)
    with torch.no_grad():
        assert torch.equal(plus(x), paper(x))
        plus.refine2x[1][0].weight_g.fill_(0.1)
        assert (plus(x) - paper(x)).abs().max() > 1e-3
    assert plus.architecture == "lamba2021-plus" and paper.architecture == "lamba2021"


def test_guide_restores_local_means_and_leaves_noise_alone():
    """The colour guide moves a biased output to the input's local means, and does not bring the input's
    noise back into an output that is right."""
    from darkfix.model import guide_gain

    def guide(image, packed, radius):  # as LambaNet.fine applies the gains: per packed pixel's 2 x 2
        gain = guide_gain(F.avg_pool2d(image, 2), packed, radius)
        return (image * gain.repeat_interleave(2, -1).repeat_interleave(2, -2)).clamp(0.0, 1.0)

    g = torch.Generator().manual_seed(0)
    field = F.interpolate(0.1 + 0.4 * torch.rand(1, 3, 6, 8, generator=g), size=(96, 128), mode="bicubic",
                          align_corners=False).clamp(0.05, 0.6)  # (1, 3, 96, 128): the clean image
    half = F.avg_pool2d(field, 2)
    sigma = 0.05
    packed = torch.cat([half[:, :1], half[:, 1:2], half[:, 1:2], half[:, 2:]], 1)
    packed = packed + sigma * torch.randn(packed.shape, generator=g)
    biased = field * torch.tensor([0.85, 1.0, 0.9]).view(1, 3, 1, 1)  # red and blue 15 % and 10 % low
    fixed = guide(biased, packed, 6)
    for c, bias in ((0, 0.85), (2, 0.9)):
        ratio = float(fixed[0, c].mean() / field[0, c].mean())
        assert abs(ratio - 1.0) < abs(bias - 1.0) / 3, (c, ratio)  # most of the bias gone
    kept = guide(field, packed, 6)
    assert float((kept - field).pow(2).mean().sqrt()) < 0.1 * sigma  # noise of the input stays out
    assert float((guide(field, half[:, [0, 1, 1, 2]], 6) - field).abs().max()) < 1e-4  # agreement: no change


def test_guide_leaves_clipped_input_out():
    """Clipped input (a window past white) is left out of the guide's statistics: inside it the gain is
    1, and next to it the output is pulled towards the room's own local means, not the window's."""
    from darkfix.model import guide_gain

    room = torch.tensor([0.30, 0.15, 0.08]).view(1, 3, 1, 1)  # a warm room, its input exact
    packed = room[:, [0, 1, 1, 2]].expand(1, 4, 32, 48).clone()
    packed[:, :, 8:24, 16:32] = 1.0  # the window
    out = (room * 1.15).expand(1, 3, 32, 48).clone()  # the output: a brighter, greyer halo
    out[:, :, 8:24, 16:32] = 1.0
    gain = guide_gain(out, packed, 6)
    assert float((gain[:, :, 8:24, 16:32] - 1.0).abs().max()) == 0.0  # the window itself: untouched
    fixed = (out * gain)[0, :, :, 24] / room[0, :, 0, :]  # (3, rows) of one column, against the room
    assert float(fixed[:, :2].max()) < 1.03  # far from the window: the room's level
    # next to it, boxes half window: pulled half way (the statistics with the window in: 1.10-1.14)
    assert float(fixed[:, 6:8].max()) < 1.08


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
