"""Small image files of every awkward kind, written for tests (nothing downloaded, nothing shared)."""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def gradient(h: int = 24, w: int = 40) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x / max(w - 1, 1), y / max(h - 1, 1), 0.5 + 0 * x], axis=2).astype(np.float32)


def save_rgb(path: Path, arr: np.ndarray | None = None, **kw) -> Path:
    arr = gradient() if arr is None else arr
    Image.fromarray((arr * 255).round().astype(np.uint8)).save(path, **kw)
    return path


def save_png16_rgb(path: Path, arr16: np.ndarray) -> Path:
    """A 16-bit RGB PNG written by hand (Pillow cannot write one)."""
    h, w, _ = arr16.shape
    raw = b"".join(b"\x00" + arr16[i].astype(">u2").tobytes() for i in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))
    return path


def awkward_images(folder: Path) -> dict[str, Path]:
    """Readable files in every colour mode the CLI must convert, keyed by kind."""
    folder.mkdir(parents=True, exist_ok=True)
    rgb = (gradient() * 255).astype(np.uint8)
    out = {"rgb": save_rgb(folder / "rgb.png")}
    Image.fromarray(rgb[..., 0]).save(folder / "gray.png")
    out["gray"] = folder / "gray.png"
    Image.fromarray((gradient()[..., 0] * 65535).astype(np.uint16)).save(folder / "gray16.png")
    out["gray16"] = folder / "gray16.png"
    Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)])).save(folder / "rgba.png")
    out["rgba"] = folder / "rgba.png"
    Image.fromarray(rgb).convert("CMYK").save(folder / "cmyk.jpg")
    out["cmyk"] = folder / "cmyk.jpg"
    Image.fromarray(rgb).convert("P").save(folder / "palette.bmp")
    out["palette"] = folder / "palette.bmp"
    img = Image.fromarray(rgb)  # 40 wide, 24 high; orientation 6 = rotate 90° clockwise to view
    exif = img.getexif()
    exif[0x0112] = 6
    img.save(folder / "rotated.JPG", exif=exif)
    out["exif"] = folder / "rotated.JPG"
    out["rgb16"] = save_png16_rgb(folder / "rgb16.png", (gradient() * 65535).astype(np.uint16))
    Image.fromarray(rgb).save(folder / "photo.webp")
    out["webp"] = folder / "photo.webp"
    Image.fromarray(rgb).save(folder / "scan.TIF")
    out["tif"] = folder / "scan.TIF"
    return out


def bad_images(folder: Path) -> dict[str, Path]:
    """Files that look like images by name but cannot be decoded."""
    folder.mkdir(parents=True, exist_ok=True)
    big = save_rgb(folder / "_full.jpg", gradient(64, 64), quality=95)
    data = big.read_bytes()
    big.unlink()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (folder / "notes.png").write_text("this is not an image")
    (folder / "empty.jpg").write_bytes(b"")
    return {"truncated": folder / "truncated.jpg", "not_image": folder / "notes.png",
            "empty": folder / "empty.jpg"}
