"""The gate's reports: report.json, report.md, junit.xml, PNG plots and the reference profile.

report.json holds every number, CI and p-value, the policy, the sha256 of both models and the
data, the seeds and the package versions. For a fixed seed it is identical between runs except
for `created_at` (timings are printed, never stored, for that reason).
"""

from __future__ import annotations

import json
import logging
import platform
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fusionguard import __version__
from fusionguard.errors import FusionGuardError, InvalidInputError
from fusionguard.profile import build_profile, feature_summaries

from gate.checks import clean

if TYPE_CHECKING:
    from gate.runner import GateResult

logger = logging.getLogger(__name__)

REPORT_VERSION = 1
_PACKAGES = ("numpy", "scipy", "pandas", "pyarrow", "onnx", "onnxruntime", "onnxruntime-gpu", "great-expectations", "click")
_MARK = {"passed": "✅", "failed": "❌", "error": "⚠️", "skipped": "⏭️"}


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


def markdown(report: dict[str, Any]) -> str:
    """report.md: a verdict line, a table of checks, then each check's reasons and numbers."""
    verdict = {"passed": "PASSED", "blocked": "BLOCKED", "invalid": "INVALID INPUT", "unevaluated": "COULD NOT EVALUATE"}
    cand, base, data = report["candidate"], report["baseline"], report["data"]
    lines = [
        f"## fusionguard gate: **{verdict.get(report['outcome'], report['outcome'])}** (exit {report['exit_code']})",
        "",
        f"- candidate: `{Path(cand['path']).name}` ({cand.get('variant') or 'unknown variant'}), sha256 `{(cand.get('sha256') or '?')[:12]}`",
        f"- baseline: `{Path(base['path']).name}`, sha256 `{(base.get('sha256') or '?')[:12]}`" if base else "- baseline: none (policy `baseline.required = false`)",
        f"- eval set: `{Path(data['path']).name}`, {data.get('n_rows', '?')} rows, {data.get('n_queries', '?')} queries, "
        f"sha256 `{(data.get('sha256') or '?')[:12]}`",
        f"- seed {report['policy']['seed']}, {report['policy']['bootstrap']['n_resamples']} bootstrap resamples, "
        f"{report['policy']['bootstrap']['confidence']:.0%} CIs",
        "",
        "| check | outcome | summary |",
        "|---|---|---|",
    ]
    for c in report["checks"]:
        lines.append(f"| {c['name']} | {_MARK.get(c['outcome'], '')} {c['outcome']} | {c['summary'].replace('|', '/')} |")
    details = [c for c in report["checks"] if c["reasons"] and c["outcome"] != "passed"]
    if details:
        lines += ["", "### Why"]
        for c in details:
            lines += [f"- **{c['name']}** ({c['outcome']}):"] + [f"  - {r}".replace("\n", "\n    ") for r in c["reasons"]]
    lines += ["", "<details><summary>All numbers</summary>", "", "```json"]
    lines.append(json.dumps({c["name"]: c["numbers"] for c in report["checks"]}, indent=2, sort_keys=True))
    lines += ["```", "", "</details>", ""]
    return "\n".join(lines)


def junit(report: dict[str, Any]) -> str:
    """junit.xml: one testcase per check; failed -> <failure>, error -> <error>, skipped -> <skipped>."""
    cs = report["checks"]
    suite = ET.Element(
        "testsuite",
        name="fusionguard.gate",
        tests=str(len(cs)),
        failures=str(sum(c["outcome"] == "failed" for c in cs)),
        errors=str(sum(c["outcome"] == "error" for c in cs)),
        skipped=str(sum(c["outcome"] == "skipped" for c in cs)),
    )
    for c in cs:
        case = ET.SubElement(suite, "testcase", classname="fusionguard.gate", name=c["name"])
        text = "\n".join(c["reasons"]) or c["summary"]
        if c["outcome"] == "failed":
            ET.SubElement(case, "failure", message=c["summary"]).text = text
        elif c["outcome"] == "error":
            ET.SubElement(case, "error", message=c["summary"]).text = text
        elif c["outcome"] == "skipped":
            ET.SubElement(case, "skipped", message=c["summary"])
        ET.SubElement(case, "system-out").text = json.dumps(c["numbers"], sort_keys=True)
    root = ET.Element("testsuites")
    root.append(suite)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def write_reports(result: GateResult, out: Path) -> Path:
    """Write every report file into `out` (created) and return it.

    Raises:
        InvalidInputError: `out` cannot be created or written.
    """
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InvalidInputError(f"cannot create the report directory {out} ({err}); pick a writable --out") from None
    profile_note = None
    if result.measures is not None and result.candidate.sha256:
        try:
            m = result.measures
            profile = build_profile(
                result.candidate.sha256,
                m.visual_share,
                result.features if result.features is not None else feature_summaries(result.feeds or {}),
                attention_mass=m.attention.mass_per_row if m.attention is not None else m.attention_mass,
                seed=result.policy.seed,
            )
            profile.write(out / "profile.json")
        except FusionGuardError as err:
            profile_note = f"not written: {err}"
            logger.warning("reference profile not written: %s", err)
    else:
        profile_note = "not written: the candidate was not scored"
    stale = out / "profile.json"
    if profile_note is not None and stale.exists():
        stale.unlink()  # never leave a profile from an earlier run next to this report
    report = report_dict(result, profile_note)
    (out / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    (out / "report.md").write_text(markdown(report), encoding="utf-8")
    (out / "junit.xml").write_text(junit(report), encoding="utf-8")
    from gate.plots import write_plots  # matplotlib is slow to import; only here

    write_plots(result, out)
    return out
