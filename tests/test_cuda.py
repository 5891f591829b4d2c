"""CUDA checks, run where a GPU is (benchmarks/gpu_check.sh runs them); skipped on CPU-only machines."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from _util import packed_frame, psnr, run_restorer as _run
from darkfix.inference import Restorer
from darkfix.weights import load_weights

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device (torch reports none)")


@pytest.fixture(scope="module")
def packed():
    # the packaged weights are noise-aware since v4: a 4-plane frame failed every test here (first GPU run)
    return packed_frame(load_weights()[0].in_channels)


@pytest.mark.parametrize("precision, floor_db", [("fp16", 45.0), ("bf16", 38.0)])
def test_cuda_half_precision_close_to_fp32(packed, precision, floor_db):
    model, _ = load_weights()
    ref = _run(Restorer(model, device="cuda", precision="fp32"), packed)
    got = _run(Restorer(load_weights()[0], device="cuda", precision=precision), packed)
    assert psnr(got, ref) >= floor_db


def test_cuda_matches_cpu(packed):
    crop = np.ascontiguousarray(packed[:, :512, :768])
    cpu = _run(Restorer(load_weights()[0], device="cpu"), crop)
    gpu = _run(Restorer(load_weights()[0], device="cuda", precision="fp32"), crop)
    assert psnr(gpu, cpu) >= 60.0


def test_cuda_out_of_memory_splits_for_real(packed):
    """With most of the GPU's memory taken, a whole-frame tile runs out and is split; the result is the
    same as with memory free."""
    ref = _run(Restorer(load_weights()[0], device="cuda", precision="fp16"), packed)
    free, _ = torch.cuda.mem_get_info()
    hog = torch.empty(max(0, free - (600 << 20)), dtype=torch.uint8, device="cuda")  # leave ~0.6 GB
    try:
        restorer = Restorer(load_weights()[0], device="cuda", precision="fp16", tile=4096)
        got = _run(restorer, packed)
    finally:
        del hog
        torch.cuda.empty_cache()
    assert restorer.tile < 4096  # it split
    assert psnr(got, ref) >= 45.0
