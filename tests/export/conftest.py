"""Fixtures: the synthetic benchmark at toy size and tiny trained models of each architecture.

The dynamo exporter takes seconds per model, so every checkpoint and every export is built once
per session and shared; tests that tamper with a model copy the file first.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest


from fusionguard.training.checkpoint import load_checkpoint  # noqa: E402
from fusionguard.training.config import ModelConfig, OptimConfig, TrainConfig  # noqa: E402
from fusionguard.training.trainer import train_late_fusion  # noqa: E402
from fusionguard.training.synth import SynthConfig, write_benchmark  # noqa: E402
from fusionguard.training.trainer import train  # noqa: E402

D, LT, LV = 8, 4, 3  # embedding width, text tokens, visual tokens
N_VAL_QUERIES, N_CANDIDATES = 4, 40  # 160 validation rows: more than the largest parity batch (128)
# One variant per architecture: text-only V1, the V2 cross-attention baseline, progressive fusion,
# and the attention-free late-fusion ranker (trained by its own loop, exported with export_model).
VARIANTS = ("v1", "baseline", "progressive", "late-fusion")
CHECKPOINT_VARIANTS = ("v1", "baseline", "progressive")


@dataclass(frozen=True)
class Trained:
    variant: str
    checkpoint: Path  # the trainer's output directory
    config: TrainConfig
    epochs_run: int


def tiny_config(variant: str) -> TrainConfig:
    return TrainConfig(
        variant=variant,
        device="cpu",
        model=ModelConfig(d_model=16, n_heads=2, depth=2),
        optim=OptimConfig(max_epochs=2, batch_queries=4),
    )


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic benchmark at toy size (train/val/test Parquet)."""
    root = tmp_path_factory.mktemp("export-data")
    cfg = SynthConfig(
        n_train=8, n_val=N_VAL_QUERIES, n_test=2, n_candidates=N_CANDIDATES, dim=D, text_tokens=LT, visual_tokens=LV,
        n_attributes=3,
    )
    write_benchmark(cfg, root)
    return root


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> dict[str, Trained]:
    """Tiny models trained for two epochs by the real trainer."""
    root = tmp_path_factory.mktemp("export-checkpoints")
    out = {}
    for variant in CHECKPOINT_VARIANTS:
        config = tiny_config(variant)
        result = train(config, data_dir, root / variant, progress=False)
        out[variant] = Trained(variant, Path(result.out), config, result.epochs_run)
    return out


@pytest.fixture(scope="session")
def late_fusion(tmp_path_factory: pytest.TempPathFactory, data_dir: Path):
    """(model, meta) of the late-fusion ranker after two epochs of its own training loop."""
    return train_late_fusion(tiny_config("baseline"), data_dir, tmp_path_factory.mktemp("late-fusion"), progress=False)


@pytest.fixture(scope="session")
def exports(tmp_path_factory: pytest.TempPathFactory, checkpoints: dict[str, Trained], late_fusion):
    """variant -> ExportResult.to_dict(). V1 goes through the CLI (parsing its --json output), the
    other checkpoints through `export_checkpoint`, late fusion through `export_model`; only the
    baseline is also quantized."""
    from click.testing import CliRunner

    from fusionguard.export.pipeline import ExportConfig, export_model
    from fusionguard.recipes.exporting import export_checkpoint
    from fusionguard.cli import cli

    root = tmp_path_factory.mktemp("export-onnx")
    results = {}
    cli_out = root / "v1.onnx"
    run = CliRunner().invoke(cli, ["export", "--checkpoint", str(checkpoints["v1"].checkpoint), "--out", str(cli_out), "--json"])
    assert run.exit_code == 0, run.output
    results["v1"] = json.loads(run.stdout[run.stdout.index("{"):])
    for variant in ("baseline", "progressive"):
        config = ExportConfig(quantize="int8" if variant == "baseline" else None)
        results[variant] = export_checkpoint(checkpoints[variant].checkpoint, root / f"{variant}.onnx", config).to_dict()
    model, meta = late_fusion
    results["late-fusion"] = export_model(model, meta, root / "late-fusion.onnx").to_dict()
    return results


@pytest.fixture(scope="session")
def loaded(checkpoints: dict[str, Trained], late_fusion):
    """variant -> the torch model (eval mode): reloaded from its checkpoint, or the late-fusion one."""
    models = {v: load_checkpoint(t.checkpoint).model for v, t in checkpoints.items()}
    models["late-fusion"] = late_fusion[0].eval()
    return models
