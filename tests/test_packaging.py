"""pyproject.toml and environment.yml must list the same dependencies; every notebook's .py and .ipynb agree."""
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
    assert all(not c.get("outputs") for c in notebook.cells
               if c.cell_type == "code"), "commit notebooks without outputs"


def test_importing_cfgedu_pulls_in_torch_and_numpy_only():
    result = subprocess.run([sys.executable, "-c", "import sys, cfgedu; print([m for m in ('matplotlib', 'sklearn', "
                             "'ipywidgets', 'scipy', 'jupytext') if m in sys.modules])"],
                            capture_output=True, text=True)
    assert result.stdout.strip() == "[]", result.stderr
