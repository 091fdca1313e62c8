#!/usr/bin/env bash
# The virtualenv of the Python consumer the benchmark compares the service with
# (bench/python/consumer.py): ${CARGO_TARGET_DIR:-target}/bench-venv with
# bench/python/requirements.txt installed.
# Idempotent: a stamp in the venv holds the requirements' hash, and nothing is done while it
# matches and the packages import. Prints the venv's python on stdout.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$(dirname "$0")/.."

venv=${CARGO_TARGET_DIR:-target}/bench-venv
requirements=bench/python/requirements.txt
stamp=$venv/requirements.sha256
wanted=$(sha256sum "$requirements" | cut -d' ' -f1)

ready() {
  [ -x "$venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$wanted" ] &&
    "$venv/bin/python" -c 'import confluent_kafka, psycopg, jsonschema, rfc3339_validator' 2>/dev/null
}

if ! ready; then
  command -v python3 >/dev/null || { echo "python3 is required for the Python baseline of the benchmark" >&2; exit 1; }
  python3 -c 'import sys; sys.exit(sys.version_info < (3, 10))' ||
    { echo "the Python baseline needs Python 3.10 or later (psycopg 3.3), found $(python3 --version)" >&2; exit 1; }
  # Debian's python3 has venv without ensurepip unless python3-venv is installed.
  if ! python3 -c 'import ensurepip' 2>/dev/null && command -v dpkg-query >/dev/null; then
    apt_install python3-venv
  fi
  say "creating $venv with $requirements"
  rm -f "$stamp"
  python3 -m venv --clear "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input -r "$requirements"
  echo "$wanted" >"$stamp"
fi

# CARGO_TARGET_DIR may be absolute.
case $venv in
  /*) echo "$venv/bin/python" ;;
  *) echo "$PWD/$venv/bin/python" ;;
esac
