"""`run_gate`: the release gate from files to a verdict and a report directory.

Checks run in order: data, contract, visual ablation, integrity, quality, attention. An invalid
input (unreadable model, contract disagreeing with the data, invalid eval set) is recorded as an
``error`` of the data or contract check and gives exit 2; a check that cannot be evaluated gives
exit 3; any failed check gives exit 1. The reports are written in every case, so a CI job always
has something to attach. The gate fails closed: only exit 0 lets `promote` through.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from fusionguard import metrics
from fusionguard.source import data_location, dataset_sha256, is_uri
from fusionguard.errors import (
    EXIT_INVALID,
    EXIT_PASSED,
    EXIT_UNEVALUABLE,
    FusionGuardError,
    InvalidInputError,
)
from fusionguard.registry import MODEL_FILE, file_sha256, model_manifest
from fusionguard.scorer import Scorer
from fusionguard.streaming import UnsortedDataError, check_grouped
from fusionguard.validation import validate_dataset

from fusionguard.gate import checks
from fusionguard.gate.checks import CheckResult, GateOutcome, errored, skipped
from fusionguard.gate.engine import EngineConfig, require_engine
from fusionguard.gate.result import OUTCOME_BY_EXIT, GateResult, ModelInfo, exit_code
from fusionguard.gate.streaming import StreamedData, read_ids, stream_baseline, stream_measures
from fusionguard.gate.policy import Policy, load_policy

logger = logging.getLogger(__name__)

def _model_info(path: Path) -> ModelInfo:
    sha = file_sha256(path) if path.is_file() else None
    return ModelInfo(str(path.resolve()) if path.exists() else str(path), sha)


def _load_scorer(path: Path, sidecar: str | Path | None, policy: Policy, info: ModelInfo, role: str) -> Scorer:
    if not path.is_file():
        raise InvalidInputError(f"{role} model {path} does not exist; check --{role}")
    scorer = Scorer(path, sidecar=sidecar, device=policy.scoring.device, threads=policy.scoring.threads)
    info.sha256 = scorer.sha256
    info.variant = scorer.contract.variant
    info.provider = scorer.provider
    info.contract = scorer.contract.to_dict()
    try:
        info.files = model_manifest(path.resolve())
    except InvalidInputError as err:  # still gated; `promote` refuses a report without a manifest
        logger.warning("%s model %s: no file manifest recorded, so it cannot be promoted: %s", role, path, err)
    if info.files is not None and info.files[MODEL_FILE] != info.sha256:
        raise InvalidInputError(f"{role} model {path} changed while it was being loaded; run the gate again")
    return scorer


def run_gate(
    candidate: str | Path,
    data: str | Path,
    out: str | Path | None,
    *,
    baseline: str | Path | None = None,
    policy: Policy | str | Path | None = None,
    candidate_contract: str | Path | None = None,
    baseline_contract: str | Path | None = None,
    progress: bool = False,
    engine: EngineConfig | None = None,
) -> GateResult:
    """Run every check on `candidate` and write the reports to `out` (skipped when None).

    Args:
        candidate: the candidate ONNX model.
        data: the eval set (Parquet).
        out: report directory (created); None writes nothing.
        baseline: the baseline (V1) ONNX model; required unless `policy.baseline.required` is false.
        policy: a Policy, a TOML path, or None for the defaults.
        candidate_contract, baseline_contract: sidecar contracts for models without an embedded one.
        progress: show progress bars while scoring.
        engine: local (default; batches scored on one ONNX Runtime session per CPU) or Ray
            (gate/engine.py). Either way the eval set is streamed in whole-query batches
            (gate/streaming.py), so memory does not grow with its feature columns.
    Returns:
        GateResult; `exit_code` follows fusionguard/errors.py (0 passed, 1 blocked, 2 invalid input, 3 not evaluable).
    Raises:
        ConfigError / InvalidInputError: the policy is invalid, or no baseline was given while the
            policy requires one (nothing is written then).
    """
    if out is not None and Path(out).is_dir():
        # Fail closed: nothing an earlier run left in --out may pass for this run's result if it
        # stops early; the new reports are moved in only when it finishes (fusionguard.gate.report).
        from fusionguard.gate.report import clear_artefacts

        clear_artefacts(Path(out))
    policy = policy if isinstance(policy, Policy) else load_policy(policy)
    require_engine(engine)
    candidate, data = Path(candidate), data_location(data)  # a URI stays a string
    if baseline is None and policy.baseline.required:
        raise InvalidInputError(
            "no baseline given; pass --baseline V1.onnx, or set baseline.required = false in the policy "
            "to gate without the integrity and quality checks"
        )
    timings: dict[str, float] = {}
    started = time.perf_counter()
    cand_info = _model_info(candidate)
    base_info = _model_info(Path(baseline)) if baseline is not None else None
    data_info: dict[str, Any] = {"path": str(data) if is_uri(data) or not data.exists() else str(data.resolve())}
    results: dict[str, CheckResult] = {}
    result = GateResult(EXIT_PASSED, GateOutcome.PASSED, [], cand_info, base_info, data_info, policy, None, timings)

    # ----- load models (reported under "contract") and validate the data ---------------------
    load_problems: list[tuple[str, int]] = []
    cand_scorer = base_scorer = None
    try:
        cand_scorer = _load_scorer(candidate, candidate_contract, policy, cand_info, "candidate")
    except FusionGuardError as err:
        load_problems.append((f"candidate {candidate}: {err}", err.exit_code))
    if baseline is not None:
        try:
            base_scorer = _load_scorer(Path(baseline), baseline_contract, policy, base_info, "baseline")  # type: ignore[arg-type]
        except FusionGuardError as err:
            load_problems.append((f"baseline {baseline}: {err}", err.exit_code))
    contracts = [s.contract for s in (cand_scorer, base_scorer) if s is not None]
    timings["load_models"] = time.perf_counter() - started

    t0 = time.perf_counter()
    results["data"] = _data_check(data, contracts, policy, data_info)
    timings["validate_data"] = time.perf_counter() - t0
    results["contract"] = _contract_check(cand_scorer, base_scorer, load_problems)
    timings["check.data"], timings["check.contract"] = timings["validate_data"], timings["load_models"]

    streamed = None
    if results["data"].outcome == checks.PASSED and results["contract"].outcome == checks.PASSED:
        t0 = time.perf_counter()
        try:
            streamed = _load(data, policy, data_info)
        except FusionGuardError as err:
            results["data"] = errored("data", str(err), err.exit_code)
        timings["load_data"] = time.perf_counter() - t0
        timings["check.data"] += timings["load_data"]

    if streamed is None:
        blocker = "data" if results["data"].outcome != checks.PASSED else "contract"
        for name in checks.CHECK_NAMES[2:]:
            results[name] = skipped(name, f"not run: the {blocker} check did not pass")
    else:
        result.groups = streamed.groups
        _run_measured_checks(results, cand_scorer, base_scorer, data, streamed, policy, result, progress, engine)  # type: ignore[arg-type]

    result.checks = [results[name] for name in checks.CHECK_NAMES]
    result.exit_code = exit_code(result.checks)
    result.outcome = OUTCOME_BY_EXIT[result.exit_code]
    timings["total_checks"] = time.perf_counter() - started
    if out is not None:
        from fusionguard.gate.report import write_reports  # matplotlib and friends load only when reports are written

        t0 = time.perf_counter()
        result.report_dir = write_reports(result, Path(out))
        timings["reports"] = time.perf_counter() - t0
    return result


def _data_check(data: str | Path, contracts: list, policy: Policy, info: dict[str, Any]) -> CheckResult:
    # a Parquet file, a directory of Parquet files read as one, or a URI (fusionguard/source.py)
    if not is_uri(data) and not data.exists():
        return errored("data", f"eval set {data} does not exist; check --data", EXIT_INVALID)
    try:
        info["sha256"] = dataset_sha256(data)
    except InvalidInputError as err:  # a URI with nothing there, or a file that is not Parquet
        return errored("data", str(err), EXIT_INVALID)
    report = validate_dataset(data, contracts, max_label=policy.label_limit)
    info.update({"n_rows": report.n_rows, "n_queries": report.n_queries})
    if not report.ok:
        problems = list(report.problems)
        return CheckResult(
            "data", checks.ERROR, f"the eval set is invalid ({len(problems)} problem(s))",
            {"n_rows": report.n_rows, "n_queries": report.n_queries}, reasons=problems, exit_code=EXIT_INVALID,
        )
    return CheckResult(
        "data", checks.PASSED, f"{report.n_rows} rows, {report.n_queries} queries, valid for both contracts",
        {"n_rows": report.n_rows, "n_queries": report.n_queries},
    )


def _contract_check(cand: Scorer | None, base: Scorer | None, load_problems: list[tuple[str, int]]) -> CheckResult:
    if load_problems:
        code = max(c for _, c in load_problems)
        return CheckResult("contract", checks.ERROR, "a model could not be loaded", reasons=[p for p, _ in load_problems], exit_code=code)
    if cand is None:  # no load problem recorded, yet no scorer: treat as not loadable
        return CheckResult("contract", checks.ERROR, "the candidate could not be loaded", exit_code=EXIT_INVALID)
    problems = []
    for modality in ("visual", "text"):
        if not cand.contract.has_modality(modality):
            problems.append(
                f"the candidate declares no '{modality}' inputs (modalities: {dict(cand.contract.modalities)}); "
                "the gate checks fusion models: fix the contract or pass --candidate-contract"
            )
    if base is not None:
        for spec in base.contract.inputs:
            if spec.name in cand.contract.input_names and cand.contract.input(spec.name) != spec:
                problems.append(
                    f"input '{spec.name}' differs between baseline {spec} and candidate {cand.contract.input(spec.name)}; "
                    "both models read the same eval-set column"
                )
    if problems:
        return CheckResult("contract", checks.ERROR, "the candidate's contract is unusable", reasons=problems, exit_code=EXIT_INVALID)
    numbers = {
        "candidate_inputs": list(cand.contract.input_names),
        "candidate_modalities": {m: list(v) for m, v in cand.contract.modalities.items()},
        "baseline_inputs": list(base.contract.input_names) if base is not None else None,
    }
    return CheckResult("contract", checks.PASSED, "both models load with consistent contracts; the candidate declares text and visual inputs", numbers)


def _load(data: Path, policy: Policy, info: dict[str, Any]) -> StreamedData:
    grouping = check_grouped(data)
    if not grouping.grouped:
        raise UnsortedDataError(data, grouping.first_split, grouping.n_split)
    streamed = read_ids(data)
    groups = streamed.groups
    evaluable = groups.n_queries - groups.n_excluded
    info.update({"n_excluded_queries": groups.n_excluded, "n_evaluable_queries": evaluable})
    if evaluable < policy.data.min_queries:
        raise InvalidInputError(
            f"the eval set {data} has {evaluable} evaluable quer{'y' if evaluable == 1 else 'ies'} (with a relevant item); "
            f"the policy needs at least data.min_queries = {policy.data.min_queries} for confidence intervals to mean "
            "anything: use a larger eval set"
        )
    return streamed


def _run_measured_checks(
    results: dict[str, CheckResult],
    cand: Scorer,
    base: Scorer | None,
    data: Path,
    streamed: StreamedData,
    policy: Policy,
    result: GateResult,
    progress: bool,
    engine: EngineConfig | None,
) -> None:
    groups = streamed.groups
    t0 = time.perf_counter()
    try:
        m, result.features = stream_measures(cand, data, streamed, policy, engine=engine, features=True, progress=progress)
        base_scores = stream_baseline(base, data, streamed, policy, engine=engine) if base is not None else None
    except FusionGuardError as err:
        for name in checks.CHECK_NAMES[2:]:
            # Inputs were validated above, so a failure here is the model's: not evaluable (3).
            results[name] = errored(name, f"scoring failed: {err}", EXIT_UNEVALUABLE)
        return
    result.timings["scoring"] = time.perf_counter() - t0
    result.measures = m
    t0 = time.perf_counter()

    def guarded(name: str, fn, *args) -> CheckResult:  # noqa: ANN001
        started = time.perf_counter()
        try:
            return fn(*args)
        except FusionGuardError as err:
            return errored(name, str(err), EXIT_UNEVALUABLE)
        finally:  # the check's own time; scoring and the shared CIs count toward the suite's
            result.timings[f"check.{name}"] = time.perf_counter() - started

    base_ndcg = None
    if base_scores is not None:
        base_ndcg = metrics.ndcg_at_k(groups, base_scores, k=policy.metric.k, gain=policy.metric.gain)
        result.baseline_ndcg = base_ndcg
    # Every bootstrap CI of a mean in one call over a shared resample matrix (the checks reuse them).
    cis = checks.shared_intervals(m, groups, policy, base_scores, base_ndcg)
    results["visual_ablation"] = guarded("visual_ablation", checks.visual_ablation_check, m, policy, cis)
    if base_scores is None or base_ndcg is None:
        reason = "no baseline given and the policy sets baseline.required = false"
        results["integrity"] = skipped("integrity", reason)
        results["quality"] = skipped("quality", reason)
    else:
        results["integrity"] = guarded("integrity", checks.integrity_check, m, base_scores, groups, policy, cis)
        results["quality"] = guarded("quality", checks.quality_check, m, base_ndcg, policy, cis)
    has_attention = cand.contract.attention_output is not None
    results["attention"] = guarded("attention", checks.attention_check, m, groups, policy, has_attention, cis)
    result.timings["statistics"] = time.perf_counter() - t0
