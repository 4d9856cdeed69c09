"""Notebooks 03 (Colabator fine-tuning) and 04 (label pool inspection) executed headless by papermill on a tiny
setup, and the helpers they use (``corun/colabator/inspect.py``) on a hand-made pool.

The tiny setup: a 2-step pretraining of a tiny CORUN (as in test_colabator_train.py), six 40×40 "real" photos,
32×32 patches, 16×16 scoring blocks, 4 fine-tuning steps with a checkpoint every 2."""
from __future__ import annotations

import math

import nbformat
import numpy as np
import pytest
import torch
from PIL import Image
from pools import offer
from test_colabator_train import make_real_folder, pretrained  # noqa: F401 - pretrained is a fixture

from corun.colabator import inspect as ci
from corun.colabator.label_pool import LabelPool, compare_tables
from corun.reproduce import run_notebook

pytestmark = pytest.mark.slow  # trainings, notebooks, subprocesses: `make test-fast` skips this file

FIGS_03 = {"03_losses", "03_acceptance", "03_before_after"}
FIGS_04 = {"04_per_image", "04_score_distributions", "04_improvements", "04_pool_change"}


def executed_text(path) -> str:
    nb = nbformat.read(path, as_version=4)
    return "".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", ""))
                   for c in nb.cells if c.cell_type == "code" for o in c.outputs)


def tiny_overrides(tmp_path, pretrained) -> list[str]:  # noqa: F811
    base = pretrained[1]
    data = base["data"]["root"]
    return [f"data.root={data}", "data.patch=32", "data.batch_size=2", "colabator.real_batch_size=2",
            "colabator.block=16", f"val.synthetic_dir={base['val']['synthetic_dir']}", "val.real_dir=null",
            f"train.out_dir={tmp_path / 'colab'}", "train.ckpt_every=2", "train.keep_last=2", "train.log_every=1",
            "train.threads=1", "train.progress=false", "train.tensorboard=false", "loss.vgg_weights=null",
            "schedule.periods=[4]"]


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory, pretrained):  # noqa: F811
    """Notebook 03 (smoke profile, tiny overrides) run once; the pool, run and figures it left."""
    tmp = tmp_path_factory.mktemp("nb03")
    real = make_real_folder(tmp / "real")
    run_notebook("03_colabator_finetune.ipynb", tmp / "nb",
                 {"profile": "smoke", "pretrain_checkpoint": str(pretrained[0]), "real_dir": str(real),
                  "steps": 4, "overrides": tiny_overrides(tmp, pretrained), "n_show": 2,
                  "results_dir": str(tmp / "results"), "figures_dir": str(tmp / "figures")})
    return tmp


def test_notebook_03_fine_tunes_into_the_results_pool_and_plots(finetuned):
    tmp = finetuned
    pool_dir = tmp / "results" / "label_pool"
    assert ci.is_pool(pool_dir)
    pool = LabelPool.open(pool_dir)
    assert len(pool) == 6 and len(pool.history()) == 4 * 2
    assert not (tmp / "colab" / "label_pool").exists()  # the pool went to results/, not into the run
    assert sorted(p.name for p in (tmp / "colab" / "checkpoints").iterdir()) == ["step_0000002.pth",
                                                                               "step_0000004.pth"]
    names = {p.name for p in (tmp / "figures").iterdir()}
    assert {f"{s}.{e}" for s in FIGS_03 for e in ("png", "pdf")} <= names
    record = (tmp / "results" / "colabator_finetune.json").read_text()
    assert '"accept_rate"' in record and '"pool_size": 6' in record
    text = executed_text(tmp / "nb" / "03_colabator_finetune.ipynb")
    assert "decisions over 4 iterations" in text and "Colabator EMA" in text


def test_notebook_03_resume_is_a_no_op_on_a_finished_run(finetuned, pretrained):  # noqa: F811
    tmp = finetuned
    before = LabelPool.open(tmp / "results" / "label_pool").history()
    run_notebook("03_colabator_finetune.ipynb", tmp / "nb_again",
                 {"profile": "smoke", "pretrain_checkpoint": str(pretrained[0]), "real_dir": str(tmp / "real"),
                  "steps": 4, "overrides": tiny_overrides(tmp, pretrained), "n_show": 1,
                  "results_dir": str(tmp / "results"), "figures_dir": str(tmp / "figures")})
    after = LabelPool.open(tmp / "results" / "label_pool").history()
    assert len(after) == len(before)  # resumed at step 4 of 4: nothing trained twice
    assert "resumed from" in executed_text(tmp / "nb_again" / "03_colabator_finetune.ipynb")


def test_notebook_04_inspects_the_pool_and_compares_two_checkpoints(finetuned, tmp_path):
    tmp = finetuned
    run_notebook("04_label_pool_inspection.ipynb", tmp_path / "nb",
                 {"profile": "smoke", "pool_dir": str(tmp / "results" / "label_pool"), "run_dir": str(tmp / "colab"),
                  "n_show": 3, "figures_dir": str(tmp_path / "figures")})
    names = {p.name for p in (tmp_path / "figures").iterdir()}
    assert names == {f"{s}.{e}" for s in FIGS_04 for e in ("png", "pdf")}
    text = executed_text(tmp_path / "nb" / "04_label_pool_inspection.ipynb")
    assert "6 photos, 8 decisions" in text
    assert "checkpoint step_0000002.pth → checkpoint step_0000004.pth" in text
    assert "photo not found" not in text  # real_dir came from the run's config.yaml


def test_notebook_03_without_pretraining_checkpoint_says_what_to_run(tmp_path, pretrained):  # noqa: F811
    with pytest.raises(RuntimeError, match=r"Run the pretraining first: notebook 02_pretrain_corun.ipynb, or "
                                           r"`corun train --config configs/smoke_pretrain.yaml`"):
        run_notebook("03_colabator_finetune.ipynb", tmp_path / "nb",
                     {"profile": "smoke", "pretrain_checkpoint": str(tmp_path / "no_pretraining"),
                      "overrides": tiny_overrides(tmp_path, pretrained),
                      "results_dir": str(tmp_path / "results"), "figures_dir": str(tmp_path / "figures")})
    assert not (tmp_path / "colab").exists()


def test_notebook_03_paper_profile_prints_the_torchrun_command(tmp_path):
    run_notebook("03_colabator_finetune.ipynb", tmp_path / "nb",
                 {"profile": "paper", "overrides": [f"train.out_dir={tmp_path / 'none'}"],
                  "pretrain_checkpoint": str(tmp_path / "CORUN.pth"),
                  "results_dir": str(tmp_path / "results"), "figures_dir": str(tmp_path / "figures")})
    text = executed_text(tmp_path / "nb" / "03_colabator_finetune.ipynb")
    assert "torchrun --nproc_per_node 8 -m corun.train --config configs/paper_colabator.yaml" in text
    assert f"colabator.pool_dir={tmp_path / 'results' / 'label_pool'}" in text
    assert f"colabator.init={tmp_path / 'CORUN.pth'}" in text
    assert "no log yet" in text and not (tmp_path / "results").exists()


@pytest.mark.parametrize("state", ["missing", "empty"])
def test_notebook_04_without_labels_says_so_and_stops_gracefully(tmp_path, state):
    pool_dir = tmp_path / "label_pool"
    if state == "empty":
        LabelPool.open(pool_dir)
    run_notebook("04_label_pool_inspection.ipynb", tmp_path / "nb",
                 {"profile": "smoke", "pool_dir": str(pool_dir), "run_dir": str(tmp_path / "run"),
                  "figures_dir": str(tmp_path / "figures")})
    text = executed_text(tmp_path / "nb" / "04_label_pool_inspection.ipynb")
    assert ("No label pool at" if state == "missing" else "is empty") in text and "nothing to inspect" in text
    assert not (tmp_path / "figures").exists()
    assert pool_dir.exists() == (state == "empty")  # inspecting does not create a pool


# ------------------------------------------------------------------------------------------- helpers

@pytest.fixture
def small_pool(tmp_path):
    pool = LabelPool.open(tmp_path / "pool")
    assert offer(pool, 1, {"a": (.5, .5), "b": (.5, .5), "c": (.5, .5)}) == [True] * 3
    assert offer(pool, 2, {"a": (.6, .6), "b": (.4, .9)}) == [True, False]
    assert offer(pool, 3, {"a": (.5, .7), "b": (.6, .6), "c": (.4, .9)}) == [False, True, False]
    return pool


def test_acceptance_by_iteration_separates_first_sights_from_improvements(small_pool):
    acc = ci.acceptance_by_iteration(small_pool.history(), window=2)
    assert acc["iteration"].tolist() == [1, 2, 3]
    assert acc["offered"].tolist() == [3, 2, 3] and acc["accepted"].tolist() == [3, 1, 1]
    assert acc["new"].tolist() == [3, 0, 0] and acc["improved"].tolist() == [0, 1, 1]
    assert acc["known"].tolist() == [0, 2, 3] and acc["kept"].tolist() == [0, 1, 2]
    assert acc["rate"].tolist() == pytest.approx([1, .5, 1 / 3])
    assert math.isnan(acc["known_rate"].iloc[0]) and acc["known_rate"].iloc[1:].tolist() == pytest.approx([.5, 1 / 3])
    assert acc["rate_rolling"].tolist() == pytest.approx([1, 4 / 5, 2 / 5])  # sums over 2 iterations
    assert math.isnan(acc["known_rate_rolling"].iloc[0]) and acc["known_rate_rolling"].iloc[2] == pytest.approx(2 / 5)
    assert ci.acceptance_by_iteration(LabelPool.open(small_pool.root.parent / "empty").history()).empty


def test_per_image_summary_and_score_history(small_pool):
    hist = small_pool.history()
    s = ci.per_image_summary(hist).set_index("name")
    assert s["offers"].to_dict() == {"a": 3, "b": 3, "c": 2}
    assert s["improvements"].to_dict() == {"a": 1, "b": 1, "c": 0}
    assert s["never_improved"].to_dict() == {"a": False, "b": False, "c": True}
    assert s.loc["a", ["q", "h", "iteration"]].tolist() == pytest.approx([.6, .6, 2])
    assert s.loc["b", ["gain_q", "gain_h"]].tolist() == pytest.approx([.1, .1])
    table = small_pool.table().set_index("name")  # the current scores agree with the pool's own table
    assert np.allclose(s.loc[table.index, ["q", "h"]].to_numpy(), table[["q", "h"]].to_numpy())
    b = ci.score_history(hist, "b")
    assert b["accepted"].tolist() == [True, False, True]
    assert b["stored_q"].tolist() == pytest.approx([.5, .5, .6]) and b["stored_h"].tolist() == pytest.approx([.5, .5, .6])


def test_pool_snapshots_from_history_and_from_checkpoints(small_pool, tmp_path):
    before, after = ci.pool_snapshots(small_pool)
    assert (before.iteration, after.iteration) == (2, 3)
    diff = compare_tables(before.table, after.table).set_index("name")
    assert diff["status"].to_dict() == {"a": "unchanged", "b": "replaced", "c": "unchanged"}
    # pruning at 3 (the oldest kept checkpoint) makes earlier states inexact: b's state at 2 is gone
    small_pool.prune(3)
    hist = small_pool.history()
    assert not ci.exact_as_of(small_pool, hist, 2) and ci.exact_as_of(small_pool, hist, 3)
    assert ci.pool_snapshots(small_pool, history=hist) is None
    # checkpoints' tables win: the oldest and the newest; a checkpoint without a table is skipped
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    torch.save({"step": 1}, run / "checkpoints" / "step_0000001.pth")
    for step in (2, 3):
        torch.save({"label_pool_table": small_pool.table(as_of=step).to_dict("list")},
                   run / "checkpoints" / f"step_{step:07d}.pth")
    assert [s for s, _, _ in ci.checkpoint_pool_tables(run)] == [2, 3]
    before, after = ci.pool_snapshots(small_pool, run)
    assert before.label == "checkpoint step_0000002.pth" and (before.iteration, after.iteration) == (2, 3)
    assert ci.checkpoint_pool_tables(tmp_path / "nothing") == [] and ci.checkpoint_pool_tables(None) == []


def test_is_pool_and_real_view(tmp_path):
    assert not ci.is_pool(tmp_path / "p") and not ci.is_pool(None)
    assert not (tmp_path / "p").exists()
    LabelPool.open(tmp_path / "p")
    assert ci.is_pool(tmp_path / "p")
    Image.fromarray(np.full((8, 10, 3), 200, np.uint8)).save(tmp_path / "x.png")
    img = ci.real_view(tmp_path, "x.png", (6, 6))
    assert img.shape == (3, 6, 6) and torch.allclose(img, torch.full_like(img, 200 / 255), atol=1e-3)
    assert ci.real_view(tmp_path, "nope.png", (6, 6)) is None and ci.real_view(None, "x.png", (6, 6)) is None
