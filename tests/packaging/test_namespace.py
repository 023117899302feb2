"""The wheel installs one top-level import name, `fusionguard`, and the CLI works from it.

The subsystems keep their top-level folders (gate/, monitor/, export/, training/, recipes/: the
product's shape) but install as `fusionguard.gate` and so on (pyproject's package-dir), so the
wheel cannot collide with another distribution's `gate` or `training`. The test builds the wheel
from a copy of the sources (nothing is built inside the checkout), installs it without
dependencies into a fresh virtual environment whose only other path is this environment's
site-packages (for numpy, click, onnx...; the editable install's finder is not loaded there), and
runs the CLI from it. Measured on the 2-core machine: about 10 s.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest

from tests.packaging.sources import copy_sources

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SETUPTOOLS = PYPROJECT["tool"]["setuptools"]
FOLDERS = SETUPTOOLS["package-dir"]  # {"fusionguard.gate": "gate", ...}

pytestmark = pytest.mark.integration


def _source_packages() -> set[str]:
    """Every folder of the house that must ship, as its installed dotted name."""
    names = set()
    for installed, folder in {"fusionguard": "fusionguard", **FOLDERS}.items():
        for d, dirs, _ in os.walk(ROOT / folder):
            dirs[:] = [x for x in dirs if x != "__pycache__"]
            rel = Path(d).relative_to(ROOT / folder)
            names.add(".".join((installed, *rel.parts)) if rel.parts else installed)
    return names


def test_pyproject_lists_every_package_folder():
    assert set(SETUPTOOLS["packages"]) == _source_packages()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    src = copy_sources(tmp / "src")
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(tmp / "dist"), str(src)],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    [whl] = (tmp / "dist").glob("fusionguard-*.whl")
    return whl


def test_the_wheel_installs_only_the_fusionguard_name(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"fusionguard"}
    for module in ("gate/cli.py", "monitor/server.py", "export/pipeline.py", "training/trainer.py"):
        assert f"fusionguard/{module}" in names, module
    assert any(n.startswith("fusionguard/training/configs/") and n.endswith(".toml") for n in names)


def test_the_installed_wheel_runs_the_cli(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = Path(subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip())
    # the dependencies come from this environment; a .pth line adds a path without running its .pth files
    (site / "zz_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps", "--no-index", str(wheel)],
        capture_output=True, text=True, timeout=300,
    )
    assert pip.returncode == 0, pip.stderr[-3000:]
    probe = (
        "import importlib.util, json, fusionguard, fusionguard.gate.cli, fusionguard.monitor.cli\n"
        "print(json.dumps({'generic': [m for m in ('gate', 'monitor', 'export', 'training', 'recipes') if importlib.util.find_spec(m)],"
        " 'from': fusionguard.__file__}))"
    )
    out = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert '"generic": []' in out.stdout and str(site) in out.stdout, out.stdout
    for argv in (["--help"], ["gate", "--help"], ["monitor", "serve", "--help"], ["data", "--help"]):
        cli = subprocess.run([str(venv / "bin" / "fusionguard"), *argv], capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert cli.returncode == 0 and "Usage:" in cli.stdout, (argv, cli.stderr[-2000:])
