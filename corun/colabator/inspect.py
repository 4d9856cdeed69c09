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

What notebooks 03 and 04 call on top of these: :func:`locate_run` and :func:`open_for_inspection` (which pool,
run and photos; the pool if it holds labels, else why not), :func:`pick_examples`, and the figures
:func:`acceptance_figure`, :func:`per_image_figure`, :func:`score_distribution_figure`,
:func:`improvements_figure`, :func:`pool_change_figure` with their summaries in words or tables
(:func:`acceptance_lines`, :func:`score_sets`, :func:`change_line`, :func:`replaced_changes`).
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
    the last ``window`` iterations (a rolling mean weighted by the number of offers); ``attrs["window"]``
    records ``window``."""
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
    df = df.replace([np.inf, -np.inf], np.nan)[cols]
    df.attrs["window"] = max(int(window), 1)
    return df


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

    from ..checkpoint import CKPT_RE

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


# ---------------------------------------------------------------------------------------------- notebooks 03 and 04

def _read_yaml(path) -> dict:
    import yaml

    try:
        return yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}


def locate_run(profile: str, pool_dir=None, run_dir=None, real_dir=None, root: Path | None = None):
    """``(pool_dir, run_dir, real_dir)`` of a Colabator run to inspect (notebook 04), as absolute paths.

    Defaults: the pool ``results/<profile>/label_pool``; the run ``train.out_dir`` of the shipped
    ``configs/<profile>_colabator.yaml`` (else ``runs/<profile>_colabator``); the photos
    ``colabator.real_dir`` of the run's own ``config.yaml`` (else the shipped config's), None when neither
    names one. Relative paths are the repository's."""
    from ..utils import ROOT, repo_path

    root = ROOT if root is None else root
    shipped = _read_yaml(root / "configs" / f"{profile}_colabator.yaml")
    pool_dir = repo_path(pool_dir or f"results/{profile}/label_pool", root)
    run_dir = repo_path(run_dir or (shipped.get("train") or {}).get("out_dir") or f"runs/{profile}_colabator", root)
    if real_dir is None:  # the photos the run trained on
        real_dir = ((_read_yaml(run_dir / "config.yaml") or shipped).get("colabator") or {}).get("real_dir")
    return pool_dir, run_dir, repo_path(real_dir, root) if real_dir else None


def open_for_inspection(pool_dir, profile: str = "smoke", log=print):
    """``(pool, history)`` of the label pool at ``pool_dir`` when it holds labels and decisions, else
    ``(None, None)`` with a line to ``log`` saying what is missing and what to run. Never creates a pool
    (``LabelPool.open`` would)."""
    from ..utils import repo_relative
    from .label_pool import LabelPool

    shown = repo_relative(pool_dir)
    if not is_pool(pool_dir):
        log(f"No label pool at {shown}: nothing to inspect. Run the Colabator fine-tuning first "
            f"(notebook 03_colabator_finetune.ipynb, or `corun train --config configs/{profile}_colabator.yaml`), "
            "or pass pool_dir=<folder with POOL.json>.")
        return None, None
    pool = LabelPool.open(pool_dir)
    if len(pool) == 0:
        log(f"The label pool at {shown} is empty (no fine-tuning iteration has run yet): nothing to inspect.")
        return None, None
    history = pool.history()
    if history.empty:
        log(f"The label pool at {shown} holds labels but no decision history: nothing to inspect.")
        return None, None
    return pool, history


def pick_examples(per_image, n: int) -> list[str]:
    """``n`` image names to look at: half those whose label improved most often (ties by name), half
    photos that never improved (:func:`per_image_summary`), topped up from the first list."""
    ranked = per_image.sort_values(["improvements", "name"], ascending=[False, True])["name"].tolist()
    never = per_image.loc[per_image["never_improved"], "name"].tolist()
    picks = ranked[:(n + 1) // 2 if never else n]
    picks += [x for x in never if x not in picks][: n - len(picks)]
    picks += [x for x in ranked if x not in picks][: n - len(picks)]
    return picks


def acceptance_window(history) -> int:
    """The rolling window (iterations) of the acceptance plots: a 25th of the iterations, at least 5."""
    return max(5, history["iteration"].nunique() // 25)


def acceptance_figure(history, acc, window: int | None = None):
    """Acceptance over iterations (:func:`acceptance_by_iteration`: per iteration and rolling over
    ``window`` iterations, default the one ``acc`` was made with, and the improvement rate among photos
    already pooled) and the cumulative decisions by reason."""
    import matplotlib.pyplot as plt
    import pandas as pd

    window = acc.attrs.get("window", 10) if window is None else window
    fig, axes = plt.subplots(1, 2, figsize=(14, 3.8))
    axes[0].plot(acc["iteration"], acc["rate"], ".", color="C0", alpha=0.3, label="accepted, per iteration")
    axes[0].plot(acc["iteration"], acc["rate_rolling"], color="C0", label=f"accepted (rolling {window} it.)")
    axes[0].plot(acc["iteration"], acc["known_rate_rolling"], color="C3",
                 label=f"improved, of photos already pooled (rolling {window} it.)")
    axes[0].set_ylim(-0.05, 1.05)
    axes[0].set_xlabel("iteration")
    axes[0].set_ylabel("rate")
    axes[0].set_title("label pool acceptance")
    axes[0].legend(fontsize=8)
    counts = pd.crosstab(history["iteration"], history["reason"]).cumsum()
    for reason in counts.columns:
        axes[1].plot(counts.index, counts[reason], label=reason)
    axes[1].set_xlabel("iteration")
    axes[1].set_ylabel("decisions so far")
    axes[1].set_title("decisions by reason (cumulative)")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    return fig


def acceptance_lines(history, acc, pool_size: int, window: int | None = None) -> list[str]:
    """The acceptance in words: overall, the improvement rate among photos already pooled, and over the
    last ``window`` iterations (default: the window ``acc`` was made with)."""
    window = acc.attrs.get("window", 10) if window is None else window
    lines = [(f"{len(history)} decisions over {len(acc)} iterations, {pool_size} photos in the pool; accepted "
              f"{acc['accepted'].sum() / acc['offered'].sum():.1%} overall")]
    known, tail = acc["known"].sum(), acc.tail(window)
    if known:
        lines.append(f"improved: {acc['improved'].sum() / known:.1%} of the {known} candidates for photos already pooled")
    if tail["known"].sum():
        lines.append(f"last {len(tail)} iterations: improved {tail['improved'].sum() / tail['known'].sum():.1%} "
                     f"of {tail['known'].sum()} candidates")
    return lines


def _no_ticks(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)


def _score_history_panel(ax, sh, info) -> None:
    for key, color in (("q", "C0"), ("h", "C1")):
        ax.step(sh["iteration"], sh[f"stored_{key}"], where="post", color=color, label=f"stored {key}")
        acc = sh["accepted"].astype(bool)
        ax.scatter(sh.loc[acc, "iteration"], sh.loc[acc, f"new_{key}"], color=color, s=18, zorder=3)
        ax.scatter(sh.loc[~acc, "iteration"], sh.loc[~acc, f"new_{key}"], facecolors="none",
                   edgecolors=color, s=18, zorder=3)
    ax.set_title(f"{int(info['offers'])} candidates, {int(info['improvements'])} improvements", fontsize=8)
    ax.set_xlabel("iteration")
    ax.set_ylabel("normalised score (1 = best)")
    ax.legend(fontsize=7)


def per_image_figure(pool, history, per_image, names, real_dir=None):
    """One row per name: the hazy photo as training saw it (:func:`real_view`), the stored label, its weight
    map over the label, and its score history (dots: every candidate, filled when accepted; lines: the
    stored label's scores, which only rise together — the pool's rule, Sec. 3.3)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(names), 4, figsize=(17, 3.4 * len(names)), squeeze=False,
                             gridspec_kw={"width_ratios": [1, 1, 1.2, 1.8]})
    info_by_name = per_image.set_index("name")
    for row, name in zip(axes, names):
        entry = pool.get(name)
        hazy = real_view(real_dir, name, tuple(entry.label.shape[-2:]))
        if hazy is not None:
            row[0].imshow(hazy.permute(1, 2, 0).numpy())
        else:
            row[0].text(0.5, 0.5, "photo not found", ha="center", va="center", transform=row[0].transAxes)
        row[0].set_title(f"hazy: {name}", fontsize=8)
        row[1].imshow(entry.label.permute(1, 2, 0).numpy())
        row[1].set_title(f"label of it. {entry.iteration}: q {entry.q:.3f} h {entry.h:.3f}", fontsize=8)
        row[2].imshow(entry.label.mean(0).numpy(), cmap="gray", vmin=0, vmax=1)
        im = row[2].imshow(entry.weight[0].numpy(), cmap="magma", vmin=0, vmax=1, alpha=0.6)
        fig.colorbar(im, ax=row[2], fraction=0.046, pad=0.02)
        row[2].set_title(f"weight map (mean {float(entry.weight.mean()):.2f})", fontsize=8)
        for ax in row[:3]:
            _no_ticks(ax)
        _score_history_panel(row[3], score_history(history, name), info_by_name.loc[name])
    fig.tight_layout()
    return fig


SCORE_LABELS = {"q": "quality q", "h": "haze h (1 = clear)"}


def score_sets(history, table):
    """The global scores of all candidates and of the labels in the pool now, long form (columns
    ``quality q``, ``haze h (1 = clear)``, ``set``)."""
    import pandas as pd

    q, h = SCORE_LABELS["q"], SCORE_LABELS["h"]
    return pd.concat([pd.DataFrame({q: history["new_q"], h: history["new_h"], "set": "all candidates"}),
                      pd.DataFrame({q: table["q"], h: table["h"], "set": "labels in the pool"})],
                     ignore_index=True)


def score_distribution_figure(history, table):
    """Histograms of the two global scores, all candidates against the labels kept, and every candidate's
    two scores by the decision it got (the labels in the pool as crosses)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    long = score_sets(history, table)
    fig, axes = plt.subplots(1, 3, figsize=(17, 4))
    for ax, key in zip(axes[:2], SCORE_LABELS.values()):
        sns.histplot(data=long, x=key, hue="set", stat="density", common_norm=False, element="step", ax=ax)
        ax.set_title(f"global {key}")
    sns.scatterplot(data=history, x="new_q", y="new_h", hue="reason", alpha=0.5, s=18, ax=axes[2])
    sns.scatterplot(data=table, x="q", y="h", color="black", marker="x", s=40, label="in the pool", ax=axes[2])
    axes[2].set_xlabel("quality q")
    axes[2].set_ylabel("haze h")
    axes[2].set_title("candidates by decision")
    fig.tight_layout()
    return fig


def improvements_figure(per_image, table):
    """Improvements per photo, each photo's score gain since its first label, and the iterations of the
    labels stored now."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    fig, axes = plt.subplots(1, 3, figsize=(17, 3.8))
    sns.histplot(data=per_image, x="improvements", discrete=True, ax=axes[0])
    axes[0].set_title("improvements per photo")
    sns.scatterplot(data=per_image, x="gain_q", y="gain_h", hue="never_improved", size="offers", ax=axes[1])
    axes[1].axhline(0, color="grey", lw=0.8)
    axes[1].axvline(0, color="grey", lw=0.8)
    axes[1].set_title("score gain since the first label")
    sns.histplot(data=table, x="iteration", bins=20, ax=axes[2])
    axes[2].set_title("iteration of the labels stored now")
    fig.tight_layout()
    return fig


CHANGE_ORDER = ("new", "replaced", "unchanged", "removed")


def change_line(diff, before: Snapshot, after: Snapshot) -> str:
    """How many photos are new, replaced, unchanged or removed between two snapshots, in words."""
    counts = diff["status"].value_counts().reindex(list(CHANGE_ORDER), fill_value=0)
    return f"{before.label} → {after.label}: " + ", ".join(f"{n} {s}" for s, n in counts.items())


def pool_change_figure(diff, before: Snapshot, after: Snapshot):
    """The statuses of :func:`~corun.colabator.label_pool.compare_tables` between two snapshots, and the
    scores after, with arrows from each replaced label's scores before."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.2), gridspec_kw={"width_ratios": [1, 1.6]})
    sns.countplot(data=diff, x="status", order=list(CHANGE_ORDER), ax=axes[0])
    axes[0].set_title(f"iteration {before.iteration} → {after.iteration}")
    for r in diff[diff["status"] == "replaced"].itertuples():
        axes[1].annotate("", xy=(r.q_after, r.h_after), xytext=(r.q_before, r.h_before),
                         arrowprops={"arrowstyle": "->", "color": "C3", "lw": 0.8})
    for status, marker in (("replaced", "o"), ("unchanged", "s"), ("new", "^")):
        sub = diff[diff["status"] == status]
        if len(sub):
            axes[1].scatter(sub["q_after"], sub["h_after"], marker=marker, s=22, label=status, zorder=3)
    axes[1].set_xlabel("quality q")
    axes[1].set_ylabel("haze h (1 = clear)")
    axes[1].legend(fontsize=8)
    axes[1].set_title(f"{before.label} → {after.label}", fontsize=9)
    fig.tight_layout()
    return fig


def replaced_changes(diff):
    """The replaced labels of a :func:`~corun.colabator.label_pool.compare_tables` result with their score
    changes ``dq``, ``dh``, largest ``dq`` first (rounded to 4 digits); empty when none was replaced."""
    rep = diff[diff["status"] == "replaced"]
    rep = rep.assign(dq=rep["q_after"] - rep["q_before"], dh=rep["h_after"] - rep["h_before"])
    cols = ["name", "iteration_before", "iteration_after", "q_before", "q_after", "h_before", "h_after", "dq", "dh"]
    return rep[cols].sort_values("dq", ascending=False).reset_index(drop=True).round(4)
