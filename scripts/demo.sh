#!/usr/bin/env bash
# The main job end to end on embedded defaults, through the public CLI only:
# synthetic benchmark -> train V1, the collapsing V2 baseline and a mitigated V2 -> export to ONNX
# -> gate (the baseline is blocked, the mitigated model passes) -> promote -> replay traffic
# through the monitor's code path into Prometheus metrics.
# Usage: scripts/demo.sh [OUT_DIR]     (make demo runs it with OUT_DIR=demo-out)
set -euo pipefail
OUT=${1:-demo-out}
HERE=$(cd "$(dirname "$0")" && pwd)
CONFIG="$HERE/../training/configs/default.toml"
MITIGATION=${FUSIONGUARD_DEMO_MITIGATION:-progressive}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
mkdir -p "$OUT"
step() { printf '\n==> %s\n' "$*"; }

step "1/7 synthetic image-search benchmark"
fusionguard data synth --out "$OUT/data" --seed 0
fusionguard data validate "$OUT/data/test.parquet"

step "2/7 train V1 (text only), the V2 cross-attention baseline and V2 with '$MITIGATION'"
for variant in v1 baseline "$MITIGATION"; do
  fusionguard train --variant "$variant" --data "$OUT/data" --out "$OUT/runs/$variant" --config "$CONFIG" --no-progress
done

step "3/7 export to ONNX with the modality contract (verified against torch)"
for variant in v1 baseline "$MITIGATION"; do
  fusionguard export --checkpoint "$OUT/runs/$variant" --out "$OUT/models/$variant.onnx"
done

gate() {  # gate CANDIDATE REPORT_DIR -> prints the verdict, returns the gate's exit code
  set +e
  fusionguard gate --candidate "$OUT/models/$1.onnx" --baseline "$OUT/models/v1.onnx" \
    --data "$OUT/data/test.parquet" --out "$2" --no-progress
  local rc=$?
  set -e
  return $rc
}

step "4/7 gate the collapsed baseline: expected to be BLOCKED (exit 1)"
rc=0; gate baseline "$OUT/reports/baseline" || rc=$?
if [ "$rc" -ne 1 ]; then echo "demo: expected the baseline to be blocked (exit 1), got exit $rc" >&2; exit 1; fi
echo "baseline blocked as expected (exit 1); see $OUT/reports/baseline/report.md"

step "5/7 gate the mitigated model ('$MITIGATION'): expected to PASS (exit 0)"
rc=0; gate "$MITIGATION" "$OUT/reports/$MITIGATION" || rc=$?
if [ "$rc" -ne 0 ]; then echo "demo: expected '$MITIGATION' to pass the gate, got exit $rc; see $OUT/reports/$MITIGATION/report.md" >&2; exit 1; fi

step "6/7 promote the model that passed"
fusionguard promote --report "$OUT/reports/$MITIGATION" --registry "$OUT/registry"
fusionguard registry list --registry "$OUT/registry"

step "7/7 replay the test split through the monitor's code path into Prometheus metrics"
fusionguard monitor replay --registry "$OUT/registry" --shadow "$OUT/models/v1.onnx" \
  --data "$OUT/data/test.parquet" --out "$OUT/metrics.prom"
grep -E '^fusionguard_(modality_share_(sum|count)|shadow_spearman|requests_total)' "$OUT/metrics.prom" | head -12

printf '\ndemo finished: reports in %s/reports, registry in %s/registry, metrics in %s/metrics.prom\n' "$OUT" "$OUT" "$OUT"
