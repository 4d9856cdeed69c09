"""The paper's coherence-based scoring (corun.colabator.scoring): the global coherence the label pool
compares and the local coherence, the per-pixel weight map; ``weight_map`` is the two together."""
from __future__ import annotations

import pytest
import torch

from corun.colabator import DarkChannelScorer, Scorer, global_coherence, local_coherence, weight_map


class MeanScorer(Scorer):
    """Quality = mean brightness (a stand-in with an exact block structure)."""

    name, higher_is_better, raw_range = "mean", True, (0.0, 1.0)

    def raw_scores(self, images):
        return images.mean(dim=(1, 2, 3))


def images():
    x = torch.zeros(2, 3, 32, 48)
    x[0, :, :16, :16] = 1.0                      # one bright block in image 0
    x[1] = torch.linspace(0, 1, 48).view(1, 1, 48).expand(3, 32, 48)
    return x


def test_global_coherence_is_the_whole_image_scores():
    q, h = MeanScorer(), DarkChannelScorer()
    qg, hg = global_coherence(q, h, images())
    assert torch.allclose(qg, images().mean(dim=(1, 2, 3)))
    assert torch.allclose(hg, h.score(images()))


@pytest.mark.parametrize("combine", ["mean", "product"])
@pytest.mark.parametrize("haze_weighting", ["clear", "upstream"])
def test_weight_map_is_global_plus_local_coherence(combine, haze_weighting):
    q, h = MeanScorer(), DarkChannelScorer()
    res = weight_map(q, h, images(), block=16, combine=combine, haze_weighting=haze_weighting)
    qg, hg = global_coherence(q, h, images())
    weight, q_map, h_map, q_blocks, h_blocks = local_coherence(q, h, images(), 16, combine, haze_weighting)
    assert torch.equal(res.q_global, qg) and torch.equal(res.h_global, hg)
    for a, b in ((res.weight, weight), (res.q_map, q_map), (res.h_map, h_map), (res.q_blocks, q_blocks),
                 (res.h_blocks, h_blocks)):
        assert torch.equal(a, b)
    assert q_blocks.shape == (2, 1, 2, 3) and weight.shape == (2, 1, 32, 48)
    assert q_blocks[0, 0, 0, 0] == 1.0 and q_blocks[0, 0, 1, 2] == 0.0  # the bright block, a dark one
    assert 0.0 <= float(weight.min()) <= float(weight.max()) <= 1.0


def test_local_coherence_refuses_an_unknown_haze_weighting_before_scoring():
    class Exploding(MeanScorer):
        def raw_scores(self, images):
            raise AssertionError("scored")

    with pytest.raises(ValueError, match="haze_weighting"):
        local_coherence(Exploding(), Exploding(), images(), haze_weighting="hazy")
