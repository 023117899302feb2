"""The monitor and a real Prometheus server on loopback, with the committed alert rules.

The test serves an honest fusion model from a registry and replays whole queries drawn at random
from the eval set its reference profile was built from (with some invalid requests), then the same
queries with visual tokens x 2, then promotes and hot-reloads a model that ignores its visual
input, and shows through the Prometheus HTTP API that
  * in-distribution replay leaves FusionGuardModalityDrift inactive (every feature's PSI under the
    threshold over two full drift windows, the alert never pending), and the shifted traffic
    makes it active,
  * every dashboard panel query returns data,
  * every alert's quantity (the left side of `quantity op threshold`) returns data,
  * the collapse, drift and invalid-request alert expressions are true after the swap, and
  * FusionGuardVisualContributionCollapsed is pending or firing for the new version.

The rule file is used exactly as committed (its `for:` windows are 5-30 minutes, so alerts are
*pending* within the test; promtool's unit tests cover firing). Only the Prometheus
configuration is the test's own: scrape and rule evaluation every second, one loopback target.
Every process started is terminated and waited for by fixture finalizers.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from fusionguard.monitor.drift import DEFAULT_WINDOW
from tests.deploy._deploy import ALERT_SHAPE, DASHBOARD, RULES_FILE, alert_rules, dashboard_targets, require_tool

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

MODEL_NAME = "ranker"
N_CANDIDATES = 10  # rows per request
EVAL_QUERIES = 200  # queries of the eval set the reference profile is built from
DRIFT_WINDOW = DEFAULT_WINDOW  # requests per drift window, the monitor's default
PANEL_SUBSTITUTIONS = {"$__rate_interval": "1m", "$model": ".*"}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(what: str, check: Callable[[], object], timeout: float, logs: Path | None = None) -> object:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except (httpx.HTTPError, OSError) as err:  # not up yet
            last = err
        time.sleep(0.25)
    tail = logs.read_text(errors="replace")[-3000:] if logs is not None and logs.exists() else ""
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what} (last error: {last})\n{tail}")


def _start(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    handle = log.open("wb")
    try:
        return subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    finally:
        handle.close()  # the child holds its own descriptor


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


# ----- models, registry and traffic -----------------------------------------------------------

def _promote(registry, model: Path, report_dir: Path, variant: str, profile_json: str):  # noqa: ANN001, ANN202
    """Promote `model` on a stand-in for a passing `fusionguard gate` run.

    The point of this test is a collapsed model that reached production anyway; the gate's own
    tests cover the gate (and `promote`'s re-validation of its report, which is bypassed here).
    The healthy model's reference profile is installed next to every version, so drift compares
    the collapsed model against it.
    """
    from fusionguard.registry import model_manifest

    report_dir.mkdir(parents=True)
    files = model_manifest(model)
    candidate = {"path": str(model), "sha256": files["model.onnx"], "files": files, "variant": variant}
    report = {"outcome": "passed", "exit_code": 0, "candidate": candidate, "checks": [{"name": "stand-in", "outcome": "passed"}]}
    (report_dir / "report.json").write_text(json.dumps(report))
    from fusionguard.gate.promotion import read_verdict

    info = registry.promote(model, read_verdict(report_dir, verify_report=lambda report, source: None, environ={}))
    (info.path / "profile.json").write_text(profile_json)
    return info


def _profile_json(model: Path, data) -> str:  # noqa: ANN001 - a toymodels Batch
    """The gate's reference profile of `model` on `data` (visual share, attention mass, features),
    one unit per query, built like the gate's (`fusionguard.masking`, `fusionguard.profile`)."""
    from fusionguard.masking import shapley_passes
    from fusionguard.metrics import attention_mass
    from fusionguard.profile import build_profile, feature_summaries
    from fusionguard.registry import file_sha256
    from fusionguard.scorer import Scorer

    scorer = Scorer(model, device="cpu", threads=1)
    passes = shapley_passes("zero")
    outputs = dict(zip(passes.masks, scorer.run(data.feeds, passes.masks)))
    _, _, share = passes.values({m: o.score for m, o in outputs.items()})
    mass = attention_mass(outputs[passes.full].attention, scorer.contract.attention_keys["visual"])
    profile = build_profile(
        file_sha256(model), share, feature_summaries(data.feeds), mass, requests=data.query_id, shapley_strategy="zero"
    )
    return profile.to_json()


def _infer_body(feeds: dict[str, np.ndarray]) -> dict:
    return {
        "inputs": [
            {"name": name, "shape": list(arr.shape), "datatype": "FP32", "data": arr.ravel().tolist()}
            for name, arr in feeds.items()
        ]
    }


class Traffic:
    """Replays whole queries drawn at random (seeded) from the eval set, one query's candidates per
    request, and every `invalid_every`-th request a bad one. `shift` transforms a request's
    tensors (shifted traffic)."""

    def __init__(self, base: str, feeds: dict[str, np.ndarray], invalid_every: int = 5, seed: int = 0) -> None:
        self.client = httpx.Client(base_url=base, timeout=30)
        self.feeds = feeds
        self.invalid_every = invalid_every
        self.n_queries = len(next(iter(feeds.values()))) // N_CANDIDATES
        self.rng = np.random.default_rng(seed)
        self.sent = 0
        self.statuses: dict[int, int] = {}

    def run(self, n_valid: int, shift: Callable[[dict], dict] | None = None) -> None:
        """Send `n_valid` valid requests (and the invalid ones in between)."""
        url = f"/v2/models/{MODEL_NAME}/infer"
        valid = 0
        while valid < n_valid:
            q = int(self.rng.integers(self.n_queries))
            rows = slice(q * N_CANDIDATES, (q + 1) * N_CANDIDATES)
            request = {name: arr[rows] for name, arr in self.feeds.items()}
            body = _infer_body(shift(request) if shift is not None else request)
            bad = self.sent % self.invalid_every == self.invalid_every - 1
            if bad:
                body["inputs"][0]["shape"] = [N_CANDIDATES, 3]  # wrong shape: counted as invalid
            status = self.client.post(url, json=body).status_code
            self.statuses[status] = self.statuses.get(status, 0) + 1
            self.sent += 1
            valid += not bad

    def close(self) -> None:
        self.client.close()


def _visual_scaled_x2(request: dict) -> dict:
    return {**request, "visual_tokens": request["visual_tokens"] * np.float32(2.0)}


# ----- fixtures ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    require_tool("prometheus")
    cli = ROOT_CLI
    if not (Path(__file__).resolve().parents[2] / "monitor" / "cli.py").is_file():
        pytest.fail("monitor/cli.py does not exist: `fusionguard monitor serve` is the interface under test")
    from fusionguard import toymodels
    from fusionguard.registry import Registry

    tmp = tmp_path_factory.mktemp("prometheus-integration")
    fusion = toymodels.save(toymodels.build_fusion_model(visual_weight=1.0), tmp / "fusion.onnx")
    blind = toymodels.save(toymodels.build_visual_blind_model(), tmp / "blind.onnx")
    v1 = toymodels.save(toymodels.build_text_model(), tmp / "v1.onnx")
    data = toymodels.make_toy_dataset(n_queries=EVAL_QUERIES, n_candidates=N_CANDIDATES, seed=1)
    feeds = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in data.feeds.items()}
    profile = _profile_json(fusion, data)  # the healthy model's reference, kept for both versions

    registry = Registry(tmp / "registry")
    _promote(registry, fusion, tmp / "gate-fusion", "toy-fusion", profile)

    monitor_port, prom_port = _free_port(), _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    monitor_log = tmp / "monitor.log"
    monitor = _start(
        [*cli, "monitor", "serve", "--registry", str(registry.root), "--name", MODEL_NAME, "--shadow", str(v1),
         "--telemetry-share", "1.0", "--device", "cpu", "--threads", "1",
         "--host", "127.0.0.1", "--port", str(monitor_port)],
        monitor_log, env,
    )
    procs = [monitor]
    try:
        base = f"http://127.0.0.1:{monitor_port}"

        def monitor_ready() -> bool:
            if monitor.poll() is not None:
                pytest.fail(f"monitor exited with {monitor.returncode}:\n{monitor_log.read_text(errors='replace')[-3000:]}")
            return httpx.get(base + "/v2/health/ready", timeout=2).status_code == 200

        _wait_for("the monitor to be ready", monitor_ready, 60, monitor_log)

        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
            "rule_files": [str(RULES_FILE)],  # the committed rules, unchanged
            "scrape_configs": [
                {"job_name": "fusionguard-monitor", "static_configs": [{"targets": [f"127.0.0.1:{monitor_port}"]}]}
            ],
        }
        config_file = tmp / "prometheus.yml"
        config_file.write_text(yaml.safe_dump(config))
        prom_log = tmp / "prometheus.log"
        prom = _start(
            [require_tool("prometheus"), f"--config.file={config_file}", f"--storage.tsdb.path={tmp / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{prom_port}"],
            prom_log,
        )
        procs.append(prom)
        prom_base = f"http://127.0.0.1:{prom_port}"
        _wait_for("Prometheus to be ready", lambda: httpx.get(prom_base + "/-/ready", timeout=2).status_code == 200, 60, prom_log)
        # Prometheus applies new scrape targets on a 5 s tick: wait for the first scrape, or the
        # first phase of traffic would fall before it and v0001's counters would never move.
        _wait_for("the first scrape of the monitor", lambda: _query(prom_base, 'up{job="fusionguard-monitor"} == 1'), 30, prom_log)

        traffic = Traffic(base, feeds)
        phases: dict[str, tuple[float, float]] = {}  # phase -> (start, end) Unix time

        def phase(name: str, n_valid: int, shift: Callable[[dict], dict] | None = None) -> None:
            start = time.time()
            traffic.run(n_valid, shift)
            time.sleep(3.0)  # two scrapes and rule evaluations of the last published values
            phases[name] = (start, time.time())

        try:
            # The honest fusion model, version v0001, on whole queries of its own eval set: two
            # drift windows' worth of requests, then the same queries with visual tokens x 2.
            phase("in_distribution", 2 * DRIFT_WINDOW)
            phase("shifted", DRIFT_WINDOW // 2, _visual_scaled_x2)
            _promote(registry, blind, tmp / "gate-blind", "toy-visual-blind", profile)
            reloaded = httpx.post(f"{base}/v2/repository/models/{MODEL_NAME}/load", timeout=60)
            assert reloaded.status_code == 200, reloaded.text
            assert reloaded.json()["version"] == "v0002"
            # The model that ignores its visual input, version v0002: a full window (the reload
            # started fresh drift windows) of in-distribution requests.
            phase("collapsed", DRIFT_WINDOW + DRIFT_WINDOW // 4)
        finally:
            traffic.close()
        yield {"prom": prom_base, "monitor": base, "traffic": traffic, "phases": phases, "logs": (monitor_log, prom_log)}
    finally:
        for proc in reversed(procs):
            _stop(proc)


def _root_cli() -> list[str]:
    script = Path(sys.executable).with_name("fusionguard")
    return [str(script)] if script.is_file() else [sys.executable, "-c", "from fusionguard.cli import main; main()"]


ROOT_CLI = _root_cli()


def _query(prom: str, expr: str) -> list[dict]:
    answer = httpx.get(prom + "/api/v1/query", params={"query": expr}, timeout=10).json()
    assert answer["status"] == "success", f"{expr}: {answer}"
    return answer["data"]["result"]


def _eventually(prom: str, expr: str, timeout: float = 20.0) -> list[dict]:
    """The query's result once it is non-empty (rates need two scrapes, recording rules one evaluation)."""
    return _wait_for(f"data for {expr}", lambda: _query(prom, expr), timeout)


# ----- tests -------------------------------------------------------------------------------------

def test_traffic_was_served_and_rejected_as_intended(stack: dict) -> None:
    statuses = stack["traffic"].statuses
    assert statuses.get(200, 0) >= 20 and statuses.get(400, 0) >= 4, statuses
    assert set(statuses) <= {200, 400}, statuses


def test_prometheus_scrapes_the_monitor(stack: dict) -> None:
    (up,) = _eventually(stack["prom"], 'up{job="fusionguard-monitor"}')
    assert up["value"][1] == "1"
    versions = {s["metric"]["version"] for s in _eventually(stack["prom"], "fusionguard_model_info")}
    assert "v0002" in versions


def test_every_dashboard_panel_query_returns_data(stack: dict) -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    empty = []
    for title, target in dashboard_targets(dashboard):
        expr = target["expr"]
        for variable, value in PANEL_SUBSTITUTIONS.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, f"{title}: unsubstituted variable in {expr}"
        try:
            _eventually(stack["prom"], expr, timeout=15)
        except pytest.fail.Exception:
            empty.append(f"{title}: {expr}")
    assert not empty, "panels without data:\n" + "\n".join(empty)


def test_every_alert_quantity_returns_data(stack: dict) -> None:
    empty = []
    for rule in alert_rules():
        quantity = ALERT_SHAPE.match(rule["expr"])["quantity"]
        try:
            _eventually(stack["prom"], quantity, timeout=15)
        except pytest.fail.Exception:
            empty.append(f"{rule['alert']}: {quantity}")
    assert not empty, "alert quantities without data:\n" + "\n".join(empty)


def test_collapse_drift_and_invalid_alert_expressions_hold_after_the_swap(stack: dict) -> None:
    rules = {rule["alert"]: rule["expr"] for rule in alert_rules()}
    prom = stack["prom"]
    collapsed = _eventually(prom, rules["FusionGuardVisualContributionCollapsed"])
    assert {s["metric"]["version"] for s in collapsed} == {"v0002"}  # v0001 used its visual input
    assert float(collapsed[0]["value"][1]) < 0.10
    healthy = _query(prom, 'model_version_modality:fusionguard_modality_share:mean5m{modality="visual",version="v0001"}')
    assert healthy and float(healthy[0]["value"][1]) >= 0.10
    drifted = {s["metric"]["feature"] for s in _eventually(prom, rules["FusionGuardModalityDrift"])}
    assert "visual_share" in drifted
    (invalid,) = _eventually(prom, rules["FusionGuardInvalidRequestRate"])
    assert invalid["metric"]["model"] == MODEL_NAME


def test_collapse_alert_becomes_pending_or_firing(stack: dict) -> None:
    def collapse_alert() -> dict | None:
        alerts = httpx.get(stack["prom"] + "/api/v1/alerts", timeout=10).json()["data"]["alerts"]
        return next(
            (a for a in alerts if a["labels"]["alertname"] == "FusionGuardVisualContributionCollapsed"
             and a["labels"].get("version") == "v0002"),
            None,
        )

    alert = _wait_for("FusionGuardVisualContributionCollapsed to be pending or firing", collapse_alert, 20)
    assert alert["state"] in {"pending", "firing"}
    assert alert["labels"]["severity"] == "critical" and alert["labels"]["model"] == MODEL_NAME
    # The description carries the live value, rendered by Prometheus.
    value = float(alert["value"])
    assert value < 0.10
    assert f"{value:.4f}" in alert["annotations"]["description"]
    assert alert["annotations"]["runbook_url"] == "docs/runbooks.md#fusionguardvisualcontributioncollapsed"


def _at(prom: str, expr: str, at: float) -> list[dict]:
    """An instant query evaluated at Unix time `at`."""
    answer = httpx.get(prom + "/api/v1/query", params={"query": expr, "time": f"{at:.3f}"}, timeout=10).json()
    assert answer["status"] == "success", f"{expr}: {answer}"
    return answer["data"]["result"]


def _drift_rule() -> tuple[str, float]:
    (rule,) = [r for r in alert_rules() if r["alert"] == "FusionGuardModalityDrift"]
    shape = ALERT_SHAPE.match(rule["expr"])
    return shape["quantity"], float(shape["threshold"])


def test_in_distribution_replay_leaves_the_drift_alert_inactive(stack: dict) -> None:
    # Whole queries of the profile's own eval set, two full drift windows: every feature's PSI was
    # published and stayed under the alert threshold, and the alert was never pending or firing.
    prom, (start, end) = stack["prom"], stack["phases"]["in_distribution"]
    quantity, threshold = _drift_rule()
    span = f"{max(int(end - start), 1)}s"
    peaks = {s["metric"]["feature"]: float(s["value"][1]) for s in _at(prom, f"max_over_time({quantity}[{span}])", end)}
    assert set(peaks) == {"visual_share", "attention_mass", "query", "text_tokens", "visual_tokens"}, peaks
    assert max(peaks.values()) < threshold, peaks
    assert _at(prom, f'max_over_time(ALERTS{{alertname="FusionGuardModalityDrift"}}[{span}])', end) == []


def test_shifted_traffic_makes_the_drift_alert_active(stack: dict) -> None:
    # The same queries with visual tokens x 2: the visual-token PSI crosses the threshold and the
    # alert goes pending (it would fire after the rule's `for:`, which promtool's tests cover).
    prom, (start, end) = stack["prom"], stack["phases"]["shifted"]
    quantity, threshold = _drift_rule()
    span = f"{max(int(end - start), 1)}s"
    peaks = {s["metric"]["feature"]: float(s["value"][1]) for s in _at(prom, f"max_over_time({quantity}[{span}])", end)}
    assert peaks["visual_tokens"] > threshold, peaks
    active = _at(prom, f'max_over_time(ALERTS{{alertname="FusionGuardModalityDrift",feature="visual_tokens"}}[{span}])', end)
    assert active, f"FusionGuardModalityDrift was never pending or firing for visual_tokens during the shift ({peaks})"
