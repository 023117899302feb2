"""Tables and figures of an experiment directory, rebuilt from its stored files alone.

Sources (nothing else is read; no model is trained or scored):
    manifest.json                          grid entries -> run directory and model stem
    eval/<dataset>-s<seed>/per_query.csv   fusionguard.gate.evaluation's per-query results (NDCG, drops, entropy)
    eval/v1-s<seed>.csv                    per-query NDCG of the text-only V1
    runs/<run>/latency.json, attention.npy, train/train_log.jsonl, <key>.onnx (its contract)

Every row aggregates one grid entry over its seeds, with the run (seed) as the unit: a
hierarchical (seed, then query) bootstrap CI of each mean and of the difference to the reference
(paired by seed and query), the seed SD, an exact sign-flip test over the per-seed mean
differences (10 seeds cannot give p below 0.002), the escape share (runs with visual drop >= 10%)
with its exact binomial CI and Fisher's test against the reference, Holm across the rows of one
table for each test, and the paired effect size over seeds (`fusionguard.stats`). No test treats
the seeds as zero-variance (averaging each query over seeds and testing over queries would). The
"beats baseline" columns are computed from those p-values, never typed.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from fusionguard import stats
from fusionguard.errors import InvalidInputError

logger = logging.getLogger(__name__)

ALPHA = 0.05
ESCAPE_DROP = 0.10  # a run has escaped the collapse when its mean test visual ablation drop is >= 10%
MODALITIES = {"v1": "text only", "visual-only": "visual only"}


@dataclass
class ReportResult:
    out: Path
    tables: list[Path] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)
    main: pd.DataFrame | None = None

    def summary(self) -> str:
        lines = [f"report in {self.out}: {len(self.tables)} table files, {len(self.figures)} figure files"]
        if self.main is not None:
            cols = ["row", "modalities", "ndcg@10", "delta_ndcg@10", "p_holm", "beats_baseline", "visual_drop"]
            lines.append(self.main[[c for c in cols if c in self.main]].to_string(index=False, float_format=lambda x: f"{x:.4f}"))
        return "\n".join(lines)


def _load(out: Path) -> tuple[dict, pd.DataFrame]:
    manifest_path = out / "manifest.json"
    if not manifest_path.is_file():
        raise InvalidInputError(f"{out} holds no manifest.json; run `fusionguard experiment run --out {out}` first")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    frames = []
    for entry in manifest["entries"]:
        if entry["variant"] == "v1":
            path = out / "eval" / f"v1-s{entry['seed']}.csv"
        else:
            path = out / "eval" / f"{entry['dataset']}-s{entry['seed']}" / "per_query.csv"
        if not path.is_file():
            raise InvalidInputError(f"per-query results {path} are missing; rerun `fusionguard experiment run` to finish the grid")
        frame = pd.read_csv(path, dtype={"query_id": str, "model": str})  # a hex model id can be all digits
        frame = frame[frame["model"] == entry["model"]].copy()
        if frame.empty:
            raise InvalidInputError(f"{path} has no rows for model {entry['model']} ({entry['label']} seed {entry['seed']})")
        frame["label"], frame["seed"], frame["group"] = entry["label"], entry["seed"], entry["group"]
        frame["value"] = entry["value"]
        frames.append(frame)
    return manifest, pd.concat(frames, ignore_index=True)


def _matrix(data: pd.DataFrame, label: str, column: str) -> pd.DataFrame | None:
    """(seed x query) values of one row; None when the column is absent or all NaN."""
    rows = data[data["label"] == label]
    if column not in rows or rows[column].isna().all():
        return None
    return rows.pivot_table(index="seed", columns="query_id", values=column, aggfunc="mean", dropna=False)


def _seed_means(matrix: pd.DataFrame) -> pd.Series:
    return matrix.mean(axis=1, skipna=True)  # per seed: mean over its queries


def _sd(values: pd.Series) -> float:
    return float(values.std(ddof=1)) if values.notna().sum() > 1 else np.nan


def _table(manifest: dict, data: pd.DataFrame, labels: list[str], reference: str, out: Path) -> pd.DataFrame:
    """One row per grid entry. The run (seed) is the unit: hierarchical (seed, then query)
    bootstrap CIs, the seed-level exact sign-flip test on per-seed mean differences paired by
    seed, seed SDs, and the escape share (runs with mean visual drop >= ESCAPE_DROP) with its exact
    binomial CI and Fisher's test against the reference. Holm across the rows for each test."""
    n_res = int(manifest["grid"]["eval"]["n_resamples"])
    ref = {c: _matrix(data, reference, c) for c in ("ndcg", "visual_drop")}
    ref_escapes = None
    if ref["visual_drop"] is not None:
        ref_means = _seed_means(ref["visual_drop"])
        ref_escapes = (int((ref_means >= ESCAPE_DROP).sum()), int(ref_means.notna().sum()))
    records, raw_p = [], {"ndcg": [], "visual_drop": [], "escape": []}
    for label in labels:
        entries = [e for e in manifest["entries"] if e["label"] == label]
        variant = entries[0]["variant"]
        rec: dict[str, object] = {"row": label, "modalities": MODALITIES.get(variant, "fused"), "seeds": len(entries)}
        for col, name in (("ndcg", "ndcg@10"), ("visual_drop", "visual_drop"), ("attention_entropy", "attention_entropy")):
            m = _matrix(data, label, col)
            rec[name], rec[f"{name}_low"], rec[f"{name}_high"], rec[f"{name}_seed_sd"] = (np.nan,) * 4
            if m is None:
                continue
            rec[f"{name}_seed_sd"] = _sd(_seed_means(m))
            if m.shape[0] > 1:
                iv = stats.hierarchical_bootstrap_ci(m.to_numpy(), settings=stats.BootstrapSettings(n_resamples=n_res))
                rec[name], rec[f"{name}_low"], rec[f"{name}_high"] = iv.estimate, iv.low, iv.high
            else:  # one seed: a point estimate, no interval (seed variance unknown)
                rec[name] = float(_seed_means(m).iloc[0])
            if col == "visual_drop":
                means = _seed_means(m)
                k, n = int((means >= ESCAPE_DROP).sum()), int(means.notna().sum())
                ci = stats.binomial_ci(k, n)
                rec["escapes"], rec["escape_runs"], rec["escape"], rec["escape_low"], rec["escape_high"] = k, n, ci.estimate, ci.low, ci.high
                if label != reference and ref_escapes is not None:
                    rec["p_escape"] = stats.fisher_exact(k, n, *ref_escapes)
                    raw_p["escape"].append(len(records))
            if col in ref and ref[col] is not None and label != reference:
                a, b = m.align(ref[col], join="inner")  # paired by seed and query
                diff = (a - b).dropna(how="all")
                seed_diff = _seed_means(diff).dropna()
                if len(seed_diff) < 2:
                    continue
                ci = stats.hierarchical_bootstrap_ci(diff.to_numpy(), settings=stats.BootstrapSettings(n_resamples=n_res))
                rec[f"delta_{name}"], rec[f"delta_{name}_low"], rec[f"delta_{name}_high"] = ci.estimate, ci.low, ci.high
                rec[f"delta_{name}_seed_sd"] = _sd(seed_diff)
                rec[f"p_{col}"] = stats.seed_level_test(seed_diff.to_numpy(), seed=0)  # stats.SEED_TEST_RESAMPLES sign flips
                rec[f"effect_{col}"] = stats.paired_effect_size(seed_diff.to_numpy())
                raw_p[col].append(len(records))
        lat = [json.loads((out / e["run_dir"] / "latency.json").read_text(encoding="utf-8"))["median_ms"] for e in entries]
        rec["latency_ms"] = float(np.median(lat))
        records.append(rec)
    frame = pd.DataFrame.from_records(records)
    for col in ("ndcg", "visual_drop", "escape"):
        if f"p_{col}" not in frame:
            frame[f"p_{col}"] = np.nan
        frame[f"p_holm_{col}"] = np.nan
        if raw_p[col]:
            frame.loc[raw_p[col], f"p_holm_{col}"] = stats.holm(frame.loc[raw_p[col], f"p_{col}"].to_numpy(dtype=float))
    for col, beats, word in (("ndcg", "beats_baseline", "NDCG"), ("visual_drop", "uses_visual_more", "visual drop")):
        frame[beats] = "reference"
        idx = raw_p[col]
        if idx:
            adjusted = frame.loc[idx, f"p_holm_{col}"].to_numpy(dtype=float)
            delta = frame.loc[idx, f"delta_{'ndcg@10' if col == 'ndcg' else col}"].to_numpy(dtype=float)
            frame.loc[idx, beats] = np.where(adjusted >= ALPHA, "no (n.s.)", np.where(delta > 0, "yes", f"no (lower {word})"))
        missing = [i for i in range(len(frame)) if i not in idx and frame.loc[i, "row"] != reference]
        frame.loc[missing, beats] = "n/a"
    return frame.rename(columns={"p_holm_ndcg": "p_holm", "p_ndcg": "p", "effect_ndcg": "effect_size"})


def _fmt_ci(row: pd.Series, name: str, digits: int = 3, tex: bool = False) -> str:
    est = row.get(name)
    if est is None or not np.isfinite(est):
        return "--" if tex else "–"
    lo, hi = row[f"{name}_low"], row[f"{name}_high"]
    if tex:
        return f"{est:.{digits}f} {{\\scriptsize [{lo:.{digits}f}, {hi:.{digits}f}]}}"
    return f"{est:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def _fmt(x, spec: str = ".3g", tex: bool = False) -> str:
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "--" if tex else "–"
    return format(x, spec)


COLUMNS = ["row", "modalities", "seeds", "NDCG@10 [95% CI]", "seed SD", "ΔNDCG@10 vs ref [95% CI]", "p (Holm)", "effect size",
           "beats baseline (Holm p<0.05)", "visual drop [95% CI]", "seed SD", "visual drop > ref (Holm p<0.05)",
           "escaped [95% CI]", "p escape (Fisher, Holm)", "attn. entropy", "ORT latency (ms)"]


def _cells(row: pd.Series, tex: bool) -> list[str]:
    esc = (lambda s: s.replace("_", r"\_").replace("λ", r"$\lambda$")) if tex else (lambda s: s)
    escaped = "--" if tex else "–"
    if np.isfinite(row.get("escape", np.nan)):
        escaped = f"{int(row['escapes'])}/{int(row['escape_runs'])} [{row['escape_low']:.2f}, {row['escape_high']:.2f}]"
    return [esc(str(row["row"])), str(row["modalities"]), str(row["seeds"]), _fmt_ci(row, "ndcg@10", 4, tex),
            _fmt(row.get("ndcg@10_seed_sd"), ".4f", tex), _fmt_ci(row, "delta_ndcg@10", 4, tex),
            _fmt(row.get("p_holm"), tex=tex), _fmt(row.get("effect_size"), ".2f", tex), str(row["beats_baseline"]),
            _fmt_ci(row, "visual_drop", 3, tex), _fmt(row.get("visual_drop_seed_sd"), ".3f", tex), str(row["uses_visual_more"]),
            escaped, _fmt(row.get("p_holm_escape"), tex=tex), _fmt_ci(row, "attention_entropy", 3, tex),
            _fmt(row["latency_ms"], ".3f", tex)]


def write_table(frame: pd.DataFrame, stem: Path, caption: str) -> list[Path]:
    """CSV (every number), Markdown and LaTeX (booktabs) of one table."""
    paths = [stem.with_suffix(".csv"), stem.with_suffix(".md"), stem.with_suffix(".tex")]
    frame.to_csv(paths[0], index=False)
    md = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    md += ["| " + " | ".join(_cells(r, False)) + " |" for _, r in frame.iterrows()]
    paths[1].write_text("\n".join([f"**{caption}**", "", *md, ""]), encoding="utf-8")
    head = [c.replace("%", r"\%").replace("Δ", r"$\Delta$").replace("<", "$<$").replace(">", "$>$") for c in COLUMNS]
    tex = [r"\begin{table}[t]", r"\centering", r"\small", f"\\caption{{{caption.replace('%', chr(92) + '%').replace('_', chr(92) + '_')}}}",
           r"\begin{tabular}{ll" + "r" * (len(COLUMNS) - 2) + "}", r"\toprule", " & ".join(head) + r" \\", r"\midrule"]
    tex += [" & ".join(_cells(r, True)) + r" \\" for _, r in frame.iterrows()]
    tex += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    paths[2].write_text("\n".join(tex), encoding="utf-8")
    return paths


def build_report(out: str | Path) -> ReportResult:
    """Rebuild every table and figure of the experiment in `out` from its stored result files."""
    from fusionguard.recipes.experiment_figures import draw_figures

    out = Path(out)
    manifest, data = _load(out)
    grid = manifest["grid"]
    reference = grid["reference"]
    report_dir = out / "report"
    (report_dir / "tables").mkdir(parents=True, exist_ok=True)
    result = ReportResult(report_dir)
    n_seeds, n_res = len(grid["seeds"]), grid["eval"]["n_resamples"]
    note = (f"{grid['track']} track, scale {grid['scale']}, {n_seeds} seeds; 95% hierarchical (seed, then query) bootstrap CIs "
            f"({n_res} resamples), seed SD, exact seed-level sign-flip p-values vs {reference} paired by seed, escape = visual "
            f"drop >= {ESCAPE_DROP:.0%} with exact binomial CI and Fisher's test vs {reference}; Holm within the table")
    tables = {}
    for group, title in (("main", "Main results"), ("lambda", "Ablation: lambda_visual"), ("depth", "Ablation: fusion depth")):
        labels = list(dict.fromkeys(e["label"] for e in manifest["entries"] if e["group"] == group))
        if not labels:
            continue
        if group != "main":
            labels = [reference, *labels]
        frame = _table(manifest, data, labels, reference, out)
        tables[group] = frame
        result.tables += write_table(frame, report_dir / "tables" / group, f"{title} ({note}).")
    result.main = tables.get("main")
    result.figures = draw_figures(out, manifest, tables, report_dir / "figures")
    return result
