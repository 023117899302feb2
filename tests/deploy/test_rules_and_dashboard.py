"""Static checks of the alert rules and the Grafana dashboard against docs/interfaces.md."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from tests.deploy._deploy import (
    ALERT_SHAPE,
    DASHBOARD,
    DEPLOY,
    alert_rules,
    all_rules,
    dashboard_targets,
    documented_series,
    github_anchor,
    metric_names,
    recorded_names,
    runbook_anchors,
)

# Alerts the issue asks for, by what they watch.
REQUIRED_ALERTS = {
    "FusionGuardVisualContributionCollapsed": "fusionguard_modality_share",
    "FusionGuardModalityDrift": "fusionguard_drift_psi",
    "FusionGuardShadowCorrelationTooHigh": "fusionguard_shadow_spearman",
    "FusionGuardInvalidRequestRate": "fusionguard_invalid_requests",
    "FusionGuardHighP99Latency": "fusionguard_request_duration_seconds",
    "FusionGuardModelNotReady": "fusionguard_model_ready",
}


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('sum by (model, le) (rate(fusionguard_request_duration_seconds_bucket{model=~"$model"}[$__rate_interval]))',
         {"fusionguard_request_duration_seconds_bucket"}),
        ("histogram_quantile(0.99, sum by (le) (rate(a_bucket[5m]))) / on (model) group_left (version) b > 0.5",
         {"a_bucket", "b"}),
        ('x{job="up"} == 0 or absent(y) unless z offset 5m', {"x", "y", "z"}),
        ("up == 0", {"up"}),
        ("1e-4 * count(rate(m[1m]))", {"m"}),
    ],
)
def test_metric_name_extraction(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_documented_series_parse_the_interfaces_table() -> None:
    series = documented_series()
    assert "fusionguard_requests_total" in series
    assert {"fusionguard_modality_share_sum", "fusionguard_modality_share_count"} <= series
    assert "fusionguard_shadow_spearman" in series
    assert "fusionguard_shadow_spearman_per_request_bucket" in series
    assert "fusionguard_model_ready_sum" not in series
    assert "fusionguard_shadow_spearman_per_request_sum" not in series  # see NO_SUM


def test_rules_use_only_documented_metrics() -> None:
    allowed = documented_series() | recorded_names() | {"up"}
    for rule in all_rules():
        unknown = metric_names(rule["expr"]) - allowed
        assert not unknown, f"{rule.get('alert') or rule.get('record')}: unknown metrics {unknown}"


def test_required_alerts_exist_and_watch_the_right_metric() -> None:
    alerts = {rule["alert"]: rule for rule in alert_rules()}
    recorded = {rule["record"]: rule["expr"] for rule in all_rules() if "record" in rule}
    for name, metric in REQUIRED_ALERTS.items():
        assert name in alerts, f"missing alert {name}"
        expr = alerts[name]["expr"]
        expanded = " ".join([expr] + [recorded[n] for n in metric_names(expr) if n in recorded])
        assert metric in expanded, f"{name} does not watch {metric}"
    assert 'up{job="fusionguard-monitor"} == 0' in {r["expr"] for r in alerts.values()}


def test_alert_thresholds_are_the_gate_and_documented_ones() -> None:
    alerts = {rule["alert"]: ALERT_SHAPE.match(rule["expr"]) for rule in alert_rules()}
    assert all(alerts.values()), f"alerts not of the form `quantity op threshold`: {[k for k, v in alerts.items() if not v]}"
    expected = {
        "FusionGuardVisualContributionCollapsed": ("<", 0.10),
        "FusionGuardShadowCorrelationTooHigh": (">=", 0.99),
        "FusionGuardModalityDrift": (">", 0.25),
        "FusionGuardModelNotReady": ("==", 0.0),
    }
    for name, (op, threshold) in expected.items():
        assert (alerts[name]["op"], float(alerts[name]["threshold"])) == (op, threshold), name


def test_every_alert_has_severity_summary_live_value_and_a_runbook_section() -> None:
    anchors = runbook_anchors()
    for rule in alert_rules():
        name = rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, name
        assert rule.get("for"), f"{name} has no `for:` window"
        annotations = rule["annotations"]
        assert annotations["summary"].strip(), name
        assert "$value" in annotations["description"], f"{name}: description lacks the live value"
        link = annotations["runbook_url"]
        path, _, anchor = link.partition("#")
        assert path == "docs/runbooks.md", f"{name}: {link}"
        assert anchor == github_anchor(name) and anchor in anchors, f"{name}: no section #{anchor} in docs/runbooks.md"


def test_github_anchor() -> None:
    assert github_anchor(" FusionGuardModelNotReady") == "fusionguardmodelnotready"
    assert github_anchor("Alert links & more") == "alert-links--more"


def _dashboard() -> dict:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def test_dashboard_uses_the_datasource_variable_everywhere() -> None:
    dashboard = _dashboard()
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    datasources = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if "datasource" in node:
                datasources.append(node["datasource"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(dashboard["panels"])
    walk([v for v in dashboard["templating"]["list"] if v["type"] != "datasource"])
    assert datasources
    for ds in datasources:
        assert ds == {"type": "prometheus", "uid": "${datasource}"}, ds
    for _, target in dashboard_targets(dashboard):
        assert target.get("datasource") == {"type": "prometheus", "uid": "${datasource}"}


def test_dashboard_has_no_hard_coded_host() -> None:
    text = DASHBOARD.read_text(encoding="utf-8")
    assert not re.search(r"https?://|localhost|127\.0\.0\.1|:9090|:8000", text)


def test_dashboard_queries_use_only_documented_metrics() -> None:
    allowed = documented_series() | recorded_names()
    targets = dashboard_targets(_dashboard())
    assert len(targets) >= 10
    for title, target in targets:
        names = metric_names(target["expr"])
        assert names, f"{title}: no metric in {target['expr']}"
        assert names <= allowed, f"{title}: unknown metrics {names - allowed}"


def test_dashboard_has_the_required_panels() -> None:
    exprs = {title: " ".join(t["expr"] for tt, t in dashboard_targets(_dashboard()) if tt == title)
             for title, _ in dashboard_targets(_dashboard())}
    need = {
        "request rate and outcomes": "fusionguard_requests_total",
        "latency quantiles": "histogram_quantile(0.99",
        "modality share per version": "fusionguard_modality_share_sum",
        "attention mass": "fusionguard_visual_attention_mass",
        "attention entropy": "fusionguard_attention_entropy",
        "drift": "fusionguard_drift_psi",
        "shadow correlation": "fusionguard_shadow_spearman",
        "invalid requests": "fusionguard_invalid_requests_total",
    }
    for what, needle in need.items():
        assert any(needle in e for e in exprs.values()), f"no panel for {what}"
    share = next(e for e in exprs.values() if "fusionguard_modality_share_sum" in e)
    assert "version" in share and "modality" in share  # per model version, per modality


def test_grafana_provisioning_points_at_the_dashboards() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text(encoding="utf-8"))
    mounts = dict(v.split(":")[:2] for v in compose["services"]["grafana"]["volumes"] if v.startswith("./"))
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/fusionguard.yaml").read_text(encoding="utf-8"))
    path = provider["providers"][0]["options"]["path"]
    assert provider["providers"][0]["type"] == "file"
    assert mounts["./grafana/dashboards"] == path
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    datasources = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yaml").read_text(encoding="utf-8"))
    (ds,) = datasources["datasources"]
    assert ds["type"] == "prometheus"
    assert ds["url"] == "http://prometheus:9090"  # the compose service, not a host
