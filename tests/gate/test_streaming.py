"""The streamed gate equals the in-memory reference (load the data, `measure_model`) bit for bit."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fusionguard import metrics
from fusionguard import toymodels as tm
from fusionguard.dataset import load_dataset, write_dataset
from fusionguard.profile import build_profile, feature_summaries
from fusionguard.scorer import Scorer
from fusionguard.streaming import UnsortedDataError

from fusionguard.gate import checks
from fusionguard.gate.engine import EngineConfig
from fusionguard.gate.measures import measure_model, score_baseline
from fusionguard.gate.policy import load_policy
from fusionguard.gate.runner import run_gate
from fusionguard.gate.streaming import read_ids, stream_baseline, stream_measures

# batch_rows = 300 over 10 masks: chunks of 30 rows, re-cut at query ends (queries of 7-13 rows),
# so the stream has many batches and queries that straddle a chunk boundary.
POLICY = """
[data]
min_queries = 2
[bootstrap]
n_resamples = 400
[ablation]
n_permutations = 3
strategy = "{strategy}"
[scoring]
batch_rows = 300
"""


@pytest.fixture(scope="module")
def ragged(tmp_path_factory) -> Path:
    """40 queries of varying size (so chunk boundaries fall inside queries), string query ids
    not in file order."""
    root = tmp_path_factory.mktemp("ragged")
    parts = []
    rng = np.random.default_rng(5)
    for q in range(40):
        b = tm.make_toy_dataset(n_queries=1, n_candidates=int(rng.integers(7, 14)), seed=100 + q)
        parts.append((np.full(len(b), f"q{(q * 17) % 40:02d}", dtype=object), b))
    qid = np.concatenate([p[0] for p in parts])
    b0 = parts[0][1]
    return write_dataset(
        root / "eval.parquet", qid, np.concatenate([p[1].item_id for p in parts]),
        np.concatenate([p[1].label for p in parts]), {k: np.concatenate([p[1].feeds[k] for p in parts]) for k in b0.feeds},
    )


def _policy(tmp_path: Path, strategy: str):
    path = tmp_path / f"{strategy}.toml"
    path.write_text(POLICY.format(strategy=strategy))
    return path


def _reference(model: Path, baseline: Path, data: Path, policy):
    """The pre-streaming gate: everything loaded, every pass's per-row arrays kept."""
    cand, base = Scorer(model, device="cpu"), Scorer(baseline, device="cpu")
    batch = load_dataset(data, cand.contract)
    groups = metrics.QueryGroups.from_arrays(batch.query_id, batch.item_id, batch.label)
    m = measure_model(cand, batch, groups, policy)
    base_scores = score_baseline(base, batch, policy)
    return cand, base, batch, groups, m, base_scores


@pytest.mark.parametrize("strategy", ["permute", "zero", "mean"])
@pytest.mark.parametrize(("workers", "run_rows"), [(1, 8192), (2, 8192), (2, 25)])
def test_streamed_measures_equal_the_in_memory_ones(toys, ragged, tmp_path, monkeypatch, strategy, workers, run_rows):
    """run_rows = 25: each batch's masked copies are scored a few masks (and rows) per session.run."""
    import fusionguard.gate.partials

    monkeypatch.setattr(fusionguard.gate.partials, "RUN_ROWS", run_rows)
    policy = load_policy(_policy(tmp_path, strategy))
    cand, base, batch, groups, ref, ref_base = _reference(toys.fusion, toys.v1, ragged, policy)
    streamed = read_ids(ragged)
    m, features = stream_measures(cand, ragged, streamed, policy, engine=EngineConfig(workers=workers), features=True)
    base_scores = stream_baseline(base, ragged, streamed, policy, engine=EngineConfig(workers=workers))
    np.testing.assert_array_equal(streamed.groups.query_ids, groups.query_ids)
    for name in ("scores", "ndcg", "ndcg_visual_masked", "ndcg_text_masked", "visual_drop", "text_drop",
                 "phi_text", "phi_visual", "visual_share", "visual_share_per_query"):
        np.testing.assert_array_equal(getattr(m, name), getattr(ref, name), err_msg=name)  # NaN == NaN here
    np.testing.assert_array_equal(base_scores, ref_base)
    # Attention: reduced per query and per head, equal to the reductions of the (N, H) arrays.
    assert m.attention is not None and ref.attention_mass is not None
    np.testing.assert_array_equal(m.attention.mass_per_head, ref.attention_mass.mean(axis=0))
    np.testing.assert_array_equal(m.attention.entropy_per_head, ref.attention_entropy.mean(axis=0))
    ref_vectors = checks.attention_vectors(ref, groups)
    np.testing.assert_array_equal(m.attention.mass_per_query, ref_vectors["visual_mass"])
    np.testing.assert_array_equal(m.attention.entropy_per_query, ref_vectors["entropy"])
    # Every check's numbers and outcome, and the reference profile.
    for mm, bs, g in ((ref, ref_base, groups), (m, base_scores, streamed.groups)):
        ndcg_b = metrics.ndcg_at_k(g, bs, k=policy.metric.k, gain=policy.metric.gain)
        cis = checks.shared_intervals(mm, g, policy, bs, ndcg_b)
        got = [checks.visual_ablation_check(mm, policy, cis), checks.integrity_check(mm, bs, g, policy, cis),
               checks.quality_check(mm, ndcg_b, policy, cis), checks.attention_check(mm, g, policy, True, cis)]
        if mm is ref:
            expected = [c.to_dict() for c in got]
        else:
            assert [c.to_dict() for c in got] == expected
    unit = dict(requests=batch.query_id, shapley_strategy=policy.shapley.strategy, seed=policy.seed)
    ref_profile = build_profile("x", ref.visual_share, feature_summaries(batch.feeds), ref.attention_mass, **unit)
    got_profile = build_profile("x", m.visual_share, features, m.attention.mass_per_row, **unit)
    assert got_profile.to_json() == ref_profile.to_json()


def _gate_reports(toys, runs: dict, policy, tmp_path: Path) -> dict:
    """name -> (exit code, report.json, profile.json) of a gate run per (data, engine)."""
    out = {}
    for name, (data, engine) in runs.items():
        result = run_gate(toys.fusion, data, tmp_path / name, baseline=toys.v1, policy=policy, engine=engine)
        out[name] = (result.exit_code, json.loads((tmp_path / name / "report.json").read_text()),
                     (tmp_path / name / "profile.json").read_text())
    return out


def test_gate_report_identical_for_one_and_two_workers(toys, ragged, tmp_path):
    got = _gate_reports(toys, {"one": (ragged, EngineConfig(workers=1)), "two": (ragged, EngineConfig(workers=2))},
                        _policy(tmp_path, "permute"), tmp_path)
    assert got["one"][0] == got["two"][0]
    assert got["one"][1]["checks"] == got["two"][1]["checks"]
    assert got["one"][2] == got["two"][2]


def _interleaved(src: Path, dst: Path) -> Path:
    """The same rows with each query split in two runs: first halves of every query, then second halves."""
    b = load_dataset(src, inputs=["text_tokens", "visual_tokens", "query"])
    _, first_row, inverse = np.unique(b.query_id, return_index=True, return_inverse=True)
    position = np.arange(len(b)) - first_row[inverse]
    sizes = np.bincount(inverse)
    second = position >= sizes[inverse] // 2
    order = np.concatenate([np.flatnonzero(~second), np.flatnonzero(second)])
    return write_dataset(dst, b.query_id[order], b.item_id[order], b.label[order], {k: v[order] for k, v in b.feeds.items()})


def test_unsorted_eval_set_is_refused_with_exit_2(toys, tmp_path):
    unsorted = _interleaved(toys.data, tmp_path / "unsorted.parquet")
    result = run_gate(toys.fusion, unsorted, tmp_path / "out", baseline=toys.v1, policy=toys.policy)
    assert result.exit_code == 2
    data = next(c for c in result.checks if c.name == "data")
    assert data.outcome == "error" and "fusionguard data group" in data.reasons[0]
    assert all(c.outcome == "skipped" for c in result.checks[2:])


def test_streaming_refuses_a_query_split_over_the_file(toys, tmp_path):
    """Even without the pre-check, the stream itself never mixes a split query into two batches."""
    unsorted = _interleaved(toys.data, tmp_path / "unsorted.parquet")
    policy = load_policy(toys.policy)
    cand = Scorer(toys.fusion, device="cpu")
    with pytest.raises(UnsortedDataError):
        stream_measures(cand, unsorted, read_ids(unsorted), policy)


def test_streamed_eval_equals_the_in_memory_measures(toys, ragged, tmp_path):
    from fusionguard.gate.evaluation import evaluate, write_eval

    policy = load_policy(_policy(tmp_path, "permute"))
    result = evaluate([toys.fusion, toys.blind], ragged, baseline=toys.v1, policy=policy, engine=EngineConfig(workers=2))
    write_eval(result, tmp_path / "eval")
    base = Scorer(toys.v1, device="cpu")
    for model in (toys.fusion, toys.blind):
        cand, _, batch, groups, ref, _ = _reference(model, toys.v1, ragged, policy)
        frame = result.per_query[result.per_query["model"] == model.stem]
        np.testing.assert_array_equal(frame["query_id"].to_numpy(), groups.query_ids.astype(str))
        for column, expected in (("ndcg", ref.ndcg), ("visual_drop", ref.visual_drop), ("text_drop", ref.text_drop),
                                 ("visual_share", ref.visual_share_per_query)):
            np.testing.assert_array_equal(frame[column].to_numpy(), expected, err_msg=column)
        vectors = checks.attention_vectors(ref, groups)
        np.testing.assert_array_equal(frame["attention_mass"].to_numpy(), vectors["visual_mass"])
        base_scores = score_baseline(base, batch, policy)
        np.testing.assert_array_equal(frame["spearman_vs_baseline"].to_numpy(),
                                      metrics.spearman_per_query(groups, ref.scores, base_scores))


def test_eval_refuses_an_unsorted_eval_set(toys, tmp_path):
    from fusionguard.gate.evaluation import evaluate

    unsorted = _interleaved(toys.data, tmp_path / "unsorted.parquet")
    with pytest.raises(UnsortedDataError) as info:
        evaluate([toys.fusion], unsorted, policy=toys.policy)
    assert info.value.exit_code == 2


def test_engine_options_are_checked_before_anything_runs(toys, tmp_path, monkeypatch):
    import importlib.util

    from fusionguard.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="engine 'spark' is unknown"):
        EngineConfig("spark")
    with pytest.raises(InvalidInputError, match="--ray-address needs --engine ray"):
        EngineConfig(ray_address="auto")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    with pytest.raises(InvalidInputError, match="needs Ray"):
        run_gate(toys.fusion, toys.data, tmp_path / "out", baseline=toys.v1, policy=toys.policy, engine=EngineConfig("ray"))
    assert not (tmp_path / "out").exists()


def test_rows_out_of_file_order_are_refused(toys, ragged, tmp_path):
    """The order guard: partials that cover every query but not in the file's row order fail closed."""
    from fusionguard.errors import EvaluationError

    from fusionguard.gate.streaming import _FileOrder

    streamed = read_ids(ragged)
    batch = load_dataset(ragged, inputs=[])
    order = _FileOrder(streamed.groups)
    assert order.check(batch.query_id[:50], batch.item_id[:50]) == slice(0, 50)
    assert order.check(batch.query_id[50:], batch.item_id[50:]) == slice(50, len(batch))
    swapped = np.r_[50:len(batch), 0:50]
    with pytest.raises(EvaluationError, match="another order"):
        _FileOrder(streamed.groups).check(batch.query_id[swapped], batch.item_id[swapped])


def test_actor_spans_give_the_local_partials(toys, ragged, tmp_path):
    """The Ray engine's read task and actor code without Ray (fast): spans read as Arrow blocks
    and cut at the planned batch ends reduce to the local engine's partials, batch for batch."""
    import pickle

    import pyarrow as pa
    import pyarrow.parquet as pq

    from fusionguard.errors import InvalidInputError

    from fusionguard.source import ParquetSource
    from fusionguard.streaming import batch_ends

    from fusionguard.raydata import read_span

    from fusionguard.gate.engine_ray import SpanReducer, plan_spans
    from fusionguard.gate.measures import plan_passes
    from fusionguard.gate.streaming import _run_partials, chunk_rows

    policy = load_policy(_policy(tmp_path, "permute"))
    plan = plan_passes(policy)
    small_groups = tmp_path / "rg.parquet"
    pq.write_table(pq.read_table(ragged), small_groups, row_group_size=17)
    cand = Scorer(toys.fusion, device="cpu")
    local = list(_run_partials(cand, small_groups, plan.masks, plan, policy, EngineConfig(workers=1), True, False))
    source = ParquetSource.open(small_groups)
    ids = np.concatenate([b.query_id for b in source.ids()])
    ends = batch_ends(ids, chunk_rows(policy, plan.masks), small_groups)
    spans = plan_spans(ends, 50)
    assert len(spans) > 3
    columns = ["query_id", "item_id", "label", *cand.contract.input_names]
    reducer = SpanReducer(toys.fusion.read_bytes(), cand.contract, "cpu", spans, plan.masks, plan, policy, True, None,
                          str(small_groups))
    remote = []
    for i, (start, e) in enumerate(spans):
        (block,) = read_span(source, i, start, int(e[-1]), columns)
        out = reducer(block)
        assert out.column("span").to_pylist() == [i] and out.column("rows").to_pylist() == [int(e[-1]) - start]
        remote += pickle.loads(out.column("results")[0].as_py())
    assert len(remote) == len(local)
    for a, b in zip(local, remote):
        for name in ("query_id", "item_id", "ndcg", "score", "phi_text", "share", "mass_rows"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
        for name in a.features:
            np.testing.assert_array_equal(a.features[name], b.features[name])
    # A block that is not exactly one whole span is refused, not scored in part.
    (block,) = read_span(source, 1, spans[1][0], int(spans[1][1][-1]), columns)
    with pytest.raises(InvalidInputError, match="not one span|of span 1"):
        reducer(block.slice(0, block.num_rows - 1))
    with pytest.raises(InvalidInputError, match="not one span"):
        reducer(pa.concat_tables([block, *read_span(source, 2, spans[2][0], int(spans[2][1][-1]), columns)]))


def test_gate_on_a_directory_of_files_equals_the_gate_on_the_file(toys, ragged, tmp_path):
    """--data DIR: the files read in path order as one eval set (the local engine, the data
    check and the grouping check alike); the reports equal those of the concatenated file,
    the dataset hash aside."""
    import pyarrow.parquet as pq

    table = pq.read_table(ragged)
    folder = tmp_path / "parts"
    folder.mkdir()
    for i, (a, z) in enumerate([(0, 61), (61, 200), (200, table.num_rows)]):  # cuts inside queries
        pq.write_table(table.slice(a, z - a), folder / f"part-{i}.parquet", row_group_size=23)
    got = _gate_reports(toys, {"one": (ragged, EngineConfig(workers=2)), "many": (folder, EngineConfig(workers=2))},
                        _policy(tmp_path, "mean"), tmp_path)
    assert got["many"][0] == got["one"][0]
    r1, r2 = got["one"][1], got["many"][1]
    assert r1["checks"] == r2["checks"]
    assert r2["data"]["sha256"] != r1["data"]["sha256"] and r2["data"]["n_rows"] == r1["data"]["n_rows"]


def test_gate_and_eval_read_a_uri_like_the_path(toys, ragged, tmp_path):
    """--data file:///...: the URI stays a string (Path would fold its //) and is read through
    pyarrow's filesystem by the data check, the dataset hash and the local engine; the reports
    equal the plain path's, the hash included (one file: the hash of its bytes)."""
    uri = ragged.resolve().as_uri()
    assert uri.startswith("file:///")
    got = _gate_reports(toys, {"path": (ragged, EngineConfig(workers=2)), "uri": (uri, EngineConfig(workers=2))},
                        _policy(tmp_path, "permute"), tmp_path)
    assert got["uri"][0] == got["path"][0]
    r_path, r_uri = got["path"][1], got["uri"][1]
    assert r_uri["checks"] == r_path["checks"]
    assert r_uri["data"]["sha256"] == r_path["data"]["sha256"] and r_uri["data"]["path"] == uri
    assert got["uri"][2] == got["path"][2]
    missing = run_gate(toys.fusion, "file:///nonexistent/eval.parquet", tmp_path / "missing", baseline=toys.v1,
                       policy=_policy(tmp_path, "permute"))
    assert missing.exit_code == 2 and "does not exist" in json.dumps(
        json.loads((tmp_path / "missing" / "report.json").read_text())["checks"])


def test_the_cli_keeps_a_uri_and_still_checks_a_local_path(toys, ragged, tmp_path):
    from click.testing import CliRunner

    from fusionguard.cli import cli

    uri = ragged.resolve().as_uri()
    runner = CliRunner()
    ok = runner.invoke(cli, ["eval", "--models", str(toys.fusion), "--baseline", str(toys.v1), "--data", uri,
                              "--policy", str(_policy(tmp_path, "permute")), "--out", str(tmp_path / "e")])
    assert ok.exit_code == 0, ok.output
    bad = runner.invoke(cli, ["eval", "--models", str(toys.fusion), "--data", str(tmp_path / "nope.parquet"),
                               "--out", str(tmp_path / "e2")])
    assert bad.exit_code == 2 and "does not exist" in bad.output
