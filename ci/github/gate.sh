#!/usr/bin/env bash
# The gate step of the composite action (action.yml), kept in a file so that tests run this very
# script outside GitHub (tests/ci/test_ci.py). It runs `fusionguard gate --summary github`: the
# check lines and one ::error annotation per failed check go to stdout, the report Markdown is
# appended to $GITHUB_STEP_SUMMARY. It records the step outputs and exits with the gate's exit
# code: 0 passed, 1 blocked, 2 invalid input, 3 could not evaluate (docs/ci.md).
#
# Inputs (environment):
#   GATE_CANDIDATE, GATE_DATA                      required
#   GATE_BASELINE, GATE_POLICY                     optional (empty: not passed)
#   GATE_CANDIDATE_CONTRACT, GATE_BASELINE_CONTRACT optional sidecar contracts
#   GATE_OUT                                       report directory (default: fusionguard-report)
#   GITHUB_STEP_SUMMARY                            job summary file (set by GitHub Actions)
#   GITHUB_OUTPUT                                  step outputs file (optional outside GitHub)
#   FUSIONGUARD_SIGNING_KEY                        signs report.json when non-empty
#   FUSIONGUARD                                    the command to run (default: fusionguard)
set -uo pipefail

out="${GATE_OUT:-fusionguard-report}"
missing=()
[ -n "${GATE_CANDIDATE:-}" ] || missing+=(candidate)
[ -n "${GATE_DATA:-}" ] || missing+=(data)
if [ "${#missing[@]}" -gt 0 ]; then
  # Exit 2 (bad usage), never 1: a missing input is no verdict on the model.
  echo "::error title=fusionguard gate::missing action input(s): ${missing[*]}; set them under with: in the workflow"
  exit 2
fi

# An unset secret reaches the step as an empty string: that means "signing not configured",
# not "sign with an empty key" (which the gate refuses with a warning and promote with exit 2).
if [ -z "${FUSIONGUARD_SIGNING_KEY:-}" ]; then unset FUSIONGUARD_SIGNING_KEY; fi

args=(gate --candidate "$GATE_CANDIDATE" --data "$GATE_DATA" --out "$out" --summary github)
[ -n "${GATE_BASELINE:-}" ] && args+=(--baseline "$GATE_BASELINE")
[ -n "${GATE_POLICY:-}" ] && args+=(--policy "$GATE_POLICY")
[ -n "${GATE_CANDIDATE_CONTRACT:-}" ] && args+=(--candidate-contract "$GATE_CANDIDATE_CONTRACT")
[ -n "${GATE_BASELINE_CONTRACT:-}" ] && args+=(--baseline-contract "$GATE_BASELINE_CONTRACT")

${FUSIONGUARD:-fusionguard} "${args[@]}"
code=$?

case "$code" in
  0) outcome=passed ;;
  1) outcome=blocked ;;
  2) outcome=invalid ;;
  3) outcome=unevaluated ;;
  *)
    outcome=crashed
    echo "::error title=fusionguard gate::fusionguard exited with $code, which is none of its exit codes (0-3): it crashed or was killed; see the log above"
    ;;
esac

if [ -n "${GITHUB_OUTPUT:-}" ]; then
  {
    echo "exit-code=$code"
    echo "outcome=$outcome"
    echo "report-dir=$out"
  } >>"$GITHUB_OUTPUT"
fi
exit "$code"
