"""The shipped default weights (weights/corun_default.safetensors, model card in weights/README.md)."""
from __future__ import annotations

import pytest
import torch

import corun
from corun import weights as w
from corun.cli import main
from corun.metrics import evaluate_folder


def test_shipped_default_weights_load_as_documented():
    assert w.REPO_WEIGHTS.is_file(), "weights/corun_default.safetensors is part of the repository"
    model = corun.load_model(w.REPO_WEIGHTS)
    assert (model.depth, model.config.dim) == (3, 12)
    assert w.REPO_WEIGHTS.stat().st_size < 40 * 2**20
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_default_weights_dehaze_the_real_photos(shared_dir, tmp_path, monkeypatch, capsys):
    """The model card's claim: FADE at most half the hazy photos', BRISQUE not worse (no --weights given)."""
    monkeypatch.delenv("CORUN_WEIGHTS", raising=False)
    src = shared_dir / "data" / "real_hazy"
    assert main(["dehaze", str(src), "-o", str(tmp_path / "out"), "-q"]) == 0
    assert "corun_default.safetensors" in capsys.readouterr().err
    brisque = shared_dir / "weights" / "pyiqa" / "brisque_svm_weights.pth"
    metrics = ["fade", "brisque"] if brisque.is_file() else ["fade"]
    kw = dict(metrics=metrics, weights={"brisque": brisque}, progress=False, device="cpu")
    hazy, ours = evaluate_folder(src, **kw), evaluate_folder(tmp_path / "out", **kw)
    assert list(hazy["image"]) == list(ours["image"]) and len(ours) == 5
    assert ours["fade"].mean() <= 0.5 * hazy["fade"].mean()
    if "brisque" in metrics:
        assert ours["brisque"].mean() <= hazy["brisque"].mean()
    else:
        pytest.skip("BRISQUE weights not in the test material: only FADE checked")
