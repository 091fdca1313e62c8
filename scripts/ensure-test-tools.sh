#!/usr/bin/env bash
# Tools the tests call besides cargo: promtool (Debian package `prometheus`) checks the metrics
# output and the alert rules.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
if ! command -v promtool >/dev/null && command -v dpkg-query >/dev/null; then
  say "installing promtool (Debian package prometheus, without its recommends)"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
command -v promtool >/dev/null || { echo "promtool is required by the tests: install Prometheus' promtool" >&2; exit 1; }
