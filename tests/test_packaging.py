"""pyproject.toml and environment.yml must list the same dependencies; every notebook's .py and .ipynb agree."""
import json
import re
import subprocess
import sys
from pathlib import Path

import jupytext
import pytest
import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONDA_NAMES = {"pytorch": "torch"}  # conda-forge name -> PyPI name


def names(requirements):
    return {re.split(r"[<>=!~\[ ;]", r.strip(), maxsplit=1)[0].lower().replace("_", "-") for r in requirements}


def pyproject_names():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return names(project["dependencies"] + project["optional-dependencies"]["dev"])


def environment_names():
    entries = yaml.safe_load((ROOT / "environment.yml").read_text())["dependencies"]
    conda = [e for e in entries if isinstance(e, str)]
    pip = [p for e in entries if isinstance(e, dict) for p in e["pip"] if not p.startswith("-e")]
    found = {CONDA_NAMES.get(n, n) for n in names(conda + pip)}
    return found - {"python", "pip"}


def test_environment_yml_matches_pyproject():
    missing_in_env, missing_in_pyproject = (pyproject_names() - environment_names(),
                                            environment_names() - pyproject_names())
    assert not missing_in_env and not missing_in_pyproject, (
        f"environment.yml lacks {sorted(missing_in_env)}; pyproject.toml lacks {sorted(missing_in_pyproject)}")


NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.py"))


@pytest.mark.parametrize("script", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_pair_agrees(script):
    ipynb = script.with_suffix(".ipynb")
    assert ipynb.exists(), f"{script.name} has no paired {ipynb.name}: run jupytext --sync {script}"
    cells = lambda nb: [(c.cell_type, c.source.strip()) for c in nb.cells]  # noqa: E731
    notebook = jupytext.read(ipynb)
    assert cells(jupytext.read(script)) == cells(notebook), f"run jupytext --sync {script}"
    assert notebook.metadata["kernelspec"]["name"] == "python3"


MACHINE_PATHS = re.compile(r"(/tmp/|/root/|/home/|/work/|/Users/|\\Users\\)")


@pytest.mark.parametrize("script", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_stored_with_its_outputs(script):
    """A lesson reads on a code host without running: its figures and tables are stored (at most 3 MB), with no
    error, no path of the machine that ran it, and a PNG beside every widget (a code host shows no widgets)."""
    ipynb = script.with_suffix(".ipynb")
    notebook = jupytext.read(ipynb)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    outputs = [output for cell in code for output in cell.get("outputs", [])]
    assert sum(bool(cell.get("outputs")) for cell in code) >= len(code) // 2, f"run {ipynb.name} and store it"
    assert ipynb.stat().st_size <= 3 * 2**20, f"{ipynb.name} is over 3 MB"
    assert not [o for o in outputs if o.get("output_type") == "error"], f"{ipynb.name} stores an error"
    text = json.dumps(outputs)
    assert not MACHINE_PATHS.search(text), f"{ipynb.name} stores a machine path: {MACHINE_PATHS.search(text)[0]}"
    widgets = [o for o in outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert all("image/png" in o["data"] for o in widgets), f"{ipynb.name} has a widget without a PNG beside it"


def test_importing_cfgedu_pulls_in_torch_and_numpy_only():
    result = subprocess.run([sys.executable, "-c", "import sys, cfgedu; print([m for m in ('matplotlib', 'sklearn', "
                             "'ipywidgets', 'scipy', 'jupytext') if m in sys.modules])"],
                            capture_output=True, text=True)
    assert result.stdout.strip() == "[]", result.stderr
