"""The device check: every GPU measurement of the project in one command, time-boxed to 8 minutes.

    python benchmarks/device_check.py                        # CUDA: the whole check, <= 8 min wall
    python benchmarks/device_check.py --device cpu --quick   # tiny sizes on CPU (what tests/test_device_check.py runs)
    python benchmarks/device_check.py --sections train colabator     # some sections only
    benchmarks/device_check.sh                               # sets up .venv if needed, then the whole check

Sections, in this order (the compile ones last: their build time is the least predictable):

  data               the mini dataset (``corun.mini.build_mini``, as ``corun data mini``), a 4000×3000 test
                     photo and a randomly initialised paper-size checkpoint, in a temporary folder;
  inference          512² and 1024², batch 1 and 8, paper network: ``plain`` (fp32 eager, upstream's
                     arithmetic, ``fast_path(model, False)``), ``fast`` (``run_model`` fp32, the default path),
                     ``bf16`` (``run_model(precision="bf16")``: autocast on CUDA, the native bf16 path on a
                     CPU that has it): ms/image, achieved TFLOP/s (the plain path's FLOPs counted by
                     ``torch.utils.flop_counter.FlopCounterMode``, over each variant's time), peak memory
                     (``torch.cuda.max_memory_allocated``), PSNR against ``plain``;
  tiled              the 4000×3000 photo through ``corun.batch.dehaze_files`` (what ``corun dehaze`` runs;
                     auto tiling = 1024² tiles), fp32 and bf16: wall time, peak memory; then the ``corun
                     dehaze`` command itself in a subprocess (wall time, exit code);
  train              the paper pretraining step (configs/paper_pretrain.yaml: patch 288, batch 2 per GPU,
                     the real ``Trainer.train_step``: online synthesis, loss with a randomly initialised
                     VGG19 for the perceptual term, backward, AdamW, EMA) in fp32 and bf16: iterations/s,
                     peak memory;
  colabator          the Colabator step (configs/paper_colabator.yaml's shapes, offline scorers piqe +
                     dark_channel, the label pool on disk), fp32 and bf16;
  torchrun           ``torchrun --nproc_per_node 1 -m corun.train`` on the mini dataset (smoke config,
                     a few steps with a checkpoint), then ``--resume`` for a few more;
  inference_compile  ``bf16+compile``: ``torch.compile(model)`` under bf16 autocast, every inference shape;
  train_compile      the pretraining step with ``train.compile=true``, fp32 and bf16;
  colabator_compile  the Colabator step with ``train.compile=true``, fp32 and bf16.

Each section runs in its own subprocess with a time budget: its share plus whatever earlier sections left
unused, never more than the total (``--budget``, default 450 s, leaving margin under 8 minutes for start-up
and the summary). A section skips the measurements that no longer fit (a ``skipped`` line with the
reason), and one still running at its hard limit is killed (a ``killed`` line), so the whole check cannot
overrun. Every measurement appends one JSON line, as it is made, to ``<results>/device_check.jsonl``
(default ``benchmarks/results/``) with the environment record of benchmarks/common.py (device, torch,
git hash, load average, ...) plus CUDA / cuDNN versions and the TF32 settings, and a run id shared by the
lines of one check. At the end a summary table of this run's lines is printed.

``--quick`` shrinks everything (a depth-2, width-8, one-level CORUN, 32²/64² inputs, a 200×150 photo, patch 32,
a small mini dataset) so the check runs on a 2-core CPU in well under a minute; on CPU in quick mode
``torch.compile`` uses the ``eager`` backend (the same dynamo capture, no C++ build: inductor takes minutes
there; tests/test_compile.py checks inductor itself), unless ``--compile-backend inductor``.
Nothing here needs the network: the data are generated, the weights random.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from pathlib import Path

from common import ROOT, RESULTS, env_record, loadavg

import torch  # noqa: E402

#: (name, share of the total budget in seconds at the default 450 s; scaled with --budget)
SECTIONS = [("data", 25), ("inference", 85), ("tiled", 35), ("train", 45), ("colabator", 40),
            ("torchrun", 45), ("inference_compile", 60), ("train_compile", 60), ("colabator_compile", 55)]
DEFAULT_BUDGET = 450.0
MIN_SECTION_S = 8.0  #: a section is not started with less than this
RESULTS_NAME = "device_check.jsonl"


# ============================================================================ shared helpers

class Budget:
    """Seconds left for a section (to an absolute wall-clock deadline, shared with the parent process);
    ``fits(estimate)`` says whether a measurement may still start."""

    def __init__(self, deadline: float):
        self.end = deadline

    def left(self) -> float:
        return self.end - time.time()

    def fits(self, estimate: float) -> bool:
        return self.left() > max(estimate, 1.0)


class Context:
    """What every section gets: device, sizes (quick or full), the work folder, the output file, the run id."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.quick = args.quick
        self.device = torch.device(args.device)
        self.cuda = self.device.type == "cuda"
        if self.cuda and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.work = Path(args.workdir)
        self.results = Path(args.results) / RESULTS_NAME
        self.run = args.run
        self.section = args.section
        if self.quick:
            self.model_kw = dict(depth=2, dim=8, levels=1, num_blocks=(1,))  # 9 MSABs: quick to capture
            self.sizes, self.batches = [32, 64], [1, 2]
            self.photo_size = (200, 150)
        else:
            self.model_kw = dict(depth=4, dim=30)
            self.sizes, self.batches = [512, 1024], [1, 8]
            self.photo_size = (4000, 3000)
        self.compile_backend = args.compile_backend or ("eager" if self.quick and not self.cuda else "inductor")
        self._env: dict | None = None

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def env(self) -> dict:
        """The environment record (computed once per section; ``loadavg_end`` is added per line)."""
        if self._env is None:
            self._env = self._env_record()
        return self._env

    def _env_record(self) -> dict:
        rec = env_record("device_check", self.device)
        rec.update({"run": self.run, "section": self.section, "quick": self.quick})
        if self.cuda:
            props = torch.cuda.get_device_properties(self.device)
            rec.update({"cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
                        "gpu_memory_gib": round(props.total_memory / 2**30, 1),
                        "capability": f"{props.major}.{props.minor}",
                        "tf32": {"cudnn": torch.backends.cudnn.allow_tf32,
                                 "matmul": torch.backends.cuda.matmul.allow_tf32}})
        else:
            from corun.fast_bf16 import cpu_bf16_capabilities

            rec["cpu_bf16"] = cpu_bf16_capabilities()
        return rec

    def write(self, name: str, status: str = "ok", **fields) -> dict:
        rec = {**self.env(), "name": name, "status": status, **fields, "loadavg_end": loadavg()}
        self.results.parent.mkdir(parents=True, exist_ok=True)
        with open(self.results, "a") as f:
            f.write(json.dumps(rec, default=_json_default) + "\n")
        return rec

    def skip(self, name: str, reason: str, **fields) -> dict:
        return self.write(name, status="skipped", note=reason, **fields)

    # ---------------------------------------------------------------- memory
    def reset_peak(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_gib(self) -> float | None:
        """Peak GPU memory (GiB) since :meth:`reset_peak` (CUDA); None on CPU (see :meth:`memory_fields`)."""
        if self.cuda:
            return torch.cuda.max_memory_allocated(self.device) / 2**30
        return None

    def memory_fields(self) -> dict:
        if self.cuda:
            return {"peak_gib": self.peak_gib(), "memory": "torch.cuda.max_memory_allocated"}
        return {"process_peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                "memory": "process peak RSS (CPU; not per variant)"}


def _json_default(o):
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, torch.dtype):
        return str(o).removeprefix("torch.")
    return repr(o)


def timed_runs(fn, ctx: Context, budget: Budget, min_runs: int = 3, max_runs: int = 10,
               min_total: float = 1.0) -> list[float]:
    """Wall seconds of repeated calls of ``fn`` (synchronised): at least ``min_runs`` unless the budget
    runs out, until ``min_total`` seconds are spent or ``max_runs`` done."""
    times: list[float] = []
    while len(times) < max_runs:
        ctx.sync()
        t0 = time.perf_counter()
        fn()
        ctx.sync()
        times.append(time.perf_counter() - t0)
        if len(times) >= min_runs and sum(times) >= min_total:
            break
        if not budget.fits(1.5 * times[-1]):
            break
    return times


def psnr(a: torch.Tensor, b: torch.Tensor) -> float | None:
    """PSNR (dB, peak 1) of ``a`` against ``b``; None when they are identical."""
    mse = (a.float() - b.float()).pow(2).mean().item()
    return None if mse == 0 else 10 * math.log10(1.0 / mse)


def stats(times: list[float]) -> dict:
    s = sorted(times)
    return {"min": s[0], "median": s[len(s) // 2], "runs": len(s), "all": [round(t, 5) for t in times]}


def make_model(ctx: Context):
    from corun import CORUN

    torch.manual_seed(0)
    return CORUN(**ctx.model_kw).eval().to(ctx.device)


def smooth_input(batch: int, size: int, device, seed: int = 0) -> torch.Tensor:
    """A smooth random image batch in [0, 1] (image-like statistics, unlike per-pixel noise)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(batch, 3, max(size // 16, 2), max(size // 16, 2), generator=g)
    x = torch.nn.functional.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)
    x = (0.7 * x + 0.3 + 0.03 * torch.randn(batch, 3, size, size, generator=g)).clamp(0, 1)
    return x.to(device)


# ============================================================================ section: data

def section_data(ctx: Context, budget: Budget) -> None:
    import numpy as np
    from PIL import Image

    from corun import CORUN
    from corun.checkpoint import save_checkpoint
    from corun.mini import MiniConfig, build_mini

    t0 = time.perf_counter()
    cfg = MiniConfig(width=64, height=48, n_train_rendered=2, n_test_rendered=1, n_pseudo_real=2) if ctx.quick \
        else MiniConfig()
    mini = build_mini(ctx.work / "mini", cfg, log=lambda m: None)
    mini_s = time.perf_counter() - t0
    # the photo: smooth random structure + fine noise, JPEG like a camera's
    w, h = ctx.photo_size
    rng = np.random.default_rng(0)
    low = Image.fromarray((rng.random((max(h // 64, 2), max(w // 64, 2), 3)) * 255).astype(np.uint8))
    img = np.asarray(low.resize((w, h), Image.BICUBIC), dtype=np.float32)
    img = np.clip(0.6 * img + 90 + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)
    photo_dir = ctx.work / "photo"
    photo_dir.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(photo_dir / "photo.jpg", quality=92)
    torch.manual_seed(0)
    save_checkpoint(ctx.work / "init.pth", CORUN(**ctx.model_kw))
    ctx.write("data", mini=str(mini), mini_build_s=mini_s, photo=f"{w}x{h}", seconds=time.perf_counter() - t0)


def _need_data(ctx: Context, name: str) -> bool:
    if not (ctx.work / "init.pth").is_file() or not (ctx.work / "mini" / "manifest.json").is_file():
        ctx.skip(name, "the data section did not complete (no mini dataset / checkpoint in the work folder)")
        return False
    return True


# ============================================================================ section: inference

def _inference_variants(ctx: Context, model, compiled=None) -> dict:
    from corun.inference import run_model
    from corun.model_fast import fast_path

    def plain(x):
        with torch.no_grad(), fast_path(model, False):
            return model(x).image

    def fast(x):
        return run_model(model, x).image

    def bf16(x):
        return run_model(model, x, precision="bf16").image

    def bf16_compile(x):
        with torch.inference_mode(), torch.autocast(ctx.device.type, dtype=torch.bfloat16):
            return compiled(x).image.float()

    if compiled is not None:
        return {"bf16+compile": bf16_compile}
    return {"plain": plain, "fast": fast, "bf16": bf16}


def _count_flops(fn, x) -> int | None:
    try:
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            fn(x)
        return int(counter.get_total_flops())
    except Exception:  # noqa: BLE001 - an op the counter cannot handle: report no FLOPs, not a failure
        return None


def _inference(ctx: Context, budget: Budget, compile_: bool) -> None:
    from corun.inference import bf16_mode

    model = make_model(ctx)
    params = sum(p.numel() for p in model.parameters())
    compiled = None
    if compile_:
        import torch._dynamo

        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 16)
        compiled = torch.compile(model, backend=ctx.compile_backend)  # as a user would: default dynamic
    variants = _inference_variants(ctx, model, compiled)
    plain = _inference_variants(ctx, model)["plain"]
    last: dict[str, float] = {}  # variant → seconds its previous shape took in all (to estimate the next)
    last_px: dict[str, int] = {}
    for size in ctx.sizes:
        for batch in ctx.batches:
            px = batch * size * size
            shape = {"size": size, "batch": batch}
            if compile_ and ctx.quick and (size, batch) != (ctx.sizes[0], ctx.batches[0]):
                for v in variants:  # every new shape is one more capture (and, with inductor, build)
                    ctx.skip(f"inference/{v}", "--quick: compiled at the first shape only", **shape)
                continue
            est = {v: last[v] * px / last_px[v] for v in variants if v in last}
            if not budget.fits(sum(est.values()) * 0.3 + 2):  # at least some variants may fit
                for v in variants:
                    ctx.skip(f"inference/{v}", "section budget exhausted", **shape)
                continue
            x = smooth_input(batch, size, ctx.device)
            t_ref = time.perf_counter()
            try:
                ref = plain(x)  # the fp32 eager reference every variant's PSNR is measured against
                flops = _count_flops(plain, x)
            except torch.OutOfMemoryError as exc:
                for v in variants:
                    ctx.write(f"inference/{v}", status="error", note=f"out of memory in the fp32 reference: "
                              f"{str(exc)[:160]}", **shape)
                del x
                torch.cuda.empty_cache()
                continue
            ref_s = time.perf_counter() - t_ref
            for name, fn in variants.items():
                rec_name = f"inference/{name}"
                guess = est.get(name, ref_s if not compile_ else 0.0)
                if not budget.fits(guess):
                    ctx.skip(rec_name, f"section budget: {budget.left():.0f} s left, about {guess:.0f} s needed",
                             **shape)
                    continue
                t_all = time.perf_counter()
                try:
                    ctx.reset_peak()
                    t0 = time.perf_counter()
                    out = fn(x)  # warm-up (and, compiled, the build for this shape)
                    ctx.sync()
                    first = time.perf_counter() - t0
                    if not budget.fits(first):
                        ctx.skip(rec_name, "section budget: no time left for timed runs after the warm-up",
                                 first_call_s=first, **shape)
                        continue
                    times = timed_runs(lambda f=fn, inp=x: f(inp), ctx, budget, min_runs=2 if ctx.quick else 3)
                except torch.OutOfMemoryError as exc:
                    ctx.write(rec_name, status="error", note=f"out of memory: {str(exc)[:200]}", **shape)
                    torch.cuda.empty_cache()
                    continue
                st = stats(times)
                mode = bf16_mode(model, ctx.device) if name == "bf16" else None
                ctx.write(rec_name, **shape, params=params, variant=name, bf16_mode=mode,
                          compile_backend=ctx.compile_backend if compile_ else None,
                          first_call_s=first, seconds=st, ms_per_image=1e3 * st["min"] / batch,
                          images_per_s=batch / st["min"], model_flops=flops,
                          flops_source="FlopCounterMode on the plain path (fast path: same function, fewer FLOPs)",
                          tflops=(flops / st["min"] / 1e12) if flops else None,
                          psnr_vs_plain=psnr(out, ref), max_abs_diff=(out.float() - ref).abs().max().item(),
                          **ctx.memory_fields())
                last[name], last_px[name] = time.perf_counter() - t_all, px
                del out
            del x, ref
            if ctx.cuda:
                torch.cuda.empty_cache()


def section_inference(ctx: Context, budget: Budget) -> None:
    _inference(ctx, budget, compile_=False)


def section_inference_compile(ctx: Context, budget: Budget) -> None:
    _inference(ctx, budget, compile_=True)


# ============================================================================ section: tiled photo

def section_tiled(ctx: Context, budget: Budget) -> None:
    if not _need_data(ctx, "tiled"):
        return
    from corun.batch import dehaze_files
    from corun.checkpoint import load_model
    from corun.inference import auto_tile

    photo = ctx.work / "photo" / "photo.jpg"
    w, h = ctx.photo_size
    tile = 64 if ctx.quick else auto_tile(h, w)
    overlap = 16 if ctx.quick else 64
    model = load_model(ctx.work / "init.pth", map_location=ctx.device)
    last = None
    for precision in ("fp32", "bf16"):
        name = f"tiled/{precision}"
        if last is not None and not budget.fits(1.3 * last):
            ctx.skip(name, "section budget exhausted", photo=f"{w}x{h}", tile=tile)
            continue
        out = ctx.work / f"tiled_{precision}"
        shutil.rmtree(out, ignore_errors=True)
        ctx.reset_peak()
        t0 = time.perf_counter()
        report = dehaze_files([photo], out, model, device=ctx.device, tile=tile, overlap=overlap, progress=False,
                              log=lambda m: None, precision=precision)
        ctx.sync()
        last = time.perf_counter() - t0
        ctx.write(name, status="ok" if report.ok and report.written else "error", precision=precision,
                  photo=f"{w}x{h}", megapixels=w * h / 1e6, tile=tile, overlap=overlap, seconds=last,
                  note=report.summary(), **ctx.memory_fields())
    # the command a user runs, in a fresh process (start-up, weights loading and PNG writing included)
    name = "tiled/cli"
    if last is not None and not budget.fits(1.5 * last + 10):
        ctx.skip(name, "section budget exhausted", photo=f"{w}x{h}")
        return
    out = ctx.work / "tiled_cli"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "corun.cli", "dehaze", str(photo), "-o", str(out), "--weights",
           str(ctx.work / "init.pth"), "--device", str(ctx.device), "-q", "--overlap", str(overlap)]
    if ctx.quick:
        cmd += ["--tile", str(tile)]
    if not ctx.cuda:
        cmd += ["--threads", str(torch.get_num_threads())]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=_child_env(),
                         timeout=max(budget.left() - 1, 1))
    ctx.write(name, status="ok" if res.returncode == 0 else "error", command="corun dehaze " + " ".join(cmd[4:]),
              returncode=res.returncode, seconds=time.perf_counter() - t0, photo=f"{w}x{h}",
              child_peak_rss_gib=resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20,
              note=res.stderr.strip().splitlines()[-1][-300:] if res.stderr.strip() else "")


# ============================================================================ sections: training steps

def _train_device(ctx: Context) -> str:
    """``auto`` on CUDA (the trainer picks cuda:LOCAL_RANK; a bare ``cuda`` has no index for set_device)."""
    return "auto" if ctx.cuda else "cpu"


def _train_overrides(ctx: Context, run_name: str, bf16: bool, compile_: bool) -> list[str]:
    mini = ctx.work / "mini"
    ov = [f"data.root={mini}", "data.num_workers=0", "data.cache_images=true",
          f"train.out_dir={ctx.work / 'runs' / run_name}", f"train.device={_train_device(ctx)}",
          f"train.bf16={'true' if bf16 else 'false'}", f"train.compile={'true' if compile_ else 'false'}",
          "train.tensorboard=false", "train.progress=false", "val.every=0", f"val.synthetic_dir={mini / 'test'}"]
    if not ctx.cuda:
        ov.append(f"train.threads={torch.get_num_threads()}")
    if ctx.quick:
        ov += ["model.depth=2", "model.dim=8", "model.levels=1", "model.num_blocks=[1]", "data.patch=32"]
    return ov


def _colabator_overrides(ctx: Context, run_name: str) -> list[str]:
    ov = [f"colabator.init={ctx.work / 'init.pth'}", f"colabator.real_dir={ctx.work / 'mini' / 'pseudo_real' / 'hazy'}",
          "colabator.quality_scorer=piqe", "colabator.haze_scorer=dark_channel",
          f"colabator.pool_dir={ctx.work / 'runs' / run_name / 'label_pool'}"]
    if ctx.quick:
        ov.append("colabator.real_batch_size=1")
    return ov


def _step_variants(compile_: bool) -> list[tuple[str, bool]]:
    return [("fp32+compile", False), ("bf16+compile", True)] if compile_ else [("fp32", False), ("bf16", True)]


def _train_section(ctx: Context, budget: Budget, kind: str, compile_: bool) -> None:
    """Time ``Trainer.train_step`` for the pretraining (``kind="train"``) or Colabator step."""
    section = kind + ("_compile" if compile_ else "")
    if not _need_data(ctx, section):
        return
    from corun.config import load_config
    from corun.losses import VGGFeatures
    from corun.train import TrainConfig, Trainer

    config = ROOT / "configs" / ("paper_pretrain.yaml" if kind == "train" else "paper_colabator.yaml")
    warmup, steps = (1, 2) if ctx.quick else ((2, 10) if compile_ else (2, 12))
    last = None
    for label, bf16 in _step_variants(compile_):
        name = f"{kind}/{label}"
        if not ctx.cuda and bf16:
            ctx.skip(name, "train.bf16 is bf16 autocast on CUDA only (corun.train); CPU trains in fp32")
            continue
        if last is not None and not budget.fits(1.2 * last):
            ctx.skip(name, f"section budget: {budget.left():.0f} s left, the previous variant took {last:.0f} s")
            continue
        run_name = f"{section}_{label.replace('+', '_')}"
        shutil.rmtree(ctx.work / "runs" / run_name, ignore_errors=True)
        overrides = _train_overrides(ctx, run_name, bf16, compile_)
        if kind == "colabator":
            overrides += _colabator_overrides(ctx, run_name)
        t_all = time.perf_counter()
        try:
            cfg = load_config(TrainConfig, config, overrides)
            vgg = VGGFeatures(list(cfg.loss.perceptual_layers)) if cfg.loss.perceptual_weight > 0 else None
            trainer = Trainer(cfg, vgg=vgg)  # VGG19 randomly initialised: the same compute, no download
            ctx.reset_peak()
            t0 = time.perf_counter()
            for _ in range(warmup):
                trainer.train_step()
            ctx.sync()
            warm_s = time.perf_counter() - t0
            per_step = warm_s / warmup
            times: list[float] = []
            for _ in range(steps):
                if times and not budget.fits(1.5 * per_step):
                    break
                ctx.sync()
                t0 = time.perf_counter()
                trainer.train_step()
                ctx.sync()
                times.append(time.perf_counter() - t0)
                per_step = times[-1]
        except torch.OutOfMemoryError as exc:
            ctx.write(name, status="error", note=f"out of memory: {str(exc)[:200]}")
            torch.cuda.empty_cache()
            continue
        if not times:
            ctx.skip(name, "section budget: no time left for timed steps after the warm-up", warmup_s=warm_s)
            continue
        st = stats(times)
        d = cfg.data
        shape = {"patch": d.patch, "batch": d.batch_size, "model": {"depth": cfg.model.depth, "dim": cfg.model.dim}}
        if kind == "colabator":
            shape["real_batch"] = cfg.colabator.real_batch_size
            shape["scorers"] = [cfg.colabator.quality_scorer, cfg.colabator.haze_scorer]
        ctx.write(name, config=config.name, **shape, bf16=bf16, compile=compile_,
                  compile_backend=ctx.compile_backend if compile_ else None,
                  warmup_steps=warmup, warmup_s=warm_s, seconds=st, it_s=1.0 / st["median"],
                  it_s_best=1.0 / st["min"], perceptual=trainer.criterion.perceptual_status
                  if hasattr(trainer.criterion, "perceptual_status") else None,
                  what="Trainer.train_step (synthesis, forward, loss, backward, AdamW, EMA); images cached, "
                       "num_workers 0; VGG19 random", **ctx.memory_fields())
        last = time.perf_counter() - t_all
        del trainer
        if ctx.cuda:
            torch.cuda.empty_cache()


@contextlib.contextmanager
def _compile_backend(ctx: Context):
    """corun.train calls ``torch.compile(net)`` with the default backend (inductor); for another
    ``--compile-backend`` (eager in CPU quick mode) that call gets the backend, for this section only."""
    if ctx.compile_backend == "inductor":
        yield
        return
    import torch._dynamo

    original = torch.compile

    def compile_with_backend(model=None, *a, **kw):
        kw.setdefault("backend", ctx.compile_backend)
        return original(model, *a, **kw)

    torch.compile = compile_with_backend
    try:
        yield
    finally:
        torch.compile = original
        torch._dynamo.reset()


def section_train(ctx: Context, budget: Budget) -> None:
    _train_section(ctx, budget, "train", compile_=False)


def section_colabator(ctx: Context, budget: Budget) -> None:
    _train_section(ctx, budget, "colabator", compile_=False)


def section_train_compile(ctx: Context, budget: Budget) -> None:
    with _compile_backend(ctx):
        _train_section(ctx, budget, "train", compile_=True)


def section_colabator_compile(ctx: Context, budget: Budget) -> None:
    with _compile_backend(ctx):
        _train_section(ctx, budget, "colabator", compile_=True)


# ============================================================================ section: torchrun smoke

def _child_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def section_torchrun(ctx: Context, budget: Budget) -> None:
    if not _need_data(ctx, "torchrun"):
        return
    import csv

    mini, out = ctx.work / "mini", ctx.work / "runs" / "torchrun"
    shutil.rmtree(out, ignore_errors=True)
    first, total = (2, 3) if ctx.quick else (6, 10)
    base = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
            "-m", "corun.train", "--config", str(ROOT / "configs" / "smoke_pretrain.yaml")]
    ov = [f"data.root={mini}", f"train.out_dir={out}", f"train.ckpt_every={first}", "train.log_every=1",
          f"train.device={_train_device(ctx)}", "train.progress=false", "train.tensorboard=false", "val.every=0",
          f"val.synthetic_dir={mini / 'test'}", "loss.vgg_weights=null"]
    if ctx.quick:
        ov += ["data.patch=32", "data.batch_size=2", "train.threads=1", "model.levels=1", "model.num_blocks=[1]"]
    for label, steps, extra in (("first", first, []), ("resume", total, ["--resume"])):
        name = f"torchrun/{label}"
        if not budget.fits(10):
            ctx.skip(name, "section budget exhausted")
            return
        t0 = time.perf_counter()
        try:
            res = subprocess.run(base + extra + ov + [f"train.total_steps={steps}"], capture_output=True, text=True,
                                 cwd=ROOT, env=_child_env(), timeout=max(budget.left() - 2, 1))
        except subprocess.TimeoutExpired:
            ctx.write(name, status="error", note="timed out at the section budget", seconds=time.perf_counter() - t0)
            return
        wall = time.perf_counter() - t0
        summary = next((json.loads(line) for line in reversed(res.stdout.splitlines()) if line.startswith("{")), {})
        resumed = "resumed from" in res.stderr
        rows = []
        if (out / "log.csv").is_file():
            with open(out / "log.csv", newline="") as f:
                rows = list(csv.DictReader(f))
        ok = res.returncode == 0 and summary.get("step") == steps and (label == "first" or resumed)
        it_s = [float(r["it_s"]) for r in rows if r.get("it_s")]
        ctx.write(name, status="ok" if ok else "error", returncode=res.returncode, steps=steps,
                  summary_step=summary.get("step"), resumed=resumed, log_rows=len(rows),
                  log_steps=[int(r["step"]) for r in rows], it_s_last=it_s[-1] if it_s else None, seconds=wall,
                  command="torchrun --nproc_per_node 1 -m corun.train --config configs/smoke_pretrain.yaml "
                          + " ".join(extra), note="" if ok else res.stderr.strip()[-600:])
        if not ok:
            return


SECTION_FUNCS = {"data": section_data, "inference": section_inference, "tiled": section_tiled,
                 "train": section_train, "colabator": section_colabator, "torchrun": section_torchrun,
                 "inference_compile": section_inference_compile, "train_compile": section_train_compile,
                 "colabator_compile": section_colabator_compile}


# ============================================================================ orchestration

def run_section(args: argparse.Namespace) -> int:
    """Child process: one section within ``args.section_budget`` seconds."""
    budget = Budget(args.section_deadline)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    ctx = Context(args)
    try:
        SECTION_FUNCS[args.section](ctx, budget)
    except Exception as exc:  # noqa: BLE001 - recorded, and the next section still runs
        ctx.write(args.section, status="error", note=f"{type(exc).__name__}: {exc}"[:500],
                  traceback=traceback.format_exc()[-2000:])
        return 1
    return 0


def _section_shares(names: list[str], total: float) -> dict[str, float]:
    shares = {n: s for n, s in SECTIONS if n in names}
    scale = total / DEFAULT_BUDGET
    return {n: s * scale for n, s in shares.items()}


def section_plan(names: list[str], total: float, deadline: float):
    """Yield (section, seconds it may take), each computed when its turn comes: its share plus whatever
    the earlier sections left unused, never eating into the later sections' shares (unless less than
    MIN_SECTION_S would be left to it), never past ``deadline`` (wall-clock)."""
    shares = _section_shares(names, total)
    for i, name in enumerate(names):
        reserve = sum(shares[n] for n in names[i + 1:])
        left = deadline - time.time()
        budget = left - reserve
        if budget < MIN_SECTION_S:
            budget = min(MIN_SECTION_S, left)  # its turn came late: try briefly if time is left at all
        yield name, budget


def _child_cmd(args: argparse.Namespace, work: Path, run: str) -> list[str]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--workdir", str(work), "--run", run,
           "--results", str(args.results), "--device", args.device, "--threads", str(args.threads)]
    if args.quick:
        cmd.append("--quick")
    if args.compile_backend:
        cmd += ["--compile-backend", args.compile_backend]
    return cmd


def _run_child(cmd: list[str], log_path: Path, timeout: float) -> int | None:
    """Run ``cmd`` in its own process group (a kill also ends what it started: compile workers, torchrun);
    its exit code, or None when it was killed at ``timeout``."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
        try:
            return proc.wait(timeout=max(timeout, 0.1))
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            return None


def run_inline(args: argparse.Namespace) -> int:
    """Child of the one-process mode: every section in this process, one after another, each with its
    soft budget from :func:`section_plan` (the parent kills this process at the total deadline)."""
    names = [n for n, _ in SECTIONS if n in args.sections]
    for name, budget in section_plan(names, args.budget, args.deadline):
        t0 = time.monotonic()
        if budget < 2:
            _orchestrator_line(args, args.run, name, "skipped", "no time left in the total budget")
            continue
        args.section, args.section_deadline = name, time.time() + budget - 1
        with open(Path(args.workdir) / "logs" / "current", "w") as f:
            f.write(name)
        run_section(args)
        print(f"  {name:<18} {time.monotonic() - t0:6.1f} s", flush=True)
    return 0


def orchestrate(args: argparse.Namespace) -> int:
    t_start = time.monotonic()
    deadline = time.time() + args.budget
    names = [n for n, _ in SECTIONS if n in args.sections]
    run = args.run or time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
    results = Path(args.results)
    own_work = args.workdir is None
    work = Path(args.workdir or tempfile.mkdtemp(prefix="corun-device-check-"))
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    one_process = args.quick if args.one_process is None else args.one_process
    print(f"device check {run}: device {args.device}{' (quick)' if args.quick else ''}, sections {' '.join(names)}, "
          f"budget {args.budget:.0f} s{', one process' if one_process else ''}, results {results / RESULTS_NAME}",
          flush=True)
    if one_process:
        cmd = _child_cmd(args, work, run) + ["--inline-child", "--deadline", f"{deadline:.2f}",
                                             "--budget", str(args.budget), "--sections", *names]
        rc = _run_child(cmd, logs / "sections.log", deadline - time.time())
        for line in (logs / "sections.log").read_text(errors="replace").splitlines():
            if re.fullmatch(r"  \w+ +[\d.]+ s", line):  # the child's one line per section
                print(line, flush=True)
        if rc is None:
            current = (logs / "current").read_text() if (logs / "current").is_file() else "?"
            done = {r["section"] for r in read_run(results / RESULTS_NAME, run)}
            for name in names:
                if name == current or name not in done:
                    _orchestrator_line(args, run, name, "killed", "the check was still running at the total "
                                       f"budget of {args.budget:.0f} s; measurements written before are kept")
        elif rc != 0:
            _orchestrator_line(args, run, "sections", "error", f"section process exited with {rc}",
                               log_tail=(logs / "sections.log").read_text(errors="replace")[-1500:])
    else:
        for name, budget in section_plan(names, args.budget, deadline):
            if budget < 2:
                _orchestrator_line(args, run, name, "skipped", "no time left in the total budget")
                continue
            cmd = _child_cmd(args, work, run) + ["--section", name, "--section-deadline",
                                                 f"{time.time() + budget - 2:.2f}"]
            t0 = time.monotonic()
            rc = _run_child(cmd, logs / f"{name}.log", budget)
            took = time.monotonic() - t0
            if rc is None:
                _orchestrator_line(args, run, name, "killed", f"still running at its hard limit of {budget:.0f} s; "
                                   "measurements written before are kept", seconds=took)
            elif rc not in (0, 1):
                tail = (logs / f"{name}.log").read_text(errors="replace")[-1500:]
                _orchestrator_line(args, run, name, "error", f"section process exited with {rc}", seconds=took,
                                   log_tail=tail)
            print(f"  {name:<18} {took:6.1f} s{'  (killed at its limit)' if rc is None else ''}", flush=True)
    total = time.monotonic() - t_start
    print_summary(results / RESULTS_NAME, run)
    print(f"total {total:.0f} s; JSON lines (run {run}) in {results / RESULTS_NAME}", flush=True)
    if own_work and not args.keep_workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()
    proc.wait()


def _orchestrator_line(args, run: str, section: str, status: str, note: str, **fields) -> None:
    dev = torch.device(args.device)
    rec = {**env_record("device_check", dev), "run": run, "section": section, "quick": args.quick,
           "name": section, "status": status, "note": note, **fields, "loadavg_end": loadavg()}
    path = Path(args.results) / RESULTS_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(rec) + "\n")


def read_run(path: Path, run: str) -> list[dict]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if rec.get("run") == run:
            out.append(rec)
    return out


def _fmt(v, spec: str) -> str:
    return "" if v is None else format(v, spec)


def summary_row(r: dict) -> str:
    """One short line per measurement for the summary table."""
    name, status = r["name"], r["status"]
    if status != "ok":
        return f"{name:<26} {status}: {str(r.get('note', ''))[:90]}"
    if name.startswith("inference/"):
        return (f"{name:<26} {r['size']:>5}² ×{r['batch']:<2} {r['ms_per_image']:9.2f} ms/img "
                f"{_fmt(r.get('tflops'), '7.3g'):>7} TFLOP/s  PSNR {_fmt(r['psnr_vs_plain'], '6.1f') or '  same'} dB  "
                f"peak {_fmt(r.get('peak_gib'), '.2f') or '-'} GiB  first {r['first_call_s']:.1f} s")
    if name.startswith("tiled/"):
        extra = (f"peak {r['peak_gib']:.2f} GiB" if r.get("peak_gib") is not None
                 else f"rc {r['returncode']}" if "returncode" in r else "")
        return f"{name:<26} {r.get('photo', '')} {r['seconds']:8.1f} s  {extra}"
    if name.startswith(("train/", "colabator/")):
        return (f"{name:<26} patch {r['patch']} ×{r['batch']}  {r['it_s']:7.2f} it/s  "
                f"peak {_fmt(r.get('peak_gib'), '.2f') or '-'} GiB  warm-up {r['warmup_s']:.1f} s")
    if name.startswith("torchrun/"):
        return f"{name:<26} steps → {r.get('summary_step')}  resumed {r.get('resumed')}  {r['seconds']:.1f} s"
    return f"{name:<26} ok {_fmt(r.get('seconds'), '.1f')} s"


def print_summary(path: Path, run: str) -> None:
    rows = read_run(path, run)
    if not rows:
        print("no results were written", flush=True)
        return
    head = rows[0]
    print(f"\n{head.get('device_name')}  torch {head.get('torch')}  cuda {head.get('cuda', '-')}  "
          f"git {head.get('git')}  load {head.get('loadavg_start')}", flush=True)
    for r in rows:
        print("  " + summary_row(r), flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (CPU smoke: well under a minute)")
    ap.add_argument("--budget", type=float, default=DEFAULT_BUDGET,
                    help=f"total seconds for all sections (default {DEFAULT_BUDGET:.0f})")
    ap.add_argument("--sections", nargs="+", default=[n for n, _ in SECTIONS], choices=[n for n, _ in SECTIONS],
                    metavar="NAME", help="sections to run (default all): " + ", ".join(n for n, _ in SECTIONS))
    ap.add_argument("--results", default=str(RESULTS),
                    help="folder for device_check.jsonl (default benchmarks/results)")
    ap.add_argument("--workdir", default=None, help="work folder (default: a temporary one, deleted at the end)")
    ap.add_argument("--keep-workdir", action="store_true", help="keep the temporary work folder")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    ap.add_argument("--compile-backend", default=None,
                    help="torch.compile backend (default inductor; eager on CPU with --quick)")
    ap.add_argument("--one-process", dest="one_process", action="store_true", default=None,
                    help="all sections in one child process (default with --quick: saves a start-up per section)")
    ap.add_argument("--process-per-section", dest="one_process", action="store_false",
                    help="each section in its own process with its own hard limit (default without --quick)")
    ap.add_argument("--run", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--inline-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--deadline", type=float, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--section", default=None, choices=list(SECTION_FUNCS), help=argparse.SUPPRESS)
    ap.add_argument("--section-deadline", type=float, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but CUDA is not available here (use --device cpu --quick for the CPU smoke)",
              file=sys.stderr)
        return 2
    if args.inline_child:
        return run_inline(args)
    if args.section:
        if args.section_deadline is None:
            args.section_deadline = time.time() + 60
        return run_section(args)
    if "data" not in args.sections and args.workdir is None and any(
            s in args.sections for s in ("tiled", "train", "colabator", "torchrun", "train_compile",
                                         "colabator_compile")):
        args.sections = ["data", *args.sections]  # those sections need the data
    return orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())
