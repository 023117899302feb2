"""Promotion into an MLflow Model Registry: `fusionguard promote --registry mlflow://NAME`.

For teams whose deployments read MLflow's registry, the gate guards the promotion there:

1. The gate report is read; with `FUSIONGUARD_SIGNING_KEY` set its signature must verify, and the
   model's files (model.onnx and its external data) must hash to the report's manifest
   (otherwise nothing is registered: exit 1). Whether the gate passed is decided from evidence,
   as for the filesystem registry (`fusionguard.gate.promotion.report_problems`), never from the report's
   ``outcome`` field alone.
2. The exact file is registered as a new version of NAME with the `mlflow.onnx` flavor and the
   signature of its modality contract; the gate report (report.json, report.md, junit.xml, the
   plots, profile.json) is attached to the version's run under `gate_report/`, and the version is
   tagged with the gate's outcome and the model's sha256. The registered model.onnx is downloaded
   again and its hash compared.
3. The alias (`champion` by default) moves to the new version only when that evidence shows a
   pass. A blocked or unevaluated candidate is registered for the record (tagged with its
   outcome), its alias untouched, and the command exits 1.
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fusionguard import signing
from fusionguard.errors import CheckFailedError, InvalidInputError
from fusionguard.registry import MODEL_FILE as REGISTRY_MODEL_FILE
from fusionguard.registry import check_manifest, model_manifest
from fusionguard.tracking import MODEL_FILE, connect, save_onnx_model

SCHEME = "mlflow://"
DEFAULT_ALIAS = "champion"
EXPERIMENT = "fusionguard-promotions"
REPORT_FILES = ("report.json", "report.md", "junit.xml", "profile.json", "ndcg_difference.png", "contributions.png",
                "integrity.png")


def mlflow_target(registry: str | Path) -> str | None:
    """The registered model name of an `mlflow://NAME` registry target, else None (a directory).

    Accepts the form a click Path leaves behind too (`mlflow:/NAME`, the double slash collapsed).
    """
    text = str(registry)
    for prefix in (SCHEME, "mlflow:/"):
        if text.startswith(prefix):
            name = text[len(prefix):].strip("/")
            if not name or "/" in name:
                raise InvalidInputError(f"registry target {text!r} must be {SCHEME}NAME with one model name, e.g. {SCHEME}ranker")
            return name
    return None


@dataclass(frozen=True)
class MlflowPromotion:
    """What a promotion into MLflow did."""

    name: str  # registered model name
    version: str  # the new model version
    run_id: str  # the run holding the model and the gate report
    sha256: str  # of the registered (= gated) model file
    outcome: str  # the gate's outcome
    alias: str | None  # the alias moved to this version; None when the gate did not pass
    tracking_uri: str
    problems: tuple[str, ...] = ()  # why the evidence does not show a pass (fusionguard.gate.promotion.report_problems)

    @property
    def exit_code(self) -> int:
        return 0 if self.alias is not None else 1

    def summary(self) -> str:
        where = f"{self.name} version {self.version} (sha256 {self.sha256[:12]}) at {self.tracking_uri}"
        if self.alias is not None:
            return f"registered {where}; alias '{self.alias}' now points to it"
        why = "".join(f"\n  - {p}" for p in self.problems)
        return f"registered {where} for the record; the gate says '{self.outcome}', so no alias was moved{why}"


def _version_tags(report: dict[str, Any], sha256: str) -> dict[str, str]:
    candidate = report.get("candidate") or {}
    return {
        "fusionguard.gate.outcome": str(report.get("outcome")),
        "fusionguard.gate.exit_code": str(report.get("exit_code")),
        "fusionguard.sha256": sha256,
        "fusionguard.variant": str(candidate.get("variant") or "unknown"),
        "fusionguard.data_sha256": str((report.get("data") or {}).get("sha256") or ""),
    }


def _description(report: dict[str, Any]) -> str:
    lines = [f"fusionguard gate: {report.get('outcome')} (exit {report.get('exit_code')})"]
    lines += [f"- {c.get('name')}: {c.get('outcome')} - {c.get('summary')}" for c in report.get("checks", [])]
    return "\n".join(lines)


def promote_to_mlflow(name: str, report_dir: str | Path, model: str | Path | None = None, *,
                      tracking_uri: str | None = None, alias: str = DEFAULT_ALIAS,
                      policy: str | Path | None = None) -> MlflowPromotion:
    """Register the gated model as a new version of `name` and move `alias` if the gate passed.

    Args:
        name: the registered model's name.
        report_dir: the gate's output directory.
        model: the model file; defaults to the candidate path recorded in the report.
        tracking_uri: the MLflow tracking server; defaults to MLFLOW_TRACKING_URI.
        alias: the alias that marks the promoted version.
        policy: a policy TOML the report's recorded policy must equal (optional).
    Returns:
        What was registered; `exit_code` is 1 when the gate did not pass (no alias moved).
    Raises:
        InvalidInputError: missing report or model, or no tracking server given (exit 2).
        CheckFailedError: the model is not the file the gate evaluated, or the registry holds other
            bytes than were sent (exit 1).
    """
    from fusionguard.gate.policy import load_policy
    from fusionguard.gate.outcomes import GateOutcome
    from fusionguard.gate.promotion import read_report, report_problems

    report_dir = Path(report_dir)
    report = read_report(report_dir)
    source = f"gate report {report_dir / 'report.json'}"
    key = signing.signing_key()
    if key is not None:
        signing.verify(report, key, source)
    candidate = report.get("candidate") if isinstance(report.get("candidate"), dict) else {}
    expected_files = check_manifest(candidate.get("files"), f"{source} (candidate.files)")
    model = Path(model) if model is not None else Path(str(candidate.get("path", "")))
    if not model.is_file():
        raise InvalidInputError(f"model {model} does not exist; pass the candidate the gate evaluated")
    if model_manifest(model) != expected_files:
        raise CheckFailedError(
            f"refusing to register {model}: its files differ from those the gate evaluated (sha256 manifest in "
            "the report); the model changed since the gate ran, or it is another model: gate it again"
        )
    actual = expected_files[REGISTRY_MODEL_FILE]
    problems = report_problems(report, load_policy(policy) if policy is not None else None)
    mlflow = connect(tracking_uri, option="--mlflow-uri")
    client = mlflow.MlflowClient()
    passed = not problems
    recorded = str(report.get("outcome"))
    outcome = GateOutcome.PASSED if passed else recorded if recorded != GateOutcome.PASSED else "unverified"
    tags = {**_version_tags(report, actual), "fusionguard.gate.outcome": outcome}
    mlflow.set_experiment(EXPERIMENT)
    with tempfile.TemporaryDirectory() as tmp, mlflow.start_run(run_name=f"promote-{name}") as run:
        mlflow.set_tags(tags)
        model_dir = save_onnx_model(model, Path(tmp) / "model", metadata={"fusionguard_sha256": actual})
        mlflow.log_artifacts(str(model_dir), artifact_path="model")
        for file in REPORT_FILES:
            if (report_dir / file).is_file():
                mlflow.log_artifact(str(report_dir / file), artifact_path="gate_report")
        version = mlflow.register_model(f"runs:/{run.info.run_id}/model", name, tags=tags).version
    client.update_model_version(name, version, description=_description(report))
    registered = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/{version}/{MODEL_FILE}"))
    stored = hashlib.sha256(registered.read_bytes()).hexdigest()
    if stored != actual:
        raise CheckFailedError(
            f"{name} version {version} holds a model with sha256 {stored[:12]}…, not the gated {actual[:12]}…; "
            f"no alias was moved; delete that version and promote again"
        )
    if passed:
        client.set_registered_model_alias(name, alias, version)
    return MlflowPromotion(name, str(version), run.info.run_id, actual, outcome, alias if passed else None,
                           mlflow.get_tracking_uri(), tuple(problems))
