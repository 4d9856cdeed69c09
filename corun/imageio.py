"""Reading photos the way a user's folder holds them, and writing results without losing anything.

:func:`read_image` returns float32 RGB in [0, 1] (H, W, 3) with EXIF orientation applied and any other
colour mode (grayscale, palette, RGBA, CMYK, 16-bit) converted, plus human-readable notes on what was
converted. Problems raise :class:`ImageReadError` whose message names the file and the reason.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .utils import atomic_write

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})


class ImageReadError(ValueError):
    """An input file could not be read as an image; ``str(err)`` is one line naming file and reason."""


def is_image_file(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


@dataclass
class InputScan:
    """Result of :func:`collect_images`: the image files found and one message per problem."""

    files: list[Path] = field(default_factory=list)
    errors: list[tuple[Path, str]] = field(default_factory=list)


def collect_images(paths: Iterable[str | os.PathLike], recursive: bool = False) -> InputScan:
    """Expand files and folders into a sorted, de-duplicated list of image files.

    A missing path, a file without an image extension given explicitly, a folder without any image
    file, or a broken symbolic link (dangling, or a loop; given by name or with an image extension in a
    folder) becomes an entry in ``errors`` (the caller reports it and goes on with the rest).
    """
    scan, seen = InputScan(), set()
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            pattern = "**/*" if recursive else "*"
            found = sorted(p for p in path.glob(pattern) if p.is_file() and is_image_file(p))
            scan.errors += [(p, broken_link_reason(p)) for p in sorted(path.glob(pattern))
                            if is_image_file(p) and p.is_symlink() and not p.exists()]
            if not found:
                scan.errors.append((path, "folder contains no image files "
                                          f"({', '.join(sorted(IMAGE_EXTENSIONS))})"))
        elif path.is_file():
            if not is_image_file(path):
                scan.errors.append((path, f"not an image file extension ({path.suffix or 'none'})"))
                continue
            found = [path]
        else:
            scan.errors.append((path, broken_link_reason(path) if path.is_symlink() else "no such file or folder"))
            continue
        for p in found:
            key = p.resolve()
            if key not in seen:
                seen.add(key)
                scan.files.append(p)
    return scan


def broken_link_reason(path: Path) -> str:
    """Why the symbolic link ``path`` leads nowhere: a loop, or the (missing) target it names."""
    import errno

    try:
        path.stat()
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symbolic link loop (the link leads back to itself)"
    return f"broken symbolic link: its target {os.readlink(path)} does not exist"


def _to_float_rgb(img: Image.Image, notes: list[str]) -> np.ndarray:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float32)
        if mode == "F":
            scale = 1.0 if arr.max(initial=0) <= 1.0 else float(arr.max())
            notes.append("32-bit float grayscale scaled to [0,1] and converted to RGB")
        else:
            scale = 65535.0 if arr.max(initial=0) > 255 or mode.startswith("I;16") else 255.0
            notes.append(f"{16 if scale > 255 else 8}-bit grayscale converted to RGB")
        arr = np.clip(arr / scale, 0.0, 1.0)
        return np.repeat(arr[..., None], 3, axis=2)
    if mode in ("RGB;16", "RGBA;16") or mode.endswith(";16"):
        arr = np.asarray(img, dtype=np.float32)[..., :3] / 65535.0
        notes.append("16-bit colour scaled to [0,1]")
        return arr
    if mode != "RGB":
        if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
            notes.append(f"{mode} image: alpha channel dropped")
        elif mode in ("L", "1"):
            notes.append("grayscale converted to RGB")
        elif mode == "P":
            notes.append("palette image converted to RGB")
        else:
            notes.append(f"{mode} converted to RGB")
        if mode == "P":
            img = img.convert("RGBA")
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.float32) / 255.0


def read_image(path: str | os.PathLike) -> tuple[np.ndarray, list[str]]:
    """Read ``path`` as float32 RGB (H, W, 3) in [0, 1]; returns ``(array, notes)``."""
    path = Path(path)
    notes: list[str] = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                rawmodes = {str(t[3]) for t in img.tile or []}  # decoder raw modes, e.g. "RGB;16B"
                if img.mode == "RGB" and any("16" in r for r in rawmodes):
                    notes.append("16-bit colour read at 8-bit precision")
                img.load()  # decode now: truncated files fail here, not later
                oriented = ImageOps.exif_transpose(img)
                if oriented is not img:
                    orientation = img.getexif().get(0x0112)
                    if orientation not in (None, 1):
                        notes.append(f"EXIF orientation {orientation} applied")
                arr = _to_float_rgb(oriented, notes)
    except FileNotFoundError:
        raise ImageReadError(f"{path}: no such file") from None
    except UnidentifiedImageError:
        size = path.stat().st_size if path.exists() else 0
        reason = "empty file" if size == 0 else "not an image (unrecognised format)"
        raise ImageReadError(f"{path}: {reason}") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageReadError(f"{path}: image too large to decode safely ({exc})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        msg = str(exc) or type(exc).__name__
        if "truncated" in msg.lower():
            msg = f"truncated or damaged image ({msg})"
        raise ImageReadError(f"{path}: {msg}") from None
    if arr.ndim != 3 or arr.shape[2] != 3 or min(arr.shape[:2]) < 1:
        raise ImageReadError(f"{path}: unexpected image shape {arr.shape}")
    return np.ascontiguousarray(arr), notes


def to_uint8(arr: np.ndarray) -> np.ndarray:
    """Float image in [0, 1] (H, W) or (H, W, C) → uint8 with rounding."""
    return (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def save_png(arr: np.ndarray, path: str | os.PathLike) -> Path:
    """Write a float [0,1] image (H, W) or (H, W, 3) as 8-bit PNG, atomically."""
    img = Image.fromarray(to_uint8(np.squeeze(arr) if arr.ndim == 3 and arr.shape[2] == 1 else arr))
    return atomic_write(path, lambda tmp: img.save(tmp, format="PNG"))
