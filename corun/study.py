"""Table 2 of the paper: a blind, randomised user study of dehazing results, as a kit.

The paper (Fang et al., NeurIPS 2024, Table 2) reports "user study scores on RTTS and Fattal's data": one
mean score per method on each of the two real-haze sets. Where the protocol comes from: the paper's text
could not be read here (the search tools hold only the arXiv page's abstract and introduction, and the
authors' README shows Table 2 as an image, ``figs/tab-2.png``, captioned "User study scores on RTTS and
Fattal's data"). So this kit follows the standard protocol such a table comes from (as in the subjective
studies of dehazing, e.g. Ma, Liu & Wang, ICIP 2015): every rater sees, for each photo, all methods' results
side by side, blind (no method names) and in an order randomised per photo and per rater, and

* ``rate`` (default: the paper reports *scores*): gives each result a score on a 1..``scale`` (10) scale;
  Table 2 is the mean score per method (↑);
* ``rank``: orders the results from best to worst; Table 2 is the mean rank per method (↓, 1 = best);
* ``pairwise``: two results at a time (every pair of methods for every photo, left/right at random), picks
  the better one (two-alternative forced choice); Table 2 is the share of comparisons won (%, ↑).

``corun study make METHOD=DIR ... -o study/`` (:func:`make_study`) matches the methods' results by file stem
(stems missing from some folder are reported and left out), copies them (downscaled when larger than
``max_side``) into ``study/images/`` under opaque names, and writes ``study/index.html``: one self-contained
page (works from ``file://``, no server, no network) with keyboard shortcuts, a progress bar, votes kept in
the browser (``localStorage``, so a rater can close the page and resume) and exported as a JSON file.
The page knows the methods only by blind codes; ``study/study_key.json`` maps them back (keep it, do not give
it to raters). The study's id is a hash of its settings, its methods and its images' contents.

The presentation order is drawn from a seed derived from the study id, ``--seed`` and the rater id
(FNV-1a + mulberry32, implemented identically here in :func:`presentation` and in the page), so it is
reproducible per rater and differs between raters.

``corun study score votes/*.json --study study/ -o table2.md`` (:func:`score_studies`) refuses votes of
another study (or mixed studies without their key), keeps a rater's latest answer per trial, computes a
per-rater statistic per method, and reports the mean over raters with a 95 % confidence interval
(bootstrap over raters, or a Student t-interval), the number of raters and of votes, as Markdown, CSV and a
PNG plot. Layout (as the project's Table 1): one row per study (data set), one column per method.
"""
from __future__ import annotations

import base64
import io
import json
import math
import random
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any

from .imageio import IMAGE_EXTENSIONS
from .utils import sha256_bytes

# neutral names: the page shows them, and must not tell the raters whose study (and method) it is
STUDY_FORMAT = "image-study/1"
VOTES_FORMAT = "image-study-votes/1"
MODES = ("rate", "rank", "pairwise")
PAGE = "index.html"
KEY_FILE = "study_key.json"
IMAGES = "images"
PAGE_TEMPLATE = "study_page.html"
DATA_PLACEHOLDER = "__STUDY_DATA__"
BROWSER_FORMATS = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp"}
MASK32 = 0xFFFFFFFF


class StudyError(ValueError):
    """A study cannot be made or scored; ``str(err)`` says what and where."""


# ----------------------------------------------------------------------------------------- making a study

def parse_method_dirs(specs: Iterable[str]) -> dict[str, Path]:
    """``["CORUN=out/corun", "RIDCP=out/ridcp"]`` → {name: folder}, names unique, folders existing."""
    dirs: dict[str, Path] = {}
    for spec in specs:
        name, sep, folder = spec.partition("=")
        name = name.strip()
        if not sep or not name or not folder:
            raise StudyError(f"expected METHOD=DIR, got {spec!r}")
        if name in dirs:
            raise StudyError(f"method {name!r} given twice")
        path = Path(folder)
        if not path.is_dir():
            raise StudyError(f"{name}: {path} is not a folder")
        dirs[name] = path
    if len(dirs) < 2:
        raise StudyError(f"a study compares at least two methods, got {len(dirs)}")
    return dirs


def images_by_stem(folder: Path) -> dict[str, Path]:
    """The image files directly in ``folder`` by stem; two files with one stem (``a.png``, ``a.jpg``) is an
    error, since the match across methods would be ambiguous."""
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if not (path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS):
            continue
        if path.stem in found:
            raise StudyError(f"{folder}: two images with the stem {path.stem!r} ({found[path.stem].name}, "
                             f"{path.name})")
        found[path.stem] = path
    if not found:
        raise StudyError(f"{folder}: no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    return found


@dataclass
class Matched:
    """Stems present in every folder, the files per stem and folder, and per folder the stems left out."""

    stems: list[str]
    files: dict[str, dict[str, Path]]        # stem -> {folder name -> file}
    unmatched: dict[str, list[str]]          # folder name -> its stems missing from some other folder

    def report(self) -> list[str]:
        lines = []
        for name, stems in self.unmatched.items():
            if stems:
                shown = ", ".join(stems[:8]) + (f", ... ({len(stems)} in all)" if len(stems) > 8 else "")
                lines.append(f"{name}: {len(stems)} image(s) not in every folder, left out: {shown}")
        return lines


def match_stems(folders: Mapping[str, Path]) -> Matched:
    """Match images across folders by file stem (``photo.jpg`` ~ ``photo.png``)."""
    per = {name: images_by_stem(folder) for name, folder in folders.items()}
    common = set.intersection(*(set(files) for files in per.values()))
    stems = sorted(common)
    if not stems:
        raise StudyError("no image stem is common to all folders: " +
                         "; ".join(f"{n}: {', '.join(sorted(f)[:3])}..." for n, f in per.items()))
    return Matched(stems, {s: {n: per[n][s] for n in per} for s in stems},
                   {n: sorted(set(files) - common) for n, files in per.items()})


def study_image_bytes(path: Path, max_side: int) -> tuple[bytes, str]:
    """The bytes to show for ``path`` and their extension: the file itself when the browser can show it and
    it is no larger than ``max_side`` (0: never downscale), else a PNG (lossless) of it, EXIF orientation
    applied, downscaled (Lanczos) so that its longer side is ``max_side``."""
    from PIL import Image, ImageOps

    ext = path.suffix.lower()
    with Image.open(path) as img:
        size = img.size
        if ext in BROWSER_FORMATS and (max_side <= 0 or max(size) <= max_side):
            return path.read_bytes(), ".jpg" if ext == ".jpeg" else ext
        img = ImageOps.exif_transpose(img)
        img = img.convert("RGBA" if "A" in img.getbands() else "RGB")
        if max_side > 0 and max(img.size) > max_side:
            scale = max_side / max(img.size)
            img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                             Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        img.save(buf, format="PNG", optimize=False)
        return buf.getvalue(), ".png"


def _codes(methods: Sequence[str], seed: int) -> dict[str, str]:
    """Blind codes ``m0, m1, ...`` assigned to the methods in a seeded random order: code -> method."""
    order = list(methods)
    random.Random(f"corun-study-codes:{seed}").shuffle(order)
    return {f"m{i}": name for i, name in enumerate(order)}


def study_id_of(settings: Mapping[str, Any]) -> str:
    """The study's id: the first 16 hex digits of the SHA-256 of its canonical JSON (settings, the method
    of each code, each shown image's content hash), so votes can be tied to exactly this study."""
    return sha256_bytes(json.dumps(settings, sort_keys=True, separators=(",", ":")).encode())[:16]


def _page_html(data: Mapping[str, Any]) -> str:
    template = resources.files("corun").joinpath(PAGE_TEMPLATE).read_text(encoding="utf-8")
    if DATA_PLACEHOLDER not in template:
        raise StudyError(f"corun/{PAGE_TEMPLATE}: no {DATA_PLACEHOLDER} placeholder")
    blob = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    blob = blob.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return template.replace(DATA_PLACEHOLDER, blob)


def _clear_previous(out: Path, overwrite: bool) -> None:
    """Refuse a non-empty ``out`` unless it holds a previous study and ``overwrite``; then remove only the
    files a study consists of."""
    if not out.exists():
        return
    if not out.is_dir():
        raise StudyError(f"{out} exists and is not a folder")
    if not any(out.iterdir()):
        return
    if not (out / KEY_FILE).is_file():
        raise StudyError(f"{out} exists, is not empty and holds no study ({KEY_FILE}): choose another -o")
    if not overwrite:
        raise StudyError(f"{out} already holds a study (--overwrite replaces it)")
    shutil.rmtree(out / IMAGES, ignore_errors=True)
    for name in (PAGE, KEY_FILE):
        (out / name).unlink(missing_ok=True)


@dataclass
class Study:
    """What :func:`make_study` wrote."""

    out: Path
    study_id: str
    key: dict
    unmatched: list[str] = field(default_factory=list)

    @property
    def page(self) -> Path:
        return self.out / PAGE

    @property
    def n_trials(self) -> int:
        return n_trials(self.key)


def make_study(methods: Mapping[str, str | Path], out: str | Path, *, mode: str = "rate", seed: int = 0,
               max_images: int | None = None, name: str | None = None, reference: str | Path | None = None,
               max_side: int = 1024, scale: int = 10, embed: bool = False, overwrite: bool = False,
               log: Callable[[str], Any] = print) -> Study:
    """Write a study page over ``methods`` ({name: folder of its results}) into ``out``.

    ``reference``: a folder of the hazy inputs, shown (labelled, not rated) above the results of each photo.
    ``max_images``: a seeded random sample of the matched photos. ``embed``: images inside ``index.html`` as
    data URIs (one file to send), else files in ``out/images/``.
    """
    if mode not in MODES:
        raise StudyError(f"mode {mode!r}: choose from {', '.join(MODES)}")
    if not 2 <= int(scale) <= 10:
        raise StudyError(f"scale must be 2..10 (one key per score), got {scale}")
    folders = {m: Path(d) for m, d in methods.items()}
    if len(folders) < 2:
        raise StudyError(f"a study compares at least two methods, got {len(folders)}")
    ref_name = "(hazy reference)"
    if reference is not None and ref_name in folders:
        raise StudyError(f"method name {ref_name!r} is reserved")
    matched = match_stems({**folders, **({ref_name: Path(reference)} if reference is not None else {})})
    stems = matched.stems
    if max_images is not None and 0 < max_images < len(stems):
        stems = sorted(random.Random(f"corun-study-sample:{seed}").sample(stems, max_images))
    out = Path(out)
    _clear_previous(out, overwrite)
    codes = _codes(list(folders), seed)
    code_of = {m: c for c, m in codes.items()}
    by_method = {m: code_of[m] for m in folders}  # in the order given
    (out if embed else out / IMAGES).mkdir(parents=True, exist_ok=True)

    def place(stem: str, tag: str, path: Path) -> tuple[str, str]:
        data, ext = study_image_bytes(path, max_side)
        digest = sha256_bytes(data)
        if embed:
            mime = BROWSER_FORMATS[ext]
            return f"data:{mime};base64,{base64.b64encode(data).decode()}", digest
        fname = sha256_bytes(f"{seed}:{stem}:{tag}:{digest}".encode())[:20] + ext
        (out / IMAGES / fname).write_bytes(data)
        return f"{IMAGES}/{fname}", digest

    photos, hashed = [], []
    for stem in stems:
        files = matched.files[stem]
        images, digests = {}, {}
        for code in codes:
            images[code], digests[code] = place(stem, code, files[codes[code]])
        ref = place(stem, "reference", files[ref_name]) if reference is not None else None
        photos.append({"stem": stem, "images": images, "reference": ref[0] if ref else None})
        hashed.append({"stem": stem, "images": digests, "reference": ref[1] if ref else None})
    settings = {"format": STUDY_FORMAT, "name": name or out.resolve().name, "mode": mode, "scale": int(scale),
                "seed": int(seed), "methods": codes, "photos": hashed}
    sid = study_id_of(settings)
    page = {"format": STUDY_FORMAT, "study_id": sid, "name": settings["name"], "mode": mode,
            "scale": int(scale), "seed": int(seed), "codes": list(codes), "photos": photos}
    (out / PAGE).write_text(_page_html(page), encoding="utf-8")
    key = {**settings, "study_id": sid, "codes": list(codes), "created": _now(),
           "sources": {m: str(folders[m]) for m in folders},
           "reference": str(reference) if reference is not None else None,
           "unmatched": {m: s for m, s in matched.unmatched.items()},
           "by_method": by_method, "embedded": bool(embed), "max_side": int(max_side)}
    (out / KEY_FILE).write_text(json.dumps(key, indent=1, ensure_ascii=False), encoding="utf-8")
    lines = matched.report()
    for line in lines:
        log(f"unmatched: {line}")
    log(f"study {sid} ({settings['name']}): {len(photos)} photos × {len(codes)} methods, mode {mode}, "
        f"{n_trials(key)} trials per rater → {out / PAGE}")
    log(f"give raters {PAGE}" + ("" if embed else f" and {IMAGES}/") + f"; keep {KEY_FILE} (it unblinds the "
        f"methods) for `corun study score votes/*.json --study {out}`")
    return Study(out, sid, key, lines)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ------------------------------------------------------------- presentation order (mirrors the page's script)

def fnv1a32(text: str) -> int:
    """32-bit FNV-1a of the UTF-8 bytes of ``text``."""
    h = 0x811C9DC5
    for byte in text.encode("utf-8"):
        h = ((h ^ byte) * 0x01000193) & MASK32
    return h


def mulberry32(seed: int) -> Callable[[], float]:
    """The mulberry32 generator: floats in [0, 1), bit-identical to the page's JavaScript version."""
    state = seed & MASK32

    def rand() -> float:
        nonlocal state
        state = (state + 0x6D2B79F5) & MASK32
        t = ((state ^ (state >> 15)) * (1 | state)) & MASK32
        t = ((t + (((t ^ (t >> 7)) * (61 | t)) & MASK32)) & MASK32) ^ t
        return ((t ^ (t >> 14)) & MASK32) / 4294967296.0

    return rand


def _shuffle(items: list, rand: Callable[[], float]) -> list:
    for i in range(len(items) - 1, 0, -1):
        j = math.floor(rand() * (i + 1))
        items[i], items[j] = items[j], items[i]
    return items


def rater_seed(study_id: str, seed: int, rater: str) -> int:
    return fnv1a32(f"{study_id}:{seed}:{rater}")


def presentation(study: Mapping[str, Any], rater: str) -> list[dict]:
    """The trials ``rater`` is shown, in order: ``{"photo": stem, "shown": [codes, left to right]}``.

    rate / rank: one trial per photo, photos shuffled, then each photo's codes shuffled. pairwise: every pair
    of codes for every photo, all shuffled, then each pair's sides swapped with probability 1/2."""
    rand = mulberry32(rater_seed(study["study_id"], int(study["seed"]), rater))
    codes, stems = list(study["codes"]), [p["stem"] for p in study["photos"]]
    if study["mode"] == "pairwise":
        pairs = [(s, codes[i], codes[j]) for s in stems for i in range(len(codes)) for j in range(i + 1, len(codes))]
        trials = []
        for stem, a, b in _shuffle(pairs, rand):
            trials.append({"photo": stem, "shown": [b, a] if rand() < 0.5 else [a, b]})
        return trials
    return [{"photo": stems[i], "shown": _shuffle(list(codes), rand)}
            for i in _shuffle(list(range(len(stems))), rand)]


def n_trials(study: Mapping[str, Any]) -> int:
    m, p = len(study["codes"]), len(study["photos"])
    return p * m * (m - 1) // 2 if study["mode"] == "pairwise" else p


# --------------------------------------------------------------------------------------------- scoring

def load_key(path: str | Path) -> dict:
    """A study's key: ``study/`` or ``study/study_key.json``."""
    path = Path(path)
    file = path / KEY_FILE if path.is_dir() else path
    try:
        key = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StudyError(f"{file}: no study key (the folder `corun study make` wrote holds {KEY_FILE})") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise StudyError(f"{file}: cannot read the study key: {exc}") from None
    if key.get("format") != STUDY_FORMAT:
        raise StudyError(f"{file}: not a corun study key (format {key.get('format')!r})")
    return key


def load_votes(path: str | Path) -> dict:
    """One exported votes file, checked for its format."""
    path = Path(path)
    try:
        votes = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise StudyError(f"{path}: cannot read votes: {exc}") from None
    if not isinstance(votes, dict) or votes.get("format") != VOTES_FORMAT:
        raise StudyError(f"{path}: not a corun study votes file (format "
                         f"{votes.get('format') if isinstance(votes, dict) else None!r})")
    for field_ in ("study_id", "mode", "rater", "votes"):
        if field_ not in votes:
            raise StudyError(f"{path}: votes file without {field_!r}")
    if not str(votes["rater"]).strip():
        raise StudyError(f"{path}: empty rater id")
    votes["_path"] = str(path)
    return votes


def _check_vote(vote: Mapping, key: Mapping | None, mode: str, codes: set[str], photos: dict[str, int] | None,
                scale: int, where: str) -> None:
    shown = vote.get("shown")
    if not isinstance(shown, list) or len(set(shown)) != len(shown) or not set(shown) <= codes:
        raise StudyError(f"{where}: 'shown' {shown!r} is not a list of this study's method codes")
    if photos is not None and vote.get("photo") not in photos:
        raise StudyError(f"{where}: photo {vote.get('photo')!r} is not in this study")
    if mode == "pairwise":
        if len(shown) != 2 or vote.get("choice") not in shown:
            raise StudyError(f"{where}: a pairwise vote needs two codes shown and a 'choice' among them")
        return
    if key is not None and set(shown) != codes:
        raise StudyError(f"{where}: a {mode} vote must show every method of the study")
    if mode == "rank":
        ranking = vote.get("ranking")
        if not isinstance(ranking, list) or sorted(ranking) != sorted(shown):
            raise StudyError(f"{where}: 'ranking' {ranking!r} is not an order of the codes shown")
    else:
        scores = vote.get("scores")
        if (not isinstance(scores, dict) or set(scores) != set(shown) or
                not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= scale for v in scores.values())):
            raise StudyError(f"{where}: 'scores' {scores!r} must give every code shown an integer 1..{scale}")


def _trial_key(vote: Mapping, mode: str) -> tuple:
    return (vote["photo"], tuple(sorted(vote["shown"]))) if mode == "pairwise" else (vote["photo"],)


@dataclass
class StudyVotes:
    """The votes of one study, merged per rater (latest answer per trial wins)."""

    study_id: str
    name: str
    mode: str
    scale: int
    methods: dict[str, str]                         # code -> label shown in the table
    per_rater: dict[str, list[dict]]                # rater -> their votes
    files: list[str] = field(default_factory=list)
    keyed: bool = True
    total_trials: int | None = None

    @property
    def n_votes(self) -> int:
        return sum(len(v) for v in self.per_rater.values())


def collect(votes_files: Sequence[str | Path], studies: Sequence[str | Path] = ()) -> list[StudyVotes]:
    """Group vote files by study and check them. With ``studies`` (their folders or keys) every vote file
    must belong to one of them (others are refused) and codes are named by the keys; without, all files must
    belong to one study and methods stay as blind codes."""
    keys = {}
    for s in studies:
        key = load_key(s)
        keys[key["study_id"]] = key
    loaded = [load_votes(p) for p in votes_files]
    if not loaded:
        raise StudyError("no votes files given")
    if keys:
        for v in loaded:
            if v["study_id"] not in keys:
                theirs = ", ".join(f"{k} ({key['name']})" for k, key in keys.items())
                raise StudyError(f"{v['_path']}: votes of study {v['study_id']} ({v.get('study_name', '?')}), "
                                 f"not of {theirs}: votes from another study are refused")
    else:
        ids = sorted({v["study_id"] for v in loaded})
        if len(ids) > 1:
            raise StudyError(f"votes of {len(ids)} different studies ({', '.join(ids)}): pass each study's "
                             "folder with --study, or score them separately; mixed votes are refused")
    groups: dict[str, StudyVotes] = {}
    for v in loaded:
        key = keys.get(v["study_id"])
        mode = key["mode"] if key else v["mode"]
        if v["mode"] != mode:
            raise StudyError(f"{v['_path']}: mode {v['mode']!r}, but the study's is {mode!r}")
        scale = int(key["scale"] if key else v.get("scale", 10))
        sv = groups.get(v["study_id"])
        if sv is None:
            methods = {code: m for m, code in key["by_method"].items()} if key else {}  # in make's order
            sv = groups[v["study_id"]] = StudyVotes(v["study_id"], key["name"] if key else v.get("study_name", "?"),
                                                    mode, scale, methods, {}, keyed=key is not None,
                                                    total_trials=n_trials(key) if key else v.get("trials_total"))
        sv.files.append(v["_path"])
        codes = set(key["codes"]) if key else None
        if codes is None:
            found = {c for vote in v["votes"] for c in vote.get("shown", [])}
            codes = found | set(sv.methods)
            for c in sorted(found):
                sv.methods.setdefault(c, f"method {c}")
        photos = {p["stem"]: i for i, p in enumerate(key["photos"])} if key else None
        rater = str(v["rater"]).strip()
        merged = {_trial_key(x, mode): x for x in sv.per_rater.get(rater, [])}
        for i, vote in enumerate(v["votes"]):
            _check_vote(vote, key, mode, codes, photos, scale, f"{v['_path']}: vote {i}")
            k = _trial_key(vote, mode)
            old = merged.get(k)
            if old is None or str(vote.get("answered_at", "")) >= str(old.get("answered_at", "")):
                merged[k] = vote
        sv.per_rater[rater] = list(merged.values())
    return list(groups.values())


def rater_matrix(sv: StudyVotes):
    """Raters × methods array of each rater's statistic: mean score (rate), mean rank (rank, 1 = best) or
    share of comparisons won in % (pairwise); NaN where a rater never saw a method."""
    import numpy as np

    codes = list(sv.methods)
    col = {c: j for j, c in enumerate(codes)}
    raters = sorted(sv.per_rater)
    mat = np.full((len(raters), len(codes)), np.nan)
    for i, r in enumerate(raters):
        total = np.zeros(len(codes))
        count = np.zeros(len(codes))
        for vote in sv.per_rater[r]:
            if sv.mode == "rate":
                for c, s in vote["scores"].items():
                    total[col[c]] += s
                    count[col[c]] += 1
            elif sv.mode == "rank":
                for pos, c in enumerate(vote["ranking"]):
                    total[col[c]] += pos + 1
                    count[col[c]] += 1
            else:
                for c in vote["shown"]:
                    count[col[c]] += 1
                total[col[vote["choice"]]] += 100.0
        with np.errstate(invalid="ignore", divide="ignore"):
            mat[i] = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return raters, codes, mat


def confidence_interval(mat, method: str = "bootstrap", level: float = 0.95, n_boot: int = 10000,
                        seed: int = 0):
    """Per column: mean over raters (rows) and the ``level`` confidence interval of that mean.

    ``bootstrap``: percentile interval over ``n_boot`` resamples of the raters with replacement (seeded,
    so a table is reproducible); ``t``: mean ± t_{(1+level)/2, n-1} · sd / √n. Fewer than two raters: no
    interval (NaN)."""
    import numpy as np

    mean = np.array([np.nanmean(c) if np.isfinite(c).any() else np.nan for c in mat.T])
    lo = np.full(mat.shape[1], np.nan)
    hi = np.full(mat.shape[1], np.nan)
    rng = np.random.default_rng(seed)
    for j in range(mat.shape[1]):
        col = mat[np.isfinite(mat[:, j]), j]
        n = len(col)
        if n < 2:
            continue
        if method == "t":
            from scipy import stats

            half = stats.t.ppf((1 + level) / 2, n - 1) * col.std(ddof=1) / math.sqrt(n)
            lo[j], hi[j] = col.mean() - half, col.mean() + half
        elif method == "bootstrap":
            means = col[rng.integers(0, n, size=(n_boot, n))].mean(axis=1)
            lo[j], hi[j] = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
        else:
            raise StudyError(f"confidence interval {method!r}: choose bootstrap or t")
    return mean, lo, hi


MODE_STAT = {"rate": ("mean score", True), "rank": ("mean rank", False), "pairwise": ("preference %", True)}


def score_table(groups: Sequence[StudyVotes], ci: str = "bootstrap", level: float = 0.95, n_boot: int = 10000,
                seed: int = 0):
    """One row per (study, method): ``study``, ``study_id``, ``mode``, ``method``, ``mean``, ``ci_low``,
    ``ci_high``, ``raters`` (who saw the method), ``votes`` (trials answered in the study), ``photos``."""
    import numpy as np
    import pandas as pd

    rows = []
    for sv in groups:
        raters, codes, mat = rater_matrix(sv)
        mean, lo, hi = confidence_interval(mat, ci, level, n_boot, seed)
        photos = len({v["photo"] for vs in sv.per_rater.values() for v in vs})
        for j, c in enumerate(codes):
            rows.append({"study": sv.name, "study_id": sv.study_id, "mode": sv.mode, "method": sv.methods[c],
                         "code": c, "mean": mean[j], "ci_low": lo[j], "ci_high": hi[j],
                         "raters": int(np.isfinite(mat[:, j]).sum()), "raters_total": len(raters),
                         "votes": sv.n_votes, "photos": photos})
    return pd.DataFrame(rows)


def _fmt(x: float, digits: int) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def table2_markdown(table, groups: Sequence[StudyVotes], ci: str = "bootstrap", level: float = 0.95,
                    n_boot: int = 10000) -> str:
    """Table 2 in the paper's layout: per mode one table, a row per study, a column per method, each cell
    ``mean [CI low, CI high]``, best in bold, and the raters and votes behind each row."""
    how = (f"{round(level * 100)} % CI: bootstrap over raters ({n_boot} resamples)" if ci == "bootstrap"
           else f"{round(level * 100)} % CI: Student t over raters")
    lines = ["# Table 2: user study", ""]
    by_id = {g.study_id: g for g in groups}
    for mode in MODES:
        sub = table[table["mode"] == mode]
        if sub.empty:
            continue
        stat, higher = MODE_STAT[mode]
        scale = next(g.scale for g in groups if g.mode == mode)
        desc = {"rate": f"each result scored 1–{scale}; mean over raters of each rater's mean score, ↑",
                "rank": "the results of each photo ranked, 1 = best; mean over raters of each rater's mean rank, ↓",
                "pairwise": "two results at a time, the better one chosen; share of comparisons won, ↑"}[mode]
        digits = 1 if mode == "pairwise" else 2
        methods = list(dict.fromkeys(sub["method"]))
        lines += [f"Mode `{mode}` ({desc}). Cells: {stat} [{how}]; **bold**: best. Blind, randomised "
                  "presentation per photo and rater.", "",
                  "| study | " + " | ".join(methods) + " | raters | votes | photos |",
                  "|---|" + "---:|" * (len(methods) + 3)]
        for sid in dict.fromkeys(sub["study_id"]):
            rows = sub[sub["study_id"] == sid].set_index("method")
            cand = rows["mean"].dropna()
            cand = cand[[m for m in cand.index if m.lower() not in ("hazy", "hazy input")]] if len(cand) > 1 else cand
            best = (cand.idxmax() if higher else cand.idxmin()) if len(cand) else None
            cells = []
            for m in methods:
                if m not in rows.index:
                    cells.append("n/a")
                    continue
                r = rows.loc[m]
                text = _fmt(r["mean"], digits)
                text = f"**{text}**" if m == best else text
                if math.isfinite(r["ci_low"]):
                    text += f" [{_fmt(r['ci_low'], digits)}, {_fmt(r['ci_high'], digits)}]"
                cells.append(text)
            g = by_id[sid]
            total = f" of {g.total_trials * len(g.per_rater)}" if g.total_trials else ""
            lines.append(f"| {g.name} | " + " | ".join(cells) +
                         f" | {len(g.per_rater)} | {g.n_votes}{total} | {int(rows['photos'].iloc[0])} |")
        lines.append("")
    notes = [f"* `{g.name}` (study {g.study_id}): methods are blind codes — pass the study folder with "
             "`--study` to name them." for g in groups if not g.keyed]
    single = [g.name for g in groups if len(g.per_rater) < 2]
    if single:
        notes.append(f"* {', '.join(single)}: fewer than two raters, no confidence interval.")
    notes.append(f"* Votes: trials answered (a photo in `rate`/`rank`, a pair in `pairwise`), the latest answer "
                 f"of a rater per trial. Files: {sum(len(g.files) for g in groups)}.")
    return "\n".join(lines + notes) + "\n"


def plot_table2(table, path: str | Path) -> Path:
    """Bars per method with their confidence interval, one panel per study."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np

    studies = list(dict.fromkeys(table["study_id"]))
    fig, axes = plt.subplots(1, len(studies), figsize=(max(4.5, 1.1 * table["method"].nunique() + 2) * len(studies),
                                                        4.2), squeeze=False)
    for ax, sid in zip(axes[0], studies):
        rows = table[table["study_id"] == sid]
        mode = rows["mode"].iloc[0]
        x = np.arange(len(rows))
        mean = rows["mean"].to_numpy(float)
        err = np.vstack([mean - rows["ci_low"].to_numpy(float), rows["ci_high"].to_numpy(float) - mean])
        ax.bar(x, np.nan_to_num(mean), color=[f"C{i % 10}" for i in range(len(rows))])
        ok = np.isfinite(err).all(axis=0)
        if ok.any():
            ax.errorbar(x[ok], mean[ok], yerr=err[:, ok], fmt="none", ecolor="black", capsize=4, lw=1)
        ax.set_xticks(x, rows["method"], rotation=30, ha="right")
        stat, higher = MODE_STAT[mode]
        ax.set_ylabel(f"{stat} ({'higher' if higher else 'lower'} is better)")
        ax.set_title(f"{rows['study'].iloc[0]}: {rows['raters_total'].iloc[0]} raters, {rows['votes'].iloc[0]} votes",
                     fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


@dataclass
class Scored:
    table: Any                      # pandas DataFrame, see score_table
    markdown: str
    groups: list[StudyVotes]
    files: list[Path] = field(default_factory=list)


def score_studies(votes_files: Sequence[str | Path], studies: Sequence[str | Path] = (),
                  output: str | Path | None = None, ci: str = "bootstrap", level: float = 0.95,
                  n_boot: int = 10000, seed: int = 0) -> Scored:
    """Votes → Table 2. With ``output`` (``table2.md``) also writes ``table2.csv`` and ``table2.png`` beside it."""
    if ci not in ("bootstrap", "t"):
        raise StudyError(f"confidence interval {ci!r}: choose bootstrap or t")
    groups = collect(votes_files, studies)
    table = score_table(groups, ci, level, n_boot, seed)
    md = table2_markdown(table, groups, ci, level, n_boot)
    scored = Scored(table, md, groups)
    if output is not None:
        out = Path(output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(md, encoding="utf-8")
        csv = out.with_suffix(".csv")
        table.drop(columns=["code"]).to_csv(csv, index=False, float_format="%.4f")
        scored.files = [out, csv, plot_table2(table, out.with_suffix(".png"))]
    return scored
