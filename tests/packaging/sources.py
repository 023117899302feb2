"""A copy of the sources a wheel is built from, so the packaging tests build nothing inside the checkout."""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Every folder the wheel installs: the core and the subsystems pyproject maps under fusionguard.*
# (the Dockerfile copies the same folders).
PACKAGE_FOLDERS = ("fusionguard", *tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"].values())


def copy_sources(dst: Path) -> Path:
    """pyproject.toml, README.md and every package folder (no __pycache__) into `dst`; returns `dst`."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, dst / name)
    for folder in PACKAGE_FOLDERS:
        shutil.copytree(ROOT / folder, dst / folder, ignore=shutil.ignore_patterns("__pycache__"))
    return dst
