"""Colabator's optimal label pool (Fang et al., NeurIPS 2024, arXiv:2406.07966, Sec. 3.3), on disk and
shared by DDP ranks.

For every real photo (keyed by its name) the pool keeps the best pseudo label the EMA teacher has
produced so far. A new candidate replaces the stored one only if its global coherence, the global quality
score *and* the global haze score, is at least as good on both (``q_new ≥ q_old and h_new ≥ h_old``,
:func:`accept`); otherwise the stored one stays. The entry that results (new or kept) is the pseudo label
of that step.

Layout::

    <pool>/POOL.json                              format marker
    <pool>/.lock                                  writers' lock (fcntl.flock; released if a process dies)
    <pool>/entries/<safe name>/<iteration:010d>.pt  one immutable file per accepted version
    <pool>/history/history_rank<r>.csv            one decision log per rank (appended, fsynced)

``<safe name>`` is the name with every character outside ``[A-Za-z0-9_-]`` replaced by ``_`` (cut to
60 characters) plus ``-`` and 12 hex digits of its SHA-1, so names with slashes, spaces or unicode map
to distinct, portable folder names. The original name is stored inside each file.

Entry files (``torch.save`` dict, read with ``weights_only=True``): ``name``, ``label`` uint8 (3, H, W)
= round(255 · Ĵ) (error ≤ 1/510), ``trans`` float16 (1, H, W) (T̂ clamped to [0, 1], error ≤ 2.5e-4),
``weight`` float16 (1, H, W), ``q``, ``h`` (floats, normalised scores), ``iteration``, ``rank``. About
7 bytes per pixel (≈ 0.46 MB at 256²). ``trans`` is absent for a restorer that gives no transmission (the
generic Colabator, upstream's pool "without T"): ``update(..., trans=None)``, and entries read back with
``trans`` None. ``update`` returns the labels *as stored* (dequantised) for new
and kept entries alike, so a step's pseudo labels do not depend on whether they came from memory.

Crash safety and sharing: every version is written to a temporary file in the same folder, fsynced
and renamed (``corun.utils.atomic_write``), so a reader sees the previous or the new version,
never a partial one; temporary names start with ``.`` and end in ``.tmp`` and are never read as
entries. Reads always go to disk (only per-file metadata is cached, keyed by inode, size and mtime),
so an entry written by rank 1 is seen by rank 0 at its next read. Writers serialise the
read-compare-write of ``update`` with an exclusive ``flock`` on ``<pool>/.lock`` (none on platforms
without ``fcntl``), so two ranks updating the same name cannot both win.

Resume semantics (chosen: exact rollback)
-----------------------------------------
Each accepted candidate is a new version file named by its iteration, and the current entry of a
name is its newest version. ``rollback(S)`` deletes the versions written after iteration S, the
history rows after S and stray temporary files, so the pool is exactly what it was at S and a resumed
run makes the same decisions as an uninterrupted one. To bound disk use, ``prune(S)`` deletes the
versions superseded before S; call it after checkpoint S is safely written, with S the *oldest*
checkpoint still kept (rolling back to before a pruned point cannot be exact: pass the checkpoint's
``pool.table()`` as ``expected`` to ``rollback`` to have that detected). ``update`` refuses to write an
iteration older than a name's current version (a resume that forgot ``rollback``). Call ``rollback``,
``prune`` and ``truncate_history`` on one rank while the others wait (e.g. rank 0, then a barrier).

History: a decision is appended to the history *after* its entry file is written, so a process killed
between the two leaves an entry without its row (never a row without its entry); a torn last row is
skipped on reading. Names are written with newlines replaced by ``\\n`` (one row per line).

Labels for one name must keep one size (use ``RealHazyDataset(size=...)``: a fixed resize, like
upstream's ``cv2.resize`` to ``gt_size``, no random crop or flip, or the stored label will not be
aligned with the next view of the photo). A candidate whose size differs from the stored entry
replaces it unconditionally, with ``reason="shape_changed"`` in the history and a warning.
"""
from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from ..utils import atomic_write

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

POOL_FORMAT = {"format": "corun-label-pool", "version": 1}
VERSION_RE = re.compile(r"^(\d{10})\.pt$")
HISTORY_COLUMNS = ("iteration", "name", "rank", "old_q", "old_h", "old_iteration", "new_q", "new_h",
                   "accepted", "reason", "time")


class PoolError(RuntimeError):
    """The label pool cannot do what was asked; the message says why."""


def accept(stored: tuple[float, float] | None, candidate: tuple[float, float]) -> bool:
    """The optimal label pool's replacement rule (Colabator, Sec. 3.3): whether a candidate label with
    global coherence ``candidate = (q, h)`` replaces the label stored with ``stored = (q, h)`` (normalised
    global quality and haze scores, 1 = best). A first label (``stored`` None) is always kept; afterwards the
    candidate wins only when it is at least as good on *both* scores, ``q ≥ q_stored and h ≥ h_stored``."""
    if stored is None:
        return True
    return candidate[0] >= stored[0] and candidate[1] >= stored[1]


@dataclass
class PoolEntry:
    """One stored pseudo label: ``label`` (3, H, W), ``trans`` and ``weight`` (1, H, W), float32 in [0, 1];
    ``trans`` is None for a label stored without transmission."""

    name: str
    label: Tensor
    trans: Tensor | None
    weight: Tensor
    q: float
    h: float
    iteration: int
    rank: int


def safe_name(name: str) -> str:
    """A portable folder name for an image name: sanitised stem + 12 hex digits of its SHA-1."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_")[:60] or "image"
    return f"{stem}-{hashlib.sha1(name.encode('utf-8')).hexdigest()[:12]}"


def _encode(name: str, label: Tensor, trans: Tensor | None, weight: Tensor, q: float, h: float,
            iteration: int, rank: int) -> dict:
    payload = {"name": name,
               "label": (label.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().contiguous()}
    if trans is not None:
        payload["trans"] = trans.detach().float().clamp(0, 1).half().cpu().contiguous()
    payload.update({"weight": weight.detach().float().clamp(0, 1).half().cpu().contiguous(),
                    "q": float(q), "h": float(h), "iteration": int(iteration), "rank": int(rank)})
    return payload


def _decode(payload: dict) -> PoolEntry:
    trans = payload.get("trans")
    return PoolEntry(payload["name"], payload["label"].float() / 255, None if trans is None else trans.float(),
                     payload["weight"].float(), float(payload["q"]), float(payload["h"]),
                     int(payload["iteration"]), int(payload["rank"]))


class LabelPool:
    """The optimal label pool in folder ``root``; open with :meth:`LabelPool.open`."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.entries_dir = self.root / "entries"
        self.history_dir = self.root / "history"
        self._meta: dict[str, tuple[tuple, dict]] = {}
        self._warned_shape = False

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, root: str | os.PathLike) -> "LabelPool":
        """Open the pool in ``root``, creating it if needed (safe to call from every rank at once)."""
        root = Path(root)
        marker = root / "POOL.json"
        root.mkdir(parents=True, exist_ok=True)
        if not marker.is_file():
            ours = {"entries", "history", ".lock"}   # another rank may be creating the pool right now
            foreign = [p.name for p in root.iterdir() if p.name not in ours and not p.name.startswith(".POOL.json.")]
            if foreign:
                raise PoolError(f"{root}: not a label pool (no POOL.json) and not empty: {sorted(foreign)[:5]}")
            atomic_write(marker, lambda tmp: Path(tmp).write_text(json.dumps(POOL_FORMAT)))
        (root / "entries").mkdir(exist_ok=True)
        (root / "history").mkdir(exist_ok=True)
        found = json.loads(marker.read_text())
        if found.get("format") != POOL_FORMAT["format"] or found.get("version") != POOL_FORMAT["version"]:
            raise PoolError(f"{marker}: unsupported pool format {found}")
        return cls(root)

    def close(self) -> None:
        """Nothing to release (no file stays open); drops the metadata cache."""
        self._meta.clear()

    def __enter__(self) -> "LabelPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextlib.contextmanager
    def _locked(self):
        if fcntl is None:
            yield
            return
        with open(self.root / ".lock", "a") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    # ------------------------------------------------------------------ versions on disk
    def _name_dir(self, name: str) -> Path:
        return self.entries_dir / safe_name(name)

    @staticmethod
    def _versions(folder: Path) -> list[tuple[int, Path]]:
        """(iteration, file) of every complete version in ``folder``, oldest first."""
        try:
            names = os.listdir(folder)
        except (FileNotFoundError, NotADirectoryError):
            return []
        found = [(int(m.group(1)), folder / n) for n in names if (m := VERSION_RE.match(n))]
        return sorted(found)

    def _entry_dirs(self) -> list[Path]:
        with os.scandir(self.entries_dir) as it:
            return sorted(Path(e.path) for e in it if e.is_dir() and not e.name.startswith("."))

    def _read_meta(self, path: Path) -> dict:
        """Scalars and size of a version file, cached by (inode, size, mtime)."""
        st = path.stat()
        key = (st.st_ino, st.st_size, st.st_mtime_ns)
        cached = self._meta.get(str(path))
        if cached and cached[0] == key:
            return cached[1]
        payload = self._load(path, mmap=True)
        meta = {k: payload[k] for k in ("name", "q", "h", "iteration", "rank")}
        meta["height"], meta["width"] = payload["label"].shape[-2:]
        self._meta[str(path)] = (key, meta)
        return meta

    @staticmethod
    def _load(path: Path, mmap: bool = False) -> dict:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except FileNotFoundError:
            raise
        except Exception as exc:
            raise PoolError(f"{path}: unreadable label pool entry ({type(exc).__name__}: {exc})") from exc

    def _current(self, folder: Path, as_of: int | None = None) -> Path | None:
        versions = [p for it, p in self._versions(folder) if as_of is None or it <= as_of]
        return versions[-1] if versions else None

    def _retry(self, fn, attempts: int = 3):
        """Run ``fn`` again if a version vanished under it (pruned by another rank)."""
        for i in range(attempts):
            try:
                return fn()
            except FileNotFoundError:
                if i == attempts - 1:
                    raise

    # ------------------------------------------------------------------ reading
    def __len__(self) -> int:
        """Number of images with an entry."""
        return sum(1 for d in self._entry_dirs() if self._versions(d))

    def __contains__(self, name: str) -> bool:
        return bool(self._versions(self._name_dir(name)))

    def get(self, name: str) -> PoolEntry | None:
        """The current entry of ``name`` (read from disk), or None."""
        def read():
            path = self._current(self._name_dir(name))
            return None if path is None else _decode(self._load(path))
        return self._retry(read)

    def names(self) -> list[str]:
        """Names of all images with an entry, sorted."""
        return sorted(self._retry(lambda: [self._read_meta(p)["name"] for d in self._entry_dirs()
                                           if (p := self._current(d)) is not None]))

    def table(self, as_of: int | None = None):
        """One row per image: name, q, h, iteration, rank, height, width, versions (pandas DataFrame).

        ``as_of``: the pool as it was after iteration ``as_of`` (as far as pruning kept versions). Store
        ``table().to_dict("list")`` in a checkpoint and compare states with :func:`compare_tables`."""
        import pandas as pd

        def rows():
            out = []
            for d in self._entry_dirs():
                versions = [(it, p) for it, p in self._versions(d) if as_of is None or it <= as_of]
                if versions:
                    out.append({**self._read_meta(versions[-1][1]), "versions": len(versions)})
            return out
        columns = ["name", "q", "h", "iteration", "rank", "height", "width", "versions"]
        df = pd.DataFrame(self._retry(rows), columns=columns)
        return df.sort_values("name", ignore_index=True)

    # ------------------------------------------------------------------ the rule
    def update(self, names: Sequence[str], labels: Tensor, trans: Tensor | None, q_global, h_global,
               weights: Tensor, iteration: int, rank: int = 0) -> tuple[Tensor, Tensor | None, Tensor, Tensor]:
        """Offer a batch of candidates; returns the step's pseudo labels ``(labels, trans, weights,
        accepted)``: for each image the new candidate if accepted, else the stored entry.

        Colabator's optimal label pool (Fang et al. 2024, Sec. 3.3): an image seen for the first time is
        stored; afterwards the candidate replaces the entry only if ``q ≥ q_stored and h ≥ h_stored``
        (normalised global scores, 1 = best; :func:`accept`). ``labels`` (B, 3, H, W), ``trans`` and
        ``weights`` (B, 1, H, W) in [0, 1], ``trans`` None for a network without transmission (then the
        returned ``trans`` is None too); ``q_global``, ``h_global`` (B,) finite. Returned tensors are the
        stored (quantised) values on the device and dtype of ``labels``; ``accepted`` is (B,) bool.
        """
        b = len(names)
        q = torch.as_tensor(q_global, dtype=torch.float64).reshape(-1).cpu()
        h = torch.as_tensor(h_global, dtype=torch.float64).reshape(-1).cpu()
        self._check_batch(b, labels, trans, weights, q, h)
        entries, accepted, rows = [], [], []
        with self._locked():
            for i, name in enumerate(names):
                entry, ok, row = self._offer(name, labels[i], None if trans is None else trans[i], weights[i],
                                             float(q[i]), float(h[i]), int(iteration), int(rank))
                entries.append(entry)
                accepted.append(ok)
                rows.append(row)
        self._append_history(rows, rank)
        like = dict(device=labels.device, dtype=labels.dtype if labels.is_floating_point() else torch.float32)
        return (torch.stack([e.label for e in entries]).to(**like),
                None if trans is None else self._stack_trans(entries).to(**like),
                torch.stack([e.weight for e in entries]).to(**like),
                torch.tensor(accepted, dtype=torch.bool, device=labels.device))

    def _stack_trans(self, entries: list[PoolEntry]) -> Tensor:
        missing = [e.name for e in entries if e.trans is None]
        if missing:
            raise PoolError(f"{self.root}: {missing[:3]} are stored without a transmission, but this network "
                            "gives one: use another colabator.pool_dir for it")
        return torch.stack([e.trans for e in entries])

    @staticmethod
    def _check_batch(b: int, labels: Tensor, trans: Tensor | None, weights: Tensor, q: Tensor, h: Tensor) -> None:
        if labels.ndim != 4 or labels.shape[:2] != (b, 3):
            raise ValueError(f"labels must be (B={b}, 3, H, W), got {tuple(labels.shape)}")
        for what, t in (("trans", trans), ("weights", weights)):
            if t is not None and t.shape != (b, 1, *labels.shape[-2:]):
                raise ValueError(f"{what} must be (B={b}, 1, H, W) = {(b, 1, *labels.shape[-2:])}, "
                                 f"got {tuple(t.shape)}")
        for what, s in (("q_global", q), ("h_global", h)):
            if s.numel() != b:
                raise ValueError(f"{what} must have {b} scores, got {s.numel()}")
            if not torch.isfinite(s).all():
                raise ValueError(f"{what} has non-finite scores: {s.tolist()}")

    def _offer(self, name: str, label: Tensor, trans: Tensor | None, weight: Tensor, q: float, h: float,
               iteration: int, rank: int) -> tuple[PoolEntry, bool, dict]:
        folder = self._name_dir(name)
        current = self._current(folder)
        old = self._read_meta(current) if current is not None else None
        if old is None:
            accepted, reason = True, "new"
        elif old["iteration"] > iteration:
            raise PoolError(f"{name!r}: the pool holds a version from iteration {old['iteration']}, newer than "
                            f"{iteration}; after resuming from a checkpoint call pool.rollback(<its step>) first")
        elif (old["height"], old["width"]) != tuple(label.shape[-2:]):
            accepted, reason = True, "shape_changed"
            if not self._warned_shape:
                warnings.warn(f"label pool: {name!r} came at {tuple(label.shape[-2:])} but is stored at "
                              f"{(old['height'], old['width'])}; replaced unconditionally. Feed the real photos "
                              "at a fixed size (RealHazyDataset(size=...)) so labels stay aligned.")
                self._warned_shape = True
        elif accept((old["q"], old["h"]), (q, h)):
            accepted, reason = True, "both_better"
        else:
            accepted, reason = False, "kept"
        if accepted:
            payload = _encode(name, label, trans, weight, q, h, iteration, rank)
            atomic_write(folder / f"{iteration:010d}.pt", lambda tmp: torch.save(payload, tmp))
            entry = _decode(payload)
        else:
            entry = _decode(self._load(current))
        row = {"iteration": iteration, "name": name, "rank": rank,
               "old_q": old["q"] if old else "", "old_h": old["h"] if old else "",
               "old_iteration": old["iteration"] if old else "",
               "new_q": q, "new_h": h, "accepted": int(accepted), "reason": reason, "time": round(time.time(), 3)}
        return entry, accepted, row

    # ------------------------------------------------------------------ history
    def _history_file(self, rank: int) -> Path:
        return self.history_dir / f"history_rank{int(rank)}.csv"

    def _append_history(self, rows: list[dict], rank: int) -> None:
        """Append rows to this rank's CSV with one write, then flush + fsync; a torn last line left by a
        killed process is closed with a newline first so it cannot merge with the new rows."""
        if not rows:
            return
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        path = self._history_file(rank)
        with open(path, "ab") as f:
            if f.tell() == 0:
                writer.writerow(HISTORY_COLUMNS)
            else:
                with open(path, "rb") as r:
                    r.seek(-1, os.SEEK_END)
                    if r.read(1) != b"\n":
                        buf.write("\n")
            for row in rows:
                row = {**row, "name": row["name"].replace("\r", "\\r").replace("\n", "\\n")}
                writer.writerow([row[c] for c in HISTORY_COLUMNS])
            f.write(buf.getvalue().encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())

    @staticmethod
    def _parse_history_line(line: str, seq: int) -> dict | None:
        try:
            fields = next(csv.reader([line]))
            if len(fields) != len(HISTORY_COLUMNS) or fields[0] == HISTORY_COLUMNS[0]:
                return None
            r = dict(zip(HISTORY_COLUMNS, fields))
            num = lambda s: float(s) if s != "" else float("nan")  # noqa: E731
            return {"iteration": int(r["iteration"]), "name": r["name"], "rank": int(r["rank"]),
                    "old_q": num(r["old_q"]), "old_h": num(r["old_h"]), "old_iteration": num(r["old_iteration"]),
                    "new_q": float(r["new_q"]), "new_h": float(r["new_h"]),
                    "accepted": bool(int(r["accepted"])), "reason": r["reason"], "time": float(r["time"]),
                    "_seq": seq}
        except (ValueError, StopIteration, csv.Error):
            return None  # a torn row of a killed process

    def _read_history_file(self, path: Path) -> list[dict]:
        text = path.read_bytes().decode("utf-8", errors="replace")
        return [r for i, line in enumerate(text.split("\n")) if line
                and (r := self._parse_history_line(line, i)) is not None]

    def history(self):
        """Every decision of every rank (pandas DataFrame), ordered by iteration, rank and write order.

        Columns: iteration, name, rank, old_q, old_h, old_iteration (NaN on first sight), new_q, new_h,
        accepted (bool), reason (``new`` / ``both_better`` / ``kept`` / ``shape_changed``), time."""
        import pandas as pd

        rows = [r for p in sorted(self.history_dir.glob("history_rank*.csv")) for r in self._read_history_file(p)]
        df = pd.DataFrame(rows, columns=[*HISTORY_COLUMNS, "_seq"])
        df = df.sort_values(["iteration", "rank", "_seq"], kind="stable", ignore_index=True).drop(columns="_seq")
        floats = dict.fromkeys(("old_q", "old_h", "old_iteration", "new_q", "new_h", "time"), "float64")
        return df.astype({"iteration": "int64", "rank": "int64", "accepted": "bool", "reason": "object", **floats})

    def truncate_history(self, after_iteration: int) -> int:
        """Drop history rows of iterations > ``after_iteration`` (and torn rows); returns rows dropped."""
        with self._locked():
            return self._truncate_history(after_iteration)

    def _truncate_history(self, after_iteration: int) -> int:
        dropped = 0
        for path in sorted(self.history_dir.glob("history_rank*.csv")):
            lines = [ln for ln in path.read_bytes().decode("utf-8", errors="replace").split("\n") if ln]
            keep = [ln for i, ln in enumerate(lines)
                    if (r := self._parse_history_line(ln, i)) is not None and r["iteration"] <= after_iteration]
            dropped += sum(1 for ln in lines if ln != ",".join(HISTORY_COLUMNS)) - len(keep)
            body = ",".join(HISTORY_COLUMNS) + "\n" + "".join(ln + "\n" for ln in keep)
            atomic_write(path, lambda tmp, body=body: Path(tmp).write_bytes(body.encode("utf-8")))
        return dropped

    # ------------------------------------------------------------------ resume and disk use
    def rollback(self, iteration: int, expected=None) -> dict:
        """Return the pool to its state after ``iteration``: delete later versions, later history rows
        and stray temporary files. ``expected``: the checkpoint's ``pool.table()`` (DataFrame or dict of
        lists); a mismatch after rollback (versions pruned too early) raises :class:`PoolError`.
        Returns ``{"removed_versions", "removed_names", "removed_temp", "dropped_history"}``."""
        removed = names_removed = temps = 0
        with self._locked():
            for folder in self._entry_dirs():
                for name in os.listdir(folder):
                    m = VERSION_RE.match(name)
                    if m and int(m.group(1)) > iteration:
                        (folder / name).unlink()
                        removed += 1
                    elif name.startswith(".") and name.endswith(".tmp"):
                        (folder / name).unlink(missing_ok=True)
                        temps += 1
                if not self._versions(folder):
                    with contextlib.suppress(OSError):
                        folder.rmdir()
                        names_removed += 1
            dropped = self._truncate_history(iteration)
        self._meta.clear()
        if expected is not None:
            self._verify(expected, iteration)
        return {"removed_versions": removed, "removed_names": names_removed, "removed_temp": temps,
                "dropped_history": dropped}

    def _verify(self, expected, iteration: int) -> None:
        import pandas as pd

        diff = compare_tables(pd.DataFrame(expected), self.table())
        bad = diff[diff["status"] != "unchanged"]
        if len(bad):
            raise PoolError(f"{self.root}: after rollback to {iteration} the pool differs from the checkpoint's "
                            f"table for {len(bad)} image(s) (versions pruned too early?), e.g. "
                            f"{bad.head(3).to_dict('records')}")

    def prune(self, keep_from: int) -> int:
        """Delete versions superseded before iteration ``keep_from`` (each image keeps the version that
        was current at ``keep_from`` and all later ones); returns the number of files deleted."""
        deleted = 0
        with self._locked():
            for folder in self._entry_dirs():
                versions = self._versions(folder)
                base = [i for i, (it, _) in enumerate(versions) if it <= keep_from]
                for _, path in versions[:base[-1]] if base else []:
                    path.unlink(missing_ok=True)
                    deleted += 1
        return deleted


def compare_tables(before, after):
    """How the pool changed between two ``table()`` states (DataFrames or dicts of lists): one row per
    name with q/h/iteration before and after and ``status`` in new / replaced / unchanged / removed."""
    import pandas as pd

    cols = ["name", "q", "h", "iteration"]
    b, a = pd.DataFrame(before)[cols], pd.DataFrame(after)[cols]
    df = b.merge(a, on="name", how="outer", suffixes=("_before", "_after"), indicator=True)

    def status(r) -> str:
        if r["_merge"] == "left_only":
            return "removed"
        if r["_merge"] == "right_only":
            return "new"
        same = (r["iteration_before"] == r["iteration_after"] and r["q_before"] == r["q_after"]
                and r["h_before"] == r["h_after"])
        return "unchanged" if same else "replaced"
    df["status"] = df.apply(status, axis=1) if len(df) else pd.Series(dtype=str)
    return df.drop(columns="_merge").sort_values("name", ignore_index=True)

