"""Issue 17, ``corun evaluate``: tiny images get a clear message instead of raw IndexErrors, the output folder
is checked before any scoring, a failed write is one line, and large photos are scored downscaled (with a
note and a cache key of their own). FADE / BRISQUE / PIQE need no download."""
from __future__ import annotations

import errno
import os

import numpy as np
import pandas as pd
import pytest
from images import save_rgb
from PIL import Image

from corun import metrics
from corun.cli import main


def noisy(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([0.5 + 0.3 * np.sin(xx / 5 + c) * np.cos(yy / 7) for c in range(3)], -1)
    return np.clip(base + rng.normal(0, 0.05, base.shape), 0, 1)


def test_tiny_images_get_a_clear_message(tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    save_rgb(src / "one.png", noisy(1, 1))
    save_rgb(src / "small.png", noisy(5, 7))
    save_rgb(src / "ok.png", noisy(40, 48))
    assert main(["evaluate", str(src), "-o", str(tmp_path / "ev"), "--metrics", "fade,brisque,piqe", "-q"]) == 1
    err = capsys.readouterr().err
    assert "IndexError" not in err and "RuntimeError" not in err and "Traceback" not in err
    assert "small.png: fade: image is 7x5 px, too small (needs at least 8x8)" in err
    assert "brisque: image is 7x5 px, too small (needs at least 9x9)" in err
    assert "one.png: fade: image is 1x1 px, too small" in err
    table = pd.read_csv(tmp_path / "ev" / "per_image.csv").set_index("image")
    assert np.isfinite(table.loc["ok.png", ["fade", "brisque", "piqe"]].astype(float)).all()


def test_the_output_folder_is_checked_before_any_scoring(tmp_path, monkeypatch, capsys):
    src = tmp_path / "in"
    src.mkdir()
    save_rgb(src / "a.png", noisy(40, 48))
    (tmp_path / "file.txt").write_text("keep")

    def must_not_run(*args, **kwargs):
        raise AssertionError("scored before the output folder was checked")

    monkeypatch.setattr(metrics, "evaluate_folder", must_not_run)
    for out, message in ((tmp_path / "file.txt", "exists and is not a folder"),
                         (tmp_path / "file.txt" / "sub", "cannot write there")):
        assert main(["evaluate", str(src), "-o", str(out), "--metrics", "fade", "-q"]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
    assert (tmp_path / "file.txt").read_text() == "keep"


def test_a_failed_table_write_is_one_line(tmp_path, monkeypatch, capsys):
    import corun.utils

    src = tmp_path / "in"
    src.mkdir()
    save_rgb(src / "a.png", noisy(40, 48))

    def disk_full(path, write):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(corun.utils, "atomic_write", disk_full)  # the tables
    monkeypatch.setattr(metrics, "atomic_write", disk_full)  # and the score cache
    assert main(["evaluate", str(src), "-o", str(tmp_path / "ev"), "--metrics", "fade", "-q"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "warning: cannot write the metric cache" in err
    assert f"error: cannot write {tmp_path / 'ev' / 'per_image.csv'}: No space left on device" in err


def test_large_photos_are_scored_downscaled_with_a_note(tmp_path, monkeypatch):
    src = tmp_path / "in"
    src.mkdir()
    save_rgb(src / "big.png", noisy(96, 128))
    save_rgb(src / "small.png", noisy(24, 32, seed=1))
    full = metrics.evaluate_folder(src, metrics=["fade", "brisque"], cache_dir=tmp_path / "cache", progress=False)
    monkeypatch.setattr(metrics, "METRIC_MAX_PIXELS", 3000)  # 128×96 = 12288 px: scored at 63×47
    assert metrics.metric_size(128, 96) == (63, 47) and metrics.metric_size(32, 24) is None
    capped = metrics.evaluate_folder(src, metrics=["fade", "brisque"], cache_dir=tmp_path / "cache", progress=False)
    full, capped = full.set_index("image"), capped.set_index("image")
    # the small image is untouched (and comes from the cache); the big one is the score of its downscale,
    # not the cached full-size score
    assert capped.loc["small.png", "fade"] == full.loc["small.png", "fade"]
    import pyfade

    pixels = np.asarray(Image.open(src / "big.png").convert("RGB"))
    small = np.asarray(Image.fromarray(pixels).resize((63, 47), Image.BOX))
    assert capped.loc["big.png", "fade"] == pytest.approx(float(pyfade.fade_array(small)), rel=1e-12)
    assert capped.loc["big.png", "fade"] != full.loc["big.png", "fade"]
    assert np.isfinite(capped.loc["big.png", "brisque"])
    summary = metrics.summarize(metrics.evaluate_folder(src, metrics=["fade"], progress=False))
    assert "1 image(s) above 0.003 MP scored downscaled" in summary.loc[0, "notes"]
    assert "big.png: 128x96 scored at 63x47" in summary.loc[0, "notes"]


def test_fit_for_metric_keeps_dtype_and_aspect():
    for dtype, top in ((np.uint8, 255), (np.uint16, 65535), (np.float32, 1.0)):
        arr = (np.random.default_rng(0).uniform(0, 1, (300, 400, 3)) * top).astype(dtype)
        out = metrics.fit_for_metric(arr, max_pixels=30000)
        assert out.dtype == dtype and out.shape == (150, 200, 3)
        assert abs(float(out.mean()) - float(arr.mean())) < 0.01 * top
        assert metrics.fit_for_metric(arr, max_pixels=120000) is arr
