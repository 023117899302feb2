"""Export: trained rankers to ONNX with the modality contract, verified against torch.

The package takes any model that follows the training seam (docs/interfaces.md) and never imports
`training`: loading a training checkpoint and exporting it is the recipe
`fusionguard.recipes.exporting.export_checkpoint` (the `fusionguard export` command)."""

from fusionguard.export.errors import ExportFailedError, ExportVerificationError
from fusionguard.export.exporter import contract_for, to_onnx
from fusionguard.export.pipeline import ExportConfig, ExportResult, export_model
from fusionguard.export.quantize import QuantizationReport, compare_int8, quantize_int8
from fusionguard.export.verify import BatchParity, Check, VerificationReport, verify_model

__all__ = [
    "BatchParity",
    "Check",
    "ExportConfig",
    "ExportFailedError",
    "ExportResult",
    "ExportVerificationError",
    "QuantizationReport",
    "VerificationReport",
    "compare_int8",
    "contract_for",
    "export_model",
    "quantize_int8",
    "to_onnx",
    "verify_model",
]
