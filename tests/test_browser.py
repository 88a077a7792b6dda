"""The tutorials as a user meets them: JupyterLab in headless Chromium.

For every notebook with a slider: open it, wait for a connected kernel, Run All Cells from the Run menu,
check that no cell raised, drag the w slider and check that its readout and its figure both changed.
A screenshot per notebook lands in pytest's temporary folder. Notebooks run in fast mode (CFGEDU_FAST=1)
from a copy of notebooks/, so the committed .ipynb files never receive outputs.
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# A slider constructor (FloatSlider(, w_slider(, ...) or a cfgedu slider panel (Figure2Widget(, ...).
HAS_SLIDER = re.compile(r"(Slider|_slider|Widget)\(")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
SETTINGS = {  # JupyterLab user settings for the test server: no autosave, no news prompt
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                         "checkForUpdates": False},
}
RUN_TIMEOUT_MS = 120_000  # per notebook, generous: fast mode takes ~20 s on an idle 2-core machine


def notebooks_with_sliders() -> list[Path]:
    return sorted(p for p in (ROOT / "notebooks").glob("*.ipynb") if HAS_SLIDER.search(p.read_text()))


def missing_requirement() -> str | None:
    """Why the browser test cannot run here, or None."""
    if shutil.which("chromium") is None:
        return "Debian's chromium is not installed (apt-get install -y chromium)"
    for module in ("playwright", "jupyterlab", "ipywidgets"):
        if importlib.util.find_spec(module) is None:
            return f"the Python package {module} is not installed (pip install -e '.[dev]')"
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def lab_environment(home: Path) -> dict[str, str]:
    """The server's environment: fast notebooks, this checkout importable, Jupyter state under `home`."""
    env = {**os.environ, "CFGEDU_FAST": "1", "OMP_NUM_THREADS": "1",  # kernels share 2 cores with the browser
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "JUPYTER_CONFIG_DIR": str(home / "config"), "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
           "JUPYTERLAB_SETTINGS_DIR": str(home / "settings"), "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces")}
    env.pop("MPLBACKEND", None)  # tests/conftest.py sets Agg; kernels should use their inline backend
    for name, value in SETTINGS.items():
        path = home / "settings" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value))
    return env


def wait_for_server(url: str, process: subprocess.Popen, log: Path, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"JupyterLab exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"JupyterLab did not answer {url} within {timeout} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server on a free loopback port with a token, serving a copy of notebooks/."""
    reason = missing_requirement()
    if reason:
        pytest.skip(reason)
    home = tmp_path_factory.mktemp("lab")
    shutil.copytree(ROOT / "notebooks", home / "root" / "notebooks",
                    ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    if (ROOT / "data").is_dir():
        (home / "root" / "data").symlink_to(ROOT / "data")
    port, token = free_port(), secrets.token_hex(16)
    log = home / "jupyterlab.log"
    command = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ServerApp.ip=127.0.0.1",
               f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
               f"--ServerApp.root_dir={home / 'root'}", "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=",
               "--ServerApp.allow_root=True"]  # CI containers often run as root
    with open(log, "w") as output:
        process = subprocess.Popen(command, env=lab_environment(home), stdout=output, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_server(f"{url}/api/status?token={token}", process, log)
        yield {"url": url, "token": token, "log": log}
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture(scope="module")
def browser(lab):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


# ---- JupyterLab state, read through the app object (exposed by --LabApp.expose_app_in_browser) ----

KERNEL_READY = """name => {
  const panel = window.jupyterapp && window.jupyterapp.shell.currentWidget;
  if (!panel || !panel.context || !panel.context.path.endsWith(name)) return false;
  const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
  return !!kernel && kernel.connectionStatus === 'connected' && kernel.status === 'idle';
}"""

RUN_FINISHED = """() => {
  const panel = window.jupyterapp.shell.currentWidget;
  const cells = panel.content.widgets.filter(cell => cell.model.type === 'code');
  for (const cell of cells) {
    for (const output of cell.model.outputs.toJSON()) {
      if (output.output_type === 'error') return {error: `${output.ename}: ${output.evalue}`};
    }
  }
  const done = cells.every(cell => cell.model.executionCount !== null && cell.model.executionState !== 'running');
  return done && panel.sessionContext.session.kernel.status === 'idle' ? {cells: cells.length} : false;
}"""


def open_notebook(page, lab, name: str) -> None:
    page.goto(f"{lab['url']}/lab/tree/notebooks/{name}?token={lab['token']}&reset")
    page.wait_for_function(KERNEL_READY, arg=name, timeout=90_000)
    assert not page.locator(".jp-Dialog").is_visible(), f"{name} opened with a dialog (a kernel prompt?)"


def run_all_cells(page) -> dict:
    page.locator(".lm-MenuBar-item", has_text=re.compile(r"^Run$")).click()
    page.locator('.lm-Menu-item[data-command="runmenu:run-all"]').click()
    return page.wait_for_function(RUN_FINISHED, timeout=RUN_TIMEOUT_MS).json_value()


def w_slider(page):
    """The w slider: marked by cfgedu.frontend.widgets.w_slider, else an ipywidgets slider described 'w'."""
    marked = page.locator(".cfgedu-w-slider")
    if marked.count():
        return marked.first
    described = page.locator(".widget-slider").filter(has=page.locator(".widget-label", has_text=re.compile(r"^w$")))
    assert described.count(), "the notebook has no w slider (use cfgedu.frontend.widgets.w_slider)"
    return described.first


def figure_in(cell):
    """The largest image or canvas in a cell's output: the figure the slider drives."""
    candidates = cell.locator(".jp-OutputArea img, .jp-OutputArea canvas")
    sizes = [(box["width"] * box["height"], i) for i in range(candidates.count())
             if (box := candidates.nth(i).bounding_box())]
    assert sizes, "the slider's cell shows no figure"
    return candidates.nth(max(sizes)[1])


def readout_in(cell, slider) -> str:
    readout = cell.locator(".cfgedu-w-readout")
    return (readout if readout.count() else slider.locator(".widget-readout")).first.inner_text()


def drag(page, slider, pixels: float) -> None:
    """Press the slider's handle with the mouse and move it sideways."""
    handle = slider.locator(".noUi-handle")
    handle.scroll_into_view_if_needed()  # taking the figure's screenshot may have scrolled it away
    box = handle.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + pixels, y, steps=8)
    page.mouse.up()


def wait_until(condition, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} within {timeout} s of moving the slider"
        time.sleep(0.25)


def readout_settled(text: str, before: str, slider) -> bool:
    """The readout changed and, for a cfgedu readout, shows the slider's w and s = 1 + w."""
    match = re.fullmatch(r"w = (\S+) \(s = 1 \+ w = (\S+)\)", text)
    if text == before or match is None:
        return text != before and match is None
    w, s = float(match[1]), float(match[2])
    return abs(s - (1 + w)) < 1e-9 and abs(w - float(slider.locator(".widget-readout").inner_text())) < 1e-9


@pytest.mark.parametrize("notebook", notebooks_with_sliders(), ids=lambda p: p.stem)
def test_notebook_runs_and_its_w_slider_updates_the_figure(lab, browser, notebook, tmp_path):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(30_000)
    try:
        open_notebook(page, lab, notebook.name)
        outcome = run_all_cells(page)
        assert "error" not in outcome, f"{notebook.name} raised {outcome['error']}"
        slider = w_slider(page)
        slider.scroll_into_view_if_needed()
        cell = slider.locator("xpath=ancestor::div[contains(concat(' ', @class, ' '), ' jp-Cell ')][1]")
        figure = figure_in(cell)
        readout, pixels = readout_in(cell, slider), figure.screenshot()
        drag(page, slider, -40 if readout.startswith("w = 16") else 40)
        wait_until(lambda: readout_settled(readout_in(cell, slider), readout, slider),
                   "the readout did not come to show the new w and s = 1 + w")
        wait_until(lambda: figure_in(cell).screenshot() != pixels, "the figure did not change")
        assert not page.locator(".jp-Dialog").is_visible(), "moving the slider opened a dialog"
    finally:
        close(page, tmp_path / f"{notebook.stem}.png")


def close(page, screenshot: Path) -> None:
    """Save a screenshot (also after a failed check), stop the notebook's kernel and close the page."""
    from playwright.sync_api import Error

    with contextlib.suppress(Error):  # a broken page must not hide the failure that broke it
        page.screenshot(path=screenshot)
        page.evaluate("() => window.jupyterapp?.shell.currentWidget?.sessionContext?.shutdown()")
    page.close()
