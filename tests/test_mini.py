"""The embedded mini dataset (corun.mini) and `corun data mini|check`."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
from PIL import Image

from corun import data, mini
from corun.cli import main as data_main

pytestmark = pytest.mark.slow  # builds the mini dataset (seconds): `make test-fast` skips this file


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("mini") / "mini"
    t0 = time.time()
    assert data_main(["data", "mini", str(out)]) == 0
    return out, time.time() - t0


def test_mini_builds_fast_with_enough_scenes(built):
    out, seconds = built
    assert seconds < 60
    man = json.loads((out / "manifest.json").read_text())
    assert man["counts"]["train"] >= 40 and man["counts"]["test"] >= 10 and man["counts"]["pseudo_real"] >= 10
    assert {s["depth"] for s in man["scenes"]} == {"exact", "true", "prior"}
    assert all(min(s["size"]) >= 256 for s in man["scenes"])
    depths = sorted((out / "depth").glob("*.npy"))
    assert len(depths) == man["counts"]["train"] == len(list((out / "clean").glob("*.png")))
    for p in depths[::7]:
        d = np.load(p)
        assert d.dtype == np.float32 and d.min() >= 0 and d.max() <= 1 and d.max() > d.min()
    assert Image.open(out / "test" / "hazy" / "test_motorcycle.png").size == (384, 288)


def test_mini_is_accepted_by_check_and_the_datasets(built, capsys):
    out, _ = built
    assert data_main(["data", "check", str(out)]) == 0
    text = capsys.readouterr().out
    assert "[clean-depth]" in text and "[paired]" in text and "[real]" in text
    assert len(data.CleanDepthDataset(out, crop=256)) >= 40
    assert len(data.PairedDataset(out / "test")) >= 10
    assert len(data.RealHazyDataset(out / "pseudo_real" / "hazy")) >= 10


def test_rebuild_is_a_no_op_and_foreign_folders_are_never_overwritten(built, tmp_path):
    out, _ = built
    stamp = (out / "manifest.json").stat().st_mtime_ns
    assert data_main(["data", "mini", str(out)]) == 0
    assert (out / "manifest.json").stat().st_mtime_ns == stamp
    (tmp_path / "mine.txt").write_text("keep me")
    assert data_main(["data", "mini", str(tmp_path)]) == 2
    assert (tmp_path / "mine.txt").read_text() == "keep me" and len(list(tmp_path.iterdir())) == 1


def test_rendered_scenes_are_deterministic_with_exact_depth():
    cfg = mini.MiniConfig(width=128, height=96)
    tex = {"grass": mini._gray_texture("grass.png"), "gravel": mini._gray_texture("gravel.png")}
    a_rgb, a_d, src = mini.rendered_scene(0, cfg, tex, {})
    b_rgb, b_d, _ = mini.rendered_scene(0, cfg, tex, {})
    assert np.array_equal(a_rgb, b_rgb) and np.array_equal(a_d, b_d) and src.startswith("rendered")
    sky = a_d == 0
    assert sky[0].all() and not sky[-1].any()            # sky on top, terrain at the bottom
    # nearer rows are nearer: the terrain's inverse depth grows toward the bottom of the frame
    assert a_d[-1].mean() > a_d[~sky].mean()


def test_more_training_scenes_keep_the_test_and_pseudo_real_splits(built, tmp_path):
    out, _ = built
    big = tmp_path / "big"
    assert data_main(["data", "mini", str(big), "--train-scenes", "42"]) == 0
    man = json.loads((big / "manifest.json").read_text())
    base = json.loads((out / "manifest.json").read_text())
    assert man["counts"]["train"] == base["counts"]["train"] + 2
    for split in ("test/hazy", "test/clean", "pseudo_real/hazy"):  # same files, byte for byte
        for p in sorted((out / split).glob("*.png")):
            assert (big / split / p.name).read_bytes() == p.read_bytes(), p.name
    with pytest.raises(ValueError, match="500"):
        mini.build_mini(tmp_path / "x", mini.MiniConfig(n_train_rendered=501))
