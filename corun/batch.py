"""Dehazing a list of files and folders: what ``corun dehaze`` runs.

Every input is tried; a bad file is reported in one line and the rest go on. Outputs are PNGs named after
their inputs, written atomically; an existing output is skipped (so an interrupted run resumes) unless
``overwrite`` is set, and an input file is never overwritten.

Nothing a user has is lost (issue 17):

* Output names never collide. Files of different input folders that would share a name (``A/x.png`` and
  ``B/x.png``) send each folder's results to its own subfolder (``OUT/A/x.png``, ``OUT/B/x.png``); a clash
  that remains (two folders both called ``A``, two explicit files both called ``x.png``) fails those files
  with a message naming both, before any work.
* The output location is checked before any work (:func:`check_output_dir`, :class:`OutputDirError`): not an
  existing file, not one of the input folders (its own results would be read back as inputs on the next
  run), creatable and writable.
* A write that fails is one line naming the file; the batch goes on, or stops cleanly when the disk is full
  (or read-only), keeping every output already written.
* Output that is not finite (diverged weights) is never written as an image: the file is reported.
* An output counts as done only when every requested file exists (image, ``--save-transmission``,
  ``--save-stages``), so adding ``--save-transmission`` to a re-run writes the missing maps.
* Temporary files left by a killed run's writes (``.NAME.png.XXXX.tmp``) are removed at the start.
"""
from __future__ import annotations

import errno
import os
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import torch
from tqdm import tqdm

from .imageio import ImageReadError, collect_images, read_image, save_png
from .inference import DEFAULT_OVERLAP, auto_tile, image_to_tensor, run_model, tensor_to_image
from .model import CORUN

#: a temporary file of an atomic write untouched for this long belongs to a dead writer
STALE_TMP_SECONDS = 120
#: errors after which no further write can succeed: the batch stops instead of failing every file
FATAL_WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


class OutputDirError(ValueError):
    """The output folder cannot be used at all; nothing was done. ``str(err)`` is one line."""


@dataclass
class BatchReport:
    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    notes: list[tuple[Path, str]] = field(default_factory=list)
    #: why the batch stopped early (disk full, ...), and how many inputs were not attempted
    stopped: str = ""
    not_attempted: int = 0

    @property
    def ok(self) -> bool:
        return not self.failed and not self.stopped

    def summary(self) -> str:
        lines = [f"dehazed {len(self.written)} image(s)"]
        if self.skipped:
            lines[0] += f", skipped {len(self.skipped)} with existing output (--overwrite to redo)"
        if self.failed:
            lines[0] += f", {len(self.failed)} failed:"
            lines += [f"  {p}: {reason}" for p, reason in self.failed]
        if self.stopped:
            lines.append(f"stopped early: {self.stopped}; {self.not_attempted} input(s) not attempted "
                         "(the outputs written are complete: re-run the same command to continue)")
        return "\n".join(lines)


def output_names(files: list[Path]) -> list[str]:
    """``NAME.png`` per input; inputs sharing a stem (a.jpg, a.png) keep their extension (a.jpg.png)."""
    stems = Counter(p.stem for p in files)
    return [f"{p.stem}.png" if stems[p.stem] == 1 else f"{p.name}.png" for p in files]


@dataclass
class _Job:
    path: Path
    name: str  #: output path relative to the output folder, e.g. "x.png" or "A/x.png"
    group: str | None  #: the input folder's name, None for a file given by name


def plan_outputs(inputs: Iterable[str | Path]) -> tuple[list[_Job], list[tuple[Path, str]], list[str]]:
    """Input files and the output name of each: ``(jobs, errors, notes)`` (see the module docstring).

    ``errors`` holds the scan's problems (missing paths, broken links, ...) and the names that still clash.
    """
    found: list[tuple[Path, int | None]] = []  # (file, index of its input folder; None: given by name)
    folder_names: dict[int, str] = {}
    errors: list[tuple[Path, str]] = []
    seen: set[Path] = set()
    for index, raw in enumerate(inputs):
        scan = collect_images([raw])
        errors += scan.errors
        group = index if Path(raw).is_dir() else None
        if group is not None:
            folder_names[index] = Path(raw).resolve().name
        for p in scan.files:
            if p.resolve() not in seen:
                seen.add(p.resolve())
                found.append((p, group))
    flat = output_names([p for p, _ in found])
    notes: list[str] = []
    if len(set(flat)) < len(flat):  # the same name from two places: one subfolder per input folder
        names = {}
        for group in dict.fromkeys(g for _, g in found):
            members = [p for p, g in found if g == group]
            for p, n in zip(members, output_names(members)):
                names[p] = n if group is None else f"{folder_names[group]}/{n}"
        folders = list(dict.fromkeys(folder_names[g] for _, g in found if g is not None))
        if folders:
            notes.append("files of different input folders share names: each folder's results go to its own "
                         "subfolder (" + ", ".join(f"{g}/" for g in folders) + ")")
        flat = [names[p] for p, _ in found]
    jobs = [_Job(p, n, folder_names.get(g)) for (p, g), n in zip(found, flat)]
    by_name: dict[str, list[_Job]] = {}
    for job in jobs:
        by_name.setdefault(job.name, []).append(job)
    clashes = {n: js for n, js in by_name.items() if len(js) > 1}
    for name, js in clashes.items():
        for job in js:
            others = ", ".join(str(o.path) for o in js if o is not job)
            errors.append((job.path, f"its output {name} would also be the output of {others}; dehaze them "
                                     "into separate -o folders (or rename one)"))
    return [j for j in jobs if j.name not in clashes], errors, notes


def check_output_dir(outdir: str | Path, inputs: Iterable[str | Path]) -> Path:
    """Make sure results can be written into ``outdir`` (created if missing); raises :class:`OutputDirError`."""
    outdir = Path(outdir)
    if outdir.exists() and not outdir.is_dir():
        raise OutputDirError(f"{outdir}: exists and is not a folder; -o needs a folder")
    for raw in inputs:
        if Path(raw).is_dir() and Path(raw).resolve() == outdir.resolve():
            raise OutputDirError(f"{outdir}: is an input folder, so a re-run would dehaze its own results; "
                                 f"choose another -o (e.g. {outdir / 'dehazed'})")
    try:
        outdir.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".corun-write-test.", suffix=".tmp", dir=outdir)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputDirError(f"{outdir}: cannot write there ({exc.strerror or exc})") from None
    return outdir


def remove_stale_temporaries(folders: Iterable[Path], older_than: float = STALE_TMP_SECONDS) -> list[Path]:
    """Delete ``.NAME.png.XXXX.tmp`` files (atomic writes of a killed run) not modified for ``older_than`` s."""
    removed, now = [], time.time()
    for folder in folders:
        if not folder.is_dir():
            continue
        for p in folder.glob(".*.png.*.tmp"):
            try:
                if p.is_file() and now - p.stat().st_mtime > older_than:
                    p.unlink()
                    removed.append(p)
            except OSError:
                continue
    return removed


def _targets(outdir: Path, name: str, depth: int, save_transmission: bool, save_stages: bool) -> list[Path]:
    """Every file a finished output consists of."""
    paths = [outdir / name]
    if save_transmission:
        paths.append(outdir / "transmission" / name)
    if save_stages:
        stem = str(Path(name).with_suffix(""))
        paths += [outdir / "stages" / f"{stem}_J{k}.png" for k in range(1, depth + 1)]
    return paths


def nonfinite_fraction(*tensors: torch.Tensor) -> float:
    """The fraction of values that are NaN or infinite over ``tensors`` (0.0 when all are finite)."""
    total = sum(t.numel() for t in tensors)
    bad = sum(int((~torch.isfinite(t)).sum()) for t in tensors)
    return bad / max(total, 1)


def _fail(report: BatchReport, log: Callable[[str], None], path: Path, reason: str) -> None:
    log(f"error: {path}: {reason}")
    report.failed.append((path, reason))


def _prepare(inputs: list, outdir: Path, report: BatchReport, log: Callable[[str], None]) -> list:
    """The jobs for ``inputs``; unreadable inputs go to ``report``, leftovers of an interrupted run are removed."""
    jobs, errors, notes = plan_outputs(inputs)
    for note in notes:
        log(f"note: {note}")
    for path, reason in errors:
        _fail(report, log, path, reason)
    bases = (outdir, outdir / "transmission", outdir / "stages")
    folders = set(bases) | {(b / j.name).parent for j in jobs for b in bases}
    stale = remove_stale_temporaries(folders)
    if stale:
        log(f"note: removed {len(stale)} temporary file(s) left by an interrupted earlier run in {outdir}")
    return jobs


def _dehaze_image(model: CORUN, path: Path, report: BatchReport, log: Callable[[str], None], *, device,
                  tile, overlap: int, keep_stages: bool, precision: str, margin: int = 0):
    """Read ``path`` and run the model on it; None (the reason in ``report``) when it cannot be read, does
    not fit in memory, or the output is not finite."""
    try:
        arr, notes = read_image(path)
    except ImageReadError as exc:
        log(f"error: {exc}")
        report.failed.append((path, str(exc).removeprefix(f"{path}: ")))
        return None
    for note in notes:
        log(f"note: {path}: {note}")
        report.notes.append((path, note))
    h, w = arr.shape[:2]
    try:
        out = run_model(model, image_to_tensor(arr, device), tile=auto_tile(h, w) if tile == "auto" else tile,
                        overlap=overlap, keep_stages=keep_stages, precision=precision, margin=margin)
    except RuntimeError as exc:  # CUDA raises OutOfMemoryError, the CPU allocator a RuntimeError
        if not isinstance(exc, torch.OutOfMemoryError) and "allocate" not in str(exc):
            raise
        _fail(report, log, path, f"out of memory at {w}x{h}; retry with a smaller --tile (e.g. 512)")
        return None
    bad = nonfinite_fraction(out.image, *out.transmissions, *out.stages)
    if bad:
        _fail(report, log, path, f"the model's output is {100 * bad:.2g}% NaN/infinite (diverged weights?); "
                                 "nothing written for it")
        return None
    return out


def _write_outputs(out, targets: list[Path], save_transmission: bool) -> tuple[Path, OSError] | None:
    """Write the image (and transmission, stages) of ``out`` to ``targets``; (file, error) when a write fails."""
    images = [out.image] + ([out.transmissions[-1]] if save_transmission else []) + list(out.stages)
    for image, where in zip(images, targets):
        try:
            save_png(tensor_to_image(image), where)
        except OSError as exc:
            return where, exc
    return None


def dehaze_files(inputs: Iterable[str | Path], outdir: str | Path, model: CORUN, *,
                 device: torch.device | str = "cpu", tile: int | None | str = "auto",
                 overlap: int = DEFAULT_OVERLAP, save_transmission: bool = False,
                 save_stages: bool = False, overwrite: bool = False, progress: bool = True,
                 log: Callable[[str], None] | None = None, precision: str = "fp32",
                 margin: int = 0) -> BatchReport:
    """Dehaze every image in ``inputs`` (files or folders) into ``outdir``; see module docstring.

    With ``save_transmission`` T̂_K goes to ``outdir/transmission/NAME.png``; with ``save_stages`` each
    stage's J_k (clamped for display) goes to ``outdir/stages/NAME_J{k}.png``. Raises
    :class:`OutputDirError` before any work when ``outdir`` cannot be used. ``precision``: ``"fp32"`` or
    ``"bf16"``; ``margin``: pixels mirrored around each image first (both :func:`corun.inference.run_model`).
    """
    log = log or tqdm.write
    inputs = list(inputs)
    outdir = check_output_dir(outdir, inputs)
    report = BatchReport()
    jobs = _prepare(inputs, outdir, report, log)
    inputs_resolved = {j.path.resolve() for j in jobs}
    model = model.to(device).eval()

    bar = tqdm(jobs, desc="dehaze", unit="img", disable=not progress)
    for index, job in enumerate(bar):
        path = job.path
        bar.set_postfix_str(path.name)
        targets = _targets(outdir, job.name, model.depth, save_transmission, save_stages)
        if any(t.resolve() in inputs_resolved for t in targets):
            _fail(report, log, path, f"output {targets[0]} would overwrite an input file; choose another -o")
            continue
        if not overwrite and all(t.exists() for t in targets):
            report.skipped.append(path)
            continue
        out = _dehaze_image(model, path, report, log, device=device, tile=tile, overlap=overlap,
                            keep_stages=save_stages, precision=precision, margin=margin)
        if out is None:
            continue
        failed = _write_outputs(out, targets, save_transmission)
        if failed is None:
            report.written.append(targets[0])
            continue
        where, exc = failed
        _fail(report, log, path, f"cannot write {where}: {exc.strerror or exc}")
        if exc.errno in FATAL_WRITE_ERRNOS:
            report.stopped = f"{exc.strerror} ({outdir})"
            report.not_attempted = len(jobs) - index - 1
            log(f"error: {report.stopped}: stopping; free space (or fix the folder) and re-run to continue")
            break
    bar.close()
    return report
