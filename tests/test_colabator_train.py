"""Colabator fine-tuning through ``corun train``: starts from a pretraining checkpoint, fills the label pool,
resumes exactly after SIGKILL (pool rolled back with the checkpoint), and runs under torchrun with one
shared pool. Tiny CORUN, 32×32 patches, 16×16 scoring blocks."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from corun import train as tr
from corun.colabator.label_pool import LabelPool
from corun.config import ConfigError, load_config

from killresume import REPO, kill_and_resume
from test_train import _run, read_log, tiny_config, write_config

pytestmark = pytest.mark.slow  # trainings, notebooks, subprocesses: `make test-fast` skips this file


def make_real_folder(root: Path, n: int = 6, size: int = 40) -> Path:
    rng = np.random.default_rng(1)
    root.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for i in range(n):
        scene = np.stack([np.sin(7 * xx + i) * 0.3 + 0.4, xx * yy, np.cos(4 * yy + i) * 0.3 + 0.4], -1)
        t = np.exp(-1.5 * (1 - yy))[..., None]
        img = np.clip(scene * t + 0.85 * (1 - t) + rng.normal(0, 0.02, scene.shape), 0, 1)
        Image.fromarray((img * 255).astype(np.uint8)).save(root / f"real_{i}.png")
    return root


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> tuple[Path, dict]:
    """A 2-step tiny pretraining run (its checkpoint is Colabator's starting point)."""
    tmp = tmp_path_factory.mktemp("pre")
    cfg = tiny_config(tmp, total_steps=2, ckpt_every=0, out_dir=str(tmp / "pre"))
    cfg["data"]["patch"] = 32
    tr.train(load_config(tr.TrainConfig, write_config(tmp, cfg)))
    return tmp / "pre", cfg


def colab_config(tmp_path: Path, pretrained, **train) -> dict:
    pre_dir, base = pretrained
    real = make_real_folder(tmp_path / "real") if not (tmp_path / "real").exists() else tmp_path / "real"
    cfg = json.loads(json.dumps(base))
    cfg["optim"]["lr"] = 5e-4
    cfg["ema"] = {"decay": 0.9, "warmup": False}
    cfg["colabator"] = {"enabled": True, "init": str(pre_dir), "real_dir": str(real), "real_batch_size": 2,
                        "quality_scorer": "piqe", "haze_scorer": "dark_channel", "block": 16}
    cfg["train"].update({"out_dir": str(tmp_path / "colab"), "total_steps": 4, "ckpt_every": 2, **train})
    return cfg


@pytest.mark.parametrize("name", ["smoke_colabator.yaml", "paper_colabator.yaml"])
def test_shipped_colabator_configs_parse(name):
    cfg = load_config(tr.TrainConfig, REPO / "configs" / name)
    assert cfg.colabator.enabled and cfg.colabator.block == 32
    assert cfg.colabator.quality_scorer != cfg.colabator.haze_scorer


def test_colabator_run_starts_from_the_teacher_and_fills_the_pool(tmp_path, pretrained):
    cfg = load_config(tr.TrainConfig, write_config(tmp_path, colab_config(tmp_path, pretrained)))
    trainer = tr.Trainer(cfg)
    pre = torch.load(tr.latest_checkpoint(pretrained[0]), weights_only=True)
    summary = trainer.fit()
    assert summary["exit_code"] == 0 and summary["step"] == 4
    run = tmp_path / "colab"
    pool = LabelPool.open(run / "label_pool")
    hist = pool.history()
    assert len(hist) == 4 * 2  # one decision per real image per step
    first = hist.drop_duplicates("name", keep="first")
    assert first["accepted"].all()  # first sight is always stored
    assert len(pool) == hist["name"].nunique() == len(first)
    entry = pool.get(first["name"].iloc[0])
    assert entry.label.shape == (3, 32, 32) and 0 <= float(entry.weight.min()) <= float(entry.weight.max()) <= 1
    log = read_log(run)
    assert sorted(log) == [1, 2, 3, 4]
    assert all(0.0 <= float(r["accept_rate"]) <= 1.0 and r["l_real_pix"] != "" for r in log.values())
    assert float(log[1]["accept_rate"]) == 1.0  # an empty pool accepts everything
    ck = torch.load(tr.latest_checkpoint(run), weights_only=True)
    assert set(ck["label_pool_table"]["name"]) == set(pool.names())
    assert "real_loader" in ck and ck["step"] == 4
    # the teacher started from the pretraining EMA (not from the student): after 4 EMA updates at 0.9 it is
    # 0.9^4 of the way from that start
    key = next(k for k in pre["params_ema"] if pre["params_ema"][k].ndim > 1 and
               not torch.equal(pre["params_ema"][k], pre["params"][k]))
    assert not torch.equal(ck["params_ema"][key], ck["params"][key])


def test_a_fresh_run_refuses_to_wipe_an_existing_pool(tmp_path, pretrained):
    cfg_dict = colab_config(tmp_path, pretrained, total_steps=2, ckpt_every=0)
    path = write_config(tmp_path, cfg_dict)
    tr.train(load_config(tr.TrainConfig, path))
    with pytest.raises(ConfigError, match="already holds"):
        tr.train(load_config(tr.TrainConfig, path))
    assert len(LabelPool.open(tmp_path / "colab" / "label_pool")) > 0  # nothing lost


def test_colabator_without_pretraining_checkpoint_fails_clearly(tmp_path, pretrained):
    cfg = colab_config(tmp_path, pretrained)
    cfg["colabator"]["init"] = str(tmp_path / "nope.pth")
    with pytest.raises(ConfigError, match="nope.pth"):
        tr.Trainer(load_config(tr.TrainConfig, write_config(tmp_path, cfg)))


def test_colabator_sigkill_then_resume_gives_the_same_losses_and_pool(tmp_path, pretrained):
    base = colab_config(tmp_path, pretrained)
    ref_cfg = write_config(tmp_path, {**base, "train": {**base["train"], "out_dir": str(tmp_path / "ref")}},
                           "ref.yaml")
    cfg = write_config(tmp_path, {**base, "train": {**base["train"], "ckpt_every": 1, "total_steps": 500,
                                                     "keep_last": 0}})
    run = tmp_path / "colab"
    # killed a little after checkpoint 2, inside a later step (pool writes after the checkpoint)
    res = kill_and_resume(cfg, ref_cfg, run, tmp_path / "ref", settle=0.3, timeout=240)
    total, got, want = res.total, res.got, res.want
    for step in range(1, total + 1):
        for key in ("loss", "l_real_pix", "accept_rate"):
            assert float(got[step][key]) == pytest.approx(float(want[step][key]), rel=1e-6, abs=1e-7), (step, key)
    a, b = LabelPool.open(run / "label_pool"), LabelPool.open(tmp_path / "ref" / "label_pool")
    ha, hb = a.history(), b.history()
    assert len(ha) == len(hb) == total * 2
    assert ha["accepted"].tolist() == hb["accepted"].tolist()
    ta, tb = a.table().sort_values("name"), b.table().sort_values("name")
    assert ta["name"].tolist() == tb["name"].tolist() and ta["iteration"].tolist() == tb["iteration"].tolist()


def test_colabator_under_torchrun_shares_one_pool(tmp_path, pretrained):
    cfg = write_config(tmp_path, colab_config(tmp_path, pretrained, total_steps=3, ckpt_every=0, check_sync=True))
    res = _run(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "corun.train",
                "--config", str(cfg)], timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")][0]
    assert summary["rank_checksums"][0] == summary["rank_checksums"][1]
    pool = LabelPool.open(tmp_path / "colab" / "label_pool")
    hist = pool.history()
    assert set(hist["rank"]) == {0, 1} and len(hist) == 3 * 2 * 2
    assert len(pool) == hist["name"].nunique() == 6  # both ranks' images in one pool


def test_a_new_pretraining_checkpoint_supersedes_the_colabator_run(tmp_path, pretrained):
    """Re-running the pretraining (same path, new weights) must not be answered by the old fine-tune."""
    pre_dir, base = pretrained
    own_pre = tmp_path / "pre"
    shutil.copytree(pre_dir, own_pre)
    raw = colab_config(tmp_path, pretrained, total_steps=2, ckpt_every=0)
    raw["colabator"]["init"] = str(own_pre)
    raw["colabator"]["pool_dir"] = str(tmp_path / "pool")  # outside the run folder: moved aside with it
    cfg = load_config(tr.TrainConfig, write_config(tmp_path, raw))
    tr.train(cfg)
    run = tmp_path / "colab"
    assert tr.run_changes(tr.latest_checkpoint(run), cfg) == []
    ck_path = tr.latest_checkpoint(own_pre)
    ck = torch.load(ck_path, weights_only=True)
    ck["params_ema"] = {k: v + 0.01 if v.is_floating_point() else v for k, v in ck["params_ema"].items()}
    torch.save(ck, ck_path)
    changes = tr.run_changes(tr.latest_checkpoint(run), cfg)
    assert len(changes) == 1 and "colabator.init" in changes[0]
    assert tr.train(cfg, resume=True, restart_if_changed=True)["step"] == 2
    assert len(list(tmp_path.glob("colab.superseded-*"))) == 1
    old_pool = list(tmp_path.glob("pool.superseded-*"))
    assert len(old_pool) == 1 and len(LabelPool.open(old_pool[0])) > 0
    assert len(LabelPool.open(tmp_path / "pool")) > 0  # the new run's own labels
