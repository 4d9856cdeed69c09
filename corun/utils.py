"""Small helpers every layer shares; imports nothing from corun (so no model code): the repository and what
"relative to the repository" means, atomic writes, file hashes, devices and padding.

**The repository.** The notebooks take folder parameters (``runs/...``, ``results/...``, ``figures/...``) that
must mean the same thing wherever the kernel starts: papermill under ``corun reproduce`` starts it in the
repository, JupyterLab in ``notebooks/``. Every relative path a notebook is given or builds goes through
:func:`repo_path`, and the training config a notebook hands to :func:`corun.train.train` through
:func:`anchor_outputs`, so a kernel started in ``notebooks/`` finds the finished runs of ``make reproduce``
instead of training new ones into ``notebooks/runs/`` (issue 17.9). :data:`ROOT` is found by
:func:`find_root`, not taken from where the package is installed, so it is right for a regular (non-editable)
install too.

The command line keeps the usual meaning (relative to the current folder); the trainer falls back to the
repository for *inputs* that are not found there (``corun.train.setup.resolve``).
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

_MARKERS = ("configs", "notebooks", "pyproject.toml")   # what a corun checkout holds at its top


def _is_checkout(folder: Path) -> bool:
    return all((folder / m).exists() for m in _MARKERS) and (folder / "corun").is_dir()


def find_root(start: str | os.PathLike | None = None) -> Path:
    """The corun checkout: ``$CORUN_ROOT`` when set; else the first folder holding ``configs/``,
    ``notebooks/``, ``corun/`` and ``pyproject.toml`` above this file (an editable install or a checkout on
    ``PYTHONPATH``), then above ``start`` (default: the current folder, e.g. a regular install used from
    inside a clone); else the current folder."""
    env = os.environ.get("CORUN_ROOT")
    if env:
        return Path(env).expanduser().resolve()
    here = Path(__file__).resolve().parent
    cwd = Path(start or os.getcwd()).resolve()
    for base in (here, cwd):
        for folder in (base, *base.parents):
            if _is_checkout(folder):
                return folder
    return cwd


#: the repository (the folder holding ``corun/``, ``configs/``, ``notebooks/``)
ROOT = find_root()


def repo_path(path: str | os.PathLike, root: Path = ROOT) -> Path:
    """``path`` as an absolute path: absolute paths stay (``~`` expanded), relative ones are relative to ``root``."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else root / p


def repo_relative(path: str | os.PathLike, root: Path = ROOT) -> str:
    """``path`` shown relative to ``root`` when it lies inside it, else as given."""
    p = Path(path)
    return str(p.relative_to(root)) if p.is_absolute() and p.is_relative_to(root) else str(p)


def anchor_outputs(cfg, root: Path = ROOT):
    """A copy of the training config ``cfg`` whose output folders (``train.out_dir`` and, when set,
    ``colabator.pool_dir``) are absolute, relative to ``root``.

    Only outputs move: those two are settings a resumed run may change (``corun.train.RESUMABLE_KEYS``), so a
    run made under ``corun reproduce`` is still recognised as the same run. Inputs keep the values written
    in the config (the trainer finds them in the repository when they are not in the current folder).
    """
    train = dataclasses.replace(cfg.train, out_dir=str(repo_path(cfg.train.out_dir, root)))
    changes = {"train": train}
    colab = getattr(cfg, "colabator", None)
    if colab is not None and colab.pool_dir:
        changes["colabator"] = dataclasses.replace(colab, pool_dir=str(repo_path(colab.pool_dir, root)))
    return dataclasses.replace(cfg, **changes)


# ---------------------------------------------------------------------------------------------- atomic writes

_UMASK = os.umask(0o022)
os.umask(_UMASK)


def atomic_write(path: str | os.PathLike, write) -> Path:
    """Call ``write(tmp_path)`` then fsync and rename it onto ``path``; the target is never half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


# ---------------------------------------------------------------------------------------------- hashing

def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@functools.lru_cache(maxsize=256)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes (cached per process by path, size and modification time)."""
    p = Path(path).resolve()
    st = p.stat()
    return _file_sha256(str(p), st.st_size, st.st_mtime_ns)


# ---------------------------------------------------------------------------------------------- devices

def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` → CUDA if available, else Apple MPS, else CPU; anything else is passed to torch."""
    if str(device) != "auto":
        dev = torch.device(device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("--device cuda was requested but CUDA is not available on this machine")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


# ---------------------------------------------------------------------------------------------- padding

def pad_to_multiple(x: Tensor, multiple: int = 8) -> tuple[Tensor, tuple[int, int]]:
    """Reflect-pad (…, H, W) at the bottom/right to multiples of ``multiple``; returns (padded, (H, W)).

    Reflection needs the pad to be smaller than the side; tiny images fall back to edge replication.
    """
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        mode = "reflect" if ph < h and pw < w else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return x, (h, w)
