"""`fusionguard export`: a checkpoint to one verified, self-contained ONNX file."""

from __future__ import annotations

from pathlib import Path

import click

from fusionguard.export.pipeline import QUANTIZE_CHOICES, ExportConfig
from fusionguard.recipes.exporting import export_checkpoint


@click.command("export")
@click.option(
    "--checkpoint",
    "checkpoint",
    required=True,
    type=click.Path(path_type=Path, exists=True, file_okay=False),
    help="Training checkpoint directory (model.pt, config.json, meta.json).",
)
@click.option("--out", required=True, type=click.Path(path_type=Path, dir_okay=False), help="ONNX file to write.")
@click.option(
    "--quantize",
    type=click.Choice(QUANTIZE_CHOICES),
    default=None,
    help="Also write <stem>.int8.onnx (ONNX Runtime dynamic quantization) and report its score correlation and NDCG@10 difference.",
)
@click.option("--opset", type=int, default=ExportConfig.opset, show_default=True, help="ONNX opset (>= 18).")
@click.option(
    "--tolerance",
    type=float,
    default=ExportConfig.tolerance,
    show_default=True,
    help="Max abs score difference ONNX Runtime vs torch allowed at each batch size.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON instead of a table.")
def export(checkpoint: Path, out: Path, quantize: str | None, opset: int, tolerance: float, as_json: bool) -> None:
    """Export a checkpoint to ONNX with its modality contract, verified against torch.

    The model goes through the ONNX checker (full check), strict shape inference, an ONNX Runtime
    session and score parity with torch on validation rows at batch sizes 1, 7, 50 and 128. It is
    written under --out only if every check passes; otherwise it is kept as <stem>.failed.onnx and
    the command exits 1 with the measured differences (2: bad options or input, 3: the exporter
    could not convert the model).

    Example: fusionguard export --checkpoint runs/progressive --out models/progressive.onnx --quantize int8
    """
    config = ExportConfig(opset=opset, quantize=quantize, tolerance=tolerance)
    result = export_checkpoint(checkpoint, out, config)
    click.echo(result.to_json() if as_json else str(result))
    click.get_current_context().exit(result.exit_code)
