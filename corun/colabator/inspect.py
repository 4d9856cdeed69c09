"""Looking into a Colabator run: acceptance over iterations, per-image score histories, images that never
improved, and the pool's state at two points in time (notebooks 03 and 04).

Everything here reads a :class:`~corun.colabator.label_pool.LabelPool` (its ``history()`` and ``table()``)
or a run's checkpoints; nothing writes.

* :func:`acceptance_by_iteration` — per iteration: candidates offered, accepted, first sights, improvements
  (``both_better`` / ``shape_changed``), the acceptance rate and the *improvement rate* among images the
  pool already held (first sights are always accepted, so the plain rate starts at 1 by construction);
  both also as rolling rates over a window of iterations.
* :func:`per_image_summary` — one row per image: offers, improvements, first and current scores;
  ``never_improved`` marks images whose first label was never replaced.
* :func:`score_history` — one image's decisions with the stored entry's scores after each one.
* :func:`checkpoint_pool_tables` — the ``label_pool_table`` of every checkpoint of a run.
* :func:`pool_snapshots` — two states of the pool to compare with :func:`compare_tables`.
* :func:`is_pool`, :func:`real_view` — small lookups (a pool folder; a real photo resized like training).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

IMPROVED = ("both_better", "shape_changed")


def is_pool(path) -> bool:
    """Whether ``path`` holds a label pool (``POOL.json``). Unlike ``LabelPool.open`` it creates nothing."""
    return path is not None and (Path(path) / "POOL.json").is_file()


def acceptance_by_iteration(history, window: int = 10):
    """Per-iteration acceptance of a pool ``history()`` (DataFrame, one row per iteration).

    Columns: iteration, offered, accepted, new (first sights), improved (replacements), kept, known
    (offers of images already in the pool), rate = accepted / offered, known_rate = improved / known (NaN
    when no known image was offered), and rate_rolling / known_rate_rolling: the same ratios of sums over
    the last ``window`` iterations (a rolling mean weighted by the number of offers)."""
    import numpy as np
    import pandas as pd

    cols = ["iteration", "offered", "accepted", "new", "improved", "kept", "known", "rate", "known_rate",
            "rate_rolling", "known_rate_rolling"]
    if history is None or len(history) == 0:
        return pd.DataFrame(columns=cols)
    h = history.assign(new=history["reason"].eq("new"), improved=history["reason"].isin(IMPROVED),
                       kept=~history["accepted"].astype(bool), accepted=history["accepted"].astype(bool))
    g = h.groupby("iteration", sort=True)
    df = pd.DataFrame({"offered": g.size(), "accepted": g["accepted"].sum(), "new": g["new"].sum(),
                       "improved": g["improved"].sum(), "kept": g["kept"].sum()}).reset_index()
    df = df.astype({c: "int64" for c in ("offered", "accepted", "new", "improved", "kept")})
    df["known"] = df["offered"] - df["new"]
    df["rate"] = df["accepted"] / df["offered"]
    df["known_rate"] = (df["improved"] / df["known"].where(df["known"] > 0)).astype(float)
    roll = df[["offered", "accepted", "improved", "known"]].rolling(max(int(window), 1), min_periods=1).sum()
    df["rate_rolling"] = roll["accepted"] / roll["offered"]
    df["known_rate_rolling"] = (roll["improved"] / roll["known"].where(roll["known"] > 0)).astype(float)
    df = df.replace([np.inf, -np.inf], np.nan)
    return df[cols]


def per_image_summary(history):
    """One row per image name of a pool ``history()``, sorted by name.

    Columns: name, offers, first_iteration, last_offer, improvements (accepted replacements after the
    first sight), kept, first_q, first_h (scores of the first stored label), q, h, iteration (scores and
    iteration of the label stored now, i.e. the last accepted candidate), gain_q = q − first_q,
    gain_h = h − first_h, never_improved (improvements == 0)."""
    import pandas as pd

    cols = ["name", "offers", "first_iteration", "last_offer", "improvements", "kept", "first_q", "first_h",
            "q", "h", "iteration", "gain_q", "gain_h", "never_improved"]
    if history is None or len(history) == 0:
        return pd.DataFrame(columns=cols)
    h = history.assign(improved=history["reason"].isin(IMPROVED), kept=~history["accepted"].astype(bool))
    g = h.groupby("name", sort=True)
    acc = h[h["accepted"].astype(bool)].groupby("name", sort=True)
    first, last = acc.first(), acc.last()  # history is in iteration order
    df = pd.DataFrame({"offers": g.size(), "first_iteration": g["iteration"].min(), "last_offer": g["iteration"].max(),
                       "improvements": g["improved"].sum().astype("int64"), "kept": g["kept"].sum().astype("int64"),
                       "first_q": first["new_q"], "first_h": first["new_h"],
                       "q": last["new_q"], "h": last["new_h"], "iteration": last["iteration"]})
    df = df.reset_index().rename(columns={"index": "name"})
    df["gain_q"], df["gain_h"] = df["q"] - df["first_q"], df["h"] - df["first_h"]
    df["never_improved"] = df["improvements"].eq(0)
    return df[cols].sort_values("name", ignore_index=True)


def score_history(history, name: str):
    """The decisions about one image, in order, with ``stored_q`` / ``stored_h``: the scores of the entry
    the pool holds after each decision (the candidate's if accepted, else the previous entry's)."""
    h = history[history["name"] == name].copy()
    acc = h["accepted"].astype(bool)
    h["stored_q"] = h["new_q"].where(acc, h["old_q"])
    h["stored_h"] = h["new_h"].where(acc, h["old_h"])
    return h.reset_index(drop=True)


def checkpoint_pool_tables(run_dir) -> list[tuple[int, Path, object]]:
    """``(step, checkpoint, table)`` for every checkpoint of ``run_dir`` that stores a ``label_pool_table``
    (Colabator checkpoints do), oldest first; [] when there is no such run."""
    import pandas as pd
    import torch

    from ..train import CKPT_RE

    if run_dir is None or not (Path(run_dir) / "checkpoints").is_dir():
        return []
    found = sorted((int(m.group(1)), p) for p in (Path(run_dir) / "checkpoints").glob("step_*.pth")
                   if (m := CKPT_RE.search(p.name)))
    out = []
    for step, path in found:
        try:
            ck = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception:  # noqa: BLE001 - deleted by a running trainer (keep_last) or unreadable: skip it
            ck = {}
        table = ck.get("label_pool_table")
        if table is not None:
            out.append((step, path, pd.DataFrame(table)))
    return out


def exact_as_of(pool, history, iteration: int) -> bool:
    """Whether ``pool.table(as_of=iteration)`` is the pool as it really was then: pruning (after each
    checkpoint) deletes versions superseded before the oldest kept checkpoint, so earlier states can lose
    images. Exact iff the images it lists are those the history had seen by then."""
    seen = set(history.loc[history["iteration"] <= iteration, "name"])
    return set(pool.table(as_of=iteration)["name"]) == seen


@dataclass
class Snapshot:
    """One state of the pool: a label for plots, the iteration it is as of, and its ``table()``."""

    label: str
    iteration: int
    table: object


def pool_snapshots(pool, run_dir=None, history=None) -> tuple[Snapshot, Snapshot] | None:
    """Two states of ``pool`` to compare with :func:`~corun.colabator.label_pool.compare_tables`.

    The oldest and the newest checkpoint of ``run_dir`` when it has two with a pool table; with one, that
    checkpoint and the pool now (if the pool has moved on since); otherwise the pool at the middle of its
    history (``table(as_of=...)``, moved later until the state is exact, see :func:`exact_as_of`; a few
    tries) and now.
    None when the history has fewer than two iterations."""
    history = pool.history() if history is None else history
    tables = checkpoint_pool_tables(run_dir)
    if len(tables) >= 2:
        (s0, p0, t0), (s1, p1, t1) = tables[0], tables[-1]
        return Snapshot(f"checkpoint {p0.name}", s0, t0), Snapshot(f"checkpoint {p1.name}", s1, t1)
    if len(history) == 0:
        return None
    last = int(history["iteration"].max())
    now = Snapshot(f"pool now (iteration {last})", last, pool.table())
    if tables and tables[0][0] < last:
        s0, p0, t0 = tables[0]
        return Snapshot(f"checkpoint {p0.name}", s0, t0), now
    iterations = sorted({int(i) for i in history["iteration"]})
    if len(iterations) < 2:
        return None
    later = [i for i in iterations[(len(iterations) - 1) // 2:] if i < last]
    for it in later[::max(1, len(later) // 8)]:  # at most ~8 tries: each reads the whole pool's metadata
        if exact_as_of(pool, history, it):
            return Snapshot(f"pool as of iteration {it}", it, pool.table(as_of=it)), now
    return None


def real_view(real_dir, name: str, size: tuple[int, int]):
    """The real photo ``name`` from ``real_dir`` as training saw it: (3, H, W) in [0, 1] resized (bicubic,
    like :class:`~corun.data.RealHazyDataset`) to ``size`` = the label's (H, W); None if not found."""
    import torch.nn.functional as F

    from ..data import read_rgb

    if real_dir is None:
        return None
    path = Path(real_dir) / name
    if not path.is_file():
        return None
    try:
        img = read_rgb(path)
    except Exception:  # noqa: BLE001 - unreadable now: nothing to show
        return None
    return F.interpolate(img[None], size=tuple(size), mode="bicubic", align_corners=False)[0].clamp(0, 1)
