"""RTTS detection AP (paper Table 3): VOC XML parsing, AP on hand-made boxes, detectors offline, the CLI.

Hand-worked AP values follow corun.detection's rules: difficult boxes ignored, COCO 101-point
interpolation (precision made monotone, sampled at recall 0, 0.01, ..., 1, averaged).
"""
from __future__ import annotations

import argparse
import math
import os

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn

from corun import detection as det
from corun.cli.detect import add_parser

G, D = det.GroundTruthBox, det.Detection
A, B, FAR = (0, 0, 10, 10), (20, 20, 30, 30), (80, 80, 90, 90)
TINY = "fasterrcnn_mobilenet_v3_large_320_fpn"  # the smallest torchvision detector with COCO weights


def only(ap: dict, cls: str = "car") -> float:
    """AP of ``cls`` after checking every other class is NaN and the mean equals it."""
    assert all(math.isnan(v) for c, v in ap.items() if c not in (cls, "mean"))
    assert ap["mean"] == pytest.approx(ap[cls])
    return ap[cls]


# --------------------------------------------------------------------------- a fake RTTS

def voc_xml(filename: str, size: tuple[int, int], objects: list[tuple]) -> str:
    objs = []
    for obj in objects:
        name, (x1, y1, x2, y2), difficult = obj
        flag = "" if difficult is None else f"<difficult>{difficult}</difficult>"
        objs.append(f"<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated>{flag}"
                    f"<bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox>"
                    "</object>")
    return (f"<annotation><folder>RTTS</folder><filename>{filename}</filename><size><width>{size[0]}</width>"
            f"<height>{size[1]}</height><depth>3</depth></size>{''.join(objs)}</annotation>")


#: Two images of different sizes (the oracle detector below tells them apart by size).
RTTS = {
    "AM_Bing_1": ((64, 48), [("car", (5, 6, 30, 40), 0), ("person", (40, 10, 50, 40), 1),
                             ("Motorbike ", (33, 20, 60, 45), None)]),
    "YST_2": ((80, 56), [("bus", (2, 2, 50, 30), "0"), ("bicycle", (55, 30, 75, 50), 0),
                         ("dog", (10, 35, 20, 50), 0)]),
}


def make_rtts(root):
    (root / "Annotations").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    rng = np.random.default_rng(0)
    for stem, (size, objects) in RTTS.items():
        (root / "Annotations" / f"{stem}.xml").write_text(voc_xml(f"{stem}.png", size, objects))
        pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "JPEGImages" / f"{stem}.png")
    return root


class OracleDetector(nn.Module):
    """Returns, per image size, the annotated non-difficult boxes with their COCO labels (plus noise that
    must be dropped: a truck and a dog)."""

    COCO = {"car": 3, "motorbike": 4, "bus": 6, "bicycle": 2, "person": 1}

    def forward(self, images):
        out = []
        for x in images:
            key = next(k for k, (size, _) in RTTS.items() if size == (x.shape[2], x.shape[1]))
            boxes, labels = [], []
            for name, (x1, y1, x2, y2), difficult in RTTS[key][1]:
                name = det.normalize_class(name)
                if name in self.COCO and str(difficult) != "1":
                    boxes.append([x1 - 1, y1 - 1, x2, y2])  # VOC 1-based inclusive → continuous
                    labels.append(self.COCO[name])
            boxes += [[0, 0, 20, 20], [1, 1, 21, 21]]
            labels += [8, 18]  # truck, dog: not RTTS classes
            out.append({"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels),
                        "scores": torch.linspace(0.9, 0.5, len(labels))})
        return out


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory):
    """A state dict of the tiny detector from random init (what ``--weights`` gets in the tests)."""
    from torchvision.models import get_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("det") / "random_init.pth"
    torch.save(get_model(TINY, weights=None, weights_backbone=None).state_dict(), path)
    return path


@pytest.fixture
def empty_torch_home(tmp_path, monkeypatch):
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


def run_cli(argv) -> int:
    parser = argparse.ArgumentParser(prog="corun")
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


# --------------------------------------------------------------------------- VOC XML

def test_parse_voc_xml_classes_difficult_and_coordinates(tmp_path):
    path = tmp_path / "x.xml"
    path.write_text(voc_xml("x.png", (64, 48), [("car", (5, 6, 30, 40), 0), ("person", (1, 1, 9.5, 9), 1),
                                                ("Motorbike ", (33, 20, 60, 45), None),
                                                ("MOTORCYCLE", (3, 3, 4, 4), "0"), ("dog", (1, 1, 5, 5), 0),
                                                ("bus", (30, 5, 20, 9), 0)]))
    ann = det.parse_voc_xml(path)
    assert ann.key == "x" and ann.filename == "x.png" and ann.size == (64, 48)
    assert ann.boxes == [G("car", (4.0, 5.0, 30.0, 40.0), False), G("person", (0.0, 0.0, 9.5, 9.0), True),
                         G("motorbike", (32.0, 19.0, 60.0, 45.0), False),  # no <difficult>: not difficult
                         G("motorbike", (2.0, 2.0, 4.0, 4.0), False)]
    assert ann.ignored == {"dog": 1}  # a class outside the map: counted, not evaluated
    assert len(ann.notes) == 1 and "xmax < xmin" in ann.notes[0]


def test_read_annotations_from_rtts_root_reports_bad_files(tmp_path):
    root = make_rtts(tmp_path / "RTTS")
    (root / "Annotations" / "broken.xml").write_text("<annotation><object>")
    (root / "Annotations" / "other.xml").write_text("<html></html>")
    anns = det.read_annotations(root)  # the RTTS root is accepted as well as Annotations/
    assert anns.folder == root / "Annotations"
    assert sorted(anns.annotations) == ["AM_Bing_1", "YST_2"]
    assert [p.name for p, _ in anns.errors] == ["broken.xml", "other.xml"]
    assert "not valid XML" in anns.errors[0][1] and "not a VOC <annotation>" in anns.errors[1][1]
    assert [b.label for b in anns.annotations["YST_2"].boxes] == ["bus", "bicycle"]
    assert anns.ignored() == {"dog": 1} and anns.ignored(["AM_Bing_1"]) == {}
    (tmp_path / "empty").mkdir()
    with pytest.raises(det.AnnotationError, match="no Pascal-VOC"):
        det.read_annotations(tmp_path / "empty")


# --------------------------------------------------------------------------- AP by hand

def test_ap_perfect_predictions_is_one():
    gt = {"a": [G("car", A), G("person", B)], "b": [G("bus", A), G("car", B)]}
    dets = {"a": [D("car", A, 0.9), D("person", B, 0.3)], "b": [D("bus", A, 0.8), D("car", B, 0.1)]}
    ap = det.compute_ap(gt, dets)
    assert [ap["car"], ap["person"], ap["bus"], ap["mean"]] == pytest.approx([1.0] * 4)
    assert math.isnan(ap["bicycle"]) and math.isnan(ap["motorbike"])  # no objects: n/a, not in the mean


def test_false_positive_ranked_first_halves_ap():
    # ranked: FP (P=0, R=0), TP (P=1/2, R=1): monotone precision is 1/2 at every recall → AP = 0.5
    assert only(det.compute_ap({"a": [G("car", A)]}, {"a": [D("car", FAR, 0.9), D("car", A, 0.8)]})) \
        == pytest.approx(0.5)
    # the false positive in another image counts just the same
    assert only(det.compute_ap({"a": [G("car", A)], "b": []},
                               {"b": [D("car", FAR, 0.9)], "a": [D("car", A, 0.8)]})) == pytest.approx(0.5)
    # ranked after full recall it changes nothing; a duplicate of a found box is such a false positive
    assert only(det.compute_ap({"a": [G("car", A)]}, {"a": [D("car", A, 0.9), D("car", A, 0.8)]})) \
        == pytest.approx(1.0)


def test_interpolation_is_coco_101_point():
    # two cars, ranked TP (R=.5, P=1), FP (R=.5, P=1/2), TP (R=1, P=2/3). Monotone precision: 1 up to
    # recall 0.5, 2/3 above. 101-point: 51 samples (0..0.50) at 1, 50 (0.51..1) at 2/3 → (51 + 100/3)/101.
    # (VOC2010+ all-point would give 0.5 + 0.5 * 2/3 = 0.8333.)
    ap = det.compute_ap({"a": [G("car", A), G("car", B)]},
                        {"a": [D("car", A, 0.9), D("car", FAR, 0.8), D("car", B, 0.7)]})
    assert only(ap) == pytest.approx((51 + 50 * 2 / 3) / 101)  # 0.83498
    assert only(ap) != pytest.approx(0.5 + 0.5 * 2 / 3, abs=1e-3)


def test_missed_object_limits_recall():
    # one of two cars found: precision 1 up to recall 0.5, nothing beyond → 51 of 101 samples at 1
    assert only(det.compute_ap({"a": [G("car", A), G("car", B)]}, {"a": [D("car", A, 0.9)]})) \
        == pytest.approx(51 / 101)
    assert only(det.compute_ap({"a": [G("car", A)]}, {})) == 0.0


def test_difficult_objects_are_ignored():
    gt = {"a": [G("car", A), G("car", B, difficult=True)]}
    # an undetected difficult car does not lower recall (it would give 51/101 as an ordinary car)
    assert only(det.compute_ap(gt, {"a": [D("car", A, 0.8)]})) == pytest.approx(1.0)
    # detections of it, even two and ranked first, are not false positives (one would give 0.5)
    dets = {"a": [D("car", B, 0.95), D("car", B, 0.9), D("car", A, 0.8)]}
    assert only(det.compute_ap(gt, dets)) == pytest.approx(1.0)
    # but only at IoU >= 0.5 with it: a small box inside a big difficult one is a false positive (VOC;
    # COCO's crowd rule, intersection over the detection's area, would forgive it)
    gt = {"a": [G("car", A), G("car", (40, 40, 80, 80), difficult=True)]}
    assert only(det.compute_ap(gt, {"a": [D("car", (40, 40, 50, 50), 0.9), D("car", A, 0.8)]})) \
        == pytest.approx(0.5)
    # a class whose only objects are difficult has no AP
    assert math.isnan(det.compute_ap({"a": [G("bus", A, True)]}, {"a": [D("bus", A, 0.9)]})["bus"])


def test_iou_threshold_and_wrong_class():
    gt = {"a": [G("car", A)]}
    assert only(det.compute_ap(gt, {"a": [D("car", (0, 0, 10, 6), 0.9)]})) == pytest.approx(1.0)  # IoU 0.6
    assert only(det.compute_ap(gt, {"a": [D("car", (0, 0, 10, 4), 0.9)]})) == 0.0  # IoU 0.4
    assert only(det.compute_ap(gt, {"a": [D("bus", A, 0.9)]})) == 0.0  # bus has no objects: n/a


def test_mean_is_over_classes_with_objects():
    gt = {"a": [G("car", A), G("person", B)]}
    dets = {"a": [D("car", FAR, 0.9), D("car", A, 0.8), D("person", B, 0.7), D("bicycle", A, 0.6)]}
    ap = det.compute_ap(gt, dets)
    assert ap["car"] == pytest.approx(0.5) and ap["person"] == pytest.approx(1.0)
    assert math.isnan(ap["bicycle"]) and ap["mean"] == pytest.approx(0.75)
    with pytest.raises(ValueError, match="without ground truth"):
        det.compute_ap(gt, {"zzz": []})


# --------------------------------------------------------------------------- detectors

def test_coco_label_map_matches_torchvision():
    from torchvision.models import get_model_weights

    for name in det.DETECTORS:
        cats = get_model_weights(name).COCO_V1.meta["categories"]
        assert {cats[i] for i in det.COCO_TO_RTTS} == {"person", "bicycle", "car", "motorcycle", "bus"}
        assert all(det.normalize_class(cats[i]) == c for i, c in det.COCO_TO_RTTS.items())


def test_missing_weights_give_a_clear_message_and_na_rows(tmp_path, empty_torch_home):
    with pytest.raises(det.DetectorUnavailable) as err:
        det.build_detector("fasterrcnn_resnet50_fpn")
    msg = str(err.value)
    assert "https://download.pytorch.org/models/fasterrcnn_resnet50_fpn_coco-258fb6c6.pth" in msg
    assert str(empty_torch_home / "hub" / "checkpoints" / "fasterrcnn_resnet50_fpn_coco-258fb6c6.pth") in msg
    assert "--download" in msg and "--weights" in msg
    root = make_rtts(tmp_path / "RTTS")
    logged = []
    df = det.detection_table({"hazy": root / "JPEGImages", "dehazed": root / "JPEGImages"}, root,
                             log=logged.append)
    assert list(df.index) == ["hazy", "dehazed"] and list(df.columns) == list(det.COLUMNS)
    assert df.isna().all().all() and "no COCO weights" in df.attrs["reasons"]["hazy"]
    assert any("download.pytorch.org" in m for m in logged)
    assert (det.format_table(df) == "n/a").all().all()


@pytest.mark.slow
def test_cached_and_local_weights_load_offline(random_weights, empty_torch_home, tmp_path):
    cached = det.cached_weights_path(TINY)
    cached.parent.mkdir(parents=True)
    os.symlink(random_weights, cached)  # as if torchvision had downloaded it
    model = det.build_detector(TINY)  # torchvision's own loading, with frozen batch norm
    assert not model.training
    frozen = tmp_path / "frozen.pth"  # a state dict in torchvision's COCO file layout (no BN counters)
    torch.save({"model": {f"module.{k}": v for k, v in model.state_dict().items()}}, frozen)
    local = det.build_detector(TINY, frozen)
    loaded = local.state_dict()
    assert all(torch.equal(v, loaded[k]) for k, v in model.state_dict().items())
    x = torch.rand(1, 3, 64, 64)
    with torch.inference_mode():  # frozen batch norm there, ordinary batch norm in eval mode here: same
        torch.testing.assert_close(model.backbone(x)["0"], local.backbone(x)["0"])
    other = tmp_path / "other.pth"  # e.g. a classifier, or a detector fine-tuned to other labels
    torch.save({"fc.weight": torch.zeros(6, 4)}, other)
    with pytest.raises(det.DetectorUnavailable, match=f"do not fit detector {TINY}") as err:
        det.build_detector(TINY, other)
    assert "unexpected keys (1): fc.weight" in str(err.value) and "missing keys" in str(err.value)
    with pytest.raises(det.DetectorUnavailable, match="no such weights file"):
        det.build_detector(TINY, tmp_path / "nope.pth")


# --------------------------------------------------------------------------- folders

def test_pipeline_with_an_oracle_detector_and_bad_files(tmp_path):
    root = make_rtts(tmp_path / "RTTS")
    images = root / "JPEGImages"
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (root / "Annotations" / "broken.xml").write_text(voc_xml("broken.png", (8, 8), [("car", A, 0)]))
    Image.new("RGB", (16, 16)).save(images / "extra.png")  # no annotation
    (root / "Annotations" / "gone.xml").write_text(voc_xml("gone.png", (8, 8), [("car", A, 0)]))
    anns = det.read_annotations(root / "Annotations")
    logged = []
    res = det.evaluate_folder(images, anns, OracleDetector(), name="oracle", progress=False, log=logged.append)
    assert res.evaluated == 2 and not res.ok and res.reason is None
    assert [p.name for p, _ in res.failed] == ["broken.png"] and any("broken.png" in m for m in logged)
    assert [p.name for p in res.unannotated] == ["extra.png"] and res.missing == ["gone"]
    # boxes come back in the right coordinates and with the right classes; the only person is difficult
    assert {c: res.ap[c] for c in ("bicycle", "bus", "car", "motorbike", "mean")} == pytest.approx(
        {"bicycle": 1.0, "bus": 1.0, "car": 1.0, "motorbike": 1.0, "mean": 1.0})
    assert math.isnan(res.ap["person"])
    summary = res.summary()
    assert "evaluated 2 image(s)" in summary and "1 failed" in summary and "extra.png" in summary


def test_random_init_detector_code_path(tmp_path):
    from torchvision.models import get_model

    root = make_rtts(tmp_path / "RTTS")
    torch.manual_seed(0)
    model = get_model(TINY, weights=None, weights_backbone=None, min_size=64, max_size=96,
                      box_score_thresh=0.0, box_detections_per_img=30)  # keep its near-uniform guesses
    df = det.detection_table([root / "JPEGImages"], root, model=model, device="cpu", progress=False,
                             log=lambda m: None)
    assert list(df.index) == ["JPEGImages"] and df.attrs["images"] == {"JPEGImages": 2}
    row = df.loc["JPEGImages"]
    assert math.isnan(row["person"])  # its only person is difficult
    for c in ("bicycle", "bus", "car", "motorbike", "mean"):
        assert 0.0 <= row[c] <= 1.0


# --------------------------------------------------------------------------- CLI

def test_cli_end_to_end_two_folders(tmp_path, random_weights, capsys):
    root = make_rtts(tmp_path / "RTTS")
    dehazed = tmp_path / "dehazed"
    dehazed.mkdir()
    for p in (root / "JPEGImages").iterdir():
        Image.open(p).save(dehazed / p.name)
    out = tmp_path / "table" / "ap.csv"
    code = run_cli(["detect-eval", str(root / "JPEGImages"), str(dehazed), "--annotations", str(root),
                    "--names", "hazy", "CORUN+Colabator", "--weights", str(random_weights),
                    "--detector", TINY, "--min-size", "64", "--device", "cpu", "-o", str(out), "-q"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    df = pd.read_csv(out, index_col="method")
    assert list(df.index) == ["hazy", "CORUN+Colabator"] and list(df.columns) == list(det.COLUMNS)
    assert df["person"].isna().all()  # written n/a, read back as NaN
    assert "n/a" in out.read_text()
    for c in ("bicycle", "bus", "car", "motorbike", "mean"):
        assert df[c].between(0, 1).all()
    assert "CORUN+Colabator" in captured.out and "evaluated 2 image(s)" in captured.err


def test_cli_reports_bad_images_and_goes_on(tmp_path, random_weights, capsys):
    root = make_rtts(tmp_path / "RTTS")
    (root / "JPEGImages" / "YST_2.png").write_bytes(b"")  # unreadable
    Image.new("RGB", (16, 16)).save(root / "JPEGImages" / "no_xml.png")
    out = tmp_path / "ap.csv"
    code = run_cli(["detect-eval", str(root / "JPEGImages"), "--annotations", str(root / "Annotations"),
                    "--weights", str(random_weights), "--detector", TINY, "--min-size", "64",
                    "--device", "cpu", "-o", str(out), "-q"])
    err = capsys.readouterr().err
    assert code == 1
    assert f"error: {root / 'JPEGImages' / 'YST_2.png'}: empty file" in err
    assert "without annotation XML" in err and "no_xml.png" in err
    df = pd.read_csv(out, index_col="method")
    assert df.loc["JPEGImages", "car"] >= 0 and df[["bus", "bicycle", "person"]].isna().all().all()


def test_cli_without_weights_writes_na_table(tmp_path, empty_torch_home, capsys):
    root = make_rtts(tmp_path / "RTTS")
    out = tmp_path / "ap.csv"
    code = run_cli(["detect-eval", str(root / "JPEGImages"), "--annotations", str(root), "-o", str(out)])
    captured = capsys.readouterr()
    assert code == 2
    assert "no COCO weights for detector fasterrcnn_resnet50_fpn" in captured.err
    assert "https://download.pytorch.org/models/fasterrcnn_resnet50_fpn_coco-258fb6c6.pth" in captured.err
    assert out.read_text().splitlines() == ["method,bicycle,bus,car,motorbike,person,mean",
                                            "JPEGImages,n/a,n/a,n/a,n/a,n/a,n/a"]
    assert run_cli(["detect-eval", str(root / "JPEGImages"), "--annotations", str(tmp_path / "nope")]) == 2
    assert "no such folder" in capsys.readouterr().err


# --------------------------------------------------------------------------- class maps, splits, DAWN

def test_class_map_forms_and_errors(tmp_path):
    default = det.parse_class_map(None)
    assert default("Motorcycle ") == "motorbike" and default("car") == "car" and default("truck") is None
    pairs = det.parse_class_map("truck=car, Van = car")
    assert pairs("TRUCK") == "car" and pairs("van") == "car" and pairs("motorcycle") == "motorbike"
    assert det.parse_class_map("dawn").aliases == {"motorcycle": "motorbike", "truck": "car"}
    assert det.parse_class_map({"lorry": "car"})("lorry") == "car"
    plain, nested = tmp_path / "map.yaml", tmp_path / "nested.yml"
    plain.write_text("truck: car\nscooter: motorbike\n")
    nested.write_text("map:\n  truck: bus\n")
    assert det.parse_class_map(str(plain)).describe() == "motorcycle=motorbike, scooter=motorbike, truck=car"
    assert det.parse_class_map(nested)("truck") == "bus"
    with pytest.raises(det.ClassMapError, match="must be one of bicycle, bus, car, motorbike, person; got truck=lorry"):
        det.parse_class_map("truck=lorry")
    with pytest.raises(det.ClassMapError, match="'truck' is not NAME=CLASS"):
        det.parse_class_map("truck")
    with pytest.raises(det.ClassMapError, match="cannot read"):
        det.parse_class_map(str(tmp_path / "missing.yaml"))
    (tmp_path / "list.yaml").write_text("- truck\n- car\n")
    with pytest.raises(det.ClassMapError, match="expected a mapping"):
        det.parse_class_map(str(tmp_path / "list.yaml"))


def test_class_map_applies_to_the_detector_s_coco_names_too():
    from torchvision.models import get_model_weights

    cats = get_model_weights(det.DEFAULT_DETECTOR).COCO_V1.meta["categories"]
    assert det.coco_label_map() == det.COCO_TO_RTTS
    with_trucks = det.coco_label_map(det.parse_class_map("truck=car"))
    assert with_trucks == {**det.COCO_TO_RTTS, cats.index("truck"): "car"}


def test_read_split(tmp_path):
    split = tmp_path / "test.txt"
    split.write_text("# held out\nYST_2.jpg\n\nAM_Bing_1   # trailing comment\n")
    assert det.read_split(split) == ["YST_2", "AM_Bing_1"]
    (tmp_path / "empty.txt").write_text("\n# nothing\n")
    with pytest.raises(det.AnnotationError, match="names no image"):
        det.read_split(tmp_path / "empty.txt")


def test_class_map_and_split_in_the_pipeline(tmp_path):
    """A truck in the ground truth and the detector's COCO truck both count as cars under truck=car; an
    image outside the split is skipped, a split name without XML is an error; unknown classes counted."""
    root = make_rtts(tmp_path / "RTTS")
    images, anns_dir = root / "JPEGImages", root / "Annotations"
    (anns_dir / "TRUCK_3.xml").write_text(voc_xml("TRUCK_3.png", (40, 40), [("truck", (1, 1, 20, 20), 0),
                                                                          ("dog", (21, 21, 30, 30), 0)]))
    Image.new("RGB", (40, 40)).save(images / "TRUCK_3.png")

    class TruckDetector(OracleDetector):
        def forward(self, images):
            out = []
            for x in images:
                if x.shape[1:] == (40, 40):  # TRUCK_3: COCO "truck" (8) exactly on the box
                    out.append({"boxes": torch.tensor([[0.0, 0.0, 20.0, 20.0]]), "labels": torch.tensor([8]),
                                "scores": torch.tensor([0.9])})
                else:
                    out += super().forward([x])
            return out

    split = tmp_path / "split.txt"
    split.write_text("TRUCK_3\nAM_Bing_1\nNOT_THERE\n")
    default = det.read_annotations(root, split=split)
    assert sorted(default.annotations) == ["AM_Bing_1", "TRUCK_3"] and default.split == {"TRUCK_3", "AM_Bing_1",
                                                                                       "NOT_THERE"}
    assert [p.name for p, _ in default.errors] == ["NOT_THERE.xml"]
    res = det.evaluate_folder(images, default, TruckDetector(), progress=False, log=lambda m: None)
    assert res.evaluated == 2 and res.outside_split == 1 and not res.unannotated  # YST_2 is outside
    assert res.ignored == {"truck": 1, "dog": 1}
    assert "2 box(es) of classes outside the class map" in res.summary() and "dog 1, truck 1" in res.summary()
    assert res.ap["car"] == pytest.approx(1.0)  # the truck is neither ground truth nor a detection here

    mapped = det.read_annotations(root, "truck=car", split)
    assert [b.label for b in mapped.annotations["TRUCK_3"].boxes] == ["car"] and mapped.ignored() == {"dog": 1}
    res = det.evaluate_folder(images, mapped, TruckDetector(), progress=False, log=lambda m: None)
    assert res.ignored == {"dog": 1} and res.ap["car"] == pytest.approx(1.0) and res.ap["motorbike"] == pytest.approx(1.0)
    # the same annotations with the detector's trucks dropped (the default label map): the truck-car is missed
    res = det.evaluate_folder(images, mapped, TruckDetector(), label_map=det.COCO_TO_RTTS, progress=False,
                              log=lambda m: None)
    assert res.ap["car"] == pytest.approx(51 / 101)
    with pytest.raises(ValueError, match="pass them to read_annotations"):
        det.evaluate_folders([images], mapped, model=TruckDetector(), class_map="dawn")


DAWN_FEW = ("foggy-037", "foggy-080", "haze-041", "mist-114")  # bus, truck, bicycle, motorcycle, person


def count_names(xml_files) -> dict[str, int]:
    """Object names of VOC files, counted straight from the XML (independent of corun.detection)."""
    import xml.etree.ElementTree as ET
    from collections import Counter

    return Counter(o.findtext("name").strip() for f in xml_files for o in ET.parse(f).getroot().iter("object"))


@pytest.mark.slow
def test_detect_eval_on_dawn_test_split(shared_dir, random_weights, tmp_path, capsys):
    """`corun detect-eval` on real fog: DAWN's test-split VOC files, a few images, a random detector."""
    dawn = shared_dir / "data" / "dawn_fog"
    if not (dawn / "test.txt").is_file():
        pytest.skip(f"DAWN fog test split not found at {dawn}")
    test_names = det.read_split(dawn / "test.txt")
    assert set(DAWN_FEW) <= set(test_names)  # evaluation images only, never the training split
    split = tmp_path / "few.txt"
    split.write_text("\n".join(DAWN_FEW) + "\n")
    xml = [dawn / "annotations" / f"{n}.xml" for n in DAWN_FEW]
    names = count_names(xml)
    assert set(names) == {"bicycle", "bus", "car", "motorcycle", "person", "truck"}

    # DAWN's own class names read directly: only truck is outside RTTS's five, and it is counted
    plain = det.read_annotations(dawn / "annotations", split=split)
    assert plain.ignored() == {"truck": names["truck"]}
    mapped = det.read_annotations(dawn / "annotations", "dawn", split)
    got = {c: sum(b.label == c for a in mapped.annotations.values() for b in a.boxes) for c in det.CLASSES}
    assert got == {"bicycle": names["bicycle"], "bus": names["bus"], "car": names["car"] + names["truck"],
                   "motorbike": names["motorcycle"], "person": names["person"]}
    assert mapped.ignored() == {}

    out = tmp_path / "table3_dawn.csv"
    code = run_cli(["detect-eval", str(dawn / "images"), "--annotations", str(dawn / "annotations"),
                    "--split", str(split), "--class-map", "truck=car,motorcycle=motorbike", "--names", "hazy",
                    "--weights", str(random_weights), "--detector", TINY, "--min-size", "64",
                    "--device", "cpu", "-o", str(out), "-q"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert f"evaluated {len(DAWN_FEW)} image(s)" in err
    assert f"{len(set(test_names) - set(DAWN_FEW)) + 240} image(s) outside the split, skipped" in err
    assert "class map motorcycle=motorbike, truck=car" in err and "outside the class map" not in err
    df = pd.read_csv(out, index_col="method")
    assert list(df.index) == ["hazy"] and list(df.columns) == list(det.COLUMNS)
    assert df.loc["hazy"].between(0, 1).all()  # every class has objects in these four images

    # without the truck map, the report names and counts the trucks instead of dropping them silently
    code = run_cli(["detect-eval", str(dawn / "images"), "--annotations", str(dawn / "annotations"),
                    "--split", str(split), "--weights", str(random_weights), "--detector", TINY,
                    "--min-size", "64", "--device", "cpu", "-o", str(tmp_path / "plain.csv"), "-q"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert f"are not evaluated: truck {names['truck']}" in err
    assert f"{names['truck']} box(es) of classes outside the class map, not evaluated: truck {names['truck']}" in err
