"""Structure preservation S (corun.metrics.structure_score, issue 16.3): constructed cases."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from corun.metrics import evaluate_folder, structure_map, structure_score


def _scene(h=96, w=128, seed=0):
    """A smooth hazy-looking image with a few edges (no fine texture)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    img = 0.5 + 0.2 * np.sin(6 * x)[..., None] * np.array([1.0, 0.8, 0.6])
    img[h // 3: 2 * h // 3, w // 4: w // 2] += 0.15          # a box with sharp edges
    img += 0.01 * rng.standard_normal(img.shape)
    return np.clip(img, 0, 1)


def test_a_contrast_stretch_keeps_s_at_one():
    hazy = _scene()
    A, t = 0.8, 0.4
    dehazed = np.clip((hazy - A * (1 - t)) / t, 0, 1)       # the scattering model inverted with constant t, A
    stretched = np.clip(1.7 * hazy - 0.3, 0, 1)
    assert structure_score(hazy, hazy) == pytest.approx(1.0, abs=1e-9)
    assert structure_score(stretched, hazy) > 0.995
    assert structure_score(dehazed, hazy) > 0.99


def test_pasted_texture_lowers_s():
    hazy = _scene()
    rng = np.random.default_rng(1)
    texture = rng.random(hazy.shape[:2])[..., None] * 0.3
    clouds = hazy.copy()
    clouds[: hazy.shape[0] // 2] = np.clip(clouds[: hazy.shape[0] // 2] + texture[: hazy.shape[0] // 2] - 0.15, 0, 1)
    s_half = structure_score(clouds, hazy)
    s_all = structure_score(np.clip(hazy + texture - 0.15, 0, 1), hazy)
    assert s_all < s_half < 0.97
    m = structure_map(clouds, hazy)
    assert m[-10:].mean() > 0.99 > m[:10].mean()             # the untouched half keeps s ≈ 1


def test_an_inverted_image_scores_negative_and_a_resized_output_is_compared_at_the_input_size():
    hazy = _scene()
    assert structure_score(1 - hazy, hazy) < 0.7               # flat areas stay near 1 (C3), edges flip sign
    assert structure_map(1 - hazy, hazy).min() < -0.8
    small = np.asarray(Image.fromarray((hazy * 255).astype(np.uint8)).resize((64, 48), Image.BICUBIC)) / 255.0
    assert structure_map(small, hazy).shape == hazy.shape[:2]
    assert structure_score(small, hazy) > 0.5


def test_evaluate_folder_pairs_outputs_with_their_hazy_inputs(tmp_path):
    hazy_dir, out_dir = tmp_path / "hazy", tmp_path / "out"
    hazy_dir.mkdir()
    out_dir.mkdir()
    hazy = _scene()
    rng = np.random.default_rng(2)
    Image.fromarray((hazy * 255).round().astype(np.uint8)).save(hazy_dir / "a.jpg", quality=98)
    Image.fromarray((hazy * 255).round().astype(np.uint8)).save(hazy_dir / "b.png")
    Image.fromarray((np.clip(1.5 * hazy - 0.2, 0, 1) * 255).round().astype(np.uint8)).save(out_dir / "a.png")
    noisy = np.clip(hazy + 0.2 * rng.standard_normal(hazy.shape), 0, 1)
    Image.fromarray((noisy * 255).round().astype(np.uint8)).save(out_dir / "b.png")
    Image.fromarray((hazy * 255).round().astype(np.uint8)).save(out_dir / "c.png")   # no hazy partner
    df = evaluate_folder(out_dir, metrics=["structure"], hazy=hazy_dir, progress=False,
                         cache_dir=tmp_path / "cache").set_index("image")
    assert df.loc["a.png", "structure"] > 0.97
    assert df.loc["b.png", "structure"] < 0.8
    assert np.isnan(df.loc["c.png", "structure"]) and "hazy input" in df.loc["c.png", "error"]
    again = evaluate_folder(out_dir, metrics=["structure"], hazy=hazy_dir, progress=False,
                            cache_dir=tmp_path / "cache").set_index("image")
    assert again.loc["b.png", "structure"] == df.loc["b.png", "structure"]
    na = evaluate_folder(out_dir, metrics=["structure"], progress=False)
    assert "hazy" in na.attrs["na_reasons"]["structure"]
