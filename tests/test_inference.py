"""Running the network: tiles agree with the whole frame, odd sizes, precision choices."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from _util import packed_frame, psnr, run_restorer
from conftest import reference_dir
from darkfix.cli.common import DEVICE
from darkfix.engine import DEVICES
from darkfix.inference import (ALIGN, DEFAULT_MARGIN, Restorer, bands, native_bf16, pick_device, pick_precision,
                               Tile, tiles)
from darkfix.packing import pad_to_multiple
from darkfix.model import GUIDE_RADIUS, LambaNet
from darkfix.weights import load_weights


def _model_and_input():
    """The authors' checkpoint on the reference input when available, else a seeded random model."""
    ref = reference_dir()
    if (ref / "lamba2021_sony_official.pth").is_file() and (ref / "compat_input.npy").is_file():
        model, _ = load_weights(ref / "lamba2021_sony_official.pth")
        x = torch.from_numpy(np.load(ref / "compat_input.npy"))
        packed = F.pixel_unshuffle(x, 2)[0]  # (4, 192, 256)
        return model, np.ascontiguousarray(packed.numpy()), "official"
    torch.manual_seed(3)
    model = LambaNet().eval()
    g = torch.Generator().manual_seed(4)
    smooth = F.interpolate(torch.rand(1, 4, 12, 15, generator=g), size=(192, 240), mode="bilinear")
    packed = (smooth + 0.05 * torch.rand(1, 4, 192, 240, generator=g))[0]
    return model, np.ascontiguousarray(packed.numpy()), "random"


def with_plus_layers(model: LambaNet, seed: int = 5) -> LambaNet:
    """A lamba2021-plus network holding `model`'s weights, its extra layers made far from identity."""
    plus = LambaNet(plus=True)
    plus.load_state_dict(model.state_dict(), strict=False)
    g = torch.Generator().manual_seed(seed)
    for p in (plus.resblock8x_2.conv2[0].weight_g, plus.refine2x[1][0].weight_g):
        p.data.copy_(0.3 * torch.randn(p.shape, generator=g))
    return plus.eval()


@pytest.fixture(scope="module", params=["paper", "plus", "paper+guide", "plus+guide"])
def setup(request):
    """Every agreement test runs on both architectures, with and without the colour guide: the plus layers
    and the guide widen what a tile must read (and so the default margin)."""
    model, packed, kind = _model_and_input()
    if request.param.startswith("plus"):
        model, kind = with_plus_layers(model), f"{kind} + plus layers"
    guide_radius = GUIDE_RADIUS if request.param.endswith("guide") else 0
    return (model.state_dict(), guide_radius), packed, f"{kind}{' + guide' if guide_radius else ''}"


def _fresh(spec):
    """A model from a state dict, or from (state dict, guide radius)."""
    state, guide_radius = spec if isinstance(spec, tuple) else (spec, 0)
    m = LambaNet(plus=any(k.startswith("refine2x") for k in state), guide_radius=guide_radius)
    m.load_state_dict(state)
    return m.eval()


def run(restorer, packed):
    """Assemble the restorer's tiles into one image; check each pixel is written exactly once."""
    _, h, w = packed.shape
    out = np.zeros((3, 2 * h, 2 * w), np.float32)
    hits = np.zeros((2 * h, 2 * w), np.int32)
    calls = []

    def sink(t_out, t):
        assert t_out.shape == (1, 3, 2 * (t.y1 - t.y0), 2 * (t.x1 - t.x0))
        out[:, 2 * t.y0 : 2 * t.y1, 2 * t.x0 : 2 * t.x1] = t_out[0].float().numpy()
        hits[2 * t.y0 : 2 * t.y1, 2 * t.x0 : 2 * t.x1] += 1
        calls.append(t)

    restorer(packed, sink)
    assert np.all(hits == 1)
    return out, calls


def model_output(state, packed):
    """The plain (weight-normalised, unfolded) LambaNet on the whole frame padded to ALIGN: the reference."""
    x, (h, w) = pad_to_multiple(torch.from_numpy(packed)[None], ALIGN)
    with torch.inference_mode():
        return _fresh(state)(x)[0, :, : 2 * h, : 2 * w].numpy()


def test_whole_frame_equals_the_model(setup):
    state, packed, _ = setup
    whole, calls = run(Restorer(_fresh(state), "cpu", "fp32", tile=4096), packed)
    assert len(calls) == 1
    ref = model_output(state, packed)
    assert np.abs(whole - ref).max() < 1e-4
    assert ref.std() > 0.01  # a real image, not a constant one


def test_whole_frames_run_in_one_pass_and_fall_back_to_tiles(setup):
    """CUDA's whole-frame path (`whole_frames`, forced here on the CPU): a frame that fits in a tile goes
    through the network in one pass with the model's result; where that pass runs out of device memory, the
    tiled walk gives the same."""
    state, packed, _ = setup
    packed = np.ascontiguousarray(packed[:, :-3, :-5])  # not a multiple of ALIGN: padded, then cut
    ref = model_output(state, packed)
    r = Restorer(_fresh(state), "cpu", "fp32", tile=4096)
    r.whole_frames = True
    passes, bands = [], []
    whole_pass = r.net.forward
    r.net.forward = lambda x: passes.append(x.shape) or whole_pass(x)
    out, calls = run(r, packed)
    assert len(passes) == 1 and len(calls) == 1 and np.abs(out - ref).max() < 1e-4
    r(packed, lambda t_out, t: bands.append(("tile", t)), band_start=lambda t: bands.append(("start", t)),
      band_done=lambda t: bands.append(("done", t)))
    whole = Tile(0, packed.shape[1], 0, packed.shape[2])
    assert bands == [("start", whole), ("tile", whole), ("done", whole)]

    def out_of_memory(x):
        passes.append(x.shape)
        raise torch.OutOfMemoryError("test")

    r.net.forward, freed = out_of_memory, []
    r.on_out_of_memory = lambda: freed.append(1)
    out, calls = run(r, packed)
    assert len(passes) == 3 and freed == [1] and np.abs(out - ref).max() < 1e-4
    assert len(calls) > 1 and r.tile < max(packed.shape[1:])  # tiles of half the frame from then on


def test_tiled_matches_whole_frame(setup):
    state, packed, kind = setup
    ref = model_output(state, packed)
    tiled, calls = run(Restorer(_fresh(state), "cpu", "fp32", tile=64, margin=64), packed)
    assert len(calls) == int(np.ceil(packed.shape[1] / 64) * np.ceil(packed.shape[2] / 64))
    value = psnr(tiled, ref)
    print(f"tiled (64, margin 64) vs whole frame, {kind} model: {value:.1f} dB, "
          f"max abs {np.abs(tiled - ref).max():.2e}")
    # exact to float rounding where the margin covers the reach (measured 145 dB)
    assert value >= 120.0, value
    assert np.abs(tiled - ref).max() < 1e-5


def test_default_margin_leaves_no_visible_seams(setup):
    """Tiles at the default margin agree with the whole frame to well under half an 8-bit level."""
    state, packed, kind = setup
    ref = model_output(state, packed)
    tiled, _ = run(Restorer(_fresh(state), "cpu", "fp32", tile=64), packed)
    err = float(np.abs(tiled - ref).max())
    print(f"tile 64, default margin {DEFAULT_MARGIN}, {kind} model: max abs {err:.2e}, {psnr(tiled, ref):.1f} dB")
    assert err < 0.5 / 255, err


def test_small_margin_is_worse_but_runs(setup):
    state, packed, _ = setup
    ref = model_output(state, packed)
    tiled, _ = run(Restorer(_fresh(state), "cpu", "fp32", tile=64, margin=0), packed)
    assert np.abs(tiled - ref).max() > 1e-3  # margin 0 leaves seams: the tests above can fail


@pytest.mark.parametrize("h,w", [(1, 1), (3, 5), (17, 33), (37, 53), (16, 16)])
def test_odd_packed_sizes(h, w):
    torch.manual_seed(0)
    state = LambaNet().state_dict()
    r = Restorer(_fresh(state), "cpu", "fp32", tile=32)
    packed = np.random.default_rng(h * w).random((4, h, w), dtype=np.float32) * 4
    out, calls = run(r, packed)
    assert out.shape == (3, 2 * h, 2 * w)
    assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    assert len(calls) == int(np.ceil(h / 32) * np.ceil(w / 32))
    assert np.abs(out - model_output(state, packed)).max() < 1e-4


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 300), st.integers(1, 300), st.integers(1, 8).map(lambda k: k * ALIGN))
def test_tiles_partition_the_frame(h, w, size):
    covered = np.zeros((h, w), np.int32)
    ts = list(tiles(h, w, size))
    for t in ts:
        assert t.y0 % ALIGN == 0 and t.x0 % ALIGN == 0
        assert 0 < t.y1 - t.y0 <= size and 0 < t.x1 - t.x0 <= size
        covered[t.y0 : t.y1, t.x0 : t.x1] += 1
    assert np.all(covered == 1)
    assert len(ts) == int(np.ceil(h / size) * np.ceil(w / size))


def test_fp16_on_cpu_refused():
    with pytest.raises(ValueError, match="fp16"):
        Restorer(LambaNet(), device="cpu", precision="fp16")
    with pytest.raises(ValueError):
        pick_precision("fp8", torch.device("cpu"))
    assert pick_precision("auto", torch.device("cpu")) == (torch.bfloat16 if native_bf16()[0] else torch.float32)
    assert pick_precision("auto", torch.device("cuda")) == torch.float16


def test_device_choice():
    assert pick_device("cpu").type == "cpu"
    with pytest.raises(ValueError, match="unknown device 'tpu' \\(expected auto, cpu, cuda\\)"):
        pick_device("tpu")
    assert tuple(DEVICE.choices) == DEVICES  # the CLI's copy (kept to start without importing the engine)
    if not torch.cuda.is_available():
        assert pick_device("auto").type == "cpu"
        with pytest.raises(ValueError, match="CUDA"):
            pick_device("cuda")


def test_bf16_close_to_fp32(setup):
    state, packed, kind = setup
    crop = np.ascontiguousarray(packed[:, :96, :128])
    ref, _ = run(Restorer(_fresh(state), "cpu", "fp32", tile=4096), crop)
    try:
        bf, _ = run(Restorer(_fresh(state), "cpu", "bf16", tile=4096), crop)
    except RuntimeError as e:  # a CPU without bf16 kernels
        pytest.skip(f"bf16 unsupported on this CPU: {e}")
    value = psnr(bf, ref)
    print(f"bf16 vs fp32 on CPU, {kind} model: {value:.1f} dB")
    assert value >= 35.0, value


def test_restorer_folds_and_freezes():
    r = Restorer(LambaNet(), "cpu", "fp32", tile=100, margin=20)
    assert r.tile == 96 and r.margin == 32  # tile rounded down, margin up, to ALIGN
    assert all(not p.requires_grad for p in r.net.parameters())
    assert not any(type(m).__name__ == "WNConv2d" for m in r.net.modules())


def test_default_margin_covers_what_each_network_reads():
    """32 packed pixels for the paper's network with or without the guide (reach 20 / 27); 48 for plus
    with the guide (37)."""
    assert [Restorer(LambaNet(plus=p, guide_radius=g), "cpu", "fp32").margin
            for p, g in ((False, 0), (False, GUIDE_RADIUS), (True, 0), (True, GUIDE_RADIUS))] == [32, 32, 32, 48]


def test_large_frames_get_smaller_tiles_by_default_on_cpu():
    """Memory stays flat with frame size: above 30 MP the CPU default tile drops to 256, unless the user
    chose a tile."""
    small, large = (1424, 2128), (4096, 6144)  # packed sizes of 12 MP and 100 MP mosaics
    r = Restorer(LambaNet(), "cpu", "fp32")
    assert r.tile_for(*small) == 512 and r.tile_for(*large) == 256
    chosen = Restorer(LambaNet(), "cpu", "fp32", tile=768)
    assert chosen.tile_for(*small) == chosen.tile_for(*large) == 768


def test_bands_order():
    """Rows of tiles top to bottom, or columns left to right, either one reversed; every band complete."""
    rows = bands(40, 70, 32)
    assert [(b[0].y0, b[-1].y1, len(b)) for b in rows] == [(0, 32, 3), (32, 40, 3)]
    assert [t.x0 for t in rows[0]] == [0, 32, 64]
    cols = bands(40, 70, 32, by_columns=True)
    assert [(b[0].x0, b[-1].x1) for b in cols] == [(0, 32), (32, 64), (64, 70)]
    assert all(t.x0 == b[0].x0 for b in cols for t in b) and [t.y0 for t in cols[0]] == [0, 32]
    assert bands(40, 70, 32, by_columns=True, reverse=True) == cols[::-1]
    assert bands(40, 70, 32, reverse=True) == rows[::-1]


def test_auto_precision_follows_what_the_cpu_reports(monkeypatch):
    """bf16 only where torch reports native bf16 units and oneDNN supports them; fp32 elsewhere."""
    from darkfix import inference

    cpu = torch.device("cpu")
    for native, want in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(inference, "native_bf16", lambda native=native: (native, "test"))
        assert inference.pick_precision("auto", cpu) == want
        assert inference.precision_reason("auto", cpu).startswith(f"auto: {'bf16' if native else 'fp32'}")
    assert inference.pick_precision("fp32", cpu) == torch.float32
    assert inference.precision_reason("bf16", cpu) == "as requested"
    monkeypatch.undo()
    native, why = inference.native_bf16()
    assert isinstance(native, bool) and why


def test_the_cuda_tests_frame_runs_through_the_packaged_weights():
    """tests/test_cuda.py runs only where a GPU is: its frame must be one the packaged weights read (a 4-plane
    frame against noise-aware weights went unnoticed until the first GPU run). Here on the CPU, a crop."""
    model = load_weights()[0]
    out = run_restorer(Restorer(model, device="cpu", precision="fp32"), packed_frame(model.in_channels, (64, 96)))
    assert out.shape == (3, 128, 192) and np.isfinite(out).all()
    assert 0.05 < out.mean() < 1.0


@pytest.mark.parametrize("tile", [48, 4096])
def test_ensemble_averages_the_frame_and_its_transpose(tile):
    """`ensemble`: the mean of the network's output and its output for the transposed mosaic (packed: the
    greens, and their noise planes, swapped) transposed back; in tiles as whole, and on CUDA's whole-frame path."""
    model = load_weights()[0]
    packed = packed_frame(model.in_channels, (70, 100))  # neither side a multiple of ALIGN
    single = Restorer(model, device="cpu", precision="fp32", tile=4096)
    transposed = np.ascontiguousarray(packed[[0, 2, 1, 3, 4, 6, 5, 7]].transpose(0, 2, 1))
    ref = (run_restorer(single, packed) + run_restorer(single, transposed).transpose(0, 2, 1)) / 2
    r = Restorer(model, device="cpu", precision="fp32", tile=tile)
    out = run_restorer(r, packed, ensemble=True)
    assert np.abs(out - ref).max() < 1e-4
    assert np.abs(out - run_restorer(single, packed)).mean() > 1e-3  # the second pass counts
    assert np.abs(run_restorer(r, packed) - out).mean() > 1e-3  # the setting belongs to the call, not the engine
    r.whole_frames = True
    assert np.abs(run_restorer(r, packed, ensemble=True) - ref).max() < 1e-4
    if tile < max(packed.shape[1:]):
        return  # tiles only: no whole-frame pass to run out of memory
    whole_pass, passes = r.net.forward, []

    def second_view_runs_out(x):  # the first view fits on the device, the transposed one does not
        passes.append(x.shape)
        if len(passes) == 2:
            raise torch.OutOfMemoryError("test")
        return whole_pass(x)

    r.net.forward = second_view_runs_out
    out = run_restorer(r, packed, ensemble=True)  # both views again, in tiles: not the first view alone
    assert len(passes) == 2 and r.tile < 100 and np.abs(out - ref).max() < 1e-4
