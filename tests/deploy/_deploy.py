"""Shared helpers of the deploy tests: paths, the documented metric names, PromQL name extraction.

Not a test module; imported by the tests in this folder.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
RULES_FILE = DEPLOY / "prometheus" / "rules" / "fusionguard.rules.yml"
RULE_TESTS = DEPLOY / "prometheus" / "tests" / "fusionguard.rules.test.yml"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "fusionguard.json"
INTERFACES = ROOT / "docs" / "interfaces.md"
RUNBOOKS = ROOT / "docs" / "runbooks.md"

# Alert expressions are `<quantity> <op> <threshold>` (documented in the rule file).
ALERT_SHAPE = re.compile(r"^(?P<quantity>.+?)\s*(?P<op>==|!=|>=|<=|>|<)\s*(?P<threshold>-?[0-9.]+)\s*$", re.S)

# prometheus_client exposes no _sum for a histogram with a negative bucket bound, and the shadow
# correlation histogram's buckets start below 0 (found by the integration test).
NO_SUM = {"fusionguard_shadow_spearman_per_request_sum"}

_CLAUSE = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset"}


def require_tool(name: str) -> str:
    """Path of a command-line tool; FAILS (never skips) when it is missing: CI installs it."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"`{name}` is not on PATH; install Debian's prometheus package "
            "(`make tools`, or apt-get install --no-install-recommends prometheus)"
        )
    return path


def load_rules() -> dict:
    return yaml.safe_load(RULES_FILE.read_text(encoding="utf-8"))


def all_rules() -> list[dict]:
    return [rule for group in load_rules()["groups"] for rule in group["rules"]]


def alert_rules() -> list[dict]:
    return [rule for rule in all_rules() if "alert" in rule]


def recorded_names() -> set[str]:
    return {rule["record"] for rule in all_rules() if "record" in rule}


def documented_series() -> set[str]:
    """Series names the monitor exports, from the table in docs/interfaces.md ("Prometheus metrics").

    A histogram NAME yields NAME_bucket, NAME_sum and NAME_count; counters and gauges their name.
    """
    text = INTERFACES.read_text(encoding="utf-8")
    section = text.split("## Prometheus metrics", 1)[1]
    names: set[str] = set()
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`fusionguard_"):
            continue
        kind = cells[1].split()[0]
        first = cells[0].strip("`")
        extra = re.findall(r"`(fusionguard_\w+)`", cells[1])  # e.g. "gauge ... + histogram `X`"
        for name, is_histogram in [(first, kind == "histogram")] + [(x, True) for x in extra]:
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"} if is_histogram else {name}
    return names - NO_SUM


def metric_names(expr: str) -> set[str]:
    """Metric (series) names a PromQL expression selects: identifiers that are not functions,
    aggregations, keywords, label names or durations."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    s = re.sub(r"\{[^}]*\}", " ", s)  # label matchers
    s = re.sub(r"\[[^\]]*\]", " ", s)  # range and subquery windows
    s = _CLAUSE.sub(" ", s)  # by (...), on (...), group_left (...)
    names = set()
    for m in re.finditer(r"(?<![\w.$])[a-zA-Z_:][a-zA-Z0-9_:]*", s):
        if m.group() in _WORDS or s[m.end():].lstrip().startswith("("):
            continue
        names.add(m.group())
    return names


def dashboard_targets(dashboard: dict) -> list[tuple[str, dict]]:
    """(panel title, target) for every query of every panel, rows included."""
    out = []
    stack = list(dashboard.get("panels", []))
    while stack:
        panel = stack.pop(0)
        stack.extend(panel.get("panels", []))
        for target in panel.get("targets", []):
            out.append((panel.get("title", "?"), target))
    return out


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return slug.replace(" ", "-")


def runbook_anchors() -> set[str]:
    lines = RUNBOOKS.read_text(encoding="utf-8").splitlines()
    return {github_anchor(line.lstrip("#")) for line in lines if line.startswith("#")}
