"""Pretraining: config files, schedule, EMA, checkpoints that resume exactly (after SIGKILL), signals,
non-finite losses, torchrun/DDP on CPU (gloo), the CLI and notebook 02.

Every run here is a few steps of a tiny CORUN on 16×16 patches of a tiny generated dataset."""
from __future__ import annotations

import csv
import json
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from corun import train as tr
from corun.checkpoint import load_model, read_state_dict
from corun.config import ConfigError, load_config
from corun.losses import CORUNLoss

from killresume import PY, REPO, env, kill_and_resume, read_log, run_python

pytestmark = pytest.mark.slow  # trainings, notebooks, subprocesses: `make test-fast` skips this file


def make_tiny_dataset(root: Path, n: int = 6, size: int = 40, n_test: int = 2) -> Path:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for sub in ("clean", "depth", "test/hazy", "test/clean"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = np.stack([np.sin(6 * xx + i) * 0.4 + 0.5, yy * 0.8 + 0.1, np.cos(5 * yy * xx + i) * 0.3 + 0.5], -1)
        img = np.clip(img + rng.normal(0, 0.03, img.shape), 0, 1)
        Image.fromarray((img * 255).astype(np.uint8)).save(root / "clean" / f"s{i}.png")
        np.save(root / "depth" / f"s{i}.npy", (0.2 + 0.8 * yy).astype(np.float32))
    for i in range(n_test):
        clean = rng.uniform(0.2, 0.8, (16, 24, 3))
        hazy = clean * 0.6 + 0.35
        Image.fromarray((clean * 255).astype(np.uint8)).save(root / "test" / "clean" / f"t{i}.png")
        Image.fromarray((hazy * 255).astype(np.uint8)).save(root / "test" / "hazy" / f"t{i}.png")
    return root


def tiny_config(tmp_path: Path, **train) -> dict:
    data = make_tiny_dataset(tmp_path / "data") if not (tmp_path / "data").exists() else tmp_path / "data"
    return {
        "model": {"depth": 2, "dim": 8, "levels": 3, "num_blocks": [1, 1, 1]},
        "data": {"root": str(data), "patch": 16, "batch_size": 2, "num_workers": 0},
        "optim": {"lr": 1e-3, "grad_clip": 1.0},
        "schedule": {"periods": [20], "restart_weights": [1.0], "eta_mins": [1e-5]},
        "ema": {"decay": 0.9, "warmup": True},
        "loss": {"vgg_weights": None},
        "val": {"every": 0, "synthetic_dir": str(data / "test")},
        "train": {"total_steps": 4, "seed": 0, "out_dir": str(tmp_path / "run"), "ckpt_every": 2,
                  "log_every": 1, "threads": 1, "progress": False, "tensorboard": False, **train},
    }


def write_config(tmp_path: Path, cfg: dict, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return path


# ---------------------------------------------------------------------------------------- configs

@pytest.mark.parametrize("name", ["smoke_pretrain.yaml", "paper_pretrain.yaml"])
def test_shipped_configs_parse(name):
    cfg = load_config(tr.TrainConfig, REPO / "configs" / name)
    assert cfg.data.patch % 2 ** cfg.model.levels == 0
    if name.startswith("paper"):
        assert (cfg.model.depth, cfg.data.patch, cfg.data.batch_size, cfg.train.total_steps) == (4, 288, 2, 30000)
        assert (cfg.optim.lr, cfg.optim.betas, cfg.optim.weight_decay, cfg.ema.decay) == (1e-4, (0.9, 0.999), 0.0,
                                                                                          0.999)
        assert cfg.loss.asm_weight == 0.01 and cfg.loss.perceptual_weight == 0.2


def test_config_overrides_and_unknown_keys(tmp_path):
    path = write_config(tmp_path, tiny_config(tmp_path))
    cfg = load_config(tr.TrainConfig, path, ["train.total_steps=7", "optim.lr=1e-4", "model.num_blocks=[2,2,2]",
                                             "schedule.eta_mins=[4e-4]"])
    assert cfg.train.total_steps == 7 and cfg.optim.lr == 1e-4 and cfg.model.num_blocks == (2, 2, 2)
    assert cfg.schedule.eta_mins == (4e-4,)
    with pytest.raises(ConfigError, match="train.totl_steps"):
        load_config(tr.TrainConfig, path, ["train.totl_steps=3"])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config(tr.TrainConfig, path, ["oops"])


def test_cosine_restart_schedule():
    paper = tr.ScheduleSection()
    assert all(tr.cosine_restart_factor(s, 1e-4, paper) == pytest.approx(1.0) for s in (0, 15000, 30000))
    sched = tr.ScheduleSection(periods=(10, 20), restart_weights=(1.0, 0.5), eta_mins=(0.0, 0.0))
    f = [tr.cosine_restart_factor(s, 1.0, sched) for s in range(31)]
    assert f[0] == pytest.approx(1.0) and f[5] == pytest.approx(0.5) and f[10] == pytest.approx(0.0)
    assert f[11] == pytest.approx(0.5 * 0.5 * (1 + np.cos(np.pi / 20)))  # restart at half the lr
    assert f[30] == pytest.approx(0.0)
    warm = tr.ScheduleSection(periods=(10,), restart_weights=(1.0,), eta_mins=(0.0,), warmup_steps=4)
    g = [tr.cosine_restart_factor(s, 1.0, warm) for s in range(11)]
    assert g[:4] == pytest.approx([f[s] * (s + 1) / 4 for s in range(4)])  # linear ramp times the cosine
    assert g[4:] == pytest.approx(f[4:11])


def test_ema_warmup_and_decay():
    model = torch.nn.Linear(2, 1, bias=False)
    ema = tr.make_ema(model, decay=0.9, warmup=False)
    ema.update_parameters(model)  # first update copies
    w0 = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update_parameters(model)
    torch.testing.assert_close(ema.module.weight, w0 + 0.1)


# ---------------------------------------------------------------------------------------- in-process

def test_tiny_run_checkpoint_contents_and_validation(tmp_path):
    raw = tiny_config(tmp_path, tensorboard=True)
    raw["val"]["real_dir"] = str(tmp_path / "data" / "test" / "hazy")
    cfg = load_config(tr.TrainConfig, write_config(tmp_path, raw))
    summary = tr.train(cfg)
    run = Path(cfg.train.out_dir)
    assert summary["step"] == 4 and summary["exit_code"] == 0
    assert sorted(p.name for p in (run / "checkpoints").glob("*.pth")) == ["step_0000002.pth", "step_0000004.pth"]
    ck = torch.load(run / "checkpoints" / "step_0000004.pth", weights_only=True)
    for key in ("params", "params_ema", "model_config", "optimizer", "scheduler", "step", "rng", "loader",
                "ema_n_averaged", "train_config"):
        assert key in ck, key
    assert ck["step"] == 4 and set(ck["rng"]) >= {"torch", "numpy", "python"}
    assert any(not torch.equal(ck["params"][k], ck["params_ema"][k]) for k in ck["params"])
    # the authors' tools read params_ema; so do ours
    sd, meta = read_state_dict(run / "checkpoints" / "step_0000004.pth")
    assert meta["source_key"] == "params_ema"
    assert load_model(run / "checkpoints" / "step_0000004.pth").depth == 2
    log = read_log(run)
    assert sorted(log) == [1, 2, 3, 4]
    assert all(np.isfinite(float(r["loss"])) and float(r["lr"]) > 0 for r in log.values())
    with open(run / "val.csv", newline="") as f:
        val = list(csv.DictReader(f))
    assert len(val) == 1 and int(val[0]["step"]) == 4 and int(val[0]["n_images"]) == 2
    assert summary["val"]["psnr_hazy"] == pytest.approx(float(val[0]["psnr_hazy"]))
    assert any((run / "tb").iterdir())
    assert sorted(p.name for p in (run / "val_real" / "step_0000004").iterdir()) == ["t0.png", "t1.png"]


def test_nonfinite_loss_skips_then_aborts_without_writing_nan(tmp_path, monkeypatch):
    real_forward = CORUNLoss.forward
    calls = {"n": 0}

    def flaky(self, output, clean, hazy):
        calls["n"] += 1
        total, terms = real_forward(self, output, clean, hazy)
        return (total * float("nan"), terms) if calls["n"] >= 3 else (total, terms)

    monkeypatch.setattr(CORUNLoss, "forward", flaky)
    cfg = load_config(tr.TrainConfig, write_config(tmp_path, tiny_config(tmp_path, total_steps=10, max_nonfinite=3,
                                                                         ckpt_every=1)))
    with pytest.warns(UserWarning, match="non-finite"):
        with pytest.raises(tr.NonFiniteLossError, match="3 non-finite"):
            tr.train(cfg)
    run = Path(cfg.train.out_dir)
    ckpts = sorted((run / "checkpoints").glob("*.pth"))
    assert ckpts and ckpts[-1].name == "step_0000004.pth"  # steps 3, 4 skipped (weights unchanged), abort at 5
    for path in ckpts:
        ck = torch.load(path, weights_only=True)
        assert all(torch.isfinite(v).all() for v in ck["params"].values())
        assert all(torch.isfinite(v).all() for v in ck["params_ema"].values())
    log = read_log(run)
    assert log[3]["skipped"] == "1" and log[2]["skipped"] == "0"


# ---------------------------------------------------------------------------------------- subprocesses

def _run(args, timeout=240, **kw):
    return run_python(args, timeout=timeout, **kw)


def test_sigkill_then_resume_gives_the_same_losses(tmp_path):
    base = tiny_config(tmp_path)
    ref_cfg = write_config(tmp_path, {**base, "train": {**base["train"], "out_dir": str(tmp_path / "ref")}}, "ref.yaml")
    cfg = write_config(tmp_path, {**base, "train": {**base["train"], "out_dir": str(tmp_path / "run"),
                                                     "ckpt_every": 1, "total_steps": 500, "keep_last": 0}})
    run = tmp_path / "run"
    res = kill_and_resume(cfg, ref_cfg, run, tmp_path / "ref")
    k, total, got, want = res.killed_at, res.total, res.got, res.want
    assert 2 <= k < 500
    assert "resumed from" in res.resumed.stderr
    for step in range(1, total + 1):
        assert float(got[step]["loss"]) == pytest.approx(float(want[step]["loss"]), rel=1e-6, abs=1e-7), step
    assert float(got[k + 1]["loss"]) == float(want[k + 1]["loss"])  # bit-identical next step
    a = torch.load(tr.latest_checkpoint(run), weights_only=True)
    b = torch.load(tr.latest_checkpoint(tmp_path / "ref"), weights_only=True)
    for key in a["params"]:
        torch.testing.assert_close(a["params"][key], b["params"][key], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(a["params_ema"][key], b["params_ema"][key], rtol=1e-5, atol=1e-6)


def test_sigterm_saves_a_checkpoint_and_exits(tmp_path):
    cfg = write_config(tmp_path, tiny_config(tmp_path, total_steps=100000, ckpt_every=0))
    run = tmp_path / "run"
    proc = subprocess.Popen([PY, "-m", "corun.train", "--config", str(cfg)], cwd=REPO, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 180
        while not (run / "log.csv").exists() or len(read_log(run)) < 2:
            assert proc.poll() is None and time.time() < deadline
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err
    summary = json.loads(out.strip().splitlines()[-1])
    ck = tr.latest_checkpoint(run)
    assert ck is not None and torch.load(ck, weights_only=True)["step"] == summary["step"] >= 2
    assert "continue with --resume" in err


def test_torchrun_two_processes_stay_in_sync(tmp_path):
    cfg = write_config(tmp_path, tiny_config(tmp_path, total_steps=3, check_sync=True, ckpt_every=0))
    res = _run(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "corun.train",
                "--config", str(cfg)], timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    summaries = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    assert len(summaries) == 1  # rank 0 only
    sums = summaries[0]["rank_checksums"]
    assert len(sums) == 2 and sums[0] == sums[1]
    run = tmp_path / "run"
    assert sorted(read_log(run)) == [1, 2, 3]
    ck = torch.load(tr.latest_checkpoint(run), weights_only=True)
    assert ck["world_size"] == 2 and ck["step"] == 3


def test_cli_train_is_registered(tmp_path):
    from corun.cli import build_parser

    args = build_parser().parse_args(["train", "--config", "x.yaml", "--resume", "train.total_steps=3"])
    assert args.resume and args.overrides == ["train.total_steps=3"] and args.config == "x.yaml"
    res = _run(["-m", "corun.cli", "train", "--config", str(tmp_path / "missing.yaml")], timeout=120)
    assert res.returncode == 2 and "config file not found" in res.stderr


def test_notebook_02_smoke_runs_headless(tmp_path):
    import nbformat

    from corun.reproduce import run_notebook

    cfg = write_config(tmp_path, tiny_config(tmp_path, total_steps=2))
    run_notebook("02_pretrain_corun.ipynb", tmp_path / "nb",
                 {"profile": "smoke", "config": str(cfg), "steps": 3, "n_show": 1,
                  "figures_dir": str(tmp_path / "figures")})
    assert sorted(read_log(tmp_path / "run")) == [1, 2, 3]
    assert {p.name for p in (tmp_path / "figures").iterdir()} == {"02_pretrain_curves.png", "02_unfolding.png"}
    executed = nbformat.read(tmp_path / "nb" / "02_pretrain_corun.ipynb", as_version=4)
    assert any(c.get("outputs") for c in executed.cells if c.cell_type == "code")


def test_notebook_02_paper_profile_prints_the_torchrun_command(tmp_path):
    import nbformat

    from corun.reproduce import run_notebook

    run_notebook("02_pretrain_corun.ipynb", tmp_path / "nb",
                 {"profile": "paper", "overrides": [f"train.out_dir={tmp_path / 'none'}"],
                  "figures_dir": str(tmp_path / "figures")})
    executed = nbformat.read(tmp_path / "nb" / "02_pretrain_corun.ipynb", as_version=4)
    text = "".join(o.get("text", "") for c in executed.cells if c.cell_type == "code" for o in c.outputs)
    assert "torchrun --nproc_per_node 8 -m corun.train --config" in text and "paper_pretrain.yaml" in text


def test_a_changed_config_supersedes_a_finished_run_instead_of_resuming_it(tmp_path):
    raw = tiny_config(tmp_path, total_steps=2, ckpt_every=0)
    path = write_config(tmp_path, raw)
    run = Path(raw["train"]["out_dir"])
    tr.train(load_config(tr.TrainConfig, path))
    ck = tr.latest_checkpoint(run)
    # the same settings (or only longer / other logging): the same run, continued
    same = load_config(tr.TrainConfig, path, ["train.total_steps=3", "train.log_every=5", "val.every=0"])
    assert tr.run_changes(ck, same) == []
    assert tr.train(same, resume=True, restart_if_changed=True)["step"] == 3
    assert not list(tmp_path.glob("run.superseded-*"))
    # another learning rate is another run: the finished one is moved aside, not resumed and not deleted
    other = load_config(tr.TrainConfig, path, ["optim.lr=5e-4"])
    assert tr.run_changes(tr.latest_checkpoint(run), other) == ["optim.lr: 0.001 -> 0.0005"]
    with pytest.warns(UserWarning, match="other settings"):  # the CLI's --resume continues, with a warning
        tr.Trainer(other, resume=True).load(tr.latest_checkpoint(run))
    summary = tr.train(other, resume=True, restart_if_changed=True)
    assert summary["step"] == 2
    moved = list(tmp_path.glob("run.superseded-*"))
    assert len(moved) == 1 and (moved[0] / "checkpoints" / "step_0000003.pth").is_file()
    new_ck = torch.load(tr.latest_checkpoint(run), weights_only=True)
    assert new_ck["train_config"]["optim"]["lr"] == 5e-4 and new_ck["step"] == 2
