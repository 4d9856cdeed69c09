"""Datasets: clean + depth, real hazy photos, paired folders; bad files skipped and counted (corun.data)."""
from __future__ import annotations


import numpy as np
import pytest
import torch
from PIL import Image

from corun import data
from corun.cli import main as data_main


def _img(path, h=40, w=48, seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def test_fill_disparity_holes_takes_the_farther_neighbour():
    disp = np.array([[5, 0, 0, 2], [0, 3, 0, 0], [0, 0, 0, 0]], dtype=np.float32)
    out = data.fill_disparity_holes(disp, disp > 0)
    assert out.tolist() == [[5, 2, 2, 2], [3, 3, 3, 3], [2, 2, 2, 2]]


def test_clean_disparity_from_shared_reads_with_holes_filled(shared_dir):
    folder = shared_dir / "data" / "clean_disparity"
    ds = data.CleanDepthDataset(clean_dir=folder, crop=128, seed=1)
    assert len(ds) == 4 and ds.report.skipped == [] and ds.report.found == 4
    raw = np.asarray(Image.open(folder / "books_disp.png"), dtype=np.float32)
    assert (raw == 0).any()                                  # the shared file really has holes
    d = data.read_inv_depth(folder / "books_disp.png")[0].numpy()
    holes = raw == 0
    assert d.min() == 0.0 and d.max() == 1.0
    lo = (raw[~holes].min() - raw[~holes].min()) / (raw[~holes].max() - raw[~holes].min())
    assert (d[holes] >= lo).all() and np.isfinite(d).all()
    s = ds[0]
    assert s["clean"].shape == (3, 128, 128) and s["inv_depth"].shape == (1, 128, 128)
    assert 0 <= s["inv_depth"].min() and s["inv_depth"].max() <= 1
    again = data.CleanDepthDataset(clean_dir=folder, crop=128, seed=1)[0]
    assert torch.equal(s["clean"], again["clean"])           # seeded crops / flips
    batch = next(iter(data.make_loader(ds, batch_size=2, shuffle=True, seed=0)))
    assert batch["clean"].shape == (2, 3, 128, 128) and len(batch["name"]) == 2


def test_real_hazy_from_shared_returns_image_strong_copy_and_name(shared_dir):
    ds = data.RealHazyDataset(shared_dir / "data" / "real_hazy", size=128, seed=0)
    assert len(ds) == 5
    names = {ds[i]["name"] for i in range(len(ds))}
    assert names == {"canyon2.png", "city.png", "france.png", "plane.png", "swiss.png"}
    s = ds[0]
    assert s["image"].shape == s["strong"].shape == (3, 128, 128)
    assert 0 <= s["strong"].min() and s["strong"].max() <= 1
    assert (s["image"] - s["strong"]).abs().mean() > 1e-3   # augmented, photometric only
    full = data.RealHazyDataset(shared_dir / "data" / "real_hazy", strong=False)[0]
    assert "strong" not in full and full["image"].shape[0] == 3


def test_bad_files_are_skipped_with_one_warning_each_and_counted(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    _img(real / "a.png"), _img(real / "b.jpg", seed=1)
    (real / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (real / "empty.jpg").write_bytes(b"")
    with pytest.warns(UserWarning) as rec:
        ds = data.RealHazyDataset(real, strong=False)
    assert len(ds) == 2 and ds.report.found == 4 and len(ds.report.skipped) == 2
    assert {str(real / "broken.png"), str(real / "empty.jpg")} == {p for p, _ in ds.report.skipped}
    assert len([w for w in rec if "skipping" in str(w.message)]) == 2


def test_clean_depth_skips_unmatched_and_unreadable_depth(tmp_path):
    (tmp_path / "rgb_500").mkdir(), (tmp_path / "depth_500").mkdir()
    for i in range(3):
        _img(tmp_path / "rgb_500" / f"s{i}.jpg", seed=i)
    np.save(tmp_path / "depth_500" / "s0.npy", np.random.default_rng(0).random((40, 48)).astype(np.float32))
    (tmp_path / "depth_500" / "s1.npy").write_bytes(b"garbage")          # unreadable
    # s2 has no depth at all
    with pytest.warns(UserWarning):
        ds = data.CleanDepthDataset(tmp_path, crop=32)
    assert len(ds) == 1 and ds.report.found == 3 and ds.report.unmatched == ["s2.jpg"]
    assert len(ds.report.skipped) == 2
    assert data_main(["data", "check", str(tmp_path), "--kind", "clean-depth"]) == 0


def test_runtime_failure_is_skipped_and_the_batch_goes_on(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    _img(real / "a.png"), _img(real / "b.png", seed=1)
    ds = data.RealHazyDataset(real, strong=False)
    (real / "a.png").write_bytes(b"gone bad after the scan")
    with pytest.warns(UserWarning, match="a.png"):
        s = ds[0]
    assert s["name"] == "b.png" and len(ds.report.skipped) == 1


def test_folder_without_usable_image_is_an_error_naming_it(tmp_path):
    (tmp_path / "notes.txt").write_text("no images")
    with pytest.raises(data.DatasetError, match=str(tmp_path)):
        data.RealHazyDataset(tmp_path)
    assert data_main(["data", "check", str(tmp_path), "--kind", "real"]) == 1


def test_mat_metric_depth_becomes_inverse_depth(tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    depth = np.tile(np.linspace(1.0, 10.0, 8, dtype=np.float32), (6, 1))   # farther to the right
    scipy_io.savemat(tmp_path / "x.mat", {"depth": depth})
    d = data.read_inv_depth(tmp_path / "x.mat")[0]
    assert d[0, 0] == 1.0 and d[0, -1] == 0.0 and (d[:, 1:] <= d[:, :-1]).all()


def test_paired_matches_ohaze_and_sots_names(tmp_path):
    (tmp_path / "hazy").mkdir(), (tmp_path / "GT").mkdir()
    _img(tmp_path / "hazy" / "01_outdoor_hazy.jpg"), _img(tmp_path / "GT" / "01_outdoor_GT.jpg")
    _img(tmp_path / "hazy" / "0001_0.8_0.2.jpg"), _img(tmp_path / "GT" / "0001.png")
    _img(tmp_path / "hazy" / "lonely.png")
    with pytest.warns(UserWarning, match="lonely"):
        ds = data.PairedDataset(tmp_path, crop=32, flip=True)
    assert len(ds) == 2 and ds.report.unmatched == ["lonely.png"]
    s = ds[0]
    assert s["hazy"].shape == s["clean"].shape == (3, 32, 32)


def test_cached_clean_depth_gives_the_same_samples_and_stops_reading_files(tmp_path):
    (tmp_path / "rgb_500").mkdir(), (tmp_path / "depth_500").mkdir()
    for i in range(3):
        _img(tmp_path / "rgb_500" / f"s{i}.png", seed=i)
        np.save(tmp_path / "depth_500" / f"s{i}.npy", np.random.default_rng(i).random((40, 48)).astype(np.float32))
    plain = data.CleanDepthDataset(tmp_path, crop=24, seed=3)
    cached = data.CleanDepthDataset(tmp_path, crop=24, seed=3, cache=True)
    for epoch in range(2):  # different crops per epoch, identical between the two datasets
        plain.set_epoch(epoch), cached.set_epoch(epoch)
        for i in range(3):
            a, b = plain[i], cached[i]
            assert torch.equal(a["clean"], b["clean"]) and torch.equal(a["inv_depth"], b["inv_depth"])
    for p in (tmp_path / "rgb_500").iterdir():  # decoded once: the files are no longer needed
        p.unlink()
    assert cached[1]["clean"].shape == (3, 24, 24)


def test_strong_augmentation_draws_upstreams_ops_and_ranges():
    import collections
    import random

    from PIL import Image

    drawn, values = collections.Counter(), collections.defaultdict(list)
    orig_choices = random.Random.choices

    class Spy(random.Random):
        def choices(self, population, k=1, **kw):
            out = orig_choices(self, population, k=k, **kw)
            for op in out:
                drawn[op] += 1
            return out

    img = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))
    for i in range(600):
        data.strong_augment(img, Spy(i))
    assert set(drawn) == set(data.STRONG_OPS) and sum(drawn.values()) == 1200   # n = 2 per call
    names = [n for n, _, _ in data.STRONG_OPS]
    assert names == ["contrast", "brightness", "contrast", "posterize", "sharpness", "blur"]
    assert data.STRONG_OPS[0][1:] == (0.05, 0.95) and data.STRONG_OPS[2][1:] == (0.25, 0.95)
    for name, lo, hi in data.STRONG_OPS:
        assert abs(drawn[(name, lo, hi)] / 1200 - 1 / 6) < 0.04                 # uniform over the six
    radii = collections.Counter(data._blur_radius(u) for u in np.linspace(0, 0.999999, 10000))
    assert set(radii) == {1, 3, 5} and abs(radii[5] / 10000 - 0.95 / 4.95) < 0.01
    # each op is Pillow's own operator: brightness 0.5 halves a grey image, posterize 4 keeps 4 bits
    grey = Image.fromarray(np.full((8, 8, 3), 200, np.uint8))
    assert np.asarray(data.apply_strong_op(grey, "brightness", 0.5, random.Random(0)))[0, 0, 0] == 100
    assert np.asarray(data.apply_strong_op(grey, "posterize", 4.7, random.Random(0)))[0, 0, 0] == 192


def test_real_hazy_names_list_and_weak_jpeg(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for n in ("a", "b", "c"):
        Image.fromarray((rng.random((40, 48, 3)) * 255).astype(np.uint8)).save(tmp_path / f"{n}.png")
    (tmp_path / "split.txt").write_text("a\n# comment\nc.png\n\n")
    ds = data.RealHazyDataset(tmp_path, names=data.read_name_list(tmp_path / "split.txt"), strong=False)
    assert [f.name for f in ds.files] == ["a.png", "c.png"]
    with pytest.raises(data.DatasetError, match="not found, e.g. zz"):
        data.RealHazyDataset(tmp_path, names=["a", "zz"])
    plain = data.RealHazyDataset(tmp_path, strong=False, jpeg_p=0.0)
    jpeg = data.RealHazyDataset(tmp_path, strong=False, jpeg_p=1.0)
    assert torch.equal(plain[0]["image"], data.read_rgb(tmp_path / "a.png"))
    assert (jpeg[0]["image"] - plain[0]["image"]).abs().mean() > 0.01           # compressed noise is lossy
    half = data.RealHazyDataset(tmp_path, strong=False, jpeg_p=0.5)
    changed = 0
    for epoch in range(40):
        half.set_epoch(epoch)
        changed += bool((half[1]["image"] - plain[1]["image"]).abs().max() > 0)
    assert 10 < changed < 30


def test_resumable_loader_continues_at_the_same_batch():
    """The training stream (corun.data.ResumableLoader): a loader restored from ``state_dict()`` gives the
    batches the original would have given next, across an epoch boundary."""
    ds = torch.utils.data.TensorDataset(torch.arange(10))
    first = data.ResumableLoader(ds, batch_size=3, world=1, rank=0, seed=4, num_workers=0)
    taken = [first.next()[0].tolist() for _ in range(2)]
    state = first.state_dict()
    want = [first.next()[0].tolist() for _ in range(4)]  # 3 batches per epoch: crosses into epoch 1
    again = data.ResumableLoader(ds, batch_size=3, world=1, rank=0, seed=4, num_workers=0)
    again.load_state_dict(state)
    assert [again.next()[0].tolist() for _ in range(4)] == want and state == {"epoch": 0, "index": 2}
    assert again.epoch == 1 and taken[0] != want[0]
    with pytest.raises(data.ConfigError, match="batch_size 20 is larger"):
        data.ResumableLoader(ds, batch_size=20, world=1, rank=0, seed=4, num_workers=0)
