"""A shared test helper: offer pseudo labels with chosen scores to a label pool."""
from __future__ import annotations

import torch


def offer(pool, it, scores):
    """Offer candidates {name: (q, h)} at iteration ``it``; labels are flat grey 8×8 images of value q.

    Returns, per candidate, whether the pool kept it."""
    names = list(scores)
    q = torch.tensor([scores[n][0] for n in names])
    h = torch.tensor([scores[n][1] for n in names])
    labels = q[:, None, None, None].expand(len(names), 3, 8, 8).clone()
    ones = torch.ones(len(names), 1, 8, 8)
    return pool.update(names, labels, ones * 0.5, q, h, ones * 0.7, iteration=it)[3].tolist()
