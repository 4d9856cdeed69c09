"""The scorer interface of Colabator's label scoring (:mod:`corun.colabator.scoring`), on its own so that
scorers defined elsewhere (:mod:`corun.colabator.daclip`) and the scoring functions share it without
importing each other.

The scorer interface
--------------------
A scorer is any object with

* ``name`` (str), ``higher_is_better`` (bool), ``raw_range`` ((lo, hi): documented raw score range);
* ``raw_scores(images) -> (B,)``: raw per-image scores of a (B, 3, H, W) batch in [0, 1];
* ``normalise(raw) -> (B,)``: the map to [0, 1] with **1 = best** (clear / high quality);
* optionally ``max_batch`` (int): the most images per ``raw_scores`` call when scoring blocks.

:class:`Scorer` provides ``normalise`` (linear in ``raw_range``, clamped, flipped when lower is
better) and ``score = normalise ∘ raw_scores``; DA-CLIP or any other scorer can plug in by
subclassing it or by duck typing.
"""
from __future__ import annotations

from torch import Tensor


class ScorerWeightsError(RuntimeError):
    """A scorer's weights are not on this machine; the message names the metric, file and URL."""


class Scorer:
    """Base class: subclasses set ``name``, ``higher_is_better``, ``raw_range`` and ``raw_scores``."""

    name: str = "scorer"
    higher_is_better: bool = True
    raw_range: tuple[float, float] = (0.0, 1.0)
    max_batch: int = 1024

    def raw_scores(self, images: Tensor) -> Tensor:
        raise NotImplementedError

    def normalise(self, raw: Tensor) -> Tensor:
        """Linear map of ``raw_range`` onto [0, 1], clamped, flipped when lower is better (1 = best)."""
        lo, hi = self.raw_range
        s = ((raw.float() - lo) / (hi - lo)).clamp(0.0, 1.0)
        return s if self.higher_is_better else 1.0 - s

    def score(self, images: Tensor) -> Tensor:
        """Normalised scores (B,) in [0, 1], 1 = best."""
        return self.normalise(self.raw_scores(images))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"
