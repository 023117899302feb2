"""`fusionguard gate --summary github|gitlab|plain`: annotations, job summary, report Markdown."""

from __future__ import annotations

import copy

import pytest
from click.testing import CliRunner

from fusionguard.cli import cli
from fusionguard.gate import summary as ci
from fusionguard.gate.report import markdown

REPORT = {
    "outcome": "blocked",
    "exit_code": 1,
    "candidate": {"path": "/x/cand.onnx", "sha256": "a" * 64, "variant": "v2"},
    "baseline": {"path": "/x/v1.onnx", "sha256": "b" * 64},
    "data": {"path": "/x/eval.parquet", "sha256": "c" * 64, "n_rows": 10, "n_queries": 2},
    "policy": {"seed": 0, "bootstrap": {"n_resamples": 500, "confidence": 0.95}},
    "checks": [
        {"name": "data", "outcome": "passed", "summary": "ok", "reasons": [], "numbers": {}},
        {"name": "visual_ablation", "outcome": "failed", "summary": "drop 0.0 | low", "reasons": ["50% below: x, y"], "numbers": {}},
        {"name": "integrity", "outcome": "skipped", "summary": "not run", "reasons": ["skipped"], "numbers": {}},
        {"name": "quality", "outcome": "error", "summary": "undefined", "reasons": ["line 1\nline 2"], "numbers": {}},
    ],
}


def invoke(*args, env=None):
    return CliRunner(env=env).invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_workflow_commands_escape_like_the_actions_toolkit():
    assert ci.github_error("a: b, c", "50%\r\nnext") == "::error title=a%3A b%2C c::50%25%0D%0Anext"


def test_one_annotation_per_failed_or_errored_check_in_order():
    lines = ci.github_annotations(REPORT)
    assert lines == [
        "::error title=fusionguard gate%3A visual_ablation failed::drop 0.0 | low%0A50%25 below: x, y",
        "::error title=fusionguard gate%3A quality error::undefined%0Aline 1%0Aline 2",
    ]


@pytest.mark.parametrize(
    ("outcome", "code", "heading", "needle"),
    [
        ("passed", 0, "✅ fusionguard gate: **PASSED** (exit 0)", "may be promoted"),
        ("blocked", 1, "❌ fusionguard gate: **BLOCKED** (exit 1)", "Blocked by visual_ablation: the candidate must not be promoted"),
        ("unevaluated", 3, "⚠️ fusionguard gate: **COULD NOT EVALUATE** (exit 3)", "Could not evaluate quality: this is no verdict on the model"),
        ("invalid", 2, "⚠️ fusionguard gate: **INVALID INPUT** (exit 2)", "Invalid input (quality): fix the inputs"),
    ],
)
def test_markdown_puts_the_verdict_and_what_it_means_first(outcome, code, heading, needle):
    report = {**copy.deepcopy(REPORT), "outcome": outcome, "exit_code": code}
    lines = markdown(report).splitlines()
    assert lines[0] == "## " + heading
    assert needle in lines[2]
    assert lines[4] == "| check | outcome | summary |"
    assert "| visual_ablation | ❌ failed | drop 0.0 \\| low |" in lines  # a pipe cannot split the cell


def test_markdown_links_plots_relatively_or_lists_them():
    linked = markdown(REPORT, ["ndcg_difference.png"])
    assert "![NDCG@k difference (candidate − baseline) per query](ndcg_difference.png)" in linked
    listed = markdown(REPORT, ["ndcg_difference.png"], link_plots=False)
    assert "](ndcg_difference.png)" not in listed and "- `ndcg_difference.png`" in listed
    assert "### Plots" not in markdown(REPORT)


def test_job_summary_leaves_out_the_numbers_past_the_size_limit(tmp_path):
    full = ci.github_markdown(REPORT, tmp_path)
    assert "<details><summary>All numbers</summary>" in full
    short = ci.github_markdown(REPORT, tmp_path, limit=len(full.encode()) - 1)
    assert "All numbers" not in short and short.endswith("in the report artifact)\n")
    assert short.startswith(full[: full.index("<details>")])


def test_gitlab_lines_put_the_reasons_in_a_collapsed_section():
    lines = ci.gitlab_lines(REPORT, "out")
    start = next(i for i, line in enumerate(lines) if "section_start:" in line)
    end = next(i for i, line in enumerate(lines) if "section_end:" in line)
    assert lines[start].startswith("\x1b[0Ksection_start:") and "[collapsed=true]\r\x1b[0K" in lines[start]
    body = "\n".join(lines[start + 1:end])
    assert "visual_ablation (failed)" in body and "quality (error)" in body and "integrity" not in body


def test_report_md_links_the_plots_written_next_to_it(toys, tmp_path):
    args = ["gate", "--candidate", toys.fusion, "--baseline", toys.v1, "--data", toys.data, "--policy", toys.policy]
    result = invoke(*args, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    text = (tmp_path / "out" / "report.md").read_text()
    for name in ("ndcg_difference.png", "contributions.png"):
        assert f"]({name})" in text and (tmp_path / "out" / name).is_file()
    assert "::error" not in result.output and "section_start" not in result.output  # plain is the default


def test_github_summary_needs_a_file(toys, tmp_path, monkeypatch):
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    result = invoke("gate", "--candidate", toys.fusion, "--data", toys.data, "--out", tmp_path / "out", "--summary", "github")
    assert result.exit_code == 2 and "GITHUB_STEP_SUMMARY" in result.output
    assert not (tmp_path / "out").exists()


def test_github_summary_explains_a_gate_that_stopped_before_any_report(toys, tmp_path):
    policy, summary = tmp_path / "typo.toml", tmp_path / "summary.md"
    policy.write_text("[integrity]\nmax_corelation = 0.9\n")
    result = invoke(
        "gate", "--candidate", toys.fusion, "--baseline", toys.v1, "--data", toys.data, "--policy", policy,
        "--out", tmp_path / "out", "--summary", "github", env={"GITHUB_STEP_SUMMARY": str(summary)},
    )
    assert result.exit_code == 2
    assert result.stdout.startswith("::error title=fusionguard gate%3A invalid input::")
    assert "max_corelation" in result.stdout
    assert "**INVALID INPUT** (exit 2)" in summary.read_text()


def test_an_unwritable_summary_is_a_warning_and_the_verdict_stands(toys, tmp_path):
    args = ["gate", "--candidate", toys.blind, "--baseline", toys.v1, "--data", toys.data, "--policy", toys.policy]
    result = invoke(*args, "--out", tmp_path / "out", "--summary", "github", "--summary-file", tmp_path)  # a directory
    assert result.exit_code == 1
    assert "warning: could not write the job summary" in result.stderr
    assert result.stdout.count("::error title=") == 2
