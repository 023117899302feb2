"""Package namespaces whose public names load on first use (PEP 562 module `__getattr__`).

A package `__init__` that re-exports its public names this way costs nothing to import, so the
root CLI can read a package's command specs without loading its code (torch, the serving stack).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib import import_module
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[list[str], Callable[[str], Any]]:
    """(`__all__`, `__getattr__`) for `package`, whose public `name` lives in module `exports[name]`.

    Use: ``__all__, __getattr__ = lazy_exports(__name__, {"train": "fusionguard.training.trainer", ...})``.
    """

    def __getattr__(name: str) -> Any:
        if name in exports:
            return getattr(import_module(exports[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return sorted(exports), __getattr__
