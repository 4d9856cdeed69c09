"""Datasets for training and testing: clean + depth (RIDCP500 layout), real hazy photos, paired folders.

Each is a plain :class:`torch.utils.data.Dataset` returning dicts of CHW float tensors in [0, 1];
:func:`make_loader` builds a seeded :class:`~torch.utils.data.DataLoader`; :class:`ResumableLoader` is the
training loop's endless, resumable batch stream (epoch and batch index are part of every checkpoint).

Bad files (unreadable image or depth, no partner) are skipped with one warning each and counted in the
dataset's :class:`DatasetReport`; a folder with no usable sample raises :class:`DatasetError` naming it.

Depth conventions (everything becomes *normalised inverse depth* d ∈ [0, 1], 1 = near, which
:func:`corun.physics.transmission` expects):

* ``.npy`` — RIDCP500's depth_500 holds the monocular estimator's inverse-depth-like output (larger =
  nearer); like upstream it is min–max normalised. Non-finite values are holes.
* ``.png`` — a disparity map (8- or 16-bit, larger = nearer, 0 = unknown, as Middlebury); holes are filled
  from the farther of the nearest valid horizontal neighbours (occlusions belong to the background),
  then min–max normalised.
* ``.mat`` — OTS / ITS metric depth (key ``depth``, larger = farther); d = 1 − normalised depth, which
  makes t = exp(−2β·z/z_max) the exact Beer–Lambert law.
"""
from __future__ import annotations

import os
import random
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from .config import ConfigError
from .imageio import IMAGE_EXTENSIONS, ImageReadError, read_image

DEPTH_EXTENSIONS = (".npy", ".mat", ".png")
CLEAN_DIRS = ("rgb_500", "clean", "rgb", "gt", "GT", "images")
DEPTH_DIRS = ("depth_500", "depth", "disparity")
HAZY_DIRS = ("hazy", "lq", "input")


class DatasetError(ValueError):
    """A dataset folder cannot be used at all; the message names the folder and the reason."""


class DepthReadError(ValueError):
    """A depth / disparity file cannot be used; the message names the file and the reason."""


@dataclass
class DatasetReport:
    """What a dataset found: usable samples, skipped files (path, reason) and names without a partner."""

    root: str = ""
    found: int = 0
    usable: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)
    #: (path, what was fixed) for files used after a repair, e.g. a channel-first depth array
    notes: list[tuple[str, str]] = field(default_factory=list)
    #: depth files that no image uses (a renamed or deleted photo, a typo)
    orphans: list[str] = field(default_factory=list)

    def skip(self, path, reason: str) -> None:
        """Record one bad file and warn once about it."""
        key = (str(path), reason)
        if key not in self.skipped:
            self.skipped.append(key)
            warnings.warn(f"skipping {path}: {reason}", stacklevel=3)

    def summary(self) -> str:
        return (f"{self.root}: {self.usable} usable of {self.found} found, {len(self.skipped)} skipped, "
                f"{len(self.unmatched)} unmatched")


# ------------------------------------------------------------------------------------------------ I/O

def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def read_rgb(path: Path) -> Tensor:
    """Image file → (3, H, W) float32 in [0, 1]; raises ImageReadError naming the file."""
    arr, _ = read_image(path)
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def fill_disparity_holes(disp: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Fill invalid pixels with the smaller (farther) of the nearest valid values to the left and right in
    the same row (vectorised scans); rows without any valid pixel take the global minimum."""
    h, w = disp.shape
    cols = np.broadcast_to(np.arange(w), (h, w))
    left_idx = np.maximum.accumulate(np.where(valid, cols, -1), axis=1)
    right_idx = np.minimum.accumulate(np.where(valid, cols, w)[:, ::-1], axis=1)[:, ::-1]
    rows = np.arange(h)[:, None]
    big = np.inf
    left = np.where(left_idx >= 0, disp[rows, left_idx.clip(0, w - 1)], big)
    right = np.where(right_idx < w, disp[rows, right_idx.clip(0, w - 1)], big)
    fill = np.minimum(left, right)
    fallback = disp[valid].min() if valid.any() else 0.0
    fill = np.where(np.isfinite(fill), fill, fallback)
    return np.where(valid, disp, fill).astype(np.float32)


def _normalise(a: np.ndarray) -> np.ndarray:
    lo, hi = float(a.min()), float(a.max())
    return ((a - lo) / (hi - lo)).astype(np.float32) if hi > lo else np.zeros_like(a, dtype=np.float32)


def _load_mat_depth(path: Path) -> np.ndarray:
    import scipy.io

    try:
        mat = scipy.io.loadmat(path)
    except NotImplementedError:  # MATLAB v7.3 = HDF5
        try:
            import h5py
        except ImportError:
            raise DepthReadError(f"{path}: MATLAB v7.3 file; install h5py to read it") from None
        with h5py.File(path, "r") as f:
            return np.asarray(f["depth"], dtype=np.float32).T
    if "depth" not in mat:
        keys = [k for k in mat if not k.startswith("__")]
        raise DepthReadError(f"{path}: no 'depth' variable (has {keys})")
    return np.asarray(mat["depth"], dtype=np.float32)


def read_raw_depth(path: Path, notes: list[str] | None = None) -> tuple[np.ndarray, np.ndarray, str]:
    """Depth file → (values float32 (H, W), valid mask, kind) with kind 'inverse' or 'metric'.

    A 3-D array is an RGB-saved disparity (all channels equal by convention): channel-last (H, W, C) as
    images are, or channel-first (C, H, W) as tensors are saved (C = 1, 3 or 4); its first channel is used,
    and for channel-first a line saying so is appended to ``notes``.
    """
    path = Path(path)
    ext = path.suffix.lower()
    try:
        if ext == ".npy":
            a, kind = np.load(path, allow_pickle=False).astype(np.float32), "inverse"
        elif ext == ".mat":
            a, kind = _load_mat_depth(path), "metric"
        elif ext == ".png":
            from PIL import Image
            with Image.open(path) as im:
                a, kind = np.asarray(im, dtype=np.float32), "inverse"
        else:
            raise DepthReadError(f"{path}: unsupported depth extension {ext!r} (use {DEPTH_EXTENSIONS})")
    except DepthReadError:
        raise
    except Exception as exc:  # noqa: BLE001 - every reader failure becomes one clear message
        raise DepthReadError(f"{path}: unreadable depth ({type(exc).__name__}: {exc})") from None
    a = np.squeeze(a)
    if a.ndim == 3:
        last, first = a.shape[-1] in (3, 4), a.shape[0] in (3, 4)
        if first and not last:  # (C, H, W): reading it as (H, W, C) would give a C×H "map" of garbage
            a = a[0]
            if notes is not None:
                notes.append("channel-first (C, H, W) array: its first channel used")
        elif last:
            a = a[..., 0]
    if a.ndim != 2 or min(a.shape) < 2:
        raise DepthReadError(f"{path}: expected a 2-D depth map, got shape {a.shape}")
    valid = np.isfinite(a) & ((a > 0) if ext == ".png" else True)
    if kind == "metric":
        valid &= a > 0
    if not valid.any() or float(a[valid].max()) <= float(a[valid].min()):
        raise DepthReadError(f"{path}: depth map is constant or has no valid value")
    return a, valid, kind


def read_inv_depth(path: Path) -> Tensor:
    """Depth file → normalised inverse depth (1, H, W) in [0, 1], 1 = near (module docstring)."""
    a, valid, kind = read_raw_depth(path)
    a = fill_disparity_holes(np.where(valid, a, 0), valid) if not valid.all() else a
    d = _normalise(a)
    if kind == "metric":
        d = 1.0 - d
    return torch.from_numpy(np.ascontiguousarray(d))[None]


#: relative difference of aspect ratios up to which a depth map of another resolution is resized to its image
ASPECT_TOLERANCE = 0.02


def depth_shape_problem(depth_hw: tuple[int, int], image_hw: tuple[int, int]) -> str | None:
    """Why a depth map of ``depth_hw`` cannot belong to an image of ``image_hw`` (None: it can; the same
    aspect at another resolution is resized to the image). A transposed map (W×H) is refused rather than
    guessed: a transpose and a 90° rotation cannot be told apart."""
    (hd, wd), (h, w) = depth_hw, image_hw
    if (hd, wd) == (h, w):
        return None
    if (hd, wd) == (w, h):
        return (f"depth map is {wd}x{hd} (width x height) but its image is {w}x{h}: transposed or rotated; "
                "save it in the image's orientation")
    if abs((wd / hd) / (w / h) - 1) > ASPECT_TOLERANCE:
        return f"depth map is {wd}x{hd} but its image is {w}x{h}: another aspect ratio, so not this image's depth"
    return None


# ------------------------------------------------------------------------------------------ augmentation

def random_crop_box(h: int, w: int, size: int, rng: random.Random) -> tuple[int, int]:
    return rng.randint(0, h - size), rng.randint(0, w - size)


def ensure_min_size(x: Tensor, size: int, mode: str = "bilinear") -> Tensor:
    """Upscale (C, H, W) so that its short side is at least ``size`` (aspect kept)."""
    h, w = x.shape[-2:]
    if min(h, w) >= size:
        return x
    s = size / min(h, w)
    out = (max(size, round(h * s)), max(size, round(w * s)))
    return F.interpolate(x[None], size=out, mode=mode, align_corners=False if mode != "nearest" else None)[0]


def joint_crop_flip(tensors: Sequence[Tensor], crop: int | None, flip: bool, rng: random.Random,
                    resize_crop: bool = False) -> list[Tensor]:
    """Same random (resize,) crop and horizontal flip for all tensors (upstream ``triple_random_crop`` +
    ``augment``). ``resize_crop``: first rescale so the short side is U[crop, short side] (upstream
    ``use_resize_crop``)."""
    out = list(tensors)
    if crop:
        if resize_crop:
            short = min(out[0].shape[-2:])
            target = rng.randint(crop, short) if short > crop else crop + 1
            s = target / short
            h, w = out[0].shape[-2:]
            size = (max(crop, round(h * s)), max(crop, round(w * s)))
            out = [F.interpolate(x[None], size=size, mode="bicubic", align_corners=False)[0].clamp(0, 1)
                   for x in out]
        out = [ensure_min_size(x, crop) for x in out]
        h, w = out[0].shape[-2:]
        top, left = random_crop_box(h, w, crop, rng)
        out = [x[..., top:top + crop, left:left + crop] for x in out]
    if flip and rng.random() < 0.5:
        out = [x.flip(-1) for x in out]
    return [x.contiguous() for x in out]


def _pil(x: Tensor):
    from PIL import Image

    return Image.fromarray((x.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy())


def _tensor(img) -> Tensor:
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


def _blur_radius(u: float) -> int:
    """Upstream's blur: k = int(4.95 u), made odd by adding 1 to even values → radius 1 (p ≈ .40), 3 (≈ .40)
    or 5 (≈ .19) of PIL's GaussianBlur."""
    k = int(u * 4.95)
    return k + 1 if k % 2 == 0 else k


#: Upstream's strong augmentation for the student's view of a real photo (``data/randaugment.py``,
#: ``augment_list_no_geometric``): (name, low, high) with the magnitude drawn uniformly in [low, high).
#: ``Contrast`` appears twice, as upstream (so it is drawn twice as often); colour, equalise and the
#: geometric ops are not in upstream's list.
STRONG_OPS: tuple[tuple[str, float, float], ...] = (
    ("contrast", 0.05, 0.95),
    ("brightness", 0.05, 0.95),
    ("contrast", 0.25, 0.95),
    ("posterize", 4, 8),          # bits = int(v): 4, 5, 6 or 7
    ("sharpness", 0.05, 0.95),
    ("blur", 0, 1),               # PIL GaussianBlur radius 1, 3 or 5 (_blur_radius)
)


def apply_strong_op(img, name: str, v: float, rng: random.Random):
    """One op of :data:`STRONG_OPS` on a PIL RGB image with magnitude ``v`` (Pillow's own operators)."""
    from PIL import ImageEnhance, ImageFilter, ImageOps

    if name == "contrast":
        return ImageEnhance.Contrast(img).enhance(v)
    if name == "brightness":
        return ImageEnhance.Brightness(img).enhance(v)
    if name == "sharpness":
        return ImageEnhance.Sharpness(img).enhance(v)
    if name == "posterize":
        return ImageOps.posterize(img, max(1, int(v)))
    if name == "blur":
        return img.filter(ImageFilter.GaussianBlur(_blur_radius(rng.random())))
    raise ValueError(f"unknown strong-augmentation op {name!r}")


def strong_augment(img: Tensor, rng: random.Random, n: int = 2) -> Tensor:
    """Upstream's RandAugment(n = 2) for Colabator's student view: ``n`` ops drawn with replacement from
    :data:`STRONG_OPS`, each with a uniform magnitude, applied in order on the 8-bit image (as upstream,
    which round-trips through PIL). Returns (3, H, W) in [0, 1]."""
    pil = _pil(img)
    for name, lo, hi in rng.choices(STRONG_OPS, k=n):
        pil = apply_strong_op(pil, name, lo + (hi - lo) * rng.random(), rng)
    return _tensor(pil)


def jpeg_round_trip(img: Tensor, quality: int) -> Tensor:
    """8-bit JPEG at ``quality`` and back (Pillow, 4:2:0), (3, H, W) in [0, 1]."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    _pil(img).save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    return _tensor(Image.open(buf).convert("RGB"))


# ------------------------------------------------------------------------------------------ datasets

def _find_subdir(root: Path, names: Sequence[str]) -> Path | None:
    for n in names:
        if (root / n).is_dir():
            return root / n
    return None


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DatasetError(f"{path}: {what} folder not found")
    return path


class _SkippingDataset(Dataset):
    """Shared behaviour: a sample that fails to load at run time is reported and replaced by the next."""

    report: DatasetReport

    def _load(self, index: int, rng: random.Random) -> dict:
        raise NotImplementedError

    def _rng(self, index: int) -> random.Random:
        base = self.seed if self.seed is not None else random.getrandbits(32)
        return random.Random(hash((base, index, self.epoch)))

    epoch = 0
    seed: int | None = 0

    def set_epoch(self, epoch: int) -> None:
        """Different crops / flips / augmentations per epoch, still reproducible from ``seed``."""
        self.epoch = epoch

    def _readable(self, path: Path) -> bool:
        """Decode ``path`` once; an unreadable file is recorded in the report and left out."""
        return self._image_hw(path) is not None

    def _image_hw(self, path: Path) -> tuple[int, int] | None:
        """(H, W) of ``path`` decoded as training reads it (EXIF-oriented), or None (recorded) if unreadable."""
        try:
            return read_image(path)[0].shape[:2]
        except ImageReadError as exc:
            self.report.skip(path, str(exc).partition(": ")[2])
            return None

    def __getitem__(self, index: int) -> dict:
        n = len(self)
        for k in range(n):
            i = (index + k) % n
            try:
                return self._load(i, self._rng(i))
            except (ImageReadError, DepthReadError) as exc:
                path, _, reason = str(exc).partition(": ")
                self.report.skip(path, reason)
        raise DatasetError(f"{self.report.root}: no sample could be loaded")


class CleanDepthDataset(_SkippingDataset):
    """Clean photos with depth: ``root/{rgb_500,clean}/NAME.jpg|png`` + ``root/{depth_500,depth}/NAME.npy|mat|png``
    (or give ``clean_dir`` / ``depth_dir``; depth files may also sit beside the image as ``NAME_disp.png``).

    Returns ``{"clean": (3,h,w), "inv_depth": (1,h,w) in [0,1], "name": str}``; depth is normalised on the
    full image before the shared random crop / flip (upstream order).
    """

    def __init__(self, root: str | os.PathLike | None = None, clean_dir=None, depth_dir=None, crop: int | None = 288,
                 flip: bool = True, resize_crop: bool = False, seed: int | None = 0, validate: bool = True,
                 cache: bool = False):
        root = Path(root) if root is not None else None
        #: keep decoded images + depth in memory (small datasets: the mini set is ~60 MB decoded); each
        #: DataLoader worker keeps its own copy
        self.cache: dict[int, tuple[Tensor, Tensor]] | None = {} if cache else None
        if clean_dir is None:
            if root is None:
                raise DatasetError("give a dataset root or clean_dir")
            _require_dir(root, "dataset")
            clean_dir = _find_subdir(root, CLEAN_DIRS) or root
        if depth_dir is None:
            depth_dir = _find_subdir(root, DEPTH_DIRS) if root is not None else None
            depth_dir = depth_dir or Path(clean_dir)
        self.clean_dir, self.depth_dir = _require_dir(Path(clean_dir), "clean image"), _require_dir(Path(depth_dir), "depth")
        self.crop, self.flip, self.resize_crop, self.seed = crop, flip, resize_crop, seed
        self.report = DatasetReport(root=str(root or self.clean_dir))
        self.samples: list[tuple[Path, Path]] = []
        self._claimed: set[Path] = set()
        for img in image_files(self.clean_dir):
            if self.depth_dir == self.clean_dir and img.stem.endswith(("_disp", "_depth")):
                continue
            self.report.found += 1
            depth = self._depth_for(img.stem)
            if depth is None:
                self.report.unmatched.append(img.name)
                self.report.skip(img, f"no depth file for it in {self.depth_dir}")
                continue
            self._claimed.add(depth)
            if validate and not self._valid(img, depth):
                continue
            self.samples.append((img, depth))
        self.report.usable = len(self.samples)
        self.report.orphans = self._orphan_depth_files()
        if not self.samples:
            raise DatasetError(f"{self.clean_dir}: no usable clean image with depth "
                               f"({self.report.found} images, {len(self.report.skipped)} skipped)")

    def _depth_for(self, stem: str) -> Path | None:
        for suffix in ("", "_disp", "_depth"):
            for ext in DEPTH_EXTENSIONS:
                p = self.depth_dir / f"{stem}{suffix}{ext}"
                if p.is_file() and not (self.depth_dir == self.clean_dir and suffix == "" and ext == ".png"):
                    return p
        return None

    def _orphan_depth_files(self) -> list[str]:
        """Depth files in ``depth_dir`` that no image claimed (beside the images: only ``*_disp`` / ``*_depth``)."""
        same = self.depth_dir == self.clean_dir
        return sorted(p.name for p in self.depth_dir.iterdir()
                      if p.is_file() and p.suffix.lower() in DEPTH_EXTENSIONS and p not in self._claimed
                      and not (same and not p.stem.endswith(("_disp", "_depth"))))

    def _valid(self, img: Path, depth: Path) -> bool:
        hw = self._image_hw(img)
        if hw is None:
            return False
        notes: list[str] = []
        try:
            a, _, _ = read_raw_depth(depth, notes)
        except DepthReadError as exc:
            self.report.skip(depth, str(exc).partition(": ")[2])
            return False
        problem = depth_shape_problem(a.shape, hw)
        if problem:
            self.report.skip(depth, problem)
            return False
        self.report.notes += [(str(depth), n) for n in notes]
        if a.shape != tuple(hw):
            self.report.notes.append((str(depth), f"depth {a.shape[1]}x{a.shape[0]} resized to its image's "
                                                  f"{hw[1]}x{hw[0]}"))
        return True

    def __len__(self) -> int:
        return len(self.samples)

    def _decoded(self, index: int) -> tuple[Tensor, Tensor]:
        if self.cache is not None and index in self.cache:
            return self.cache[index]
        img_path, depth_path = self.samples[index]
        clean = read_rgb(img_path)
        d = read_inv_depth(depth_path)
        problem = depth_shape_problem(tuple(d.shape[-2:]), tuple(clean.shape[-2:]))
        if problem:  # validate=False, or the file changed since: never stretch another shape into place
            raise DepthReadError(f"{depth_path}: {problem}")
        if d.shape[-2:] != clean.shape[-2:]:
            d = F.interpolate(d[None], size=clean.shape[-2:], mode="bilinear", align_corners=False)[0]
        if self.cache is not None:
            self.cache[index] = (clean, d)
        return clean, d

    def _load(self, index: int, rng: random.Random) -> dict:
        img_path, _ = self.samples[index]
        clean, d = self._decoded(index)
        clean, d = joint_crop_flip([clean, d], self.crop, self.flip, rng, self.resize_crop)
        return {"clean": clean, "inv_depth": d.clamp(0, 1), "name": img_path.name}


class RealHazyDataset(_SkippingDataset):
    """A folder of real hazy photos (URHI for training; RTTS / Fattal for testing).

    Returns ``{"image": (3,h,w), "strong": upstream's strong augmentation of it, "name": file name}``; the
    name is the key of Colabator's label pool. ``size`` resizes to a square like upstream (``cv2.resize`` to
    gt_size); ``crop`` takes a random crop instead; neither keeps the full image (use batch size 1).
    ``names``: only these file names (or stems) of the folder, e.g. a split file's lines; a listed name
    without a file is an error naming it. ``jpeg_p``: the weak view is JPEG-compressed (quality ~
    randint[30, 95]) with this probability before resizing, as upstream's ``SemiHazeOnlineDataset`` (0.5).
    """

    def __init__(self, root: str | os.PathLike, size: int | None = None, crop: int | None = None,
                 flip: bool = False, strong: bool = True, seed: int | None = 0, validate: bool = True,
                 names: Sequence[str] | None = None, jpeg_p: float = 0.0,
                 jpeg_quality_range: tuple[int, int] = (30, 95)):
        self.root = _require_dir(Path(root), "real hazy image")
        self.size, self.crop, self.flip, self.strong, self.seed = size, crop, flip, strong, seed
        self.jpeg_p, self.jpeg_quality_range = jpeg_p, tuple(jpeg_quality_range)
        self.report = DatasetReport(root=str(self.root))
        files = image_files(self.root)
        if names is not None:
            wanted = [n.strip() for n in names if n.strip()]
            by_key = {**{f.stem: f for f in files}, **{f.name: f for f in files}}
            missing = [n for n in wanted if n not in by_key]
            if missing:
                raise DatasetError(f"{self.root}: {len(missing)} listed image(s) not found, e.g. "
                                   + ", ".join(missing[:5]))
            files = list(dict.fromkeys(by_key[n] for n in wanted))
        self.report.found = len(files)
        self.files = [f for f in files if not validate or self._readable(f)]
        self.report.usable = len(self.files)
        if not self.files:
            raise DatasetError(f"{self.root}: no usable image ({self.report.found} image files, "
                               f"{len(self.report.skipped)} skipped)")

    def __len__(self) -> int:
        return len(self.files)

    def _load(self, index: int, rng: random.Random) -> dict:
        path = self.files[index]
        img = read_rgb(path)
        if self.jpeg_p > 0 and rng.random() < self.jpeg_p:
            img = jpeg_round_trip(img, rng.randint(*self.jpeg_quality_range))
        if self.size:
            img = F.interpolate(img[None], size=(self.size, self.size), mode="bicubic", align_corners=False)[0].clamp(0, 1)
        img = joint_crop_flip([img], self.crop, self.flip, rng)[0]
        out = {"image": img, "name": path.name}
        if self.strong:
            out["strong"] = strong_augment(img, rng)
        return out


def read_name_list(path: str | os.PathLike) -> list[str]:
    """A split file: one image name (or stem) per line; blank lines and ``#`` comments ignored."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: name list not found")
    return [ln.split("#")[0].strip() for ln in path.read_text().splitlines() if ln.split("#")[0].strip()]


def _pair_keys(stem: str) -> list[str]:
    """Candidate clean stems for a hazy stem: same name, 'hazy'→'GT'/'gt'/'clean', prefix before '_'."""
    keys = [stem]
    for a in ("hazy", "HAZY", "Hazy"):
        if a in stem:
            keys += [stem.replace(a, b) for b in ("GT", "gt", "clean")]
    if "_" in stem:
        keys.append(stem.split("_")[0])
    return keys


class PairedDataset(_SkippingDataset):
    """Paired hazy / clean folders (``root/hazy`` + ``root/clean|gt|GT``), matched by name (exact, O-HAZE's
    ``NN_outdoor_hazy``↔``NN_outdoor_GT``, or SOTS' ``0001_0.8_0.2``↔``0001``). Returns
    ``{"hazy", "clean", "name"}``; optional joint crop / flip for training."""

    def __init__(self, root: str | os.PathLike | None = None, hazy_dir=None, clean_dir=None,
                 crop: int | None = None, flip: bool = False, seed: int | None = 0, validate: bool = True):
        root = Path(root) if root is not None else None
        if root is not None:
            _require_dir(root, "dataset")
        hazy_dir = Path(hazy_dir) if hazy_dir else (_find_subdir(root, HAZY_DIRS) if root else None)
        clean_dir = Path(clean_dir) if clean_dir else (_find_subdir(root, CLEAN_DIRS) if root else None)
        if hazy_dir is None or clean_dir is None:
            raise DatasetError(f"{root}: expected subfolders {'/'.join(HAZY_DIRS)} and {'/'.join(CLEAN_DIRS)}")
        self.hazy_dir, self.clean_dir = _require_dir(hazy_dir, "hazy"), _require_dir(clean_dir, "clean")
        self.crop, self.flip, self.seed = crop, flip, seed
        self.report = DatasetReport(root=str(root or self.hazy_dir))
        cleans = {p.stem: p for p in image_files(self.clean_dir)}
        self.pairs: list[tuple[Path, Path]] = []
        for h in image_files(self.hazy_dir):
            self.report.found += 1
            c = next((cleans[k] for k in _pair_keys(h.stem) if k in cleans), None)
            if c is None:
                self.report.unmatched.append(h.name)
                self.report.skip(h, f"no clean partner in {self.clean_dir}")
                continue
            if validate:
                hw_hazy, hw_clean = self._image_hw(h), self._image_hw(c)
                if hw_hazy is None or hw_clean is None:
                    continue
                if hw_hazy != hw_clean:
                    self.report.skip(h, f"size {hw_hazy[1]}x{hw_hazy[0]} differs from its clean image {c.name} "
                                        f"{hw_clean[1]}x{hw_clean[0]}")
                    continue
            self.pairs.append((h, c))
        self.report.usable = len(self.pairs)
        if not self.pairs:
            raise DatasetError(f"{self.hazy_dir}: no usable hazy/clean pair ({self.report.found} hazy images, "
                               f"{len(self.report.skipped)} skipped)")

    def __len__(self) -> int:
        return len(self.pairs)

    def _load(self, index: int, rng: random.Random) -> dict:
        hp, cp = self.pairs[index]
        hazy, clean = read_rgb(hp), read_rgb(cp)
        if hazy.shape != clean.shape:
            raise ImageReadError(f"{hp}: size {tuple(hazy.shape[1:])} differs from its clean image "
                                 f"{cp.name} {tuple(clean.shape[1:])}")
        hazy, clean = joint_crop_flip([hazy, clean], self.crop, self.flip, rng)
        return {"hazy": hazy, "clean": clean, "name": hp.name}


# ------------------------------------------------------------------------------------------ loaders

def _seed_worker(worker_id: int) -> None:
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)


def make_loader(dataset: Dataset, batch_size: int = 1, shuffle: bool = False, num_workers: int = 0,
                seed: int = 0, drop_last: bool = False, pin_memory: bool = False) -> DataLoader:
    """A reproducible DataLoader (seeded shuffling and worker RNGs)."""
    g = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                      drop_last=drop_last, generator=g, worker_init_fn=_seed_worker, pin_memory=pin_memory,
                      persistent_workers=num_workers > 0)


# ------------------------------------------------------------------------------------- training stream

class _Batches(torch.utils.data.Sampler):
    def __init__(self, batches):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)


class ResumableLoader:
    """Epoch-wise batches from a DistributedSampler, resumable at (epoch, batch index)."""

    def __init__(self, dataset, batch_size: int, world: int, rank: int, seed: int, num_workers: int,
                 pin_memory: bool = False):
        from torch.utils.data import DistributedSampler

        self.dataset, self.batch_size, self.num_workers, self.pin = dataset, batch_size, num_workers, pin_memory
        self.sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed)
        if len(self.sampler) < batch_size:
            raise ConfigError(f"data.batch_size {batch_size} is larger than the {len(self.sampler)} samples "
                              f"each of the {world} process(es) gets from {len(dataset)} images")
        self.epoch, self.index = 0, 0
        self._it = None

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.index, self._it = int(state["epoch"]), int(state["index"]), None

    def _start_epoch(self):
        self.sampler.set_epoch(self.epoch)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(self.epoch)
        idx = list(self.sampler)
        batches = [idx[i:i + self.batch_size] for i in range(0, len(idx) - self.batch_size + 1, self.batch_size)]
        loader = DataLoader(self.dataset, batch_sampler=_Batches(batches[self.index:]),
                            num_workers=self.num_workers, pin_memory=self.pin)
        self._it = iter(loader)

    def next(self) -> dict:
        """The next batch; ``state_dict()`` afterwards points past it."""
        for _ in range(2):
            if self._it is None:
                self._start_epoch()
            try:
                batch = next(self._it)
            except StopIteration:
                self.epoch, self.index, self._it = self.epoch + 1, 0, None
                continue
            self.index += 1
            return batch
        raise RuntimeError("the data loader produced no batch")


# ---------------------------------------------------------------------------------------------- checking

def check_folder(path: Path, kind: str) -> dict:
    """Open ``path`` as a dataset of ``kind`` (``clean-depth``, ``real`` or ``paired``) and describe it, as
    ``corun data check`` prints it; raises DatasetError when unusable."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # every problem is listed in the report instead
        if kind == "clean-depth":
            ds = CleanDepthDataset(path, crop=None, flip=False)
        elif kind == "real":
            ds = RealHazyDataset(path, strong=False)
        else:
            ds = PairedDataset(path)
    rep = ds.report
    info = {"path": str(path), "kind": kind, "found": rep.found, "usable": rep.usable,
            "skipped": [f"{p}: {r}" for p, r in rep.skipped], "unmatched": rep.unmatched,
            "notes": [f"{p}: {n}" for p, n in rep.notes], "orphan_depth": rep.orphans}
    if kind == "clean-depth":
        ranges, holes = [], []
        for _, dp in ds.samples:
            a, valid, dkind = read_raw_depth(dp)
            ranges.append((float(a[valid].min()), float(a[valid].max())))
            holes.append(1.0 - float(valid.mean()))
        info["depth_min"] = min(r[0] for r in ranges)
        info["depth_max"] = max(r[1] for r in ranges)
        info["depth_hole_fraction_max"] = max(holes)
        info["depth_files"] = sorted({p.suffix for _, p in ds.samples})
    return info
