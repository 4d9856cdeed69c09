"""A network that is not CORUN, trained through ``corun train``: a tiny U-Net (defined here, built by the
factory ``test_any_restorer:tiny_unet``) pretrains on synthetic haze, fine-tunes with Colabator in its
generic form (a label pool without transmission, no ASM term), and resumes exactly."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from corun import train as tr
from corun.cli import train as train_command
from corun.checkpoint import load_model, save_checkpoint, save_safetensors
from corun.colabator.label_pool import LabelPool
from corun.config import ConfigError, load_config
from corun.model import CORUN

from test_colabator_train import make_real_folder
from test_train import read_log, tiny_config, write_config

pytestmark = pytest.mark.slow  # trainings, notebooks, subprocesses: `make test-fast` skips this file

FACTORY = "test_any_restorer:tiny_unet"


class TinyUNet(nn.Module):
    """Two-level U-Net with a residual output: hazy (B, 3, H, W) → dehazed image tensor (H, W multiples of 4)."""

    multiple = 4

    def __init__(self, width: int = 8):
        super().__init__()
        self.width = width
        self.inc = nn.Conv2d(3, width, 3, padding=1)
        self.down1 = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        self.down2 = nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1)
        self.up2 = nn.Conv2d(4 * width, width, 3, padding=1)
        self.up1 = nn.Conv2d(2 * width, width, 3, padding=1)
        self.out = nn.Conv2d(width, 3, 1)

    def forward(self, x):
        e0 = F.relu(self.inc(x))
        e1 = F.relu(self.down1(e0))
        e2 = F.relu(self.down2(e1))
        d1 = F.relu(self.up2(torch.cat([F.interpolate(e2, size=e1.shape[-2:]), e1], 1)))
        d0 = F.relu(self.up1(torch.cat([F.interpolate(d1, size=e0.shape[-2:]), e0], 1)))
        return x + self.out(d0)


def tiny_unet(width: int = 8) -> TinyUNet:
    return TinyUNet(width)


def unet_config(tmp_path: Path, **train) -> dict:
    cfg = tiny_config(tmp_path, **train)
    cfg["model"] = {"factory": FACTORY, "kwargs": {"width": 6}}
    cfg["data"]["patch"] = 32
    return cfg


def train_cli(path: Path, *extra: str, capsys) -> dict:
    """``corun train --config PATH EXTRA`` through its Python entry; returns the printed summary."""
    assert train_command.main(["--config", str(path), *extra]) == 0
    out = capsys.readouterr()
    return {**json.loads(out.out.strip().splitlines()[-1]), "stderr": out.err}


@pytest.fixture(scope="module")
def pretrained_unet(tmp_path_factory) -> tuple[Path, dict]:
    tmp = tmp_path_factory.mktemp("unet_pre")
    cfg = unet_config(tmp, total_steps=2, ckpt_every=0, out_dir=str(tmp / "pre"))
    tr.train(load_config(tr.TrainConfig, write_config(tmp, cfg)))
    return tmp / "pre", cfg


def test_a_unet_pretrains_and_its_checkpoints_rebuild_it(tmp_path, capsys):
    raw = unet_config(tmp_path, total_steps=4, ckpt_every=2)
    summary = train_cli(write_config(tmp_path, raw), capsys=capsys)
    run = tmp_path / "run"
    assert summary["step"] == 4 and summary["exit_code"] == 0
    assert FACTORY in summary["stderr"]  # the start-up line names the network
    log = read_log(run)
    assert sorted(log) == [1, 2, 3, 4]
    assert all(math.isfinite(float(r["loss"])) and r["l_pix"] != "" for r in log.values())
    assert all(r["l_asm"] == "" for r in log.values())  # no transmission, no ASM term
    assert summary["val"]["n_images"] == 2 and math.isfinite(summary["val"]["psnr"])  # 16×24 images, padded
    ck_path = tr.latest_checkpoint(run)
    ck = torch.load(ck_path, weights_only=True)
    assert ck["model_factory"] == {"factory": FACTORY, "kwargs": {"width": 6}} and "model_config" not in ck
    model = load_model(ck_path)
    assert type(model).__name__ == "TinyUNet" and model.width == 6
    for k, v in model.state_dict().items():
        assert torch.equal(v, ck["params_ema"][k]), k
    x = torch.rand(1, 3, 20, 28)
    exported = save_safetensors(tmp_path / "unet.safetensors", model, dtype=torch.float32)
    again = load_model(exported)
    torch.testing.assert_close(again(x), model(x), rtol=0, atol=0)


def test_resume_continues_a_unet_run_at_the_right_step(tmp_path, capsys):
    raw = unet_config(tmp_path, total_steps=2, ckpt_every=2)
    path = write_config(tmp_path, raw)
    train_cli(path, capsys=capsys)
    resumed = train_cli(path, "--resume", "train.total_steps=4", capsys=capsys)
    assert "(step 2)" in resumed["stderr"] and resumed["step"] == 4
    ref = unet_config(tmp_path, total_steps=4, ckpt_every=2, out_dir=str(tmp_path / "ref"))
    train_cli(write_config(tmp_path, ref, "ref.yaml"), capsys=capsys)
    got, want = read_log(tmp_path / "run"), read_log(tmp_path / "ref")
    assert sorted(got) == sorted(want) == [1, 2, 3, 4]
    assert [float(got[s]["loss"]) for s in got] == [float(want[s]["loss"]) for s in want]  # exact resume
    a = torch.load(tr.latest_checkpoint(tmp_path / "run"), weights_only=True)
    b = torch.load(tr.latest_checkpoint(tmp_path / "ref"), weights_only=True)
    assert a["step"] == b["step"] == 4
    for k in a["params"]:
        assert torch.equal(a["params"][k], b["params"][k]) and torch.equal(a["params_ema"][k], b["params_ema"][k]), k


def colab_unet_config(tmp_path: Path, pretrained_unet, **train) -> dict:
    pre_dir, base = pretrained_unet
    real = make_real_folder(tmp_path / "real") if not (tmp_path / "real").exists() else tmp_path / "real"
    cfg = json.loads(json.dumps(base))
    del cfg["model"]  # the network comes from colabator.init: the U-Net, not the default CORUN
    cfg["colabator"] = {"enabled": True, "init": str(pre_dir), "real_dir": str(real), "real_batch_size": 2,
                        "quality_scorer": "piqe", "haze_scorer": "dark_channel", "block": 16}
    cfg["train"].update({"out_dir": str(tmp_path / "colab"), "total_steps": 4, "ckpt_every": 2, **train})
    return cfg


def test_colabator_fine_tunes_the_unet_with_labels_without_transmission(tmp_path, pretrained_unet, capsys):
    path = write_config(tmp_path, colab_unet_config(tmp_path, pretrained_unet, total_steps=2))
    first = train_cli(path, capsys=capsys)
    assert "taken from" in first["stderr"] and FACTORY in first["stderr"]
    resumed = train_cli(path, "--resume", "train.total_steps=4", capsys=capsys)
    assert "(step 2)" in resumed["stderr"] and resumed["step"] == 4
    run = tmp_path / "colab"
    log = read_log(run)
    assert sorted(log) == [1, 2, 3, 4]
    assert all(math.isfinite(float(r["loss"])) and r["l_real_pix"] != "" and r["l_real_asm"] == ""
               for r in log.values())
    pool = LabelPool.open(run / "label_pool")
    hist = pool.history()
    assert len(hist) == 4 * 2 and hist.drop_duplicates("name")["accepted"].all()
    for name in pool.names():
        entry = pool.get(name)
        assert entry.trans is None and entry.label.shape == (3, 32, 32)
    stored = next((run / "label_pool" / "entries").rglob("*.pt"))
    assert "trans" not in torch.load(stored, weights_only=True)
    ck = torch.load(tr.latest_checkpoint(run), weights_only=True)
    assert ck["step"] == 4 and ck["model_factory"]["factory"] == FACTORY
    # the uninterrupted run makes the same decisions and losses
    ref = colab_unet_config(tmp_path, pretrained_unet, out_dir=str(tmp_path / "ref"))
    train_cli(write_config(tmp_path, ref, "ref.yaml"), capsys=capsys)
    want = read_log(tmp_path / "ref")
    for step in (3, 4):
        assert float(log[step]["loss"]) == pytest.approx(float(want[step]["loss"]), rel=1e-6), step
    assert hist["accepted"].tolist() == LabelPool.open(tmp_path / "ref" / "label_pool").history()["accepted"].tolist()


# ---------------------------------------------------------------------------------------- the config

@pytest.mark.parametrize("model, message", [
    ({"factory": "not a factory"}, "model.factory must be 'package.module:function'"),
    ({"factory": FACTORY, "depth": 2}, "model.depth must be left out with model.factory"),
    ({"kwargs": {"width": 4}}, "model.kwargs must be empty without model.factory"),
    ({"factory": "no_such_module_here:net"}, "cannot import no_such_module_here"),
    ({"factory": "test_any_restorer:missing"}, "has no attribute 'missing'"),
    ({"factory": FACTORY, "kwargs": {"depth": 3}}, "unexpected keyword argument 'depth'"),
    ({"factory": "test_any_restorer:FACTORY"}, "is not callable"),
])
def test_a_bad_model_section_is_refused_naming_the_key(tmp_path, model, message):
    raw = unet_config(tmp_path)
    raw["model"] = model
    with pytest.raises((ConfigError, TypeError), match=message):
        tr.Trainer(load_config(tr.TrainConfig, write_config(tmp_path, raw)))
    assert not (tmp_path / "run").exists()


def test_model_kwargs_must_be_a_mapping_and_take_overrides(tmp_path):
    path = write_config(tmp_path, unet_config(tmp_path))
    with pytest.raises(ConfigError, match="model.kwargs: expected a mapping"):
        load_config(tr.TrainConfig, path, ["model.kwargs=3"])
    cfg = load_config(tr.TrainConfig, path, ["model.kwargs.width=12", "model.multiple=8"])
    assert cfg.model.kwargs == {"width": 12} and cfg.model.multiple == 8
    with pytest.raises(ConfigError, match="data.patch 36 must be a multiple of 8"):
        tr.Trainer(load_config(tr.TrainConfig, path, ["model.multiple=8", "data.patch=36"]))


def test_a_corun_checkpoint_does_not_resume_into_a_unet(tmp_path):
    cfg = load_config(tr.TrainConfig, write_config(tmp_path, unet_config(tmp_path)))
    corun_ck = save_checkpoint(tmp_path / "corun.pth", CORUN(depth=2, dim=8))
    with pytest.raises(ConfigError, match="saved from model"):
        tr.Trainer(cfg).load(corun_ck)
