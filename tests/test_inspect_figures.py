"""corun.colabator.inspect: what notebooks 03 and 04 call to find, open and draw a label pool (formerly code in
the notebooks), on a hand-made pool."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image
from pools import offer

from corun.colabator import inspect as ci
from corun.colabator.label_pool import LabelPool, compare_tables


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture
def pool(tmp_path):
    """a: improves at 2; b: kept at 2, improves at 3; c: never improves."""
    p = LabelPool.open(tmp_path / "pool")
    offer(p, 1, {"a": (.5, .5), "b": (.5, .5), "c": (.5, .5)})
    offer(p, 2, {"a": (.6, .6), "b": (.4, .9)})
    offer(p, 3, {"a": (.5, .7), "b": (.6, .6), "c": (.4, .9)})
    return p


def test_locate_run_defaults_and_the_runs_own_config(tmp_path):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "smoke_colabator.yaml").write_text(yaml.safe_dump(
        {"train": {"out_dir": "runs/shipped"}, "colabator": {"real_dir": "data/shipped_photos"}}))
    pool_dir, run_dir, real_dir = ci.locate_run("smoke", root=tmp_path)
    assert pool_dir == tmp_path / "results" / "smoke" / "label_pool"
    assert run_dir == tmp_path / "runs" / "shipped" and real_dir == tmp_path / "data" / "shipped_photos"
    (run_dir).mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"colabator": {"real_dir": "/photos/trained_on"}}))
    assert ci.locate_run("smoke", root=tmp_path)[2] == tmp_path / "/photos/trained_on"
    # explicit arguments win; no config anywhere: the default run and no photos
    assert ci.locate_run("paper", "p", "r", "x", root=tmp_path) == (tmp_path / "p", tmp_path / "r", tmp_path / "x")
    assert ci.locate_run("paper", root=tmp_path)[1:] == (tmp_path / "runs" / "paper_colabator", None)


def test_open_for_inspection_says_why_and_creates_nothing(tmp_path, pool):
    lines = []
    assert ci.open_for_inspection(tmp_path / "none", "smoke", log=lines.append) == (None, None)
    assert "No label pool at" in lines[-1] and "configs/smoke_colabator.yaml" in lines[-1]
    assert not (tmp_path / "none").exists()
    LabelPool.open(tmp_path / "empty")
    assert ci.open_for_inspection(tmp_path / "empty", log=lines.append) == (None, None)
    assert "is empty" in lines[-1] and "nothing to inspect" in lines[-1]
    p, hist = ci.open_for_inspection(pool.root, log=lines.append)
    assert len(p) == 3 and len(hist) == 8 and len(lines) == 2


def test_pick_examples_half_improved_half_never():
    per_image = pd.DataFrame({"name": list("abcdef"), "improvements": [0, 3, 1, 0, 2, 0],
                              "never_improved": [True, False, False, True, False, True]})
    assert ci.pick_examples(per_image, 4) == ["b", "e", "a", "d"]
    assert ci.pick_examples(per_image, 3) == ["b", "e", "a"]
    assert ci.pick_examples(per_image.assign(never_improved=False), 3) == ["b", "e", "c"]
    assert ci.pick_examples(per_image.iloc[:2], 4) == ["b", "a"]  # fewer photos than asked


def test_acceptance_window_figure_and_lines(pool):
    hist = pool.history()
    assert ci.acceptance_window(hist) == 5
    assert ci.acceptance_window(pd.DataFrame({"iteration": range(300)})) == 12
    acc = ci.acceptance_by_iteration(hist, window=2)
    assert acc.attrs["window"] == 2
    fig = ci.acceptance_figure(hist, acc)
    assert [ln.get_label() for ln in fig.axes[0].lines][1] == "accepted (rolling 2 it.)"
    assert sorted(ln.get_label() for ln in fig.axes[1].lines) == sorted(set(hist["reason"]))
    lines = ci.acceptance_lines(hist, acc, len(pool))
    assert lines[0] == "8 decisions over 3 iterations, 3 photos in the pool; accepted 62.5% overall"
    assert lines[1] == "improved: 40.0% of the 5 candidates for photos already pooled"
    assert lines[2] == "last 2 iterations: improved 40.0% of 5 candidates"


def test_per_image_figure(pool, tmp_path):
    hist = pool.history()
    per_image = ci.per_image_summary(hist)
    Image.fromarray(np.full((10, 12, 3), 128, np.uint8)).save(tmp_path / "a", format="PNG")  # named like the pool entry
    fig = ci.per_image_figure(pool, hist, per_image, ["a", "c"], real_dir=tmp_path)
    rows = [fig.axes[i:i + 4] for i in (0, 4)]  # 4 panels per row (the colour bars come after)
    assert rows[0][0].get_title() == "hazy: a" and rows[0][0].images[0].get_array().shape == (8, 8, 3)
    assert any(t.get_text() == "photo not found" for t in rows[1][0].texts)
    assert rows[0][1].get_title() == "label of it. 2: q 0.600 h 0.600"
    assert rows[0][2].get_title() == "weight map (mean 0.70)"
    assert rows[0][3].get_title() == "3 candidates, 1 improvements" and rows[1][3].get_title().endswith("0 improvements")
    assert len(fig.axes) == 8 + 2  # and one colour bar per row


def test_score_sets_and_figures(pool):
    hist, table = pool.history(), pool.table()
    long = ci.score_sets(hist, table)
    assert list(long.columns) == ["quality q", "haze h (1 = clear)", "set"]
    assert long["set"].value_counts().to_dict() == {"all candidates": 8, "labels in the pool": 3}
    fig = ci.score_distribution_figure(hist, table)
    assert [ax.get_title() for ax in fig.axes[:3]] == ["global quality q", "global haze h (1 = clear)",
                                                       "candidates by decision"]
    fig = ci.improvements_figure(ci.per_image_summary(hist), table)
    assert [ax.get_title() for ax in fig.axes[:3]] == ["improvements per photo", "score gain since the first label",
                                                       "iteration of the labels stored now"]


def test_pool_change_line_figure_and_table(pool):
    before, after = ci.pool_snapshots(pool)
    diff = compare_tables(before.table, after.table)
    assert ci.change_line(diff, before, after) == ("pool as of iteration 2 → pool now (iteration 3): "
                                                   "0 new, 1 replaced, 2 unchanged, 0 removed")
    fig = ci.pool_change_figure(diff, before, after)
    assert fig.axes[0].get_title() == "iteration 2 → 3" and len(fig.axes[1].texts) == 1  # one arrow (b)
    changes = ci.replaced_changes(diff)
    assert changes["name"].tolist() == ["b"] and list(changes.columns)[-2:] == ["dq", "dh"]
    assert changes.loc[0, "dq"] == pytest.approx(0.1) and changes.loc[0, "dh"] == pytest.approx(0.1)
    assert ci.replaced_changes(diff[diff["status"] != "replaced"]).empty
