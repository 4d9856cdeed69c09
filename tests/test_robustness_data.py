"""Issue 17, data: depth maps are checked against their image's shape (transposed and wrong-aspect maps refused,
channel-first arrays fixed with a note), paired folders refuse hazy/clean size mismatches, and ``data check``
names depth files no image uses."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from images import save_rgb

from corun import data
from corun.cli import main

H, W = 24, 32


def depth_ramp(h: int = H, w: int = W) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return (0.2 + 0.5 * yy / h + 0.3 * xx / w).astype(np.float32)


@pytest.fixture
def clean_depth(tmp_path):
    root = tmp_path / "ds"
    (root / "clean").mkdir(parents=True)
    (root / "depth").mkdir()
    rng = np.random.default_rng(0)
    for name in ("good", "transposed", "aspect", "chfirst", "halfres"):
        save_rgb(root / "clean" / f"{name}.png", rng.uniform(0.1, 0.9, (H, W, 3)))
    np.save(root / "depth" / "good.npy", depth_ramp())
    np.save(root / "depth" / "transposed.npy", depth_ramp().T.copy())  # W×H
    np.save(root / "depth" / "aspect.npy", depth_ramp(H, 9))  # as 288×100 for a 288×384 photo
    np.save(root / "depth" / "chfirst.npy", np.stack([depth_ramp()] * 3))  # (3, H, W), as a tensor is saved
    np.save(root / "depth" / "halfres.npy", depth_ramp(H // 2, W // 2))  # same aspect, lower resolution
    np.save(root / "depth" / "orphan.npy", depth_ramp())  # its photo was deleted
    return root


def test_depth_maps_are_checked_against_their_image(clean_depth):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = data.CleanDepthDataset(clean_depth, crop=None, flip=False)
    used = sorted(img.stem for img, _ in ds.samples)
    assert used == ["chfirst", "good", "halfres"]  # before the fix: all five, stretched into garbage
    reasons = {str(p).rsplit("/", 1)[-1]: r for p, r in ds.report.skipped}
    assert "transposed or rotated" in reasons["transposed.npy"] and f"{H}x{W}" in reasons["transposed.npy"]
    assert "another aspect ratio" in reasons["aspect.npy"]
    notes = " | ".join(f"{p}: {n}" for p, n in ds.report.notes)
    assert "chfirst.npy: channel-first (C, H, W) array: its first channel used" in notes
    assert f"halfres.npy: depth {W // 2}x{H // 2} resized to its image's {W}x{H}" in notes
    assert ds.report.orphans == ["orphan.npy"]
    # the channel-first map is read as the map it is, not as a 3×H slice of it
    item = ds[used.index("chfirst")]
    ramp = torch.from_numpy(depth_ramp())
    want = (ramp - ramp.min()) / (ramp.max() - ramp.min())
    torch.testing.assert_close(item["inv_depth"][0], want)


def test_a_wrong_shape_is_refused_at_load_time_too(clean_depth):
    """Without validation at start-up (validate=False) a sample never stretches another shape into place."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = data.CleanDepthDataset(clean_depth, crop=None, flip=False, validate=False)
        names = [img.stem for img, _ in ds.samples]
        item = ds[names.index("transposed")]  # skipped: the next usable sample comes instead
    assert item["name"] != "transposed.png"
    assert any("transposed or rotated" in r for _, r in ds.report.skipped)


def test_data_check_reports_shapes_notes_and_orphans(clean_depth, capsys):
    assert main(["data", "check", str(clean_depth), "--kind", "clean-depth"]) == 0
    out = capsys.readouterr().out
    assert "3 usable of 5" in out  # before: "5 usable of 5"
    assert "skipped" in out and "transposed or rotated" in out and "another aspect ratio" in out
    assert "note " in out and "channel-first" in out
    assert "1 depth file(s) without an image: orphan.npy" in out


def test_paired_folders_refuse_hazy_clean_size_mismatches(tmp_path, capsys):
    root = tmp_path / "pairs"
    (root / "hazy").mkdir(parents=True)
    (root / "clean").mkdir()
    rng = np.random.default_rng(1)
    for name, (hh, ww) in {"a": (H, W), "b": (H, W - 2)}.items():
        save_rgb(root / "hazy" / f"{name}.png", rng.uniform(0.3, 0.9, (H, W, 3)))
        save_rgb(root / "clean" / f"{name}.png", rng.uniform(0.1, 0.9, (hh, ww, 3)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = data.PairedDataset(root)
    assert [h.name for h, _ in ds.pairs] == ["a.png"]
    assert any(f"size {W}x{H} differs from its clean image b.png {W - 2}x{H}" in r for _, r in ds.report.skipped)
    assert main(["data", "check", str(root), "--kind", "paired"]) == 0
    assert "1 usable of 2" in capsys.readouterr().out  # before: "2 usable of 2", then a failure mid-training
