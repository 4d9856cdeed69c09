"""The README's JupyterLab path, for real: JupyterLab on loopback, notebook 04 opened in headless Chromium,
Run → Run All Cells through the menus, and its four figures rendered in the page.

Notebook 04 (label pool inspection) needs a label pool. Instead of a smoke reproduction (minutes), the test
builds a small one with :class:`~corun.colabator.label_pool.LabelPool` itself (six 40×40 photos, three
iterations of candidates, so it has accepted and refused decisions and a history to compare), writes a copy of
the notebook with its parameters pointed at it (papermill's ``parameterize_notebook``, as ``corun reproduce``
does), and serves only that temporary folder: JupyterLab's config, runtime, settings and workspaces all live
in it, so nothing is written into the repository. JupyterLab (and its kernel) is shut down in all cases.
Needs the ``lab`` extra (JupyterLab) and the browser of tests/browser.py.
"""
from __future__ import annotations

import contextlib
import json
import os

import pytest
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import nbformat
import numpy as np
import torch
from browser import chromium, missing
from PIL import Image

from corun.colabator.label_pool import LabelPool
from corun.reproduce import ROOT

pytestmark = pytest.mark.slow  # trainings, notebooks, subprocesses: `make test-fast` skips this file

NOTEBOOK = "04_label_pool_inspection.ipynb"
N_FIGURES = 4          # 04_per_image, 04_score_distributions, 04_improvements, 04_pool_change
# every wait of the test, JupyterLab start to the last check; the shutdown after it takes at most ~25 s more,
# so the test ends within 3 min (CORUN_LAB_TEST_DEADLINE_S gives a slower machine more)
DEADLINE_S = float(os.environ.get("CORUN_LAB_TEST_DEADLINE_S", 150))
RUN_ALL = ("runmenu:run-all", "notebook:run-all-cells")   # Run → Run All Cells (JupyterLab 4 / 3)


def _wait(what: str, check, deadline: float, limit: float | None = None, every: float = 0.25):
    """Poll ``check()`` until truthy (returned), for at most ``limit`` s (default: until ``deadline``) and
    never past ``deadline``. Prints how long it took (pytest shows it when the test fails)."""
    start = time.monotonic()
    end = deadline if limit is None else min(deadline, start + limit)
    last = None
    while time.monotonic() < end:
        try:
            value = check()
        except Exception as exc:  # noqa: BLE001 - a page still loading raises all sorts
            value, last = None, exc
        if value:
            print(f"{what}: {time.monotonic() - start:.1f} s")
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what} after {time.monotonic() - start:.0f} s"
                         + (f" (last error: {last!r})" if last else ""))


def make_pool(root: Path) -> tuple[Path, Path]:
    """Six small "real" photos and a label pool over them: 3 iterations of candidates (the teacher's labels
    brighten the photo step by step; scores rise for some photos and fall for others)."""
    real = root / "real"
    real.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names, photos = [], []
    for i in range(6):
        arr = (rng.random((40, 40, 3)) * 120 + 60).astype(np.uint8)
        names.append(f"photo_{i}.png")
        Image.fromarray(arr).save(real / names[-1])
        photos.append(torch.from_numpy(arr).permute(2, 0, 1).float() / 255)
    pool = LabelPool.open(root / "label_pool")
    hazy = torch.stack(photos)
    for it in (1, 2, 3):
        labels = (hazy * (1 + 0.1 * it)).clamp(0, 1)
        q = torch.tensor([0.4 + 0.1 * it * (-1) ** k for k in range(6)]).clamp(0, 1)
        h = torch.tensor([0.5 + 0.05 * it] * 6)
        weights = torch.rand(6, 1, 40, 40, generator=torch.Generator().manual_seed(it))
        pool.update(names, labels, labels.mean(1, keepdim=True), q, h, weights, iteration=it)
    assert len(pool) == 6 and len(pool.history()) == 18
    return root / "label_pool", real


def write_notebook(work: Path, params: dict) -> Path:
    """A copy of notebook 04 with ``params`` injected after its parameters cell (papermill's way)."""
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    nb = parameterize_notebook(load_notebook_node(str(ROOT / "notebooks" / NOTEBOOK)), params)
    path = work / NOTEBOOK
    nbformat.write(nb, path)
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _settings(settings: Path) -> None:
    """User settings for this JupyterLab only: every cell kept in the page (no virtual scrolling, so all
    outputs can be found), and no news or update checks (no network)."""
    files = {"@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
             "@jupyterlab/apputils-extension/notification.jupyterlab-settings":
                 {"fetchNews": "false", "checkForUpdates": False}}
    for rel, value in files.items():
        (settings / rel).parent.mkdir(parents=True, exist_ok=True)
        (settings / rel).write_text(json.dumps(value))


def _get(url: str, timeout: float = 2.0) -> int:
    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - loopback only
        return r.status


@contextlib.contextmanager
def jupyterlab(work: Path, home: Path, deadline: float):
    """JupyterLab serving ``work`` on 127.0.0.1 (a free port, a random token); its config, data, runtime,
    settings and workspaces under ``home``. Yields (base URL, token); always shut down (REST shutdown, then
    SIGTERM, then SIGKILL, and any kernel left over killed)."""
    import psutil

    port, token = _free_port(), secrets.token_hex(16)
    _settings(home / "settings")
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(home / "config"), "JUPYTER_DATA_DIR": str(home / "data"),
           "JUPYTER_RUNTIME_DIR": str(home / "runtime"), "IPYTHONDIR": str(home / "ipython"),
           "JUPYTER_PLATFORM_DIRS": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
           f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
           f"--ServerApp.root_dir={work}", f"--LabApp.user_settings_dir={home / 'settings'}",
           f"--LabApp.workspaces_dir={home / 'workspaces'}", "--ServerApp.terminals_enabled=False",
           "--LabApp.extension_manager=readonly"]   # no extension-manager lookups on PyPI
    if os.geteuid() == 0:  # CI runs as root
        cmd.append("--allow-root")
    log = open(home / "jupyterlab.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        def up():
            return proc.poll() is not None or _get(f"{base}/api/status?token={token}") == 200

        try:
            _wait("JupyterLab to answer", up, deadline, every=0.5)
            assert proc.poll() is None, f"JupyterLab exited with {proc.returncode}"
        except AssertionError as exc:
            raise AssertionError(f"{exc}; its log:\n" + (home / "jupyterlab.log").read_text()[-3000:]) from None
        yield base, token
    finally:
        family = []
        with contextlib.suppress(psutil.Error):
            family = psutil.Process(proc.pid).children(recursive=True)   # the kernels
        with contextlib.suppress(Exception):
            req = urllib.request.Request(f"{base}/api/shutdown", method="POST",
                                         headers={"Authorization": f"token {token}"})
            urllib.request.urlopen(req, timeout=5).close()  # noqa: S310
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        for child in family:
            with contextlib.suppress(psutil.Error):
                child.kill()
        log.close()


def _dialogs(driver) -> list[str]:
    return driver.execute_script("return [...document.querySelectorAll('.jp-Dialog')].map(d => d.textContent)")


def _stable_rect(driver, element, deadline: float):
    """Wait until ``element`` has stopped moving (a menu is laid out after it is shown)."""
    last = [None]

    def still():
        rect = driver.execute_script("const r = arguments[0].getBoundingClientRect(); "
                                     "return [r.x, r.y, r.width, r.height]", element)
        same, last[0] = rect == last[0] and rect[2] > 0, rect
        return same

    _wait("the menu to settle", still, deadline, 10, every=0.2)


def run_all_from_the_menu(driver, deadline: float, tries: int = 3) -> None:
    """Run → Run All Cells, clicked in the menus with the pointer (hover, then click, once the menu has
    stopped moving). Retried when no cell has started 20 s later: on a loaded machine a click that lands while
    the menu is still being laid out is lost, or hits another item (a dialog, e.g. "Restart Kernel?", then
    says so: it is named in the failure and dismissed before the next try)."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    def started():
        prompts = driver.execute_script(
            "return [...document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-CodeCell "
            ".jp-InputArea-prompt')].map(p => p.textContent.trim())")
        return any(p not in ("[ ]:", "") for p in prompts)   # "[*]:" queued/running, "[1]:" done

    seen_dialogs: list[str] = []
    for attempt in range(1, tries + 1):
        menu = _wait("the Run menu", lambda: [m for m in driver.find_elements(By.CSS_SELECTOR, ".lm-MenuBar-item")
                                             if m.text.strip() == "Run"], deadline, 10)
        menu[0].click()
        item = _wait("Run → Run All Cells", lambda: [i for i in driver.find_elements(
            By.CSS_SELECTOR, ".lm-Menu-item:not(.lm-mod-disabled)") if i.get_attribute("data-command") in RUN_ALL],
            deadline, 10)[0]
        _stable_rect(driver, item, deadline)
        ActionChains(driver).move_to_element(item).pause(0.3).click().perform()
        try:
            _wait(f"the first cell to start (click {attempt})", started, deadline, 20)
            return
        except AssertionError:
            seen_dialogs += _dialogs(driver)
            if attempt == tries:
                raise AssertionError(f"Run All Cells did not start a cell in {tries} tries; dialogs seen: "
                                     f"{seen_dialogs}") from None
            for _ in range(2):   # close a dialog (Escape = Cancel) or an open menu
                driver.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)
                time.sleep(0.3)


def _requirements():
    try:
        import jupyterlab  # noqa: F401
    except ImportError:
        missing("JupyterLab not installed (pip install -e '.[lab]')")


@pytest.mark.skipif(os.environ.get("CORUN_LAB_BROWSER_TEST") == "0", reason="CORUN_LAB_BROWSER_TEST=0 (opted out)")
def test_notebook_04_runs_in_jupyterlab_and_renders_its_figures(tmp_path):
    _requirements()
    from selenium.webdriver.common.by import By

    deadline = time.monotonic() + DEADLINE_S
    work, home = tmp_path / "work", tmp_path / "home"
    work.mkdir()
    home.mkdir()
    pool_dir, real_dir = make_pool(tmp_path)
    figures = tmp_path / "figures"
    nb_path = write_notebook(work, {"profile": "smoke", "pool_dir": str(pool_dir), "run_dir": str(tmp_path / "run"),
                                    "real_dir": str(real_dir), "n_show": 3, "figures_dir": str(figures)})
    checkpoints = ROOT / "notebooks" / ".ipynb_checkpoints"
    had_checkpoints = checkpoints.exists()

    with jupyterlab(work, home, deadline) as (base, token), chromium(width=1400, height=1000) as driver:
        driver.set_page_load_timeout(max(5.0, deadline - time.monotonic()))
        driver.get(f"{base}/lab/tree/{NOTEBOOK}?token={token}")
        status = "#main .jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook-ExecutionIndicator"

        def kernel_idle():
            el = driver.find_elements(By.CSS_SELECTOR, status)
            return el and el[0].get_attribute("data-status") == "idle"

        _wait("notebook 04 open with an idle kernel", kernel_idle, deadline)
        run_all_from_the_menu(driver, deadline)

        def cell_state():
            return driver.execute_script(
                "const panel = '.jp-NotebookPanel:not(.lm-mod-hidden) ';"
                "return {prompts: [...document.querySelectorAll(panel + '.jp-CodeCell .jp-InputArea-prompt')]"
                ".map(p => p.textContent.trim()), errors: [...document.querySelectorAll(panel + "
                "'.jp-OutputArea-output')].map(o => o.textContent).filter(t => t.includes('Traceback'))}")

        def all_ran():
            state = cell_state()
            if state["errors"]:   # Run All stops at a failing cell: say which error instead of waiting
                return state
            prompts = state["prompts"]
            done = prompts and all(p.startswith("[") and p not in ("[ ]:", "[*]:") for p in prompts)
            return done and kernel_idle() and state

        try:
            state = _wait("every cell to run", all_ran, deadline, every=0.5)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; cell prompts: {cell_state()['prompts']}") from None
        assert not state["errors"], "a cell failed in JupyterLab:\n" + state["errors"][0][-3000:]
        prompts = state["prompts"]
        n_code = sum(c.cell_type == "code" for c in nbformat.read(nb_path, as_version=4).cells)
        assert len(prompts) == n_code
        images = _wait(f"{N_FIGURES} figures rendered", lambda: (lambda imgs: imgs if len(imgs) >= N_FIGURES else None)(
            driver.execute_script("return [...document.querySelectorAll('.jp-OutputArea-output img')]"
                                  ".filter(i => i.complete && i.naturalWidth > 100).map(i => i.naturalWidth)")),
            deadline, 20)
        assert len(images) == N_FIGURES
        outputs = driver.execute_script(
            "return [...document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-OutputArea-output')]"
            ".map(o => o.textContent)")
        errors = [t for t in outputs if "Traceback" in t or "Error" in t.split("\n", 1)[0]]
        assert not errors, errors[0][:2000]
        assert any("6 photos, 18 decisions over iterations 1–3" in t for t in outputs), outputs[:3]

    assert sorted(p.name for p in figures.iterdir()) == sorted(
        f"{s}.{e}" for s in ("04_per_image", "04_score_distributions", "04_improvements", "04_pool_change")
        for e in ("png", "pdf"))
    assert checkpoints.exists() == had_checkpoints, "JupyterLab wrote into the repository's notebooks/"
