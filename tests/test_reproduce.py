"""``corun reproduce`` (corun.reproduce): hash-skip of unchanged steps, missing notebooks, the first failure
stops the run and names notebook and cell, the paper profile checks its datasets before running anything."""
from __future__ import annotations

import json
from pathlib import Path

import nbformat
import numpy as np
import pytest
from PIL import Image

from corun import reproduce as R


class FakeRunner:
    """Stands in for papermill: records calls, writes the executed copy and the step's output file."""

    def __init__(self, outputs: dict[str, tuple[Path, str]] | None = None):
        self.calls: list[str] = []
        self.outputs = outputs or {}

    def __call__(self, notebook: Path, out_dir: Path, parameters: dict) -> Path:
        self.calls.append(notebook.name)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / notebook.name).write_text(json.dumps(parameters))
        if notebook.name in self.outputs:
            path, text = self.outputs[notebook.name]
            path.write_text(text)
        return out_dir / notebook.name


def notebook(path: Path, *sources: str) -> Path:
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "language": "python",
                                                           "display_name": "Python 3"}})
    nb.cells = [nbformat.v4.new_code_cell(sources[0], metadata={"tags": ["parameters"]}),
                *[nbformat.v4.new_code_cell(s) for s in sources[1:]]]
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


@pytest.fixture
def pipeline(tmp_path):
    nbs = tmp_path / "notebooks"
    notebook(nbs / "01_a.ipynb", "x = 1", "print(x)")
    notebook(nbs / "02_b.ipynb", "y = 1", "print(y)")
    data = tmp_path / "data"
    data.mkdir()
    (data / "in.txt").write_text("v1")
    mid = tmp_path / "mid.txt"
    params = {"x": 1}
    steps = [R.Step("01_a", "01_a.ipynb", lambda: dict(params), inputs=[data], outputs=[mid]),
             R.Step("02_b", "02_b.ipynb", {"y": 2}, content_inputs=lambda: [mid]),
             R.Step("03_absent", "03_absent.ipynb", {})]
    runner = FakeRunner({"01_a.ipynb": (mid, "same")})
    results = tmp_path / "results"

    def run(**kw):
        log: list[str] = []
        recs = R.run_steps(steps, results, nbs, runner=runner, log=log.append, root=tmp_path, **kw)
        return {r.key: r.status for r in recs}, log

    return run, runner, params, data, mid, nbs, results


def test_second_run_skips_everything_unchanged(pipeline):
    run, runner, *_, results = pipeline
    status, log = run()
    assert status == {"01_a": "ran", "02_b": "ran", "03_absent": "not present"}
    assert runner.calls == ["01_a.ipynb", "02_b.ipynb"]
    assert any("03_absent: not present" in line for line in log)
    state = json.loads((results / R.STATE_FILE).read_text())
    assert set(state["steps"]) == {"01_a", "02_b"}
    status, log = run()
    assert status == {"01_a": "skipped", "02_b": "skipped", "03_absent": "not present"}
    assert runner.calls == ["01_a.ipynb", "02_b.ipynb"]  # nothing ran again
    assert run(force=True)[0] == {"01_a": "ran", "02_b": "ran", "03_absent": "not present"}
    assert runner.calls[-2:] == ["01_a.ipynb", "02_b.ipynb"]


def test_changed_input_parameters_or_notebook_rerun_only_what_depends_on_them(pipeline):
    run, runner, params, data, mid, nbs, results = pipeline
    run()
    (data / "in.txt").write_text("v2, longer")  # 01 reads it; its output (read by content by 02) is the same
    assert run()[0] == {"01_a": "ran", "02_b": "skipped", "03_absent": "not present"}
    runner.outputs["01_a.ipynb"] = (mid, "different")
    params["x"] = 2  # 01's parameters change, and now so does what 02 reads
    assert run()[0] == {"01_a": "ran", "02_b": "ran", "03_absent": "not present"}
    notebook(nbs / "02_b.ipynb", "y = 1", "print(y + 1)")  # 02's notebook is edited
    assert run()[0] == {"01_a": "skipped", "02_b": "ran", "03_absent": "not present"}
    (results / "notebooks" / "02_b.ipynb").unlink()  # its executed copy is gone
    assert run()[0]["02_b"] == "ran"
    mid.unlink()  # 01's declared output is gone
    status, log = run()
    assert status["01_a"] == "ran" and any("outputs missing" in line for line in log)
    assert run()[0] == {"01_a": "skipped", "02_b": "skipped", "03_absent": "not present"}


def test_code_changes_rerun_steps(pipeline):
    run, runner, *_ = pipeline
    run()
    n = len(runner.calls)
    status, _ = run(salt="another corun")
    assert status["01_a"] == status["02_b"] == "ran" and len(runner.calls) == n + 2


def test_any_change_in_the_corun_package_reruns_every_step(tmp_path):
    """The whole package is hashed: an edit in a module no notebook imports directly (here corun/sub/b.py,
    imported only inside a function, or a file nothing imports) still re-runs every step."""
    pkg = tmp_path / "corun"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from .sub import b\n    return b\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("X = 1\n")
    nbs = tmp_path / "notebooks"
    notebook(nbs / "01_uses_a.ipynb", "x = 1", "%matplotlib inline\nfrom corun.a import f")
    notebook(nbs / "02_imports_nothing.ipynb", "y = 1", "print(y)")
    steps = [R.Step("01_uses_a", "01_uses_a.ipynb"), R.Step("02_imports_nothing", "02_imports_nothing.ipynb")]
    runner = FakeRunner()

    def run():
        recs = R.run_steps(steps, tmp_path / "results", nbs, runner=runner, log=lambda m: None, root=tmp_path)
        return [r.status for r in recs]

    assert run() == ["ran", "ran"] and run() == ["skipped", "skipped"]
    (pkg / "sub" / "b.py").write_text("X = 2\n")
    assert run() == ["ran", "ran"] and run() == ["skipped", "skipped"]
    (pkg / "new_module.py").write_text("Z = 1\n")
    assert run() == ["ran", "ran"]
    (tmp_path / "corun" / "__pycache__").mkdir()
    (tmp_path / "corun" / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"\0")
    assert run() == ["skipped", "skipped"]   # compiled files are not sources


def test_a_changed_metrics_csv_reruns_the_figures_step(tmp_path):
    """Step 06 reads results/<p>/metrics_*.csv by content (issue 18.8: it used not to, so new BRISQUE
    numbers left stale figures): changing one re-runs 06 and nothing before it."""
    results = tmp_path / "results" / "smoke"
    results.mkdir(parents=True)
    csv = results / "metrics_pseudo_real.csv"
    csv.write_text("method,image,fade\nhazy,a.png,1.0\n")
    steps = {s.key: s for s in R.pipeline_steps("smoke", results)}
    fig = steps["06_paper_figures"]
    nbs = tmp_path / "notebooks"
    notebook(nbs / fig.notebook, "x = 1", "print(x)")
    before = R.step_hash(fig, nbs)
    assert R.step_hash(fig, nbs) == before
    csv.write_text("method,image,fade,brisque\nhazy,a.png,1.0,40.2\n")
    assert R.step_hash(fig, nbs) != before
    (results / "metrics_dawn.csv").write_text("method,image,fade\nhazy,b.png,2.0\n")  # a new real-haze block
    assert R.step_hash(fig, nbs) != before
    assert "metrics_pseudo_real.csv" not in json.dumps(steps["01_data_prep"].resolve("content_inputs"), default=str)


def test_weights_fingerprint_ignores_training_state(tmp_path):
    import torch

    from corun.checkpoint import save_checkpoint
    from corun.model import CORUN

    torch.manual_seed(0)
    model = CORUN(depth=2, dim=8)
    a = save_checkpoint(tmp_path / "a.pth", model, step=1, rng=torch.randn(3))
    b = save_checkpoint(tmp_path / "b.pth", model, step=2, rng=torch.randn(3))
    assert R.fingerprint(a, content=True) != R.fingerprint(b, content=True)
    assert R.weights_fingerprint(a) == R.weights_fingerprint(b)
    with torch.no_grad():
        next(model.parameters()).add_(1e-3)
    c = save_checkpoint(tmp_path / "c.pth", model, step=1)
    assert R.weights_fingerprint(c) != R.weights_fingerprint(a)
    assert R.weights_fingerprint(tmp_path / "none.pth") == "missing" and R.weights_fingerprint(None) is None


def test_fingerprint_sees_files_by_content_and_folders_by_stat(tmp_path):
    f = tmp_path / "a.bin"
    f.write_bytes(b"abc")
    assert R.fingerprint(f, content=True) == R.fingerprint(f, content=True)
    assert R.fingerprint(tmp_path / "nope") == "missing" and R.fingerprint(None) is None
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_text("x")
    (tmp_path / ".lock").write_text("")
    fp = R.fingerprint(tmp_path)
    assert [e[0] for e in fp] == ["a.bin", "sub/b.txt"]  # dot files ignored
    (tmp_path / "sub" / "b.txt").write_text("xy")
    assert R.fingerprint(tmp_path) != fp


@pytest.mark.slow
def test_first_failure_stops_and_names_notebook_and_cell(tmp_path):
    """Real papermill runs: the second notebook fails at its second own cell."""
    nbs = tmp_path / "notebooks"
    notebook(nbs / "01_ok.ipynb", "x = 1", "open('ok.txt', 'w').write(str(x))")
    notebook(nbs / "02_broken.ipynb", "y = 1", "z = y + 1", "raise ValueError('boom')")
    notebook(nbs / "03_after.ipynb", "w = 1", "open('after.txt', 'w').write('ran')")
    steps = [R.Step("01_ok", "01_ok.ipynb", {"x": 2}), R.Step("02_broken", "02_broken.ipynb", {"y": 3}),
             R.Step("03_after", "03_after.ipynb", {})]
    log: list[str] = []
    records = R.run_steps(steps, tmp_path / "results", nbs, log=log.append, root=tmp_path)
    assert [r.status for r in records] == ["ran", "failed", "not run"]
    assert (tmp_path / "ok.txt").read_text() == "2" and not (tmp_path / "after.txt").exists()
    err = records[1].error
    assert "notebook 02_broken.ipynb failed at cell In [4]: ValueError: boom" in err  # injected params = In [2]
    assert any("FAILED" in line and "02_broken.ipynb" in line for line in log)
    assert (tmp_path / "results" / "notebooks" / "02_broken.ipynb").is_file()  # shows the traceback
    state = json.loads((tmp_path / "results" / R.STATE_FILE).read_text())["steps"]
    assert "01_ok" in state and "02_broken" not in state

    summary = R.write_summary("smoke", tmp_path / "results", records, 1.0, root=tmp_path)
    assert summary["ok"] is False and summary["seconds"]["03_after"] == "not run"
    out: list[str] = []
    R.print_summary(summary, records, out.append)
    assert any("STOPPED" in line for line in out) and any("02_broken.ipynb failed at cell" in line for line in out)

    # fixed: the next run skips 01 and runs the rest (a fake runner: no more kernels needed)
    notebook(nbs / "02_broken.ipynb", "y = 1", "z = y + 1")
    runner = FakeRunner()
    records = R.run_steps(steps, tmp_path / "results", nbs, runner=runner, log=log.append, root=tmp_path)
    assert [r.status for r in records] == ["skipped", "ran", "ran"]


def test_reproduce_smoke_writes_summary_and_reports_absent_notebooks(tmp_path, capsys):
    runner = FakeRunner()
    rc = R.reproduce("smoke", outdir=tmp_path / "results", notebooks_dir=tmp_path / "no_notebooks", runner=runner)
    assert rc == 0 and runner.calls == []
    summary = json.loads((tmp_path / "results" / "smoke" / "summary.json").read_text())
    assert summary["profile"] == "smoke" and summary["ok"]
    assert list(summary["seconds"]) == ["01_data_prep", "02_pretrain_corun", "03_colabator_finetune",
                                        "04_label_pool_inspection", "05_metric_tables", "06_paper_figures"]
    assert set(summary["seconds"].values()) == {"not present"}
    assert "figures_dir" in summary["outputs"] and "tables" in summary["outputs"]
    out = capsys.readouterr().out
    assert "smoke reproduction finished" in out and "figures" in out


def test_smoke_steps_carry_the_pipeline_contract(tmp_path):
    steps = R.pipeline_steps("smoke", tmp_path / "results" / "smoke")
    assert [s.notebook for s in steps] == ["01_data_prep.ipynb", "02_pretrain_corun.ipynb",
                                          "03_colabator_finetune.ipynb", "04_label_pool_inspection.ipynb",
                                          "05_metric_tables.ipynb", "06_paper_figures.ipynb"]
    p = {s.key: s.resolve("parameters") for s in steps}
    assert p["01_data_prep"]["results_dir"].endswith("smoke") and p["02_pretrain_corun"]["profile"] == "smoke"
    assert p["03_colabator_finetune"]["pretrain_checkpoint"] is None
    assert p["04_label_pool_inspection"]["pool_dir"].endswith("label_pool")
    assert all(s.resolve("parameters")["profile"] == "smoke" for s in steps)
    assert R.STATE_FILE == ".reproduce_state.json"


def test_unknown_profile(capsys):
    assert R.reproduce("nope") == 2
    assert "unknown profile" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- paper

def write_image(path: Path, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 255, (32, 40, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)


def fail_if_called(*args, **kwargs):
    raise AssertionError("a notebook ran although the paper datasets are missing")


def test_paper_profile_fails_early_naming_the_missing_paths(tmp_path, monkeypatch, capsys):
    cfg = tmp_path / "paper.yaml"
    cfg.write_text(f"datasets:\n  ridcp500: {tmp_path / 'RIDCP500'}\n  urhi: {tmp_path / 'URHI'}\n"
                   f"  fattal: {tmp_path / 'Fattal'}\n")
    monkeypatch.setenv("CORUN_RTTS", str(tmp_path / "nowhere" / "RTTS"))
    for key in ("CORUN_RIDCP500", "CORUN_URHI", "CORUN_FATTAL", "CORUN_RTTS_ANNOTATIONS", "CORUN_SYNTHETIC_TEST"):
        monkeypatch.delenv(key, raising=False)
    rc = R.reproduce("paper", outdir=tmp_path / "results", config=cfg, runner=fail_if_called)
    err = capsys.readouterr().err
    assert rc == 2
    assert f"rtts: {tmp_path / 'nowhere' / 'RTTS'} does not exist" in err and "$CORUN_RTTS" in err
    for key in ("ridcp500", "urhi", "fattal"):
        assert f"{key}: {tmp_path}" in err
    assert "nothing was run" in err
    assert not (tmp_path / "results" / "paper" / "notebooks").exists()


def test_paper_profile_missing_config_file(tmp_path, capsys):
    assert R.reproduce("paper", outdir=tmp_path, config=tmp_path / "absent.yaml", runner=fail_if_called) == 2
    assert "cannot read the config" in capsys.readouterr().err


def test_paper_config_environment_overrides_yaml(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("datasets:\n  rtts: /from/yaml/RTTS\n  fattal: rel/Fattal\ncheckpoints:\n  corun_colabator: w.pth\n"
                   "external:\n  ridcp: /res/ridcp\n")
    got = R.load_paper_config(cfg, environ={"CORUN_RTTS": "/from/env/RTTS"}, root=tmp_path)
    assert got["datasets"]["rtts"] == Path("/from/env/RTTS") and got["sources"]["rtts"] == "$CORUN_RTTS"
    assert got["datasets"]["fattal"] == tmp_path / "rel" / "Fattal"
    assert got["datasets"]["ridcp500"] == tmp_path / "data" / "RIDCP500"  # default
    assert got["datasets"]["synthetic_test"] is None
    assert got["checkpoints"]["corun_colabator"] == tmp_path / "w.pth"
    assert got["external"] == {"ridcp": "/res/ridcp"}
    bad = tmp_path / "bad.yaml"
    bad.write_text("datasets:\n  rtts2: x\n")
    with pytest.raises(ValueError, match="rtts2"):
        R.load_paper_config(bad, environ={}, root=tmp_path)


def test_paper_datasets_are_opened_like_corun_data_check(tmp_path):
    """All paths exist, but RTTS holds no usable image: the check names it, the others pass."""
    write_image(tmp_path / "RIDCP500" / "rgb_500" / "a.png")
    (tmp_path / "RIDCP500" / "depth_500").mkdir()
    np.save(tmp_path / "RIDCP500" / "depth_500" / "a.npy", np.random.default_rng(0).random((32, 40)).astype(np.float32))
    write_image(tmp_path / "URHI" / "u.png", 1)
    write_image(tmp_path / "Fattal" / "f.png", 2)
    (tmp_path / "RTTS" / "JPEGImages").mkdir(parents=True)
    (tmp_path / "RTTS" / "JPEGImages" / "broken.jpg").write_bytes(b"not a jpeg")
    cfg = R.load_paper_config(None, environ={"CORUN_RIDCP500": str(tmp_path / "RIDCP500"),
                                             "CORUN_URHI": str(tmp_path / "URHI"),
                                             "CORUN_RTTS": str(tmp_path / "RTTS"),
                                             "CORUN_FATTAL": str(tmp_path / "Fattal")}, root=tmp_path)
    log: list[str] = []
    problems = R.check_paper_datasets(cfg, log=log.append)
    assert len(problems) == 1 and problems[0].startswith("rtts:") and "JPEGImages" in problems[0]
    assert any("ridcp500" in line and "1 usable of 1" in line for line in log)
    assert any("urhi" in line for line in log) and any("fattal" in line for line in log)
