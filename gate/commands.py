"""The gate's subcommands, registered through the `fusionguard.commands` entry points (pyproject.toml).

Read by `fusionguard --help` without importing `fusionguard.gate.cli` (nothing here but the specs).
"""

from fusionguard.commands import Subcommand

GATE = Subcommand("fusionguard.gate.cli:gate", "Release gate: block collapsed or V1-in-disguise candidates.")
PROMOTE = Subcommand("fusionguard.gate.cli:promote", "Promote a model whose gate report passed into a registry.")
REGISTRY = Subcommand("fusionguard.gate.cli:registry", "List, show and roll back promoted models.")
EVAL = Subcommand("fusionguard.gate.cli:eval_command", "Offline evaluation table of several models.")
