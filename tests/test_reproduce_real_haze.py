"""Table 1 on real haze and Table 3 on any annotated real set (issue 19.2 and the Table 3 wiring):
``corun reproduce --real-hazy NAME=DIR[@SPLIT]`` (options, checks, step hashing), the real hazy blocks of
``corun.tables`` and notebook 05, on ../shared's DAWN fog test split and real hazy photos (a split of one
photo each: real images are slow on a busy 2-core machine) with tiny CORUN checkpoints made here."""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from corun import reproduce as R
from corun import tables as T

pytestmark = pytest.mark.slow  # trainings, notebooks, subprocesses: `make test-fast` skips this file

DAWN_ONE = "haze-023"  # in DAWN's test split: one car and one truck (the dawn class map makes the truck a car)
PHOTO = "swiss"        # the smallest-but-one of shared/data/real_hazy (640 x 426)
TINY_DETECTOR = "fasterrcnn_mobilenet_v3_large_320_fpn"
NOTEBOOKS = ("01_data_prep", "02_pretrain_corun", "03_colabator_finetune", "04_label_pool_inspection",
             "05_metric_tables", "06_paper_figures")


@pytest.fixture(autouse=True)
def _one_thread():
    """Real photos through tiny networks: one thread is faster than two on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_photo(path: Path, seed: int = 0, size=(40, 32)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def tiny_checkpoint(run: Path, seed: int) -> Path:
    from corun.checkpoint import save_checkpoint
    from corun.model import CORUN

    torch.manual_seed(seed)
    return save_checkpoint(run / "checkpoints" / "step_0000001.pth", CORUN(depth=2, dim=4, levels=1, num_blocks=(1,)))


@pytest.fixture(scope="module")
def dawn(request) -> Path:
    shared = request.getfixturevalue("shared_dir")
    path = shared / "data" / "dawn_fog"
    if not (path / "test.txt").is_file():
        pytest.skip(f"DAWN fog test split not found at {path}")
    return path


@pytest.fixture(scope="module")
def real_hazy_dir(request) -> Path:
    path = request.getfixturevalue("shared_dir") / "data" / "real_hazy"
    if not (path / f"{PHOTO}.png").is_file():
        pytest.skip(f"real hazy photos not found at {path}")
    return path


@pytest.fixture(scope="module")
def brisque_weights(request) -> Path | None:
    path = request.getfixturevalue("shared_dir") / "weights" / "pyiqa" / "brisque_svm_weights.pth"
    return path if path.is_file() else None


# ---------------------------------------------------------------------------------------------- options

def test_real_hazy_options_from_the_command_line_and_the_config(tmp_path):
    cfg = R.real_hazy_from_config({"mine": "rel/photos",
                                   "dawn": {"images": "D/images", "split": "D/test.txt", "class_map": "truck=car"}},
                                  "cfg.yaml", root=tmp_path / "repo")
    assert cfg["mine"].images == tmp_path / "repo" / "rel" / "photos" and cfg["mine"].split is None
    assert cfg["dawn"].split == tmp_path / "repo" / "D" / "test.txt" and cfg["dawn"].class_map == "truck=car"
    sets = R.real_hazy_sets([f"dawn=imgs@{tmp_path / 'few.txt'}", "other=x"], lists=["other=o.txt"],
                            annotations=["dawn=ann"], class_maps=["dawn=dawn"], config=cfg, cwd=tmp_path)
    assert list(sets) == ["mine", "dawn", "other"]
    assert sets["dawn"].images == tmp_path / "imgs" and sets["dawn"].split == tmp_path / "few.txt"
    assert sets["dawn"].annotations == tmp_path / "ann" and sets["dawn"].class_map == "dawn"  # replaced the config's
    assert sets["other"].split == tmp_path / "o.txt"
    assert sets["mine"] == cfg["mine"]
    assert json.dumps(sets["dawn"].parameters())  # what notebook 05 gets is plain JSON
    with pytest.raises(ValueError, match="no real hazy set 'nope'"):
        R.real_hazy_sets(["a=x"], annotations=["nope=y"], cwd=tmp_path)
    with pytest.raises(ValueError, match="taken"):
        R.real_hazy_sets(["real=x"], cwd=tmp_path)
    with pytest.raises(ValueError, match="NAME=DIR"):
        R.real_hazy_sets(["just_a_dir"], cwd=tmp_path)
    with pytest.raises(ValueError, match="unknown key"):
        R.real_hazy_from_config({"a": {"images": "x", "splt": "y"}}, "cfg.yaml", root=tmp_path)
    opts = R.merge_table_options(R.TableOptions(), ["a=x"], metric_weights=["brisque=w.pth"],
                                 detector_weights="det.pth", cwd=tmp_path)
    assert opts.metric_weights == {"brisque": tmp_path / "w.pth"} and opts.detector_weights == tmp_path / "det.pth"


def test_real_hazy_sets_are_checked_before_anything_runs(tmp_path):
    for i in range(3):
        write_photo(tmp_path / "photos" / f"p{i}.png", i)
    (tmp_path / "split.txt").write_text("p0\np2.png\n")
    (tmp_path / "bad_split.txt").write_text("p0\nq9\n")
    (tmp_path / "no_xml").mkdir()
    good = R.RealHazySet("good", tmp_path / "photos", tmp_path / "split.txt")
    assert R.listed_images(good.images, good.split) == ([tmp_path / "photos" / "p0.png",
                                                         tmp_path / "photos" / "p2.png"], [])
    log: list[str] = []
    sets = {"good": good,
            "gone": R.RealHazySet("gone", tmp_path / "nowhere"),
            "split": R.RealHazySet("split", tmp_path / "photos", tmp_path / "bad_split.txt"),
            "ann": R.RealHazySet("ann", tmp_path / "photos", annotations=tmp_path / "no_xml", class_map="truck=lorry")}
    problems = R.check_real_hazy(sets, log=log.append)
    assert any("good" in line and "2 photo(s)" in line for line in log)
    assert not any(p.startswith("real hazy set good") for p in problems)
    assert any("gone" in p and "is not a folder" in p for p in problems)
    assert any("split" in p and "1 photo(s) named by" in p and "q9" in p for p in problems)
    assert any("no Pascal-VOC .xml" in p for p in problems)
    assert any("class map" in p and "lorry" in p for p in problems)


def test_plan_labels_pseudo_real_and_real_blocks_apart(tmp_path):
    """The smoke profile's own set is pseudo-real (never called real haze); a user's folder is real haze."""
    for i in range(2):
        write_photo(tmp_path / "photos" / f"p{i}.png", i)
    plan = T.plan_tables("smoke", tmp_path / "results", real_hazy={"mine": str(tmp_path / "photos")})
    by = {s.name: s for s in plan.sets}
    assert [s.name for s in plan.sets] == ["real", "synthetic", "mine"]
    assert by["real"].kind == "pseudo-real" and by["mine"].kind == "real"
    assert by["real"].in_table1 and by["mine"].in_table1 and not by["synthetic"].in_table1
    assert by["mine"].metrics == T.TABLE1_METRICS and "structure" in T.TABLE1_METRICS
    rows = [{"method": m, "fade": 1.0 + i, "brisque": np.nan, "nima": np.nan, "structure": 0.9,
             "n_images": 2, "notes": ""} for i, m in enumerate(T.METHODS)]
    blocks = [T.Table1Block(s.name, s.kind, s.description, pd.DataFrame(rows), s.metrics) for s in plan.sets
              if s.in_table1]
    md = T.build_table1(blocks=blocks, profile="smoke").markdown()
    first, second = md.split("### 2.")
    assert "### 1. pseudo-real (a synthetic degradation, not real haze)" in first and "real haze:" not in first
    assert "**not real haze**" in first and second.lstrip().startswith("real haze: mine")
    assert md.count("| S↑ |") == 2
    tex = T.build_table1(blocks=blocks, profile="smoke").latex()
    assert tex.count(r"\begin{table}") == 3 and "pseudo-real" in tex.split("block 2")[0]
    with pytest.raises(ValueError, match="taken"):
        T.plan_tables("smoke", tmp_path / "results", real_hazy={"synthetic": str(tmp_path / "photos")})


# ---------------------------------------------------------------------------------------------- reproduce

class ParamsRunner:
    """Stands in for papermill: records each notebook's parameters, writes the executed copy and what the
    step must leave behind to be skipped next time."""

    def __init__(self, outputs: dict[str, list[Path]]):
        self.calls: list[tuple[str, dict]] = []
        self.outputs = outputs

    def __call__(self, notebook: Path, out_dir: Path, parameters: dict) -> Path:
        self.calls.append((notebook.stem, parameters))
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / notebook.name).write_text(json.dumps(parameters))
        for path in self.outputs.get(notebook.stem, []):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("made by the fake runner")
        return out_dir / notebook.name

    def ran(self, since: int = 0) -> list[str]:
        return [name for name, _ in self.calls[since:]]


def test_reproduce_real_hazy_sets_reach_notebook_05_and_rerun_05_and_06_when_they_change(
        tmp_path, dawn, real_hazy_dir, brisque_weights, capsys):
    root = tmp_path / "repo"  # a checkout of its own: its runs/, data/ and results/
    nbs = root / "notebooks"
    for name in NOTEBOOKS:
        nb = nbformat.v4.new_notebook()
        nb.cells = [nbformat.v4.new_code_cell("x = 1", metadata={"tags": ["parameters"]})]
        nbs.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, nbs / f"{name}.ipynb")
    tiny_checkpoint(root / "runs" / "smoke_pretrain", 0)
    tiny_checkpoint(root / "runs" / "smoke_colabator", 1)
    results = root / "results" / "smoke"
    split = tmp_path / "few.txt"
    split.write_text(f"{DAWN_ONE}\n")
    mine = tmp_path / "mine"
    write_photo(mine / "a.png")
    runner = ParamsRunner({"01_data_prep": [root / "data" / "mini" / "manifest.json", results / "data_manifest.json"],
                           "06_paper_figures": [root / "figures" / "smoke" / "06_grid.png"],
                           "05_metric_tables": [results / n for n in ("metrics_real.csv", "table1.md",
                                                                      "metrics_dawn.csv", "metrics_photos.csv",
                                                                      "metrics_mine.csv")]})
    args = dict(outdir=root / "results", notebooks_dir=nbs, root=root, runner=runner,
                real_hazy=[f"dawn={dawn / 'images'}@{split}", f"photos={real_hazy_dir}", f"mine={mine}"],
                real_hazy_annotations=[f"dawn={dawn / 'annotations'}"], real_hazy_class_maps=["dawn=dawn"],
                metric_weights=[f"brisque={brisque_weights}"] if brisque_weights else [])
    assert R.reproduce("smoke", **args) == 0
    out = capsys.readouterr().out
    assert "dawn" in out and "1 photo(s) named by" in out and "photos" in out and "5 photo(s)" in out
    assert runner.ran() == list(NOTEBOOKS)
    p05 = dict(runner.calls)["05_metric_tables"]
    assert p05["real_hazy"]["dawn"] == {"images": str(dawn / "images"), "split": str(split),
                                        "annotations": str(dawn / "annotations"), "class_map": "dawn"}
    assert p05["real_hazy"]["photos"]["images"] == str(real_hazy_dir) and p05["real_hazy"]["photos"]["split"] is None
    if brisque_weights:
        assert p05["metric_weights"] == {"brisque": str(brisque_weights)}

    n = len(runner.calls)
    assert R.reproduce("smoke", **args) == 0
    assert runner.ran(n) == []  # nothing changed: every step skipped
    split.write_text(f"{DAWN_ONE}\nfoggy-003\n")  # another split: Table 1 and the figures again, nothing else
    n = len(runner.calls)
    assert R.reproduce("smoke", **args) == 0
    assert runner.ran(n) == ["05_metric_tables", "06_paper_figures"]
    write_photo(mine / "b.png", 1)  # a changed folder
    n = len(runner.calls)
    assert R.reproduce("smoke", **args) == 0
    assert runner.ran(n) == ["05_metric_tables", "06_paper_figures"]
    capsys.readouterr()

    split.write_text(f"{DAWN_ONE}\nnot-a-dawn-photo\n")
    n = len(runner.calls)
    assert R.reproduce("smoke", **args) == 2
    err = capsys.readouterr().err
    assert "real hazy set dawn" in err and "not-a-dawn-photo" in err and "nothing was run" in err
    assert runner.ran(n) == []
    assert R.reproduce("smoke", **{**args, "real_hazy_lists": ["nope=x.txt"]}) == 2
    assert "no real hazy set 'nope'" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- the tables

@pytest.fixture(scope="module")
def real_tables(tmp_path_factory, dawn, real_hazy_dir, brisque_weights):
    """One run of make_tables on the DAWN block (one test-split photo, its VOC boxes, the dawn class map, a
    randomly initialised detector) and a block of one real hazy photo, with tiny CORUN checkpoints."""
    from torchvision.models import get_model

    tmp = tmp_path_factory.mktemp("real_tables")
    tiny_checkpoint(tmp / "pre", 0)
    tiny_checkpoint(tmp / "col", 1)
    (tmp / "dawn_one.txt").write_text(f"{DAWN_ONE}\n")
    (tmp / "photo_one.txt").write_text(f"{PHOTO}\n")
    torch.manual_seed(0)
    torch.save(get_model(TINY_DETECTOR, weights=None, weights_backbone=None).state_dict(), tmp / "detector.pth")
    params = {
        "checkpoints": {"corun_pretrain": str(tmp / "pre"), "corun_colabator": str(tmp / "col")},
        "real_hazy": {"dawn": {"images": str(dawn / "images"), "split": str(tmp / "dawn_one.txt"),
                               "annotations": str(dawn / "annotations"), "class_map": "dawn"},
                      "photos": {"images": str(real_hazy_dir), "split": str(tmp / "photo_one.txt")}},
        "metric_weights": {"brisque": str(brisque_weights)} if brisque_weights else {},
        "detector": TINY_DETECTOR, "detector_weights": str(tmp / "detector.pth"),
        "detector_options": {"min_size": 64, "max_size": 96}, "sets": ["dawn", "photos"], "device": "cpu",
    }
    plan = T.plan_tables("smoke", tmp / "results", **params)
    log: list[str] = []
    result = T.make_tables(plan, log=log.append)
    return plan, result, params, log


def test_real_hazy_blocks_in_table1(real_tables, brisque_weights):
    plan, res, _, _ = real_tables
    out = plan.results_dir
    assert sorted(p.name for p in (out / "inputs" / "dawn").iterdir()) == [f"{DAWN_ONE}.jpg"]  # the split only
    for name in ("dawn", "photos"):
        table = T.read_table(out / f"metrics_{name}.csv").set_index("method")
        assert list(table.index) == list(T.METHODS)
        assert list(table.columns[:4]) == list(T.TABLE1_METRICS)
        assert (table["n_images"] == 1).all()
        assert table["fade"].notna().all() and table["structure"].notna().all()
        assert table.loc["hazy", "structure"] == pytest.approx(1.0)  # the input has no new structure
        assert (table.loc[["dcp", "corun_pretrain", "corun_colabator"], "structure"] < 1.0).all()
        assert table["brisque"].notna().all() == (brisque_weights is not None)
        assert table["nima"].isna().all() and "nima: n/a" in table.loc["hazy", "notes"]  # offline: no NIMA weights
    per_image = T.read_table(out / "metrics_dawn_per_image.csv")
    assert {Path(n).stem for n in per_image["image"]} == {DAWN_ONE}  # the photo and its PNG results
    md = (out / "table1.md").read_text()
    assert "### 1. real haze: dawn" in md and "### 2. real haze: photos" in md
    assert "pseudo-real" not in md  # only the user's real sets were evaluated here
    assert "| S↑ |" in md and "`metrics_dawn.csv`" in md
    assert md.index("## Measured") < md.index("## Reported")
    assert "0.944" not in md.split("## Reported")[0]
    tex = (out / "table1.tex").read_text()
    assert tex.count(r"\begin{table}") == 3 and "tab:table1-measured-smoke-photos" in tex
    assert [b.name for b in res.table1.blocks] == ["dawn", "photos"]
    manifest = json.loads((out / T.MANIFEST).read_text())
    dawn_set = next(s for s in manifest["sets"] if s["name"] == "dawn")
    assert dawn_set["names"] == 1 and dawn_set["kind"] == "real" and dawn_set["annotations"].endswith("annotations")


def test_table3_on_the_annotated_real_hazy_set(real_tables):
    plan, res, _, _ = real_tables
    out = plan.results_dir
    assert [b.set_name for b in res.detection] == ["dawn"]  # photos has no annotations: no Table 3 for it
    block = res.detection[0]
    assert not block.reason and block.class_map == "motorcycle=motorbike, truck=car" and block.annotated == 1
    csv = pd.read_csv(out / "table3_dawn.csv", na_values=["n/a"], keep_default_na=False).set_index("method")
    assert list(csv.index) == list(T.METHODS)
    assert (csv["n_images"] == 1).all() and (csv["ignored"].astype(str) == "0").all()  # the truck is a car here
    assert csv["car"].between(0, 1).all()  # a car (and the truck as a car) in the photo: AP has a value
    assert csv[["bus", "person"]].isna().all().all()  # no such objects: n/a, never 0
    md = (out / "table3_detection.md").read_text()
    assert md.startswith("# Table 3: detection AP@0.5 after dehazing") and "on RTTS" not in md
    assert "## 1. dawn, real hazy photos in" in md and "Class map (onto RTTS's five classes): motorcycle=motorbike, truck=car" in md
    assert "| images | ignored boxes |" in md and f"split `{plan.set('dawn').split}`" in md
    assert TINY_DETECTOR in md
    tex = (out / "table3_detection.tex").read_text()
    assert r"\begin{table}" in tex and "tab:table3-smoke-dawn" in tex and "Images" in tex

    # DAWN's names as they are: the truck is outside RTTS's classes, counted, not dropped silently
    plain = dataclasses.replace(plan, sets=[dataclasses.replace(plan.set("dawn"), class_map=None)])
    manifest = json.loads((out / T.MANIFEST).read_text())
    folders = {"dawn": {m: Path(f) if Path(f).is_absolute() else T.ROOT / f
                        for m, f in manifest["folders"]["dawn"].items()}}
    blocks = T.detection_blocks(plain, folders, {"dawn": {}}, log=lambda m: None)
    frame = T.table3_frame(blocks[0]).set_index("method")
    assert (frame["ignored"] == "truck 1").all() and blocks[0].class_map == "motorcycle=motorbike"


def test_table3_says_why_ap_is_na_without_detector_weights(real_tables, tmp_path, monkeypatch):
    plan, _, _, _ = real_tables
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    offline = dataclasses.replace(plan, detector_weights=None)
    ok, why = T.detector_status(offline)
    assert not ok and "no COCO detector weights" in why and "--detector-weights" in why
    log: list[str] = []
    blocks = T.detection_blocks(offline, {"dawn": {m.name: plan.set("dawn").hazy for m in plan.methods}},
                                {"dawn": {}}, log=log.append)
    assert blocks[0].reason.startswith("AP n/a: no COCO detector weights")
    assert blocks[0].table.isna().all().all()
    assert any("Table 3 on dawn: AP n/a" in line for line in log)  # said, not silent
    md = T.table3_markdown(blocks, "smoke")
    assert "> AP n/a: no COCO detector weights" in md and "| hazy | n/a |" in md
    missing = dataclasses.replace(plan, detector_weights=tmp_path / "absent.pth")
    assert "do not exist" in T.detector_status(missing)[1]


def test_notebook_05_runs_the_real_hazy_blocks_and_keeps_their_outputs(real_tables, tmp_path):
    """The notebook with the same parameters and results folder: it reuses the dehazed outputs and the
    scores of the run above, and writes the same Table 1 numbers."""
    plan, _, params, _ = real_tables
    before = (plan.results_dir / "metrics_dawn.csv").read_text()
    R.run_notebook("05_metric_tables.ipynb", tmp_path / "nb",
                   {"profile": "smoke", "results_dir": str(plan.results_dir), "threads": 1, **params})
    executed = nbformat.read(tmp_path / "nb" / "05_metric_tables.ipynb", as_version=4)
    text = "\n".join(o.get("text", "") if o.get("output_type") == "stream" else json.dumps(o.get("data", {}))
                     for c in executed.cells if c.cell_type == "code" for o in c.outputs)
    assert "set dawn" in text and "Table 3 detector: ok" in text and "metric structure" in text
    assert "dehazed dawn" not in text  # the outputs of the same checkpoints were kept
    assert (plan.results_dir / "metrics_dawn.csv").read_text() == before
    assert "Table 3: detection AP@0.5" in text and "real haze: photos" in text
    assert not math.isnan(T.read_table(plan.results_dir / "metrics_photos.csv")["fade"].iloc[0])
