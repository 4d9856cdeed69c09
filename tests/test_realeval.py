"""Real-haze comparisons (corun.realeval): methods dehaze a named subset, S sits beside FADE."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from corun.realeval import compare_on_real_haze, link_subset, side_by_side_figure, summary_table


def _photos(folder, n=3, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        base = rng.random((1, 1, 3)) * 0.3 + 0.2
        y = np.linspace(0, 1, 48)[:, None, None]
        img = 0.65 * (base + 0.3 * y * rng.random((48, 64, 3))) + 0.35 * 0.85      # a hazy-looking scene
        Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(folder / f"p{i}.jpg", quality=95)


def test_compare_on_a_named_subset_with_hazy_and_dcp(tmp_path):
    _photos(tmp_path / "real")
    df = compare_on_real_haze(tmp_path / "real", tmp_path / "out", {"hazy": "hazy", "DCP": "dcp"},
                              names=["p0", "p2.jpg"], metrics=("fade", "structure"))
    assert sorted(df["image"][df["method"] == "DCP"]) == ["p0.png", "p2.png"]
    s = summary_table(df, ("fade", "structure")).set_index("method")
    assert s.loc["hazy", "structure"] == pytest.approx(1.0) and s.loc["hazy", "n"] == 2
    assert s.loc["DCP", "fade"] < s.loc["hazy", "fade"]                   # DCP removes haze by FADE
    assert 0.9 < s.loc["DCP", "structure_min"] <= 1.0                     # and invents little structure
    fig = side_by_side_figure(tmp_path / "out", ["hazy", "DCP"], ["p0", "p2"])
    assert len(fig.axes) == 4
    # resumable: a second call keeps the outputs and reads the cache
    mtime = (tmp_path / "out" / "DCP" / "p0.png").stat().st_mtime_ns
    compare_on_real_haze(tmp_path / "real", tmp_path / "out", {"DCP": "dcp"}, names=["p0"], metrics=("fade",))
    assert (tmp_path / "out" / "DCP" / "p0.png").stat().st_mtime_ns == mtime


def test_a_listed_photo_without_a_file_is_named(tmp_path):
    _photos(tmp_path / "real", n=1)
    with pytest.raises(FileNotFoundError, match="nope"):
        link_subset(tmp_path / "real", ["p0", "nope"], tmp_path / "links")


def test_a_checkpoint_method(tmp_path):
    from corun.checkpoint import save_checkpoint
    from corun.model import CORUN

    _photos(tmp_path / "real", n=1)
    m = CORUN(depth=2, dim=4)
    save_checkpoint(tmp_path / "ck.pth", m, m)
    df = compare_on_real_haze(tmp_path / "real", tmp_path / "out", {"tiny": tmp_path / "ck.pth"},
                              metrics=("structure",))
    out = np.asarray(Image.open(tmp_path / "out" / "tiny" / "p0.png"))
    assert out.shape == (48, 64, 3) and np.isfinite(df["structure"]).all()


def test_before_after_scores_every_model_with_references_and_scorers(tmp_path):
    """Notebook 03's before / after: each checkpoint on the first photos, scored (dark channel here: no
    download) and with PSNR where ../clean/ holds a same-size reference."""
    import torch

    from corun.checkpoint import save_checkpoint
    from corun.data import read_rgb
    from corun.model import CORUN
    from corun.realeval import before_after, before_after_figure, mean_scores, score_keys
    from corun.train import psnr

    _photos(tmp_path / "set" / "hazy", n=3)
    _photos(tmp_path / "set" / "clean", n=2, seed=1)  # references for p0 and p1 only
    for name, seed in (("a", 0), ("b", 1)):
        torch.manual_seed(seed)
        save_checkpoint(tmp_path / f"{name}.pth", CORUN(depth=2, dim=4))
    scores, shown = before_after({"teacher": tmp_path / "a.pth", "EMA": tmp_path / "b.pth"}, tmp_path / "set" / "hazy",
                                 {"h": "dark_channel"}, n_eval=3, n_show=1, device="cpu")
    assert scores["photo"].tolist() == ["p0.jpg"] * 3 + ["p1.jpg"] * 3 + ["p2.jpg"] * 3
    assert scores["image"].tolist()[:3] == ["hazy", "teacher", "EMA"] and score_keys(scores) == ["h"]
    assert scores["h"].between(0, 1).all() and scores["psnr"].iloc[:6].notna().all() and scores["psnr"].iloc[6:].isna().all()
    assert [n for n, _ in shown] == ["p0.jpg"] and list(shown[0][1]) == ["hazy", "teacher", "EMA"]
    hazy, ref = read_rgb(tmp_path / "set" / "hazy" / "p0.jpg")[None], read_rgb(tmp_path / "set" / "clean" / "p0.jpg")[None]
    assert scores["psnr"].iloc[0] == pytest.approx(psnr(hazy, ref))
    means = mean_scores(scores)
    assert list(means.index) == ["hazy", "teacher", "EMA"] and means.loc["hazy", "psnr"] == pytest.approx(
        scores[scores["image"] == "hazy"]["psnr"].mean())
    fig = before_after_figure(scores, shown, "before / after")
    assert len(fig.axes) == 3 and fig.axes[0].get_title().startswith("hazy\np0.jpg h ")
    assert "PSNR" in fig.axes[1].get_title() and before_after_figure(scores, []) is None


def test_before_after_without_scorers_and_with_a_size_limit(tmp_path):
    import torch

    from corun.checkpoint import save_checkpoint
    from corun.model import CORUN
    from corun.realeval import before_after

    _photos(tmp_path / "hazy", n=2)
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "a.pth", CORUN(depth=2, dim=4))
    lines = []
    scores, shown = before_after({"m": tmp_path / "a.pth"}, tmp_path / "hazy", {"q": "no-such-scorer"}, n_eval=1,
                                 n_show=2, device="cpu", max_side=32, log=lines.append)
    assert lines and lines[0].startswith("no scores: ValueError: unknown scorer")
    assert list(scores.columns) == ["photo", "image"] and len(scores) == 2  # no references: no PSNR either
    assert tuple(shown[0][1]["m"].shape[-2:]) == (24, 32)  # 48×64 scaled to a longer side of 32


def test_a_method_folder_remembers_its_weights_and_margin(tmp_path):
    """Outputs are resumed only when the same weights and margin made them: another margin into the same
    folder recomputes them (never a mix of two methods' outputs), exactly as a new folder would."""
    from corun.checkpoint import save_checkpoint
    from corun.model import CORUN

    _photos(tmp_path / "real", n=1)
    m = CORUN(depth=2, dim=4)
    save_checkpoint(tmp_path / "ck.pth", m, m)
    kw = dict(methods={"tiny": tmp_path / "ck.pth"}, metrics=("structure",))
    a = compare_on_real_haze(tmp_path / "real", tmp_path / "out", **kw)
    again = compare_on_real_haze(tmp_path / "real", tmp_path / "out", **kw)  # resumes: same outputs
    assert a["structure"].tolist() == again["structure"].tolist()
    b = compare_on_real_haze(tmp_path / "real", tmp_path / "out16", margin=16, **kw)
    assert b["structure"].tolist() != a["structure"].tolist()
    redone = compare_on_real_haze(tmp_path / "real", tmp_path / "out", margin=16, **kw)
    assert redone["structure"].tolist() == b["structure"].tolist()
