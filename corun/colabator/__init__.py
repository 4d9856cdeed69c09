"""Colabator (Fang et al., NeurIPS 2024, Sec. 3.3): mean-teacher fine-tuning on real hazy photos.

Two pieces live here, both usable on their own:

* :mod:`corun.colabator.scoring` – quality / haze scorers, block-wise scoring and the per-pixel
  weight map of a candidate pseudo label;
* :mod:`corun.colabator.label_pool` – the file-backed *optimal label pool* shared by all DDP ranks,
  which keeps per image the best candidate seen so far (replace only when both scores are ≥).

Neither imports pyiqa or open_clip at import time; scorers load them when constructed.
"""
from .label_pool import LabelPool, PoolEntry, PoolError, compare_tables
from .scoring import (ClipHazeScorer, DarkChannelScorer, PyiqaScorer, Scorer, ScoreResult,
                      ScorerWeightsError, check_scorers_vs_metrics, create_scorer, score_blocks,
                      weight_map)

__all__ = [
    "LabelPool", "PoolEntry", "PoolError", "compare_tables",
    "Scorer", "DarkChannelScorer", "PyiqaScorer", "ClipHazeScorer", "ScorerWeightsError",
    "ScoreResult", "create_scorer", "score_blocks", "weight_map", "check_scorers_vs_metrics",
]
