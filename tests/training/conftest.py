"""Tiny benchmark and configs shared by the training tests (files only under tmp_path)."""

import pytest

import torch  # noqa: F401  (the test install always has the train extra: a missing torch must fail, not skip)

from fusionguard.training.config import ModelConfig, OptimConfig, TrainConfig  # noqa: E402
from fusionguard.training.synth import SynthConfig, write_benchmark  # noqa: E402

TINY_SYNTH = SynthConfig(
    seed=3, n_train=12, n_val=4, n_test=4, n_candidates=10, dim=8, text_tokens=2, visual_tokens=3, object_patches=1
)


def tiny_config(variant: str = "baseline", **optim) -> TrainConfig:
    opts = {"max_epochs": 3, "patience": 3, "batch_queries": 4, "lr": 1e-2, **optim}
    return TrainConfig(variant=variant, model=ModelConfig(d_model=16, n_heads=4, depth=2), optim=OptimConfig(**opts))


@pytest.fixture(scope="session")
def tiny_bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    write_benchmark(TINY_SYNTH, out)
    return out
