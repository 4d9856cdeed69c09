"""Colabator's scorers and weight maps (corun.colabator.scoring): block layout, direction of the
offline scorers on a half-hazy photo, normalisation, the factory, and clear errors without weights."""
from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn.functional as F

from corun.colabator import scoring
from corun.colabator.scoring import (ClipHazeScorer, DarkChannelScorer, PyiqaScorer, Scorer,
                                     ScorerWeightsError, check_scorers_vs_metrics, create_scorer,
                                     score_blocks, to_blocks, weight_map)


def photo(h: int = 128, w: int = 256) -> torch.Tensor:
    """A natural clean photo (skimage's bundled astronaut), (1, 3, h, w) in [0, 1]."""
    from skimage.data import astronaut

    x = torch.from_numpy(astronaut()).permute(2, 0, 1).float()[None] / 255
    return F.interpolate(x[..., 100:356, :], size=(h, w), mode="area").clamp(0, 1)


def left_half_hazy(x: torch.Tensor, t: float = 0.3, airlight: float = 0.85) -> torch.Tensor:
    """ASM with constant transmission t on the left half: I = J t + A (1 − t)."""
    y = x.clone()
    half = x.shape[-1] // 2
    y[..., :half] = x[..., :half] * t + airlight * (1 - t)
    return y


class MeanScorer(Scorer):
    """Raw score = mean intensity; records the batch size of every call."""

    name, higher_is_better, raw_range = "mean", True, (0.0, 1.0)

    def __init__(self, max_batch: int = 1024):
        self.max_batch, self.calls = max_batch, []

    def raw_scores(self, images):
        self.calls.append(len(images))
        return images.mean(dim=(1, 2, 3))


@pytest.fixture(scope="module")
def piqe():
    return create_scorer("piqe")


def test_blocks_are_scored_in_one_batch_in_row_major_order():
    values = torch.arange(6, dtype=torch.float32).view(1, 1, 2, 3) / 10   # a 2×3 grid of flat blocks
    img = F.interpolate(values, scale_factor=32, mode="nearest").expand(2, 3, 64, 96).contiguous()
    scorer = MeanScorer()
    g, blocks = score_blocks(scorer, img, block=32)
    assert blocks.shape == (2, 1, 2, 3)
    assert torch.allclose(blocks, values.expand(2, 1, 2, 3))
    assert torch.allclose(g, values.mean().expand(2))
    assert scorer.calls == [2, 12]            # the whole batch, then all 12 blocks in one call
    chunked = MeanScorer(max_batch=5)
    assert torch.allclose(score_blocks(chunked, img, block=32)[1], blocks)
    assert chunked.calls == [2, 5, 5, 2]


def test_padding_and_upsampling_to_full_resolution():
    img = torch.rand(2, 3, 70, 45)
    blocks, (nh, nw) = to_blocks(img, 32)
    assert (nh, nw) == (3, 2) and blocks.shape == (12, 3, 32, 32)
    assert torch.equal(blocks[0], img[0, :, :32, :32])
    assert torch.equal(blocks[1][..., :13], img[0, :, :32, 32:45])     # right block: 13 real columns + reflection
    r = weight_map(MeanScorer(), DarkChannelScorer(), img, block=32)
    assert r.weight.shape == r.q_map.shape == r.h_map.shape == (2, 1, 70, 45)
    assert r.q_blocks.shape == (2, 1, 3, 2)
    tiny = weight_map(MeanScorer(), DarkChannelScorer(), torch.rand(1, 3, 10, 20), block=32)   # pad > size
    assert tiny.weight.shape == (1, 1, 10, 20) and tiny.q_blocks.shape == (1, 1, 1, 1)
    # bilinear with align_corners=False keeps block centres at their block values
    const = F.interpolate(torch.tensor([[[[0.2, 0.8]]]]), scale_factor=32, mode="nearest").expand(1, 3, 32, 64)
    m = weight_map(MeanScorer(), MeanScorer(), const.contiguous(), block=32).q_map
    assert m[0, 0, 16, 0].item() == pytest.approx(0.2) and m[0, 0, 16, -1].item() == pytest.approx(0.8)
    assert m[0, 0, 16, 15].item() < m[0, 0, 16, 40].item()


def test_hazy_left_half_gets_lower_haze_and_weight_maps(piqe):
    clean = photo()
    hazy = left_half_hazy(clean)
    r = weight_map(piqe, DarkChannelScorer(), torch.cat([clean, hazy]), block=32)
    for t in (r.weight, r.q_map, r.h_map, r.q_global, r.h_global):
        assert t.min() >= 0 and t.max() <= 1 and torch.isfinite(t).all()
    left, right = slice(0, 128), slice(128, 256)
    assert r.h_map[1, ..., left].mean() < r.h_map[1, ..., right].mean() - 0.2
    assert r.weight[1, ..., left].mean() < r.weight[1, ..., right].mean()
    # PIQE: the same region scores lower once hazy (haze flattens detail); so does the whole image
    assert r.q_map[1, ..., left].mean() < r.q_map[0, ..., left].mean() - 0.03
    assert r.q_global[1] < r.q_global[0] and r.h_global[1] < r.h_global[0]
    # the clean half of the hazy photo scores like the clean photo (local, not global)
    assert torch.allclose(r.h_blocks[1, ..., 5:], r.h_blocks[0, ..., 5:], atol=0.05)
    prod = weight_map(piqe, DarkChannelScorer(), hazy, block=32, combine="product")
    assert torch.allclose(prod.weight, prod.q_map * prod.h_map)
    with pytest.raises(ValueError, match="combine"):
        weight_map(piqe, DarkChannelScorer(), hazy, combine="max")


def test_upstream_haze_weighting_favours_the_hazy_blocks():
    """Upstream weighs blocks by P(hazy) (1 − normalised haze); the default weighs clear blocks up."""
    hazy = left_half_hazy(photo())
    q, h = MeanScorer(), DarkChannelScorer()
    clear = weight_map(q, h, hazy, block=32)
    upstream = weight_map(q, h, hazy, block=32, haze_weighting="upstream")
    for name in ("q_global", "h_global", "q_map", "h_map", "h_blocks"):      # only the weight changes
        assert torch.equal(getattr(clear, name), getattr(upstream, name))
    assert torch.allclose(clear.weight, (clear.q_map + clear.h_map) / 2)
    assert torch.allclose(upstream.weight, (upstream.q_map + 1 - upstream.h_map) / 2, atol=1e-6)
    left, right = slice(0, 128), slice(128, 256)
    haze_term = {k: 2 * r.weight - r.q_map for k, r in (("clear", clear), ("upstream", upstream))}
    assert haze_term["clear"][..., left].mean() < haze_term["clear"][..., right].mean() - 0.2
    assert haze_term["upstream"][..., left].mean() > haze_term["upstream"][..., right].mean() + 0.2
    prod = weight_map(q, h, hazy, block=32, combine="product", haze_weighting="upstream")
    assert torch.allclose(prod.weight, prod.q_map * (1 - prod.h_map), atol=1e-6)
    q.calls.clear()
    with pytest.raises(ValueError, match="haze_weighting"):
        weight_map(q, h, hazy, haze_weighting="hazy")
    assert q.calls == []                                                    # refused before any scoring


def test_normalisation_maps_best_to_one(piqe):
    assert piqe.name == "pyiqa:piqe" and not piqe.higher_is_better and piqe.raw_range == (0.0, 100.0)
    assert piqe.normalise(torch.tensor([0.0, 25.0, 100.0, 140.0])).tolist() == [1.0, 0.75, 0.0, 0.0]
    black = torch.zeros(1, 3, 32, 32)                                  # pyiqa's PIQE gives NaN here
    assert piqe.raw_scores(black).item() == 100.0
    dcp = DarkChannelScorer()
    assert dcp.normalise(torch.tensor([0.0, 0.3])).tolist() == pytest.approx([1.0, 0.7])
    clean = photo(64, 64)
    assert dcp.score(left_half_hazy(clean, t=0.0)) < dcp.score(clean)   # all airlight vs clean


def test_factory_and_overlap_warnings(tmp_path):
    assert isinstance(create_scorer("dark_channel"), DarkChannelScorer)
    custom = MeanScorer()
    assert create_scorer(custom) is custom                              # e.g. a DA-CLIP scorer object
    with pytest.raises(ValueError, match="unknown scorer"):
        create_scorer("fancy")
    with pytest.raises(ValueError, match="full-reference"):
        PyiqaScorer("psnr")
    assert check_scorers_vs_metrics(["piqe", "clip:ViT-B-32/openai"]) == []
    warnings = check_scorers_vs_metrics(["pyiqa:nima-koniq", "pyiqa:brisque_matlab", "dark_channel", "piqe"])
    assert len(warnings) == 3
    assert "nima" in warnings[0] and "brisque" in warnings[1] and "fade" in warnings[2]
    assert check_scorers_vs_metrics([DarkChannelScorer()], eval_metrics=("brisque",)) == []


def test_pyiqa_metric_without_weights_fails_early_and_clearly(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))                    # an empty pyiqa cache
    with pytest.raises(ScorerWeightsError) as err:
        PyiqaScorer("musiq")
    msg = str(err.value)
    assert "'musiq'" in msg and "musiq_koniq_ckpt" in msg and str(tmp_path) in msg and "https://" in msg
    with pytest.raises(ScorerWeightsError, match="nope.pth"):
        create_scorer("pyiqa:musiq", weights=tmp_path / "nope.pth")
    # metrics outside the file table: pyiqa's own downloader is refused instead of reaching the network
    from pyiqa.utils import download_util

    with scoring._pyiqa_offline("some-metric", tmp_path, allow_download=False):
        with pytest.raises(ScorerWeightsError, match="some-metric.*\n.*x.pth"):
            download_util.load_file_from_url("https://example.invalid/x.pth")
    assert download_util.download_url_to_file is not None and download_util.DEFAULT_CACHE_DIR != str(tmp_path)


def test_pyiqa_scorer_reads_weights_from_the_cache(shared_dir, tmp_path, monkeypatch):
    weights = shared_dir / "weights" / "pyiqa" / "brisque_svm_weights.pth"
    if not weights.is_file():
        pytest.skip(f"{weights} not found")
    (tmp_path / "hub" / "pyiqa").mkdir(parents=True)
    shutil.copy(weights, tmp_path / "hub" / "pyiqa" / weights.name)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    brisque = PyiqaScorer("brisque")
    assert not brisque.higher_is_better and brisque.raw_range == (0.0, 150.0)
    clean = photo()
    blurred = F.avg_pool2d(clean, 5, stride=1, padding=2, count_include_pad=False)
    s = brisque.score(torch.cat([clean, blurred]))
    assert 0 <= s.min() and s.max() <= 1 and s[0] > s[1]


def test_clip_haze_scorer_without_weights_fails_clearly(tmp_path):
    pytest.importorskip("open_clip")
    with pytest.raises(ScorerWeightsError) as err:
        create_scorer("clip:ViT-B-32/openai", cache_dir=tmp_path)
    msg = str(err.value)
    assert "ViT-B-32" in msg and "openai" in msg and str(tmp_path) in msg and "https://" in msg
    with pytest.raises(ValueError, match="no pretrained tag"):
        ClipHazeScorer("ViT-B-32", pretrained="no-such-tag", cache_dir=tmp_path)


def test_clip_haze_scorer_math_on_a_tiny_model():
    open_clip = pytest.importorskip("open_clip")
    torch.manual_seed(0)
    model = open_clip.CLIP(embed_dim=16, vision_cfg={"image_size": 32, "layers": 1, "width": 32, "patch_size": 16,
                                                      "head_width": 16},
                           text_cfg={"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2,
                                     "layers": 1})
    scorer = ClipHazeScorer.from_model(model, open_clip.get_tokenizer("ViT-B-32"), name="clip:tiny")
    x = torch.rand(3, 3, 48, 64, requires_grad=True)
    p = scorer.raw_scores(x)
    assert p.shape == (3,) and ((p > 0) & (p < 1)).all()
    p.sum().backward()                                                 # usable as CORUNLoss's haze_scorer
    assert x.grad is not None and x.grad.abs().sum() > 0
    g, blocks = score_blocks(scorer, x.detach(), block=32)
    assert torch.allclose(g, 1 - p.detach(), atol=1e-5) and blocks.shape == (3, 1, 2, 2)
