#!/usr/bin/env bash
# Names the code the service is built from, so that a figure measured in a separate run (the
# DHAT allocations, which `make bench` quotes) can be matched to the code of the run quoting it.
# Prints the commit, and when the files the service is built from differ from it (changed,
# staged or untracked), a hash of those differences: `6630cf3a1b2c` or `6630cf3a1b2c+4e0f9a21`.
set -euo pipefail
cd "$(dirname "$0")/.."
paths=(Cargo.toml Cargo.lock build.rs api src internal migrations)
commit=$(git rev-parse --short=12 HEAD)
changes=$(
  {
    git diff HEAD --binary -- "${paths[@]}"
    git ls-files --others --exclude-standard -z -- "${paths[@]}" | sort -z | xargs -0 -r sha256sum
  } | sha256sum | cut -c1-8
)
empty=$(printf '' | sha256sum | cut -c1-8)
if [ "$changes" = "$empty" ]; then echo "$commit"; else echo "$commit+$changes"; fi
