"""The recipes' subcommands, registered through the `fusionguard.commands` entry points (pyproject.toml)."""

from fusionguard.commands import Subcommand

EXPORT = Subcommand("fusionguard.recipes.export_cli:export", "Export a checkpoint to ONNX with its modality contract.")
EXPERIMENT = Subcommand("fusionguard.recipes.experiment_cli:experiment", "Run the paper's experiment grid and report.")
