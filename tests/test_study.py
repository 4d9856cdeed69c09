"""The Table 2 user-study kit (corun/study.py): `corun study make` writes a blind, randomised page, the page
records votes with the keyboard in headless Chromium and exports them, `corun study score` turns them into
Table 2 (and refuses votes of another study). Scoring is also checked on hand-made vote files."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
from browser import chromium
from PIL import Image

from corun import study
from corun.cli import main

METHODS = ("CORUN", "RIDCP", "DCP")


def make_results(root: Path, methods=METHODS, n: int = 4, size=(48, 64), missing: dict | None = None) -> dict:
    """A folder of ``n`` small PNGs per method (photo stems p0..p{n-1}; a distinct grey level per method and
    photo); ``missing``: {method: [stems it lacks]}."""
    folders = {}
    for k, m in enumerate(methods):
        d = root / m
        d.mkdir(parents=True)
        for i in range(n):
            stem = f"p{i}"
            if stem in (missing or {}).get(m, []):
                continue
            arr = np.full((*size, 3), 20 + 40 * k + 5 * i, np.uint8)
            arr[: size[0] // 2, :, 0] = 200
            Image.fromarray(arr).save(d / f"{stem}.png")
        folders[m] = d
    return folders


def quiet(_msg):
    pass


# ------------------------------------------------------------------------------------------ make

def test_make_matches_by_stem_reports_unmatched_and_stays_blind(tmp_path):
    folders = make_results(tmp_path / "res", missing={"DCP": ["p3"]})
    (folders["RIDCP"] / "p1.png").rename(folders["RIDCP"] / "p1.webp")  # same stem, another extension: matched
    Image.open(folders["RIDCP"] / "p1.webp").save(folders["RIDCP"] / "p1.webp", format="WEBP")
    log = []
    s = study.make_study(folders, tmp_path / "study", name="RTTS", log=log.append)
    assert [p["stem"] for p in s.key["photos"]] == ["p0", "p1", "p2"]
    assert s.key["unmatched"] == {"CORUN": ["p3"], "RIDCP": ["p3"], "DCP": []}
    assert any(line.startswith("unmatched: CORUN: 1 image(s)") and "p3" in line for line in log)
    html = (tmp_path / "study" / "index.html").read_text()
    images = sorted((tmp_path / "study" / "images").iterdir())
    assert len(images) == 3 * 3
    for name in METHODS:  # blind: no method name in the page or in an image's file name
        assert name not in html and name.lower() not in html.lower()
        assert not any(name.lower() in p.name.lower() for p in images)
    # each code's image is that method's own file, byte for byte
    page = json.loads(html.split('type="application/json">')[1].split("</script>")[0])
    assert page["study_id"] == s.study_id and page["codes"] == s.key["codes"]
    for photo in page["photos"]:
        for code, src in photo["images"].items():
            method = s.key["methods"][code]
            src_file = next(folders[method].glob(photo["stem"] + ".*"))
            assert (tmp_path / "study" / src).read_bytes() == src_file.read_bytes()


def test_study_id_is_a_hash_of_settings_and_contents(tmp_path):
    folders = make_results(tmp_path / "res", n=2)
    a = study.make_study(folders, tmp_path / "a", name="RTTS", log=quiet)
    b = study.make_study(folders, tmp_path / "b", name="RTTS", log=quiet)
    assert a.study_id == b.study_id
    assert study.make_study(folders, tmp_path / "c", name="RTTS", seed=1, log=quiet).study_id != a.study_id
    assert study.make_study(folders, tmp_path / "d", name="RTTS", mode="rank", log=quiet).study_id != a.study_id
    arr = np.asarray(Image.open(folders["DCP"] / "p0.png")).copy()
    arr[0, 0] = 0
    Image.fromarray(arr).save(folders["DCP"] / "p0.png")
    assert study.make_study(folders, tmp_path / "e", name="RTTS", log=quiet).study_id != a.study_id


def test_make_downscales_large_and_converts_non_browser_images(tmp_path):
    folders = make_results(tmp_path / "res", n=1, size=(300, 500))
    img = Image.open(folders["DCP"] / "p0.png")
    (folders["DCP"] / "p0.png").unlink()
    img.save(folders["DCP"] / "p0.bmp")
    s = study.make_study(folders, tmp_path / "study", max_side=100, log=quiet)
    page_images = s.key["photos"][0]["images"]
    html = (tmp_path / "study" / "index.html").read_text()
    srcs = json.loads(html.split('type="application/json">')[1].split("</script>")[0])["photos"][0]["images"]
    for code in page_images:
        with Image.open(tmp_path / "study" / srcs[code]) as shown:
            assert shown.size == (100, 60) and shown.format == "PNG"
    kept = study.make_study(folders, tmp_path / "study2", max_side=0, log=quiet)  # 0: never downscale
    srcs = json.loads((tmp_path / "study2" / "index.html").read_text().split('type="application/json">')[1]
                      .split("</script>")[0])["photos"][0]["images"]
    code = kept.key["by_method"]["CORUN"]
    assert (tmp_path / "study2" / srcs[code]).read_bytes() == (folders["CORUN"] / "p0.png").read_bytes()
    bmp = kept.key["by_method"]["DCP"]
    assert Image.open(tmp_path / "study2" / srcs[bmp]).size == (500, 300)


def test_make_refuses_bad_input_and_foreign_folders(tmp_path):
    folders = make_results(tmp_path / "res", n=2)
    with pytest.raises(study.StudyError, match="at least two methods"):
        study.make_study({"CORUN": folders["CORUN"]}, tmp_path / "s", log=quiet)
    Image.open(folders["DCP"] / "p0.png").save(folders["DCP"] / "p0.jpg")
    with pytest.raises(study.StudyError, match="two images with the stem 'p0'"):
        study.make_study(folders, tmp_path / "s", log=quiet)
    (folders["DCP"] / "p0.jpg").unlink()
    other = tmp_path / "busy"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(study.StudyError, match="holds no study"):
        study.make_study(folders, other, log=quiet)
    assert (other / "notes.txt").read_text() == "mine"
    study.make_study(folders, tmp_path / "s", log=quiet)
    with pytest.raises(study.StudyError, match="--overwrite"):
        study.make_study(folders, tmp_path / "s", log=quiet)
    again = study.make_study(folders, tmp_path / "s", mode="pairwise", overwrite=True, log=quiet)
    assert len(list((tmp_path / "s" / "images").iterdir())) == 2 * 3 and again.key["mode"] == "pairwise"
    with pytest.raises(study.StudyError, match="expected METHOD=DIR"):
        study.parse_method_dirs(["CORUN", f"DCP={folders['DCP']}"])


def test_presentation_is_seeded_per_rater_and_complete(tmp_path):
    folders = make_results(tmp_path / "res", n=5)
    key = study.make_study(folders, tmp_path / "rate", log=quiet).key
    a, b = study.presentation(key, "alice"), study.presentation(key, "bob")
    assert a == study.presentation(key, "alice") and a != b
    for trials in (a, b):
        assert sorted(t["photo"] for t in trials) == [f"p{i}" for i in range(5)]
        assert all(sorted(t["shown"]) == sorted(key["codes"]) for t in trials)
    assert len({tuple(t["shown"]) for t in a + b}) > 1  # the order of the results varies per photo
    pair = study.make_study(folders, tmp_path / "pair", mode="pairwise", log=quiet).key
    trials = study.presentation(pair, "alice")
    assert len(trials) == study.n_trials(pair) == 5 * 3
    assert {(t["photo"], frozenset(t["shown"])) for t in trials} == {
        (f"p{i}", frozenset(p)) for i in range(5) for p in [("m0", "m1"), ("m0", "m2"), ("m1", "m2")]}
    lefts = {t["shown"][0] for t in trials}
    assert len(lefts) == 3  # every code is sometimes on the left


def test_mulberry32_and_fnv1a_match_their_reference_definitions():
    assert study.fnv1a32("") == 0x811C9DC5 and study.fnv1a32("a") == 0xE40C292C  # FNV-1a test vectors
    rand = study.mulberry32(study.fnv1a32("x"))
    draws = [rand() for _ in range(2000)]
    assert all(0 <= x < 1 for x in draws) and abs(np.mean(draws) - 0.5) < 0.03
    assert draws != [study.mulberry32(study.fnv1a32("y"))() for _ in range(2000)]


# ------------------------------------------------------------------------------- scoring hand-made votes

def votes_file(path: Path, key: dict, rater: str, trials: list[dict], answered_at: str = "2026-01-01T00:00:00Z"):
    """Write a votes file as the page exports it."""
    data = {"format": study.VOTES_FORMAT, "study_id": key["study_id"], "study_name": key["name"],
            "mode": key["mode"], "scale": key["scale"], "rater": rater, "trials_total": study.n_trials(key),
            "started_at": answered_at, "exported_at": answered_at,
            "votes": [{"trial": i, "shown_at": answered_at, "answered_at": answered_at, **t}
                      for i, t in enumerate(trials)]}
    path.write_text(json.dumps(data))
    return path


def rate_votes(key, per_method: dict[str, list[int]]):
    """Trials scoring method m on photo i with per_method[m][i]."""
    code = key["by_method"]
    stems = [p["stem"] for p in key["photos"]]
    return [{"photo": s, "shown": list(key["codes"]), "scores": {code[m]: v[i] for m, v in per_method.items()}}
            for i, s in enumerate(stems)]


@pytest.fixture
def rate_study(tmp_path):
    return study.make_study(make_results(tmp_path / "res", n=2), tmp_path / "rtts", name="RTTS", log=quiet)


def test_score_rate_means_t_and_bootstrap_intervals(tmp_path, rate_study):
    key = rate_study.key
    raters = {"r1": {"CORUN": [8, 9], "RIDCP": [6, 6], "DCP": [3, 4]},
              "r2": {"CORUN": [7, 7], "RIDCP": [7, 8], "DCP": [2, 2]},
              "r3": {"CORUN": [9, 10], "RIDCP": [5, 6], "DCP": [4, 5]}}
    files = [votes_file(tmp_path / f"{r}.json", key, r, rate_votes(key, v)) for r, v in raters.items()]
    t = study.score_studies(files, [rate_study.out], ci="t").table.set_index("method")
    per_rater = {m: [np.mean(v[m]) for v in raters.values()] for m in METHODS}  # CORUN 8.5, 7, 9.5
    for m in METHODS:
        x = np.array(per_rater[m])
        half = 4.302652729911275 * x.std(ddof=1) / math.sqrt(3)  # t_{0.975, 2}
        assert t.loc[m, "mean"] == pytest.approx(x.mean())
        assert (t.loc[m, "ci_low"], t.loc[m, "ci_high"]) == pytest.approx((x.mean() - half, x.mean() + half))
        assert t.loc[m, "raters"] == 3 and t.loc[m, "votes"] == 6
    b = study.score_studies(files, [rate_study.out], ci="bootstrap", n_boot=4000).table.set_index("method")
    for m in METHODS:  # percentile bootstrap of a mean of 3 raters: inside [min, max] of the rater means
        assert min(per_rater[m]) <= b.loc[m, "ci_low"] < b.loc[m, "mean"] < b.loc[m, "ci_high"] <= max(per_rater[m])
    scored = study.score_studies(files, [rate_study.out], output=tmp_path / "out" / "table2.md")
    md = scored.markdown
    assert "| study | CORUN | RIDCP | DCP | raters | votes | photos |" in md  # methods in make's order
    assert "| RTTS | **8.33** [" in md and "| 3 | 6 of 6 | 2 |" in md
    assert [f.name for f in scored.files] == ["table2.md", "table2.csv", "table2.png"]
    with Image.open(tmp_path / "out" / "table2.png") as png:
        assert png.size[0] > 300
    csv = (tmp_path / "out" / "table2.csv").read_text().splitlines()
    assert csv[0] == "study,study_id,mode,method,mean,ci_low,ci_high,raters,raters_total,votes,photos"
    assert csv[1].startswith(f"RTTS,{key['study_id']},rate,CORUN,8.3333,")


def test_score_refuses_votes_of_another_study_and_mixed_studies(tmp_path, rate_study):
    other = study.make_study(make_results(tmp_path / "res2", n=2), tmp_path / "fattal", name="Fattal", log=quiet)
    ours = votes_file(tmp_path / "ours.json", rate_study.key, "r1",
                      rate_votes(rate_study.key, {"CORUN": [5, 5], "RIDCP": [4, 4], "DCP": [3, 3]}))
    foreign = votes_file(tmp_path / "foreign.json", other.key, "r1",
                         rate_votes(other.key, {"CORUN": [5, 5], "RIDCP": [4, 4], "DCP": [3, 3]}))
    refused = (rf"foreign.json: votes of study {other.study_id} \(Fattal\), not of {rate_study.study_id} \(RTTS\): "
               "votes from another study are refused")
    with pytest.raises(study.StudyError, match=refused):
        study.score_studies([ours, foreign], [rate_study.out])
    with pytest.raises(study.StudyError, match="votes of 2 different studies"):
        study.score_studies([ours, foreign])
    assert main(["study", "score", str(ours), str(foreign), "--study", str(rate_study.out)]) == 2
    # both keys given: two studies, two rows of one table (the paper's RTTS and Fattal rows)
    md = study.score_studies([ours, foreign], [rate_study.out, other.out]).markdown
    assert "| RTTS | " in md and "| Fattal | " in md
    # without a key the methods stay blind codes, with a note
    md = study.score_studies([ours]).markdown
    assert "method m0" in md and "CORUN" not in md and "pass the study folder with `--study`" in md


@pytest.mark.parametrize("change, message", [
    (lambda v: v["votes"][0]["scores"].update({"m0": 11}), "integer 1..10"),
    (lambda v: v["votes"][0].update(shown=["m0", "m9", "m1"]), "method codes"),
    (lambda v: v["votes"][0].update(photo="nope"), "photo 'nope' is not in this study"),
    (lambda v: v.update(mode="rank"), "mode 'rank', but the study's is 'rate'"),
    (lambda v: v.update(format="something"), "not a corun study votes file"),
])
def test_score_refuses_malformed_votes(tmp_path, rate_study, change, message):
    path = votes_file(tmp_path / "v.json", rate_study.key, "r1",
                      rate_votes(rate_study.key, {"CORUN": [5, 5], "RIDCP": [4, 4], "DCP": [3, 3]}))
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    with pytest.raises(study.StudyError, match=message):
        study.score_studies([path], [rate_study.out])


def test_score_keeps_a_raters_latest_answer_per_trial(tmp_path, rate_study):
    key = rate_study.key
    first = rate_votes(key, {"CORUN": [1, 1], "RIDCP": [1, 1], "DCP": [1, 1]})
    again = rate_votes(key, {"CORUN": [9, 9], "RIDCP": [5, 5], "DCP": [2, 2]})[:1]  # p0 only
    early = votes_file(tmp_path / "a.json", key, "r1", first, answered_at="2026-01-01T10:00:00Z")
    late = votes_file(tmp_path / "b.json", key, "r1", again, answered_at="2026-01-01T11:00:00Z")
    t = study.score_studies([late, early], [rate_study.out]).table.set_index("method")
    assert t.loc["CORUN", "mean"] == pytest.approx((9 + 1) / 2)  # photo p0 re-answered, p1 kept
    assert t.loc["CORUN", "raters_total"] == 1 and t.loc["CORUN", "votes"] == 2


def test_score_rank_and_pairwise_statistics(tmp_path):
    folders = make_results(tmp_path / "res", n=2)
    rank = study.make_study(folders, tmp_path / "rank", mode="rank", log=quiet)
    c = rank.key["by_method"]
    stems = [p["stem"] for p in rank.key["photos"]]
    orders = {"r1": [["CORUN", "RIDCP", "DCP"], ["CORUN", "DCP", "RIDCP"]],
              "r2": [["RIDCP", "CORUN", "DCP"], ["CORUN", "RIDCP", "DCP"]]}
    files = [votes_file(tmp_path / f"rank_{r}.json", rank.key, r,
                        [{"photo": s, "shown": list(rank.key["codes"]), "ranking": [c[m] for m in o]}
                         for s, o in zip(stems, orders[r])]) for r in orders]
    scored = study.score_studies(files, [rank.out], ci="t")
    t = scored.table.set_index("method")
    assert t.loc["CORUN", "mean"] == pytest.approx(((1 + 1) / 2 + (2 + 1) / 2) / 2)
    assert t.loc["DCP", "mean"] == pytest.approx(((3 + 2) / 2 + (3 + 3) / 2) / 2)
    assert "mean rank" in scored.markdown and "**1.25**" in scored.markdown  # lower is better: CORUN bold

    pair = study.make_study(folders, tmp_path / "pair", mode="pairwise", log=quiet)
    c = pair.key["by_method"]
    trials = [{"photo": s, "shown": [c[a], c[b]], "choice": c[a]}  # CORUN > RIDCP > DCP always
              for s in stems for a, b in (("CORUN", "RIDCP"), ("CORUN", "DCP"), ("RIDCP", "DCP"))]
    trials[-1]["choice"] = c["DCP"]  # one upset on p1
    t = study.score_studies([votes_file(tmp_path / "pair.json", pair.key, "r1", trials)], [pair.out]).table
    t = t.set_index("method")
    # RIDCP: lost twice to CORUN, beat DCP on p0 only; DCP: lost three times, won the upset
    assert t.loc["CORUN", "mean"] == 100 and t.loc["RIDCP", "mean"] == pytest.approx(100 * 1 / 4)
    assert t.loc["DCP", "mean"] == pytest.approx(100 * 1 / 4) and t.loc["DCP", "votes"] == 6


def test_cli_make_and_score(tmp_path, capsys):
    folders = make_results(tmp_path / "res", n=2, missing={"CORUN": ["p1"]})
    args = ["study", "make"] + [f"{m}={d}" for m, d in folders.items()] + ["-o", str(tmp_path / "s"), "--name", "RTTS"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "unmatched: RIDCP: 1 image(s) not in every folder, left out: p1" in err and "1 photos × 3 methods" in err
    key = study.load_key(tmp_path / "s")
    v = votes_file(tmp_path / "v.json", key, "r1", rate_votes(key, {"CORUN": [6], "RIDCP": [5], "DCP": [4]}))
    assert main(["study", "score", str(v), "--study", str(tmp_path / "s"), "-o", str(tmp_path / "t2.md")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# Table 2: user study") and "| RTTS | **6.00** |" in out
    assert main(args) == 2 and "--overwrite" in capsys.readouterr().err


# ------------------------------------------------------------------------------ the page in a browser

@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    downloads = tmp_path_factory.mktemp("downloads")
    with chromium(downloads) as driver:
        driver.downloads = downloads
        yield driver


def _keys(driver, *keys):
    from selenium.webdriver.common.action_chains import ActionChains

    chain = ActionChains(driver)
    for k in keys:
        chain.send_keys(k)
    chain.perform()


def _start(driver, page: Path, rater: str):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver.get(page.resolve().as_uri())
    box = driver.find_element(By.ID, "rater")
    box.clear()
    box.send_keys(rater, Keys.ENTER)
    assert driver.execute_script("return window.studyPage.state().rater") == rater


def _shown(driver) -> list[str]:
    """The blind codes of the results on screen, left to right, and that their images loaded."""
    from selenium.webdriver.common.by import By

    panels = driver.find_elements(By.CSS_SELECTOR, "#panels .panel")
    loaded = "return [...document.querySelectorAll('#panels img')].every(i => i.complete && i.naturalWidth > 0)"
    end = time.monotonic() + 10
    while not driver.execute_script(loaded):
        assert time.monotonic() < end, "the result images did not load"
        time.sleep(0.05)
    return [p.get_attribute("data-code") for p in panels]


def _download(driver, study_id: str, rater: str, timeout: float = 10) -> dict:
    path = driver.downloads / f"votes_{study_id}_{rater}.json"
    path.unlink(missing_ok=True)
    _keys(driver, "e")
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if path.is_file() and path.stat().st_size:
            try:
                return json.loads(path.read_text())
            except json.JSONDecodeError:  # still being written
                pass
        time.sleep(0.1)
    raise AssertionError(f"no download {path.name} in {driver.downloads}: {list(driver.downloads.iterdir())}")


SCORE = {"CORUN": 9, "RIDCP": 6, "DCP": 3}


@pytest.mark.slow
def test_page_rate_keyboard_resume_export_and_score(tmp_path, browser):
    from selenium.webdriver.common.keys import Keys

    folders = make_results(tmp_path / "res", n=3)
    s = study.make_study(folders, tmp_path / "study", name="RTTS", reference=folders["DCP"], log=quiet)
    method = s.key["methods"]
    exports = {}
    for rater, bias in (("alice", 0), ("bob", 1)):
        _start(browser, s.page, rater)
        assert browser.execute_script("return window.studyPage.presentation(arguments[0])", rater) == \
            study.presentation(s.key, rater)
        for n, trial in enumerate(study.presentation(s.key, rater)):
            if rater == "alice" and n == 1:  # leave and come back: the votes are kept in localStorage
                _start(browser, s.page, rater)
                assert browser.execute_script("return window.studyPage.state()") == \
                    {"rater": "alice", "cur": 1, "answered": 1}
            assert _shown(browser) == trial["shown"]
            # score every result by its method (0 = 10), focus moves on by itself; Enter: next photo
            digits = [str((SCORE[method[c]] + bias) % 10) for c in trial["shown"]]
            _keys(browser, *digits, Keys.ENTER)
        assert browser.find_element("id", "done").is_displayed()
        exports[rater] = _download(browser, s.study_id, rater)
    for rater, data in exports.items():
        assert data["study_id"] == s.study_id and data["rater"] == rater and data["complete"] is True
        assert [v["shown"] for v in data["votes"]] == [t["shown"] for t in study.presentation(s.key, rater)]
        assert all(v["answered_at"] >= v["shown_at"] for v in data["votes"])
    files = [tmp_path / f"{r}.json" for r in exports]
    for f, data in zip(files, exports.values()):
        f.write_text(json.dumps(data))
    t = study.score_studies(files, [s.out], ci="t").table.set_index("method")
    for m, v in SCORE.items():  # alice gave v, bob v + 1 (DCP 4, RIDCP 7, CORUN 10)
        assert t.loc[m, "mean"] == pytest.approx(v + 0.5) and t.loc[m, "raters"] == 2 and t.loc[m, "votes"] == 6


@pytest.mark.slow
def test_page_rank_with_undo_and_pairwise_with_arrows(tmp_path, browser):
    from selenium.webdriver.common.keys import Keys

    folders = make_results(tmp_path / "res", n=2)
    rank = study.make_study(folders, tmp_path / "rank", mode="rank", embed=True, log=quiet)
    assert not (tmp_path / "rank" / "images").exists()  # embedded: one file
    _start(browser, rank.page, "carol")
    order = ["RIDCP", "CORUN", "DCP"]
    for _ in range(study.n_trials(rank.key)):
        shown = [rank.key["methods"][c] for c in _shown(browser)]
        pos = [str(shown.index(m) + 1) for m in order]
        _keys(browser, pos[2], "u", pos[0], pos[1], Keys.ENTER)  # a wrong first pick, undone
    data = browser.execute_script("return window.studyPage.payload()")
    assert all([rank.key["methods"][c] for c in v["ranking"]] == order for v in data["votes"])
    (tmp_path / "rank.json").write_text(json.dumps(data))
    t = study.score_studies([tmp_path / "rank.json"], [rank.out]).table.set_index("method")
    assert list(t.loc[order, "mean"]) == [1, 2, 3]

    pair = study.make_study(folders, tmp_path / "pair", mode="pairwise", log=quiet)
    _start(browser, pair.page, "dave")
    prefer = {"CORUN": 3, "RIDCP": 2, "DCP": 1}
    for _ in range(study.n_trials(pair.key)):
        left, right = [prefer[pair.key["methods"][c]] for c in _shown(browser)]
        _keys(browser, Keys.ARROW_LEFT if left > right else Keys.ARROW_RIGHT)
    data = _download(browser, pair.study_id, "dave")
    assert len(data["votes"]) == 6 and data["complete"]
    (tmp_path / "pair.json").write_text(json.dumps(data))
    t = study.score_studies([tmp_path / "pair.json"], [pair.out]).table.set_index("method")
    assert list(t.loc[["CORUN", "RIDCP", "DCP"], "mean"]) == [100, 50, 0]
    # votes of this page are refused by the other study
    with pytest.raises(study.StudyError, match="votes from another study are refused"):
        study.score_studies([tmp_path / "pair.json"], [rank.out])
