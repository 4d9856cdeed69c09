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
