"""Colabator (Fang et al., NeurIPS 2024, arXiv:2406.07966, Sec. 3.3): the coherence-based label generator,
mean-teacher fine-tuning on real hazy photos for CORUN or any restorer.

The pieces, in the order of their imports (each imports only those above it):

* :mod:`corun.colabator.scorer_base` – the scorer interface (:class:`Scorer`);
* :mod:`corun.colabator.scoring` – quality / haze scorers and the paper's *global coherence* (whole-image
  scores) and *local coherence* (the per-pixel weight map from 32×32-block scores) of a candidate label;
  :mod:`corun.colabator.daclip` – upstream's DA-CLIP haze scorer;
* :mod:`corun.colabator.label_pool` – the file-backed *optimal label pool* shared by all DDP ranks, which
  keeps per image the best candidate seen so far (:func:`accept`: replace only when both scores are ≥);
* :mod:`corun.colabator.finetune` – one fine-tuning iteration (teacher, scoring, pool, loss) for the trainer.

None imports pyiqa or open_clip at import time; scorers load them when constructed.
"""
from .label_pool import LabelPool, PoolEntry, PoolError, accept, compare_tables
from .scorer_base import Scorer, ScorerWeightsError
from .scoring import (ClipHazeScorer, DarkChannelScorer, PyiqaScorer, ScoreResult, check_scorers_vs_metrics,
                      create_scorer, global_coherence, local_coherence, score_blocks, weight_map)

__all__ = [
    "LabelPool", "PoolEntry", "PoolError", "accept", "compare_tables",
    "Scorer", "DarkChannelScorer", "PyiqaScorer", "ClipHazeScorer", "ScorerWeightsError",
    "ScoreResult", "create_scorer", "score_blocks", "weight_map", "global_coherence", "local_coherence",
    "check_scorers_vs_metrics",
]
