"""Export: ONNX Runtime CPU latency and throughput against torch eager, per architecture.

For each architecture (V1 text-only, V2 cross-attention baseline, progressive fusion, late fusion)
a demo-size model is trained (12 epochs by default) on the synthetic benchmark, exported with
`fusionguard.export.pipeline.export_model` (so it passed every verification check, parity included) and
quantized to int8. Then the same batches of 50 candidates (one ranking request) are scored by
torch eager (`torch.inference_mode`), the float ONNX model and the int8 ONNX model on ONNX
Runtime's CPU provider, one thread each, and the median latency per batch, the throughput and
the ratios are printed side by side. The int8 parity numbers from the export are printed too.

Run:  nice .venv/bin/python -m benchmarks.export_latency
Writes benchmarks/results/export_latency.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np

from benchmarks._common import write_results  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402

from fusionguard.export.pipeline import ExportConfig, export_model  # noqa: E402
from fusionguard.contract import load_contract  # noqa: E402
from fusionguard.dataset import load_dataset  # noqa: E402
from fusionguard.training.checkpoint import load_checkpoint  # noqa: E402
from fusionguard.training.config import ModelConfig, OptimConfig, TrainConfig  # noqa: E402
from fusionguard.training.trainer import train_late_fusion  # noqa: E402
from fusionguard.training.synth import SynthConfig, write_benchmark  # noqa: E402
from fusionguard.training.trainer import train  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "export_latency.json"
ARCHITECTURES = {"v1": "text-only", "baseline": "cross-attention", "progressive": "progressive", "late-fusion": "late fusion"}


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def _session(path: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])


def _models(root: Path, data: Path, epochs: int):
    """variant -> (torch model, meta): trained for `epochs` epochs at demo size."""
    model_cfg = ModelConfig()  # the plan's sizes: d_model 64, 8 heads, depth 2
    optim = OptimConfig(max_epochs=epochs)
    out = {}
    for variant in ("v1", "baseline", "progressive"):
        result = train(TrainConfig(variant=variant, device="cpu", model=model_cfg, optim=optim), data, root / variant, progress=False)
        ckpt = load_checkpoint(result.out)
        out[variant] = (ckpt.model, ckpt.meta)
    model, meta = train_late_fusion(TrainConfig(device="cpu", model=model_cfg, optim=optim), data, root / "late-fusion", progress=False)
    out["late-fusion"] = (model.eval(), meta)
    return out


def run(batch: int, repeats: int, epochs: int, synth: SynthConfig) -> dict:
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory(prefix="fg-export-bench-") as tmp:
        root = Path(tmp)
        write_benchmark(synth, root / "data")
        for variant, (model, meta) in _models(root, root / "data", epochs).items():
            t0 = time.perf_counter()
            result = export_model(model, meta, root / f"{variant}.onnx", ExportConfig(quantize="int8"))
            export_s = time.perf_counter() - t0
            contract = load_contract(result.path)
            val = load_dataset(root / "data" / "val.parquet", contract)
            n_batches = len(val) // batch
            batches = [{k: v[i * batch:(i + 1) * batch] for k, v in val.feeds.items()} for i in range(n_batches)]
            tensors = [[torch.from_numpy(b[name].copy()) for name in contract.input_names] for b in batches]
            float_session, int8_session = _session(str(result.path)), _session(str(result.quantization.path))

            def torch_all(tensors=tensors, model=model):
                with torch.inference_mode():
                    for args in tensors:
                        model(*args)

            def ort_all(session, batches=batches):
                for feeds in batches:
                    session.run(None, feeds)

            torch_all(), ort_all(float_session), ort_all(int8_session)  # warm-up
            t_torch = _median_time(torch_all, repeats) / n_batches
            t_ort = _median_time(lambda: ort_all(float_session), repeats) / n_batches
            t_int8 = _median_time(lambda: ort_all(int8_session), repeats) / n_batches
            q = result.quantization
            rows.append(
                {
                    "variant": variant,
                    "architecture": ARCHITECTURES[variant],
                    "parameters": int(sum(p.numel() for p in model.parameters())),
                    "batch": batch,
                    "batches_timed": n_batches,
                    "torch_ms": t_torch * 1e3,
                    "ort_ms": t_ort * 1e3,
                    "ort_int8_ms": t_int8 * 1e3,
                    "torch_rows_per_s": batch / t_torch,
                    "ort_rows_per_s": batch / t_ort,
                    "ort_int8_rows_per_s": batch / t_int8,
                    "ort_speedup": t_torch / t_ort,
                    "int8_speedup": t_torch / t_int8,
                    "export_s": export_s,
                    "parity_max_abs_diff": max(result.max_abs_diff.values()),
                    "int8": {
                        "pearson": q.pearson,
                        "spearman": q.spearman,
                        "ndcg10_float": q.ndcg10_float,
                        "ndcg10_int8": q.ndcg10_int8,
                        "ndcg10_diff": q.ndcg10_diff,
                        "max_abs_score_diff": q.max_abs_score_diff,
                        "batch_sensitivity": q.batch_sensitivity,
                        "float_bytes": q.float_bytes,
                        "int8_bytes": q.int8_bytes,
                    },
                }
            )
    return {
        "synth": {"dim": synth.dim, "text_tokens": synth.text_tokens, "visual_tokens": synth.visual_tokens,
                  "n_val_queries": synth.n_val, "n_candidates": synth.n_candidates},
        "train_epochs": epochs,
        "threads": 1,
        "repeats": repeats,
        "statistic": "median over repeats of (time for all batches) / batches",
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "rows": rows,
    }


def print_table(result: dict) -> None:
    s = result["synth"]
    print(
        f"batch of {result['rows'][0]['batch']} candidates, D={s['dim']} Lt={s['text_tokens']} Lv={s['visual_tokens']}, "
        f"CPU, 1 thread, median of {result['repeats']}"
    )
    head = (
        f"{'variant':<12}{'params':>8}{'torch ms':>10}{'ORT ms':>9}{'int8 ms':>9}{'ORT/torch':>11}{'int8/torch':>12}"
        f"{'ORT rows/s':>12}{'parity':>10}"
    )
    print(head)
    print("-" * len(head))
    for r in result["rows"]:
        print(
            f"{r['variant']:<12}{r['parameters']:>8}{r['torch_ms']:>10.3f}{r['ort_ms']:>9.3f}{r['ort_int8_ms']:>9.3f}"
            f"{r['ort_speedup']:>10.2f}x{r['int8_speedup']:>11.2f}x{r['ort_rows_per_s']:>12,.0f}{r['parity_max_abs_diff']:>10.1e}"
        )
    print("(ORT/torch, int8/torch: speed-up of ONNX Runtime over torch eager = torch time / ORT time)")
    print()
    head = f"{'int8 vs float':<14}{'Pearson':>9}{'Spearman':>10}{'NDCG@10 f':>11}{'int8':>8}{'Δ':>9}{'max|Δs|':>10}{'batch-dep':>11}{'size':>8}"
    print(head)
    print("-" * len(head))
    for r in result["rows"]:
        q = r["int8"]
        print(
            f"{r['variant']:<14}{q['pearson']:>9.4f}{q['spearman']:>10.4f}{q['ndcg10_float']:>11.4f}{q['ndcg10_int8']:>8.4f}"
            f"{q['ndcg10_diff']:>+9.4f}{q['max_abs_score_diff']:>10.2e}{q['batch_sensitivity']:>11.2e}"
            f"{q['int8_bytes'] / q['float_bytes']:>7.2f}x"
        )
    print("(batch-dep: max change of an int8 score between per-query batches and 4096-row batches; size: int8/float bytes)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=50, help="candidates per batch (one ranking request)")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--epochs", type=int, default=12, help="training epochs per model before export")
    parser.add_argument("--train-queries", type=int, default=160)
    parser.add_argument("--val-queries", type=int, default=40)
    args = parser.parse_args()
    synth = SynthConfig(n_train=args.train_queries, n_val=args.val_queries, n_test=8)
    result = run(args.batch, args.repeats, args.epochs, synth)
    print_table(result)
    write_results(RESULTS, result)


if __name__ == "__main__":
    main()
