"""The production V1's logged clicks (label_source = "v1_clicks"): who can be clicked, how click
rate follows grade and rank, determinism, and a test split that keeps its true grades."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fusionguard.dataset import load_dataset
from fusionguard.errors import ConfigError
from fusionguard.training.clicks import (
    click_probability,
    click_rng,
    examination_probability,
    ranks,
    simulate_clicks,
    write_click_benchmark,
)
from fusionguard.training.protocol import load_protocol, prepare
from fusionguard.training.trainer import train

from .conftest import TINY_SYNTH, tiny_config


def _queries(n_queries: int, n_cand: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    qidx = np.repeat(np.arange(n_queries), n_cand)
    item = np.tile(np.arange(n_cand), n_queries)
    grade = rng.integers(0, 5, n_queries * n_cand)
    scores = rng.standard_normal(n_queries * n_cand)
    return qidx, item, grade, scores


def test_ranks_follow_scores_within_each_query_with_metrics_tie_break():
    qidx = np.array([1, 1, 1, 0, 0])
    item = np.array([0, 1, 2, 0, 1])
    scores = np.array([0.5, 0.9, 0.5, -1.0, 2.0])
    # query 1: item 1 first, then the tie 0.5 between items 0 and 2 goes to the higher item id
    np.testing.assert_array_equal(ranks(qidx, item, scores), [3, 1, 2, 2, 1])


def test_click_curves_are_the_registered_ones():
    np.testing.assert_allclose(click_probability(np.arange(5)), [0.05, 0.11, 0.23, 0.47, 0.95])
    np.testing.assert_allclose(examination_probability(np.array([1, 3, 7])), [1.0, 0.5, 1 / 3])


def test_clicks_only_where_examined_and_deterministic_per_seed():
    qidx, item, grade, scores = _queries(200, 20)
    a = simulate_clicks(qidx, item, scores, grade, click_rng(0, "train"))
    b = simulate_clicks(qidx, item, scores, grade, click_rng(0, "train"))
    c = simulate_clicks(qidx, item, scores, grade, click_rng(1, "train"))
    d = simulate_clicks(qidx, item, scores, grade, click_rng(0, "val"))
    assert a.clicked.sum() > 0 and set(np.unique(a.clicked)) <= {0, 1}
    assert not np.any(a.clicked.astype(bool) & ~a.examined)  # no click without examination
    np.testing.assert_array_equal(a.clicked, b.clicked)
    assert not np.array_equal(a.clicked, c.clicked) and not np.array_equal(a.clicked, d.clicked)


def test_click_rate_rises_with_grade_and_examination_falls_with_v1_rank():
    qidx, item, grade, scores = _queries(4000, 20, seed=1)
    clicks = simulate_clicks(qidx, item, scores, grade, click_rng(0, "train"))
    top = clicks.rank <= 3  # ranks 1-3: click rate = mean examination there x the click curve
    rate = [clicks.clicked[top & (grade == g)].mean() for g in range(5)]
    assert all(lo < hi for lo, hi in zip(rate, rate[1:])), rate
    np.testing.assert_allclose(rate, click_probability(np.arange(5)) * examination_probability(np.arange(1, 4)).mean(), atol=0.04)
    exam = [clicks.examined[clicks.rank == r].mean() for r in (1, 2, 5, 10, 20)]
    assert all(hi > lo for hi, lo in zip(exam, exam[1:])), exam
    np.testing.assert_allclose(exam, examination_probability(np.array([1, 2, 5, 10, 20])), atol=0.04)
    # same grades, V1's order reversed: the log follows V1's ranking, not only relevance
    flipped = simulate_clicks(qidx, item, -scores, grade, click_rng(0, "train"))
    best = scores == np.maximum.reduceat(scores, np.arange(0, len(scores), 20)).repeat(20)
    assert clicks.clicked[best].mean() > flipped.clicked[best].mean() + 0.2


@pytest.fixture(scope="module")
def click_bench(tmp_path_factory, tiny_bench):
    tmp = tmp_path_factory.mktemp("clicks")
    train(tiny_config("v1", max_epochs=1), tiny_bench, tmp / "v1", progress=False)
    return write_click_benchmark(tiny_bench, tmp / "v1", tmp / "data", TINY_SYNTH.seed), tmp


def test_click_benchmark_relabels_train_and_val_and_leaves_test_untouched(click_bench, tiny_bench):
    meta, tmp = click_bench
    assert (tmp / "data" / "test.parquet").read_bytes() == (tiny_bench / "test.parquet").read_bytes()
    for split in ("train", "val"):
        inputs = ["query", "text_tokens", "visual_tokens"]
        logged = load_dataset(tmp / "data" / f"{split}.parquet", inputs=inputs)
        true = load_dataset(tiny_bench / f"{split}.parquet", inputs=inputs)
        np.testing.assert_array_equal(logged.query_id, true.query_id)
        for name in inputs:
            np.testing.assert_array_equal(logged.feeds[name], true.feeds[name])
        assert set(np.unique(logged.label)) <= {0, 1} and logged.label.sum() > 0
        assert not np.array_equal(logged.label, true.label)
    written = json.loads((tmp / "data" / "synth.json").read_text())
    assert written["label_source"]["test"] == "editorial" and written["clicks"]["splits"]["train"] == meta["splits"]["train"]
    # the same V1 and generator seed log the same clicks
    again = write_click_benchmark(tiny_bench, tmp / "v1", tmp / "again", TINY_SYNTH.seed)
    assert (tmp / "again" / "train.parquet").read_bytes() == (tmp / "data" / "train.parquet").read_bytes()
    assert again["splits"] == meta["splits"]
    # and a V2 trains on the click labels
    result = train(tiny_config("baseline", max_epochs=1), tmp / "data", tmp / "v2", progress=False)
    assert result.epochs_run == 1 and result.test["ndcg"] is not None


def test_protocol_label_source_is_validated_and_prepares_click_data(tmp_path):
    text = (
        'name = "t"\ngenerator_seeds = [3]\ntraining_seeds = [0]\n[train]\ndevice = "cpu"\n[train.model]\nd_model = 16\nn_heads = 4\n'
        "[train.optim]\nmax_epochs = 1\n[data]\nn_train = 12\nn_val = 4\nn_test = 4\nn_candidates = 10\ndim = 8\n"
        "text_tokens = 2\nvisual_tokens = 3\nobject_patches = 1\nlabel_source = \"{}\"\n"
    )
    (tmp_path / "bad.toml").write_text(text.format("clicks"))
    with pytest.raises(ConfigError, match="label_source"):
        load_protocol(tmp_path / "bad.toml")
    (tmp_path / "p.toml").write_text(text.format("v1_clicks"))
    data, v1_dir = prepare(load_protocol(tmp_path / "p.toml"), 3, tmp_path / "work")
    assert data.name == "data-g3-v1-clicks" and (v1_dir / "model.pt").is_file()
    editorial = data.parent / "data-g3"
    assert (data / "test.parquet").read_bytes() == (editorial / "test.parquet").read_bytes()
    assert set(np.unique(load_dataset(data / "train.parquet").label)) <= {0, 1}
    assert not np.array_equal(load_dataset(data / "train.parquet").label, load_dataset(editorial / "train.parquet").label)
