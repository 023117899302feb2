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


def run_claims(cache: str | Path, out: str | Path, protocol_path: str | Path, epochs: int | None = None) -> dict[str, Any]:
    """Build, train, export and gate (see the module docstring); writes and returns out/claims.json.

    `epochs`: when set, every run trains exactly this many epochs (max_epochs = min_epochs =
    epochs) instead of the protocol's budget; a CPU concession, recorded in claims.json."""
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
    runs = {"v1": ("v1", ""), "collapsed": ("baseline", "v1"), "healthy": ("baseline", "")}
    export_cfg = ExportConfig(batch_sizes=(1, 20), parity_rows=128, threads=1)
    onnx: dict[str, Path] = {}
    results: dict[str, Any] = {}
    for name, (variant, warm) in runs.items():
        t = time.perf_counter()
        run_dir = out / name
        seed = protocol.v1_seed if name == "v1" else 0
        config = protocol.train_config(variant, seed, str(out / "v1") if warm else "")
        if epochs is not None:
            config = replace(config, optim=replace(config.optim, max_epochs=epochs, min_epochs=epochs))
        if not (run_dir / RESULT_FILE).is_file():
            train(config, data, run_dir, progress=False, resume=False)
        onnx[name] = out / f"{name}.onnx"
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
        g = _gate(onnx[name], onnx["v1"], data / "test.parquet", out / f"gate-{name}")
        drop = _number(g["checks"], "visual_ablation", "visual_drop", "estimate")
        spearman = _number(g["checks"], "integrity", "spearman_mean", "estimate")
        g["protocol_collapsed"] = (None if drop is None or spearman is None
                                   else bool(drop < c.collapse_max_visual_drop and spearman >= c.collapse_min_spearman_v1))
        results[name]["gate"] = g
        timings[f"gate_{name}_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t0
    claims = {"protocol": protocol.name, "mechanism": protocol.mechanism, "protocol_file": str(protocol_path),
              "cache": str(cache), "epochs_override": epochs, "runs": results, "timings": timings,
              "gate_blocks_collapsed": results["collapsed"]["gate"]["exit_code"] == 1,
              "gate_passes_healthy": results["healthy"]["gate"]["exit_code"] == 0}
    (out / "claims.json").write_text(json.dumps(claims, indent=2, default=str), encoding="utf-8")
    return claims


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
    ap.add_argument("--protocol", default=str(Path(__file__).resolve().parents[1] / "configs" / "protocol.toml"))
    ap.add_argument("--epochs", type=int, default=None,
                    help="train every run exactly this many epochs instead of the protocol's budget (CPU machines)")
    args = ap.parse_args(argv)
    claims = run_claims(args.cache, args.out, args.protocol, args.epochs)
    print(summary(claims))
    return 0 if claims["gate_blocks_collapsed"] and claims["gate_passes_healthy"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
