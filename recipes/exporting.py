"""Export a training checkpoint: load it (`fusionguard.training.checkpoint`) and export it (`fusionguard.export.pipeline`).

The glue between the two packages lives here, above both, so that `export` needs no import of
`training`: the exporter takes any model that follows the training seam (docs/interfaces.md).
"""

from __future__ import annotations

from pathlib import Path

from fusionguard.export.pipeline import ExportConfig, ExportResult, export_model

__all__ = ["export_checkpoint"]


def export_checkpoint(checkpoint: str | Path, out: str | Path, config: ExportConfig = ExportConfig()) -> ExportResult:
    """Load a training checkpoint (`fusionguard.training.checkpoint.load_checkpoint`) and `export_model` it."""
    from fusionguard.training.checkpoint import load_checkpoint  # the training package needs torch; import on use

    ckpt = load_checkpoint(checkpoint)
    return export_model(ckpt.model, ckpt.meta, out, config)
