"""Downstream detection on RTTS (paper Table 3): per-class AP of a COCO detector before and after dehazing.

What is measured
----------------
A detector trained on COCO (torchvision Faster R-CNN, RetinaNet or FCOS) runs on every image of a folder
(the hazy RTTS photos, or a dehazer's outputs with the same file stems). Its COCO labels are mapped to
RTTS's five classes (:data:`COCO_TO_RTTS`: person, bicycle, car, motorcycle → ``motorbike``, bus; by
default all other COCO classes, truck included, are dropped, see *Class maps* below) and scored against
RTTS's Pascal-VOC annotations (``Annotations/NAME.xml``) with average precision at IoU 0.5, per class,
plus their mean.

How AP is computed (the VOC details, decided here)
--------------------------------------------------
The matching and the precision/recall accumulation are pycocotools' ``COCOeval`` (bbox), configured as
one IoU threshold (0.5), one area range (all sizes) and no cap on detections per image:

* **difficult objects are ignored**, as in the VOC devkit: they count neither as ground truth (missing
  them does not lower recall) nor do detections that match them count as false positives; several
  detections may match one difficult box. This uses COCOeval's ignore mechanism (``iscrowd=1``) but with
  plain IoU for every box (:class:`_VOCStyleEval`); torchmetrics' ``MeanAveragePrecision`` marks such
  boxes ``iscrowd`` too but then measures overlap as intersection over the *detection's* area, so a small
  false box inside a large difficult one would be forgiven - not VOC's rule, hence pycocotools directly.
* **interpolation: COCO's 101-point**: precision is made monotone (the maximum at any higher recall),
  sampled at recall 0, 0.01, ..., 1 (0 beyond the highest recall reached) and averaged. This is what
  torchmetrics reports as ``map_50``. VOC2010+ integrates the same monotone curve exactly ("all-point");
  the two differ by at most about 1/101 per class. Worked example (two cars, detections ranked
  TP, FP, TP): all-point AP = 0.5·1 + 0.5·2/3 = 0.8333, 101-point AP = (51·1 + 50·2/3)/101 = 0.8350.
* a detection matches at IoU ≥ 0.5 (VOC: > 0.5); it goes to the best-overlapping *unmatched* non-difficult
  box, else a difficult one (VOC: to the best-overlapping box, a false positive if that one is taken);
* boxes are in continuous pixel coordinates: VOC's 1-based inclusive ``xmin..xmax`` becomes
  ``[xmin - 1, xmax]`` (as Detectron2 does), which is what torchvision detectors predict; no VOC "+1".

A class with no (non-difficult) object among the evaluated images has AP ``NaN`` (shown ``n/a``) and is
left out of the mean. Images are evaluated only when they have both a readable image and an annotation;
annotated images absent from the folder are listed, not counted as misses.

Class maps and other datasets
-----------------------------
The table's classes are always RTTS's five. A :class:`ClassMap` says how other names become them, on both
sides: the class names in the XML files and the detector's COCO category names (compared lower-case). The
default maps ``motorcycle`` onto ``motorbike`` only. Any other Pascal-VOC dataset works with a map, e.g.
DAWN (Kenk & Hassaballah 2020: car, bus, truck, motorcycle, bicycle, person) with ``truck=car``
(preset ``dawn``): its trucks count as cars, and so do the detector's COCO ``truck`` boxes. Boxes of a
class the map does not cover are not evaluated and are *counted* per class (``FolderResult.ignored``, one
``note:`` line), never silently dropped. A split file (one image name per line, e.g. DAWN's ``test.txt``)
restricts the evaluation to the images it names (:func:`read_annotations` ``split=``).

Detector weights
----------------
torchvision keeps COCO weights in ``$TORCH_HOME/hub/checkpoints/`` (default ``~/.cache/torch``). Nothing
is downloaded unless asked (``download=True`` / ``--download``): without the cached file
:func:`build_detector` raises :class:`DetectorUnavailable` naming the URL and the path to put it at, and
the table gets ``n/a`` cells. A local file (``weights=PATH``, a state dict for the named architecture with
COCO's 91-label head, e.g. torchvision's file fetched by hand) is loaded instead of the cache.

The paper does not name its detector, so absolute numbers differ from its Table 3 (0.50 hazy → 0.57
CORUN+Colabator mean AP); compare methods within one run of this module.
"""
from __future__ import annotations

import contextlib
import io
import math
import os
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Mapping, Sequence
from urllib.parse import urlparse

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:
    import pandas as pd

#: RTTS's five classes, in the column order of the paper's Table 3.
CLASSES = ("bicycle", "bus", "car", "motorbike", "person")
#: Other spellings accepted in annotation files (compared after ``strip().lower()``).
CLASS_ALIASES = {"motorcycle": "motorbike"}
#: Named class maps for ``--class-map``: extra aliases on top of :data:`CLASS_ALIASES`.
CLASS_MAP_PRESETS = {"rtts": {}, "dawn": {"truck": "car"}}
#: Suffixes stripped from names in a split file (``foggy-003.jpg`` and ``foggy-003`` are the same image).
_NAME_SUFFIXES = (".xml", ".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
#: torchvision's COCO label index (0 = background, 91 entries) → RTTS class; other labels are dropped.
COCO_TO_RTTS = {1: "person", 2: "bicycle", 3: "car", 4: "motorbike", 6: "bus"}
IOU_THRESHOLD = 0.5
#: What a cell without a value shows in CSV files and :func:`format_table`.
NA = "n/a"
COLUMNS = CLASSES + ("mean",)

#: ``--detector`` choices: torchvision builders that take COCO_V1 weights and ``min_size``/``max_size``.
DETECTORS = (
    "fasterrcnn_resnet50_fpn",
    "fasterrcnn_resnet50_fpn_v2",
    "fasterrcnn_mobilenet_v3_large_fpn",
    "fasterrcnn_mobilenet_v3_large_320_fpn",
    "retinanet_resnet50_fpn",
    "retinanet_resnet50_fpn_v2",
    "fcos_resnet50_fpn",
)
DEFAULT_DETECTOR = "fasterrcnn_resnet50_fpn"

Box = tuple[float, float, float, float]  # x1, y1, x2, y2 in continuous pixel coordinates


class AnnotationError(ValueError):
    """An annotation file or folder cannot be used; the message names the file and the reason."""


class DetectorUnavailable(RuntimeError):
    """The detector's weights are not here (or do not fit); the message says what to fetch and where."""


# --------------------------------------------------------------------------- class maps

@dataclass(frozen=True)
class ClassMap:
    """Class names (of annotation files and of the detector's COCO categories) → the table's classes.

    A name is compared after ``strip().lower()``; it is one of :data:`CLASSES` itself, or ``aliases``
    maps it onto one, or it is *unknown* (``None``): its boxes are not evaluated, only counted.
    """

    aliases: Mapping[str, str] = field(default_factory=lambda: dict(CLASS_ALIASES))

    def __post_init__(self):
        clean = {k.strip().lower(): v.strip().lower() for k, v in self.aliases.items()}
        wrong = {k: v for k, v in clean.items() if v not in CLASSES}
        if wrong:
            raise ClassMapError("class map targets must be one of " + ", ".join(CLASSES) + "; got "
                                + ", ".join(f"{k}={v}" for k, v in wrong.items()))
        object.__setattr__(self, "aliases", clean)

    def __call__(self, name: str) -> str | None:
        name = name.strip().lower()
        name = self.aliases.get(name, name)
        return name if name in CLASSES else None

    def describe(self) -> str:
        """``motorcycle=motorbike, truck=car``: the aliases, for logs and table notes."""
        return ", ".join(f"{k}={v}" for k, v in sorted(self.aliases.items())) or "(none)"


class ClassMapError(ValueError):
    """A class map that cannot be used (a bad ``NAME=CLASS`` pair, a target outside RTTS's classes)."""


def _pairs(text: str) -> dict[str, str]:
    out = {}
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        name, sep, target = item.partition("=")
        if not sep or not name.strip() or not target.strip():
            raise ClassMapError(f"class map item {item!r} is not NAME=CLASS (e.g. truck=car)")
        out[name] = target
    return out


def parse_class_map(spec: str | os.PathLike | Mapping[str, str] | ClassMap | None = None) -> ClassMap:
    """A :class:`ClassMap` from ``None`` (the default), a preset name (``rtts``, ``dawn``), pairs
    ``"truck=car,motorcycle=motorbike"``, a mapping ``{"truck": "car"}``, or a YAML/JSON file holding such
    a mapping (at its top level or under ``map:``). Given aliases are added to :data:`CLASS_ALIASES`."""
    if isinstance(spec, ClassMap):
        return spec
    if spec is None or (isinstance(spec, str) and not spec.strip()):
        extra: Mapping[str, str] = {}
    elif isinstance(spec, Mapping):
        extra = spec
    elif isinstance(spec, str) and spec.strip().lower() in CLASS_MAP_PRESETS:
        extra = CLASS_MAP_PRESETS[spec.strip().lower()]
    elif Path(spec).suffix.lower() in (".yaml", ".yml", ".json") or Path(spec).is_file():
        extra = _class_map_file(Path(spec))
    else:
        extra = _pairs(str(spec))
    return ClassMap({**CLASS_ALIASES, **{str(k): str(v) for k, v in extra.items()}})


def _class_map_file(path: Path) -> dict[str, str]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ClassMapError(f"{path}: cannot read the class map ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        raise ClassMapError(f"{path}: not YAML ({exc})") from None
    if isinstance(data, Mapping) and isinstance(data.get("map"), Mapping):
        data = data["map"]
    if not isinstance(data, Mapping) or not all(isinstance(v, str) for v in data.values()):
        raise ClassMapError(f"{path}: expected a mapping NAME: CLASS (or map: {{NAME: CLASS}})")
    return {str(k): v for k, v in data.items()}


def coco_label_map(class_map: ClassMap | None = None, detector: str = DEFAULT_DETECTOR) -> dict[int, str]:
    """torchvision's COCO label index → table class under ``class_map`` (the default gives
    :data:`COCO_TO_RTTS`); COCO categories the map does not cover are left out."""
    from torchvision.models import get_model_weights

    class_map = class_map or ClassMap()
    categories = get_model_weights(detector).COCO_V1.meta["categories"]
    return {i: c for i, c in ((i, class_map(name)) for i, name in enumerate(categories)) if c is not None}


def read_split(path: str | os.PathLike) -> list[str]:
    """Image names of a split file, one a line (``#`` comments and blank lines skipped; an image or XML
    suffix is dropped, so ``foggy-003.jpg`` and ``foggy-003`` are the same)."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise AnnotationError(f"{path}: cannot read the split file ({exc.strerror or exc})") from None
    names = []
    for line in lines:
        name = line.split("#", 1)[0].strip()
        if name:
            names.append(name[: -len(Path(name).suffix)] if Path(name).suffix.lower() in _NAME_SUFFIXES else name)
    if not names:
        raise AnnotationError(f"{path}: the split file names no image")
    return names


# --------------------------------------------------------------------------- annotations

@dataclass(frozen=True)
class GroundTruthBox:
    label: str
    box: Box
    difficult: bool = False


@dataclass(frozen=True)
class Detection:
    label: str
    box: Box
    score: float


@dataclass
class Annotation:
    """One VOC XML file: ``key`` is the XML file's stem, which images are matched on."""

    key: str
    path: Path
    filename: str | None
    size: tuple[int, int] | None  # (width, height) when the file states it
    boxes: list[GroundTruthBox] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    ignored: Counter = field(default_factory=Counter)  # boxes per class name outside the class map


@dataclass
class AnnotationSet:
    """All usable annotation files of a folder, and one message per file that was not usable.

    ``split``: the image names a split file restricted the set to (``None``: every XML file).
    """

    folder: Path
    annotations: dict[str, Annotation] = field(default_factory=dict)
    errors: list[tuple[Path, str]] = field(default_factory=list)
    class_map: ClassMap = field(default_factory=ClassMap)
    split: frozenset[str] | None = None

    @property
    def notes(self) -> list[str]:
        return [n for a in self.annotations.values() for n in a.notes]

    def ignored(self, keys: Iterable[str] | None = None) -> Counter:
        """Boxes per class name outside the class map, over ``keys`` (default: every annotation)."""
        keys = self.annotations if keys is None else keys
        return sum((self.annotations[k].ignored for k in keys), Counter())

    def ground_truth(self, keys: Iterable[str] | None = None) -> dict[str, list[GroundTruthBox]]:
        keys = self.annotations if keys is None else keys
        return {k: list(self.annotations[k].boxes) for k in keys}


def normalize_class(name: str) -> str:
    """A class name as the default :class:`ClassMap` compares it (``strip().lower()``, then aliases)."""
    name = name.strip().lower()
    return CLASS_ALIASES.get(name, name)


def format_ignored(counts: Mapping[str, int]) -> str:
    """``truck 154, dog 2`` (most frequent first)."""
    return ", ".join(f"{name} {n}" for name, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _number(obj: ET.Element, tag: str, path: Path) -> float:
    text = obj.findtext(tag)
    try:
        return float(text)
    except (TypeError, ValueError):
        raise AnnotationError(f"{path}: <{tag}> is {text!r}, not a number") from None


def _flag(text: str | None) -> bool:
    """VOC's ``<difficult>``: ``0``/``1`` (also ``0.0``, ``true``); missing or empty means not difficult."""
    text = (text or "").strip().lower()
    try:
        return float(text or 0) != 0
    except ValueError:
        return text in ("true", "yes")


def parse_voc_xml(path: str | os.PathLike, class_map: ClassMap | None = None) -> Annotation:
    """Read one Pascal-VOC annotation file.

    Class names go through ``class_map`` (default :class:`ClassMap`: case- and space-insensitive,
    ``motorcycle`` read as ``motorbike``); objects of a class outside it are counted in ``ignored`` by
    name, objects without a usable ``<bndbox>`` are left out with a line in ``notes``. ``<difficult>``
    missing means 0. Boxes become continuous coordinates ``(xmin-1, ymin-1, xmax, ymax)``.
    Raises :class:`AnnotationError` when the file is not a VOC annotation at all.
    """
    class_map = class_map or ClassMap()
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise AnnotationError(f"{path}: not valid XML ({exc})") from None
    except OSError as exc:
        raise AnnotationError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if root.tag != "annotation":
        raise AnnotationError(f"{path}: root element is <{root.tag}>, not a VOC <annotation>")
    size = None
    if root.find("size") is not None:
        with contextlib.suppress(AnnotationError):
            size = (int(_number(root.find("size"), "width", path)), int(_number(root.find("size"), "height", path)))
    ann = Annotation(key=path.stem, path=path, filename=(root.findtext("filename") or "").strip() or None,
                     size=size)
    for i, obj in enumerate(root.findall("object")):
        raw = obj.findtext("name") or ""
        label = class_map(raw)
        if label is None:
            ann.ignored[raw.strip().lower() or "(no name)"] += 1
            continue
        bb = obj.find("bndbox")
        try:
            if bb is None:
                raise AnnotationError(f"{path}: object {i} has no <bndbox>")
            x1, y1, x2, y2 = (_number(bb, t, path) for t in ("xmin", "ymin", "xmax", "ymax"))
        except AnnotationError as exc:
            ann.notes.append(f"{exc}; object ignored")
            continue
        if x2 < x1 or y2 < y1:
            ann.notes.append(f"{path.name}: object {i} ({label}) has xmax < xmin or ymax < ymin; ignored")
            continue
        ann.boxes.append(GroundTruthBox(label, (x1 - 1.0, y1 - 1.0, x2, y2), _flag(obj.findtext("difficult"))))
    return ann


def annotation_folder(path: str | os.PathLike) -> Path:
    """``path`` itself if it holds ``*.xml``, else its ``Annotations/`` (so the RTTS root works too)."""
    path = Path(path)
    if not path.is_dir():
        raise AnnotationError(f"{path}: no such folder")
    if not any(path.glob("*.xml")) and (path / "Annotations").is_dir():
        return path / "Annotations"
    return path


def read_annotations(path: str | os.PathLike, class_map: ClassMap | str | Mapping[str, str] | None = None,
                     split: str | os.PathLike | Iterable[str] | None = None) -> AnnotationSet:
    """Read every ``*.xml`` of an annotation folder (or of ``RTTS/Annotations``).

    ``class_map``: anything :func:`parse_class_map` takes. ``split``: a split file (:func:`read_split`)
    or image names; only their XML files are read, and a name without one is an entry in ``errors``.
    A file that cannot be parsed becomes an entry in ``errors`` and the rest are read; a folder without
    any XML raises :class:`AnnotationError`.
    """
    folder = annotation_folder(path)
    files = sorted(p for p in folder.glob("*.xml") if p.is_file())
    if not files:
        raise AnnotationError(f"{Path(path)}: no Pascal-VOC *.xml annotation files (nor an Annotations/ "
                              "folder holding them)")
    out = AnnotationSet(folder, class_map=parse_class_map(class_map))
    if split is not None:
        names = read_split(split) if isinstance(split, (str, os.PathLike)) else list(split)
        out.split = frozenset(names)
        by_stem = {p.stem: p for p in files}
        out.errors += [(folder / f"{n}.xml", "named by the split, but there is no such annotation file")
                       for n in names if n not in by_stem]
        files = [by_stem[n] for n in sorted(out.split) if n in by_stem]
    for p in files:
        try:
            out.annotations[p.stem] = parse_voc_xml(p, out.class_map)
        except AnnotationError as exc:
            out.errors.append((p, str(exc).removeprefix(f"{p}: ")))
    return out


# --------------------------------------------------------------------------- average precision

def _voc_style_eval_class():
    from pycocotools import mask as mask_utils
    from pycocotools.cocoeval import COCOeval

    class _VOCStyleEval(COCOeval):
        """COCOeval with plain IoU against every box; ``iscrowd=1`` only marks (difficult) boxes to ignore."""

        def computeIoU(self, imgId, catId):
            gt, dt = self._gts[imgId, catId], self._dts[imgId, catId]
            if not gt and not dt:
                return []
            order = np.argsort([-d["score"] for d in dt], kind="mergesort")  # the order evaluateImg uses
            dt = [dt[i] for i in order][: self.params.maxDets[-1]]
            return mask_utils.iou([d["bbox"] for d in dt], [g["bbox"] for g in gt], [0] * len(gt))

    return _VOCStyleEval


def _xywh(box: Box) -> list[float]:
    x1, y1, x2, y2 = (float(v) for v in box)
    return [x1, y1, max(x2 - x1, 0.0), max(y2 - y1, 0.0)]


def _coco(images: list[dict], categories: list[dict], annotations: list[dict]):
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = {"images": images, "categories": categories, "annotations": annotations}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def compute_ap(ground_truth: Mapping[str, Sequence[GroundTruthBox]],
               detections: Mapping[str, Sequence[Detection]],
               classes: Sequence[str] = CLASSES, iou_threshold: float = IOU_THRESHOLD) -> dict[str, float]:
    """Per-class AP at ``iou_threshold`` and their ``mean`` (see the module docstring for the rules).

    ``ground_truth`` maps every evaluated image (any hashable key, e.g. the file stem) to its boxes, an
    empty list for an image without objects; ``detections`` maps images to detections (missing = none).
    Returns ``{class: AP, ..., "mean": mAP}``; AP is ``NaN`` for a class without non-difficult objects,
    and the mean is over the classes that have a value.
    """
    extra = [k for k in detections if k not in ground_truth]
    if extra:
        raise ValueError(f"detections for images without ground truth: {extra[:5]}")
    result = {c: math.nan for c in classes}
    if ground_truth:
        cat = {c: i + 1 for i, c in enumerate(classes)}
        img = {k: i + 1 for i, k in enumerate(ground_truth)}
        images = [{"id": i} for i in img.values()]
        categories = [{"id": i, "name": c} for c, i in cat.items()]
        gts, dts = [], []  # pycocotools needs ids > 0
        for key, boxes in ground_truth.items():
            for b in boxes:
                if b.label in cat:
                    xywh = _xywh(b.box)
                    gts.append({"id": len(gts) + 1, "image_id": img[key], "category_id": cat[b.label],
                                "bbox": xywh, "area": xywh[2] * xywh[3], "iscrowd": int(b.difficult)})
        for key, dets in detections.items():
            for d in dets:
                if d.label in cat:
                    xywh = _xywh(d.box)
                    dts.append({"id": len(dts) + 1, "image_id": img[key], "category_id": cat[d.label],
                                "bbox": xywh, "area": xywh[2] * xywh[3], "score": float(d.score)})
        result.update(_run_cocoeval(_coco(images, categories, gts), _coco(images, categories, dts),
                                    classes, iou_threshold))
    values = [v for v in result.values() if not math.isnan(v)]
    result["mean"] = math.fsum(values) / len(values) if values else math.nan
    return result


def _run_cocoeval(coco_gt, coco_dt, classes: Sequence[str], iou_threshold: float) -> dict[str, float]:
    ev = _voc_style_eval_class()(coco_gt, coco_dt, iouType="bbox")
    p = ev.params
    p.iouThrs = np.array([iou_threshold])
    p.areaRng, p.areaRngLbl = [[0.0, 1e12]], ["all"]
    p.maxDets = [1_000_000]  # VOC has no per-image cap (torchvision detectors return at most 100 anyway)
    with contextlib.redirect_stdout(io.StringIO()):
        ev.evaluate()
        ev.accumulate()
    precision = ev.eval["precision"]  # (iou, recall, class, area, maxdets); -1 where a class has no GT
    out = {}
    for k, c in enumerate(classes):
        curve = precision[0, :, k, 0, 0]
        out[c] = math.fsum(curve.tolist()) / len(curve) if (curve > -1).all() else math.nan
    return out


# --------------------------------------------------------------------------- detectors

def weights_url(name: str) -> str:
    """Where torchvision fetches the COCO weights of detector ``name``."""
    return _weights_enum(name).url


def cached_weights_path(name: str) -> Path:
    """Where torchvision keeps (and looks for) the COCO weights of ``name``: ``$TORCH_HOME/hub/checkpoints``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights_url(name)).path)


def _weights_enum(name: str):
    from torchvision.models import get_model_weights

    if name not in DETECTORS:
        raise ValueError(f"unknown detector {name!r}; choose one of {', '.join(DETECTORS)}")
    return get_model_weights(name).COCO_V1


def missing_weights_message(name: str) -> str:
    url, path = weights_url(name), cached_weights_path(name)
    return (f"no COCO weights for detector {name}: {path} does not exist (nothing is downloaded unless "
            f"asked).\n  Either rerun with --download (download=True) to fetch {url} ({_size_mb(name)}),\n"
            f"  or fetch it yourself and put it at {path} or pass --weights PATH (weights=PATH).")


def _size_mb(name: str) -> str:
    size = _weights_enum(name).meta.get("_file_size")
    return f"{size:.0f} MB" if size else "size unknown"


def build_detector(name: str = DEFAULT_DETECTOR, weights: str | os.PathLike | None = None, *,
                   download: bool = False, **model_kwargs) -> nn.Module:
    """A torchvision COCO detector in eval mode, on the CPU.

    ``weights=None`` uses torchvision's COCO_V1 weights from the torch hub cache (see
    :func:`cached_weights_path`), downloading them only when ``download`` is true; otherwise
    :class:`DetectorUnavailable` says what to fetch. ``weights=PATH`` loads that state dict (a bare dict,
    or one under ``model`` / ``state_dict``; ``module.`` prefixes stripped) into the architecture ``name``
    with COCO's 91 labels. ``model_kwargs`` go to the builder (e.g. ``min_size=512``, ``box_score_thresh``).
    """
    from torchvision.models import get_model_builder

    enum = _weights_enum(name)
    builder = get_model_builder(name)
    if weights is not None:
        model = builder(weights=None, weights_backbone=None, num_classes=len(enum.meta["categories"]),
                        **model_kwargs)
        _load_local_weights(model, Path(weights), name)
    else:
        path = cached_weights_path(name)
        if not path.is_file() and not download:
            raise DetectorUnavailable(missing_weights_message(name))
        try:
            model = builder(weights=enum, **model_kwargs)
        except Exception as exc:  # network, or a damaged cache file: say which
            where = f"the cached file {path} is damaged (delete it and retry)" if path.is_file() else \
                f"downloading {enum.url} failed"
            raise DetectorUnavailable(f"detector {name}: {where}: {type(exc).__name__}: {exc}") from exc
    return model.eval()


def _load_local_weights(model: nn.Module, path: Path, name: str) -> None:
    from .checkpoint import CheckpointError, read_state_dict

    try:
        sd, _ = read_state_dict(path, prefer="model")
    except CheckpointError as exc:
        raise DetectorUnavailable(str(exc)) from None
    own = model.state_dict()
    # BatchNorm fills a missing num_batches_tracked itself (torchvision's COCO files use frozen BN)
    missing = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in sd and sd[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        lines = [f"{path}: weights do not fit detector {name} with COCO's 91 labels"]
        for what, items in (("missing keys", missing), ("unexpected keys", unexpected),
                            ("shape mismatches", shapes)):
            if items:
                lines.append(f"  {what} ({len(items)}): {', '.join(items[:5])}" + (" ..." if len(items) > 5 else ""))
        raise DetectorUnavailable("\n".join(lines))
    model.load_state_dict(sd, strict=False)


def detections_from_output(output: Mapping[str, torch.Tensor],
                           label_map: Mapping[int, str] = COCO_TO_RTTS) -> list[Detection]:
    """A torchvision detector's per-image output (``boxes`` xyxy, ``labels``, ``scores``) → RTTS detections."""
    boxes = output["boxes"].detach().float().cpu().tolist()
    labels = output["labels"].detach().cpu().tolist()
    scores = output["scores"].detach().float().cpu().tolist()
    return [Detection(label_map[lab], tuple(b), s) for b, lab, s in zip(boxes, labels, scores)
            if lab in label_map]


@torch.inference_mode()
def detect_image(model: nn.Module, image: np.ndarray, device: torch.device | str = "cpu",
                 label_map: Mapping[int, str] = COCO_TO_RTTS) -> list[Detection]:
    """Run ``model`` on one float RGB image (H, W, 3) in [0, 1] (as :func:`corun.imageio.read_image` gives)."""
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).to(device)
    return detections_from_output(model([x])[0], label_map)


# --------------------------------------------------------------------------- folders and the table

@dataclass
class FolderResult:
    """AP of one folder (one row of the table) and everything that went wrong on the way."""

    name: str
    folder: Path
    ap: dict[str, float] = field(default_factory=lambda: {c: math.nan for c in COLUMNS})
    evaluated: int = 0
    failed: list[tuple[Path, str]] = field(default_factory=list)  # unreadable images, detector errors
    unannotated: list[Path] = field(default_factory=list)  # images without an annotation file
    missing: list[str] = field(default_factory=list)  # annotated images not in the folder
    notes: list[tuple[Path, str]] = field(default_factory=list)  # e.g. image conversions
    reason: str | None = None  # why the whole row is n/a
    ignored: Counter = field(default_factory=Counter)  # boxes of the evaluated images outside the class map
    outside_split: int = 0  # images of the folder that the split leaves out

    @property
    def ok(self) -> bool:
        return self.reason is None and not self.failed

    def summary(self) -> str:
        if self.reason:
            return f"{self.name}: n/a ({self.reason.splitlines()[0]})"
        line = f"{self.name}: evaluated {self.evaluated} image(s), mean AP {_fmt(self.ap['mean'])}"
        lines = [line]
        if self.failed:
            lines[0] += f", {len(self.failed)} failed:"
            lines += [f"  {p}: {r}" for p, r in self.failed]
        if self.unannotated:
            shown = ", ".join(p.name for p in self.unannotated[:10])
            lines.append(f"  {len(self.unannotated)} image(s) without annotation XML, not evaluated: {shown}"
                         + (" ..." if len(self.unannotated) > 10 else ""))
        if self.missing:
            shown = ", ".join(self.missing[:10])
            lines.append(f"  {len(self.missing)} annotated image(s) not in {self.folder}, not evaluated: "
                         f"{shown}" + (" ..." if len(self.missing) > 10 else ""))
        if self.ignored:
            lines.append(f"  {sum(self.ignored.values())} box(es) of classes outside the class map, not "
                         f"evaluated: {format_ignored(self.ignored)} (map them with --class-map NAME=CLASS)")
        if self.outside_split:
            lines.append(f"  {self.outside_split} image(s) outside the split, skipped")
        return "\n".join(lines)


def _fmt(value: float, digits: int = 3) -> str:
    return NA if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _stderr(msg: str) -> None:
    from tqdm import tqdm

    tqdm.write(msg, file=sys.stderr)  # keeps a running progress bar intact


def evaluate_folder(images_dir: str | os.PathLike, annotations: AnnotationSet, model: nn.Module, *,
                    name: str | None = None, device: torch.device | str = "cpu",
                    label_map: Mapping[int, str] | None = None, progress: bool = True,
                    log: Callable[[str], None] | None = None) -> FolderResult:
    """Detect on every image of ``images_dir`` that has an annotation and compute per-class AP.

    Images are matched to annotation files by file stem (``NAME.png`` ↔ ``NAME.xml``); with a split,
    images it does not name are skipped (counted). An image that cannot be read or detected on is
    reported in ``failed`` (one line, via ``log`` too) and the rest go on; it is then not evaluated.
    ``model`` must be in eval mode and already on ``device``. ``label_map`` (detector label → class)
    defaults to :func:`coco_label_map` under the annotations' class map.
    """
    if label_map is None:
        label_map = coco_label_map(annotations.class_map)
    from tqdm import tqdm

    from .imageio import ImageReadError, collect_images, read_image

    log = log or _stderr
    folder = Path(images_dir)
    result = FolderResult(name or folder.name, folder)
    scan = collect_images([folder])
    if scan.errors:
        result.reason = "; ".join(f"{p}: {r}" for p, r in scan.errors)
        return result
    todo, seen = [], set()
    for path in scan.files:
        if annotations.split is not None and path.stem not in annotations.split:
            result.outside_split += 1
        elif path.stem not in annotations.annotations:
            result.unannotated.append(path)
        elif path.stem in seen:
            result.failed.append((path, f"another image with stem {path.stem!r} was already evaluated"))
        else:
            seen.add(path.stem)
            todo.append(path)
    result.missing = sorted(set(annotations.annotations) - seen)
    if not todo:
        result.reason = f"no image in {folder} has an annotation file in {annotations.folder}"
        return result
    detections: dict[str, list[Detection]] = {}
    for path in tqdm(todo, desc=result.name, unit="img", disable=not progress):
        try:
            image, notes = read_image(path)
            result.notes += [(path, n) for n in notes]
            detections[path.stem] = detect_image(model, image, device, label_map)
        except ImageReadError as exc:
            result.failed.append((path, str(exc).removeprefix(f"{path}: ")))
            log(f"error: {exc}")
        except RuntimeError as exc:  # e.g. out of memory on a huge image
            reason = f"detector failed ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
            result.failed.append((path, reason))
            log(f"error: {path}: {reason}")
    result.evaluated = len(detections)
    result.ignored = annotations.ignored(detections)
    if not detections:
        result.reason = "no image could be evaluated"
        return result
    result.ap = compute_ap(annotations.ground_truth(detections), detections)
    return result


def row_names(folders: Sequence[str | os.PathLike], names: Sequence[str] | None = None) -> list[str]:
    """Row label per folder: ``names`` if given, else the folder name (the path where names repeat)."""
    if names is not None:
        if len(names) != len(folders):
            raise ValueError(f"{len(names)} name(s) for {len(folders)} folder(s)")
        return list(names)
    base = [Path(f).name or str(f) for f in folders]
    return [b if base.count(b) == 1 else str(f) for b, f in zip(base, folders)]


def unavailable_results(folders: Sequence[str | os.PathLike], reason: str,
                        names: Sequence[str] | None = None) -> list[FolderResult]:
    """One all-``n/a`` row per folder, e.g. when the detector's weights are absent."""
    return [FolderResult(n, Path(f), reason=reason) for n, f in zip(row_names(folders, names), folders)]


def evaluate_folders(folders: Sequence[str | os.PathLike] | Mapping[str, str | os.PathLike],
                     annotations: str | os.PathLike | AnnotationSet, *, detector: str = DEFAULT_DETECTOR,
                     weights: str | os.PathLike | None = None, download: bool = False,
                     model: nn.Module | None = None, device: str | torch.device = "auto",
                     model_kwargs: Mapping | None = None, progress: bool = True,
                     log: Callable[[str], None] | None = None,
                     class_map: ClassMap | str | Mapping[str, str] | None = None,
                     split: str | os.PathLike | Iterable[str] | None = None) -> list[FolderResult]:
    """Evaluate each folder (a list, or ``{row name: folder}``) with one detector; see :func:`detection_table`."""
    from .utils import resolve_device

    log = log or _stderr
    names = list(folders) if isinstance(folders, Mapping) else None
    paths = [Path(p) for p in (folders.values() if isinstance(folders, Mapping) else folders)]
    if isinstance(annotations, AnnotationSet):
        if class_map is not None or split is not None:
            raise ValueError("class_map and split are read with the annotations: pass them to read_annotations")
        ann = annotations
    else:
        ann = read_annotations(annotations, class_map, split)
    for p, reason in ann.errors:
        log(f"error: {p}: {reason}")
    for note in ann.notes:
        log(f"note: {note}")
    if ann.ignored():
        log(f"note: {ann.folder}: boxes of classes outside the class map ({ann.class_map.describe()}) are "
            f"not evaluated: {format_ignored(ann.ignored())}")
    dev = resolve_device(device)
    if model is None:
        try:
            model = build_detector(detector, weights, download=download, **dict(model_kwargs or {}))
        except DetectorUnavailable as exc:
            log(f"error: {exc}")
            return unavailable_results(paths, str(exc), names)
    model = model.to(dev).eval()
    results = []
    for name, path in zip(row_names(paths, names), paths):
        res = evaluate_folder(path, ann, model, name=name, device=dev, progress=progress, log=log)
        log(res.summary())
        results.append(res)
    return results


def results_table(results: Sequence[FolderResult]) -> pd.DataFrame:
    """One row per folder (index ``method``), columns bicycle, bus, car, motorbike, person, mean.

    Cells are floats in [0, 1]; ``NaN`` where there is no value (write or show it as ``n/a`` with
    :func:`write_table_csv` / :func:`format_table`). ``df.attrs`` keeps ``images`` (evaluated per row),
    ``reasons`` (why a row is n/a) and ``ignored`` (per row, boxes per class outside the class map).
    """
    import pandas as pd

    df = pd.DataFrame([[r.ap.get(c, math.nan) for c in COLUMNS] for r in results],
                      index=pd.Index([r.name for r in results], name="method"), columns=list(COLUMNS),
                      dtype=float)
    df.attrs["images"] = {r.name: r.evaluated for r in results}
    df.attrs["reasons"] = {r.name: r.reason for r in results if r.reason}
    df.attrs["ignored"] = {r.name: dict(r.ignored) for r in results if r.ignored}
    return df


def detection_table(folders: Sequence[str | os.PathLike] | Mapping[str, str | os.PathLike],
                    annotations: str | os.PathLike | AnnotationSet, **kwargs) -> pd.DataFrame:
    """Table 3 for your own folders: per-class AP@0.5 on RTTS for each folder of images.

    ``folders``: e.g. ``{"hazy": "RTTS/JPEGImages", "CORUN+Colabator": "out/rtts"}`` or a list (rows are
    then named after the folders). ``annotations``: RTTS's ``Annotations/`` folder or the RTTS root, or
    any folder of Pascal-VOC XML files. Keyword arguments as :func:`evaluate_folders`: ``detector`` (one
    of :data:`DETECTORS`), ``weights`` (local state dict), ``download``, ``model`` (a ready
    torchvision-style detector), ``device``, ``model_kwargs``, ``progress``, ``log``, ``class_map``
    (e.g. ``"dawn"`` or ``{"truck": "car"}``, see :func:`parse_class_map`) and ``split`` (a split file
    or image names). Without detector weights the rows are all ``NaN`` (``n/a``)
    and the reason is logged and kept in ``df.attrs["reasons"]``.
    """
    return results_table(evaluate_folders(folders, annotations, **kwargs))


def format_table(df: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """The table as strings with ``digits`` decimals and ``n/a`` for missing values (for printing)."""
    return df.apply(lambda col: col.map(lambda v: _fmt(v, digits)))


def write_table_csv(df: pd.DataFrame, path: str | os.PathLike, digits: int = 4) -> Path:
    """Write the table atomically; missing values are written ``n/a`` (pandas reads them back as NaN)."""
    from .utils import atomic_write

    text = df.to_csv(na_rep=NA, float_format=f"%.{digits}f")
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))
