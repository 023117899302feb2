"""Offline evaluation: one table of every model's measures with CIs, for the paper.

`evaluate` scores each model once (every pass in one batched `Scorer` call, streamed in whole-query
batches with bounded memory, as the gate does)
and returns an `EvalResult`: one `EvalRow` per model and a per-query frame that every number in
the table traces to. p-values compare each model with the first (paired sign-flip test on
per-query NDCG@k) and are Holm-corrected across models; effect sizes are paired (mean Δ / sd Δ).
`write_eval` writes the table as CSV, Markdown and LaTeX (booktabs) plus the per-query file.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from fusionguard import metrics, stats
from fusionguard.source import dataset_sha256
from fusionguard.validation import ensure_valid
from fusionguard.errors import InvalidInputError
from fusionguard.scorer import Scorer
from fusionguard.streaming import UnsortedDataError, check_grouped

from fusionguard.gate.checks import attention_vectors, fmt
from fusionguard.gate.measures import ModelMeasures, interval, paired_interval
from fusionguard.gate.engine import EngineConfig, require_engine
from fusionguard.gate.streaming import read_ids, stream_baseline, stream_measures
from fusionguard.gate.policy import Policy, load_policy

logger = logging.getLogger(__name__)


@dataclass
class EvalRow:
    """One model's line of the table."""

    name: str  # file stem
    path: str
    sha256: str
    variant: str
    ndcg: stats.Interval
    visual_drop: stats.Interval
    text_drop: stats.Interval
    visual_share: stats.Interval
    attention_mass: stats.Interval | None
    attention_entropy: stats.Interval | None
    spearman_vs_baseline: stats.Interval | None
    ndcg_diff_vs_first: stats.Interval | None  # None for the first model
    p_value: float | None  # sign-flip test of the NDCG difference vs the first model
    p_holm: float | None  # Holm-corrected across the models after the first
    effect_size: float | None


@dataclass
class EvalResult:
    """The evaluation table and its per-query source."""

    rows: list[EvalRow]
    per_query: pd.DataFrame  # one row per (model, query)
    k: int
    data_sha256: str
    baseline: str | None
    n_queries: int
    policy: Policy = field(repr=False, default_factory=Policy)

    def table(self) -> pd.DataFrame:
        """The table with estimate / low / high columns per measure."""
        records = []
        for r in self.rows:
            rec: dict[str, object] = {"model": r.name, "variant": r.variant}
            for key, iv in _measures(r, self.k).items():
                rec[key] = None if iv is None else iv.estimate
                rec[f"{key}_low"] = None if iv is None else iv.low
                rec[f"{key}_high"] = None if iv is None else iv.high
            rec.update({"p_value": r.p_value, "p_holm": r.p_holm, "effect_size": r.effect_size, "sha256": r.sha256})
            records.append(rec)
        return pd.DataFrame.from_records(records)


def _measures(r: EvalRow, k: int) -> dict[str, stats.Interval | None]:
    return {
        f"ndcg@{k}": r.ndcg,
        "visual_drop": r.visual_drop,
        "text_drop": r.text_drop,
        "visual_share": r.visual_share,
        "attention_mass": r.attention_mass,
        "attention_entropy": r.attention_entropy,
        "spearman_vs_baseline": r.spearman_vs_baseline,
        f"delta_ndcg@{k}": r.ndcg_diff_vs_first,
    }


def evaluate(
    models: Sequence[str | Path],
    data: str | Path,
    *,
    baseline: str | Path | None = None,
    policy: Policy | str | Path | None = None,
    progress: bool = False,
    engine: EngineConfig | None = None,
) -> EvalResult:
    """Measure every model on the eval set.

    Args:
        models: fusion models (text + visual modalities); the first is the reference of the tests.
        data: the eval set (Parquet).
        baseline: optional text-only V1 for the Spearman column.
        policy: gate policy (k, masking, resamples, seed) as a Policy, TOML path or None.
        engine: local (default) or Ray (gate/engine.py). The eval set is streamed in whole-query
            batches (gate/streaming.py) and must have each query's rows contiguous.
    Raises:
        InvalidInputError / ContractError / DataValidationError: bad inputs (exit 2).
        EvaluationError: a model could not be scored (exit 3).
    """
    policy = policy if isinstance(policy, Policy) else load_policy(policy)
    require_engine(engine)
    if not models:
        raise InvalidInputError("no models given; pass --models A.onnx [B.onnx ...]")
    for path in [*models, *([baseline] if baseline else [])]:
        if not Path(path).is_file():
            raise InvalidInputError(f"model {path} does not exist; check the path")
    dev, threads = policy.scoring.device, policy.scoring.threads
    scorers = [Scorer(p, device=dev, threads=threads) for p in models]
    for s in scorers:
        missing = [m for m in ("text", "visual") if not s.contract.has_modality(m)]
        if missing:
            raise InvalidInputError(f"model {s.path} declares no {missing} inputs; eval measures fusion models only")
    base = Scorer(baseline, device=dev, threads=threads) if baseline else None
    ensure_valid(data, [s.contract for s in scorers] + ([base.contract] if base else []), max_label=policy.label_limit)
    grouping = check_grouped(data)
    if not grouping.grouped:
        raise UnsortedDataError(data, grouping.first_split, grouping.n_split)
    streamed = read_ids(data)
    groups = streamed.groups
    evaluable = groups.n_queries - groups.n_excluded
    if evaluable < policy.data.min_queries:
        raise InvalidInputError(
            f"the eval set {data} has {evaluable} evaluable queries; data.min_queries is {policy.data.min_queries}"
        )
    base_scores = stream_baseline(base, data, streamed, policy, engine=engine) if base is not None else None
    measured: list[ModelMeasures] = []
    for s in scorers:
        logger.info("scoring %s", s.path)
        measured.append(stream_measures(s, data, streamed, policy, engine=engine, progress=progress)[0])
    rows = _rows(scorers, measured, groups, base_scores, policy)
    per_query = _per_query(scorers, measured, groups, base_scores)
    return EvalResult(
        rows=rows, per_query=per_query, k=policy.metric.k, data_sha256=dataset_sha256(data),
        baseline=str(baseline) if baseline else None, n_queries=groups.n_queries, policy=policy,
    )


def _rows(scorers, measured, groups, base_scores, policy) -> list[EvalRow]:  # noqa: ANN001
    first = measured[0].ndcg
    raw_p = [stats.randomization_test(m.ndcg - first, policy.bootstrap.n_resamples, policy.seed) for m in measured[1:]]
    adjusted = list(stats.holm(np.array(raw_p))) if raw_p else []
    rows = []
    for i, (s, m) in enumerate(zip(scorers, measured)):
        spearman = None
        if base_scores is not None:
            spearman = interval(metrics.spearman_per_query(groups, m.scores, base_scores), policy)
        mass = entropy = None
        attention = attention_vectors(m, groups)
        if attention:
            mass = interval(attention["visual_mass"], policy)
            entropy = interval(attention["entropy"], policy)
        rows.append(
            EvalRow(
                name=Path(str(s.path)).stem,
                path=str(s.path),
                sha256=s.sha256,
                variant=s.contract.variant,
                ndcg=interval(m.ndcg, policy),
                visual_drop=interval(m.visual_drop, policy),
                text_drop=interval(m.text_drop, policy),
                visual_share=interval(m.visual_share_per_query, policy),
                attention_mass=mass,
                attention_entropy=entropy,
                spearman_vs_baseline=spearman,
                ndcg_diff_vs_first=None if i == 0 else paired_interval(m.ndcg, first, policy),
                p_value=None if i == 0 else float(raw_p[i - 1]),
                p_holm=None if i == 0 else float(adjusted[i - 1]),
                effect_size=None if i == 0 else float(stats.paired_effect_size(m.ndcg - first)),
            )
        )
    return rows


def _per_query(scorers, measured, groups, base_scores) -> pd.DataFrame:  # noqa: ANN001
    frames = []
    for s, m in zip(scorers, measured):
        frame = {
            "model": Path(str(s.path)).stem,
            "query_id": groups.query_ids.astype(str),
            "n_candidates": groups.sizes,
            "ndcg": m.ndcg,
            "ndcg_visual_masked": m.ndcg_visual_masked,
            "ndcg_text_masked": m.ndcg_text_masked,
            "visual_drop": m.visual_drop,
            "text_drop": m.text_drop,
            "visual_share": m.visual_share_per_query,
        }
        attention = attention_vectors(m, groups)
        if attention:
            frame["attention_mass"] = attention["visual_mass"]
            frame["attention_entropy"] = attention["entropy"]
        if base_scores is not None:
            frame["spearman_vs_baseline"] = metrics.spearman_per_query(groups, m.scores, base_scores)
        frames.append(pd.DataFrame(frame))
    return pd.concat(frames, ignore_index=True)


# ----- writers ------------------------------------------------------------------------------------

def _cell(iv: stats.Interval | None, digits: int = 3) -> str:
    return "–" if iv is None else fmt(iv, digits)


def _p(value: float | None) -> str:
    return "–" if value is None else f"{value:.3g}"


def markdown_table(result: EvalResult) -> str:
    k = result.k
    head = ["model", f"NDCG@{k}", "visual drop", "text drop", "visual share", "attn. mass", "attn. entropy",
            "Spearman vs V1", f"ΔNDCG@{k} vs first", "p", "p (Holm)", "effect size"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in result.rows:
        cells = [r.name, _cell(r.ndcg), _cell(r.visual_drop), _cell(r.text_drop), _cell(r.visual_share),
                 _cell(r.attention_mass), _cell(r.attention_entropy), _cell(r.spearman_vs_baseline),
                 _cell(r.ndcg_diff_vs_first, 4), _p(r.p_value), _p(r.p_holm),
                 "–" if r.effect_size is None else f"{r.effect_size:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    conf = result.policy.bootstrap.confidence
    lines += ["", f"{result.n_queries} queries; estimates with {conf:.0%} paired bootstrap CIs over queries "
              f"({result.policy.bootstrap.n_resamples} resamples, seed {result.policy.seed}); p-values: sign-flip test "
              "of per-query NDCG against the first model, Holm-corrected.", ""]
    return "\n".join(lines)


def _tex(text: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"), ("#", r"\#")):
        text = text.replace(a, b)
    return text


def _tex_cell(iv: stats.Interval | None, digits: int = 3) -> str:
    if iv is None:
        return "--"
    return f"{iv.estimate:.{digits}f} {{\\scriptsize [{iv.low:.{digits}f}, {iv.high:.{digits}f}]}}"


def latex_table(result: EvalResult) -> str:
    """A booktabs table (needs \\usepackage{booktabs})."""
    k = result.k
    head = ["Model", f"NDCG@{k}", "Visual drop", "Text drop", "Visual share", "Attn.\\ mass",
            "Spearman vs V1", f"$\\Delta$NDCG@{k}", "$p$ (Holm)", "$d$"]
    lines = [r"\begin{tabular}{l" + "r" * (len(head) - 1) + "}", r"\toprule", " & ".join(head) + r" \\", r"\midrule"]
    for r in result.rows:
        cells = [_tex(r.name), _tex_cell(r.ndcg), _tex_cell(r.visual_drop), _tex_cell(r.text_drop),
                 _tex_cell(r.visual_share), _tex_cell(r.attention_mass), _tex_cell(r.spearman_vs_baseline),
                 _tex_cell(r.ndcg_diff_vs_first, 4), "--" if r.p_holm is None else f"{r.p_holm:.3g}",
                 "--" if r.effect_size is None else f"{r.effect_size:.2f}"]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", ""]
    return "\n".join(lines)


def write_eval(result: EvalResult, out: str | Path) -> list[Path]:
    """Write table.csv, table.md, table.tex and per_query.csv into `out` (created)."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InvalidInputError(f"cannot create the output directory {out} ({err}); pick a writable --out") from None
    paths = [out / "table.csv", out / "table.md", out / "table.tex", out / "per_query.csv"]
    result.table().to_csv(paths[0], index=False)
    paths[1].write_text(markdown_table(result), encoding="utf-8")
    paths[2].write_text(latex_table(result), encoding="utf-8")
    result.per_query.to_csv(paths[3], index=False)
    return paths
