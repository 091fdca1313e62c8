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
ensure_venv "$venv" bench/python/requirements.txt 'confluent_kafka, psycopg, jsonschema, rfc3339_validator' >&2

# CARGO_TARGET_DIR may be absolute.
case $venv in
  /*) echo "$venv/bin/python" ;;
  *) echo "$PWD/$venv/bin/python" ;;
esac
