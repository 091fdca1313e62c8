#!/usr/bin/env bash
# Validates every Kubernetes manifest in deploy/ offline (scripts/validate_deploy.py says what is
# scanned and against which schemas; deploy/README.md, "Manifest validation", for people).
#   scripts/validate-deploy.sh            validate deploy/clowdapp.yaml and deploy/kubernetes/
#   scripts/validate-deploy.sh PATH...    validate those files or folders instead
#   scripts/validate-deploy.sh --test     run the validator's own tests (scripts/validate_deploy_test.py)
# The validator runs in ${CARGO_TARGET_DIR:-target}/deploy-venv with the packages pinned in
# scripts/validate-deploy.requirements.txt.
# Idempotent: a stamp in the venv holds the pins' hash, and nothing is installed while it matches
# and the packages import.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$(dirname "$0")/.."

# Every package is pinned in scripts/validate-deploy.requirements.txt, dependencies included, so
# that every run checks against the same schemas.
venv=${CARGO_TARGET_DIR:-target}/deploy-venv
ensure_venv "$venv" scripts/validate-deploy.requirements.txt 'kubernetes_validate, yaml, jsonschema, referencing'

export PYTHONDONTWRITEBYTECODE=1 # no scripts/__pycache__ in the work tree
if [ "${1:-}" = "--test" ]; then
  shift
  exec "$venv/bin/python" scripts/validate_deploy_test.py "$@"
fi
exec "$venv/bin/python" scripts/validate_deploy.py "$@"
