"""The collapse protocol's grid (training/configs/protocol.toml): run it, or report it.

Run:    .venv/bin/python -m benchmarks.collapse run [--variants baseline] [--generator-seeds 0 1 2]
            [--training-seeds 0 ... 9] [--long] [--work DIR] [--results FILE]
Report: .venv/bin/python -m benchmarks.collapse report [--results FILE] [--protocol TOML ...] [--section NAME]
Every mechanism tried, one table: .venv/bin/python -m benchmarks.collapse pilots-summary

`run` appends one JSON record per run to benchmarks/results/collapse.jsonl (default) and skips
runs the file already holds, so a grid can be finished over several sessions. `report` rebuilds
the tables (Markdown into docs/training.md between the COLLAPSE:<section> markers, and LaTeX next
to the results) from that file alone. Seeds default to the protocol's; narrow them to run a part.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

from fusionguard.training.synth import SynthConfig
from fusionguard.training.protocol import CONTROLS, load_protocol, prepare, read_records, run_cell, summarize

ROOT = Path(__file__).resolve().parent.parent
PROTOCOL = ROOT / "training" / "configs" / "protocol.toml"
RESULTS = ROOT / "benchmarks" / "results" / "collapse.jsonl"
DOC = ROOT / "docs" / "training.md"
EXPERIMENTS_DOC = ROOT / "docs" / "experiments.md"
MARKERS = "<!-- COLLAPSE:{}:BEGIN -->", "<!-- COLLAPSE:{}:END -->"


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def _ci(row: dict, name: str, fmt=lambda x: f"{x:.4f}") -> str:
    if row.get(f"{name}_low") is None:
        return fmt(row[name]) if row.get(name) is not None else "–"
    return f"{fmt(row[name])} [{fmt(row[f'{name}_low'])}, {fmt(row[f'{name}_high'])}]"


def _p(x) -> str:
    return "–" if x is None else f"{x:.3g}"


COLUMNS = ["variant", "runs", "visual drop < 1%", "Spearman V1 ≥ 0.99", "collapsed (both) [95% CI]", "escaped [95% CI]", "p escape vs ref (Fisher, Holm)",
           "test NDCG@10 [95% CI]", "seed SD", "ΔNDCG@10 vs ref [95% CI]", "p (seed-level, Holm)",
           "visual drop [95% CI]", "seed SD (pp)", "p visual drop (seed-level, Holm)", "Spearman V1 (seed SD)",
           "median epoch of first val escape", "epochs run", "s/run on 2 cores (median, runs)"]


def _cells(r: dict) -> list[str]:
    share = lambda name, k: f"{r[k]}/{r['runs']} = {_pct(r[f'{name}_share'])} [{_pct(r[f'{name}_low'])}, {_pct(r[f'{name}_high'])}]"  # noqa: E731
    sd = lambda x, pct=False: "–" if x is None else (f"{100 * x:.2f}" if pct else f"{x:.4f}")  # noqa: E731
    return [r["variant"], str(r["runs"]), f"{r['drop_below']}/{r['runs']}", f"{r['spearman_above']}/{r['runs']}", share("collapse", "collapsed"), share("escape", "escaped"), _p(r.get("p_holm_escape")),
            _ci({**r, "ndcg": r["ndcg_mean"]}, "ndcg"), sd(r["ndcg_seed_sd"]),
            _ci(r, "delta_ndcg") if "delta_ndcg" in r else "–", _p(r.get("p_holm_ndcg")),
            _ci({**r, "visual_drop": r["visual_drop_mean"]}, "visual_drop", _pct), sd(r["visual_drop_seed_sd"], True),
            _p(r.get("p_holm_visual_drop")), f"{r['spearman_v1_mean']:.4f} ({sd(r['spearman_v1_seed_sd'])})",
            "–" if r["epochs_to_escape_median"] is None else f"{r['epochs_to_escape_median']:.0f}",
            f"{r['epochs_run_mean']:.1f}",
            "–" if r["seconds_2core_median"] is None else f"{r['seconds_2core_median']:.0f} ({r['runs_2core']})"]


def markdown(rows: list[dict], title: str) -> str:
    lines = [f"**{title}**", "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in rows]
    return "\n".join(lines)


def latex(rows: list[dict], title: str) -> str:
    esc = lambda s: s.replace("%", r"\%").replace("_", r"\_").replace("Δ", r"$\Delta$").replace("≥", r"$\geq$")  # noqa: E731
    out = [r"\begin{table}[t]", r"\centering", r"\scriptsize", f"\\caption{{{esc(title)}}}",
           r"\begin{tabular}{l" + "r" * (len(COLUMNS) - 1) + "}", r"\toprule", " & ".join(esc(c) for c in COLUMNS) + r" \\", r"\midrule"]
    out += [" & ".join(esc(c) for c in _cells(r)) + r" \\" for r in rows]
    return "\n".join(out + [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""])


def phase_figure(results: Path, protocol_paths: list[Path], path: Path) -> Path:
    """Every stored run as a point (test visual drop, Spearman with V1), one marker per protocol
    and variant, with the collapse box and the escape line: where each recipe lands."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    markers = "os^vD<>pX*"
    i = 0
    criteria = None
    for protocol_path in protocol_paths:
        protocol = load_protocol(protocol_path)
        criteria = protocol.criteria
        records = [r for r in read_records(results) if r["protocol"] == protocol.name]
        for (variant, long) in dict.fromkeys((r["variant"], bool(r.get("long"))) for r in records):
            pts = [r for r in records if r["variant"] == variant and bool(r.get("long")) == long]
            ax.scatter([100 * r["visual_drop"] for r in pts], [r["spearman_v1"] for r in pts], marker=markers[i % len(markers)],
                       alpha=0.75, label=f"{protocol.name}: {variant}{' (long)' if long else ''} ({len(pts)})")
            i += 1
    if criteria is not None:
        ax.axvspan(ax.get_xlim()[0], 100 * criteria.collapse_max_visual_drop, ymin=0, ymax=1, color="0.9", zorder=0)
        ax.axhline(criteria.collapse_min_spearman_v1, color="0.4", ls="--", lw=1, label="collapse: Spearman ≥ 0.99 and drop < 1%")
        ax.axvline(100 * criteria.escape_min_visual_drop, color="0.4", ls=":", lw=1, label="escape: drop ≥ 10%")
    ax.set_xlabel("test visual ablation drop (%)")
    ax.set_ylabel("Spearman with V1 (mean per query)")
    ax.legend(fontsize=6, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def runs_table(records: list[dict]) -> str:
    """One row per stored run (a pilot's few cells, each readable on its own)."""
    lines = ["| variant | generator seed | training seed | budget | test NDCG@10 | visual drop | Spearman V1 | collapsed | escaped | "
             "best epoch / epochs run | max val visual drop | V1 test NDCG@10 | s |", "|" + "---|" * 13]
    for r in sorted(records, key=lambda r: (r["variant"], bool(r.get("long")), r["generator_seed"], r["training_seed"])):
        lines.append(f"| {r['variant']} | {r['generator_seed']} | {r['training_seed']} | {'long' if r.get('long') else 'standard'} | {r['ndcg']:.4f} | "
                     f"{_pct(r['visual_drop'])} | {r['spearman_v1']:.4f} | {'yes' if r['collapsed'] else 'no'} | "
                     f"{'yes' if r['escaped'] else 'no'} | {r['best_epoch']} / {r['epochs_run']} | {_pct(r['max_val_visual_drop'])} | "
                     f"{r['v1_test_ndcg']:.4f} | {r['seconds']:.0f} |")
    return "\n".join(lines)


def report(results: Path, protocol_paths: list[Path], section: str = "main", write_doc: bool = True, per_run: bool = False) -> str:
    figure = phase_figure(results, protocol_paths, results.with_name(f"{results.stem}_{section}_phase.png"))
    parts = []
    for protocol_path in protocol_paths:
        parts += _protocol_tables(results, protocol_path, targets=section == "main")
        if per_run:
            name = load_protocol(protocol_path).name
            kept = [r for r in read_records(results) if r["protocol"] == name]
            if kept:
                parts.append(f"Every run of '{name}':\n\n" + runs_table(kept))
    shown = " ".join(str(p.relative_to(ROOT) if p.resolve().is_relative_to(ROOT) else p) for p in protocol_paths)
    res = results.relative_to(ROOT) if results.is_relative_to(ROOT) else results
    cmd = (f"Regenerate: `.venv/bin/python -m benchmarks.collapse report --results {res} --protocol {shown} --section {section}"
           f"{' --per-run' if per_run else ''}`")
    rel = figure.relative_to(ROOT) if figure.is_relative_to(ROOT) else figure
    parts.append(f"![every run: visual drop vs Spearman with V1](../{rel})")
    text = "\n\n".join(parts + [cmd]) if parts else f"No runs stored yet.\n\n{cmd}"
    if write_doc:
        _fill(DOC, section, text)
        targets = [part for part in parts if part.startswith("**Research-plan targets")]
        if section == "main" and targets:  # docs/experiments.md carries a copy of the targets table
            _fill(EXPERIMENTS_DOC, "targets", "\n\n".join([*targets, cmd]))
    return text


def _fill(doc: Path, section: str, text: str) -> None:
    """Replace what stands between a doc's COLLAPSE:<section> markers (nothing when it has none)."""
    begin, end = (m.format(section) for m in MARKERS)
    if not doc.is_file():
        return
    content = doc.read_text(encoding="utf-8")
    if begin in content and end in content:
        head, rest = content.split(begin, 1)
        doc.write_text(head + begin + "\n" + text + "\n" + end + rest.split(end, 1)[1], encoding="utf-8")


PILOT_ROUNDS = (  # (round, results file): every mechanism tried for the protocol, in the order tried
    ("1", ROOT / "benchmarks" / "results" / "collapse_pilot.jsonl"),
    ("2", ROOT / "benchmarks" / "results" / "collapse_pilot2.jsonl"),
    ("3", ROOT / "benchmarks" / "results" / "collapse_pilot3.jsonl"),
    ("4", ROOT / "benchmarks" / "results" / "collapse_pilot4.jsonl"),
    ("protocol grid", RESULTS),
)


def pilots_summary(rounds=PILOT_ROUNDS, write_doc: bool = True) -> str:
    """One row per (round, mechanism, variant, budget) over every stored pilot run and the
    protocol grid's baseline runs: how often each half of the collapse criterion held. Each
    round had its own qualifying rule (training/configs/pilot/README.md); this table only counts."""
    from fusionguard.stats import binomial_ci

    groups: dict[tuple, list[dict]] = {}
    for name, path in rounds:
        for r in read_records(path):
            if name == "protocol grid" and r["variant"] != "baseline":
                continue  # the mitigations' rows are in "Under the protocol"
            groups.setdefault((name, r["protocol"], r["variant"], bool(r.get("long"))), []).append(r)
    lines = ["| round | mechanism (protocol) | variant | budget | runs | visual drop < 1% | Spearman V1 ≥ 0.99 | "
             "collapsed (both) [95% CI] | escaped (drop ≥ 10%) | visual drop, min to max | Spearman V1, min to max | "
             "test NDCG@10 (mean) |", "|" + "---|" * 12]
    order = {name: i for i, (name, _) in enumerate(rounds)}
    for (name, protocol, variant, long), recs in sorted(groups.items(), key=lambda kv: (order[kv[0][0]], *kv[0][1:])):
        n = len(recs)
        drops = [r["visual_drop"] for r in recs]
        rhos = [r["spearman_v1"] for r in recs]
        k = sum(bool(r["collapsed"]) for r in recs)
        ci = binomial_ci(k, n)
        lines.append(
            f"| {name} | {protocol} | {variant} | {'long' if long else 'standard'} | {n} | "
            f"{sum(d < 0.01 for d in drops)}/{n} | {sum(x >= 0.99 for x in rhos)}/{n} | "
            f"{k}/{n} [{_pct(ci.low)}, {_pct(ci.high)}] | {sum(bool(r['escaped']) for r in recs)}/{n} | "
            f"{_pct(min(drops))} to {_pct(max(drops))} | {min(rhos):.3f} to {max(rhos):.3f} | "
            f"{np.mean([r['ndcg'] for r in recs]):.4f} |")
    files = ", ".join(f"`{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}`" for _, path in rounds)
    text = ("\n".join(lines) + f"\n\nFrom {files} (the protocol grid: its baseline runs only; the "
            "criteria are each record's own protocol's). Regenerate: `.venv/bin/python -m benchmarks.collapse pilots-summary`")
    if write_doc:
        _fill(DOC, "pilots-summary", text)
    return text


TARGETS = (  # the research plan's targets: (name, target, stretch)
    ("visual ablation drop (mean over runs)", 0.10, 0.15),
    ("NDCG@10 gain over the baseline (relative, paired by run)", 0.02, 0.05),
    ("significance of the NDCG@10 gain (seed-level test, Holm)", 0.05, 0.001),
)


def targets_table(rows: list[dict], protocol) -> str:
    """Which variants reach each of the research plan's targets under the protocol."""
    measured = [r for r in rows if r["variant"] != protocol.reference and r["variant"] not in CONTROLS]
    base = next((r for r in rows if r["variant"] == protocol.reference), None)
    missing = [v for v in protocol.variants if v != protocol.reference and v not in {r["variant"] for r in measured}]

    def reach(index: int, level: float) -> list[str]:
        out = []
        for r in measured:
            if index == 0:
                ok = r["visual_drop_mean"] >= level
            elif base is None or "delta_ndcg" not in r:
                ok = False
            elif index == 1:
                ok = r["delta_ndcg"] / base["ndcg_mean"] >= level
            else:
                ok = r.get("delta_ndcg", 0) > 0 and r.get("p_holm_ndcg", 1.0) < level
            if ok:
                out.append(r["variant"])
        return out

    lines = ["| target | level | variants that reach it | stretch | variants that reach it |", "|---|---|---|---|---|"]
    for i, (name, target, stretch) in enumerate(TARGETS):
        fmt = (lambda x: f"p < {x:g}") if i == 2 else (lambda x: f"≥ {100 * x:g}%")
        lines.append(f"| {name} | {fmt(target)} | {', '.join(reach(i, target)) or 'none'} | {fmt(stretch)} | "
                     f"{', '.join(reach(i, stretch)) or 'none'} |")
    if missing:
        lines.append("")
        lines.append(f"Not yet measured under the protocol: {', '.join(missing)}.")
    return "\n".join(lines)


EVIDENCE_EPOCHS = (0, 2, 5, 10, 19, 49, 99)


def evidence_table(records: list[dict], variant: str) -> str:
    """Per-epoch evidence of one variant, mean over its runs (runs that stopped earlier drop out):
    val NDCG@10 and visual drop, per-modality gradient norms, and per-head visual attention mass
    and normalised entropy (range over the heads of the run-mean)."""
    runs = [r for r in records if r["variant"] == variant]
    lines = [f"Per-epoch evidence, `{variant}`{' (long budget)' if runs and runs[0].get('long') else ''}: mean over the runs "
             "still training at that epoch; heads: min–max over the heads of the run-mean.", "",
             "| epoch | runs | val NDCG@10 | val visual drop | grad norm text | grad norm visual | visual attention mass per head | attention entropy per head |",
             "|---|---|---|---|---|---|---|---|"]
    for epoch in EVIDENCE_EPOCHS:
        hs = [h for r in runs for h in r["history"] if h["epoch"] == epoch]
        if not hs:
            continue
        mean = lambda key: float(np.mean([h[key] for h in hs if h.get(key) is not None]))  # noqa: E731
        heads = lambda key: np.mean([h[key] for h in hs], axis=0) if all(h.get(key) for h in hs) else None  # noqa: E731
        mass, ent = heads("val_visual_attention_mass_per_head"), heads("val_attention_entropy_per_head")
        rng = lambda x: "–" if x is None else f"{x.min():.2f}–{x.max():.2f}"  # noqa: E731
        lines.append(f"| {epoch} | {len(hs)} | {mean('val_ndcg'):.4f} | {100 * mean('val_visual_drop'):.2f}% | "
                     f"{mean('grad_norm_text'):.3f} | {mean('grad_norm_visual'):.3f} | {rng(mass)} | {rng(ent)} |")
    return "\n".join(lines)


def _protocol_tables(results: Path, protocol_path: Path, targets: bool = True) -> list[str]:
    protocol = load_protocol(protocol_path)
    records = [r for r in read_records(results) if r["protocol"] == protocol.name]
    c = protocol.criteria
    parts = []
    for long, budget in ((False, protocol.train["optim"]), (True, {**protocol.train["optim"], **protocol.long})):
        rows = summarize(records, protocol, long=long)
        if not rows:
            continue
        title = (f"Protocol '{protocol.name}' ({protocol.mechanism}), budget max {budget['max_epochs']} epochs, no early stop before "
                 f"{budget['min_epochs']}, best-val checkpoint; collapsed = test visual drop < {c.collapse_max_visual_drop:.0%} and "
                 f"Spearman with V1 ≥ {c.collapse_min_spearman_v1}; escaped = visual drop ≥ {c.escape_min_visual_drop:.0%}. "
                 "Exact binomial CIs; hierarchical (run, then query) bootstrap CIs; seed SD over runs; "
                 "paired differences by (generator seed, training seed); Holm across variants.")
        parts.append(markdown(rows, title))
        kept = [r for r in records if bool(r.get("long", False)) == long]
        for variant in dict.fromkeys([protocol.reference, *CONTROLS]):
            if any(r["variant"] == variant for r in kept):
                parts.append(evidence_table(kept, variant))
        if targets and not long:
            parts.append(f"**Research-plan targets under protocol '{protocol.name}'**\n\n" + targets_table(rows, protocol))
        tex = results.with_name(f"{results.stem}_{protocol.name}{'_long' if long else ''}.tex")
        tex.write_text(latex(rows, title), encoding="utf-8")
    return parts


SWEEP_RESULTS = ROOT / "benchmarks" / "results" / "collapse_sweep.jsonl"


def sweep_protocol(protocol, strength: float):
    """The protocol with the generator's visual_strength set to `strength` (its own name, so its
    data, V1 and runs never mix with the benchmark point's)."""
    from dataclasses import replace

    return replace(protocol, name=f"{protocol.name}@visual_strength={strength:g}", data={**protocol.data, "visual_strength": strength})


def escape_by_budget(records: list[dict], budgets: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """For each budget B: (share of runs whose val visual drop reached `threshold` within their
    first B epochs, runs that count at B). A run that stopped (early stopping) before B without
    having escaped says nothing about B and is left out there (censored)."""
    first = [next((h["epoch"] for h in r["history"] if (h.get("val_visual_drop") or 0) >= threshold), None) for r in records]
    ran = [int(r["epochs_run"]) for r in records]
    share, count = np.full(len(budgets), np.nan), np.zeros(len(budgets), dtype=int)
    for i, b in enumerate(budgets):
        escaped = [f is not None and f < b for f in first]
        counted = [e or n >= b for e, n in zip(escaped, ran)]
        count[i] = sum(counted)
        if count[i]:
            share[i] = sum(e for e, c in zip(escaped, counted) if c) / count[i]
    return share, count


def sweep_figure(results: Path, protocol_path: Path, path: Path, main_results: Path | None = None) -> tuple[Path, str]:
    """The phase diagram: visual signal strength x training budget -> escape probability of the
    baseline (share of runs whose val visual drop reached the escape line within that many
    epochs; runs stopped earlier without escaping are censored), as a heat map, plus the table
    behind it. Runs: the sweep's own (protocol name '<name>@visual_strength=S') and the
    benchmark point's baseline runs (both budgets) from the protocol's results."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    protocol = load_protocol(protocol_path)
    threshold = protocol.criteria.escape_min_visual_drop
    records = [r for r in read_records(results) if r["protocol"].startswith(f"{protocol.name}@") and r["variant"] == protocol.reference]
    if main_results is not None:
        default = float(protocol.data.get("visual_strength", SynthConfig().visual_strength))
        records += [{**r, "visual_strength": default} for r in read_records(main_results)
                    if r["protocol"] == protocol.name and r["variant"] == protocol.reference]
    strengths = sorted({float(r["visual_strength"]) for r in records})
    budgets = np.arange(1, int(protocol.long.get("max_epochs", 100)) + 1)
    cells = [escape_by_budget([r for r in records if r["visual_strength"] == s], budgets, threshold) for s in strengths]
    fig, ax = plt.subplots(figsize=(6.4, 3.2))
    if strengths:
        grid = np.ma.masked_invalid(np.array([c[0] for c in cells]))
        im = ax.imshow(grid, aspect="auto", origin="lower", vmin=0, vmax=1, cmap="viridis", interpolation="nearest",
                       extent=(0.5, budgets[-1] + 0.5, -0.5, len(strengths) - 0.5))
        ax.set_facecolor("0.85")  # grey: no run trained that long
        ax.set_yticks(range(len(strengths)), [f"{s:g}" for s in strengths])
        fig.colorbar(im, ax=ax, label=f"P(val visual drop ≥ {threshold:.0%} within B epochs)")
    for budget in (protocol.train["optim"]["max_epochs"], protocol.long.get("max_epochs", 100)):
        ax.axvline(budget, color="w", ls="--", lw=1)
    ax.set_xlabel("training budget B (epochs)")
    ax.set_ylabel("visual signal strength")
    ax.set_title(f"baseline escape, protocol '{protocol.name}' (grey: no run that long)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    cols = [b for b in (10, 20, 30, 50, 100) if b <= budgets[-1]]
    lines = ["| visual strength | runs (50-epoch budget / 100 epochs) | " + " | ".join(f"escaped within {b} epochs (runs counted)" for b in cols)
             + " | test: collapsed / escaped (50-epoch budget) |", "|---|---|" + "---|" * len(cols) + "---|"]
    for s, (share, count) in zip(strengths, cells):
        runs = [r for r in records if r["visual_strength"] == s]
        std = [r for r in runs if not r.get("long")]
        cell = lambda b: "–" if count[b - 1] == 0 else f"{100 * share[b - 1]:.0f}% ({count[b - 1]})"  # noqa: E731
        lines.append(f"| {s:g} | {len(std)} / {len(runs) - len(std)} | " + " | ".join(cell(b) for b in cols)
                     + f" | {sum(r['collapsed'] for r in std)} / {sum(r['escaped'] for r in std)} of {len(std)} |")
    return path, "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run_p = sub.add_parser("run", help="Train the grid's missing runs.")
    run_p.add_argument("--variants", nargs="+", default=None, help=f"Protocol variants and/or controls {list(CONTROLS)}.")
    run_p.add_argument("--generator-seeds", type=int, nargs="+", default=None)
    run_p.add_argument("--training-seeds", type=int, nargs="+", default=None)
    run_p.add_argument("--long", action="store_true", help="The protocol's [long] budget (twice as long, no early stop).")
    run_p.add_argument("--work", type=Path, default=Path("/tmp/fusionguard-collapse"))
    run_p.add_argument("--jobs", type=int, default=1, help="Runs trained at a time, one process and one torch thread each.")
    run_p.add_argument("--visual-strength", type=float, default=None,
                       help="Sweep point: the generator's visual_strength (records go under '<protocol>@visual_strength=S').")
    sw_p = sub.add_parser("sweep-report", help="The phase diagram (visual strength x budget -> escape probability).")
    sw_p.add_argument("--protocol", type=Path, default=PROTOCOL)
    sw_p.add_argument("--results", type=Path, default=SWEEP_RESULTS)
    sw_p.add_argument("--main-results", type=Path, default=RESULTS, help="The protocol's own results (its long baseline runs: the benchmark point).")
    ps_p = sub.add_parser("pilots-summary", help="Every mechanism tried (pilot rounds and the protocol grid), one table.")
    ps_p.add_argument("--no-doc", action="store_true", help="Do not rewrite docs/training.md.")
    rep_p = sub.add_parser("report", help="Rebuild the tables from the stored records.")
    rep_p.add_argument("--no-doc", action="store_true", help="Do not rewrite docs/training.md.")
    rep_p.add_argument("--protocol", type=Path, nargs="+", default=[PROTOCOL])
    rep_p.add_argument("--section", default="main", help="Which COLLAPSE:<section> markers of docs/training.md to fill.")
    rep_p.add_argument("--per-run", action="store_true", help="Add a table with one row per stored run (pilots).")
    run_p.add_argument("--protocol", type=Path, default=PROTOCOL)
    for p in (run_p, rep_p):
        p.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.command == "sweep-report":
        results = args.results.resolve()
        fig, table = sweep_figure(results, args.protocol.resolve(), results.with_name(f"{results.stem}_phase.png"), args.main_results.resolve())
        print(table)
        print(f"\nfigure: {fig}")
        return
    if args.command == "pilots-summary":
        print(pilots_summary(write_doc=not args.no_doc))
        return
    if args.command == "report":
        print(report(args.results.resolve(), [p.resolve() for p in args.protocol], args.section, write_doc=not args.no_doc,
                     per_run=args.per_run))
        return
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    protocol = load_protocol(args.protocol)
    if args.visual_strength is not None:
        protocol = sweep_protocol(protocol, args.visual_strength)
    done = {(r["variant"], r["generator_seed"], r["training_seed"], bool(r.get("long")))
            for r in read_records(args.results) if r["protocol"] == protocol.name}
    variants = args.variants or [protocol.reference]
    # seed-major: a partial grid (or one cut short) still covers every generator seed and variant
    cells = [(variant, gen, seed) for seed in args.training_seeds or protocol.training_seeds
             for gen in args.generator_seeds or protocol.generator_seeds for variant in variants
             if (variant, gen, seed, args.long) not in done]
    for gen in sorted({gen for _, gen, _ in cells}):  # the data and the production V1 once, before any worker needs them
        prepare(protocol, gen, args.work)
    print(f"{len(cells)} runs to train ({len(done)} already in {args.results}), {args.jobs} at a time", flush=True)
    if args.jobs <= 1:
        records = (_cell(protocol, variant, gen, seed, args.work, args.long) for variant, gen, seed in cells)
        for rec in records:
            _store(args.results, rec)
        return
    import multiprocessing

    from concurrent.futures import ProcessPoolExecutor, as_completed

    # one torch thread per worker; each finished run is appended by this process alone
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_cell, protocol, variant, gen, seed, args.work, args.long) for variant, gen, seed in cells]
        for fut in as_completed(futures):
            _store(args.results, fut.result())


def _cell(protocol, variant: str, gen: int, seed: int, work: Path, long: bool) -> dict:  # noqa: ANN001
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    rec = run_cell(protocol, variant, gen, seed, work, long=long)
    rec["visual_strength"] = float(protocol.data.get("visual_strength", SynthConfig().visual_strength))
    return rec


def _store(results: Path, rec: dict) -> None:
    results.parent.mkdir(parents=True, exist_ok=True)
    with results.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(rec) + "\n")
    print(f"{rec['variant']} g{rec['generator_seed']} s{rec['training_seed']}{' long' if rec['long'] else ''}: NDCG@10 "
          f"{rec['ndcg']:.4f} visual drop {100 * rec['visual_drop']:.2f}% spearman(V1) {rec['spearman_v1']:.4f} collapsed "
          f"{rec['collapsed']} escaped {rec['escaped']} best epoch {rec['best_epoch']}/{rec['epochs_run']} {rec['seconds']:.0f} s",
          flush=True)

if __name__ == "__main__":
    main()
