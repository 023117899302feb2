"""promtool on the committed Prometheus configuration and rules (Debian's prometheus package)."""

from __future__ import annotations

import subprocess

import yaml

from tests.deploy._deploy import (
    PROMETHEUS_CONFIG,
    RULE_TESTS,
    RULES_FILE,
    alert_rules,
    require_tool,
)


def _promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([require_tool("promtool"), *args], capture_output=True, text=True, timeout=60)


def test_check_config() -> None:
    result = _promtool("check", "config", str(PROMETHEUS_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout + result.stderr


def test_check_rules() -> None:
    result = _promtool("check", "rules", str(RULES_FILE))
    assert result.returncode == 0, result.stdout + result.stderr


def test_rule_unit_tests_pass() -> None:
    result = _promtool("test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_rule_unit_tests_cover_firing_and_not_firing_for_every_alert() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text(encoding="utf-8"))
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in tests["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert names - firing == set(), "alerts without a firing case"
    assert names - quiet == set(), "alerts without a not-firing case"


def test_rule_unit_tests_catch_a_wrong_threshold(tmp_path) -> None:
    """The unit tests can fail: a collapse threshold of 0.01 instead of 0.10 breaks them."""
    rules_dir = tmp_path / "rules"
    tests_dir = tmp_path / "tests"
    rules_dir.mkdir()
    tests_dir.mkdir()
    text = RULES_FILE.read_text(encoding="utf-8")
    assert "{modality=\"visual\"} < 0.10" in text
    (rules_dir / RULES_FILE.name).write_text(text.replace('{modality="visual"} < 0.10', '{modality="visual"} < 0.01'))
    (tests_dir / RULE_TESTS.name).write_text(RULE_TESTS.read_text(encoding="utf-8"))
    result = _promtool("test", "rules", str(tests_dir / RULE_TESTS.name))
    assert result.returncode != 0
    assert "FusionGuardVisualContributionCollapsed" in result.stdout + result.stderr
