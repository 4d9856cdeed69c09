"""The embedded mini dataset: built in seconds from files that ship inside installed packages.

Nothing is downloaded. Sources (recorded per scene in ``manifest.json`` with how its depth was obtained):

* **rendered** — outdoor terrain scenes ray-cast from heightmaps (spectral fractal terrain, and matplotlib's
  bundled DEMs ``jacksboro_fault_dem.npz`` and ``topobathy.npz``), textured with scikit-image's bundled
  ``grass.png`` / ``gravel.png``, under a sky. Depth is *exact*: the stored map is d = 1 − z / z_far along
  the view ray (sky = 0), so the RIDCP transmission exp(−2β(1 − d)) is exactly Beer–Lambert in z.
* **motorcycle** — scikit-image's Middlebury ``motorcycle_left/right.png`` with its *true* disparity
  ``motorcycle_disp.npz`` (left view; warped to the right view with a z-buffer; holes filled from the
  background side). Normalised disparity is what RIDCP's depth maps are.
* **photos without depth** — scikit-image's astronaut, chelsea, coffee, rocket and matplotlib's
  grace_hopper. Their depth is a documented *prior*, not a measurement: the ground-plane prior
  d(y) = 0.15 + 0.85·y/H (far at the top of the frame, near at the bottom), smoothed by nothing else.

Layout written under OUT::

    clean/NAME.png   depth/NAME.npy            training scenes (inverse depth, float32 in [0, 1])
    test/hazy/  test/clean/  test/depth/        fixed synthetic test split (RIDCP synthesis, seed fixed)
    test/params.json                             the haze parameters of every test pair
    pseudo_real/hazy/  pseudo_real/clean/        pseudo-real degradations (NOT real haze; see synthesis.py)
    manifest.json  README.txt
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .synthesis import HazeSynthesisConfig, HazeSynthesizer, PseudoRealConfig, PseudoRealDegrader

MINI_VERSION = 1
#: rendered training scenes are indexed 0..N-1; the test split uses 500+, the pseudo-real set 900+
MAX_TRAIN_RENDERED = 500
MANIFEST = "manifest.json"


@dataclass
class MiniConfig:
    seed: int = 0
    width: int = 384
    height: int = 288
    n_train_rendered: int = 40
    n_test_rendered: int = 10
    n_pseudo_real: int = 12
    test_haze_seed: int = 2024
    pseudo_real_seed: int = 7


# ----------------------------------------------------------------------------------- bundled files

def _skimage_file(name: str) -> Path:
    import skimage
    return Path(skimage.__file__).parent / "data" / name


def _mpl_file(name: str) -> Path:
    import matplotlib
    return Path(matplotlib.get_data_path()) / "sample_data" / name


def _gray_texture(name: str) -> np.ndarray:
    a = np.asarray(Image.open(_skimage_file(name)).convert("L"), dtype=np.float32) / 255.0
    return a / a.mean()


# ----------------------------------------------------------------------------------- heightmaps

def fractal_heightmap(n: int, rng: np.random.Generator, slope: float = 2.2, ridged: bool = False) -> np.ndarray:
    """Periodic 1/f^slope terrain by spectral synthesis, normalised to [0, 1]."""
    fy, fx = np.meshgrid(np.fft.fftfreq(n), np.fft.fftfreq(n), indexing="ij")
    f = np.hypot(fx, fy)
    f[0, 0] = 1.0
    spec = (rng.normal(size=(n, n)) + 1j * rng.normal(size=(n, n))) / f ** (slope / 2 + 0.5)
    spec[0, 0] = 0
    h = np.real(np.fft.ifft2(spec))
    h = (h - h.min()) / (h.max() - h.min())
    if ridged:
        h = 1.0 - np.abs(2 * h - 1)
    return h.astype(np.float32)


def dem_heightmap(name: str, n: int) -> np.ndarray:
    """A matplotlib sample DEM, resized to n×n, mirror-tiled to be periodic, normalised to [0, 1]."""
    z = np.load(_mpl_file(name))
    a = np.asarray(z["elevation"] if "elevation" in z.files else z["topo"], dtype=np.float32)
    a = np.asarray(Image.fromarray(a).resize((n // 2, n // 2), Image.BICUBIC))
    a = np.concatenate([a, a[::-1]], axis=0)
    a = np.concatenate([a, a[:, ::-1]], axis=1)
    return ((a - a.min()) / (a.max() - a.min())).astype(np.float32)


def _bilinear(img: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Periodic bilinear sampling of (N, M[, C]) at float coordinates."""
    n, m = img.shape[:2]
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = x - x0, y - y0
    if img.ndim == 3:
        fx, fy = fx[..., None], fy[..., None]
    x0, y0, x1, y1 = x0 % m, y0 % n, (x0 + 1) % m, (y0 + 1) % n
    return ((img[y0, x0] * (1 - fx) + img[y0, x1] * fx) * (1 - fy)
            + (img[y1, x0] * (1 - fx) + img[y1, x1] * fx) * fy)


def terrain_colour(h: np.ndarray, relief: float, rng: np.random.Generator, sea: float) -> np.ndarray:
    """Elevation/slope palette (water, sand, grass, forest, rock, snow) with hill shading."""
    gy, gx = np.gradient(h * relief)
    slope = np.hypot(gx, gy)
    sun = np.array([rng.uniform(-1, 1), rng.uniform(-1, 1), rng.uniform(0.6, 1.2)])
    sun /= np.linalg.norm(sun)
    shade = np.clip((-gx * sun[0] - gy * sun[1] + sun[2]) / np.sqrt(gx**2 + gy**2 + 1), 0.15, 1.0)
    dry = rng.uniform(0, 1)  # 0 lush … 1 dry / autumn
    grass = np.array([0.25 + 0.35 * dry, 0.45 - 0.05 * dry, 0.15])
    forest = np.array([0.12 + 0.25 * dry, 0.28, 0.10])
    rock = np.array([0.45, 0.40, 0.35])
    snow = np.array([0.92, 0.93, 0.95])
    sand = np.array([0.76, 0.70, 0.50])
    e = (h - sea) / max(1e-6, 1 - sea)
    w_forest = np.clip(1 - np.abs(e - 0.35) / 0.2, 0, 1)[..., None]
    w_rock = np.clip((slope - 0.6) / 0.6 + np.clip(e - 0.6, 0, 1) * 2, 0, 1)[..., None]
    w_snow = np.clip((e - 0.82) / 0.08, 0, 1)[..., None] * np.clip(1.2 - slope, 0, 1)[..., None]
    c = grass * (1 - w_forest) + forest * w_forest
    c = c * (1 - w_rock) + rock * w_rock
    c = c * (1 - w_snow) + snow * w_snow
    c = np.where((e < 0.03)[..., None], sand, c)
    c = c * shade[..., None]
    water = np.array([0.10, 0.22, 0.32])
    c = np.where((h <= sea)[..., None], water, c)
    return c.astype(np.float32)


def sky(h: int, w: int, horizon: float, rng: np.random.Generator) -> np.ndarray:
    """Vertical gradient from a pale horizon to a blue zenith, with soft clouds."""
    y = np.arange(h, dtype=np.float32)[:, None]
    s = np.clip((horizon - y) / max(horizon, 1.0), 0, 1)[..., None]
    zenith = np.array([0.25, 0.45, 0.80]) + rng.uniform(-0.05, 0.05, 3)
    low = np.array([0.75, 0.82, 0.90]) + rng.uniform(-0.05, 0.05, 3)
    img = low * (1 - s) ** 1.5 + zenith * (1 - (1 - s) ** 1.5)
    clouds = fractal_heightmap(max(h, w), rng, slope=2.6)[:h, :w]
    cover = rng.uniform(0.3, 0.8)
    a = np.clip((clouds - cover) / 0.2, 0, 1)[..., None] * 0.85
    return (img * (1 - a) + 0.95 * a).astype(np.float32)


def render_terrain(height: np.ndarray, colour: np.ndarray, texture: np.ndarray, width: int, rows: int,
                   rng: np.random.Generator, relief: float) -> tuple[np.ndarray, np.ndarray]:
    """Ray-cast a heightmap ("voxel space" front-to-back, all columns at once).

    For each column the screen row of every ray step is y_s = horizon − f (h_s − h_cam) / z_s; the running
    minimum Y_s over steps is the occlusion front, and row r is first covered by the first step with Y_s ≤ r
    (a per-column ``searchsorted``). Returns (rgb (H, W, 3), d (H, W)) with d = 1 − z / z_far, sky 0.
    """
    n = height.shape[0]
    fov = np.deg2rad(rng.uniform(50, 70))
    f = width / (2 * np.tan(fov / 2))
    phi = rng.uniform(0, 2 * np.pi)
    cx, cy = rng.uniform(0, n, 2)
    ground = float(_bilinear(height, np.array(cx), np.array(cy)))
    cam_h = max(ground, 0.0) * relief + rng.uniform(6, 30)
    horizon = rows * rng.uniform(0.30, 0.50)
    z_far = float(rng.uniform(0.9, 1.6) * n)
    steps = np.geomspace(1.0, z_far, 420)
    u = np.linspace(-1, 1, width) * np.tan(fov / 2)
    fwd, right = np.array([np.cos(phi), np.sin(phi)]), np.array([-np.sin(phi), np.cos(phi)])
    px = cx + steps[:, None] * (fwd[0] + u[None] * right[0])
    py = cy + steps[:, None] * (fwd[1] + u[None] * right[1])
    h = _bilinear(height, px, py) * relief
    y = horizon - f * (h - cam_h) / steps[:, None]
    front = np.minimum.accumulate(y, axis=0)                       # (S, W), non-increasing
    r = np.arange(rows, dtype=np.float64)
    span = rows + f * (relief + cam_h) + 10
    keys = (-front + np.arange(width) * 4 * span).T.ravel()        # per-column blocks, increasing
    q = -r[None, :] + (np.arange(width) * 4 * span)[:, None]       # (W, H)
    first = np.searchsorted(keys, q.ravel()).reshape(width, rows) - (np.arange(width) * len(steps))[:, None]
    first = first.T                                                # (H, W) step index, S = sky
    is_sky = first >= len(steps)
    s = np.clip(first, 0, len(steps) - 1)
    cols = np.broadcast_to(np.arange(width), (rows, width))
    z = steps[s]
    tex = _bilinear(texture, px[s, cols] * 6, py[s, cols] * 6)
    detail = 1 + (tex - 1) * np.clip(1.5 - z / 150, 0.2, 1)[...]   # texture fades with distance
    rgb = _bilinear(colour, px[s, cols], py[s, cols]) * detail[..., None]
    rgb = np.where(is_sky[..., None], sky(rows, width, horizon, rng), rgb)
    d = np.where(is_sky, 0.0, 1.0 - z / z_far)
    return np.clip(rgb, 0, 1).astype(np.float32), d.astype(np.float32)


def rendered_scene(index: int, cfg: MiniConfig, textures: dict, dems: dict) -> tuple[np.ndarray, np.ndarray, str]:
    rng = np.random.default_rng([cfg.seed, 1000 + index])
    kind = ["fractal", "ridged", "fractal", "jacksboro", "fractal", "topobathy"][index % 6]
    if kind in dems:
        hm = dems[kind]
    else:
        hm = fractal_heightmap(256, rng, slope=rng.uniform(1.9, 2.6), ridged=kind == "ridged")
    relief = rng.uniform(12, 35) * (0.6 if kind in dems else 1.0)
    sea = rng.uniform(0.0, 0.25) if kind != "topobathy" else 0.4
    hm_eff = np.maximum(hm, sea)
    colour = terrain_colour(hm_eff, relief, rng, sea)
    tex = textures["grass" if rng.uniform() < 0.6 else "gravel"]
    rgb, d = render_terrain(hm_eff, colour, tex, cfg.width, cfg.height, rng, relief)
    return rgb, d, f"rendered:{kind}"


# ----------------------------------------------------------------------------------- photos

def _fit(img: Image.Image, w: int, h: int) -> Image.Image:
    """Resize so the image covers w×h, then centre-crop to exactly w×h (landscape) or h×w (portrait)."""
    if img.height > img.width:
        w, h = h, w
    s = max(w / img.width, h / img.height)
    img = img.resize((max(w, round(img.width * s)), max(h, round(img.height * s))), Image.BICUBIC)
    left, top = (img.width - w) // 2, (img.height - h) // 2
    return img.crop((left, top, left + w, top + h))


def ground_plane_prior(h: int, w: int) -> np.ndarray:
    """Monocular *prior* (not a measurement): d(y) = 0.15 + 0.85 y / (H − 1), far at the top."""
    return np.broadcast_to((0.15 + 0.85 * np.linspace(0, 1, h, dtype=np.float32))[:, None], (h, w)).copy()


def motorcycle(view: str, cfg: MiniConfig) -> tuple[np.ndarray, np.ndarray, str]:
    """The Middlebury motorcycle with its true disparity (left view), or warped to the right view."""
    from .data import fill_disparity_holes

    img = Image.open(_skimage_file(f"motorcycle_{view}.png")).convert("RGB")
    disp = np.load(_skimage_file("motorcycle_disp.npz"))["arr_0"].astype(np.float32)
    valid = np.isfinite(disp) & (disp > 0)
    disp = np.where(valid, disp, 0)
    if view == "right":  # forward-warp x_r = x_l − disparity, keeping the nearest (largest disparity)
        hh, ww = disp.shape
        rr, cc = np.nonzero(valid)
        xr = np.round(cc - disp[rr, cc]).astype(int)
        ok = (xr >= 0) & (xr < ww)
        warped = np.zeros_like(disp)
        np.maximum.at(warped, (rr[ok], xr[ok]), disp[rr[ok], cc[ok]])
        disp, valid = warped, warped > 0
    disp = fill_disparity_holes(disp, valid)
    w, h = cfg.width, cfg.height
    rgb = np.asarray(_fit(img, w, h), dtype=np.float32) / 255.0
    d = np.asarray(_fit(Image.fromarray(disp), w, h), dtype=np.float32)
    d = (d - d.min()) / (d.max() - d.min())
    return rgb, d, f"motorcycle_{view}:true-disparity" + (" (warped)" if view == "right" else "")


PHOTOS = [("astronaut", "skimage", "astronaut.png"), ("chelsea", "skimage", "chelsea.png"),
          ("coffee", "skimage", "coffee.png"), ("rocket", "skimage", "rocket.jpg"),
          ("grace_hopper", "matplotlib", "grace_hopper.jpg")]


def photo_scene(name: str, pkg: str, file: str, cfg: MiniConfig) -> tuple[np.ndarray, np.ndarray, str]:
    path = _skimage_file(file) if pkg == "skimage" else _mpl_file(file)
    rgb = np.asarray(_fit(Image.open(path).convert("RGB"), cfg.width, cfg.height), dtype=np.float32) / 255.0
    return rgb, ground_plane_prior(*rgb.shape[:2]), "photo:prior(ground-plane)"


# ----------------------------------------------------------------------------------- build

def _save_png(arr: np.ndarray, path: Path) -> None:
    Image.fromarray((np.clip(arr, 0, 1) * 255 + 0.5).astype(np.uint8)).save(path)


def _to_t(rgb: np.ndarray, d: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(rgb).permute(2, 0, 1)[None], torch.from_numpy(d)[None, None]


def is_mini_dataset(out: Path) -> bool:
    try:
        return json.loads((out / MANIFEST).read_text()).get("kind") == "corun-mini"
    except (OSError, ValueError):
        return False


def build_mini(out: str | os.PathLike, cfg: MiniConfig | None = None, force: bool = False,
               log=print) -> Path:
    """Build the mini dataset under ``out`` (atomically: written to a sibling temp folder, then renamed).

    An existing mini dataset with the same version and config is kept as is (unless ``force``); any other
    non-empty ``out`` is an error, so nothing the user had is overwritten.
    """
    cfg = cfg or MiniConfig()
    if not 0 <= cfg.n_train_rendered <= MAX_TRAIN_RENDERED:
        raise ValueError(f"n_train_rendered must be in [0, {MAX_TRAIN_RENDERED}] (the test scenes start at 500), "
                         f"got {cfg.n_train_rendered}")
    out = Path(out)
    want = {"kind": "corun-mini", "version": MINI_VERSION, "config": asdict(cfg)}
    if out.exists():
        if not out.is_dir():
            raise FileExistsError(f"{out}: exists and is not a folder")
        if is_mini_dataset(out):
            have = json.loads((out / MANIFEST).read_text())
            if not force and all(have.get(k) == v for k, v in want.items()):
                log(f"{out}: mini dataset already built (version {MINI_VERSION}); nothing to do")
                return out
        elif any(out.iterdir()):
            raise FileExistsError(f"{out}: folder is not empty and is not a corun mini dataset; "
                                  "refusing to write into it")
    t0 = time.time()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        _write(tmp, cfg, want, log)
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"{out}: mini dataset built in {time.time() - t0:.1f} s")
    return out


def _write(root: Path, cfg: MiniConfig, manifest: dict, log) -> None:
    for sub in ("clean", "depth", "test/hazy", "test/clean", "test/depth", "pseudo_real/hazy", "pseudo_real/clean"):
        (root / sub).mkdir(parents=True)
    textures = {"grass": _gray_texture("grass.png"), "gravel": _gray_texture("gravel.png")}
    dems = {"jacksboro": dem_heightmap("jacksboro_fault_dem.npz", 256), "topobathy": dem_heightmap("topobathy.npz", 256)}
    scenes = []

    def add(split: str, name: str, rgb: np.ndarray, d: np.ndarray, source: str) -> None:
        scenes.append({"name": name, "split": split, "source": source, "size": [rgb.shape[1], rgb.shape[0]],
                       "depth": "prior" if "prior" in source else ("true" if "true" in source else "exact")})

    # training scenes
    for i in range(cfg.n_train_rendered):
        rgb, d, src = rendered_scene(i, cfg, textures, dems)
        _save_png(rgb, root / "clean" / f"render_{i:03d}.png")
        np.save(root / "depth" / f"render_{i:03d}.npy", d)
        add("train", f"render_{i:03d}", rgb, d, src)
    for name, pkg, file in PHOTOS:
        rgb, d, src = photo_scene(name, pkg, file, cfg)
        _save_png(rgb, root / "clean" / f"{name}.png")
        np.save(root / "depth" / f"{name}.npy", d)
        add("train", name, rgb, d, src)
    rgb, d, src = motorcycle("right", cfg)
    _save_png(rgb, root / "clean" / "motorcycle_right.png")
    np.save(root / "depth" / "motorcycle_right.npy", d)
    add("train", "motorcycle_right", rgb, d, src)

    # fixed synthetic test split (RIDCP synthesis with a fixed seed, one image at a time)
    synth = HazeSynthesizer(HazeSynthesisConfig(normalise_depth=True), seed=cfg.test_haze_seed)  # whole images
    test = [rendered_scene(500 + i, cfg, textures, dems) + (f"test_render_{i:03d}",) for i in range(cfg.n_test_rendered)]
    test.append(motorcycle("left", cfg) + ("test_motorcycle",))
    params = {}
    for rgb, d, src, name in test:
        res = synth(*_to_t(rgb, d))
        _save_png(res.hazy[0].permute(1, 2, 0).numpy(), root / "test" / "hazy" / f"{name}.png")
        _save_png(rgb, root / "test" / "clean" / f"{name}.png")
        np.save(root / "test" / "depth" / f"{name}.npy", d)
        params[name] = {k: (v[0] if isinstance(v, list) and k != "noise_seed" else v)
                        for k, v in res.params.to_dict().items()}
        add("test", name, rgb, d, src)
    (root / "test" / "params.json").write_text(json.dumps(params, indent=1))

    # pseudo-real hazy set (a different degradation; stands in for real photos, never reported as real)
    degrade = PseudoRealDegrader(PseudoRealConfig(), seed=cfg.pseudo_real_seed)
    for i in range(cfg.n_pseudo_real):
        rgb, d, src = rendered_scene(900 + i, cfg, textures, dems)
        res = degrade(*_to_t(rgb, d))
        name = f"pseudo_{i:03d}"
        _save_png(res.hazy[0].permute(1, 2, 0).numpy(), root / "pseudo_real" / "hazy" / f"{name}.png")
        _save_png(rgb, root / "pseudo_real" / "clean" / f"{name}.png")
        add("pseudo_real", name, rgb, d, src + " + pseudo-real degradation")

    manifest = dict(manifest, synthesis=HazeSynthesisConfig().to_dict(), pseudo_real=PseudoRealConfig().to_dict(),
                    counts={s: sum(x["split"] == s for x in scenes) for s in ("train", "test", "pseudo_real")},
                    scenes=scenes)
    (root / "README.txt").write_text(__doc__)
    (root / MANIFEST).write_text(json.dumps(manifest, indent=1))
    log(f"  {manifest['counts']['train']} training scenes, {manifest['counts']['test']} test pairs, "
        f"{manifest['counts']['pseudo_real']} pseudo-real images")
