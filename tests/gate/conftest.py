"""Toy models and data for the gate tests, built once per session under a tmp directory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from fusionguard import toymodels as tm
from fusionguard.dataset import write_dataset

# Few resamples and a low query floor: these tests are about the gate's logic, not its statistics.
FAST_POLICY = """
[data]
min_queries = 2
[bootstrap]
n_resamples = 500
[ablation]
n_permutations = 3
"""


@dataclass(frozen=True)
class Toys:
    root: Path
    data: Path
    v1: Path
    fusion: Path
    blind: Path
    monotone: Path
    policy: Path


@pytest.fixture(scope="session")
def toys(tmp_path_factory) -> Toys:
    root = tmp_path_factory.mktemp("toys")
    batch = tm.make_toy_dataset(n_queries=30, n_candidates=8, seed=3)
    data = write_dataset(root / "eval.parquet", batch.query_id, batch.item_id, batch.label, batch.feeds)
    policy = root / "fast.toml"
    policy.write_text(FAST_POLICY)
    return Toys(
        root=root,
        data=data,
        v1=tm.save(tm.build_text_model(), root / "v1.onnx"),
        fusion=tm.save(tm.build_fusion_model(1.0), root / "fusion.onnx"),
        blind=tm.save(tm.build_visual_blind_model(), root / "blind.onnx"),
        monotone=tm.save(tm.build_monotone_of_text_model("cubic"), root / "monotone.onnx"),
        policy=policy,
    )
