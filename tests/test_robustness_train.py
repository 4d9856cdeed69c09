"""Issue 17, training: run folders are owned (a lock, no fresh run over another run), diverged weights never
become a checkpoint, wrong overrides are refused before anything is written, and ``--resume`` with a new
learning rate follows the new schedule. Tiny CORUN runs from test_train.py's helpers."""
from __future__ import annotations

import math
import os
import signal
import subprocess
import time
import warnings
from pathlib import Path

import pytest
import torch
from test_train import PY, REPO, env, read_log, tiny_config, write_config

from corun import runlock
from corun import train as tr
from corun.cli import train as train_cli
from corun.checkpoint import load_model
from corun.config import ConfigError, load_config

pytestmark = pytest.mark.slow  # trainings, notebooks, subprocesses: `make test-fast` skips this file


def _cfg(tmp_path: Path, overrides=(), **train):
    return load_config(tr.TrainConfig, write_config(tmp_path, tiny_config(tmp_path, **train)), list(overrides))


def _files(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()
            and p.name != runlock.LOCK_NAME}


# ----------------------------------------------------------------------------- 17.2 fresh run over a run

def test_a_fresh_run_into_an_existing_run_folder_is_refused_and_changes_nothing(tmp_path, capsys):
    old = _cfg(tmp_path, total_steps=6, ckpt_every=2, keep_last=2)
    tr.train(old)
    run = Path(old.train.out_dir)
    before = _files(run)
    # before the fix: the old log.csv was deleted, keep_last then pruned the NEW run's step 2 (the old run's
    # steps 4 and 6 sort after it) and a later --resume continued the old run
    with pytest.raises(runlock.RunFolderError, match="already holds a run .*step 6.*--resume"):
        tr.train(_cfg(tmp_path, total_steps=2, ckpt_every=2, keep_last=2))
    assert _files(run) == before
    # the command line: one line, exit 2
    assert train_cli.main(["--config", str(tmp_path / "cfg.yaml")]) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and "Traceback" not in err
    assert _files(run) == before
    # --resume continues it, as before
    assert tr.train(_cfg(tmp_path, total_steps=7, ckpt_every=2, keep_last=2), resume=True)["step"] == 7


# ----------------------------------------------------------------------------- 17.3 two writers

def test_a_second_training_on_a_busy_run_folder_is_refused_and_a_kill_frees_it(tmp_path, capsys):
    cfg_path = write_config(tmp_path, tiny_config(tmp_path, total_steps=100000, ckpt_every=1, keep_last=2))
    run = tmp_path / "run"
    proc = subprocess.Popen([PY, "-m", "corun.train", "--config", str(cfg_path)], cwd=REPO, env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 600
        while tr.latest_checkpoint(run) is None:
            assert proc.poll() is None, proc.stderr.read()
            assert time.time() < deadline, "no checkpoint appeared"
            time.sleep(0.05)
        assert f"pid {proc.pid}" in (runlock.holder(run) or "")
        config_before = (run / "config.yaml").read_bytes()
        capsys.readouterr()
        for extra in ([], ["--resume"]):  # neither a fresh run nor a resume may write into a live run
            assert train_cli.main(["--config", str(cfg_path), *extra, "train.total_steps=3"]) == 2
            err = capsys.readouterr().err
            assert "in use by another training" in err and f"pid {proc.pid}" in err, err
        assert (run / "config.yaml").read_bytes() == config_before
        # a notebook's supersede must not move a live run aside either
        with pytest.raises(runlock.RunFolderError, match="in use by another training"):
            tr.supersede_changed_run(load_config(tr.TrainConfig, cfg_path, ["optim.lr=5e-4"]))
        assert run.is_dir()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert runlock.holder(run) is None  # the kernel dropped the dead process's lock
    step = int(tr.CKPT_RE.search(tr.latest_checkpoint(run).name).group(1))
    summary = tr.train(load_config(tr.TrainConfig, cfg_path, [f"train.total_steps={step + 1}"]), resume=True)
    assert summary["step"] == step + 1


def _free(folder: Path) -> bool:
    """Whether a new open file description can take the folder's flock now (as another process would)."""
    import fcntl

    with open(folder / runlock.LOCK_NAME, "a") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
        return True


def test_locks_are_reentrant_in_one_process_and_released(tmp_path):
    folder = tmp_path / "r"
    runlock.acquire(folder)
    runlock.acquire(folder)
    assert runlock.holder(folder) is None  # this process's own lock is not "another training"
    assert not _free(folder)
    assert f"pid {os.getpid()}" in (folder / runlock.LOCK_NAME).read_text()
    runlock.release(folder)
    assert not _free(folder)  # still held once
    runlock.release(folder)
    assert _free(folder)


# ----------------------------------------------------------------------------- 17.4 diverged weights

def test_diverged_weights_are_never_checkpointed(tmp_path):
    raw = tiny_config(tmp_path, total_steps=40, ckpt_every=1, keep_last=0, max_nonfinite=3)
    raw["optim"] = {"lr": 0.3, "grad_clip": None}  # diverges within a few steps on this tiny model
    cfg = load_config(tr.TrainConfig, write_config(tmp_path, raw))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # skipped non-finite steps warn, when the probe has not stopped it first
        with pytest.raises(tr.NonFiniteLossError, match=r"non-finite output on a fixed probe image.*"
                                                        r"Last good checkpoint: .*step_"):
            tr.train(cfg)
    ckpts = sorted((tmp_path / "run" / "checkpoints").glob("*.pth"))
    assert ckpts, "the first steps were fine and checkpointed"
    # before the fix steps 3-5 were written with weights that dehaze to NaN (black PNGs)
    x = torch.rand(1, 3, 40, 48, generator=torch.Generator().manual_seed(0))
    for path in ckpts:
        for prefer in ("params_ema", "params"):
            with torch.no_grad():
                out = load_model(path, prefer=prefer)(x)
            assert torch.isfinite(out.image).all() and all(torch.isfinite(t).all() for t in out.transmissions), \
                (path.name, prefer)


def test_the_probe_does_not_disturb_the_model_or_the_rng():
    torch.manual_seed(3)
    model = tr.CORUN(depth=2, dim=8).train()
    state = torch.get_rng_state()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert not tr.diverged(model)
    assert model.training and torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with torch.no_grad():
        next(p for n, p in model.named_parameters() if n.endswith("weight") and p.ndim == 4).fill_(1e30)
    assert tr.diverged(model)


# ----------------------------------------------------------------------------- 17.7 overrides

@pytest.mark.parametrize("override, message", [
    ("train.total_steps=abc", "train.total_steps: expected an integer, got 'abc'"),
    ("train.total_steps=5.5", "train.total_steps: expected an integer, got 5.5"),
    ("train.total_steps=-3", "train.total_steps must be at least 1, got -3"),
    ("optim.lr=fast", "optim.lr: expected a number"),
    ("train.progress=maybe", "train.progress: expected true/false"),
    ("schedule.periods=[10, x]", "schedule.periods[1]: expected an integer"),
])
def test_bad_overrides_are_one_line_and_touch_no_existing_run(tmp_path, capsys, override, message):
    cfg_path = write_config(tmp_path, tiny_config(tmp_path, total_steps=2, ckpt_every=0))
    tr.train(load_config(tr.TrainConfig, cfg_path))
    run = tmp_path / "run"
    before = _files(run)
    capsys.readouterr()
    assert train_cli.main(["--config", str(cfg_path), "--resume", override]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err
    assert _files(run) == before  # config.yaml included: it used to be overwritten before the crash


def test_integral_floats_are_integers_and_good_overrides_still_load(tmp_path):
    cfg = _cfg(tmp_path, overrides=["train.total_steps=1e4", "optim.lr=1e-4", "val.synthetic_dir=null"])
    assert cfg.train.total_steps == 10000 and isinstance(cfg.train.total_steps, int)
    assert cfg.optim.lr == 1e-4 and cfg.val.synthetic_dir is None
    with pytest.raises(ConfigError, match="optim.betas: expected 2 values"):
        _cfg(tmp_path, overrides=["optim.betas=[0.9]"])


# ----------------------------------------------------------------------------- 17.7 resume with a new lr

def test_resume_with_a_new_lr_follows_the_new_schedule(tmp_path):
    tr.train(_cfg(tmp_path, total_steps=4, ckpt_every=2))
    new = _cfg(tmp_path, overrides=["optim.lr=5e-4", "schedule.eta_mins=[2e-5]"], total_steps=6, ckpt_every=2)
    with pytest.warns(UserWarning, match="other settings"):
        tr.train(new, resume=True)
    log = read_log(tmp_path / "run")
    for step in (5, 6):  # the lr logged at step s is the one step s used: lr · factor(s - 1)
        want = 5e-4 * tr.cosine_restart_factor(step - 1, 5e-4, new.schedule)
        assert math.isclose(float(log[step]["lr"]), want, rel_tol=1e-6), (step, log[step]["lr"], want)
    ck = torch.load(tr.latest_checkpoint(tmp_path / "run"), weights_only=True)
    assert ck["scheduler"]["base_lrs"] == [5e-4]


def test_a_plain_resume_leaves_the_optimiser_untouched(tmp_path):
    tr.train(_cfg(tmp_path, total_steps=2, ckpt_every=2))
    trainer = tr.Trainer(_cfg(tmp_path, total_steps=4, ckpt_every=2), resume=True)
    ck_path = tr.latest_checkpoint(tmp_path / "run")
    trainer.load(ck_path)
    ck = torch.load(ck_path, weights_only=True)
    assert trainer.optimizer.param_groups[0]["lr"] == ck["optimizer"]["param_groups"][0]["lr"]
    assert trainer.scheduler.base_lrs == ck["scheduler"]["base_lrs"]
