"""Trained rows against the zero-shot rows, on a hand-made run folder."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fusionguard.errors import InvalidInputError
from tests.training.test_flickr import CFG, _write_split
from fusionguard.training.flickr import import_flickr
from fusionguard.recipes.compare import compare, zero_shot_per_query


@pytest.fixture()
def run_dir(tmp_path):
    rng = np.random.default_rng(3)
    for s in ("val", "test"):
        _write_split(tmp_path / "flickr" / s, 20, rng)
    run = tmp_path / "run"
    import_flickr(tmp_path / "flickr", run / "data" / "main", CFG)
    return run


def _write_run(run, per_query):
    entries = [{"label": "baseline", "group": "main", "value": None, "variant": "baseline", "seed": 0,
                "dataset": "main", "model": "123456789012"}]  # an all-digit id, read as a string
    (run / "manifest.json").write_text(json.dumps({"entries": entries}))
    (run / "eval" / "main-s0").mkdir(parents=True)
    rows = ["model,query_id,ndcg"] + [f"123456789012,{q},{v}" for q, v in per_query.items()]
    (run / "eval" / "main-s0" / "per_query.csv").write_text("\n".join(rows) + "\n")


def test_a_trained_row_is_paired_with_zero_shot_text(run_dir):
    zero = zero_shot_per_query(run_dir / "data" / "main")
    assert list(zero.columns) == ["zero-shot text", "zero-shot visual", "zero-shot sum"]
    trained = (zero["zero-shot text"] - 0.1).clip(lower=0)  # a row that is never better than text
    _write_run(run_dir, trained.to_dict())
    frame = compare(run_dir, n_resamples=2000).set_index("row")
    assert frame.loc["baseline", "ndcg@10"] == pytest.approx(trained.mean())
    assert frame.loc["baseline", "vs_text_mean_diff"] == pytest.approx(trained.mean() - zero["zero-shot text"].mean())
    assert frame.loc["baseline", "vs_text_p_value"] < 0.01
    assert (run_dir / "tables" / "zero_shot.csv").is_file()


def test_missing_queries_are_refused(run_dir):
    zero = zero_shot_per_query(run_dir / "data" / "main")
    _write_run(run_dir, zero["zero-shot text"].iloc[:-3].to_dict())
    with pytest.raises(InvalidInputError, match="shared with the trained rows"):
        compare(run_dir, n_resamples=100)
