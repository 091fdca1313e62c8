#!/usr/bin/env bash
# `make run`: everything a newcomer needs to see event-router work on one machine.
#
# Starts PostgreSQL (installing it if needed), builds the service, starts the embedded broker
# (librdkafka's mock cluster: development only), migrates the database, runs the service and a
# demo producer that sends valid and invalid messages and prints where each one ended up.
# Ctrl-C stops all of it.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

export KAFKA_BROKERS=${KAFKA_BROKERS:-127.0.0.1:9092}
# The embedded broker starts empty every time, so by default every run gets a fresh
# development database too: a database that kept the last run's inbox would see the new
# broker's offsets as reused. A DATABASE_URL of your own is used as it is.
if [ -z "${DATABASE_URL:-}" ]; then
  DEV_DATABASE=event_router_dev
  export DATABASE_URL=postgres://postgres@127.0.0.1:5432/$DEV_DATABASE
fi
export METRICS_ADDR=${METRICS_ADDR:-127.0.0.1:9000}
export API_ADDR=${API_ADDR:-127.0.0.1:8000}
# Any topic under the prefix is consumed, so a topic without a schema shows up as `unknown_topic`
# in the dead-letter topic instead of being ignored.
export EVENT_ROUTER_TOPIC_PATTERN=${EVENT_ROUTER_TOPIC_PATTERN:-'^platform\.event-router\..*'}
export LOG_FORMAT=${LOG_FORMAT:-text}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
# Logs; scripts/check-make-run.sh gives each of its runs a folder of its own.
RUN_DIR=${RUN_DIR:-$TARGET_DIR/run}
mkdir -p "$RUN_DIR"

scripts/ensure-build-deps.sh
scripts/ensure-postgres.sh
say "building event-router (the first build compiles librdkafka: a few minutes)"
cargo build --bin event-router
BIN=$TARGET_DIR/debug/event-router

# Background parts run in their own sessions so that Ctrl-C reaches only this script, which then
# stops them in reverse order: demo, service (it commits offsets), broker last.
pids=()
cleanup() {
  # Signals that arrive meanwhile are ignored, not fatal: a signal sent to the whole process group
  # reaches this script twice (make passes its SIGTERM on), and Ctrl-C may be pressed again; dying
  # half-way would leave the service and the broker running in their sessions.
  trap '' INT TERM HUP
  trap - EXIT
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    kill -TERM "${pids[i]}" 2>/dev/null || true
    # Bounded: what has not stopped within 45 s is killed.
    for _ in $(seq 1 225); do kill -0 "${pids[i]}" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "${pids[i]}" 2>/dev/null || true
  done
  say "stopped"
}
# After Ctrl-C or SIGTERM, stop here (with the shell's status for it) instead of going on with the
# script. (Any other fatal signal, SIGHUP when the terminal closes say, runs the EXIT trap.)
trap cleanup EXIT
trap 'cleanup; exit 130' INT
trap 'cleanup; exit 143' TERM

say "starting the embedded broker on $KAFKA_BROKERS (log: $RUN_DIR/broker.log)"
setsid "$BIN" dev-broker --listen "$KAFKA_BROKERS" >"$RUN_DIR/broker.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 50); do
  grep -q 'embedded broker' "$RUN_DIR/broker.log" 2>/dev/null && break
  kill -0 "${pids[0]}" 2>/dev/null || { cat "$RUN_DIR/broker.log" >&2; exit 1; }
  sleep 0.2
done

if [ -n "${DEV_DATABASE:-}" ]; then
  say "recreating the development database $DEV_DATABASE (fresh, like the broker)"
  psql -q -h 127.0.0.1 -U postgres -d postgres -c "DROP DATABASE IF EXISTS $DEV_DATABASE WITH (FORCE)"
fi
say "migrating $DATABASE_URL"
"$BIN" migrate

say "starting the service (metrics on http://$METRICS_ADDR/metrics, log: $RUN_DIR/service.log)"
setsid "$BIN" run >"$RUN_DIR/service.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do
  curl -fs "http://$METRICS_ADDR/readyz" >/dev/null 2>&1 && break
  kill -0 "${pids[1]}" 2>/dev/null || { cat "$RUN_DIR/service.log" >&2; exit 1; }
  sleep 0.2
done

cat >&2 <<MSG

  event-router is running.
    broker     $KAFKA_BROKERS   (e.g. kcat -b $KAFKA_BROKERS -L)
    database   $DATABASE_URL    (e.g. psql $DATABASE_URL -c 'select * from todos')
    metrics    http://$METRICS_ADDR/metrics   probes /healthz /readyz
    events     http://$API_ADDR/api/event-router/v1/events   (needs x-rh-identity; README, "The events API";
               the demo's org is 12345)
    logs       $RUN_DIR/service.log

  Demo traffic follows: each line says what was sent and where it came out. Ctrl-C stops.

MSG
setsid "$BIN" demo ${DEMO_ARGS:-} &
pids+=($!)
wait "${pids[2]}" || true
say "demo finished; the service and the broker keep running until Ctrl-C"
wait "${pids[1]}" || true
