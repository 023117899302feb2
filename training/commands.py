"""Training's subcommands, registered through entry points (pyproject.toml): `fusionguard train`
and `fusionguard data synth`. Reading them imports no torch (training/__init__ is lazy)."""

from fusionguard.commands import Subcommand

TRAIN = Subcommand("fusionguard.training.cli:train", "Train a fusion model variant (needs the 'train' extra).")
SYNTH = Subcommand("fusionguard.training.cli:synth", "Generate the synthetic image-search benchmark (needs the 'train' extra).")
