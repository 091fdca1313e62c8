#!/usr/bin/env bash
# Schemathesis against the running events API, with api/openapi.json as the contract: no 500,
# no answer that breaks the document, unauthenticated requests refused. Part of `make test`.
#
# Starts what the API needs on free ports: the embedded broker, a fresh database (er_test_*, so
# an interrupted run is cleaned by the next `make test`), the service, and a little demo traffic
# so that there are events to list. The feed is left out: it streams for as long as the client
# stays, which a request-response fuzzer cannot judge (tests/it/api.rs covers it).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
root="$(cd "$(dirname "$0")/.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
bin="$target/debug/event-router"
venv="$target/schemathesis-venv"
schemathesis_version=4.32.5

if ! "$venv/bin/schemathesis" --version 2>/dev/null | grep -q "version $schemathesis_version\$"; then
  say "installing Schemathesis $schemathesis_version (PyPI) into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$schemathesis_version"
fi
(cd "$root" && cargo build --quiet --bin event-router)

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
broker_port=$(free_port)
export KAFKA_BROKERS="127.0.0.1:$broker_port"
export DATABASE_URL="postgres://postgres@127.0.0.1:5432/er_test_fuzz_$$"
export METRICS_ADDR="127.0.0.1:$(free_port)"
export API_ADDR="127.0.0.1:$(free_port)"
export LOG_FORMAT=json RUST_LOG=warn
work="$(mktemp -d "${TMPDIR:-/tmp}/event-router-fuzz.XXXXXX")"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS er_test_fuzz_$$" postgres >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

"$bin" dev-broker --listen "$KAFKA_BROKERS" >"$work/broker.log" 2>&1 &
pids+=($!)
"$bin" migrate >/dev/null
"$bin" run >"$work/service.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do
  curl -fs "http://$METRICS_ADDR/readyz" >/dev/null 2>&1 && break
  sleep 0.2
done
curl -fs "http://$METRICS_ADDR/readyz" >/dev/null || { cat "$work/service.log" >&2; echo "api-fuzz: the service did not get ready" >&2; exit 1; }
"$bin" demo --count 40 --rate 200 >/dev/null 2>&1

identity=$(printf '{"identity":{"type":"User","org_id":"12345","auth_type":"jwt-auth","user":{"username":"fuzz"}}}' | base64 -w0)
say "Schemathesis against http://$API_ADDR (api/openapi.json)"
# Run from the scratch folder: Schemathesis keeps a cache in its working directory.
(cd "$work" && "$venv/bin/schemathesis" run "$root/api/openapi.json" \
  --url "http://$API_ADDR" \
  --header "x-rh-identity: $identity" \
  --checks all \
  --exclude-operation-id followEvents \
  --max-examples 300 \
  --seed 20261129 \
  --generation-database none \
  --workers 2 \
  --request-timeout 10 \
  --no-color) || { tail -n 50 "$work/service.log" >&2; exit 1; }
if grep -q '"level":"ERROR"' "$work/service.log"; then
  grep '"level":"ERROR"' "$work/service.log" | head -n 20 >&2
  echo "api-fuzz: the service logged errors while being fuzzed" >&2
  exit 1
fi
