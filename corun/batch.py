"""Dehazing a list of files and folders: what ``corun dehaze`` runs.

Every input is tried; a bad file is reported in one line and the rest go on. Outputs are PNGs named after
their inputs, written atomically; an existing output is skipped (so an interrupted run resumes) unless
``overwrite`` is set, and an input file is never overwritten.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import torch
from tqdm import tqdm

from .imageio import ImageReadError, collect_images, read_image, save_png
from .inference import DEFAULT_OVERLAP, auto_tile, image_to_tensor, run_model, tensor_to_image
from .model import CORUN


@dataclass
class BatchReport:
    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    notes: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed

    def summary(self) -> str:
        lines = [f"dehazed {len(self.written)} image(s)"]
        if self.skipped:
            lines[0] += f", skipped {len(self.skipped)} with existing output (--overwrite to redo)"
        if self.failed:
            lines[0] += f", {len(self.failed)} failed:"
            lines += [f"  {p}: {reason}" for p, reason in self.failed]
        return "\n".join(lines)


def output_names(files: list[Path]) -> list[str]:
    """``NAME.png`` per input; inputs sharing a stem (a.jpg, a.png) keep their extension (a.jpg.png)."""
    stems = Counter(p.stem for p in files)
    return [f"{p.stem}.png" if stems[p.stem] == 1 else f"{p.name}.png" for p in files]


def dehaze_files(inputs: Iterable[str | Path], outdir: str | Path, model: CORUN, *,
                 device: torch.device | str = "cpu", tile: int | None | str = "auto",
                 overlap: int = DEFAULT_OVERLAP, save_transmission: bool = False,
                 save_stages: bool = False, overwrite: bool = False, progress: bool = True,
                 log: Callable[[str], None] | None = None) -> BatchReport:
    """Dehaze every image in ``inputs`` (files or folders) into ``outdir``; see module docstring.

    With ``save_transmission`` T̂_K goes to ``outdir/transmission/NAME.png``; with ``save_stages`` each
    stage's J_k (clamped for display) goes to ``outdir/stages/NAME_J{k}.png``.
    """
    log = log or tqdm.write
    outdir = Path(outdir)
    report = BatchReport()
    scan = collect_images(inputs)
    for path, reason in scan.errors:
        log(f"error: {path}: {reason}")
        report.failed.append((path, reason))
    inputs_resolved = {p.resolve() for p in scan.files}
    model = model.to(device).eval()

    bar = tqdm(list(zip(scan.files, output_names(scan.files))), desc="dehaze", unit="img",
               disable=not progress)
    for path, name in bar:
        bar.set_postfix_str(path.name)
        target = outdir / name
        if target.resolve() in inputs_resolved:
            reason = f"output {target} would overwrite an input file; choose another -o"
            log(f"error: {path}: {reason}")
            report.failed.append((path, reason))
            continue
        if target.exists() and not overwrite:
            report.skipped.append(path)
            continue
        try:
            arr, notes = read_image(path)
        except ImageReadError as exc:
            log(f"error: {exc}")
            report.failed.append((path, str(exc).removeprefix(f"{path}: ")))
            continue
        for note in notes:
            log(f"note: {path}: {note}")
            report.notes.append((path, note))
        h, w = arr.shape[:2]
        try:
            out = run_model(model, image_to_tensor(arr, device),
                            tile=auto_tile(h, w) if tile == "auto" else tile, overlap=overlap,
                            keep_stages=save_stages)
        except RuntimeError as exc:  # CUDA raises OutOfMemoryError, the CPU allocator a RuntimeError
            if not isinstance(exc, torch.OutOfMemoryError) and "allocate" not in str(exc):
                raise
            reason = f"out of memory at {w}x{h}; retry with a smaller --tile (e.g. 512)"
            log(f"error: {path}: {reason}")
            report.failed.append((path, reason))
            continue
        save_png(tensor_to_image(out.image), target)
        if save_transmission:
            save_png(tensor_to_image(out.transmissions[-1]), outdir / "transmission" / name)
        if save_stages:
            for k, j in enumerate(out.stages, start=1):
                save_png(tensor_to_image(j), outdir / "stages" / f"{Path(name).stem}_J{k}.png")
        report.written.append(target)
    return report
