"""The emoji track as a training dataset and as an experiment-grid track, on the generated package layout."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fusionguard.dataset import load_dataset
from fusionguard.errors import InvalidInputError
from tests.training.tracks.test_emoji import _bag_of_words, _catalogue, _mean_colour, _seed_with_queries_in_every_split
from fusionguard.training.tracks.emoji import SPLITS, item_ids, load_features
from fusionguard.training.tracks.emoji_dataset import build_dataset, candidates, import_emoji
from fusionguard.training.zero_shot import load_zero_shot


@pytest.fixture()
def built(tmp_path):
    cat = _catalogue(tmp_path)
    cfg = _seed_with_queries_in_every_split(cat)
    feats = load_features(tmp_path / "cache", cat, text=_bag_of_words, image=_mean_colour)
    return cat, cfg, feats


def test_candidates_are_siblings_then_random_from_the_same_split(built):
    cat, cfg, _ = built
    split = cat.split_of_items(cfg)
    cands = candidates(cat, split, cfg)
    for q in cat.queries:
        c = cands[q]
        assert c[0] == q and len(set(c)) == len(c) == min(cfg.n_candidates, int(np.sum(split == split[q])))
        assert all(split[i] == split[q] for i in c)
        siblings = [i for i, f in enumerate(cat.families) if f == cat.families[q] and i != q]
        assert set(siblings[: cfg.n_candidates - 1]) <= set(c) or len(siblings) >= cfg.n_candidates - 1


def test_dataset_schema_rows_and_zero_shot_on_the_same_rows(built, tmp_path):
    cat, cfg, feats = built
    out = tmp_path / "data"
    result = build_dataset(cat, feats, out, cfg)
    split = cat.split_of_items(cfg)
    ids = item_ids(len(cat.labels), cfg)
    first_position = []
    for s, name in enumerate(SPLITS):
        batch = load_dataset(out / f"{name}.parquet", inputs=["query", "text_tokens", "visual_tokens"])
        qids = np.unique(batch.query_id)
        assert result.queries[name] == len(qids) == sum(split[q] == s for q in cat.queries)
        assert np.asarray(batch.feeds["text_tokens"]).reshape(len(batch.label), -1).shape[1] == 2 * cfg.dim
        item_split = {int(ids[i]): split[i] for i in range(len(ids))}
        assert all(item_split[int(i)] == s for i in batch.item_id)  # no item of another split
        for q in qids:
            rows = np.flatnonzero(batch.query_id == q)
            assert batch.label[rows].sum() == 1
            first_position.append(int(np.argmax(batch.label[rows])))
            relevant = int(np.flatnonzero(ids == batch.item_id[rows][batch.label[rows] == 1][0])[0])
            assert cat.queries[int(q)] == relevant  # query id = position in cat.queries
        zs = load_zero_shot(out, name)
        np.testing.assert_array_equal(zs.query_id, batch.query_id)
        np.testing.assert_array_equal(zs.item_id, batch.item_id)
        assert set(zs.scores) == {"text", "visual", "sum", "late"}
    assert len(set(first_position)) > 1  # the relevant row's position varies
    meta = json.loads((out / "emoji.json").read_text())
    assert meta["input_dims"] == {"d": cfg.dim, "lt": 2, "lv": 2}
    from fusionguard.training.data import read_dims

    dims = read_dims(out)
    assert (dims.d, dims.lt, dims.lv) == (cfg.dim, 2, 2)


def test_import_needs_a_built_cache(built, tmp_path):
    cat, cfg, _ = built
    result = import_emoji(tmp_path / "cache", tmp_path / "data", cfg)
    assert result.rows["test"] > 0
    with pytest.raises(InvalidInputError):
        import_emoji(tmp_path / "empty", tmp_path / "data2", cfg)


def test_the_grid_runs_the_emoji_track(built, tmp_path):
    """track = "emoji" in a grid TOML: import, train, export, evaluate and report (one tiny run)."""
    pytest.importorskip("torch")
    from fusionguard.recipes.experiment import load_grid, run_experiment

    _, cfg, _ = built
    grid = tmp_path / "emoji.toml"
    grid.write_text(f"""name = "emoji-test"
track = "emoji"
seeds = [0]
variants = ["baseline"]
reference = "baseline"
[train]
device = "cpu"
[train.model]
d_model = 8
n_heads = 2
depth = 1
[train.optim]
max_epochs = 1
min_epochs = 1
batch_queries = 4
[data]
val_fraction = {cfg.val_fraction}
test_fraction = {cfg.test_fraction}
seed = {cfg.seed}
dim = {cfg.dim}
n_candidates = {cfg.n_candidates}
[eval]
n_resamples = 200
latency_repeats = 2
attention_rows = 20
""")
    assert load_grid(grid).track == "emoji"
    with pytest.raises(InvalidInputError, match="emoji track needs --data-root"):
        run_experiment(grid, tmp_path / "nodata", progress=False)
    result = run_experiment(grid, tmp_path / "run", data_root=tmp_path / "cache", progress=False)
    assert result.n_runs == 1 and result.trained == 1
    assert (tmp_path / "run" / "data" / "main" / "zero_shot.json").is_file()


def test_a_split_without_queries_is_refused(built, tmp_path):
    cat, cfg, feats = built
    cat.queries, cat.kinds = cat.queries[:1], cat.kinds[:1]  # one query: two splits are empty
    with pytest.raises(InvalidInputError, match="holds no query"):
        build_dataset(cat, feats, tmp_path / "data", cfg)
    from fusionguard.training.tracks.emoji import zero_shot

    with pytest.raises(InvalidInputError, match="holds no query"):
        zero_shot(cat, feats, cfg)
