"""Fixtures: a tiny validation set and tiny trained checkpoints of each architecture.

The dynamo exporter takes seconds per model, so every checkpoint and every export is built once
per session and shared; tests that tamper with a model copy the file first.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from fusionguard.dataset import write_dataset  # noqa: E402
from training.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from training.config import ModelConfig, TrainConfig  # noqa: E402
from training.models import InputDims, build_model  # noqa: E402

D, LT, LV = 8, 4, 3  # embedding width, text tokens, visual tokens
N_QUERIES, N_CANDIDATES = 20, 8  # 160 validation rows: more than the largest parity batch (128)
# One variant per architecture: text-only V1, the V2 cross-attention baseline, progressive fusion.
VARIANTS = ("v1", "baseline", "progressive")


@dataclass(frozen=True)
class Trained:
    variant: str
    checkpoint: Path
    config: TrainConfig
    initial_state: dict  # the weights before training, to show the export sees trained ones


def make_rows(rng: np.random.Generator, n_queries: int, n_candidates: int) -> dict[str, np.ndarray]:
    n = n_queries * n_candidates
    visual = rng.normal(size=(n, LV, D)).astype(np.float32)
    query = rng.normal(size=(n, D)).astype(np.float32)
    text = rng.normal(size=(n, LT, D)).astype(np.float32)
    # Labels depend on both modalities, so training has something to learn from each.
    signal = (query * text.mean(1)).sum(1) + visual[:, 0, 0]
    label = np.digitize(signal, np.quantile(signal, [0.5, 0.8])).astype(np.int64)
    return {
        "query_id": np.repeat(np.arange(n_queries), n_candidates),
        "item_id": np.tile(np.arange(n_candidates), n_queries),
        "label": label,
        "query": query,
        "text_tokens": text,
        "visual_tokens": visual,
    }


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("export-data")
    rng = np.random.default_rng(7)
    for split, n_queries in (("train", 16), ("val", N_QUERIES)):
        rows = make_rows(rng, n_queries, N_CANDIDATES)
        write_dataset(
            root / f"{split}.parquet",
            rows["query_id"],
            rows["item_id"],
            rows["label"],
            {k: rows[k] for k in ("query", "text_tokens", "visual_tokens")},
        )
    return root


def train_few_steps(model: torch.nn.Module, data_dir: Path, steps: int = 5, seed: int = 0) -> None:
    """A few AdamW steps of pointwise regression on the tiny train split: enough to move every
    weight away from its initialisation so the export sees a trained model."""
    from fusionguard.dataset import load_dataset

    torch.manual_seed(seed)
    batch = load_dataset(data_dir / "train.parquet", inputs=("query", "text_tokens", "visual_tokens"))
    n = len(batch)
    args = [
        torch.from_numpy(batch.feeds["query"].reshape(n, D).copy()),
        torch.from_numpy(batch.feeds["text_tokens"].reshape(n, LT, D).copy()),
        torch.from_numpy(batch.feeds["visual_tokens"].reshape(n, LV, D).copy()),
    ]
    if "visual" not in model.modalities:
        args = args[:2]
    target = torch.from_numpy(batch.label.astype(np.float32))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        score, _ = model(*args)
        loss = torch.nn.functional.mse_loss(score, target)
        loss.backward()
        optimizer.step()
    model.eval()


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> dict[str, Trained]:
    root = tmp_path_factory.mktemp("export-checkpoints")
    out = {}
    for variant in VARIANTS:
        config = TrainConfig(variant=variant, model=ModelConfig(d_model=16, n_heads=2, depth=2))
        model = build_model(variant, InputDims(D, LT, LV), config.model)
        initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
        train_few_steps(model, data_dir)
        meta = {"data_sha256": "0" * 64, "data_dir": str(data_dir)}
        out[variant] = Trained(variant, save_checkpoint(root / variant, model, config, meta), config, initial)
    return out


@pytest.fixture(scope="session")
def exports(tmp_path_factory: pytest.TempPathFactory, checkpoints: dict[str, Trained]):
    """variant -> (ExportResult, checkpoint). V1 goes through the CLI (parsing its --json output),
    the others through the library; only the baseline is also quantized."""
    from click.testing import CliRunner

    from export.pipeline import ExportConfig, export_checkpoint
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
    return results


@pytest.fixture(scope="session")
def loaded(checkpoints: dict[str, Trained]):
    """variant -> the torch model reloaded from its checkpoint (eval mode)."""
    return {v: load_checkpoint(t.checkpoint) for v, t in checkpoints.items()}
