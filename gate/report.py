"""The gate's reports: report.json, report.md, junit.xml, PNG plots and the reference profile.

report.json holds every number, CI and p-value, the policy, the sha256 of both models and the
data, the seeds and the package versions. For a fixed seed it is identical between runs except
for `created_at` (timings are printed, never stored, for that reason).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import tempfile
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from fusionguard import __version__, metrics, signing
from fusionguard.errors import FusionGuardError, InvalidInputError
from fusionguard.profile import build_profile, feature_summaries

from fusionguard.gate.checks import clean
from fusionguard.gate.outcomes import VERDICT_TITLE, GateOutcome, Outcome

if TYPE_CHECKING:
    from fusionguard.gate.result import GateResult

logger = logging.getLogger(__name__)

REPORT_VERSION = 1
_PACKAGES = ("numpy", "scipy", "pandas", "pyarrow", "onnx", "onnxruntime", "onnxruntime-gpu", "great-expectations", "click")
_MARK = {Outcome.PASSED: "✅", Outcome.FAILED: "❌", Outcome.ERROR: "⚠️", Outcome.SKIPPED: "⏭️"}


def package_versions() -> dict[str, str]:
    """Versions of fusionguard, Python and the packages that shape the numbers."""
    versions = {"fusionguard": __version__, "python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def report_dict(result: GateResult, profile_note: str | None = None) -> dict[str, Any]:
    """The JSON report as a dict (JSON-safe)."""
    p = result.policy
    return clean(
        {
            "report_version": REPORT_VERSION,
            "outcome": result.outcome,
            "exit_code": result.exit_code,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "candidate": result.candidate.to_dict(),
            "baseline": None if result.baseline is None else result.baseline.to_dict(),
            "data": result.data,
            "policy": p.to_dict(),
            "seeds": {
                "seed": p.seed,
                "bootstrap": p.seed,
                "randomization_test": p.seed,
                "ablation_permutations": [p.seed + i for i in range(p.ablation.n_permutations)]
                if p.ablation.strategy == "permute" else [],
                "shapley_permutation": p.seed if p.shapley.strategy == "permute" else None,
            },
            "versions": package_versions(),
            "profile": profile_note or "profile.json",
            "checks": [c.to_dict() for c in result.checks],
        }
    )


_VERDICT_MARK = {GateOutcome.PASSED: "✅", GateOutcome.BLOCKED: "❌", GateOutcome.INVALID: "⚠️", GateOutcome.UNEVALUATED: "⚠️"}
# Captions of the plots by file name (gate/plots.py writes them; importing it would load matplotlib).
PLOT_CAPTIONS = {
    "ndcg_difference.png": "NDCG@k difference (candidate − baseline) per query",
    "contributions.png": "visual Shapley share per candidate, and the NDCG@k drop with each modality masked",
}


def verdict_sentence(report: dict[str, Any]) -> str:
    """One sentence that says what the outcome means and what to do next."""
    def names(*outcomes: str) -> str:
        return ", ".join(c["name"] for c in report["checks"] if c["outcome"] in outcomes)

    outcome = report["outcome"]
    if outcome == GateOutcome.PASSED:
        return "Every check passed (or was skipped by the policy): the candidate may be promoted."
    if outcome == GateOutcome.BLOCKED:
        return f"Blocked by {names('failed')}: the candidate must not be promoted."
    if outcome == GateOutcome.UNEVALUATED:
        return (
            f"Could not evaluate {names('error')}: this is no verdict on the model. Fix the cause below "
            "(scoring or statistics failed) and rerun; nothing may be promoted meanwhile."
        )
    return f"Invalid input ({names('error') or 'see below'}): fix the inputs named below and rerun."


def markdown(report: dict[str, Any], plots: Sequence[str] = (), *, link_plots: bool = True) -> str:
    """report.md: the verdict first, a table of checks, the reasons, the inputs, plots, then every number.

    Args:
        report: the report dict (`report_dict`, or report.json read back).
        plots: file names of the plots written next to the report.
        link_plots: embed the plots as images with relative paths (report.md lives next to them);
            False lists their names only, for places where the report directory is not served
            (a CI job summary: the plots are in the uploaded report artifact).
    """
    cand, base, data = report["candidate"], report["baseline"], report["data"]
    outcome = report["outcome"]
    lines = [
        f"## {_VERDICT_MARK.get(outcome, '')} fusionguard gate: **{VERDICT_TITLE.get(outcome, outcome)}** (exit {report['exit_code']})",
        "",
        verdict_sentence(report),
        "",
        "| check | outcome | summary |",
        "|---|---|---|",
    ]
    for c in report["checks"]:
        lines.append(f"| {c['name']} | {_MARK.get(c['outcome'], '')} {c['outcome']} | {_cell(c['summary'])} |")
    details = [c for c in report["checks"] if c["reasons"] and c["outcome"] != Outcome.PASSED]
    if details:
        lines += ["", "### Why"]
        for c in details:
            lines += [f"- **{c['name']}** ({c['outcome']}):"] + [f"  - {r}".replace("\n", "\n    ") for r in c["reasons"]]
    policy = report["policy"]
    lines += [
        "",
        "### Inputs",
        "",
        "| | file | sha256 | |",
        "|---|---|---|---|",
        f"| candidate | `{Path(cand['path']).name}` | `{(cand.get('sha256') or '?')[:12]}` | {cand.get('variant') or 'unknown variant'} |",
        f"| baseline | `{Path(base['path']).name}` | `{(base.get('sha256') or '?')[:12]}` | |" if base
        else "| baseline | none | | policy `baseline.required = false` |",
        f"| eval set | `{Path(data['path']).name}` | `{(data.get('sha256') or '?')[:12]}` | "
        f"{data.get('n_rows', '?')} rows, {data.get('n_queries', '?')} queries |",
        "",
        f"Seed {policy['seed']}, {policy['bootstrap']['n_resamples']} bootstrap resamples, "
        f"{policy['bootstrap']['confidence']:.0%} CIs.",
    ]
    if plots:
        lines += ["", "### Plots", ""]
        if link_plots:
            for name in plots:
                lines += [f"![{PLOT_CAPTIONS.get(name, name)}]({name})", ""]
        else:
            lines += [f"- `{name}`: {PLOT_CAPTIONS.get(name, name)}" for name in plots]
            lines += ["", "(in the report directory, uploaded with the job's artifacts)", ""]
    else:
        lines.append("")
    lines += ["<details><summary>All numbers</summary>", "", "```json"]
    lines.append(json.dumps({c["name"]: c["numbers"] for c in report["checks"]}, indent=2, sort_keys=True))
    lines += ["```", "", "</details>", ""]
    return "\n".join(lines)


def _cell(text: str) -> str:
    """Text safe inside one Markdown table cell (GitHub and GitLab alike)."""
    return text.replace("|", "\\|").replace("\n", " ")


def junit(report: dict[str, Any], timings: dict[str, float] | None = None) -> str:
    """junit.xml: one testcase per check; failed -> <failure>, error -> <error>, skipped -> <skipped>.

    `timings` (GateResult.timings) gives the `time` attributes in seconds: a testcase's is its
    check's own time, the suite's the whole gate's (scoring and the shared bootstrap count there
    only). Timings live here and not in report.json, which stays identical between runs.
    """
    cs = report["checks"]
    timings = timings or {}
    suite = ET.Element(
        "testsuite",
        name="fusionguard.gate",
        tests=str(len(cs)),
        failures=str(sum(c["outcome"] == Outcome.FAILED for c in cs)),
        errors=str(sum(c["outcome"] == Outcome.ERROR for c in cs)),
        skipped=str(sum(c["outcome"] == Outcome.SKIPPED for c in cs)),
        time=f"{timings.get('total_checks', 0.0):.4f}",
        timestamp=str(report.get("created_at", "")),
    )
    stages = {k: v for k, v in timings.items() if not k.startswith("check.") and k != "total_checks"}
    if stages:  # where the suite's time went: loading, validation, scoring, the shared bootstrap
        properties = ET.SubElement(suite, "properties")
        for stage, seconds in stages.items():
            ET.SubElement(properties, "property", name=f"time.{stage}", value=f"{seconds:.4f}")
    for c in cs:
        case = ET.SubElement(suite, "testcase", classname="fusionguard.gate", name=c["name"],
                             time=f"{timings.get('check.' + c['name'], 0.0):.4f}")
        text = "\n".join(c["reasons"]) or c["summary"]
        if c["outcome"] == Outcome.FAILED:
            ET.SubElement(case, "failure", message=c["summary"]).text = text
        elif c["outcome"] == Outcome.ERROR:
            ET.SubElement(case, "error", message=c["summary"]).text = text
        elif c["outcome"] == Outcome.SKIPPED:
            ET.SubElement(case, "skipped", message=c["summary"])
        ET.SubElement(case, "system-out").text = json.dumps(c["numbers"], sort_keys=True)
    root = ET.Element("testsuites")
    root.append(suite)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _query_of_row(groups: metrics.QueryGroups) -> np.ndarray:
    """(N,) index of each row's query, rows in the caller's (dataset) order."""
    out = np.empty(groups.order.size, dtype=np.int64)
    out[groups.order] = groups.query_index_sorted
    return out


# Every file the gate writes into --out; report.json is moved in last, so its presence means the
# run finished. (Plot names repeat fusionguard.gate.plots' constants: importing that module loads matplotlib.)
_STAGE_PREFIX = ".fusionguard-gate-"
ARTEFACTS = (
    "report.md", "junit.xml", "profile.json", "ndcg_difference.png", "contributions.png", "integrity.png", "report.json",
)


def clear_artefacts(out: Path, keep: Path | None = None) -> None:
    """Remove the files an earlier gate run left in `out`, so an early stop leaves none behind.

    Raises:
        InvalidInputError: one cannot be removed (a directory in its place, no permission).
    """
    for stage in out.glob(f"{_STAGE_PREFIX}*"):  # left by a run that was killed mid-write
        if stage != keep:
            shutil.rmtree(stage, ignore_errors=True)
    for name in ARTEFACTS:
        path = out / name
        try:
            if path.is_symlink() or path.exists():
                path.unlink()
        except OSError as err:
            raise InvalidInputError(
                f"cannot remove {path} left by an earlier run ({err}); clear the report directory or pick another --out"
            ) from None


def write_reports(result: GateResult, out: Path) -> Path:
    """Write every report file into a temporary directory inside `out`, then move them in.

    Nothing from an earlier run survives: its artefacts are removed before the new ones are
    moved in, report.json last. With `FUSIONGUARD_SIGNING_KEY` set, report.json is signed
    (fusionguard.signing).

    Raises:
        InvalidInputError: `out` cannot be created or written.
    """
    try:
        out.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=_STAGE_PREFIX, dir=out))
    except OSError as err:
        raise InvalidInputError(f"cannot create the report directory {out} ({err}); pick a writable --out") from None
    try:
        _write_all(result, stage)
        clear_artefacts(out, keep=stage)
        for name in ARTEFACTS:
            if (stage / name).exists():
                os.replace(stage / name, out / name)
    except OSError as err:
        raise InvalidInputError(f"cannot write the reports into {out} ({err}); pick a writable --out") from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return out


def _write_all(result: GateResult, out: Path) -> None:
    profile_note = None
    if result.measures is not None and result.candidate.sha256 and result.groups is not None:
        try:
            m = result.measures
            profile = build_profile(
                result.candidate.sha256,
                m.visual_share,
                result.features if result.features is not None else feature_summaries(result.feeds or {}),
                attention_mass=m.attention.mass_per_row if m.attention is not None else m.attention_mass,
                requests=_query_of_row(result.groups),
                shapley_strategy=result.policy.shapley.strategy,
                seed=result.policy.seed,
            )
            profile.write(out / "profile.json")
        except FusionGuardError as err:
            profile_note = f"not written: {err}"
            logger.warning("reference profile not written: %s", err)
    else:
        profile_note = "not written: the candidate was not scored"
    report = report_dict(result, profile_note)
    key = signing.signing_key()
    if key:
        report = signing.sign(report, key)
    elif key is not None:
        logger.warning("%s is set but empty: report.json is not signed", signing.KEY_ENV)
    (out / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    from fusionguard.gate.plots import write_plots  # matplotlib is slow to import; only here

    plots = write_plots(result, out)  # first, so that report.md links exactly the plots written
    (out / "report.md").write_text(markdown(report, [p.name for p in plots]), encoding="utf-8")
    (out / "junit.xml").write_text(junit(report, result.timings), encoding="utf-8")
