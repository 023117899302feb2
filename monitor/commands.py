"""The monitor's subcommand, registered through the `fusionguard.commands` entry points (pyproject.toml)."""

from fusionguard.commands import Subcommand

MONITOR = Subcommand("fusionguard.monitor.cli:monitor", "Serve models over the Open Inference Protocol with telemetry.")
