"""benchmarks/device_check.py, the one-command GPU check, run the way it runs without a GPU: ``--device cpu
--quick``. Every section must write its JSON lines (into a temporary results folder), and the time-boxing
must hold: a section out of budget is skipped or killed with a line that says so, never left running."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # trainings, notebooks, subprocesses: `make test-fast` skips this file

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "device_check.py"


def _run(tmp_path: Path, *args: str, timeout: float) -> tuple[subprocess.CompletedProcess, list[dict]]:
    results = tmp_path / "results"
    res = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--threads", "2",
                          "--results", str(results), *args], capture_output=True, text=True, cwd=REPO,
                         timeout=timeout)
    path = results / "device_check.jsonl"
    lines = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
    return res, lines


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("device_check")
    # a generous total budget: the quick check needs well under a minute on an idle 2-core machine, but
    # a shared one can be several times slower, and the budget is only a ceiling
    res, lines = _run(tmp, "--budget", "900", timeout=1000)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    return res, lines


def _by_name(lines: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in lines:
        out.setdefault(r["name"], []).append(r)
    return out


def test_every_section_writes_json_lines_with_the_environment(quick_run):
    res, lines = quick_run
    assert lines, "no JSON lines written"
    assert len({r["run"] for r in lines}) == 1
    for r in lines:
        assert r["bench"] == "device_check" and r["device"] == "cpu" and r["quick"] is True
        for key in ("torch", "git", "loadavg_start", "loadavg_end", "threads", "section", "status", "time"):
            assert key in r, (key, r["name"])
    sections = {r["section"] for r in lines}
    assert sections == {"data", "inference", "tiled", "train", "colabator", "torchrun", "inference_compile",
                        "train_compile", "colabator_compile"}
    problems = [(r["name"], r["status"], r.get("note")) for r in lines if r["status"] in ("error", "killed")]
    assert not problems, problems
    assert "inference/fast" in res.stdout and "total" in res.stdout  # the summary table
    assert len(res.stdout.splitlines()) < 60  # small output


def test_inference_lines_measure_time_flops_and_psnr(quick_run):
    by = _by_name(quick_run[1])
    for variant in ("plain", "fast", "bf16", "bf16+compile"):
        recs = by[f"inference/{variant}"]
        assert {(r["size"], r["batch"]) for r in recs} == {(32, 1), (32, 2), (64, 1), (64, 2)}
        for r in recs:
            if variant == "bf16+compile" and (r["size"], r["batch"]) != (32, 1):
                assert r["status"] == "skipped" and "first shape" in r["note"]  # --quick: one capture
                continue
            assert r["status"] == "ok"
            assert r["ms_per_image"] > 0 and r["seconds"]["runs"] >= 1
            assert r["model_flops"] > 0 and r["tflops"] > 0
    # FLOPs grow with the pixels; the fast path computes the plain path's function, bf16 comes close
    f = {(r["size"], r["batch"]): r["model_flops"] for r in by["inference/plain"]}
    assert f[(64, 2)] == pytest.approx(2 * f[(64, 1)], rel=1e-6) and f[(64, 1)] > 3.5 * f[(32, 1)]
    for r in by["inference/plain"]:
        assert r["psnr_vs_plain"] is None  # identical to its own reference
    for r in by["inference/fast"]:
        assert r["psnr_vs_plain"] is None or r["psnr_vs_plain"] > 80
    for r in by["inference/bf16"] + by["inference/bf16+compile"]:
        if r["status"] == "ok":
            assert 30 < r["psnr_vs_plain"] < 200
    assert {r["compile_backend"] for r in by["inference/bf16+compile"] if r["status"] == "ok"} == {"eager"}


def test_tiled_training_and_torchrun_lines(quick_run):
    by = _by_name(quick_run[1])
    for name in ("tiled/fp32", "tiled/bf16", "tiled/cli"):
        (r,) = by[name]
        assert r["status"] == "ok" and r["seconds"] > 0, r
    assert by["tiled/fp32"][0]["photo"] == "200x150" and by["tiled/fp32"][0]["tile"] == 64
    for name in ("train/fp32", "colabator/fp32", "train/fp32+compile", "colabator/fp32+compile"):
        (r,) = by[name]
        assert r["status"] == "ok" and r["it_s"] > 0 and r["seconds"]["runs"] >= 1, r
        assert r["patch"] == 32
    assert by["colabator/fp32"][0]["scorers"] == ["piqe", "dark_channel"]
    for name in ("train/bf16", "colabator/bf16"):  # bf16 training is CUDA autocast only
        assert by[name][0]["status"] == "skipped" and "CUDA" in by[name][0]["note"]
    first, resume = by["torchrun/first"][0], by["torchrun/resume"][0]
    assert first["status"] == "ok" and first["summary_step"] == first["steps"]
    assert resume["status"] == "ok" and resume["resumed"] and resume["summary_step"] == resume["steps"]
    assert resume["log_steps"] == list(range(1, resume["steps"] + 1))


@pytest.mark.parametrize("mode", ["--one-process", "--process-per-section"])
def test_a_section_out_of_budget_is_cut_short_and_says_so(tmp_path, mode):
    # one process (the --quick default) or, as on CUDA, one process per section with its own hard limit
    t0 = time.monotonic()
    res, lines = _run(tmp_path, "--sections", "inference", "--budget", "3", mode, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    statuses = {r["status"] for r in lines if r["section"] == "inference"}
    assert statuses & {"killed", "skipped"}, lines
    assert "ok" not in statuses or "skipped" in statuses
    # the section's process was stopped at its limit: the whole command ended soon after the 3 s budget
    # (start-up of the command itself not counted: it is the orchestrator's own import time)
    total = [line for line in res.stdout.splitlines() if line.startswith("total ")]
    assert total and float(total[0].split()[1]) < 3 + 10, res.stdout
    assert time.monotonic() - t0 < 300
