"""``corun reproduce --profile smoke|paper``: run the numbered notebooks in order and say where the results are.

Steps (each a notebook run headless by papermill, with the profile's parameters; the executed copy goes to
``results/<profile>/notebooks/``):

==============================  =========================================================================
``01_data_prep``                builds (smoke) or checks (paper) the datasets; ``results/<p>/data_manifest.json``
``02_pretrain_corun``           smoke: trains ``configs/smoke_pretrain.yaml`` into ``runs/smoke_pretrain``;
                                paper: prints the ``torchrun`` command and plots an existing run
``03_colabator_finetune``       Colabator fine-tuning from the pretraining checkpoint → ``runs/<p>_colabator``
``04_label_pool_inspection``    the optimal label pool of that run
``05_metric_tables``            Table 1 (FADE / BRISQUE / NIMA / S, one block per set of hazy photos), the
                                synthetic PSNR / SSIM table, Table 3 for annotated sets (:mod:`corun.tables`)
                                → ``results/<p>/``
``06_paper_figures``            comparison grid, unfolding, label pool, metric spread → ``figures/<p>/``
==============================  =========================================================================

A notebook that is not in ``notebooks/`` yet is reported ``not present`` and the pipeline goes on (the
table columns it would have produced show ``n/a`` with the reason). The first failing notebook stops the
run; the message names the notebook and the cell, and the executed copy shows the traceback.

Skipping. After a step succeeds, a hash of what it depends on is stored in
``results/<p>/.reproduce_state.json``: the notebook file, its parameters, the config files it reads, the
whole ``corun`` package's sources (:func:`code_hash`: any edit re-runs every step — simple, and it cannot
miss a change; the training notebooks then resume their finished runs instead of training again), and its
inputs: checkpoints
by the weights they hold (:func:`weights_fingerprint`: a resumed, finished run that re-saves its last
checkpoint changes nothing downstream), small files by content, data folders by name, size and
modification time of every file. The next run skips the step when the hash is the same, its executed copy
exists and its outputs are still there; ``force=True`` (``--force``) runs every step.

The paper profile reads dataset paths from ``configs/reproduce_paper.yaml`` (or ``--config``), each
overridable by an environment variable (:data:`PAPER_ENV`), and checks every dataset like
``corun data check`` does *before* any notebook runs, naming the missing or unusable path.

Real hazy sets (both profiles, :class:`RealHazySet`): ``--real-hazy NAME=DIR[@SPLIT]`` (repeatable),
``--real-hazy-list NAME=FILE``, ``--real-hazy-annotations NAME=DIR``, ``--real-hazy-class-map NAME=MAP``, or a
``real_hazy:`` mapping in the config (the paper config, or ``--config`` for smoke), each become one more
Table 1 block of notebook 05 (and a Table 3 block when annotated); ``--weights METRIC=FILE``,
``--detector`` and ``--detector-weights`` go to the same notebook (:class:`TableOptions`). They are checked
before any notebook runs (:func:`check_table_options`: folders, split names, annotation files, class maps,
weight files), and their folders, split files and weight files are inputs of steps 05 and 06.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from .utils import ROOT, sha256_file  # the one definition of the repository (corun/utils.py)
from .weights import REPO_WEIGHTS, default_weights_path

PROFILES = ("smoke", "paper")
STATE_FILE = ".reproduce_state.json"
STATE_VERSION = 1
PAPER_CONFIG = ROOT / "configs" / "reproduce_paper.yaml"

#: dataset key → (environment variable, default path, ``corun data check`` kind or None, required)
PAPER_DATASETS: dict[str, tuple[str, str | None, str | None, bool]] = {
    "ridcp500": ("CORUN_RIDCP500", "data/RIDCP500", "clean-depth", True),
    "urhi": ("CORUN_URHI", "data/URHI", "real", True),
    "rtts": ("CORUN_RTTS", "data/RTTS", "real", True),
    "fattal": ("CORUN_FATTAL", "data/Fattal", "real", True),
    "rtts_annotations": ("CORUN_RTTS_ANNOTATIONS", None, None, False),
    "synthetic_test": ("CORUN_SYNTHETIC_TEST", None, "paired", False),
}
PAPER_ENV = {key: spec[0] for key, spec in PAPER_DATASETS.items()}


# ---------------------------------------------------------------------------------------------- notebooks

def run_notebook(notebook: str | Path, out_dir: Path, parameters: dict,
                 notebooks_dir: str | Path | None = None, cwd: str | Path | None = None) -> Path:
    """Execute a notebook (a name in ``notebooks_dir``, default ``notebooks/``, or a path) with papermill
    into ``out_dir``.

    Runs with the repository (or ``cwd``) as working directory; a failure raises RuntimeError naming the
    notebook and the cell, with the executed copy (which shows the traceback) left in ``out_dir``.
    """
    import papermill as pm

    base = Path(notebooks_dir) if notebooks_dir is not None else ROOT / "notebooks"
    src = Path(notebook) if Path(notebook).is_absolute() else base / notebook
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / src.name
    try:
        pm.execute_notebook(str(src), str(target), parameters=parameters, cwd=str(cwd or ROOT),
                            kernel_name="python3", progress_bar=False)
    except pm.PapermillExecutionError as exc:
        raise RuntimeError(f"notebook {src.name} failed at cell In [{exc.exec_count}]: {exc.ename}: "
                           f"{exc.evalue} (executed copy: {target})") from None
    except Exception as exc:  # noqa: BLE001 - a dead kernel, a timeout, an unreadable notebook
        raise RuntimeError(f"notebook {src.name} failed: {type(exc).__name__}: {exc} "
                           f"(executed copy: {target})") from None
    return target


# ---------------------------------------------------------------------------------------------- hashing

def _shown(path: Path, root: Path = ROOT) -> str:
    path = Path(path)
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


def fingerprint(path: str | Path | None, content: bool = False) -> Any:
    """What a step's hash sees of ``path``.

    Missing → ``"missing"``. A file: its sha256 when ``content`` (checkpoints, CSVs, configs), else its
    size and modification time. A folder: every file below it (names starting with ``.`` excepted, e.g.
    temporary files and locks) by relative path, size and modification time (``content``: sha256).
    """
    if path is None:
        return None
    path = Path(path)
    if path.is_file():
        if content:
            return sha256_file(path)
        st = path.stat()
        return [st.st_size, st.st_mtime_ns]
    if path.is_dir():
        entries = []
        for folder, dirs, files in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                if name.startswith("."):
                    continue
                p = Path(folder) / name
                try:
                    entries.append([str(p.relative_to(path)), fingerprint(p, content)])
                except OSError:  # vanished while walking (e.g. a temporary file renamed)
                    continue
        return entries
    return "missing"


@functools.lru_cache(maxsize=64)
def _weights_sha(path: str, size: int, mtime_ns: int) -> str:
    import torch

    from .checkpoint import CheckpointError, read_state_dict

    try:
        sd, meta = read_state_dict(path)
    except CheckpointError:
        return "unreadable:" + sha256_file(Path(path))
    digest = hashlib.sha256(json.dumps(meta.get("model_config"), sort_keys=True, default=str).encode())
    for key in sorted(sd):
        t = sd[key].detach().cpu().contiguous().reshape(-1)
        digest.update(f"{key}|{t.dtype}|{tuple(sd[key].shape)}|".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def weights_fingerprint(path: str | Path | None) -> str | None:
    """sha256 of the inference weights in a checkpoint (``params_ema`` and the architecture), not of the
    file: a resumed run that re-saves its final checkpoint (new RNG state, same weights) keeps its
    fingerprint. ``"missing"`` for a missing file, None for None."""
    if path is None:
        return None
    path = Path(path)
    if not path.is_file():
        return "missing"
    st = path.stat()
    return _weights_sha(str(path.resolve()), st.st_size, st.st_mtime_ns)


def code_hash(package: Path = ROOT / "corun") -> str:
    """sha256 over the ``corun`` package's Python sources (path and content of each): part of every step's
    hash, so a change anywhere in the package re-runs every step."""
    digest = hashlib.sha256()
    for p in sorted(Path(package).rglob("*.py")):
        if "__pycache__" in p.parts:
            continue
        digest.update(str(p.relative_to(package)).encode() + b"\0" + p.read_bytes() + b"\0")
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------- steps

PathsFn = Callable[[], Sequence[Path | None]]


@dataclass
class Step:
    """One notebook of the pipeline.

    ``parameters`` (or a function returning them, evaluated when the step is reached, after the steps
    before it ran), ``configs``: files read by content, ``inputs``: files/folders the step reads —
    ``content_inputs`` by content, ``inputs`` by size and modification time, ``weights`` (checkpoints) by
    the weights they hold (:func:`weights_fingerprint`); all may be functions. ``outputs``: what must still
    exist for the step to be skipped.
    """

    key: str
    notebook: str
    parameters: dict | Callable[[], dict] = field(default_factory=dict)
    configs: Sequence[Path] = ()
    inputs: Sequence[Path] | PathsFn = ()
    content_inputs: Sequence[Path] | PathsFn = ()
    weights: Sequence[Path] | PathsFn = ()
    outputs: Sequence[Path] | PathsFn = ()
    extra: Callable[[], Any] | None = None  # anything else that must be hashed (e.g. metric weights)

    def resolve(self, what: str) -> Any:
        value = getattr(self, what)
        return value() if callable(value) else value


@dataclass
class StepRecord:
    key: str
    notebook: str
    status: str  # "ran", "skipped", "not present", "failed", "not run"
    seconds: float | None = None
    executed: str | None = None
    error: str | None = None

    @property
    def label(self) -> str:
        if self.status == "ran":
            return f"{self.seconds:.1f} s"
        if self.status == "skipped":
            return "skipped (unchanged)"
        if self.status == "failed":
            return f"FAILED after {self.seconds:.1f} s"
        return self.status


def step_hash(step: Step, notebooks_dir: Path, salt: str = "", root: Path = ROOT) -> str:
    """The hash that decides whether ``step`` can be skipped (see the module docstring)."""
    nb = Path(notebooks_dir) / step.notebook
    package = root / "corun"
    state = {
        "notebook": fingerprint(nb, content=True),
        "code": code_hash(package) if package.is_dir() else None,
        "parameters": step.resolve("parameters"),
        "configs": {_shown(p, root): fingerprint(p, content=True) for p in step.configs},
        "inputs": {_shown(p, root): fingerprint(p) for p in step.resolve("inputs") if p is not None},
        "content_inputs": {_shown(p, root): fingerprint(p, content=True)
                           for p in step.resolve("content_inputs") if p is not None},
        "weights": {_shown(p, root): weights_fingerprint(p) for p in step.resolve("weights") if p is not None},
        "extra": step.extra() if step.extra else None,
        "salt": salt,
    }
    text = json.dumps(state, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def read_state(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
        return {}
    return dict(data.get("steps", {}))


def write_state(path: Path, steps: dict) -> None:
    from .utils import atomic_write

    text = json.dumps({"version": STATE_VERSION, "steps": steps}, indent=1, sort_keys=True) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def run_steps(steps: Sequence[Step], results_dir: Path, notebooks_dir: Path | None = None,
              force: bool = False, salt: str = "", runner: Callable[..., Path] | None = None,
              log: Callable[[str], None] = print, root: Path = ROOT) -> list[StepRecord]:
    """Run ``steps`` in order (see the module docstring); returns one record per step.

    ``runner(notebook_path, out_dir, parameters)`` executes one notebook (default :func:`run_notebook`)
    and raises RuntimeError on failure; the steps after a failure are recorded ``not run``.
    """
    notebooks_dir = Path(notebooks_dir) if notebooks_dir is not None else ROOT / "notebooks"
    results_dir = Path(results_dir)
    executed_dir = results_dir / "notebooks"
    state_path = results_dir / STATE_FILE
    state = read_state(state_path)
    runner = runner or (lambda nb, out, params: run_notebook(nb, out, params, cwd=root))
    records: list[StepRecord] = []
    failed = False
    for i, step in enumerate(steps, 1):
        head = f"[{i}/{len(steps)}] {step.key}"
        src = notebooks_dir / step.notebook
        executed = executed_dir / step.notebook
        if failed:
            records.append(StepRecord(step.key, step.notebook, "not run"))
            continue
        if not src.is_file():
            log(f"{head}: not present ({_shown(src, root)} does not exist yet); going on without it")
            state.pop(step.key, None)
            records.append(StepRecord(step.key, step.notebook, "not present"))
            continue
        digest = step_hash(step, notebooks_dir, salt, root)
        outputs = [Path(p) for p in step.resolve("outputs") if p is not None]
        missing = [p for p in outputs if not p.exists()]
        if not force and state.get(step.key, {}).get("hash") == digest and executed.is_file() and not missing:
            log(f"{head}: skipped (unchanged since its last run)")
            records.append(StepRecord(step.key, step.notebook, "skipped", executed=_shown(executed, root)))
            continue
        if force:
            why = "--force"
        elif step.key not in state:
            why = "no record of a successful run"
        elif state[step.key].get("hash") != digest:
            why = "notebook, parameters, config, code or inputs changed"
        elif missing:
            why = "outputs missing: " + ", ".join(_shown(p, root) for p in missing)
        else:
            why = f"executed copy {_shown(executed, root)} missing"
        log(f"{head}: running ({why}) ...")
        state.pop(step.key, None)
        write_state(state_path, state)
        t0 = time.time()
        try:
            runner(src, executed_dir, step.resolve("parameters"))
        except RuntimeError as exc:
            seconds = time.time() - t0
            log(f"{head}: FAILED after {seconds:.1f} s: {exc}")
            records.append(StepRecord(step.key, step.notebook, "failed", seconds, _shown(executed, root), str(exc)))
            failed = True
            continue
        seconds = time.time() - t0
        # hash again: a step's own parameters may depend on what it produced (e.g. a label pool path)
        state[step.key] = {"hash": step_hash(step, notebooks_dir, salt, root), "seconds": round(seconds, 1),
                           "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
        write_state(state_path, state)
        log(f"{head}: done in {seconds:.1f} s")
        records.append(StepRecord(step.key, step.notebook, "ran", seconds, _shown(executed, root)))
    return records


# ---------------------------------------------------------------------------------------------- profiles

def _read_yaml(path: Path) -> dict:
    import yaml

    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return data


def run_dir(profile: str, stage: str, root: Path = ROOT) -> Path:
    """The run folder of ``configs/<profile>_<stage>.yaml`` (``train.out_dir``), default ``runs/<profile>_<stage>``."""
    cfg = root / "configs" / f"{profile}_{stage}.yaml"
    out = None
    if cfg.is_file():
        try:
            out = (_read_yaml(cfg).get("train") or {}).get("out_dir")
        except (OSError, ValueError):
            out = None
    out = Path(out or f"runs/{profile}_{stage}")
    return out if out.is_absolute() else root / out


def latest_checkpoint(folder: Path) -> Path | None:
    from .checkpoint import latest_checkpoint as latest

    return latest(folder)


def label_pool_candidates(profile: str, results_dir: Path, root: Path = ROOT) -> list[Path]:
    """Where Colabator's label pool may be: ``results/<p>/label_pool`` (the pipeline's place), the
    ``colabator.pool_dir`` of ``configs/<p>_colabator.yaml``, ``<colabator run>/label_pool``."""
    out = [Path(results_dir) / "label_pool"]
    cfg = root / "configs" / f"{profile}_colabator.yaml"
    if cfg.is_file():
        try:
            pool = (_read_yaml(cfg).get("colabator") or {}).get("pool_dir")
        except (OSError, ValueError):
            pool = None
        if pool:
            out.append(Path(pool) if Path(pool).is_absolute() else root / pool)
    out.append(run_dir(profile, "colabator", root) / "label_pool")
    return list(dict.fromkeys(out))


def find_label_pool(profile: str, results_dir: Path, root: Path = ROOT) -> Path | None:
    """The first candidate of :func:`label_pool_candidates` that holds a pool (``POOL.json``)."""
    for p in label_pool_candidates(profile, results_dir, root):
        if (p / "POOL.json").is_file():
            return p
    return None


def load_paper_config(path: str | Path | None = None, environ: Mapping[str, str] | None = None,
                      root: Path = ROOT) -> dict:
    """The paper profile's settings: ``{"datasets": {key: Path | None}, "checkpoints": {...},
    "external": {...}, "device": str, "config": path or None, "tables": TableOptions}`` (``tables``: the
    config's ``real_hazy:``, ``metric_weights:`` and ``detection:``, :func:`table_options_from_config`).

    Dataset paths come from the YAML (``path``, default ``configs/reproduce_paper.yaml`` when it exists),
    then environment variables (:data:`PAPER_ENV`, e.g. ``CORUN_RTTS``) override them; relative paths are
    relative to the repository. ``rtts_annotations`` defaults to ``<rtts>/Annotations`` when that exists.
    """
    environ = os.environ if environ is None else environ
    default = root / "configs" / PAPER_CONFIG.name
    cfg_path = Path(path) if path is not None else (default if default.is_file() else None)
    if cfg_path is not None and not cfg_path.is_absolute() and not cfg_path.exists():
        cfg_path = root / cfg_path
    data = _read_yaml(cfg_path) if cfg_path is not None else {}
    given = dict(data.get("datasets") or {})
    unknown = sorted(set(given) - set(PAPER_DATASETS))
    if unknown:
        raise ValueError(f"{cfg_path}: unknown dataset key(s) {unknown}; known: {sorted(PAPER_DATASETS)}")

    def resolve(value) -> Path | None:
        if value in (None, ""):
            return None
        p = Path(os.path.expanduser(str(value)))
        return p if p.is_absolute() else root / p

    datasets: dict[str, Path | None] = {}
    sources: dict[str, str] = {}
    for key, (env, default, _, _) in PAPER_DATASETS.items():
        if environ.get(env):
            datasets[key], sources[key] = resolve(environ[env]), f"${env}"
        elif given.get(key) not in (None, ""):
            datasets[key], sources[key] = resolve(given[key]), f"{_shown(cfg_path, root)}: datasets.{key}"
        else:
            datasets[key], sources[key] = resolve(default), "default"
    if datasets["rtts_annotations"] is None and datasets["rtts"] is not None \
            and (datasets["rtts"] / "Annotations").is_dir():
        datasets["rtts_annotations"] = datasets["rtts"] / "Annotations"
        sources["rtts_annotations"] = "<rtts>/Annotations"
    checkpoints = {k: resolve(v) for k, v in (data.get("checkpoints") or {}).items()}
    external = {}
    for name, value in (data.get("external") or {}).items():
        external[name] = ({s: str(resolve(p)) for s, p in value.items()} if isinstance(value, Mapping)
                          else str(resolve(value)))
    where = _shown(cfg_path, root) if cfg_path else "paper config"
    return {"datasets": datasets, "sources": sources, "checkpoints": checkpoints, "external": external,
            "device": str(data.get("device", "auto")), "config": str(cfg_path) if cfg_path else None,
            "tables": table_options_from_config(data, where, root)}


def rtts_images(rtts: Path) -> Path:
    """RTTS as released has ``JPEGImages/`` and ``Annotations/``; a flat folder of photos is used as is."""
    return rtts / "JPEGImages" if (rtts / "JPEGImages").is_dir() else rtts


def check_paper_datasets(cfg: Mapping, log: Callable[[str], None] = print) -> list[str]:
    """Check every paper dataset like ``corun data check`` does; returns the problems (empty: all good).

    Missing paths are found first (cheap, all of them at once); the folders that exist are then opened
    with :func:`corun.data.check_folder`.
    """
    from .data import DatasetError
    from .data import check_folder

    datasets, sources = cfg["datasets"], cfg.get("sources", {})
    problems = []
    for key, (env, _, _, required) in PAPER_DATASETS.items():
        path = datasets.get(key)
        where = f"(from {sources.get(key, '?')}; set ${env} or datasets.{key} in {_shown(PAPER_CONFIG)})"
        if path is None:
            if required:
                problems.append(f"{key}: no path given {where}")
            continue
        if not path.is_dir():
            problems.append(f"{key}: {path} does not exist {where}")
    if problems:
        return problems
    for key, (_, _, kind, _) in PAPER_DATASETS.items():
        path = datasets.get(key)
        if path is None or kind is None:
            if key == "rtts_annotations" and path is not None and not any(path.glob("*.xml")):
                problems.append(f"{key}: {path} holds no VOC .xml annotation files")
            continue
        folder = rtts_images(path) if key == "rtts" else path
        try:
            info = check_folder(folder, kind)
        except DatasetError as exc:
            problems.append(f"{key}: {exc}")
            continue
        log(f"  {key:<16} {_shown(folder)} [{kind}]: {info['usable']} usable of {info['found']}")
    return problems


def _figures_dir(profile: str, root: Path) -> Path:
    return root / "figures" / profile


def metric_weights_state() -> dict:
    """Which metric weights are found now (they decide what Table 1 can show)."""
    from .metrics import find_weights

    out = {}
    for name in ("brisque", "nima", "musiq", "niqe"):
        path, _ = find_weights(name)
        out[name] = [str(path), fingerprint(path)] if path else None
    return out


def pipeline_steps(profile: str, results_dir: Path, root: Path = ROOT, paper: dict | None = None,
                   options: TableOptions | None = None) -> list[Step]:
    """The six steps of ``profile`` with their parameters, configs, inputs and outputs.

    ``options``: real hazy sets, metric and detector weights for notebook 05 (:class:`TableOptions`); their
    folders, split files and weight files are inputs of steps 05 and 06 (a change re-runs both)."""
    options = options or TableOptions()
    results_dir, figures = Path(results_dir), _figures_dir(profile, root)
    pre_dir, col_dir = run_dir(profile, "pretrain", root), run_dir(profile, "colabator", root)
    cfg_pre, cfg_col = root / "configs" / f"{profile}_pretrain.yaml", root / "configs" / f"{profile}_colabator.yaml"
    configs_pre = [p for p in (cfg_pre,) if p.is_file()]
    configs_col = [p for p in (cfg_col,) if p.is_file()]
    r, f = str(results_dir), str(figures)
    pre_ckpt = lambda: latest_checkpoint(pre_dir)  # noqa: E731
    col_ckpt = lambda: latest_checkpoint(col_dir)  # noqa: E731

    def pool() -> Path:
        return find_label_pool(profile, results_dir, root) or results_dir / "label_pool"

    if profile == "smoke":
        mini = root / "data" / "mini"
        p01 = {"profile": profile, "results_dir": r, "figures_dir": f}
        data_inputs: Sequence[Path] = [mini]
        eval_inputs = [mini / "pseudo_real" / "hazy", mini / "test"]
        # one thread for inference and metrics on the mini dataset's small images: as fast as two on an idle
        # 2-core machine and several times faster on a busy one (measured: 1.7 s vs 5.6 s per image)
        p05: dict = {"profile": profile, "results_dir": r, "threads": 1}
        p06: dict = {"profile": profile, "results_dir": r, "figures_dir": f, "threads": 1}
        out01 = [mini / "manifest.json", results_dir / "data_manifest.json"]
        out02 = lambda: [pre_ckpt() or pre_dir / "checkpoints" / "(none)"]  # noqa: E731
        out03 = lambda: [col_ckpt() or col_dir / "checkpoints" / "(none)"]  # noqa: E731
        pre_param = None
        paper_cfg = []
        inputs01: list[Path] = []  # builds the mini dataset from installed packages (the code hash covers it)
    else:
        assert paper is not None, "the paper profile needs load_paper_config()"
        ds = paper["datasets"]
        p01 = {"profile": profile, "results_dir": r, "figures_dir": f,
               "clean_depth_dir": str(ds["ridcp500"]), "real_train_dir": str(ds["urhi"]),
               "real_test_dirs": [str(rtts_images(ds["rtts"])), str(ds["fattal"])]}
        data_inputs = [ds["ridcp500"], ds["urhi"]]
        inputs01 = [ds["ridcp500"], ds["urhi"], ds["rtts"], ds["fattal"]]
        eval_inputs = [ds["rtts"], ds["fattal"], ds.get("synthetic_test"), ds.get("rtts_annotations")]
        resolved = {"datasets": {k: str(v) if v else None for k, v in ds.items()},
                    "checkpoints": {k: str(v) if v else None for k, v in paper["checkpoints"].items()},
                    "external": paper["external"], "device": paper["device"]}
        p05 = {"profile": profile, "results_dir": r, "paper": resolved}
        p06 = {"profile": profile, "results_dir": r, "figures_dir": f, "paper": resolved}
        out01, out02, out03 = [results_dir / "data_manifest.json"], [], []
        pre_param = resolved["checkpoints"].get("corun_pretrain")
        paper_cfg = [Path(paper["config"])] if paper.get("config") else []
        external = [Path(p) for v in paper["external"].values()
                    for p in (v.values() if isinstance(v, Mapping) else [v])]
        eval_inputs += external
    ckpt_inputs = lambda: [pre_ckpt(), col_ckpt(),  # noqa: E731
                           *([Path(p) for p in (paper or {}).get("checkpoints", {}).values() if p])]
    p05.update(options.parameters())
    tables_out = [results_dir / "metrics_real.csv", results_dir / "table1.md",
                  *(results_dir / f"metrics_{name}.csv" for name in options.real_hazy)]
    return [
        Step("01_data_prep", "01_data_prep.ipynb", p01, configs=paper_cfg, inputs=inputs01, outputs=out01),
        Step("02_pretrain_corun", "02_pretrain_corun.ipynb", {"profile": profile, "figures_dir": f},
             configs=configs_pre, inputs=data_inputs, outputs=out02),
        Step("03_colabator_finetune", "03_colabator_finetune.ipynb",
             {"profile": profile, "pretrain_checkpoint": pre_param, "figures_dir": f, "results_dir": r},
             configs=configs_col, inputs=lambda: [*data_inputs, *eval_inputs[:1]],
             weights=lambda: [pre_ckpt()], outputs=out03),
        Step("04_label_pool_inspection", "04_label_pool_inspection.ipynb",
             lambda: {"profile": profile, "pool_dir": str(pool()), "figures_dir": f},
             inputs=lambda: [pool()]),
        Step("05_metric_tables", "05_metric_tables.ipynb", p05, configs=paper_cfg,
             inputs=lambda: [p for p in eval_inputs if p] + options.inputs(), content_inputs=options.content_inputs,
             weights=ckpt_inputs, outputs=tables_out, extra=metric_weights_state),
        Step("06_paper_figures", "06_paper_figures.ipynb", p06, configs=paper_cfg,
             inputs=lambda: [p for p in eval_inputs if p] + options.inputs() + [results_dir / "dehazed", pool()],
             weights=lambda: [*ckpt_inputs(), default_weights_path() or REPO_WEIGHTS],  # + the default-weights figure
             content_inputs=lambda: [*options.content_inputs(), *sorted(results_dir.glob("metrics_*.csv"))],
             outputs=[figures]),
    ]


# ---------------------------------------------------------------------------------------------- real hazy sets

#: Set names of the tables already taken (a real hazy set gets its own ``metrics_<NAME>.csv``).
RESERVED_SET_NAMES = ("real", "synthetic", "fattal")


@dataclass(frozen=True)
class RealHazySet:
    """A folder of real hazy photos the user has: one more Table 1 block (FADE, BRISQUE, NIMA, S), and
    Table 3 (detection AP) when it carries Pascal-VOC ``annotations``.

    ``split``: a file naming the photos to use (one name or stem a line, e.g. DAWN's ``test.txt``);
    ``class_map``: how the annotation classes become RTTS's five (:func:`corun.detection.parse_class_map`:
    a preset such as ``dawn``, ``truck=car`` pairs, a mapping or a YAML file). ``source``: where it was
    given (for messages).
    """

    name: str
    images: Path
    split: Path | None = None
    annotations: Path | None = None
    class_map: Any = None
    source: str = "command line"

    def parameters(self) -> dict:
        """The JSON form passed to notebook 05 (``real_hazy={name: this}``)."""
        return {"images": str(self.images), "split": str(self.split) if self.split else None,
                "annotations": str(self.annotations) if self.annotations else None,
                "class_map": dict(self.class_map) if isinstance(self.class_map, Mapping) else self.class_map}


@dataclass
class TableOptions:
    """What ``corun reproduce`` adds to notebook 05's tables beyond the profile's own sets: real hazy sets,
    metric weight files (``{"brisque": PATH}``) and the detector of Table 3 (torchvision name, a local
    COCO state dict, builder options such as ``{"min_size": 512}``)."""

    real_hazy: dict[str, RealHazySet] = field(default_factory=dict)
    metric_weights: dict[str, Path] = field(default_factory=dict)
    detector: str | None = None
    detector_weights: Path | None = None
    detector_options: dict = field(default_factory=dict)

    def parameters(self) -> dict:
        return {"real_hazy": {n: s.parameters() for n, s in self.real_hazy.items()},
                "metric_weights": {k: str(v) for k, v in self.metric_weights.items()},
                "detector": self.detector,
                "detector_weights": str(self.detector_weights) if self.detector_weights else None,
                "detector_options": dict(self.detector_options)}

    def inputs(self) -> list[Path]:
        """Hashed by size and modification time: the photo folders, annotation folders, detector weights."""
        out = [p for s in self.real_hazy.values() for p in (s.images, s.annotations) if p is not None]
        return out + ([self.detector_weights] if self.detector_weights else [])

    def content_inputs(self) -> list[Path]:
        """Hashed by content: split files, class-map files, metric weight files."""
        out = [s.split for s in self.real_hazy.values() if s.split is not None]
        out += [Path(s.class_map) for s in self.real_hazy.values()
                if isinstance(s.class_map, str) and Path(s.class_map).suffix.lower() in (".yaml", ".yml", ".json")]
        return out + list(self.metric_weights.values())


def split_assignment(text: str, option: str, value_name: str = "VALUE") -> tuple[str, str]:
    """``"NAME=VALUE"`` → ``(NAME, VALUE)``; a ValueError naming ``option`` otherwise."""
    name, sep, value = str(text).partition("=")
    if not sep or not name.strip() or not value.strip():
        raise ValueError(f"{option} expects NAME={value_name}, got {text!r}")
    return name.strip(), value.strip()


def _check_set_name(name: str, where: str) -> str:
    ok = name[:1].isalnum() and all(c.isalnum() or c in "_.-" for c in name)
    if not ok:
        raise ValueError(f"{where}: real hazy set name {name!r}: use letters, digits, '_', '.', '-' "
                         "(it becomes part of file names)")
    if name in RESERVED_SET_NAMES:
        raise ValueError(f"{where}: real hazy set name {name!r} is taken by the profile's own "
                         f"{name!r} set; choose another ({', '.join(RESERVED_SET_NAMES)} are taken)")
    return name


def _at(value: Any, base: Path) -> Path | None:
    """A path from a command line (``base`` = the working directory) or a config (``base`` = the repository)."""
    if value in (None, ""):
        return None
    p = Path(os.path.expanduser(str(value)))
    return p if p.is_absolute() else base / p


def real_hazy_from_config(mapping: Mapping | None, where: str, root: Path = ROOT) -> dict[str, RealHazySet]:
    """A config's ``real_hazy:`` mapping: ``NAME: DIR`` or ``NAME: {images: DIR, split: FILE,
    annotations: DIR, class_map: SPEC}``; relative paths are relative to the repository."""
    out: dict[str, RealHazySet] = {}
    for name, value in (mapping or {}).items():
        name = _check_set_name(str(name), where)
        entry = value if isinstance(value, Mapping) else {"images": value}
        unknown = sorted(set(entry) - {"images", "split", "annotations", "class_map"})
        if unknown:
            raise ValueError(f"{where}: real_hazy.{name}: unknown key(s) {unknown}; "
                             "known: images, split, annotations, class_map")
        if entry.get("images") in (None, ""):
            raise ValueError(f"{where}: real_hazy.{name}: no images folder given")
        cmap = entry.get("class_map")
        if isinstance(cmap, str) and Path(cmap).suffix.lower() in (".yaml", ".yml", ".json"):
            cmap = str(_at(cmap, root))
        out[name] = RealHazySet(name, _at(entry["images"], root), _at(entry.get("split"), root),
                                _at(entry.get("annotations"), root), cmap, f"{where}: real_hazy.{name}")
    return out


def real_hazy_sets(specs: Sequence[str] = (), lists: Sequence[str] = (), annotations: Sequence[str] = (),
                   class_maps: Sequence[str] = (), config: Mapping[str, RealHazySet] | None = None,
                   cwd: Path | None = None) -> dict[str, RealHazySet]:
    """The real hazy sets of one ``corun reproduce`` run: the config's (``config``, from
    :func:`real_hazy_from_config`), then the command line's, which replace a config entry of the same name.

    ``specs``: ``NAME=DIR`` or ``NAME=DIR@SPLIT.txt`` (``--real-hazy``); ``lists``: ``NAME=FILE``
    (``--real-hazy-list``, the split); ``annotations``: ``NAME=DIR`` (``--real-hazy-annotations``);
    ``class_maps``: ``NAME=SPEC`` (``--real-hazy-class-map``). Command-line paths are relative to ``cwd``
    (default: the working directory). Raises ValueError for a malformed or unknown NAME.
    """
    cwd = Path(cwd) if cwd is not None else Path.cwd()
    sets = dict(config or {})
    for text in specs:
        name, value = split_assignment(text, "--real-hazy", "DIR[@SPLIT]")
        _check_set_name(name, "--real-hazy")
        images, split = value, None
        if "@" in value and not _at(value, cwd).exists():
            images, split = value.rsplit("@", 1)
            if not images or not split:
                raise ValueError(f"--real-hazy expects NAME=DIR or NAME=DIR@SPLIT, got {text!r}")
        sets[name] = RealHazySet(name, _at(images, cwd), _at(split, cwd), source=f"--real-hazy {text}")
    for option, items, key in (("--real-hazy-list", lists, "split"),
                               ("--real-hazy-annotations", annotations, "annotations"),
                               ("--real-hazy-class-map", class_maps, "class_map")):
        for text in items:
            name, value = split_assignment(text, option, "CLASS_MAP" if key == "class_map" else "PATH")
            if name not in sets:
                given = ", ".join(sets) or "none"
                raise ValueError(f"{option} {text}: no real hazy set {name!r} (given: {given}); "
                                 f"add it with --real-hazy {name}=DIR")
            if key == "class_map":
                is_file = Path(value).suffix.lower() in (".yaml", ".yml", ".json")
                value = str(_at(value, cwd)) if is_file else value
            else:
                value = _at(value, cwd)
            sets[name] = dataclasses.replace(sets[name], **{key: value})
    return sets


def listed_images(folder: Path, split: Path | None) -> tuple[list[Path], list[str]]:
    """The photos of ``folder`` (all of them, or the ones ``split`` names, in its order: by file name or
    stem) and the split's names that match no photo."""
    from .data import read_name_list
    from .imageio import collect_images

    files = collect_images([Path(folder)]).files
    if split is None:
        return files, []
    by_key = {**{f.stem: f for f in files}, **{f.name: f for f in files}}
    names = list(dict.fromkeys(read_name_list(split)))
    return [by_key[n] for n in names if n in by_key], [n for n in names if n not in by_key]


def check_real_hazy(sets: Mapping[str, RealHazySet], log: Callable[[str], None] = print) -> list[str]:
    """Open every real hazy set before any notebook runs; returns the problems (empty: all good)."""
    problems = []
    for name, s in sets.items():
        found = real_hazy_problems(s)
        problems += [f"real hazy set {name} (from {s.source}): {p}" for p in found]
        if not found:
            n = len(listed_images(s.images, s.split)[0])
            log(f"  {name:<16} {_shown(s.images)}: {n} photo(s)"
                + (f" named by {_shown(s.split)}" if s.split else "")
                + (f", annotations {_shown(s.annotations)}" if s.annotations else ""))
    return problems


def real_hazy_problems(s: RealHazySet) -> list[str]:
    from .data import DatasetError

    if not s.images.is_dir():
        return [f"{s.images} is not a folder"]
    out = []
    try:
        files, missing = listed_images(s.images, s.split)
    except DatasetError as exc:
        files, missing = [], []
        out.append(f"split: {exc}")
    if missing:
        out.append(f"{len(missing)} photo(s) named by {s.split} are not in {s.images}, e.g. {', '.join(missing[:3])}")
    elif not files and not out:
        out.append(f"no photos in {s.images}" + (f" named by {s.split}" if s.split else ""))
    if s.annotations is not None:
        if not s.annotations.is_dir():
            out.append(f"annotations {s.annotations} is not a folder")
        elif not any(s.annotations.glob("*.xml")) and not any((s.annotations / "Annotations").glob("*.xml")):
            out.append(f"annotations {s.annotations} holds no Pascal-VOC .xml files")
    if s.class_map is not None:
        from .detection import ClassMapError, parse_class_map

        try:
            parse_class_map(s.class_map)
        except ClassMapError as exc:
            out.append(f"class map: {exc}")
    return out


def table_options_from_config(data: Mapping, where: str, root: Path = ROOT) -> TableOptions:
    """``real_hazy:``, ``metric_weights:`` (``{metric: file}``) and ``detection:`` (``detector``,
    ``weights``, ``options``) of a reproduce config (the paper profile's, or ``--config`` for smoke)."""
    det = dict(data.get("detection") or {})
    unknown = sorted(set(det) - {"detector", "weights", "options"})
    if unknown:
        raise ValueError(f"{where}: detection: unknown key(s) {unknown}; known: detector, weights, options")
    return TableOptions(real_hazy_from_config(data.get("real_hazy"), where, root),
                        {str(k): _at(v, root) for k, v in (data.get("metric_weights") or {}).items()},
                        det.get("detector"), _at(det.get("weights"), root), dict(det.get("options") or {}))


def merge_table_options(base: TableOptions, real_hazy: Sequence[str] = (), real_hazy_lists: Sequence[str] = (),
                        real_hazy_annotations: Sequence[str] = (), real_hazy_class_maps: Sequence[str] = (),
                        metric_weights: Sequence[str] = (), detector: str | None = None,
                        detector_weights: str | Path | None = None, cwd: Path | None = None) -> TableOptions:
    """``base`` (from a config) with the command line's options on top (see :func:`real_hazy_sets`);
    ``metric_weights``: ``METRIC=FILE`` items (``--weights``)."""
    cwd = Path(cwd) if cwd is not None else Path.cwd()
    sets = real_hazy_sets(real_hazy, real_hazy_lists, real_hazy_annotations, real_hazy_class_maps,
                          base.real_hazy, cwd)
    weights = dict(base.metric_weights)
    for text in metric_weights:
        metric, path = split_assignment(text, "--weights", "FILE")
        weights[metric] = _at(path, cwd)
    return TableOptions(sets, weights, detector or base.detector,
                        _at(detector_weights, cwd) if detector_weights else base.detector_weights,
                        dict(base.detector_options))


def check_table_options(options: TableOptions, log: Callable[[str], None] = print) -> list[str]:
    """Real hazy sets (:func:`check_real_hazy`), metric weight files and detector weights exist."""
    problems = check_real_hazy(options.real_hazy, log)
    for metric, path in options.metric_weights.items():
        from .metrics import METRICS

        if metric not in METRICS:
            problems.append(f"--weights {metric}=...: unknown metric {metric!r}; known: {', '.join(METRICS)}")
        elif not path.is_file():
            problems.append(f"--weights {metric}={path}: no such file")
    if options.detector_weights is not None and not options.detector_weights.is_file():
        problems.append(f"detector weights {options.detector_weights}: no such file")
    return problems


# ---------------------------------------------------------------------------------------------- summary

def _outputs(profile: str, results_dir: Path, root: Path) -> dict:
    figures = _figures_dir(profile, root)
    tables = sorted(p for p in results_dir.glob("*") if p.is_file() and p.suffix in (".csv", ".md", ".tex"))
    figs = sorted(figures.glob("*.png")) if figures.is_dir() else []
    pdfs = sorted(figures.glob("*.pdf")) if figures.is_dir() else []
    return {"tables": [_shown(p, root) for p in tables], "figures_dir": _shown(figures, root),
            "figures_png": len(figs), "figures_pdf": len(pdfs),
            "notebooks": _shown(results_dir / "notebooks", root), "results": _shown(results_dir, root)}


def write_summary(profile: str, results_dir: Path, records: Sequence[StepRecord], total: float,
                  root: Path = ROOT, extra: Mapping | None = None) -> dict:
    from .utils import atomic_write

    summary = {
        "profile": profile,
        "ok": all(r.status in ("ran", "skipped", "not present") for r in records),
        "total_seconds": round(total, 1),
        "seconds": {r.key: round(r.seconds, 1) if r.status == "ran" else r.label for r in records},
        "steps": [dataclasses.asdict(r) for r in records],
        "outputs": _outputs(profile, results_dir, root),
        **(extra or {}),
    }
    results_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(summary, indent=1, default=str) + "\n"
    atomic_write(results_dir / "summary.json", lambda tmp: Path(tmp).write_text(text))
    return summary


def print_summary(summary: Mapping, records: Sequence[StepRecord], log: Callable[[str], None] = print) -> None:
    status = "finished" if summary["ok"] else "STOPPED"
    log(f"\n{summary['profile']} reproduction {status} in {summary['total_seconds']:.1f} s")
    for r in records:
        log(f"  {r.key:<26} {r.label}")
    failed = [r for r in records if r.status == "failed"]
    for r in failed:
        log(f"  error: {r.error}")
    out = summary["outputs"]
    key_tables = [t for t in out["tables"] if Path(t).name in ("table1.md", "metrics_real.csv",
                                                                "metrics_synthetic.csv", "table_synthetic.md")]
    log(f"  {'tables':<26} {', '.join(key_tables) or '(none yet)'}"
        + (f" (+{len(out['tables']) - len(key_tables)} more in {out['results']}/)"
           if len(out["tables"]) > len(key_tables) else ""))
    log(f"  {'figures':<26} {out['figures_dir']}/ ({out['figures_png']} PNG, {out['figures_pdf']} PDF)")
    log(f"  {'executed notebooks':<26} {out['notebooks']}/")
    log(f"  {'summary':<26} {out['results']}/summary.json")


# ---------------------------------------------------------------------------------------------- entry point

def reproduce(profile: str = "smoke", outdir: str | Path = "results", config: str | Path | None = None,
              force: bool = False, notebooks_dir: str | Path | None = None, root: Path = ROOT,
              runner: Callable[..., Path] | None = None, real_hazy: Sequence[str] = (),
              real_hazy_lists: Sequence[str] = (), real_hazy_annotations: Sequence[str] = (),
              real_hazy_class_maps: Sequence[str] = (), metric_weights: Sequence[str] = (),
              detector: str | None = None, detector_weights: str | Path | None = None) -> int:
    """Run the pipeline of ``profile``; returns the exit status (0 all good, 1 a notebook failed, 2 the
    paper profile's datasets or a real hazy set are missing or unusable, or a bad argument).

    ``real_hazy`` … ``detector_weights``: the command line's ``--real-hazy NAME=DIR[@SPLIT]``,
    ``--real-hazy-list NAME=FILE``, ``--real-hazy-annotations NAME=DIR``, ``--real-hazy-class-map
    NAME=SPEC``, ``--weights METRIC=FILE``, ``--detector``, ``--detector-weights`` (see
    :func:`merge_table_options`), on top of the config's ``real_hazy:`` / ``metric_weights:`` /
    ``detection:`` (the paper config, or ``--config`` for smoke)."""
    if profile not in PROFILES:
        print(f"error: unknown profile {profile!r}; choose from {', '.join(PROFILES)}", file=sys.stderr)
        return 2
    t_start = time.time()
    results_dir = Path(outdir) if Path(outdir).is_absolute() else root / outdir
    results_dir = results_dir / profile
    paper = None
    if profile == "paper":
        try:
            paper = load_paper_config(config, root=root)
        except (OSError, ValueError) as exc:
            print(f"error: paper profile: cannot read the config: {exc}", file=sys.stderr)
            return 2
        print(f"paper profile: checking the datasets before running anything "
              f"(config {paper['config'] or 'none'}; environment variables override it)", flush=True)
        problems = check_paper_datasets(paper)
        if problems:
            for p in problems:
                print(f"error: paper profile: {p}", file=sys.stderr)
            print("error: paper profile: nothing was run; fix the dataset paths above "
                  "(see data/README.md for where each dataset comes from)", file=sys.stderr)
            return 2
    try:
        if paper is not None:
            base = paper["tables"]
        elif config is not None:
            cfg_path = Path(config) if Path(config).is_absolute() or Path(config).exists() else root / config
            data = _read_yaml(cfg_path)
            ignored = sorted(set(data) - {"real_hazy", "metric_weights", "detection"})
            if ignored:
                print(f"note: the smoke profile reads real_hazy, metric_weights and detection from "
                      f"{_shown(cfg_path, root)}; ignored: {', '.join(ignored)}", file=sys.stderr)
            base = table_options_from_config(data, _shown(cfg_path, root), root)
        else:
            base = TableOptions()
        options = merge_table_options(base, real_hazy, real_hazy_lists, real_hazy_annotations,
                                      real_hazy_class_maps, metric_weights, detector, detector_weights)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if options.real_hazy:
        print(f"real hazy sets for Table 1: checking {len(options.real_hazy)} before running anything", flush=True)
    problems = check_table_options(options)
    if problems:
        for p in problems:
            print(f"error: {p}", file=sys.stderr)
        print("error: nothing was run; fix the paths above", file=sys.stderr)
        return 2
    steps = pipeline_steps(profile, results_dir, root, paper, options)
    records = run_steps(steps, results_dir, notebooks_dir, force=force,
                        runner=runner, log=lambda m: print(m, flush=True), root=root)
    summary = write_summary(profile, results_dir, records, time.time() - t_start, root)
    print_summary(summary, records)
    return 0 if summary["ok"] else 1
