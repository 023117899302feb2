"""Replay of logged traffic: same code path, same metrics, to a file or a Pushgateway."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import numpy as np
import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from fusionguard.cli import cli
from fusionguard.dataset import Batch, write_dataset
from fusionguard.monitor.replay import ReplayConfig, iter_requests, replay
from fusionguard.monitor.service import Sampler, ServiceConfig
from tests.monitor.test_app import reference_visual_share


def samples(text: str) -> dict:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


@pytest.fixture
def traffic(toy, tmp_path):
    return write_dataset(tmp_path / "traffic.parquet", toy.query_id, toy.item_id, toy.label, toy.feeds)


def test_iter_requests_joins_queries_across_batches():
    qid = np.array(["a", "a", "b", "b", "b", "c", "a"], dtype=object)
    whole = Batch(qid, np.arange(7), np.zeros(7, np.int64), {"x": np.arange(7.0)[:, None]})
    parts = [Batch(qid[i:j], whole.item_id[i:j], whole.label[i:j], {"x": whole.feeds["x"][i:j]}) for i, j in [(0, 3), (3, 4), (4, 7)]]
    got = [(list(r.query_id), r.feeds["x"].ravel().tolist()) for r in iter_requests(iter(parts))]
    assert got == [(["a", "a"], [0.0, 1.0]), (["b", "b", "b"], [2.0, 3.0, 4.0]), (["c"], [5.0]), (["a"], [6.0])]


def test_replay_to_file_matches_what_was_sent(models, toy, traffic, tmp_path):
    out = tmp_path / "metrics.prom"
    result = replay(ReplayConfig(traffic, ServiceConfig(model=models["fusion_w0.3"], telemetry_share=1.0, device="cpu"), out=out))
    assert (result.requests, result.rows, result.invalid, result.telemetry) == (12, 72, 0, 12)
    m = samples(out.read_text())
    version = result and next(k for k in m if k[0] == "fusionguard_model_info")[1]
    version = dict(version)["version"]
    assert m[("fusionguard_requests_total", (("model", "ranker"), ("outcome", "ok")))] == 12
    assert m[("fusionguard_batch_size_sum", (("model", "ranker"),))] == 72
    share_sum = m[("fusionguard_modality_share_sum", (("modality", "visual"), ("model", "ranker"), ("version", version)))]
    expected = sum(reference_visual_share(models["fusion_w0.3"], {k: v[6 * q : 6 * q + 6] for k, v in toy.feeds.items()}) for q in range(12))
    assert share_sum == pytest.approx(expected, rel=1e-4)


def test_replay_pushes_to_a_pushgateway(models, traffic):
    received = {}

    class Handler(BaseHTTPRequestHandler):
        def do_PUT(self):  # noqa: N802 - http.server's naming
            received["path"] = self.path
            received["body"] = self.rfile.read(int(self.headers["Content-Length"])).decode()
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.handle_request, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        config = ServiceConfig(model=models["fusion"], telemetry_share=0.5, telemetry_seed=11, device="cpu")
        result = replay(ReplayConfig(traffic, config, pushgateway=url, job="replay_test"))
        thread.join(10)
    finally:
        server.server_close()
    sampler = Sampler(0.5, seed=11)
    expected = sum(sampler() for _ in range(12))  # the seeded draws of the 12 requests, in order
    assert result.telemetry == expected
    assert received["path"] == "/metrics/job/replay_test"
    m = samples(received["body"])
    assert m[("fusionguard_telemetry_requests_total", (("model", "ranker"),))] == expected


def test_replay_with_a_telemetry_seed_is_reproducible(models, traffic, tmp_path):
    def run(seed: int, name: str) -> dict:
        out = tmp_path / name
        config = ServiceConfig(model=models["fusion"], telemetry_share=0.5, telemetry_seed=seed, device="cpu")
        replay(ReplayConfig(traffic, config, out=out))
        m = samples(out.read_text())
        return {k: v for k, v in m.items() if "duration" not in k[0] and "created" not in k[0]}

    first, again = run(5, "a.prom"), run(5, "b.prom")
    assert first == again  # same seed: the same requests sampled, the same telemetry
    share_count = [k for k in first if k[0] == "fusionguard_modality_share_count"]
    assert share_count and 0 < first[share_count[0]] < 12


def test_cli_replay_and_bad_usage(models, traffic, tmp_path):
    runner = CliRunner()
    out = tmp_path / "m.prom"
    r = runner.invoke(cli, ["monitor", "replay", "--model", str(models["fusion"]), "--data", str(traffic), "--out", str(out), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert "replayed 12 requests" in r.output and out.is_file()
    seeded = tmp_path / "seeded.prom"
    r = runner.invoke(cli, ["monitor", "replay", "--model", str(models["fusion"]), "--data", str(traffic), "--out", str(seeded),
                            "--device", "cpu", "--telemetry-share", "0.5", "--telemetry-seed", "3"])
    assert r.exit_code == 0, r.output
    sampler = Sampler(0.5, seed=3)
    assert f"{sum(sampler() for _ in range(12))} with telemetry" in r.output
    r = runner.invoke(cli, ["monitor", "replay", "--model", str(models["fusion"]), "--data", str(traffic), "--out", str(seeded),
                            "--telemetry-seed", "-1"])
    assert r.exit_code == 2 and "--telemetry-seed" in r.output
    r = runner.invoke(cli, ["monitor", "replay", "--data", str(traffic), "--out", str(out)])
    assert r.exit_code == 2 and "exactly one of --model FILE or --registry DIR" in r.output
    r = runner.invoke(cli, ["monitor", "serve", "--model", str(models["fusion"]), "--telemetry-share", "2"])
    assert r.exit_code == 2 and "--telemetry-share must be in [0, 1]" in r.output
    r = runner.invoke(cli, ["monitor", "serve", "--model", str(tmp_path / "missing.onnx")])
    assert r.exit_code == 2 and "does not exist" in r.output


def test_replay_counts_invalid_requests(models, toy, tmp_path):
    feeds = {k: v.copy() for k, v in toy.feeds.items()}
    feeds["visual_tokens"][7, 1, 2] = np.nan  # row 7 belongs to the second query
    path = write_dataset(tmp_path / "bad.parquet", toy.query_id, toy.item_id, toy.label, feeds)
    out = tmp_path / "m.prom"
    result = replay(ReplayConfig(path, ServiceConfig(model=models["fusion"], device="cpu"), out=out))
    assert (result.requests, result.invalid) == (12, 1)
    m = samples(out.read_text())
    assert m[("fusionguard_invalid_requests_total", (("model", "ranker"), ("reason", "non_finite")))] == 1
    assert m[("fusionguard_requests_total", (("model", "ranker"), ("outcome", "ok")))] == 11


def test_replay_workers_need_the_ray_engine(models, traffic, tmp_path):
    r = CliRunner().invoke(cli, ["monitor", "replay", "--model", str(models["fusion"]), "--data", str(traffic),
                                 "--out", str(tmp_path / "m.prom"), "--workers", "2"])
    assert r.exit_code == 2 and "--workers is the Ray engine's actor count" in r.output


@pytest.mark.slow
def test_ray_replay_exports_the_local_metrics(models, toy, tmp_path, monkeypatch):
    """Same requests, telemetry draws, shares, shadow correlations and invalid counts; only the
    timing histograms differ. Several chunks over two actors, with an invalid request among them."""
    ray = pytest.importorskip("ray")
    import fusionguard.monitor.replay_ray

    from fusionguard.engine import EngineConfig

    monkeypatch.setattr(fusionguard.monitor.replay_ray, "CHUNK_ROWS", 10)
    feeds = {k: v.copy() for k, v in toy.feeds.items()}
    feeds["visual_tokens"][7, 1, 2] = np.nan  # row 7 belongs to the second query
    path = write_dataset(tmp_path / "bad.parquet", toy.query_id, toy.item_id, toy.label, feeds)
    service = ServiceConfig(model=models["fusion_w0.3"], shadow=models["text"], telemetry_share=0.5, telemetry_seed=4,
                            device="cpu")

    def run(engine: EngineConfig, name: str) -> tuple:
        result = replay(ReplayConfig(path, service, out=tmp_path / name, engine=engine))
        m = samples((tmp_path / name).read_text())
        timing = ("duration", "created")
        return (result.requests, result.rows, result.invalid, result.telemetry), {
            k: v for k, v in m.items() if not any(t in k[0] for t in timing)}

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        remote = run(EngineConfig("ray", workers=2), "ray.prom")
    finally:
        ray.shutdown()
    local = run(EngineConfig(), "local.prom")
    assert local[0] == remote[0] and local[0][2] == 1
    assert local[1] == remote[1]
    assert any(k[0] == "fusionguard_shadow_spearman_per_request_count" for k in local[1])


def test_replay_reads_a_directory_or_a_uri_like_the_file(models, toy, traffic, tmp_path):
    """--data DIR or a URI (fusionguard/source.py): the same requests, telemetry draws and values
    as the file; only the timing histograms differ. The directory's files cut through queries,
    and the read size (7 rows) splits them further: requests are whole queries all the same."""
    import pyarrow.parquet as pq

    table = pq.read_table(traffic)
    folder = tmp_path / "parts"
    folder.mkdir()
    for i, (a, z) in enumerate([(0, 5), (5, 13), (13, table.num_rows)]):
        pq.write_table(table.slice(a, z - a), folder / f"part-{i}.parquet")
    service = ServiceConfig(model=models["fusion"], telemetry_share=0.5, telemetry_seed=3, device="cpu")

    def run(data, name: str) -> tuple:
        result = replay(ReplayConfig(data, service, out=tmp_path / name, batch_rows=7))
        m = samples((tmp_path / name).read_text())
        return (result.requests, result.rows, result.telemetry), {
            k: v for k, v in m.items() if "duration" not in k[0] and "created" not in k[0]}

    file_run = run(traffic, "file.prom")
    assert file_run[0][0] == len(np.unique(toy.query_id)) and file_run[0][2] > 0
    assert run(folder, "dir.prom") == file_run
    assert run(traffic.resolve().as_uri(), "uri.prom") == file_run
