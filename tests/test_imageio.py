"""Reading photos of every kind, finding inputs, writing outputs."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from corun.imageio import ImageReadError, collect_images, read_image, save_png
from images import awkward_images, bad_images, gradient


def test_every_colour_mode_becomes_float_rgb(tmp_path):
    files = awkward_images(tmp_path)
    expected_notes = {"gray": "grayscale", "gray16": "16-bit grayscale", "rgba": "alpha channel dropped",
                      "cmyk": "CMYK", "palette": "palette", "exif": "EXIF orientation 6",
                      "rgb16": "16-bit colour"}
    ref = gradient()
    for kind, path in files.items():
        arr, notes = read_image(path)
        assert arr.dtype == np.float32 and arr.ndim == 3 and arr.shape[2] == 3, kind
        assert 0.0 <= arr.min() and arr.max() <= 1.0, kind
        if kind in expected_notes:
            assert any(expected_notes[kind] in n for n in notes), (kind, notes)
        else:
            assert notes == [], (kind, notes)
        if kind == "exif":
            assert arr.shape[:2] == (40, 24)  # rotated upright: was 24 high, 40 wide
        else:
            assert arr.shape[:2] == (24, 40), kind
    assert np.abs(read_image(files["rgb"])[0] - ref).max() < 1 / 255
    g16, _ = read_image(files["gray16"])
    assert np.allclose(g16[..., 1], ref[..., 0], atol=1e-4) and np.allclose(g16[..., 0], g16[..., 2])


@pytest.mark.parametrize("kind,reason", [("truncated", "truncated"), ("not_image", "not an image"),
                                         ("empty", "empty file")])
def test_bad_files_raise_one_line_naming_the_file(tmp_path, kind, reason):
    path = bad_images(tmp_path)[kind]
    with pytest.raises(ImageReadError) as err:
        read_image(path)
    msg = str(err.value)
    assert msg.startswith(str(path)) and reason in msg and "\n" not in msg


def test_collect_images(tmp_path):
    files = awkward_images(tmp_path / "a")
    (tmp_path / "a" / "readme.txt").write_text("skip me")
    (tmp_path / "empty").mkdir()
    scan = collect_images([tmp_path / "a", files["rgb"], tmp_path / "empty", tmp_path / "missing.png",
                           tmp_path / "a" / "readme.txt"])
    assert len(scan.files) == len(files)  # folder listing + explicit duplicate counted once
    assert {p.name for p in scan.files} == {p.name for p in files.values()}  # .JPG / .TIF too
    reasons = {p.name: r for p, r in scan.errors}
    assert "no image files" in reasons["empty"]
    assert "no such file" in reasons["missing.png"]
    assert "not an image file extension" in reasons["readme.txt"]


def test_save_png_round_trip(tmp_path):
    arr = gradient()
    path = save_png(arr, tmp_path / "sub" / "x.png")
    back = np.asarray(Image.open(path), dtype=np.float32) / 255
    assert back.shape == arr.shape and np.abs(back - arr).max() <= 0.5 / 255 + 1e-6
    gray = save_png(arr[..., :1], tmp_path / "t.png")
    assert Image.open(gray).mode == "L"
