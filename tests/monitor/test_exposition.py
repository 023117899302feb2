"""/metrics as ops expect it (issue 16, deliverable 6): every series the alert rules and the
dashboard read exists at zero on a fresh replica, process and platform collectors, and
prometheus_client's own exposition with OpenMetrics and gzip negotiation."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from fusionguard.monitor.metrics import ERROR_REASONS, INVALID_REASONS, OUTCOMES, UNKNOWN_MODEL
from tests.monitor.test_app import make_app

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
# Gauges whose zero would be a false reading: they appear once computed (drift, windowed shadow).
ABSENT_UNTIL_COMPUTED = re.compile(r"^fusionguard_(drift_\w+|shadow_spearman)$")


def _referenced() -> tuple[set[str], set[tuple[str, str, str]]]:
    """Metric names, and (metric, label, value) equality matchers, in the alert rules and dashboards."""
    texts = [p.read_text() for p in (DEPLOY / "prometheus" / "rules").glob("*.yml")]
    for p in (DEPLOY / "grafana" / "dashboards").glob("*.json"):
        texts.append(json.dumps(json.loads(p.read_text())).replace('\\"', '"'))
    names, matchers = set(), set()
    for text in texts:
        for m in re.finditer(r"(?<![:\w])(fusionguard_\w+)(?![:\w])(\{[^}]*\})?", text):
            names.add(m.group(1))
            for label, value in re.findall(r'(\w+)="([^"$]*)"', m.group(2) or ""):
                matchers.add((m.group(1), label, value))
    return names, matchers


def _exposition(c: TestClient) -> tuple[set[str], dict[str, set[tuple]]]:
    families = list(text_string_to_metric_families(c.get("/metrics").text))
    names = {f.name for f in families} | {s.name for f in families for s in f.samples}
    samples: dict[str, set[tuple]] = {}
    for f in families:
        for s in f.samples:
            samples.setdefault(s.name, set()).add(tuple(sorted(s.labels.items())))
    return names, samples


def test_every_series_that_rules_and_dashboards_read_exists_at_start(models):
    names, matchers = _referenced()
    assert len(names) >= 10  # the parser found the rules and the dashboard
    mapp, _ = make_app(model=models["fusion"])
    with TestClient(mapp.app) as c:
        exposed, samples = _exposition(c)
    missing = sorted(n for n in names if n not in exposed and not ABSENT_UNTIL_COMPUTED.match(n))
    assert not missing, f"referenced by deploy/ but absent on a fresh replica: {missing}"
    for metric, label, value in sorted(matchers):
        sample = metric if metric in samples else metric + "_total"
        if ABSENT_UNTIL_COMPUTED.match(metric):
            continue
        assert any((label, value) in labels for labels in samples.get(sample, ())), (metric, label, value)


def test_label_sets_are_initialised_at_zero(models):
    mapp, registry = make_app(model=models["fusion"])
    with TestClient(mapp.app):
        for outcome in OUTCOMES:
            assert registry.get_sample_value("fusionguard_requests_total", {"model": "ranker", "outcome": outcome}) == 0
        for reason in INVALID_REASONS:
            assert registry.get_sample_value("fusionguard_invalid_requests_total", {"model": "ranker", "reason": reason}) == 0
        for reason in ERROR_REASONS:
            assert registry.get_sample_value("fusionguard_request_errors_total", {"model": "ranker", "reason": reason}) == 0
        labels = {"model": UNKNOWN_MODEL, "reason": "unknown_model"}
        assert registry.get_sample_value("fusionguard_invalid_requests_total", labels) == 0
        version = mapp.service.state.version
        for modality in ("text", "visual"):
            labels = {"model": "ranker", "version": version, "modality": modality}
            assert registry.get_sample_value("fusionguard_modality_share_count", labels) == 0
        assert registry.get_sample_value("fusionguard_request_duration_seconds_count", {"model": "ranker"}) == 0
        assert registry.get_sample_value("fusionguard_model_ready", {"model": "ranker"}) == 1
        # Drift gauges are not invented before there is a window to compute them on.
        assert registry.get_sample_value("fusionguard_drift_psi", {"model": "ranker", "feature": "visual_share"}) is None


def test_process_and_platform_collectors(models):
    mapp, registry = make_app(model=models["fusion"])
    assert registry.get_sample_value("process_resident_memory_bytes") > 0
    assert registry.get_sample_value("process_cpu_seconds_total") >= 0
    assert registry.get_sample_value("process_open_fds") > 0
    assert any(f.name == "python_info" for f in registry.collect())
    assert any(f.name == "python_gc_objects_collected" for f in registry.collect())


@pytest.mark.parametrize(
    "accept, encoding, content_type",
    [
        (None, None, "text/plain; version=0.0.4"),
        ("application/openmetrics-text; version=1.0.0", None, "application/openmetrics-text; version=1.0.0"),
        (None, "gzip", "text/plain; version=0.0.4"),
        ("application/openmetrics-text; version=1.0.0", "gzip", "application/openmetrics-text; version=1.0.0"),
    ],
)
def test_metrics_negotiates_openmetrics_and_gzip(models, accept, encoding, content_type):
    mapp, _ = make_app(model=models["fusion"])
    headers = {"accept-encoding": encoding or "identity"}
    if accept:
        headers["accept"] = accept
    with TestClient(mapp.app) as c:
        r = c.get("/metrics", headers=headers)
        raw = c.build_request("GET", "/metrics", headers=headers)
        wire = c.send(raw, stream=True)
        body = b"".join(wire.iter_raw())
        wire.close()
    assert r.status_code == 200 and r.headers["content-type"].startswith(content_type)
    assert r.headers.get("content-encoding") == encoding
    text = gzip.decompress(body).decode() if encoding else body.decode()
    if accept:
        # prometheus_client's own OpenMetrics parser rejects a histogram with negative buckets
        # (its exposition leaves out _sum there, as OpenMetrics requires), so check the text itself.
        assert text.endswith("# EOF\n")
        assert "# TYPE fusionguard_requests counter\n" in text
        assert 'fusionguard_requests_total{model="ranker",outcome="ok"} 0.0\n' in text
        assert "# TYPE process_resident_memory_bytes gauge\n" in text
    else:
        names = {f.name for f in text_string_to_metric_families(text)}
        assert {"fusionguard_requests", "fusionguard_model_ready", "process_resident_memory_bytes"} <= names
