#!/usr/bin/env bash
# The install steps of the composite action (action.yml).
#
#   install.sh cache-key   writes dir= (pip's cache), key= and restore-prefix= to $GITHUB_OUTPUT
#   install.sh install     pip-installs fusionguard for the gate
#
# What is installed: $FUSIONGUARD_PACKAGE when set (a pip requirement, e.g.
# "fusionguard[cpu,gate]==0.1.0"), else the action's own checkout ($GITHUB_ACTION_PATH) with the
# extras in $FUSIONGUARD_EXTRAS (default cpu,gate: ONNX Runtime for CPU and the gate's packages).
# The cache holds pip's downloads and built wheels; the key changes with the runner's OS, the
# Python version, what is installed and the action's pyproject.toml.
set -euo pipefail

extras="${FUSIONGUARD_EXTRAS:-cpu,gate}"
package="${FUSIONGUARD_PACKAGE:-}"
action_path="${GITHUB_ACTION_PATH:-$(cd "$(dirname "$0")/../.." && pwd)}"
python="${PYTHON:-python}"

case "${1:-}" in
  cache-key)
    pyver="$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
    what="$(printf '%s|%s|' "$package" "$extras"; cat "$action_path/pyproject.toml")"
    digest="$(printf '%s' "$what" | sha256sum | cut -c1-16)"
    {
      echo "dir=$("$python" -m pip cache dir)"
      prefix="fusionguard-pip-${RUNNER_OS:-$(uname -s)}-py${pyver}-"
      echo "restore-prefix=$prefix"
      echo "key=${prefix}${digest}"
    } >>"${GITHUB_OUTPUT:?GITHUB_OUTPUT is not set; run this inside a GitHub Actions step}"
    ;;
  install)
    spec="${package:-${action_path}[${extras}]}"
    "$python" -m pip install --disable-pip-version-check --progress-bar off "$spec"
    fusionguard --version
    ;;
  *)
    echo "usage: $0 cache-key|install" >&2
    exit 2
    ;;
esac
