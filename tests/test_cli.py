"""`corun dehaze` end to end: real photos, every bad-input kind, resume, never overwriting inputs."""
from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import torch
from PIL import Image

import corun
from corun.cli import main
from images import awkward_images, bad_images


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "tiny.pth"
    corun.save_checkpoint(path, corun.CORUN(depth=2, dim=8))
    return path


@pytest.mark.slow
def test_real_hazy_folder(shared_dir, tiny_ckpt, tmp_path, capsys):
    src = shared_dir / "data" / "real_hazy"
    code = main(["dehaze", str(src), "-o", str(tmp_path / "out"), "--weights", str(tiny_ckpt),
                 "--save-transmission", "--save-stages", "-q"])
    assert code == 0
    inputs = sorted(src.glob("*.png"))
    assert len(inputs) == 5
    for p in inputs:
        out = Image.open(tmp_path / "out" / p.name)
        assert out.size == Image.open(p).size and out.mode == "RGB"
        assert Image.open(tmp_path / "out" / "transmission" / p.name).mode == "L"
        assert (tmp_path / "out" / "stages" / f"{p.stem}_J2.png").exists()
    assert "dehazed 5 image(s)" in capsys.readouterr().err


def test_bad_inputs_are_reported_and_the_rest_written(tiny_ckpt, tmp_path, capsys):
    folder = tmp_path / "in"
    good = awkward_images(folder)
    bad = bad_images(folder)
    (tmp_path / "empty").mkdir()
    before = {p: p.read_bytes() for p in folder.iterdir()}
    out = tmp_path / "out"
    code = main(["dehaze", str(folder), str(tmp_path / "empty"), str(tmp_path / "nope.jpg"),
                 "-o", str(out), "--weights", str(tiny_ckpt), "-q"])
    err = capsys.readouterr().err
    assert code == 1
    for kind, path in bad.items():
        assert f"error: {path}:" in err, kind
    assert f"error: {tmp_path / 'empty'}: folder contains no image files" in err
    assert f"error: {tmp_path / 'nope.jpg'}: no such file" in err
    assert "note: " in err and "CMYK converted to RGB" in err
    written = {p.name for p in out.glob("*.png")}
    assert written == {f"{p.stem}.png" for p in good.values()}
    for p in good.values():
        src = Image.open(p)
        w, h = src.size
        if p.suffix.lower() == ".jpg" and src.getexif().get(0x0112) == 6:
            w, h = h, w
        assert Image.open(out / f"{p.stem}.png").size == (w, h)
    assert "5 failed" in err and f"dehazed {len(good)} image(s)" in err
    assert before == {p: p.read_bytes() for p in folder.iterdir()}  # inputs untouched


def test_resume_skips_existing_outputs_and_never_overwrites_inputs(tiny_ckpt, tmp_path, capsys):
    folder = tmp_path / "in"
    files = awkward_images(folder)
    args = ["dehaze", str(files["rgb"]), str(files["gray"]), "-o", str(tmp_path / "out"),
            "--weights", str(tiny_ckpt), "-q"]
    assert main(args) == 0
    marker = (tmp_path / "out" / "rgb.png").stat().st_mtime_ns
    assert main(args) == 0
    assert "skipped 2 with existing output" in capsys.readouterr().err
    assert (tmp_path / "out" / "rgb.png").stat().st_mtime_ns == marker
    assert main(args + ["--overwrite"]) == 0
    # writing next to the inputs: rgb.png would replace its own input and is refused
    original = files["rgb"].read_bytes()
    assert main(["dehaze", str(files["rgb"]), "-o", str(folder), "--weights", str(tiny_ckpt), "-q"]) == 1
    assert "would overwrite an input file" in capsys.readouterr().err
    assert files["rgb"].read_bytes() == original


def test_same_stem_inputs_get_distinct_outputs(tiny_ckpt, tmp_path):
    folder = tmp_path / "in"
    files = awkward_images(folder)
    shutil.copy(files["rgb"], folder / "rgb.jpg")
    assert main(["dehaze", str(folder / "rgb.png"), str(folder / "rgb.jpg"), "-o", str(tmp_path / "o"),
                 "--weights", str(tiny_ckpt), "-q"]) == 0
    assert {p.name for p in (tmp_path / "o").iterdir()} == {"rgb.png.png", "rgb.jpg.png"}


def test_tiled_cli(tiny_ckpt, tmp_path):
    files = awkward_images(tmp_path / "in")
    assert main(["dehaze", str(files["rgb"]), "-o", str(tmp_path / "o"), "--tile", "16",
                 "--overlap", "8", "--weights", str(tiny_ckpt), "-q"]) == 0
    assert Image.open(tmp_path / "o" / "rgb.png").size == (40, 24)


def test_no_weights_is_a_plain_message(monkeypatch, tmp_path, capsys):
    import corun.weights as w

    monkeypatch.delenv("CORUN_WEIGHTS", raising=False)
    monkeypatch.setattr(w, "REPO_WEIGHTS", tmp_path / "missing.safetensors")
    files = awkward_images(tmp_path / "in")
    assert main(["dehaze", str(files["rgb"]), "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "no trained weights are available" in err and "--weights" in err
    assert not (tmp_path / "o").exists()


def test_broken_weights_file(tmp_path, capsys):
    (tmp_path / "w.pth").write_text("garbage")
    files = awkward_images(tmp_path / "in")
    assert main(["dehaze", str(files["rgb"]), "-o", str(tmp_path / "o"), "--weights",
                 str(tmp_path / "w.pth")]) == 2
    assert f"{tmp_path / 'w.pth'}: cannot read weights" in capsys.readouterr().err


@pytest.mark.slow
def test_console_script_is_installed():
    exe = shutil.which("corun") or str(__import__("pathlib").Path(sys.executable).parent / "corun")
    res = subprocess.run([exe, "--version"], capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.startswith("corun ")


def test_out_of_memory_fails_that_image_only(tiny_ckpt, tmp_path, monkeypatch, capsys):
    import corun.batch as batch

    files = awkward_images(tmp_path / "in")
    real_run = batch.run_model

    def flaky(model, x, **kw):
        if x.shape[-1] == 40 and x.shape[-2] == 24 and not hasattr(flaky, "done"):
            flaky.done = True
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 GB")
        return real_run(model, x, **kw)

    monkeypatch.setattr(batch, "run_model", flaky)
    code = main(["dehaze", str(files["rgb"]), str(files["gray"]), "-o", str(tmp_path / "o"),
                 "--weights", str(tiny_ckpt), "-q"])
    err = capsys.readouterr().err
    assert code == 1 and "out of memory at 40x24; retry with a smaller --tile" in err
    assert len(list((tmp_path / "o").glob("*.png"))) == 1


@pytest.mark.slow
def test_export_writes_fp16_safetensors_that_dehaze_loads_by_default(tmp_path, monkeypatch, capsys):
    torch.manual_seed(1)
    model, ema = corun.CORUN(depth=2, dim=8), corun.CORUN(depth=2, dim=8)
    ck = tmp_path / "run" / "checkpoints" / "step_0000010.pth"
    corun.save_checkpoint(ck, model, ema)
    out = tmp_path / "w.safetensors"
    assert main(["export", str(tmp_path / "run"), str(out)]) == 0  # a run folder: its latest checkpoint
    assert "fp16" in capsys.readouterr().out
    loaded = corun.load_model(out)
    for k, v in ema.state_dict().items():  # the EMA (teacher) weights, rounded to fp16
        torch.testing.assert_close(loaded.state_dict()[k], v.half().float(), rtol=0, atol=0)
    assert main(["export", str(ck), str(out)]) == 2  # never overwrites without being asked
    assert "exists" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "nope"), str(tmp_path / "x.safetensors")]) == 2
    # a file at the default location is what `corun dehaze` and `corun.dehaze()` use without --weights
    import corun.weights as w

    monkeypatch.delenv("CORUN_WEIGHTS", raising=False)
    monkeypatch.setattr(w, "REPO_WEIGHTS", out)
    files = awkward_images(tmp_path / "in")
    assert main(["dehaze", str(files["rgb"]), "-o", str(tmp_path / "o"), "-q"]) == 0
    assert str(out) in capsys.readouterr().err
    x = torch.rand(1, 3, 32, 40)
    with torch.no_grad():
        want = loaded(x).image
    torch.testing.assert_close(corun.dehaze(x), want)


def test_realeval_command_writes_per_image_and_summary(tiny_ckpt, tmp_path, capsys):
    """`corun realeval`: every method on the named photos, S beside the other scores, both CSVs written."""
    import numpy as np
    import pandas as pd

    hazy = tmp_path / "hazy"
    hazy.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a", "b", "c"):
        arr = (rng.random((48, 64, 3)) * 80 + 120).astype(np.uint8)
        Image.fromarray(arr).save(hazy / f"{name}.png")
    (tmp_path / "split.txt").write_text("a\nc.png\n")
    out = tmp_path / "eval"
    code = main(["realeval", "--hazy", str(hazy), "--names", str(tmp_path / "split.txt"), "--method", "hazy=hazy",
                 "--method", "tiny=" + str(tiny_ckpt), "--metrics", "structure", "-o", str(out)])
    assert code == 0
    per_image = pd.read_csv(out / "per_image.csv")
    assert sorted(set(per_image["image"])) == ["a.png", "c.png"] and set(per_image["method"]) == {"hazy", "tiny"}
    assert (per_image[per_image["method"] == "hazy"]["structure"] == 1.0).all()
    tiny = per_image[per_image["method"] == "tiny"]["structure"]
    assert tiny.between(-1, 1).all() and (tiny < 1).all()   # a random network changes the structure
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary["method"]) == ["hazy", "tiny"] and "tiny" in capsys.readouterr().out


def test_dehaze_margin_option(tiny_ckpt, tmp_path, capsys):
    """--margin reaches the network (the result differs from margin 0, equals corun.dehaze's); a negative
    margin is refused by the parser."""
    import numpy as np

    files = awkward_images(tmp_path / "in")
    for margin in ("0", "16"):
        assert main(["dehaze", str(files["rgb"]), "-o", str(tmp_path / f"m{margin}"), "--margin", margin,
                     "--weights", str(tiny_ckpt), "-q"]) == 0
    a, b = (np.asarray(Image.open(tmp_path / f"m{m}" / "rgb.png"), dtype=np.int16) for m in ("0", "16"))
    assert a.shape == b.shape and np.abs(a - b).max() > 0
    api = corun.dehaze(files["rgb"], weights=tiny_ckpt, device="cpu", margin=16)
    assert np.abs(np.asarray(api, dtype=np.int16) - b).max() <= 1
    with pytest.raises(SystemExit):
        main(["dehaze", str(files["rgb"]), "-o", str(tmp_path / "bad"), "--margin", "-4",
              "--weights", str(tiny_ckpt)])
    assert "margin must be 0 or more" in capsys.readouterr().err
