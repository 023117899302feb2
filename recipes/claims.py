"""The product's claims on the emoji track: a collapsed fused model and a healthy one through the gate.

    python -m fusionguard.recipes.claims --cache /work/cache-emoji --out runs/emoji-claims \
        [--protocol training/configs/protocol.toml]

Steps (every training setting comes from the protocol TOML, none is tuned here):
    data       fusionguard.training.tracks.emoji_dataset.import_emoji (the track's family split; test rows
               are the test families only)
    v1         the production V1: text only, the protocol's [train] table, seed v1_seed
    collapsed  the protocol's mechanism, "warm_start_from_v1": the fused baseline V2 warm-started
               from that V1 (the protocol's [warm] init and fine-tuning optimiser), training seed 0
    healthy    the protocol's control, "baseline-scratch": the same fused baseline V2 trained from
               scratch under [train], training seed 0
    export     all three to ONNX (fusionguard.export.pipeline, parity verified against torch)
    gate       `fusionguard gate --candidate X --baseline v1.onnx --data test.parquet` for both
               candidates, default policy; exit codes and the checks' numbers go to claims.json

Which candidate is "collapsed" and which "healthy" is the protocol's label for the mechanism and
its control, fixed in advance; claims.json also records the protocol's own collapse verdict
(visual drop < collapse_max_visual_drop and Spearman with V1 >= collapse_min_spearman_v1, from the
gate's numbers), so a run where the mechanism did not collapse says so.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from fusionguard.errors import ConfigError

MECHANISMS = ("warm_start_from_v1",)
CANDIDATES = ("collapsed", "healthy")


def _gate(candidate: Path, v1: Path, data: Path, out: Path) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "fusionguard.cli", "gate", "--candidate", str(candidate), "--baseline", str(v1),
           "--data", str(data), "--out", str(out), "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    report = json.loads((out / "report.json").read_text(encoding="utf-8")) if (out / "report.json").is_file() else {}
    checks = {c["name"]: {"outcome": c["outcome"], "summary": c["summary"], "numbers": c.get("numbers", {})}
              for c in report.get("checks", [])}
    return {"exit_code": proc.returncode, "outcome": report.get("outcome"), "checks": checks,
            "command": "fusionguard " + " ".join(cmd[3:]), "stdout_tail": proc.stdout[-2000:] + proc.stderr[-2000:]}


def _number(checks: dict, check: str, *path: str) -> float | None:
    value: Any = checks.get(check, {}).get("numbers", {})
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value if isinstance(value, (int, float)) else None


def run_claims(cache: str | Path, out: str | Path, protocol_path: str | Path, epochs: int | None = None,
               training_seed: int = 0) -> dict[str, Any]:
    """Build, train, export and gate (see the module docstring); writes and returns out/claims.json
    (out/claims-s<N>.json for another training seed).

    `epochs`: when set, every run trains exactly this many epochs (max_epochs = min_epochs =
    epochs) instead of the protocol's budget; a CPU concession, recorded in claims.json.
    `training_seed`: the two candidates' training seed (the V1 is the protocol's, shared by every
    seed); seed 0 keeps the original folder names, seed N writes collapsed-sN, healthy-sN."""
    from fusionguard.export.pipeline import ExportConfig
    from fusionguard.recipes.exporting import export_checkpoint
    from fusionguard.training.protocol import load_protocol
    from fusionguard.training.tracks.emoji import EmojiConfig
    from fusionguard.training.tracks.emoji_dataset import import_emoji
    from fusionguard.training.trainer import RESULT_FILE, train

    protocol = load_protocol(protocol_path)
    if protocol.mechanism not in MECHANISMS:
        raise ConfigError(str(protocol_path), [f"mechanism '{protocol.mechanism}' is not one this track runs: {list(MECHANISMS)}"])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data = out / "data"
    if not (data / "test.parquet").is_file():
        import_emoji(cache, data, EmojiConfig())
    timings: dict[str, float] = {"data_s": time.perf_counter() - t0}
    tag = "" if training_seed == 0 else f"-s{training_seed}"
    runs = {"v1": ("v1", ""), "collapsed": ("baseline", "v1"), "healthy": ("baseline", "")}
    export_cfg = ExportConfig(batch_sizes=(1, 20), parity_rows=128, threads=1)
    onnx: dict[str, Path] = {}
    results: dict[str, Any] = {}
    for name, (variant, warm) in runs.items():
        t = time.perf_counter()
        run_dir = out / (name if name == "v1" else name + tag)
        seed = protocol.v1_seed if name == "v1" else training_seed
        config = protocol.train_config(variant, seed, str(out / "v1") if warm else "")
        if epochs is not None:
            config = replace(config, optim=replace(config.optim, max_epochs=epochs, min_epochs=epochs))
        if not (run_dir / RESULT_FILE).is_file():
            train(config, data, run_dir, progress=False, resume=False)
        onnx[name] = out / f"{run_dir.name}.onnx"
        if not onnx[name].is_file():
            export_checkpoint(run_dir, onnx[name], export_cfg)
        result = json.loads((run_dir / RESULT_FILE).read_text(encoding="utf-8"))
        results[name] = {"variant": variant, "warm_start_from": config.warm_start_from, "seed": seed,
                         "best_epoch": result.get("best_epoch"), "epochs_run": result.get("epochs_run"),
                         "test": result.get("test")}
        timings[f"{name}_s"] = time.perf_counter() - t
    c = protocol.criteria
    for name in CANDIDATES:
        t = time.perf_counter()
        g = _gate(onnx[name], onnx["v1"], data / "test.parquet", out / f"gate-{name}{tag}")
        drop = _number(g["checks"], "visual_ablation", "visual_drop", "estimate")
        spearman = _number(g["checks"], "integrity", "spearman_mean", "estimate")
        g["protocol_collapsed"] = (None if drop is None or spearman is None
                                   else bool(drop < c.collapse_max_visual_drop and spearman >= c.collapse_min_spearman_v1))
        results[name]["gate"] = g
        timings[f"gate_{name}_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t0
    claims = {"protocol": protocol.name, "mechanism": protocol.mechanism, "protocol_file": str(protocol_path),
              "cache": str(cache), "epochs_override": epochs, "training_seed": training_seed, "runs": results,
              "timings": timings,
              "gate_blocks_collapsed": results["collapsed"]["gate"]["exit_code"] == 1,
              "gate_passes_healthy": results["healthy"]["gate"]["exit_code"] == 0}
    (out / f"claims{tag}.json").write_text(json.dumps(claims, indent=2, default=str), encoding="utf-8")
    return claims


def default_protocol() -> Path:
    """The packaged research protocol (fusionguard.training.configs: training/configs/protocol.toml
    in the source tree), found without importing torch."""
    import importlib.util

    spec = importlib.util.find_spec("fusionguard.training.configs")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("fusionguard.training.configs", ["the training configs are not installed; pass --protocol"])
    return Path(list(spec.submodule_search_locations)[0]) / "protocol.toml"


def seeds_table(out: str | Path) -> str:
    """Every stored seed's candidates through the gate (out/claims.json, out/claims-s*.json), one
    row each, with the spread over seeds: the Markdown table docs/experiments.md shows."""
    files = sorted(Path(out).glob("claims*.json"))
    rows = [json.loads(f.read_text(encoding="utf-8")) for f in files]
    if not rows:
        raise ConfigError(str(out), ["no claims*.json here; run the recipe first"])
    lines = ["| training seed | candidate | test NDCG@10 | gate visual drop [95% CI] | gate Spearman vs V1 [95% CI] | "
             "gate exit | protocol collapsed |", "|" + "---|" * 7]
    stats: dict[str, dict[str, list[float]]] = {}
    for claims in sorted(rows, key=lambda c: c.get("training_seed", 0)):
        for name in CANDIDATES:
            r = claims["runs"][name]
            g = r["gate"]
            drop = [_number(g["checks"], "visual_ablation", "visual_drop", k) for k in ("estimate", "low", "high")]
            rho = [_number(g["checks"], "integrity", "spearman_mean", k) for k in ("estimate", "low", "high")]
            ndcg = (r.get("test") or {}).get("ndcg")
            fmt = lambda v: "–" if v[0] is None else f"{v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}]"  # noqa: E731
            lines.append(f"| {claims.get('training_seed', 0)} | {name} | {ndcg:.3f} | {fmt(drop)} | {fmt(rho)} | "
                         f"{g['exit_code']} | {g['protocol_collapsed']} |")
            for key, value in (("ndcg", ndcg), ("drop", drop[0]), ("rho", rho[0]), ("blocked", float(g["exit_code"] == 1))):
                if value is not None:
                    stats.setdefault(name, {}).setdefault(key, []).append(value)
    budget = {c.get("epochs_override") for c in rows}
    lines.append("")
    for name, s in stats.items():
        n = len(s["ndcg"])
        sd = lambda k: float(np.std(s[k], ddof=1)) if len(s[k]) > 1 else float("nan")  # noqa: E731
        lines.append(f"- {name}: {n} seed(s); test NDCG@10 mean {np.mean(s['ndcg']):.3f} (SD {sd('ndcg'):.3f}); gate visual "
                     f"drop mean {np.mean(s['drop']):.3f} (SD {sd('drop'):.3f}); Spearman vs V1 mean {np.mean(s['rho']):.3f} "
                     f"(SD {sd('rho'):.3f}); blocked in {int(sum(s['blocked']))} of {n}")
    lines.append(f"- budget: {', '.join('the protocol' if b is None else f'{b} epochs per run' for b in sorted(budget, key=str))}")
    return "\n".join(lines)


def summary(claims: dict[str, Any]) -> str:
    budget = "the protocol's epochs" if claims["epochs_override"] is None else f"{claims['epochs_override']} epochs per run"
    lines = [f"protocol {claims['protocol']} (mechanism {claims['mechanism']}, {budget}), total {claims['timings']['total_s']:.0f} s"]
    for name in ("v1", *CANDIDATES):
        r = claims["runs"][name]
        test = r.get("test") or {}
        line = f"  {name:<9} {r['variant']:<8} warm={bool(r['warm_start_from'])!s:<5} epochs {r['epochs_run']} (best {r['best_epoch']})"
        line += f"  test NDCG@10 {test.get('ndcg', float('nan')):.3f}"
        if "gate" in r:
            g = r["gate"]
            line += f"  gate exit {g['exit_code']} ({g['outcome']}); protocol collapsed: {g['protocol_collapsed']}"
            for check in ("visual_ablation", "integrity"):
                if check in g["checks"]:
                    line += f"\n      {check}: {g['checks'][check]['outcome']} — {g['checks'][check]['summary']}"
        lines.append(line)
    lines.append(f"gate blocks the collapsed model: {claims['gate_blocks_collapsed']}; passes the healthy one: {claims['gate_passes_healthy']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", required=True, help="the emoji track's cache (python -m fusionguard.training.tracks.emoji --cache DIR)")
    ap.add_argument("--out", required=True, help="output folder (resumable: finished runs are reused)")
    ap.add_argument("--protocol", default=str(default_protocol()),
                    help="the research protocol TOML (default: the packaged training/configs/protocol.toml)")
    ap.add_argument("--epochs", type=int, default=None,
                    help="train every run exactly this many epochs instead of the protocol's budget (CPU machines)")
    ap.add_argument("--training-seed", type=int, default=0, help="the candidates' training seed (the V1 is shared)")
    ap.add_argument("--seeds-table", action="store_true", help="print the table of every stored seed in --out and stop")
    args = ap.parse_args(argv)
    if args.seeds_table:
        print(seeds_table(args.out))
        return 0
    claims = run_claims(args.cache, args.out, args.protocol, args.epochs, args.training_seed)
    print(summary(claims))
    return 0 if claims["gate_blocks_collapsed"] and claims["gate_passes_healthy"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
