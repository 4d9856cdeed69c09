"""Metric tables and figures of the paper's comparisons (notebooks 05 and 06).

Methods (one row per method in every CSV, one column per method in the paper-layout tables):

===================  ========================================================================================
``hazy``             the input photos themselves (no copy)
``dcp``              dark channel prior (He et al. 2009, :func:`corun.physics.dcp_dehaze`), computed here
``corun_pretrain``   the latest checkpoint of ``runs/<profile>_pretrain`` (EMA weights)
``corun_colabator``  the latest checkpoint of ``runs/<profile>_colabator`` (EMA weights)
any other name       an external folder of results (e.g. another method's outputs on RTTS), matched by stem
===================  ========================================================================================

A method that cannot be evaluated (no checkpoint yet, a missing folder) keeps its row, with ``n/a`` in
every metric and the reason in ``notes``; a metric that cannot run (e.g. BRISQUE/NIMA without their weights,
see :mod:`corun.metrics`) is ``n/a`` with its reason. Never a silent zero.

Evaluation sets: ``real`` (no-reference FADE↓ / BRISQUE↓ / NIMA↑ and the structure score S↑ against the
hazy input: Table 1) and ``synthetic`` (PSNR↑ / SSIM↑ against clean references); the paper profile adds
``fattal``. Smoke: ``data/mini/pseudo_real/hazy`` (*pseudo-real*: a synthetic degradation, labelled so, never
called real haze) and ``data/mini/test``; paper: RTTS, Fattal and a configurable paired set. Every *real
hazy set* the user has (``real_hazy={name: folder or {images, split, annotations, class_map}}``,
:func:`real_hazy_set`) is one more Table 1 block, restricted to a split file's photos when given; a set with
Pascal-VOC annotations (RTTS's, or a real hazy set's) also gets Table 3, detection AP (:func:`detection_blocks`).

Outputs under ``results/<profile>/``: ``dehazed/<set>/<method>/`` (existing outputs are kept while the
method's source — the checkpoint's weights, the DCP code — is unchanged; a ``.corun_source.json`` stamp records it),
``metrics_<set>.csv`` (one row per method: ``method``, one column per metric, ``n_images``, ``notes``),
``metrics_<set>_per_image.csv``, ``table1.md`` / ``table1.tex`` (paper layout, one block per set: rows FADE↓,
BRISQUE↓, NIMA↑, S↑, columns methods), ``table1_reported.csv``, ``table_<set>.md`` / ``.tex`` for the sets
outside Table 1, ``table3_<set>.csv`` and ``table3_detection.md`` / ``.tex`` for the annotated sets,
``inputs/<set>/`` (links to a split's photos) and ``tables_manifest.json`` (what was evaluated, from where).
Scores are cached in ``.metric_cache/``.

The paper's own numbers (:func:`reported_table1`) are kept in a separate object, file and table labelled
``reported``; they are never put in the same table as ``measured`` numbers.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .report import save_figure  # noqa: F401 - the figures of notebook 06 are saved with it
from .utils import ROOT, repo_path, sha256_file

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

METHODS = ("hazy", "dcp", "corun_pretrain", "corun_colabator")
METHOD_LABELS = {"hazy": "hazy input", "dcp": "DCP", "corun_pretrain": "CORUN (pretrain)",
                 "corun_colabator": "CORUN + Colabator", "ridcp": "RIDCP"}
REAL_METRICS = ("fade", "brisque", "nima")  #: the paper's Table 1 metrics (and its reported numbers)
#: Every Table 1 block: the paper's three and the structure score S against the hazy input
#: (:func:`corun.metrics.structure_score`; FADE and BRISQUE also reward invented texture)
TABLE1_METRICS = REAL_METRICS + ("structure",)
SYNTHETIC_METRICS = ("psnr", "ssim")
METRIC_NAMES = {"fade": "FADE", "brisque": "BRISQUE", "nima": "NIMA", "musiq": "MUSIQ", "niqe": "NIQE",
                "piqe": "PIQE", "psnr": "PSNR", "ssim": "SSIM", "structure": "S"}
#: What a Table 1 block's kind is called in the tables
KIND_LABELS = {"real": "real haze", "pseudo-real": "pseudo-real (a synthetic degradation, not real haze)"}
DIGITS = {"psnr": 2}
NA = "n/a"
STAMP = ".corun_source.json"
MANIFEST = "tables_manifest.json"

#: The paper's Table 1 on RTTS (Fang et al., NeurIPS 2024), for comparison only: never measured here.
REPORTED_SOURCE = "Fang et al., NeurIPS 2024 (CORUN + Colabator), Table 1"
REPORTED_DATASET = "RTTS (4,322 real hazy photos)"
REPORTED_TABLE1 = {
    "hazy": {"fade": 2.484, "brisque": 36.642, "nima": 4.483},
    "ridcp": {"fade": 0.944, "brisque": 17.293, "nima": 4.965},
    "corun_colabator": {"fade": 0.824, "brisque": 11.956, "nima": 5.342},
}


def _lower_better(metric: str) -> bool:
    from .metrics import lower_is_better

    return lower_is_better(metric)


def metric_label(metric: str, latex: bool = False) -> str:
    """``FADE↓`` / ``NIMA↑`` (LaTeX: ``FADE$\\downarrow$``)."""
    name = METRIC_NAMES.get(metric, metric.upper())
    if latex:
        return name + (r"$\downarrow$" if _lower_better(metric) else r"$\uparrow$")
    return name + ("↓" if _lower_better(metric) else "↑")


def fmt(value: Any, metric: str = "", digits: int | None = None) -> str:
    """A table cell: ``n/a`` for missing / non-finite values, else fixed decimals."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return NA
    if not math.isfinite(v):
        return NA
    return f"{v:.{digits if digits is not None else DIGITS.get(metric, 3)}f}"


def _shown(path: Path | str | None) -> str | None:
    if path is None:
        return None
    path = Path(path)
    try:
        return str(path.resolve().relative_to(ROOT.resolve()))
    except ValueError:
        return str(path)


# ---------------------------------------------------------------------------------------------- plan

@dataclass
class EvalSet:
    """A folder of hazy images to dehaze and score (``reference``: clean images with the same stems).

    ``kind``: ``real``, ``pseudo-real`` or ``synthetic``; ``table1``: the set is a block of Table 1 (None:
    the set named ``real``). A set restricted to a split: ``source`` is the user's folder, ``names`` the
    photos of it to use, and ``hazy`` a folder of links to them (made by :func:`link_inputs`).
    ``annotations`` (Pascal-VOC XML), with ``class_map`` and ``split``: Table 3 (detection AP) on the set.
    """

    name: str
    hazy: Path | None
    reference: Path | None
    metrics: tuple[str, ...]
    description: str = ""
    reason: str = ""  #: why the set is unavailable (non-empty: every row n/a)
    kind: str = ""
    table1: bool | None = None
    source: Path | None = None
    names: tuple[str, ...] | None = None
    split: Path | None = None
    annotations: Path | None = None
    class_map: Any = None
    comparable: bool = False  #: the set is the paper's (RTTS): Table 1 numbers comparable with the reported

    @property
    def available(self) -> bool:
        return not self.reason and self.hazy is not None

    @property
    def in_table1(self) -> bool:
        return self.name == "real" if self.table1 is None else self.table1


@dataclass
class Method:
    """A column of the tables. ``kind``: ``input`` (the hazy photos), ``dcp``, ``checkpoint``, ``folder``."""

    name: str
    kind: str
    checkpoint: Path | None = None
    folders: dict[str, Path] = field(default_factory=dict)
    description: str = ""
    reason: str = ""  #: why the method is n/a everywhere (non-empty)


@dataclass
class TablePlan:
    profile: str
    results_dir: Path
    sets: list[EvalSet]
    methods: list[Method]
    device: str = "auto"
    annotations: Path | None = None  #: VOC annotations of the ``real`` set (RTTS) unless it has its own
    metric_weights: dict[str, Path] = field(default_factory=dict)  #: e.g. ``{"brisque": PATH}``
    detector: str | None = None  #: Table 3's torchvision detector (None: corun.detection's default)
    detector_weights: Path | None = None  #: a local COCO state dict for it (None: torchvision's cache)
    detector_options: dict = field(default_factory=dict)  #: builder options, e.g. ``{"min_size": 512}``

    @property
    def dehazed_dir(self) -> Path:
        return self.results_dir / "dehazed"

    @property
    def cache_dir(self) -> Path:
        return self.results_dir / ".metric_cache"

    def set(self, name: str) -> EvalSet:
        for s in self.sets:
            if s.name == name:
                return s
        raise KeyError(f"no evaluation set {name!r} (have {[s.name for s in self.sets]})")


def checkpoint_method(name: str, source: Path | str | None, producer: str = "") -> Method:
    """A CORUN checkpoint method: ``source`` is a weights file or a run folder (its latest checkpoint)."""
    from .checkpoint import latest_checkpoint

    if source is None:
        return Method(name, "checkpoint", reason=f"no checkpoint given{'; ' + producer if producer else ''}")
    source = Path(source)
    if source.is_file():
        return Method(name, "checkpoint", checkpoint=source, description=f"weights {_shown(source)}")
    if source.suffix in (".pth", ".pt", ".safetensors"):
        return Method(name, "checkpoint", reason=f"weights file {_shown(source)} does not exist")
    ckpt = latest_checkpoint(source) if source.is_dir() else None
    if ckpt is None:
        return Method(name, "checkpoint", reason=f"no checkpoint in {_shown(source)}/checkpoints"
                      + (f" ({producer})" if producer else ""))
    return Method(name, "checkpoint", checkpoint=ckpt, description=f"latest checkpoint {_shown(ckpt)} (EMA)")


def external_methods(external: Mapping[str, Any] | None, default_set: str = "real") -> list[Method]:
    """Methods from folders of results: ``{name: folder}`` (for the ``real`` set) or
    ``{name: {set name: folder}}``."""
    out = []
    for name, value in (external or {}).items():
        if name in METHODS:
            raise ValueError(f"external method name {name!r} is taken by a built-in method")
        folders = {k: Path(v) for k, v in value.items()} if isinstance(value, Mapping) else {default_set: Path(value)}
        out.append(Method(name, "folder", folders=folders,
                          description="external results: " + ", ".join(f"{k}={_shown(v)}" for k, v in folders.items())))
    return out


def _producer_note(notebook: str, root: Path) -> str:
    present = (root / "notebooks" / notebook).is_file()
    return f"notebook {Path(notebook).stem} trains it" + ("" if present else "; that notebook is not present yet")


def _at_root(p: str | Path | None, root: Path) -> Path | None:
    """``p`` relative to the repository ``root`` unless absolute; None for None or ""."""
    return None if p in (None, "") else Path(p) if Path(p).is_absolute() else root / p


def _external_at_root(value: Any, root: Path) -> Any:
    return {s: _at_root(f, root) for s, f in value.items()} if isinstance(value, Mapping) else _at_root(value, root)


def smoke_sets(root: Path = ROOT) -> list[EvalSet]:
    """The smoke profile's sets: the mini dataset's pseudo-real photos (Table 1) and synthetic test pairs."""
    mini = root / "data" / "mini"
    missing = "" if (mini / "manifest.json").is_file() else f"{_shown(mini)} not built yet (notebook 01)"
    return [
        EvalSet("real", mini / "pseudo_real" / "hazy", None, TABLE1_METRICS,
                "mini dataset: pseudo-real photos, a synthetic degradation of clean photos (NOT real haze)",
                missing, kind="pseudo-real", table1=True),
        EvalSet("synthetic", mini / "test" / "hazy", mini / "test" / "clean", SYNTHETIC_METRICS,
                "mini dataset, synthetic test pairs (RIDCP haze synthesis)", missing, kind="synthetic"),
    ]


def _paper_real_set(name: str, path: Path | None, desc: str, **kw) -> EvalSet:
    from .reproduce import rtts_images

    metrics = kw.pop("metrics", REAL_METRICS)
    if path is None or not path.is_dir():
        return EvalSet(name, None, None, metrics, desc, f"{name}: {path or 'no path'} not found", kind="real", **kw)
    return EvalSet(name, rtts_images(path) if name == "real" else path, None, metrics, desc, kind="real", **kw)


def _paper_synthetic_set(syn: Path | None) -> EvalSet:
    if syn is None:
        return EvalSet("synthetic", None, None, SYNTHETIC_METRICS, "paired synthetic test set",
                       "no synthetic test set configured (datasets.synthetic_test / $CORUN_SYNTHETIC_TEST)",
                       kind="synthetic")
    ref = next((syn / d for d in ("clean", "GT", "gt") if (syn / d).is_dir()), syn / "clean")
    return EvalSet("synthetic", syn / "hazy", ref, SYNTHETIC_METRICS, f"paired test set {_shown(syn)}",
                   "" if (syn / "hazy").is_dir() and ref.is_dir() else f"{syn}: needs hazy/ and clean/",
                   kind="synthetic")


def paper_sets(datasets: Mapping[str, Path | None]) -> list[EvalSet]:
    """The paper profile's sets: RTTS (Table 1, with its annotations: Table 3), the paired synthetic test
    set and Fattal's photos, from the resolved dataset paths."""
    return [_paper_real_set("real", datasets.get("rtts"), "RTTS, real hazy photos", metrics=TABLE1_METRICS,
                            table1=True, annotations=datasets.get("rtts_annotations"), comparable=True),
            _paper_synthetic_set(datasets.get("synthetic_test")),
            _paper_real_set("fattal", datasets.get("fattal"), "Fattal's real hazy photos", table1=False)]


def _add_real_hazy(plan_sets: list[EvalSet], real_hazy: Mapping[str, Any] | None, sets: Sequence[str] | None,
                   results: Path, root: Path, profile: str) -> list[EvalSet]:
    taken = {s.name for s in plan_sets}
    for name, spec in (real_hazy or {}).items():
        if name in taken:
            raise ValueError(f"real hazy set name {name!r} is taken by the {profile} profile's own set")
        plan_sets.append(real_hazy_set(name, spec, results, root))
    if sets is None:
        return plan_sets
    unknown = sorted(set(sets) - {s.name for s in plan_sets})
    if unknown:
        raise ValueError(f"sets {unknown} not in the plan (have {[s.name for s in plan_sets]})")
    return [s for s in plan_sets if s.name in sets]


def plan_methods(profile: str, checkpoints: Mapping[str, Path | None], external: Mapping[str, Any],
                 root: Path = ROOT) -> list[Method]:
    """The methods of every table: hazy, DCP, the two CORUN runs (``checkpoints`` or the runs of
    ``configs/<profile>_{pretrain,colabator}.yaml``) and the external folders."""
    from .reproduce import run_dir

    pre = checkpoints.get("corun_pretrain") or run_dir(profile, "pretrain", root)
    col = checkpoints.get("corun_colabator") or run_dir(profile, "colabator", root)
    return [Method("hazy", "input", description="the hazy input photos"),
            Method("dcp", "dcp", description="dark channel prior (corun.physics.dcp_dehaze, He et al. defaults)"),
            checkpoint_method("corun_pretrain", pre, _producer_note("02_pretrain_corun.ipynb", root)),
            checkpoint_method("corun_colabator", col, _producer_note("03_colabator_finetune.ipynb", root)),
            *external_methods(external)]


def plan_tables(profile: str = "smoke", results_dir: str | Path | None = None, *, paper: Mapping | None = None,
                config: str | Path | None = None, checkpoints: Mapping[str, str | Path | None] | None = None,
                external: Mapping[str, Any] | None = None, device: str = "auto",
                real_hazy: Mapping[str, Any] | None = None, metric_weights: Mapping[str, str | Path] | None = None,
                detector: str | None = None, detector_weights: str | Path | None = None,
                detector_options: Mapping[str, Any] | None = None, sets: Sequence[str] | None = None,
                root: Path = ROOT) -> TablePlan:
    """What notebook 05 evaluates for ``profile``: evaluation sets and methods.

    ``checkpoints``: ``{"corun_pretrain": file or run folder, "corun_colabator": ...}`` overriding
    ``runs/<profile>_pretrain`` / ``runs/<profile>_colabator``. ``external``: see :func:`external_methods`.
    Paper profile: dataset paths from ``paper`` (what :func:`corun.reproduce.load_paper_config` returns,
    or its JSON form as passed to the notebook) or else from ``config`` and the environment; its
    checkpoints, external folders, device and table options fill in what the arguments leave open.
    ``real_hazy``: more Table 1 blocks, ``{name: folder}`` or ``{name: {"images": folder, "split": file,
    "annotations": folder, "class_map": spec}}`` (:func:`real_hazy_set`; with annotations also Table 3).
    ``metric_weights``: ``{metric: weights file}`` (e.g. BRISQUE's); ``detector`` / ``detector_weights`` /
    ``detector_options``: Table 3's detector (:func:`corun.detection.build_detector`). ``sets``: evaluate
    only the sets of these names. Relative paths are relative to the repository.
    """
    results = Path(results_dir) if results_dir is not None else root / "results" / profile
    results = results if results.is_absolute() else root / results
    checkpoints = {k: _at_root(v, root) for k, v in (checkpoints or {}).items()}
    external = {k: _external_at_root(v, root) for k, v in (external or {}).items()}
    annotations = None
    if profile == "smoke":
        plan_sets = smoke_sets(root)
    elif profile == "paper":
        if paper is None:
            from .reproduce import load_paper_config

            paper = load_paper_config(config, root=root)
        ds = {k: Path(v) if v else None for k, v in paper["datasets"].items()}
        for k, v in (paper.get("checkpoints") or {}).items():
            checkpoints.setdefault(k, _at_root(v, root))
        for k, v in (paper.get("external") or {}).items():
            external.setdefault(k, _external_at_root(v, root))
        device = paper.get("device", device) if device == "auto" else device
        annotations = ds.get("rtts_annotations")
        configured = paper.get("tables")  # a TableOptions when the config was read here
        if real_hazy is None and configured is not None:
            real_hazy = configured.parameters()["real_hazy"]
            metric_weights = metric_weights or configured.parameters()["metric_weights"]
        plan_sets = paper_sets(ds)
    else:
        raise ValueError(f"unknown profile {profile!r}")
    plan_sets = _add_real_hazy(plan_sets, real_hazy, sets, results, root, profile)
    return TablePlan(profile, results, plan_sets, plan_methods(profile, checkpoints, external, root), device,
                     annotations, {k: _at_root(v, root) for k, v in (metric_weights or {}).items()}, detector,
                     _at_root(detector_weights, root), dict(detector_options or {}))


def real_hazy_set(name: str, spec: str | Path | Mapping[str, Any], results_dir: Path, root: Path = ROOT) -> EvalSet:
    """A Table 1 block of real haze: ``spec`` is a folder of photos or ``{"images": folder, "split": file,
    "annotations": folder, "class_map": spec}`` (relative paths: to the repository).

    With a split, the block's ``hazy`` folder is ``<results>/inputs/<name>/``, links to the named photos
    (made when the set is dehazed, :func:`link_inputs`). A problem (no folder, a name of the split without a
    photo, annotations without XML, a bad class map) makes the block n/a with the reason.
    """
    from .reproduce import RealHazySet, listed_images, real_hazy_problems

    at_root = lambda p: None if p in (None, "") else Path(p) if Path(p).is_absolute() else root / p  # noqa: E731
    spec = dict(spec) if isinstance(spec, Mapping) else {"images": spec}
    unknown = sorted(set(spec) - {"images", "split", "annotations", "class_map"})
    if unknown or spec.get("images") in (None, ""):
        raise ValueError(f"real_hazy[{name!r}]: expected a folder or {{images, split, annotations, class_map}}"
                         + (f"; unknown key(s) {unknown}" if unknown else "; no images folder"))
    cmap = spec.get("class_map")
    if isinstance(cmap, str) and Path(cmap).suffix.lower() in (".yaml", ".yml", ".json"):
        cmap = str(at_root(cmap))
    rh = RealHazySet(name, at_root(spec["images"]), at_root(spec.get("split")), at_root(spec.get("annotations")),
                     cmap, source="real_hazy")
    problems = real_hazy_problems(rh)
    names = None
    if rh.split is not None and not problems:
        names = tuple(f.name for f in listed_images(rh.images, rh.split)[0])
    desc = f"{name}, real hazy photos in {_shown(rh.images)}"
    if rh.split is not None:
        desc += f", the {len(names) if names is not None else '?'} named by {_shown(rh.split)}"
    return EvalSet(name, results_dir / "inputs" / name if rh.split is not None else rh.images, None, TABLE1_METRICS,
                   desc, "; ".join(problems), kind="real", table1=True, source=rh.images, names=names,
                   split=rh.split, annotations=rh.annotations, class_map=rh.class_map)


def link_inputs(eval_set: EvalSet) -> Path:
    """Make ``eval_set.hazy`` hold exactly its ``names`` from ``eval_set.source``: symbolic links (copies
    where links are not possible); links or copies of photos no longer named are removed."""
    import shutil

    dst = Path(eval_set.hazy)
    dst.mkdir(parents=True, exist_ok=True)
    want = {n: Path(eval_set.source) / n for n in eval_set.names or ()}
    for p in dst.iterdir():
        target = want.get(p.name)
        if p.is_symlink():
            stale = target is None or os.path.realpath(p) != os.path.realpath(target)
        else:
            stale = target is None or not p.is_file() or \
                (p.stat().st_size, p.stat().st_mtime_ns) != (target.stat().st_size, target.stat().st_mtime_ns)
        if stale and (p.is_symlink() or p.is_file()):
            p.unlink()
    for name, target in want.items():
        link = dst / name
        if link.is_symlink() or link.exists():
            continue
        try:
            link.symlink_to(target.resolve())
        except OSError:
            shutil.copy2(target, link)
    return dst


# ---------------------------------------------------------------------------------------------- dehazing

def _code_stamp(*modules: str) -> str:
    digest = hashlib.sha256()
    for m in modules:
        digest.update((Path(__file__).parent / m).read_bytes())
    return digest.hexdigest()[:16]


def method_stamp(method: Method) -> dict:
    """What the outputs of ``method`` depend on; a change makes :func:`method_folder` recompute them."""
    if method.kind == "dcp":
        from .physics import DCPConfig

        return {"method": method.name, "kind": "dcp", "config": repr(DCPConfig()),
                "code": _code_stamp("physics.py", "imageio.py")}
    from .reproduce import weights_fingerprint

    return {"method": method.name, "kind": method.kind, "weights": weights_fingerprint(method.checkpoint),
            "code": _code_stamp("model.py", "inference.py", "batch.py", "imageio.py")}


def prepare_output(out: Path, stamp: dict, expected: set[str]) -> None:
    """Keep ``out``'s images only if they were made by the same source; drop files no input maps to."""
    from .imageio import is_image_file

    out.mkdir(parents=True, exist_ok=True)
    path = out / STAMP
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        old = None
    for p in out.iterdir():
        if p.is_file() and is_image_file(p) and (old != stamp or p.name not in expected):
            p.unlink()
    if old != stamp:
        path.write_text(json.dumps(stamp, indent=1) + "\n")


def dehaze_dcp(inputs: Sequence[Path], out_dir: Path, names: Sequence[str] | None = None,
               overwrite: bool = False, device: str = "cpu") -> tuple[int, int]:
    """DCP (He et al. 2009) on each input into ``out_dir`` (on ``device``); returns (written, kept)."""
    import numpy as np

    from .batch import output_names
    from .imageio import read_image, save_png
    from .inference import image_to_tensor, tensor_to_image
    from .physics import dcp_dehaze

    out_dir.mkdir(parents=True, exist_ok=True)
    names = list(names) if names is not None else output_names(list(inputs))
    written = kept = 0
    for path, name in zip(inputs, names):
        target = out_dir / name
        if target.exists() and not overwrite:
            kept += 1
            continue
        arr, _ = read_image(path)
        j, _, _ = dcp_dehaze(image_to_tensor(np.asarray(arr), device))
        save_png(tensor_to_image(j), target)
        written += 1
    return written, kept


def method_folder(plan: TablePlan, method: Method, eval_set: EvalSet, progress: bool = False,
                  log: Callable[[str], None] = print, _models: dict | None = None) -> tuple[Path | None, str]:
    """The folder holding ``method``'s results on ``eval_set`` (dehazing them first when needed), or
    ``(None, reason)``."""
    if not eval_set.available:
        return None, eval_set.reason or "evaluation set unavailable"
    if method.reason:
        return None, method.reason
    if eval_set.names is not None:
        link_inputs(eval_set)
    if method.kind == "input":
        return eval_set.hazy, ""
    if method.kind == "folder":
        folder = method.folders.get(eval_set.name)
        if folder is None:
            return None, f"no external results given for the {eval_set.name} set"
        if not Path(folder).is_dir():
            return None, f"external results folder {folder} does not exist"
        return Path(folder), ""
    from .batch import dehaze_files, output_names
    from .imageio import collect_images

    files = collect_images([eval_set.hazy]).files
    if not files:
        return None, f"no images in {eval_set.hazy}"
    names = output_names(files)
    out = plan.dehazed_dir / eval_set.name / method.name
    prepare_output(out, method_stamp(method), set(names))
    t0 = time.time()
    from .utils import resolve_device

    device = resolve_device(plan.device)
    if method.kind == "dcp":
        written, kept = dehaze_dcp(files, out, names, device=device)
        failed: list = []
    else:
        from .checkpoint import CheckpointError, load_model

        models = _models if _models is not None else {}
        if method.name not in models:
            try:
                models[method.name] = load_model(method.checkpoint, map_location=device)
            except CheckpointError as exc:
                return None, f"cannot load {method.checkpoint}: {exc}"
        report = dehaze_files(files, out, models[method.name], device=device, progress=progress,
                              log=lambda m: log(f"  {m}"))
        written, kept, failed = len(report.written), len(report.skipped), report.failed
    if written or failed:
        log(f"dehazed {eval_set.name}/{method.name}: {written} written, {kept} kept"
            + (f", {len(failed)} failed" if failed else "") + f" ({time.time() - t0:.1f} s) → {_shown(out)}")
    return out, ""


# ---------------------------------------------------------------------------------------------- metrics

def evaluate_set(plan: TablePlan, eval_set: EvalSet, folders: Mapping[str, Path | None],
                 reasons: Mapping[str, str], progress: bool = False,
                 log: Callable[[str], None] = print) -> pd.DataFrame:
    """Score every method's folder on ``eval_set``; one row per (method, image).

    Columns ``method``, ``image``, one per metric, ``error``. ``attrs``: ``na_reasons`` (metric → why it
    could not run), ``method_reasons`` (method → why it has no values), ``folders`` (method → folder).
    """
    import pandas as pd

    from .metrics import MetricError, evaluate_folder

    frames, na, why = [], {}, dict(reasons)
    for name, folder in folders.items():
        if folder is None:
            continue
        t0 = time.time()
        try:
            df = evaluate_folder(folder, eval_set.metrics, reference=eval_set.reference, cache_dir=plan.cache_dir,
                                 device=plan.device, progress=progress, weights=plan.metric_weights or None,
                                 hazy=eval_set.hazy if "structure" in eval_set.metrics else None)
        except MetricError as exc:
            why[name] = str(exc)
            continue
        na.update(df.attrs.get("na_reasons", {}))
        df.insert(0, "method", name)
        frames.append(df)
        log(f"scored {eval_set.name}/{name}: {len(df)} images ({time.time() - t0:.1f} s)")
    columns = ["method", "image", *eval_set.metrics, "error"]
    out = pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)
    for m in eval_set.metrics:
        out[m] = out[m].astype(float)
    out.attrs["na_reasons"] = na
    out.attrs["method_reasons"] = why
    out.attrs["folders"] = {k: _shown(v) for k, v in folders.items()}
    out.attrs["set"] = eval_set.name
    return out


def method_table(per_image: pd.DataFrame, methods: Sequence[str], metrics: Sequence[str],
                 method_reasons: Mapping[str, str] | None = None,
                 na_reasons: Mapping[str, str] | None = None) -> pd.DataFrame:
    """One row per method (in ``methods`` order): ``method``, the mean of each metric (NaN = n/a),
    ``n_images`` (images scored) and ``notes`` (why values are missing)."""
    import numpy as np
    import pandas as pd

    method_reasons = dict(method_reasons if method_reasons is not None else per_image.attrs.get("method_reasons", {}))
    na_reasons = dict(na_reasons if na_reasons is not None else per_image.attrs.get("na_reasons", {}))
    rows = []
    for name in methods:
        part = per_image[per_image["method"] == name] if len(per_image) else per_image
        row: dict[str, Any] = {"method": name}
        notes = []
        if name in method_reasons:
            notes.append(f"n/a: {method_reasons[name]}")
        for m in metrics:
            values = part[m].dropna() if m in part else []
            row[m] = float(values.mean()) if len(values) else np.nan
            if m in na_reasons and name not in method_reasons:
                notes.append(f"{m}: n/a ({na_reasons[m]})")
            elif len(part) and 0 < len(values) < len(part):
                notes.append(f"{m}: mean over {len(values)} of {len(part)} images")
            elif len(part) and not len(values) and m not in na_reasons:
                notes.append(f"{m}: n/a (no image could be scored)")
        row["n_images"] = int(len(part))
        row["notes"] = "; ".join(notes)
        rows.append(row)
    df = pd.DataFrame(rows, columns=["method", *metrics, "n_images", "notes"])
    for m in metrics:
        df[m] = df[m].astype(float)
    df.attrs["na_reasons"] = na_reasons
    df.attrs["method_reasons"] = method_reasons
    return df


# ---------------------------------------------------------------------------------------------- tables

@dataclass
class ReportedTable:
    """Numbers copied from a paper: ``label`` is always ``"reported"``; ``values`` one row per method."""

    values: pd.DataFrame
    source: str
    dataset: str
    label: str = "reported"

    def layout(self) -> pd.DataFrame:
        return paper_layout(self.values, list(REAL_METRICS))


def reported_table1() -> ReportedTable:
    """The paper's Table 1 on RTTS: hazy, RIDCP and CORUN + Colabator (FADE↓, BRISQUE↓, NIMA↑)."""
    import pandas as pd

    df = pd.DataFrame([{"method": m, **v} for m, v in REPORTED_TABLE1.items()],
                      columns=["method", *REAL_METRICS])
    df.insert(len(df.columns), "source", f"reported: {REPORTED_SOURCE}, {REPORTED_DATASET}")
    return ReportedTable(df, REPORTED_SOURCE, REPORTED_DATASET)


@dataclass
class Table1Block:
    """One block of Table 1: one set of hazy photos, one row per method (measured here).

    ``kind``: ``real`` or ``pseudo-real`` (:data:`KIND_LABELS`); ``comparable``: the set is the paper's
    (RTTS), so its numbers may be put beside the reported ones."""

    name: str
    kind: str
    description: str
    measured: pd.DataFrame
    metrics: tuple[str, ...]
    comparable: bool = False
    reason: str = ""  #: why the whole set is n/a

    @property
    def label(self) -> str:
        return KIND_LABELS.get(self.kind, self.kind or "measured")

    @property
    def n_images(self) -> int:
        return int(self.measured["n_images"].max()) if len(self.measured) else 0


@dataclass
class Table1:
    """Table 1 of one run: ``blocks`` (one per set of hazy photos: the profile's real or pseudo-real set and
    every real hazy set the user gave), measured here, and ``reported`` (the paper's RTTS numbers), kept
    apart. ``measured``, ``description`` and ``comparable`` are those of the first block."""

    measured: pd.DataFrame
    reported: ReportedTable
    description: str
    comparable: bool
    profile: str = ""
    label: str = "measured"
    blocks: list[Table1Block] = field(default_factory=list)

    def __post_init__(self):
        if not self.blocks:
            metrics = tuple(m for m in TABLE1_METRICS if m in self.measured.columns)
            self.blocks = [Table1Block("real", "", self.description, self.measured, metrics, self.comparable)]

    def layout(self, block: int = 0) -> pd.DataFrame:
        """Paper layout of a block's measured numbers: rows FADE↓, BRISQUE↓, NIMA↑ (S↑); columns methods."""
        b = self.blocks[block]
        return paper_layout(b.measured, list(b.metrics))

    def markdown(self) -> str:
        return table1_markdown(self)

    def latex(self) -> str:
        return table1_latex(self)


def build_table1(measured: pd.DataFrame | None = None, description: str = "", comparable: bool = False,
                 profile: str = "", blocks: Sequence[Table1Block] | None = None) -> Table1:
    """Table 1 from the method tables of its sets (:func:`method_table`): ``blocks``, or one block made of
    ``measured`` (a real set); the reported numbers are attached separately (:func:`reported_table1`)."""
    blocks = list(blocks or [])
    for b in blocks or [Table1Block("real", "", description, measured, REAL_METRICS)]:
        missing = [m for m in REAL_METRICS if m not in b.measured.columns]
        if "method" not in b.measured.columns or missing:
            raise ValueError(f"measured table of {b.name!r} needs a 'method' column and {list(REAL_METRICS)}; "
                             f"missing {missing}")
    if blocks:
        first = blocks[0]
        return Table1(first.measured, reported_table1(), first.description, first.comparable, profile,
                      blocks=blocks)
    return Table1(measured, reported_table1(), description, comparable, profile)


def paper_layout(table: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    """Transpose a one-row-per-method table: index ``FADE↓``…, one column per method, floats (NaN = n/a)."""
    import pandas as pd

    out = pd.DataFrame({row["method"]: [float(row[m]) for m in metrics] for _, row in table.iterrows()},
                       index=pd.Index([metric_label(m) for m in metrics], name="metric"))
    out.attrs["metrics"] = list(metrics)
    return out


def _best(table: pd.DataFrame, metric: str, exclude: Sequence[str] = ("hazy",)) -> str | None:
    """The method with the best value of ``metric`` among the dehazing methods (not the input)."""
    candidates = table[~table["method"].isin(exclude)][["method", metric]].dropna()
    if len(candidates) < 2:  # "best" of one would flatter it
        return None
    idx = candidates[metric].idxmin() if _lower_better(metric) else candidates[metric].idxmax()
    return str(candidates.loc[idx, "method"])


def _grid(table: pd.DataFrame, metrics: Sequence[str], latex: bool) -> tuple[list[str], list[list[str]]]:
    methods = [str(m) for m in table["method"]]
    rows = []
    for m in metrics:
        best = _best(table, m)
        cells = [metric_label(m, latex)]
        for _, row in table.iterrows():
            text = fmt(row[m], m)
            if row["method"] == best and text != NA:
                text = rf"\textbf{{{text}}}" if latex else f"**{text}**"
            cells.append(text)
        rows.append(cells)
    return methods, rows


def markdown_table(table: pd.DataFrame, metrics: Sequence[str]) -> str:
    """Paper layout as a Markdown table (rows metrics, columns methods; best dehazing result in bold)."""
    methods, rows = _grid(table, metrics, latex=False)
    lines = ["| metric | " + " | ".join(methods) + " |", "|---|" + "---:|" * len(methods)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _tex(text: str) -> str:
    """Escape LaTeX's special characters in plain text."""
    special = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
               "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}"}
    return "".join(special.get(ch, ch) for ch in text)


def latex_table(table: pd.DataFrame, metrics: Sequence[str], caption: str, label: str) -> str:
    """Paper layout as a LaTeX ``table`` (booktabs), best dehazing result in bold."""
    methods, rows = _grid(table, metrics, latex=True)
    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{_tex(caption)}}}", rf"\label{{{label}}}",
             r"\begin{tabular}{l" + "r" * len(methods) + "}", r"\toprule",
             "Metric & " + " & ".join(_tex(m) for m in methods) + r" \\", r"\midrule"]
    lines += [" & ".join(r) + r" \\" for r in rows]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines)


def _na_notes(table: pd.DataFrame) -> list[str]:
    """One line per n/a reason: metrics first (the same for every method), then methods."""
    out = []
    for m, reason in table.attrs.get("na_reasons", {}).items():
        out.append(f"{metric_label(m)} n/a: {reason}")
    for name, reason in table.attrs.get("method_reasons", {}).items():
        out.append(f"{name} n/a: {reason}")
    for _, row in table.iterrows():
        extra = [n for n in str(row.get("notes", "")).split("; ")
                 if "mean over" in n or "no image could be scored" in n]
        out += [f"{row['method']}: {n}" for n in extra]
    return out


def _comparability(b: Table1Block) -> str:
    if b.comparable:
        return ""
    if b.kind == "pseudo-real":
        return ("> Pseudo-real: a synthetic degradation of clean photos, **not real haze**, and not RTTS: the "
                "measured numbers are **not comparable** with the reported ones below.")
    return "> These images are not RTTS: the measured numbers are **not comparable** with the reported ones below."


def table1_markdown(t: Table1) -> str:
    """Markdown: *Measured* (this run, one block per set) and *Reported* (the paper), separate tables."""
    structure = any("structure" in b.metrics for b in t.blocks)
    lines = [f"# Table 1: no-reference dehazing quality{f' (profile {t.profile})' if t.profile else ''}", "",
             "## Measured (this run)", "",
             "One block per set of hazy photos. Mean per method; ↓ lower is better, ↑ higher is better; "
             "**bold**: best dehazing method. `n/a`: not measured, reason below the block."
             + (" S: structure score against the hazy input (1 = no structure that was not in the input; "
                "FADE and BRISQUE also reward invented texture, so read them beside S)." if structure else ""), ""]
    for i, b in enumerate(t.blocks, 1):
        count = f"{b.n_images} image{'' if b.n_images == 1 else 's'}"
        head = f"### {i}. {b.label}: {b.description} ({count})" if len(t.blocks) > 1 else \
            f"Images{f' ({b.label})' if b.kind else ''}: {b.description} ({count})."
        lines += [head, ""]
        if b.reason:
            lines += [f"> n/a: {b.reason}", ""]
        if _comparability(b):
            lines += [_comparability(b), ""]
        lines += [markdown_table(b.measured, b.metrics), ""]
        notes = _na_notes(b.measured)
        if notes:
            lines += [f"* {n}" for n in notes] + [""]
    csvs = ", ".join(f"`metrics_{b.name}.csv`" for b in t.blocks)
    lines += ["## Reported (from the paper, not measured here)", "",
              f"{t.reported.source}, on {t.reported.dataset}. Copied for reference.", "",
              markdown_table(t.reported.values, REAL_METRICS), "",
              f"Files: {csvs} (measured, one row per method; `_per_image.csv` beside each), "
              "`table1_reported.csv` (reported).", ""]
    return "\n".join(lines)


def _na_caption(table: pd.DataFrame) -> str:
    """Short n/a mention for a LaTeX caption (the reasons go in comments above the table)."""
    parts = []
    metrics = [METRIC_NAMES.get(m, m) for m in table.attrs.get("na_reasons", {})]
    if metrics:
        parts.append(f"{', '.join(metrics)} (metric unavailable)")
    methods = list(table.attrs.get("method_reasons", {}))
    if methods:
        parts.append(f"{', '.join(methods)} (no results)")
    return f" n/a: {'; '.join(parts)}." if parts else ""


def _na_comments(table: pd.DataFrame) -> list[str]:
    return [f"% {n}".replace("\n", " ") for n in _na_notes(table)]


def table1_latex(t: Table1) -> str:
    """LaTeX: one table per measured block (this run) and the reported one (the paper), each captioned."""
    out = []
    for i, b in enumerate(t.blocks):
        where = "" if b.comparable else (" Pseudo-real (a synthetic degradation, not real haze), not RTTS: not "
                                         "comparable with the reported numbers." if b.kind == "pseudo-real" else
                                         " Not RTTS: not comparable with the reported numbers.")
        cap = (f"Measured by this run ({t.profile} profile) on {b.label}: {b.description}."
               + where + _na_caption(b.measured))
        label = f"tab:table1-measured-{t.profile}" + (f"-{b.name}" if i else "")
        out += [f"% Table 1, measured (profile {t.profile}), block {i + 1}: {b.name} ({b.label})",
                *_na_comments(b.measured), latex_table(b.measured, b.metrics, cap, label), ""]
    rep = f"Reported in {t.reported.source} on {t.reported.dataset}; not measured here."
    return "\n".join([*out, "% Table 1, reported by the paper (not measured here)",
                      latex_table(t.reported.values, REAL_METRICS, rep, "tab:table1-reported"), ""])


def set_markdown(table: pd.DataFrame, eval_set: EvalSet, profile: str = "") -> str:
    """Markdown of the measured table of another set (e.g. synthetic PSNR / SSIM)."""
    n = int(table["n_images"].max()) if len(table) else 0
    lines = [f"# {eval_set.name} set: {', '.join(metric_label(m) for m in eval_set.metrics)}"
             + (f" (profile {profile})" if profile else ""), "", "## Measured (this run)", "",
             f"Images: {eval_set.description} ({n} images)"
             + (f", references {_shown(eval_set.reference)}" if eval_set.reference else "") + ".", ""]
    if eval_set.reason:
        lines += [f"> n/a: {eval_set.reason}", ""]
    lines += [markdown_table(table, eval_set.metrics), ""]
    notes = _na_notes(table)
    if notes:
        lines += [f"* {n}" for n in notes] + [""]
    return "\n".join(lines)


def write_csv(table: pd.DataFrame, path: str | Path, digits: int = 4) -> Path:
    """Write a table atomically without index; missing values as ``n/a`` (read back as NaN by pandas)."""
    from .utils import atomic_write

    text = table.to_csv(index=False, na_rep=NA, float_format=f"%.{digits}f")
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def _write_text(path: Path, text: str) -> Path:
    from .utils import atomic_write

    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a table written by :func:`write_csv` (``n/a`` → NaN, ``notes`` as text)."""
    import pandas as pd

    df = pd.read_csv(path, na_values=[NA], keep_default_na=False)
    for col in ("notes", "error"):
        if col in df:
            df[col] = df[col].fillna("").astype(str)
    return df


# ---------------------------------------------------------------------------------------------- all of it

@dataclass
class TablesResult:
    plan: TablePlan
    per_image: dict[str, pd.DataFrame]
    tables: dict[str, pd.DataFrame]
    table1: Table1 | None
    files: dict[str, Path]
    seconds: float
    detection: list[DetectionBlock] = field(default_factory=list)  #: Table 3, one block per annotated set


def table1_blocks(plan: TablePlan, tables: Mapping[str, pd.DataFrame]) -> list[Table1Block]:
    """The Table 1 blocks of ``plan``, in its order: every set with ``in_table1`` (the profile's real or
    pseudo-real set, then the real hazy sets)."""
    return [Table1Block(s.name, s.kind, s.description, tables[s.name], tuple(s.metrics), s.comparable, s.reason)
            for s in plan.sets if s.in_table1 and s.name in tables]


def _set_table_files(plan: TablePlan, s: EvalSet, table: pd.DataFrame, files: dict) -> None:
    """``table_<set>.md`` / ``.tex`` of a set that is not part of Table 1 (synthetic pairs, Fattal)."""
    files[f"table_{s.name}_md"] = _write_text(plan.results_dir / f"table_{s.name}.md",
                                              set_markdown(table, s, plan.profile))
    cap = f"Measured by this run ({plan.profile} profile) on {s.description}." + _na_caption(table)
    files[f"table_{s.name}_tex"] = _write_text(
        plan.results_dir / f"table_{s.name}.tex",
        "\n".join([f"% {s.name} set, measured (profile {plan.profile})", *_na_comments(table),
                   latex_table(table, s.metrics, cap, f"tab:{s.name}-{plan.profile}"), ""]))


def _set_manifest(s: EvalSet) -> dict:
    out = {**asdict(s), "hazy": _shown(s.hazy), "reference": _shown(s.reference), "source": _shown(s.source),
           "split": _shown(s.split), "annotations": _shown(s.annotations), "in_table1": s.in_table1}
    out["names"] = len(s.names) if s.names is not None else None  # how many the split names
    return out


def make_tables(plan: TablePlan, progress: bool = False, log: Callable[[str], None] = print) -> TablesResult:
    """Dehaze every set with every method, score them, write the tables (see the module docstring)."""
    from .reproduce import weights_fingerprint

    t0 = time.time()
    plan.results_dir.mkdir(parents=True, exist_ok=True)
    names = [m.name for m in plan.methods]
    per_image, tables, files, folders_all, reasons_all = {}, {}, {}, {}, {}
    models: dict = {}
    for s in plan.sets:
        folders, reasons = {}, {}
        for method in plan.methods:
            folder, reason = method_folder(plan, method, s, progress=progress, log=log, _models=models)
            folders[method.name] = folder
            if reason:
                reasons[method.name] = reason
        df = evaluate_set(plan, s, folders, reasons, progress=progress, log=log)
        table = method_table(df, names, s.metrics)
        per_image[s.name], tables[s.name], folders_all[s.name], reasons_all[s.name] = df, table, folders, reasons
        files[f"metrics_{s.name}"] = write_csv(table, plan.results_dir / f"metrics_{s.name}.csv")
        files[f"metrics_{s.name}_per_image"] = write_csv(df, plan.results_dir / f"metrics_{s.name}_per_image.csv")
        if not s.in_table1:
            _set_table_files(plan, s, table, files)
    blocks = table1_blocks(plan, tables)
    t1 = build_table1(blocks=blocks, profile=plan.profile) if blocks else None
    if t1 is not None:
        files["table1_md"] = _write_text(plan.results_dir / "table1.md", t1.markdown())
        files["table1_tex"] = _write_text(plan.results_dir / "table1.tex", t1.latex())
        files["table1_reported"] = write_csv(t1.reported.values, plan.results_dir / "table1_reported.csv")
    detection = detection_blocks(plan, folders_all, reasons_all, log)
    if detection:
        files.update(write_table3(plan, detection))
    manifest = {
        "profile": plan.profile,
        "sets": [_set_manifest(s) for s in plan.sets],
        "methods": [{"name": m.name, "kind": m.kind, "checkpoint": _shown(m.checkpoint),
                     "checkpoint_sha256": sha256_file(m.checkpoint) if m.checkpoint else None,
                     "weights_sha256": weights_fingerprint(m.checkpoint) if m.checkpoint else None,
                     "folders": {k: _shown(v) for k, v in m.folders.items()},
                     "description": m.description, "reason": m.reason} for m in plan.methods],
        "folders": {s: {m: _shown(f) for m, f in fo.items()} for s, fo in folders_all.items()},
        "metric_na": {s: df.attrs.get("na_reasons", {}) for s, df in per_image.items()},
        "method_na": {s: df.attrs.get("method_reasons", {}) for s, df in per_image.items()},
        "metric_weights": {k: _shown(v) for k, v in plan.metric_weights.items()},
        "detection": [{"set": b.set_name, "reason": b.reason, "detector": b.detector,
                       "detector_weights": b.weights, "class_map": b.class_map} for b in detection],
        "files": {k: _shown(v) for k, v in files.items()},
        "seconds": round(time.time() - t0, 1),
    }
    files["manifest"] = _write_text(plan.results_dir / MANIFEST, json.dumps(manifest, indent=1, default=str) + "\n")
    return TablesResult(plan, per_image, tables, t1, files, time.time() - t0, detection)


# ---------------------------------------------------------------------------------------------- Table 3

@dataclass
class DetectionBlock:
    """Table 3 on one annotated set: per-class AP@0.5 of one COCO detector on each method's results.

    ``table``: :func:`corun.detection.results_table` (index ``method``; ``attrs`` ``images``, ``reasons``,
    ``ignored``), every row ``NaN`` when ``reason`` says why the whole block is n/a (no detector weights,
    unusable annotations). ``class_map``: the map's aliases; ``notes``: what else the reader must know
    (annotation files that could not be used, split names without an annotation)."""

    set_name: str
    description: str
    annotations: Path
    split: Path | None
    class_map: str
    detector: str
    weights: str
    table: pd.DataFrame
    reason: str = ""
    notes: list[str] = field(default_factory=list)
    annotated: int = 0  #: annotation files read (within the split)


def detector_status(plan: TablePlan) -> tuple[bool, str]:
    """``(True, where the weights come from)`` when Table 3's detector can be built here without the
    network, else ``(False, why AP is n/a)``."""
    from .detection import DEFAULT_DETECTOR, cached_weights_path, weights_url

    name = plan.detector or DEFAULT_DETECTOR
    if plan.detector_weights is not None:
        path = Path(plan.detector_weights)
        return (True, f"weights {_shown(path)}") if path.is_file() else \
            (False, f"detector weights {path} do not exist (detector_weights / --detector-weights)")
    cached = cached_weights_path(name)
    if cached.is_file():
        return True, f"torchvision's COCO weights {cached}"
    return False, (f"no COCO detector weights: {name} needs torchvision's {cached.name}, which is not in "
                   f"{cached.parent}, and nothing is downloaded here. Pass detector_weights=PATH "
                   f"(corun reproduce --detector-weights PATH), or fetch {weights_url(name)} into "
                   f"{cached.parent} (`corun detect-eval ... --download` does)")


def _na_rows(plan: TablePlan, reason: str) -> pd.DataFrame:
    from .detection import FolderResult, results_table

    return results_table([FolderResult(m.name, Path("."), reason=reason) for m in plan.methods])


def detection_blocks(plan: TablePlan, folders_all: Mapping[str, Mapping[str, Path | None]],
                     reasons_all: Mapping[str, Mapping[str, str]],
                     log: Callable[[str], None] = print) -> list[DetectionBlock]:
    """Table 3 for every set with annotations (the paper's RTTS, any annotated real hazy set): one detector
    (built once, never downloaded) on every method's results, with the set's class map and split."""
    from . import detection as det

    blocks: list[DetectionBlock] = []
    model, model_reason = None, None
    name = plan.detector or det.DEFAULT_DETECTOR
    for s in plan.sets:
        ann_dir = s.annotations or (plan.annotations if s.name == "real" else None)
        if ann_dir is None:
            continue
        ok, where = detector_status(plan)
        block = DetectionBlock(s.name, s.description, Path(ann_dir), s.split, "", name,
                               where if ok else "none", _na_rows(plan, "not evaluated"))
        try:
            ann = det.read_annotations(ann_dir, s.class_map, s.split)
        except (det.AnnotationError, det.ClassMapError) as exc:
            block.reason = f"annotations unusable: {exc}"
        else:
            block.class_map, block.annotated = ann.class_map.describe(), len(ann.annotations)
            if ann.errors:
                block.notes.append(f"{len(ann.errors)} annotation file(s) not used, e.g. {ann.errors[0][0].name}: "
                                   f"{ann.errors[0][1]}")
            if not s.available:
                block.reason = f"the set is n/a: {s.reason}"
            elif model is None and model_reason is None:
                if not ok:
                    model_reason = where
                else:
                    try:
                        model = det.build_detector(name, plan.detector_weights, download=False,
                                                   **plan.detector_options)
                    except (det.DetectorUnavailable, ValueError, TypeError) as exc:
                        model_reason = f"detector {name}: {exc}"
            if not block.reason and model_reason:
                block.reason = f"AP n/a: {model_reason}"
        if block.reason:
            log(f"Table 3 on {s.name}: {block.reason}")
            block.table = _na_rows(plan, block.reason)
            blocks.append(block)
            continue
        folders = folders_all.get(s.name, {})
        usable = {m: f for m, f in folders.items() if f is not None}
        results = {r.name: r for r in det.evaluate_folders(usable, ann, model=model, device=plan.device,
                                                           progress=False, log=log)} if usable else {}
        why = reasons_all.get(s.name, {})
        rows = [results.get(m.name) or det.FolderResult(m.name, Path("."), reason=why.get(m.name, "no results"))
                for m in plan.methods]
        block.table = det.results_table(rows)
        blocks.append(block)
    return blocks


def _ignored_text(counts: Mapping[str, int] | None) -> str:
    from .detection import format_ignored

    return format_ignored(counts) if counts else "0"


def table3_frame(block: DetectionBlock) -> pd.DataFrame:
    """A block's CSV: ``method``, per-class AP, ``mean``, ``n_images`` (evaluated), ``ignored`` (boxes of
    classes outside the class map, per class), ``notes`` (why a row is n/a)."""
    df = block.table.copy()
    images, reasons, ignored = (df.attrs.get(k, {}) for k in ("images", "reasons", "ignored"))
    df["n_images"] = [int(images.get(m, 0)) for m in df.index]
    df["ignored"] = [_ignored_text(ignored.get(m)) for m in df.index]
    df["notes"] = [f"n/a: {reasons[m]}" if m in reasons else "" for m in df.index]
    return df.reset_index()


def _table3_header(block: DetectionBlock) -> list[str]:
    split = f", split `{_shown(block.split)}`" if block.split else ""
    return [f"Annotations: `{_shown(block.annotations)}`{split}: {block.annotated} annotated image(s). "
            f"Class map (onto RTTS's five classes): {block.class_map or 'n/a'}. "
            f"Detector: {block.detector} ({block.weights})."]


def table3_markdown(blocks: Sequence[DetectionBlock], profile: str = "") -> str:
    """Table 3 in Markdown: one block per annotated set; AP per class, the mean, evaluated images and the
    boxes of classes outside the class map (not evaluated, counted)."""
    from .detection import CLASSES, COLUMNS

    lines = [f"# Table 3: detection AP@0.5 after dehazing (measured{f', profile {profile}' if profile else ''})",
             "", "Average precision at IoU 0.5 of one COCO detector on each method's results, per class and their "
             "mean (corun.detection: VOC rules, difficult objects ignored, COCO 101-point interpolation). "
             f"Classes: {', '.join(CLASSES)}. `n/a`: no value, reason below the block. The paper does not name "
             "its detector: compare methods within a block, not with the paper's numbers.", ""]
    for i, b in enumerate(blocks, 1):
        title = b.description if b.description.startswith(f"{b.set_name},") else f"{b.set_name}: {b.description}"
        lines += [f"## {i}. {title}", "", *_table3_header(b), ""]
        if b.reason:
            lines += [f"> {b.reason}", ""]
        df = table3_frame(b)
        cols = [*COLUMNS, "n_images", "ignored"]
        lines += ["| method | " + " | ".join(cols[:-2]) + " | images | ignored boxes |",
                  "|---|" + "---:|" * (len(cols) - 1) + "---|"]
        for _, row in df.iterrows():
            cells = [fmt(row[c]) for c in COLUMNS] + [str(row["n_images"]), row["ignored"]]
            lines.append(f"| {row['method']} | " + " | ".join(cells) + " |")
        lines.append("")
        reasons = b.table.attrs.get("reasons", {})
        if not b.reason:
            lines += [f"* {m} n/a: {r}" for m, r in reasons.items()]
        lines += [f"* {n}" for n in b.notes]
        lines += ["", f"File: `table3_{b.set_name}.csv`.", ""]
    return "\n".join(lines)


def table3_latex(blocks: Sequence[DetectionBlock], profile: str = "") -> str:
    """Table 3 in LaTeX: one table per annotated set (AP per class, mean, evaluated images)."""
    from .detection import COLUMNS

    out = []
    for b in blocks:
        df = table3_frame(b)
        ignored = "; ".join(f"{r['method']}: {r['ignored']}" for _, r in df.iterrows() if r["ignored"] != "0")
        cap = (f"Detection AP@0.5 measured by this run ({profile} profile) on {b.set_name}: {b.description}. "
               f"Detector {b.detector}; class map {b.class_map or 'n/a'}"
               + (f"; boxes of classes outside it, not evaluated: {ignored}" if ignored else "") + "."
               + (f" n/a: {b.reason}" if b.reason else ""))
        lines = [f"% Table 3, measured (profile {profile}), set {b.set_name}",
                 *([f"% n/a: {b.reason}".replace("\n", " ")] if b.reason else
                   [f"% {m} n/a: {r}".replace("\n", " ") for m, r in b.table.attrs.get("reasons", {}).items()]),
                 r"\begin{table}[t]", r"\centering", rf"\caption{{{_tex(cap)}}}",
                 rf"\label{{tab:table3-{profile}-{b.set_name}}}",
                 r"\begin{tabular}{l" + "r" * (len(COLUMNS) + 1) + "}", r"\toprule",
                 "Method & " + " & ".join(_tex(c) for c in COLUMNS) + r" & Images \\", r"\midrule"]
        for _, row in df.iterrows():
            lines.append(_tex(str(row["method"])) + " & " + " & ".join(fmt(row[c]) for c in COLUMNS)
                         + f" & {row['n_images']}" + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
        out += lines
    return "\n".join(out)


def write_table3(plan: TablePlan, blocks: Sequence[DetectionBlock]) -> dict[str, Path]:
    """``table3_<set>.csv`` per block, ``table3_detection.md`` and ``.tex`` with every block."""
    files = {}
    for b in blocks:
        files[f"table3_{b.set_name}"] = write_csv(table3_frame(b), plan.results_dir / f"table3_{b.set_name}.csv")
    files["table3_md"] = _write_text(plan.results_dir / "table3_detection.md", table3_markdown(blocks, plan.profile))
    files["table3_tex"] = _write_text(plan.results_dir / "table3_detection.tex", table3_latex(blocks, plan.profile))
    return files


def load_manifest(results_dir: str | Path) -> dict | None:
    """What notebook 05 evaluated (``tables_manifest.json``), or None when it has not run."""
    try:
        return json.loads((Path(results_dir) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------------------------------------- figures

def _abs(p: str | None, root: Path = ROOT) -> Path | None:
    if p is None:
        return None
    p = Path(p)
    return p if p.is_absolute() else root / p


def _find_output(folder: Path, stem: str) -> Path | None:
    from .imageio import is_image_file

    for p in sorted(folder.glob(f"{stem}.*")):
        if is_image_file(p):
            return p
    return None


def _short(text: str, width: int) -> str:
    import textwrap

    return textwrap.shorten(text, width, placeholder=" …")


def _blank(ax, text: str, shape: tuple[int, int] | None = None, width: int = 28) -> None:
    """A panel that says why there is nothing to show (grey, the size of the neighbouring images)."""
    import textwrap

    import numpy as np

    if shape is not None:
        ax.imshow(np.full((*shape, 3), 0.93, dtype=np.float32))
    lines = [textwrap.fill(t, width) for t in text.split("\n")]
    ax.text(0.5, 0.5, "\n".join(lines), ha="center", va="center", fontsize=6.5, transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def comparison_grid(manifest: Mapping, set_name: str = "real", n: int = 4, methods: Sequence[str] | None = None,
                    root: Path = ROOT) -> tuple[Figure | None, list[str]]:
    """Rows: the first ``n`` images of the set; columns: each method's result (and the clean reference for
    paired sets). Missing results are labelled ``n/a`` in their panel. Returns (figure or None, notes)."""
    import matplotlib.pyplot as plt

    from .imageio import collect_images, read_image

    folders = {m: _abs(f, root) for m, f in (manifest.get("folders", {}).get(set_name) or {}).items()}
    if not folders or folders.get("hazy") is None:
        return None, [f"no {set_name} set in the tables manifest (has notebook 05 run?)"]
    methods = [m for m in (methods or folders) if m in folders]
    reasons = manifest.get("method_na", {}).get(set_name, {})
    ref = next((s.get("reference") for s in manifest.get("sets", []) if s["name"] == set_name), None)
    ref = _abs(ref, root)
    images = collect_images([folders["hazy"]]).files[:n]
    cols = methods + (["clean"] if ref else [])
    fig, axes = plt.subplots(len(images), len(cols), figsize=(2.6 * len(cols), 2.1 * len(images)), squeeze=False)
    notes = [f"{m}: n/a ({reasons.get(m, 'no results')})" for m in methods if folders.get(m) is None]
    for r, hazy in enumerate(images):
        shape = read_image(hazy)[0].shape[:2]
        for c, m in enumerate(cols):
            ax = axes[r, c]
            folder = ref if m == "clean" else folders.get(m)
            path = _find_output(folder, hazy.stem) if folder is not None and folder.is_dir() else None
            if path is None:
                _blank(ax, "n/a" + (f"\n{_short(reasons[m], 90)}" if m in reasons else ""), shape)
            else:
                ax.imshow(read_image(path)[0])
                ax.set_xticks([])
                ax.set_yticks([])
            if r == 0:
                ax.set_title(METHOD_LABELS.get(m, m), fontsize=9)
        axes[r, 0].set_ylabel(hazy.stem, fontsize=7)
    description = next((s["description"] for s in manifest.get("sets", []) if s["name"] == set_name), "")
    fig.suptitle(f"{set_name} set: {description}", fontsize=9)
    fig.tight_layout()
    return fig, notes


def unfolding_figure(checkpoints: Mapping[str, Path | None], image: Path, max_side: int = 512
                     ) -> tuple[Figure | None, list[str]]:
    """Stage by stage for each available checkpoint: hazy input, J_1…J_K (top row) and T̂_1…T̂_K
    (bottom row) on one image (downscaled to ``max_side``; :func:`corun.report.unfolding_grid`)."""
    import torch.nn.functional as F

    from .checkpoint import CheckpointError, load_model
    from .imageio import read_image
    from .inference import image_to_tensor, run_model
    from .report import UnfoldingRow, unfolding_grid

    notes, rows, names = [], [], []
    x = image_to_tensor(read_image(image)[0])
    scale = max_side / max(x.shape[-2:])
    if scale < 1:
        x = F.interpolate(x, scale_factor=scale, mode="area").clamp(0, 1)
    for name, ckpt in checkpoints.items():
        if ckpt is None:
            notes.append(f"{name}: no checkpoint")
            continue
        try:
            model = load_model(ckpt).eval()
        except CheckpointError as exc:
            notes.append(f"{name}: {exc}")
            continue
        out = run_model(model, x, keep_stages=True)
        rows.append(UnfoldingRow(x, out, f"hazy ({image.stem})", METHOD_LABELS.get(name, name)))
        names.append(f"{name}: {Path(ckpt).name}")
    if not rows:
        return None, notes
    title = "CORUN stage by stage: scene J_k and transmission T̂_k (" + ", ".join(names) + ")"
    return unfolding_grid(rows, title, title_size=9), notes


def plan_unfolding_figure(plan: TablePlan, max_side: int = 512) -> tuple[Figure | None, list[str]]:
    """:func:`unfolding_figure` of the plan's CORUN checkpoints on the first photo of its ``real`` set
    (notebook 06); the notes also name the checkpoints that are n/a and a missing real set."""
    from .imageio import collect_images

    checkpoints = {m.name: m.checkpoint for m in plan.methods if m.kind == "checkpoint"}
    notes = [f"{m.name} n/a ({m.reason})" for m in plan.methods if m.kind == "checkpoint" and m.reason]
    real = plan.set("real")
    photos = collect_images([real.hazy]).files if real.available else []
    if not photos:
        return None, notes + [f"no real photos ({real.reason})"]
    fig, more = unfolding_figure(checkpoints, photos[0], max_side)
    return fig, notes + more


def default_weights_figure(photos: Sequence[Path], weights: Path | None = None, n: int = 4, max_side: int = 640
                           ) -> tuple[Figure | None, list[str]]:
    """The project's default weights on photos: hazy / DCP / CORUN (default weights), one row per photo.

    ``weights`` defaults to :func:`corun.weights.default_weights_path`; without weights the figure is
    None and the note says why. Photos are downscaled to ``max_side`` for speed.
    """
    import matplotlib.pyplot as plt
    import torch
    import torch.nn.functional as F

    from .checkpoint import CheckpointError, load_model
    from .imageio import read_image
    from .inference import image_to_tensor, run_model
    from .physics import dcp_dehaze
    from .weights import default_weights_path

    weights = weights or default_weights_path()
    if weights is None:
        return None, ["no default weights (weights/corun_default.safetensors; see weights/README.md)"]
    try:
        model = load_model(weights).eval()
    except CheckpointError as exc:
        return None, [str(exc)]
    photos = list(photos)[:n]
    if not photos:
        return None, ["no photos"]
    fig, axes = plt.subplots(len(photos), 3, figsize=(3 * 3.2, 2.5 * len(photos)), squeeze=False)
    for row, path in zip(axes, photos):
        x = image_to_tensor(read_image(path)[0])
        scale = max_side / max(x.shape[-2:])
        if scale < 1:
            x = F.interpolate(x, scale_factor=scale, mode="area").clamp(0, 1)
        with torch.no_grad():
            ours = run_model(model, x).image
        for ax, img, title in zip(row, (x, dcp_dehaze(x)[0], ours), ("hazy", "DCP", "CORUN (default weights)")):
            ax.imshow(img[0].clamp(0, 1).permute(1, 2, 0).numpy())
            ax.set_title(f"{title}: {path.stem}" if title == "hazy" else title, fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(f"default weights ({Path(weights).name})", fontsize=9)
    fig.tight_layout()
    return fig, []


def label_pool_figure(pool_dir: str | Path | None, n_show: int = 4) -> tuple[Figure | None, list[str]]:
    """Colabator's optimal label pool: acceptance over training iterations and, for a few photos, the
    stored pseudo label, its transmission and its weight map. ``(None, [why])`` when there is no pool."""
    if pool_dir is None or not (Path(pool_dir) / "POOL.json").is_file():
        return None, [f"no label pool at {pool_dir} (Colabator, notebook 03, has not produced one)"]
    try:
        from .colabator.label_pool import LabelPool
    except ImportError as exc:
        return None, [f"corun.colabator.label_pool is not importable: {exc}"]
    import matplotlib.pyplot as plt
    from matplotlib.gridspec import GridSpec

    pool = LabelPool(Path(pool_dir))  # not LabelPool.open: never create or change a pool here
    hist = pool.history()
    if hist.empty:
        return None, [f"label pool {pool_dir} has no history yet"]
    names = pool.names()[:n_show]
    ncol = max(2, len(names))
    fig = plt.figure(figsize=(2.6 * ncol, 2.6 + 2.2 * 3))
    gs = GridSpec(4, ncol, figure=fig, height_ratios=[1.2, 1, 1, 1])
    ax_rate = fig.add_subplot(gs[0, : ncol // 2])
    ax_cum = fig.add_subplot(gs[0, ncol // 2:])
    per_it = hist.groupby("iteration")["accepted"].agg(["mean", "sum", "count"])
    ax_rate.plot(per_it.index, per_it["mean"], "o-", ms=3)
    ax_rate.set_ylim(-0.05, 1.05)
    ax_rate.set_xlabel("iteration")
    ax_rate.set_title("accepted fraction of candidates", fontsize=9)
    ax_cum.plot(per_it.index, per_it["sum"].cumsum(), label="accepted (cumulative)")
    ax_cum.plot(per_it.index, per_it["count"].cumsum(), "--", label="candidates (cumulative)")
    ax_cum.set_xlabel("iteration")
    ax_cum.legend(fontsize=7)
    ax_cum.set_title(f"{int(hist['accepted'].sum())} of {len(hist)} accepted", fontsize=9)
    for c, name in enumerate(names):
        entry = pool.get(name)
        if entry is None:
            continue
        panels = [(entry.label.permute(1, 2, 0).numpy(), None, f"label {name[:18]} (it {entry.iteration})"),
                  (entry.trans[0].numpy(), "gray", "T̂ stored"),
                  (entry.weight[0].numpy(), "viridis", f"weight (q={entry.q:.2f}, h={entry.h:.2f})")]
        for r, (img, cmap, title) in enumerate(panels, 1):
            ax = fig.add_subplot(gs[r, c])
            ax.imshow(img, cmap=cmap, vmin=0, vmax=1)
            ax.set_title(title, fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(f"Colabator label pool ({len(pool)} photos)", fontsize=10)
    fig.tight_layout()
    return fig, []


def metric_spread_figure(per_image: pd.DataFrame, metrics: Sequence[str], title: str = "",
                         methods: Sequence[str] | None = None,
                         na_reasons: Mapping[str, str] | None = None) -> Figure:
    """One panel per metric: the mean per method (bar) and every image's score (points, seaborn)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    if methods is None:
        methods = list(dict.fromkeys(per_image["method"])) if len(per_image) else []
    na_reasons = dict(na_reasons or {})
    fig, axes = plt.subplots(1, len(metrics), figsize=(max(3.2, 0.9 * len(methods) + 1.4) * len(metrics), 3.6),
                             squeeze=False)
    for ax, m in zip(axes[0], metrics):
        data = per_image[["method", m]].dropna() if len(per_image) else per_image
        if not len(data):
            _blank(ax, f"{metric_label(m)} n/a\n{_short(na_reasons.get(m, 'no values'), 120)}", width=40)
            ax.set_title(metric_label(m), fontsize=10)
            continue
        order = list(methods) or list(dict.fromkeys(data["method"]))
        sns.barplot(data=data, x="method", y=m, order=order, errorbar=None, alpha=0.35, ax=ax, color="tab:blue")
        sns.stripplot(data=data, x="method", y=m, order=order, ax=ax, size=4, jitter=0.2, color="k", alpha=0.7)
        for i, name in enumerate(order):  # methods without values: say so where their bar would be
            if name not in set(data["method"]):
                ax.text(i, 0.02, "n/a", ha="center", va="bottom", fontsize=8, color="0.4",
                        transform=ax.get_xaxis_transform())
        ax.set_title(metric_label(m), fontsize=10)
        ax.set_xlabel("")
        ax.set_ylabel(metric_label(m))
        ax.tick_params(axis="x", rotation=30, labelsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plan_photos(plan: TablePlan, folder: str | Path | None = None) -> list[Path]:
    """The photos of ``folder`` (relative: the repository's) or else of the plan's ``real`` set; [] when
    that set is unavailable."""
    from .imageio import collect_images

    real = plan.set("real")
    src = [repo_path(folder)] if folder else ([real.hazy] if real.available else [])
    return collect_images(src).files if src else []


def plan_metric_figures(plan: TablePlan, manifest: Mapping | None = None
                        ) -> tuple[list[tuple[str, Figure]], list[str]]:
    """:func:`metric_spread_figure` of every set of ``plan`` from its ``metrics_<set>_per_image.csv``
    (notebook 06): ``([(set name, figure)], notes)``, a note for each set notebook 05 has not scored."""
    figures, notes = [], []
    for s in plan.sets:
        path = plan.results_dir / f"metrics_{s.name}_per_image.csv"
        if not path.is_file():
            notes.append(f"metrics ({s.name}): {path.name} not found (notebook 05)")
            continue
        na = (manifest or {}).get("metric_na", {}).get(s.name, {})
        figures.append((s.name, metric_spread_figure(read_table(path), s.metrics, title=f"{s.name} set: {s.description}",
                                                     methods=[m.name for m in plan.methods], na_reasons=na)))
    return figures, notes


def remove_figure(fig_dir: str | Path, name: str) -> None:
    """Delete ``<fig_dir>/<name>.png`` and ``.pdf`` if present (no stale figure of an earlier run)."""
    for ext in ("png", "pdf"):
        (Path(fig_dir) / f"{name}.{ext}").unlink(missing_ok=True)


def figures_report(written: Sequence[Path], missing: Sequence[str], fig_dir: str | Path) -> str:
    """What notebook 06 wrote and what it could not draw, in words."""
    lines = [f"{len(written)} files written to {fig_dir}:", *(f"   {p.name}" for p in written)]
    if missing:
        lines += ["", "missing or n/a:", *(f"  - {m}" for m in missing)]
    return "\n".join(lines)
