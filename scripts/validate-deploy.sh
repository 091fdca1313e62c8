#!/usr/bin/env bash
# Validates every Kubernetes manifest in deploy/ offline (scripts/validate_deploy.py says what is
# scanned and against which schemas; deploy/README.md, "Manifest validation", for people).
#   scripts/validate-deploy.sh            validate deploy/clowdapp.yaml and deploy/kubernetes/
#   scripts/validate-deploy.sh PATH...    validate those files or folders instead
#   scripts/validate-deploy.sh --test     run the validator's own tests (scripts/validate_deploy_test.py)
# The validator runs in ${CARGO_TARGET_DIR:-target}/deploy-venv with the packages pinned below.
# Idempotent: a stamp in the venv holds the pins' hash, and nothing is installed while it matches
# and the packages import.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$(dirname "$0")/.."

# Every package pinned, dependencies included, so that every run checks against the same schemas.
# kubernetes-validate 1.37.0 bundles the Kubernetes 1.25-1.37 schemas (KUBERNETES_VERSION in
# validate_deploy.py picks one). rpds-py 2026.9.1 needs Python 3.11 or later.
requirements='kubernetes-validate==1.37.0
PyYAML==6.0.3
jsonschema==4.26.0
referencing==0.37.0
jsonschema-specifications==2025.9.1
rpds-py==2026.9.1
attrs==26.1.0
importlib_resources==7.1.0
packaging==26.4
typing_extensions==4.16.0'

venv=${CARGO_TARGET_DIR:-target}/deploy-venv
stamp=$venv/requirements.sha256
wanted=$(printf '%s\n' "$requirements" | sha256sum | cut -d' ' -f1)

ready() {
  [ -x "$venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$wanted" ] &&
    "$venv/bin/python" -c 'import kubernetes_validate, yaml, jsonschema, referencing' 2>/dev/null
}

if ! ready; then
  command -v python3 >/dev/null || { echo "validate-deploy: python3 is required" >&2; exit 1; }
  python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
    { echo "validate-deploy: needs Python 3.11 or later (rpds-py), found $(python3 --version)" >&2; exit 1; }
  # Debian's python3 has venv without ensurepip unless python3-venv is installed.
  if ! python3 -c 'import ensurepip' 2>/dev/null && command -v dpkg-query >/dev/null; then
    apt_install python3-venv
  fi
  say "creating $venv with kubernetes-validate and the schemas it bundles"
  rm -f "$stamp"
  python3 -m venv --clear "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
    -r <(printf '%s\n' "$requirements")
  echo "$wanted" >"$stamp"
fi

export PYTHONDONTWRITEBYTECODE=1 # no scripts/__pycache__ in the work tree
if [ "${1:-}" = "--test" ]; then
  shift
  exec "$venv/bin/python" scripts/validate_deploy_test.py "$@"
fi
exec "$venv/bin/python" scripts/validate_deploy.py "$@"
