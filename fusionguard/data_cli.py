"""`fusionguard data ...`: dataset commands. `synth` lives in training/ and loads lazily."""

from __future__ import annotations

import click

from fusionguard.cli import LazyGroup


@click.group(cls=LazyGroup, lazy={"synth": ("training.cli:synth", "Generate the synthetic image-search benchmark (needs the 'train' extra).")})
def data() -> None:
    """Generate and validate datasets (Parquet, one row per query-candidate pair)."""
