"""The gate's verdict where a CI reviewer looks: `fusionguard gate --summary github|gitlab|plain`.

- ``plain``: the check lines on stdout (the default; what a terminal wants).
- ``github``: the plain lines, one ``::error`` workflow command per failed or errored check on
  stdout (GitHub turns them into annotations on the run and the pull request), and the report
  Markdown appended to the job summary file (``$GITHUB_STEP_SUMMARY``, or ``--summary-file``).
- ``gitlab``: the plain lines, then the reasons in a collapsed job-log section; the merge request
  shows the checks as tests from ``junit.xml`` (``artifacts:reports:junit``), so no Markdown.

Everything here formats a report dict (report.json as written); nothing computes a number.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fusionguard.gate.outcomes import Outcome
from fusionguard.gate.report import PLOT_CAPTIONS, markdown, verdict_sentence

SUMMARY_MODES = ("plain", "github", "gitlab")
_ANNOTATED = (Outcome.FAILED, Outcome.ERROR)  # check outcomes that get an ::error annotation
SUMMARY_LIMIT = 1_000_000  # bytes; GitHub refuses a step summary over 1 MiB
_STOPPED = {2: "INVALID INPUT", 3: "COULD NOT EVALUATE"}
_NUMBERS_BLOCK = "<details><summary>All numbers</summary>"  # as fusionguard.gate.report.markdown writes it


def check_lines(report: dict[str, Any], report_dir: Path | str | None) -> list[str]:
    """The plain output: one line per check, then the verdict line."""
    lines = [f"{c['name']:<16} {c['outcome']:<8} {c['summary']}" for c in report["checks"]]
    lines.append(f"gate: {report['outcome']} (exit {report['exit_code']}); reports in {report_dir}")
    return lines


# ----- GitHub Actions --------------------------------------------------------------------------

def _escape_data(text: str) -> str:
    """A workflow command's message: %, CR and LF escaped (GitHub's toolkit `escapeData`)."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    """A workflow command's property value (title=...): also ':' and ',' escaped (`escapeProperty`)."""
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def github_error(title: str, message: str) -> str:
    """One `::error title=...::message` workflow command line."""
    return f"::error title={_escape_property(title)}::{_escape_data(message)}"


def github_annotations(report: dict[str, Any]) -> list[str]:
    """One ::error line per check that failed or could not be evaluated, in check order."""
    lines = []
    for c in report["checks"]:
        if c["outcome"] in _ANNOTATED:
            body = "\n".join([c["summary"], *c["reasons"]])
            lines.append(github_error(f"fusionguard gate: {c['name']} {c['outcome']}", body))
    return lines


def github_markdown(report: dict[str, Any], report_dir: Path | str | None, limit: int = SUMMARY_LIMIT) -> str:
    """The report Markdown for the job summary: the plots are listed (they live in the artifact).

    GitHub rejects a step's summary over 1 MiB; past `limit` bytes the block of all numbers is
    left out (report.json in the artifact has them).
    """
    plots = [name for name in PLOT_CAPTIONS if report_dir is not None and (Path(report_dir) / name).is_file()]
    text = markdown(report, plots, link_plots=False)
    if len(text.encode("utf-8")) > limit:
        text = text[: text.index(_NUMBERS_BLOCK)] + "(every number is in report.json, in the report artifact)\n"
    return text


def github_stopped(message: str, exit_code: int) -> tuple[str, str]:
    """The annotation and the job summary when the gate stopped before writing any report (an
    invalid policy, no baseline, an unwritable --out): usually exit 2."""
    label = _STOPPED.get(exit_code, f"exit {exit_code}")
    annotation = github_error(f"fusionguard gate: {label.lower()}", message)
    text = (
        f"## ⚠️ fusionguard gate: **{label}** (exit {exit_code})\n\n"
        "The gate stopped before checking anything: fix the cause below and rerun.\n\n"
        f"```\n{message}\n```\n"
    )
    return annotation, text


def append_summary(path: Path, text: str) -> None:
    """Append to the summary file (other steps of the job may have written to it already)."""
    with path.open("a", encoding="utf-8") as fh:
        fh.write(text if text.endswith("\n") else text + "\n")


# ----- GitLab CI -------------------------------------------------------------------------------

def gitlab_section(name: str, header: str, body: Sequence[str], *, collapsed: bool = True, now: Callable[[], float] = time.time) -> list[str]:
    """A collapsible job-log section (GitLab's `section_start`/`section_end` markers)."""
    start = f"\x1b[0Ksection_start:{int(now())}:{name}[collapsed={'true' if collapsed else 'false'}]\r\x1b[0K{header}"
    end = f"\x1b[0Ksection_end:{int(now())}:{name}\r\x1b[0K"
    return [start, *body, end]


def gitlab_lines(report: dict[str, Any], report_dir: Path | str | None) -> list[str]:
    """The plain lines, the verdict sentence, and each non-passing check's reasons in a collapsed section."""
    lines = [*check_lines(report, report_dir), verdict_sentence(report)]
    details = [c for c in report["checks"] if c["outcome"] in _ANNOTATED]
    if details:
        body = []
        for c in details:
            body.append(f"{c['name']} ({c['outcome']}): {c['summary']}")
            body += [f"  - {r}" for r in c["reasons"]]
        lines += gitlab_section("fusionguard_gate_reasons", "fusionguard gate: why", body)
    lines.append("the merge request's test report lists each check (junit.xml); the report directory is in the job's artifacts")
    return lines
