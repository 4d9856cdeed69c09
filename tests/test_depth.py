"""Depth for clean photos without depth: ramp, offline prior, transformers path, `corun data depth`."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from corun import data, depth
from corun.cli import main as cli_main


def _sky_over_ground(h=96, w=128, seed=0) -> np.ndarray:
    """Smooth pale-blue sky over the top third, textured brown ground below."""
    rng = np.random.default_rng(seed)
    img = np.empty((h, w, 3), np.float32)
    img[: h // 3] = np.array([0.55, 0.7, 0.95], np.float32) + np.linspace(0, 0.05, h // 3)[:, None, None]
    ground = np.array([0.45, 0.35, 0.25], np.float32) + 0.15 * rng.standard_normal((h - h // 3, w, 1))
    img[h // 3:] = np.clip(ground, 0, 1)
    return img


def _save(path, img):
    Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(path)
    return path


def test_ramp_is_far_at_the_top_and_near_at_the_bottom():
    d = depth.estimate_inv_depth(np.zeros((5, 3, 3), np.float32), method="ramp")
    assert d.dtype == np.float32 and d.shape == (5, 3)
    assert d[0].tolist() == [0, 0, 0] and d[-1].tolist() == [1, 1, 1]
    assert np.all(np.diff(d[:, 1]) > 0)


@pytest.mark.parametrize("shape", [(96, 128), (61, 47), (480, 640)])
def test_prior_shape_range_dtype_and_determinism(shape):
    img = np.random.default_rng(1).random((*shape, 3), dtype=np.float32)
    d = depth.estimate_inv_depth(img)
    assert d.shape == shape and d.dtype == np.float32
    assert 0.0 <= d.min() and d.max() <= 1.0 and d.max() > d.min()
    assert np.array_equal(d, depth.estimate_inv_depth(img))


def test_sky_at_the_top_comes_out_farthest_and_ground_grows_nearer():
    img = _sky_over_ground()
    d = depth.estimate_inv_depth(img)
    h = img.shape[0]
    sky, ground = d[: h // 3 - 4], d[h // 3 + 4:]
    assert sky.max() < ground.min()                       # every sky pixel farther than all ground
    assert sky.mean() < 0.05
    rows = ground.mean(axis=1)
    assert np.all(np.diff(rows) > 0) and rows[-1] > 0.9   # flat ground: nearer towards the bottom


def test_no_sky_is_near_and_shallow_not_a_full_ramp():
    img = np.clip(0.4 + 0.2 * np.random.default_rng(2).standard_normal((80, 100, 3)), 0, 1).astype(np.float32)
    d = depth.estimate_inv_depth(img)
    assert d.min() >= 1 - depth.NO_SKY_RANGE - 0.05 and d.max() - d.min() < 0.35


def test_guided_filter_keeps_a_step_that_the_guide_has():
    guide = np.zeros((40, 40), np.float32)
    guide[:, 20:] = 1.0
    src = guide + 0.1 * np.random.default_rng(0).standard_normal(guide.shape).astype(np.float32)
    q = depth.guided_filter(guide, src, r=4, eps=1e-3)
    assert abs(q[:, 19].mean() - 0.0) < 0.05 and abs(q[:, 20].mean() - 1.0) < 0.05
    assert q[:, :18].std() < src[:, :18].std() / 3       # noise smoothed away from the edge


def test_unknown_method_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown depth method 'magic'"):
        depth.estimate_inv_depth(np.zeros((4, 4, 3), np.float32), method="magic")


def test_cli_writes_npy_readable_by_clean_depth_dataset(tmp_path, capsys):
    src, out = tmp_path / "clean", tmp_path / "depth"
    src.mkdir()
    _save(src / "a.png", _sky_over_ground())
    _save(src / "b.jpg", _sky_over_ground(70, 90, seed=3))
    assert cli_main(["data", "depth", str(src), str(out)]) == 0
    a = np.load(out / "a.npy")
    assert a.dtype == np.float32 and a.shape == (96, 128) and 0 <= a.min() and a.max() <= 1
    assert np.load(out / "b.npy").shape == (70, 90)
    assert not list(out.glob(".*tmp"))                    # no temporary file left behind
    ds = data.CleanDepthDataset(clean_dir=src, depth_dir=out, crop=None, flip=False)
    assert len(ds) == 2 and ds.report.skipped == []
    s = ds[0]
    assert s["inv_depth"].shape == (1, 96, 128)
    assert "2 written" in capsys.readouterr().out


def test_cli_skips_existing_unless_overwrite(tmp_path, capsys):
    src, out = tmp_path / "clean", tmp_path / "depth"
    src.mkdir(), out.mkdir()
    _save(src / "a.png", _sky_over_ground())
    np.save(out / "a.npy", np.full((96, 128), 0.5, np.float32))
    assert cli_main(["data", "depth", str(src), str(out), "--method", "ramp"]) == 0
    assert np.all(np.load(out / "a.npy") == 0.5)          # resumable: left alone
    assert "1 already there" in capsys.readouterr().out
    assert cli_main(["data", "depth", str(src), str(out), "--method", "ramp", "--overwrite"]) == 0
    assert np.array_equal(np.load(out / "a.npy"), depth.ramp_inv_depth(96, 128))


def test_cli_reports_a_broken_file_and_goes_on(tmp_path, capsys):
    src, out = tmp_path / "clean", tmp_path / "depth"
    src.mkdir()
    (src / "bad.jpg").write_bytes(b"not a jpeg")
    _save(src / "good.png", _sky_over_ground())
    assert cli_main(["data", "depth", str(src), str(out)]) == 1
    err = capsys.readouterr()
    assert "bad.jpg" in err.err and "1 written" in err.out and "1 failed" in err.out
    assert (out / "good.npy").is_file() and not (out / "bad.npy").exists()


def test_cli_bad_method_fails_before_any_work(tmp_path, capsys):
    src = tmp_path / "clean"
    src.mkdir()
    _save(src / "a.png", _sky_over_ground())
    assert cli_main(["data", "depth", str(src), str(tmp_path / "out"), "--method", "magic"]) == 2
    assert "unknown depth method" in capsys.readouterr().err and not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------ transformers path

def _tiny_depth_anything(folder):
    """A randomly initialised 2-layer Depth Anything (DINOv2 backbone) + image processor, saved offline."""
    import torch
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config, DPTImageProcessor

    backbone = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                            patch_size=14, image_size=56, out_features=["stage1", "stage2"],
                            reshape_hidden_states=False)
    cfg = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=32, neck_hidden_sizes=[16, 32],
                              reassemble_factors=[2, 1], fusion_hidden_size=16, head_hidden_size=8,
                              depth_estimation_type="relative")
    torch.manual_seed(0)
    model = DepthAnythingForDepthEstimation(cfg).eval()
    model.save_pretrained(folder)
    processor = DPTImageProcessor(size={"height": 56, "width": 56}, keep_aspect_ratio=False, do_pad=False)
    processor.save_pretrained(folder)
    return model, processor


@pytest.mark.slow
def test_hf_model_output_is_resized_and_min_max_normalised(tmp_path):
    pytest.importorskip("transformers", reason="transformers not installed (pip install 'corun[depth]')")
    import torch

    model, processor = _tiny_depth_anything(tmp_path / "tiny")
    img = _sky_over_ground(60, 80)
    d = depth.estimate_inv_depth(img, method=f"hf:{tmp_path / 'tiny'}")
    assert d.shape == (60, 80) and d.dtype == np.float32
    assert d.min() == 0.0 and d.max() == 1.0
    # the same model run by hand at its own 56² resolution, resized: the order of pixels must agree
    u8 = Image.fromarray((img * 255 + 0.5).astype(np.uint8))
    with torch.no_grad():
        pred = model(**processor(images=u8, return_tensors="pt")).predicted_depth[0].numpy()
    small = np.asarray(Image.fromarray(d).resize(pred.shape[::-1], Image.BILINEAR))
    assert depth.rank_correlation(small, pred) > 0.95


def test_cli_with_a_missing_hf_model_fails_early_naming_it(tmp_path, capsys):
    pytest.importorskip("transformers", reason="transformers not installed (pip install 'corun[depth]')")
    src = tmp_path / "clean"
    src.mkdir()
    _save(src / "a.png", _sky_over_ground())
    missing = tmp_path / "no_model_here"
    missing.mkdir()
    assert cli_main(["data", "depth", str(src), str(tmp_path / "out"), "--method", f"hf:{missing}"]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "hf download" in err and not (tmp_path / "out").exists()


def test_hf_without_transformers_says_how_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "transformers", None)   # import transformers -> ImportError
    with pytest.raises(depth.DepthError, match=r"Depth-Anything-V2-Small-hf.*needs transformers.*corun\[depth\]"):
        depth.make_estimator(f"hf:{depth.DEFAULT_HF_MODEL}")


# --------------------------------------------------------------------------- against true disparity

def test_prior_orders_middlebury_depth_better_than_the_ramp(shared_dir):
    """The claim of data/README.md: mean Spearman ρ over the 4 Middlebury scenes, prior > ramp."""
    folder = shared_dir / "data" / "clean_disparity"
    rho = {"prior": [], "ramp": []}
    for name in ("books", "cones", "dolls", "moebius"):
        img = np.asarray(Image.open(folder / f"{name}.png").convert("RGB"), np.float32) / 255.0
        disp = np.asarray(Image.open(folder / f"{name}_disp.png"), np.float32)
        for m in rho:
            rho[m].append(depth.rank_correlation(depth.estimate_inv_depth(img, m), disp, disp > 0))
    assert np.mean(rho["prior"]) > np.mean(rho["ramp"]) > 0.8, rho
