"""Issue 17.9: a notebook executed with its kernel started in ``notebooks/`` (as JupyterLab does) resolves
``runs/...`` and ``results/...`` against the repository, exactly as under ``corun reproduce`` (kernel started
in the repository): it finds the finished run instead of training a new one into ``notebooks/runs/``,
creates nothing under ``notebooks/`` and leaves ``results/`` as it was.

The runs live in a uniquely named, git-ignored folder ``runs/.pytest-issue17-*`` of this checkout (relative
paths must point into the repository for the test to mean anything) and are removed afterwards."""
from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import pytest
from test_colabator_train import make_real_folder, pretrained  # noqa: F401 - pretrained is a fixture
from test_notebooks_colabator import executed_text
from test_train import read_log, tiny_config, write_config

from corun import train as tr
from corun.colabator.label_pool import LabelPool
from corun.config import load_config
from corun.utils import ROOT, anchor_outputs, repo_path
from corun.reproduce import run_notebook

pytestmark = pytest.mark.slow  # trainings, notebooks, subprocesses: `make test-fast` skips this file

NOTEBOOKS = ROOT / "notebooks"


@pytest.fixture
def repo_runs():
    """A fresh repository-relative folder ``runs/.pytest-issue17-<id>`` (removed afterwards, also from
    ``notebooks/`` where the bug put it)."""
    rel = Path("runs") / f".pytest-issue17-{uuid.uuid4().hex[:8]}"
    yield rel
    for base in (ROOT, NOTEBOOKS):
        shutil.rmtree(base / rel, ignore_errors=True)
    for stray in (NOTEBOOKS / "runs", NOTEBOOKS / "results"):
        if stray.is_dir() and not any(stray.iterdir()):
            stray.rmdir()


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*") if p.is_file()} if folder.is_dir() else {}


def contents(run: Path) -> dict[str, bytes]:
    """A run folder's files by content (a resumed finished run rewrites its logs and config with the same
    rows; config.yaml now records the anchored out_dir, and the lock file is the owner's)."""
    return {str(p.relative_to(run)): p.read_bytes() for p in run.rglob("*")
            if p.is_file() and p.name not in (".run.lock", "config.yaml")}


def notebook_tree() -> set[str]:
    return {str(p.relative_to(NOTEBOOKS)) for p in NOTEBOOKS.rglob("*") if ".ipynb_checkpoints" not in p.parts}


def test_paths_resolve_against_the_repository():
    assert repo_path("runs/x") == ROOT / "runs" / "x" and repo_path("/abs/p") == Path("/abs/p")
    cfg = load_config(tr.TrainConfig, ROOT / "configs" / "smoke_colabator.yaml",
                      ["colabator.pool_dir=results/smoke/label_pool"])
    anchored = anchor_outputs(cfg)
    assert anchored.train.out_dir == str(ROOT / cfg.train.out_dir)
    assert anchored.colabator.pool_dir == str(ROOT / "results" / "smoke" / "label_pool")
    assert anchored.data == cfg.data and anchored.colabator.real_dir == cfg.colabator.real_dir  # inputs as written
    assert tr.run_changes({"train_config": tr.to_dict(cfg)}, anchored) == []  # the same run


def test_notebook_02_from_notebooks_dir_finds_the_finished_run(tmp_path, repo_runs, monkeypatch):
    raw = tiny_config(tmp_path, total_steps=2, ckpt_every=0, out_dir=str(repo_runs / "pre"))
    cfg_path = write_config(tmp_path, raw)
    monkeypatch.chdir(ROOT)  # the reproduction: made from the repository, out_dir relative to it
    tr.train(load_config(tr.TrainConfig, cfg_path))
    monkeypatch.undo()
    run = ROOT / repo_runs / "pre"
    finished, nb_before, results_before = contents(run), notebook_tree(), snapshot(ROOT / "results")
    run_notebook("02_pretrain_corun.ipynb", tmp_path / "nb",
                 {"profile": "smoke", "config": str(cfg_path), "n_show": 1, "figures_dir": str(tmp_path / "fig")},
                 cwd=NOTEBOOKS)  # JupyterLab starts the kernel here
    # before the fix: a new 2-step run in notebooks/runs/.pytest-issue17-*/pre
    assert not (NOTEBOOKS / repo_runs).exists()
    assert notebook_tree() == nb_before
    assert sorted(read_log(run)) == [1, 2]
    assert contents(run) == finished  # resumed at step 2 of 2: nothing new
    assert snapshot(ROOT / "results") == results_before
    assert f"run folder {run}" in executed_text(tmp_path / "nb" / "02_pretrain_corun.ipynb")


def test_notebook_03_from_notebooks_dir_resumes_the_pool_in_the_repository(tmp_path, repo_runs, pretrained):  # noqa: F811
    base = pretrained[1]
    real = make_real_folder(tmp_path / "real")
    params = {"profile": "smoke", "pretrain_checkpoint": str(pretrained[0]), "real_dir": str(real), "steps": 2,
              "n_show": 1, "results_dir": str(repo_runs / "results"), "figures_dir": str(tmp_path / "fig"),
              "overrides": [f"data.root={base['data']['root']}", "data.patch=32", "data.batch_size=2",
                            "colabator.real_batch_size=2", "colabator.block=16",
                            f"val.synthetic_dir={base['val']['synthetic_dir']}", "val.real_dir=null",
                            f"train.out_dir={repo_runs / 'colab'}", "train.ckpt_every=2", "train.log_every=1",
                            "train.threads=1", "train.progress=false", "train.tensorboard=false",
                            "loss.vgg_weights=null", "schedule.periods=[2]"]}
    run_notebook("03_colabator_finetune.ipynb", tmp_path / "nb1", params)  # as corun reproduce runs it
    pool_dir = ROOT / repo_runs / "results" / "label_pool"
    decisions = len(LabelPool.open(pool_dir).history())
    assert decisions == 2 * 2
    run_before, nb_before = contents(ROOT / repo_runs / "colab"), notebook_tree()
    results_before = snapshot(ROOT / "results")
    run_notebook("03_colabator_finetune.ipynb", tmp_path / "nb2", params, cwd=NOTEBOOKS)
    # before the fix: a second fine-tune into notebooks/runs/..., a second pool beside it, and the record of
    # that stray run written over the repository's
    assert not (NOTEBOOKS / repo_runs).exists() and notebook_tree() == nb_before
    assert len(LabelPool.open(pool_dir).history()) == decisions
    assert contents(ROOT / repo_runs / "colab") == run_before
    assert snapshot(ROOT / "results") == results_before
    assert "resumed from" in executed_text(tmp_path / "nb2" / "03_colabator_finetune.ipynb")
