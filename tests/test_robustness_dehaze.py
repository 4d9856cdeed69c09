"""Issue 17, ``corun dehaze``: output names never collide across input folders, the output location is checked
before any work, write failures are one line (and a full disk a clean stop), non-finite output is never
written, re-runs with ``--save-transmission`` fill in what is missing, broken links are named, stale temporary
files are cleaned. A tiny random CORUN on 40×24 images."""
from __future__ import annotations

import errno
import os
import time

import numpy as np
import pytest
import torch
from images import gradient, save_rgb
from PIL import Image

import corun
from corun import batch
from corun.cli import main
from corun.inference import run_model


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "tiny.pth"
    corun.save_checkpoint(path, corun.CORUN(depth=2, dim=8))
    return path


def dehaze(*args, ckpt) -> int:
    return main(["dehaze", *map(str, args), "--weights", str(ckpt), "-q"])


def two_folders_with_the_same_name(tmp_path):
    (tmp_path / "A").mkdir()
    (tmp_path / "B").mkdir()
    save_rgb(tmp_path / "A" / "x.png")
    save_rgb(tmp_path / "B" / "x.png", gradient()[::-1].copy())  # another photo, the same file name
    return tmp_path / "A", tmp_path / "B"


# ----------------------------------------------------------------------------- 17.1 name collisions

def test_same_names_from_two_folders_go_to_one_subfolder_each(tiny_ckpt, tmp_path, capsys):
    a, b = two_folders_with_the_same_name(tmp_path)
    out = tmp_path / "out"
    assert dehaze(a, b, "-o", out, ckpt=tiny_ckpt) == 0
    err = capsys.readouterr().err
    # before the fix: "dehazed 1 image(s), skipped 1" and B's photo was never dehazed
    assert "dehazed 2 image(s)" in err and "own subfolder (A/, B/)" in err
    ya, yb = (np.asarray(Image.open(out / g / "x.png")) for g in ("A", "B"))
    assert ya.shape == yb.shape == (24, 40, 3) and not np.array_equal(ya, yb)
    # a re-run resumes (both skipped), --overwrite recomputes both into their own places
    assert dehaze(a, b, "-o", out, ckpt=tiny_ckpt) == 0
    assert "skipped 2" in capsys.readouterr().err
    assert dehaze(a, b, "-o", out, "--overwrite", ckpt=tiny_ckpt) == 0
    assert np.array_equal(np.asarray(Image.open(out / "A" / "x.png")), ya)
    assert np.array_equal(np.asarray(Image.open(out / "B" / "x.png")), yb)
    assert not (out / "x.png").exists()


def test_a_clash_that_remains_is_refused_naming_both_inputs(tiny_ckpt, tmp_path, capsys):
    for parent in ("p", "q"):  # two folders both called A
        (tmp_path / parent / "A").mkdir(parents=True)
        save_rgb(tmp_path / parent / "A" / "x.png")
    save_rgb(tmp_path / "p" / "A" / "y.png")
    out = tmp_path / "out"
    assert dehaze(tmp_path / "p" / "A", tmp_path / "q" / "A", "-o", out, ckpt=tiny_ckpt) == 1
    err = capsys.readouterr().err
    assert f"error: {tmp_path / 'p' / 'A' / 'x.png'}: its output A/x.png would also be the output of " \
           f"{tmp_path / 'q' / 'A' / 'x.png'}" in err
    assert f"error: {tmp_path / 'q' / 'A' / 'x.png'}:" in err
    assert not (out / "A" / "x.png").exists() and (out / "A" / "y.png").exists()


def test_the_plain_layout_is_unchanged_without_a_clash(tiny_ckpt, tmp_path):
    a, b = tmp_path / "A", tmp_path / "B"
    a.mkdir(), b.mkdir()
    save_rgb(a / "x.png"), save_rgb(b / "y.png")
    assert dehaze(a, b, "-o", tmp_path / "out", ckpt=tiny_ckpt) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["x.png", "y.png"]


# ----------------------------------------------------------------------------- 17.6 output location, writes

def test_the_output_location_is_checked_before_any_work(tiny_ckpt, tmp_path, capsys):
    a = tmp_path / "A"
    a.mkdir()
    save_rgb(a / "x.jpg")
    (tmp_path / "file.txt").write_text("keep me")
    cases = [(tmp_path / "file.txt", "exists and is not a folder"),
             (tmp_path / "file.txt" / "sub", "cannot write there"),
             (a, "is an input folder")]  # a re-run would have dehazed its own x.png into x.png.png
    for out, message in cases:
        assert dehaze(a, "-o", out, ckpt=tiny_ckpt) == 2, out
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
    assert (tmp_path / "file.txt").read_text() == "keep me"
    assert sorted(p.name for p in a.iterdir()) == ["x.jpg"]


def test_a_full_disk_stops_cleanly_and_keeps_what_was_written(tiny_ckpt, tmp_path, monkeypatch, capsys):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(4):
        save_rgb(src / f"p{i}.png")
    real_save = batch.save_png
    calls = []

    def save_until_full(arr, path):  # the disk fills up on the second output
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real_save(arr, path)

    monkeypatch.setattr(batch, "save_png", save_until_full)
    out = tmp_path / "out"
    assert dehaze(src, "-o", out, ckpt=tiny_ckpt) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"error: {src / 'p1.png'}: cannot write {out / 'p1.png'}: No space left on device" in err
    assert "stopped early" in err and "2 input(s) not attempted" in err
    assert sorted(p.name for p in out.iterdir()) == ["p0.png"] and len(calls) == 2  # no attempt after it
    monkeypatch.setattr(batch, "save_png", real_save)
    assert dehaze(src, "-o", out, ckpt=tiny_ckpt) == 0  # the same command continues
    assert "skipped 1" in capsys.readouterr().err


def test_one_unwritable_output_is_one_line_and_the_rest_go_on(tiny_ckpt, tmp_path, monkeypatch, capsys):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(3):
        save_rgb(src / f"p{i}.png")
    real_save = batch.save_png

    def refuse_p1(arr, path):
        if "p1" in str(path):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_save(arr, path)

    monkeypatch.setattr(batch, "save_png", refuse_p1)
    assert dehaze(src, "-o", tmp_path / "out", ckpt=tiny_ckpt) == 1
    err = capsys.readouterr().err
    assert "cannot write" in err and "Permission denied" in err and "Traceback" not in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["p0.png", "p2.png"]


# ----------------------------------------------------------------------------- 17.4 non-finite output

def test_nonfinite_output_is_reported_and_never_written(tmp_path, capsys):
    torch.manual_seed(0)
    model = corun.CORUN(depth=2, dim=8)
    with torch.no_grad():  # finite weights that overflow: what a diverged run leaves
        for name, p in model.named_parameters():
            if p.ndim == 4:
                p.mul_(1e12)
    x = torch.from_numpy(gradient()).permute(2, 0, 1)[None]
    with torch.no_grad():
        assert not torch.isfinite(model(x).image).all()
    ckpt = corun.save_checkpoint(tmp_path / "diverged.pth", model)
    save_rgb(tmp_path / "x.png")
    assert dehaze(tmp_path / "x.png", "-o", tmp_path / "out", ckpt=ckpt) == 1
    err = capsys.readouterr().err
    assert f"error: {tmp_path / 'x.png'}: the model's output is" in err and "NaN/infinite" in err
    assert not list((tmp_path / "out").glob("*.png"))  # before: an all-black x.png, exit 0


def test_a_negative_overlap_is_refused(tiny_ckpt, tmp_path, capsys):
    save_rgb(tmp_path / "x.png")
    with pytest.raises(SystemExit) as exc:
        dehaze(tmp_path / "x.png", "-o", tmp_path / "out", "--tile", "16", "--overlap", "-16", ckpt=tiny_ckpt)
    assert exc.value.code == 2 and "overlap must be 0 or more" in capsys.readouterr().err
    assert dehaze(tmp_path / "x.png", "-o", tmp_path / "out", "--tile", "16", "--overlap", "16",
                  ckpt=tiny_ckpt) == 2
    assert "must be smaller than --tile" in capsys.readouterr().err
    model = corun.CORUN(depth=2, dim=8).eval()
    with pytest.raises(ValueError, match="overlap must be 0 or more"):  # before: 10 % NaN (black) pixels
        run_model(model, torch.rand(1, 3, 40, 48), tile=16, overlap=-16)


# ----------------------------------------------------------------------------- 17.7 silent cases

def test_save_transmission_on_a_rerun_writes_the_missing_maps(tiny_ckpt, tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    save_rgb(src / "a.png"), save_rgb(src / "b.png")
    out = tmp_path / "out"
    assert dehaze(src, "-o", out, ckpt=tiny_ckpt) == 0
    stamp = (out / "a.png").stat().st_mtime_ns
    assert dehaze(src, "-o", out, "--save-transmission", "--save-stages", ckpt=tiny_ckpt) == 0
    assert "dehazed 2 image(s)" in capsys.readouterr().err  # before: "skipped 2", no maps
    assert sorted(p.name for p in (out / "transmission").iterdir()) == ["a.png", "b.png"]
    assert (out / "stages" / "a_J2.png").is_file()
    assert (out / "a.png").stat().st_mtime_ns != stamp
    assert dehaze(src, "-o", out, "--save-transmission", ckpt=tiny_ckpt) == 0
    assert "skipped 2" in capsys.readouterr().err


def test_broken_links_are_named(tiny_ckpt, tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    save_rgb(src / "good.png")
    (src / "gone.png").symlink_to(tmp_path / "deleted.png")
    (src / "loop.png").symlink_to(src / "loop.png")
    out = tmp_path / "out"
    assert dehaze(src, src / "gone.png", "-o", out, ckpt=tiny_ckpt) == 1
    err = capsys.readouterr().err
    assert f"error: {src / 'gone.png'}: broken symbolic link: its target {tmp_path / 'deleted.png'} does not " \
           "exist" in err
    assert f"error: {src / 'loop.png'}: symbolic link loop" in err
    assert "no such file" not in err  # given by name it used to say "no such file or folder"
    assert sorted(p.name for p in out.iterdir()) == ["good.png"]


def test_stale_temporary_files_of_a_killed_run_are_removed(tiny_ckpt, tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    save_rgb(src / "a.png")
    out = tmp_path / "out"
    (out / "transmission").mkdir(parents=True)
    stale = [out / ".a.png.k3j2h1.tmp", out / "transmission" / ".a.png.x9y8z7.tmp"]
    for p in stale:
        p.write_bytes(b"\0" * 1000)
        old = time.time() - 3600
        os.utime(p, (old, old))
    fresh = out / ".b.png.q1w2e3.tmp"  # another writer's file, being written now
    fresh.write_bytes(b"\0")
    assert dehaze(src, "-o", out, ckpt=tiny_ckpt) == 0
    assert "removed 2 temporary file(s)" in capsys.readouterr().err
    assert not any(p.exists() for p in stale) and fresh.exists()
