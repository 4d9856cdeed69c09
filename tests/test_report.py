"""corun.report: the helpers notebooks 01–03 call (what the notebooks used to define inline), tested directly
instead of through papermill."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch
from test_train import make_tiny_dataset

from corun import report
from corun.config import load_config
from corun.train import TrainConfig
from corun.utils import ROOT


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def titles(fig) -> list[str]:
    return [ax.get_title() for ax in fig.axes]


# ---------------------------------------------------------------------------------------------- shared

def test_save_figure_writes_png_and_pdf(tmp_path):
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    paths = report.save_figure(fig, tmp_path / "new" / "figs", "x", dpi=50)
    assert paths == [tmp_path / "new" / "figs" / "x.png", tmp_path / "new" / "figs" / "x.pdf"]
    assert paths[0].read_bytes()[:4] == b"\x89PNG" and paths[1].read_bytes()[:4] == b"%PDF"


def test_write_json_is_atomic_and_formatted_like_the_notebooks_did(tmp_path):
    path = tmp_path / "sub" / "m.json"
    assert report.write_json(path, {"a": [1, 2], "p": Path("x")}, default=str) == path
    assert path.read_text() == json.dumps({"a": [1, 2], "p": "x"}, indent=1)
    report.write_json(path, {"b": 1}, newline=True)
    assert path.read_text() == '{\n "b": 1\n}\n'
    assert [p.name for p in path.parent.iterdir()] == ["m.json"]  # no temporary file left
    with pytest.raises(TypeError):  # not serialisable: the old file stays whole
        report.write_json(path, {"c": object()})
    assert json.loads(path.read_text()) == {"b": 1} and len(list(path.parent.iterdir())) == 1


def test_read_log_missing_empty_and_with_gaps(tmp_path):
    assert report.read_log(tmp_path / "log.csv").empty
    (tmp_path / "log.csv").write_text("")
    assert report.read_log(tmp_path / "log.csv").empty
    (tmp_path / "log.csv").write_text("step,loss,l_asm\n1,0.5,\n2,0.25,0.1\n")
    log = report.read_log(tmp_path / "log.csv")
    assert log["step"].tolist() == [1, 2] and log["loss"].tolist() == [0.5, 0.25]
    assert np.isnan(log["l_asm"].iloc[0]) and log["l_asm"].iloc[1] == 0.1


def test_torchrun_command_is_relative_to_the_repository_and_quoted():
    cmd = report.torchrun_command(ROOT / "configs" / "paper_colabator.yaml", ["train.out_dir=runs/a b", "x=1"])
    assert cmd == ("torchrun --nproc_per_node 8 -m corun.train --config configs/paper_colabator.yaml "
                   "'train.out_dir=runs/a b' x=1")
    assert report.torchrun_command("/elsewhere/c.yaml", nproc=2) == \
        "torchrun --nproc_per_node 2 -m corun.train --config /elsewhere/c.yaml"


def test_train_or_command_trains_smoke_and_prints_paper(monkeypatch):
    import corun.train as tr

    calls = []
    monkeypatch.setattr(tr, "train", lambda cfg, **kw: calls.append((cfg, kw)) or {"final_step": 4})
    lines = []
    assert report.train_or_command("smoke", "CFG", "c.yaml", resume=False, log=lines.append) == {"final_step": 4}
    assert calls == [("CFG", {"resume": False, "restart_if_changed": True})]
    assert json.loads(lines[0]) == {"final_step": 4}
    lines.clear()
    assert report.train_or_command("paper", "CFG", ROOT / "configs" / "paper_pretrain.yaml", ["a=1"],
                                   log=lines.append) is None
    assert len(calls) == 1  # not trained
    assert any("torchrun --nproc_per_node 8 -m corun.train --config configs/paper_pretrain.yaml a=1" in m
               for m in lines)
    assert "--resume" in lines[-1]


def fake_output(k: int, h: int = 6, w: int = 8):
    return SimpleNamespace(stages=[torch.full((1, 3, h, w), (s + 1) / (k + 1)) for s in range(k)],
                           transmissions=[torch.full((1, 1, h, w), 0.5) for _ in range(k)])


def test_unfolding_grid_layout_with_and_without_clean():
    x = torch.rand(1, 3, 6, 8)
    rows = [report.UnfoldingRow(x, fake_output(3), "hazy a", clean=x),
            report.UnfoldingRow(x, fake_output(2), "hazy b", label="short run")]
    fig = report.unfolding_grid(rows, "title", title_size=9)
    assert len(fig.axes) == 4 * 5  # 2 inputs × 2 rows, input + 3 stages + clean
    t = titles(fig)
    assert t[:5] == ["hazy a", "J_1", "J_2", "J_3", "clean"]
    assert t[5:10] == ["", "T̂_1", "T̂_2", "T̂_3", ""]
    assert t[10:13] == ["hazy b", "J_1", "J_2"] and fig.axes[10].get_ylabel() == "short run"
    off = [not ax.axison for ax in fig.axes]
    assert off[5] and off[9] and not off[6]  # no transmission under the input or the clean image
    assert off[13] and off[14] and off[18] and off[19]  # the shorter run's missing stages
    assert fig._suptitle.get_text() == "title" and fig._suptitle.get_fontsize() == 9


# ---------------------------------------------------------------------------------------------- notebook 01

def test_dataset_targets_paper_needs_every_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing dataset folders .*URHI.*data/README.md"):
        report.dataset_targets("paper", clean_depth_dir=tmp_path, real_train_dir=tmp_path / "URHI",
                               real_test_dirs=[tmp_path])
    for d in ("urhi", "rtts"):
        (tmp_path / d).mkdir()
    root, targets, seconds = report.dataset_targets("paper", clean_depth_dir=tmp_path, real_train_dir=tmp_path / "urhi",
                                                    real_test_dirs=[tmp_path / "rtts"])
    assert root == tmp_path and seconds is None
    assert targets == [(tmp_path, "clean-depth"), (tmp_path / "urhi", "real"), (tmp_path / "rtts", "real")]
    with pytest.raises(ValueError, match="unknown profile"):
        report.dataset_targets("huge")


def test_dataset_targets_smoke_builds_the_mini_dataset_with_the_seed(tmp_path, monkeypatch):
    from corun import mini

    seen = {}

    def build(out, cfg, log=print):
        seen.update(out=out, seed=cfg.seed)
        return Path(out)

    monkeypatch.setattr(mini, "build_mini", build)
    root, targets, seconds = report.dataset_targets("smoke", tmp_path / "m", seed=3)
    assert seen == {"out": tmp_path / "m", "seed": 3} and root == tmp_path / "m" and seconds >= 0
    assert [k for _, k in targets] == ["clean-depth", "paired", "real"]
    assert targets[2][0] == tmp_path / "m" / "pseudo_real" / "hazy"


def test_check_datasets_reports_each_folder(tmp_path):
    data = make_tiny_dataset(tmp_path / "d", n=3)
    (data / "test" / "hazy" / "extra.png").write_bytes((data / "test" / "hazy" / "t0.png").read_bytes())
    lines = []
    checks = report.check_datasets([(data, "clean-depth"), (data / "test", "paired")], log=lines.append)
    assert [c["usable"] for c in checks] == [3, 2] and checks[1]["unmatched"] == ["extra.png"]
    assert lines[0] == f"{data} [clean-depth]: 3 usable of 3, 0 skipped, 0 unmatched"
    assert lines[1].startswith(f"{data / 'test'} [paired]: 2 usable of 3, 1 skipped, 1 unmatched")
    assert lines[2].startswith("   skipped") and "extra.png" in lines[2]


def test_synthesis_draws_match_the_configured_frequencies():
    cfg, draws, freq = report.synthesis_draws(4000, seed=1)
    want = report.configured_frequencies(cfg)
    assert set(freq) == set(want) == {"gamma", "noise", "jpeg", "color_shift"}
    for k in freq:
        assert freq[k] == pytest.approx(want[k], abs=0.03), k
    assert report.synthesis_draws(4000, seed=1)[2] == freq  # reproducible by seed
    assert float(draws.beta.min()) >= cfg.beta_range[0] and float(draws.beta.max()) <= cfg.beta_range[1]
    fig = report.synthesis_hist_figure(cfg, draws)
    assert titles(fig) == [f"β ~ U{list(cfg.beta_range)}",
                           f"A ~ U{list(cfg.A_range)} + U{list(cfg.color_range)} per channel"]


def test_synthesis_grid_figure_spreads_over_the_set(tmp_path):
    data = make_tiny_dataset(tmp_path / "d", n=5)
    fig = report.synthesis_grid_figure(data, seed=0, n=3, crop=32)
    t = titles(fig)
    assert len(fig.axes) == 12 and [t[0], t[4], t[8]] == ["s0.png", "s2.png", "s4.png"]
    assert t[1] == "inverse depth (1 = near)" and t[2].startswith("hazy β=") and t[3] == "transmission t"


def test_data_manifest_paths_relative_and_labelled(tmp_path):
    cfg, _, freq = report.synthesis_draws(10)
    checks = [{"path": str(tmp_path / "data" / "x"), "kind": "real", "usable": 1}]
    m = report.data_manifest("smoke", checks, 1.5, cfg, freq, 10, 0, root=tmp_path)
    assert m["datasets"] == [{"path": "data/x", "kind": "real", "usable": 1}]
    assert m["synthesis"] == cfg.to_dict() and m["observed_frequencies"] == freq and m["mini_build_seconds"] == 1.5
    assert "pseudo-real" in m["note"] and m["torch"] == torch.__version__
    assert report.data_manifest("paper", [], None, cfg, freq, 10, 0)["note"] == "paper profile"


# ---------------------------------------------------------------------------------------------- notebook 02

def test_pretrain_curves_and_validation_line():
    log = pd.DataFrame({"step": [1, 2], "loss": [1.0, 0.5], "l_pix": [0.8, 0.4], "l_asm": [np.nan, np.nan],
                        "lr": [1e-3, 9e-4]})
    val = pd.DataFrame({"step": [2], "psnr": [20.0], "ssim": [0.9], "psnr_hazy": [15.5], "ssim_hazy": [0.8]})
    fig = report.pretrain_curves_figure(log, val)
    assert [ln.get_label() for ln in fig.axes[0].lines] == ["loss", "l_pix"]  # all-NaN and absent terms left out
    assert fig.axes[0].get_yscale() == "log" and titles(fig)[2] == "synthetic test PSNR (dB)"
    assert report.validation_line(val) == ("last validation (step 2): EMA 20.00 dB / SSIM 0.900; "
                                           "hazy input 15.50 dB / 0.800 (gain +4.50 dB)")
    assert report.validation_line(val.iloc[:0]) is None
    assert len(report.pretrain_curves_figure(log, val.iloc[:0]).axes[2].lines) == 0


@pytest.mark.slow
def test_pretrain_unfolding_figure(tmp_path):
    from corun.checkpoint import save_checkpoint
    from corun.model import CORUN

    assert report.pretrain_unfolding_figure(None, tmp_path) == (None, [
        "no checkpoint or no synthetic test split: nothing to show"])
    data = make_tiny_dataset(tmp_path / "d", n=1, n_test=2)
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "run" / "checkpoints" / "step_0000002.pth", CORUN(depth=2, dim=8))
    fig, notes = report.pretrain_unfolding_figure(tmp_path / "run" / "checkpoints" / "step_0000002.pth",
                                                  data / "test", n_show=5)
    assert notes == [] and len(fig.axes) == 2 * 2 * 4  # 2 test pairs (of 5 asked), hazy + J_1, J_2 + clean
    t = titles(fig)
    assert t[:4] == ["hazy t0.png", "J_1", "J_2", "clean"] and t[8] == "hazy t1.png"
    assert fig._suptitle.get_text() == "stage by stage (step_0000002.pth, EMA weights)"


# ---------------------------------------------------------------------------------------------- notebook 03

def test_colabator_overrides_order_and_paths(tmp_path):
    out = report.colabator_overrides("results/smoke", ["train.total_steps=9", "colabator.pool_dir=p"],
                                     pretrain_checkpoint="runs/pre", real_dir=tmp_path, steps=4)
    assert out == ["colabator.pool_dir=results/smoke/label_pool", "train.total_steps=9", "colabator.pool_dir=p",
                   f"colabator.init={ROOT / 'runs' / 'pre'}", f"colabator.real_dir={tmp_path}",
                   "train.total_steps=4"]  # later wins: explicit parameters over `overrides` over the default pool
    assert report.colabator_overrides(tmp_path / "r") == [f"colabator.pool_dir={tmp_path / 'r' / 'label_pool'}"]
    cfg = load_config(TrainConfig, ROOT / "configs" / "smoke_colabator.yaml", out)
    assert cfg.train.total_steps == 4 and cfg.colabator.pool_dir == "p"


def test_pool_folder():
    cfg = load_config(TrainConfig, ROOT / "configs" / "smoke_colabator.yaml",
                      ["train.out_dir=runs/x", "colabator.pool_dir=null"])
    assert report.pool_folder(cfg) == ROOT / "runs" / "x" / "label_pool"
    cfg = load_config(TrainConfig, ROOT / "configs" / "smoke_colabator.yaml", ["colabator.pool_dir=/abs/pool"])
    assert report.pool_folder(cfg) == Path("/abs/pool")


def test_starting_checkpoint_found_missing_smoke_and_paper(tmp_path):
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    ckpt = tmp_path / "run" / "checkpoints" / "step_0000002.pth"
    ckpt.write_bytes(b"")
    smoke = ROOT / "configs" / "smoke_colabator.yaml"
    lines = []
    cfg = load_config(TrainConfig, smoke, [f"colabator.init={tmp_path / 'run'}"])
    assert report.starting_checkpoint(cfg, "smoke", log=lines.append) == ckpt
    assert lines == [f"starting point: {ckpt}"]
    cfg = load_config(TrainConfig, smoke, [f"colabator.init={tmp_path / 'none'}"])
    with pytest.raises(FileNotFoundError, match=r"Run the pretraining first: notebook 02_pretrain_corun.ipynb"):
        report.starting_checkpoint(cfg, "smoke", log=lines.append)
    lines.clear()
    assert report.starting_checkpoint(cfg, "paper", log=lines.append) is None
    assert lines[0].startswith("note: ") and "pretrain_checkpoint=..." in lines[0]
    cfg = load_config(TrainConfig, smoke, ["colabator.init=null"])
    with pytest.raises(FileNotFoundError, match="colabator.init is not set"):
        report.starting_checkpoint(cfg, "smoke")


def test_colabator_curves_and_log_line():
    log = pd.DataFrame({"step": [1, 2, 3], "loss": [1.0, 0.8, 0.6], "l_syn_pix": [0.5, 0.4, 0.3],
                        "l_real_pix": [0.2, 0.2, 0.1], "accept_rate": [1.0, 0.5, 0.0], "pool_size": [2, 3, 3],
                        "q_mean": [0.4, 0.5, 0.6], "h_mean": [0.3, 0.35, 0.5]})
    fig = report.colabator_curves_figure(log, "run x")
    assert [ln.get_label() for ln in fig.axes[0].lines] == ["loss", "l_syn_pix", "l_real_pix"]
    assert fig._suptitle.get_text() == "run x" and len(fig.axes) == 4  # with the pool-size twin axis
    assert report.colabator_log_line(log) == ("step 3: loss 0.6000, pool 3 images, candidate q 0.600 / h 0.500 "
                                              "(first logged: 0.400 / 0.300)")


def test_finetune_record(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    for s in (2, 4):
        (run / "checkpoints" / f"step_{s:07d}.pth").write_bytes(b"")
    hist = pd.DataFrame({"accepted": [True, False, True, True]})
    means = pd.DataFrame({"q": [0.5, 0.7]}, index=pd.Index(["hazy", "Colabator EMA"], name="image"))
    rec = report.finetune_record("smoke", ROOT / "configs" / "smoke_colabator.yaml", ["a=1"], run, run / "pool",
                                 None, {"final_step": 4}, pool=[1, 2, 3], history=hist, means=means)
    assert rec["config"] == "configs/smoke_colabator.yaml" and rec["overrides"] == ["a=1"]
    assert rec["checkpoint"] == str(run / "checkpoints" / "step_0000004.pth") and rec["init_checkpoint"] is None
    assert (rec["pool_size"], rec["decisions"], rec["accept_rate"]) == (3, 4, 0.75)
    assert rec["real_photos"] == {"q": {"hazy": 0.5, "Colabator EMA": 0.7}}
    bare = report.finetune_record("paper", "c.yaml", [], tmp_path / "none", tmp_path / "p", None, None)
    assert bare["checkpoint"] is None and "pool_size" not in bare and "real_photos" not in bare
