#!/usr/bin/env bash
# `make lint`'s schema checks: every schema in api/event/ against its version at the merge base
# with main (the compatibility each schema declares in `x-compatibility`), and the topic
# declarations in deploy/ against what the schemas give. SCHEMA_BASE names another revision.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$(dirname "$0")/.."
cargo build --quiet --bin event-router
bin=${CARGO_TARGET_DIR:-target}/debug/event-router

base=${SCHEMA_BASE:-}
if [ -z "$base" ]; then
  for branch in main origin/main; do
    if base=$(git merge-base HEAD "$branch" 2>/dev/null); then
      break
    fi
    base=
  done
fi
if [ -z "$base" ]; then
  # A tarball or a shallow clone without main: nothing to compare with, and saying so beats
  # failing a lint that has no previous version to hold the schemas to.
  say "schema compatibility: no merge base with main found; skipped (set SCHEMA_BASE to compare)"
else
  say "schema compatibility against $(git rev-parse --short "$base")"
  "$bin" schema check --against "$base"
fi
"$bin" schema declare --check
