"""Subcommand registration: the specs packages register through entry points.

Each package names its commands in pyproject.toml under the entry-point groups below, pointing
at a `Subcommand` spec in a light module of its own, so the core names none of its subsystems
and `fusionguard --help` imports none of them. A package missing from an install (the serving
image ships the core, gate and monitor) leaves its commands listed but unavailable. This module
is apart from `fusionguard.cli` so that the specs' class is the same object when the CLI runs as
`python -m fusionguard.cli` (then `fusionguard.cli` is also `__main__`).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import entry_points

__all__ = ["COMMANDS_GROUP", "DATA_COMMANDS_GROUP", "Subcommand", "package_of", "subcommands"]

COMMANDS_GROUP = "fusionguard.commands"  # the root's subcommands
DATA_COMMANDS_GROUP = "fusionguard.data_commands"  # `fusionguard data ...` subcommands of other packages
# The hint for a command whose package is not installed at all (not an extra: the package itself).
_ABSENT_PACKAGE_HINT = "install fusionguard from a full checkout with the train extra: pip install '.[train,cpu]'"
_ABSENT_PACKAGES: set[str] = set()  # top-level packages an entry point named but the install lacks


@dataclass(frozen=True)
class Subcommand:
    """A subcommand a package registers under an entry-point group."""

    target: str  # "module:attribute" of the click command, imported on first use
    help: str  # the one line `--help` shows without importing `target`


def package_of(module: str) -> str:
    """The package a missing module belongs to: a distribution's top-level name, or for this
    house's own modules the subsystem (`fusionguard.training.cli` -> `fusionguard.training`)."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "fusionguard" and len(parts) > 1 else parts[0]


def subcommands(group: str) -> dict[str, Subcommand]:
    """name -> Subcommand for every entry point of `group` in the installed distributions.

    An entry point whose spec module is not installed gives a spec whose target is that missing
    module, so invoking the command names what to install (see `missing_extra`).
    """
    found: dict[str, Subcommand] = {}
    for ep in entry_points(group=group):
        try:
            spec = ep.load()
        except ModuleNotFoundError as err:
            missing = package_of(err.name or ep.module)
            _ABSENT_PACKAGES.add(missing)
            found[ep.name] = Subcommand(f"{ep.module}:{ep.attr}", f"Not in this install: {_ABSENT_PACKAGE_HINT}.")
            continue
        if not isinstance(spec, Subcommand):
            raise TypeError(f"entry point {ep.name} = {ep.value} in {group} is not a fusionguard.commands.Subcommand")
        found[ep.name] = spec
    return found

