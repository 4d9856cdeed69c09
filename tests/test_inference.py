"""Padding, tiling and the corun.dehaze API."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import corun
from corun.inference import run_model, tile_starts
from corun.utils import pad_to_multiple
from corun.model import CORUNConfig, CORUNOutput


class Pointwise(torch.nn.Module):
    """Stands in for CORUN where tiling must be exact: every output pixel depends on its input pixel only."""

    config = CORUNConfig(depth=2)
    depth = 2

    def forward(self, x):
        self.seen = getattr(self, "seen", []) + [tuple(x.shape[-2:])]
        t = x.mean(1, keepdim=True)
        return CORUNOutput(image=x.clamp(0, 1) ** 2, stages=[x, x ** 2], transmissions=[t, t * 0.5])


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    return corun.CORUN(depth=2, dim=8).eval()


@pytest.mark.parametrize("h,w", [(13, 21), (8, 8), (3, 5), (1, 1), (17, 64)])
def test_pad_to_multiple_and_crop_back(h, w):
    x = torch.rand(1, 3, h, w)
    xp, size = pad_to_multiple(x, 8)
    assert size == (h, w) and xp.shape[-2] % 8 == 0 and xp.shape[-1] % 8 == 0
    assert xp.shape[-2] - h < 8 and xp.shape[-1] - w < 8
    assert torch.equal(xp[..., :h, :w], x)
    pw = (-w) % 8
    if 0 < pw < w and (-h) % 8 < h:  # reflection (no edge copies) when the image is big enough
        assert torch.equal(xp[..., :h, w], x[..., :h, w - 2])


@pytest.mark.parametrize("h,w", [(13, 21), (37, 50)])
def test_model_output_has_input_size(small_model, h, w):
    out = run_model(small_model, torch.rand(2, 3, h, w), keep_stages=True)
    assert out.image.shape == (2, 3, h, w)
    assert all(s.shape == (2, 3, h, w) for s in out.stages)
    assert all(t.shape == (2, 1, h, w) for t in out.transmissions)


def test_tile_starts_cover_everything():
    for size, tile, overlap in [(100, 32, 8), (64, 64, 8), (65, 32, 16), (1000, 256, 64)]:
        starts = tile_starts(size, tile, overlap)
        covered = np.zeros(size, bool)
        for s in starts:
            covered[s:s + tile] = True
        assert covered.all() and starts[-1] + min(tile, size) == size
        assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))


def test_tiled_blending_is_exact_for_a_pointwise_model():
    x = torch.rand(1, 3, 70, 101)
    whole = run_model(Pointwise(), x, keep_stages=True)
    net = Pointwise()
    tiled = run_model(net, x, tile=32, overlap=16, keep_stages=True)
    assert len(net.seen) > 4 and all(s == (32, 32) for s in net.seen)
    assert torch.allclose(tiled.image, whole.image, atol=1e-6)
    for a, b in zip(tiled.stages + tiled.transmissions, whole.stages + whole.transmissions):
        assert torch.allclose(a, b, atol=1e-6)


def test_tiled_corun_agrees_with_whole_image(small_model):
    g = torch.Generator().manual_seed(0)
    # a smooth scene, like a photo, rather than white noise
    x = torch.nn.functional.interpolate(torch.rand(1, 3, 12, 16, generator=g), size=(96, 128),
                                        mode="bilinear", align_corners=False)
    whole = run_model(small_model, x).image
    tiled = run_model(small_model, x, tile=64, overlap=32).image
    assert tiled.shape == whole.shape
    diff = (tiled - whole).abs()
    # spectral attention pools over each tile, so this is agreement, not identity
    assert diff.mean() < 0.005 and diff.max() < 0.05


def test_bad_tile_size(small_model):
    with pytest.raises(ValueError, match="multiple of 8"):
        run_model(small_model, torch.rand(1, 3, 64, 64), tile=20)


def test_dehaze_api_returns_the_kind_it_was_given(small_model, tmp_path):
    arr = np.random.default_rng(0).random((21, 30, 3)).astype(np.float32)
    out = corun.dehaze(arr, model=small_model, device="cpu")
    assert isinstance(out, np.ndarray) and out.shape == (21, 30, 3)
    pil = Image.fromarray((arr * 255).astype(np.uint8))
    assert corun.dehaze(pil, model=small_model).size == (30, 21)
    pil.save(tmp_path / "p.png")
    from_path = corun.dehaze(tmp_path / "p.png", model=small_model)
    assert isinstance(from_path, Image.Image) and from_path.size == (30, 21)
    t = torch.from_numpy(arr).permute(2, 0, 1)
    out_t = corun.dehaze(t, model=small_model)
    assert out_t.shape == (3, 21, 30)
    assert np.allclose(out_t.permute(1, 2, 0).numpy(), out, atol=1e-6)


def test_dehaze_without_weights_says_how_to_get_them(monkeypatch, tmp_path):
    import corun.weights as w

    monkeypatch.delenv("CORUN_WEIGHTS", raising=False)
    monkeypatch.setattr(w, "REPO_WEIGHTS", tmp_path / "none.safetensors")
    with pytest.raises(w.NoWeightsError, match="no trained weights are available.*\n.*--weights"):
        corun.dehaze(np.zeros((8, 8, 3), np.float32))


# ----------------------------------------------------------------------------------- the border margin

@pytest.mark.parametrize("h,w,margin", [(37, 50, 8), (21, 30, 16), (10, 12, 16)])
def test_margin_runs_on_the_mirrored_image_and_crops_back(small_model, h, w, margin):
    """margin > 0 = the network on the image mirrored outwards (edge copies when a side is too short),
    cut back to the input's size; margin 0 is the plain run."""
    from corun.inference import reflect_margin

    x = torch.rand(1, 3, h, w)
    out = run_model(small_model, x, keep_stages=True, margin=margin)
    assert out.image.shape == x.shape and all(t.shape == (1, 1, h, w) for t in out.transmissions)
    mode = "reflect" if margin < min(h, w) else "replicate"
    padded = torch.nn.functional.pad(x, (margin,) * 4, mode=mode)
    assert torch.equal(reflect_margin(x, margin), padded)
    full = run_model(small_model, padded, keep_stages=True)
    cut = (..., slice(margin, margin + h), slice(margin, margin + w))
    assert torch.allclose(out.image, full.image[cut], atol=1e-6)
    assert torch.allclose(out.stages[0], full.stages[0][cut], atol=1e-6)
    assert torch.allclose(out.transmissions[-1], full.transmissions[-1][cut], atol=1e-6)
    assert not torch.allclose(out.image, run_model(small_model, x).image, atol=1e-4)  # it changes the result
    assert torch.equal(run_model(small_model, x, margin=0).image, run_model(small_model, x).image)


def test_margin_with_tiles_and_bad_margin(small_model):
    x = torch.rand(1, 3, 40, 56)
    tiled = run_model(small_model, x, tile=32, overlap=8, margin=8)
    assert tiled.image.shape == x.shape and torch.isfinite(tiled.image).all()
    with pytest.raises(ValueError, match="margin must be 0 or more"):
        run_model(small_model, x, margin=-1)


def test_dehaze_api_passes_the_margin(small_model):
    arr = np.random.default_rng(0).random((24, 40, 3)).astype(np.float32)
    ours = corun.dehaze(arr, small_model, device="cpu", margin=16)
    direct = run_model(small_model, torch.from_numpy(arr).permute(2, 0, 1)[None], margin=16).image
    assert np.allclose(ours, direct[0].permute(1, 2, 0).clamp(0, 1).numpy(), atol=1e-6)
