#!/usr/bin/env bash
# Makes sure the C toolchain and libraries librdkafka is built with are installed.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
command -v cargo >/dev/null || { echo "cargo is not installed: install Rust from https://rustup.rs" >&2; exit 1; }
if command -v dpkg-query >/dev/null; then
  apt_install build-essential pkg-config libssl-dev zlib1g-dev curl
fi
