#!/usr/bin/env bash
# Proves README.md's "Adding a topic": in a copy of the tree, add a schema with `examples`, a
# handler, its registration line and a migration (tests/new-topic/), touch nothing else, and run
# the registry-driven integration test there. The new topic must come out handled and streamed.
# Before the handler and its registration line are added, the copy's service must refuse to start
# (with a broker and a database it could use), naming the topic that has no handler; the deploy
# declarations must name the topic as missing until `make declare-topics` writes them, and the
# compatibility check must report the topic as new.
# The copy builds into this tree's target directory, so only the workspace's crates recompile.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
root="$(cd "$(dirname "$0")/.." && pwd)"
fixture="$root/tests/new-topic"
target="${CARGO_TARGET_DIR:-$root/target}"
copy="$(mktemp -d "${TMPDIR:-/tmp}/event-router-new-topic.XXXXXX")"
admin_url=${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
database=er_test_new_topic_$$
broker_pid=
cleanup() {
  if [ -n "$broker_pid" ]; then kill "$broker_pid" 2>/dev/null || true; fi
  psql "$admin_url" -q -c "DROP DATABASE IF EXISTS $database WITH (FORCE)" 2>/dev/null || true
  rm -rf "$copy"
}
trap cleanup EXIT

say "copying the tree to $copy and adding the topic widget-added the documented way"
tar -C "$root" --exclude=./target --exclude=./.git -cf - . | tar -C "$copy" -xf -
handlers="$copy/src/handlers/mod.rs"
grep -q '^pub mod todo_created;$' "$handlers" && grep -q '^        \.register::<TodoCreated>(todo_created::StoreTodo)$' "$handlers" ||
  { echo "check-new-topic: src/handlers/mod.rs changed shape; update this script's two anchors" >&2; exit 1; }
cp "$fixture/widget-added.event.json" "$copy/api/event/"
cp "$fixture/9000_widgets.sql" "$copy/migrations/"

say "without its handler: the service must refuse to start, naming widget-added"
(cd "$copy" && CARGO_TARGET_DIR="$target" cargo build --quiet --bin event-router) ||
  { echo "check-new-topic: the copy without the handler does not build" >&2; exit 1; }
bin="$target/debug/event-router"
psql "$admin_url" -q -c "CREATE DATABASE $database"
database_url="${admin_url%/*}/$database"
broker_log="$copy/broker.log"
DATABASE_URL="$database_url" "$bin" dev-broker --listen 127.0.0.1:0 >"$broker_log" 2>&1 &
broker_pid=$!
brokers=
for _ in $(seq 1 100); do
  brokers="$(sed -n 's/^embedded broker .* at \([0-9.:]*\)$/\1/p' "$broker_log")"
  [ -n "$brokers" ] && break
  kill -0 "$broker_pid" 2>/dev/null || { cat "$broker_log" >&2; echo "check-new-topic: the broker did not start" >&2; exit 1; }
  sleep 0.1
done
[ -n "$brokers" ] || { cat "$broker_log" >&2; echo "check-new-topic: the broker did not start within 10 s" >&2; exit 1; }
started=$SECONDS
status=0
KAFKA_BROKERS="$brokers" DATABASE_URL="$database_url" METRICS_ADDR=127.0.0.1:0 API_ADDR=127.0.0.1:0 LOG_FORMAT=text \
  timeout -k 10 60 "$bin" run >"$copy/run.out" 2>"$copy/run.err" </dev/null || status=$?
refusal="$(cat "$copy/run.out" "$copy/run.err")"
# timeout's 124 (or 137 after its SIGKILL): the service did not stop by itself.
if [ "$status" -eq 0 ] || [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
  echo "$refusal" >&2
  echo "check-new-topic: without a handler for widget-added the service $([ "$status" -eq 0 ] && echo "exited 0" || echo "was still running after 60 s")" >&2
  exit 1
fi
grep -q 'widget-added.*no handler' "$copy/run.err" ||
  { echo "$refusal" >&2; echo "check-new-topic: the service failed (exit $status) without naming widget-added's missing handler" >&2; exit 1; }
say "refused to start in $((SECONDS - started)) s (exit $status): $(grep -m1 -o 'topic `widget-added`.*' "$copy/run.err")"
kill "$broker_pid" 2>/dev/null || true
wait "$broker_pid" 2>/dev/null || true
broker_pid=

say "declaring it (make declare-topics): the deploy files must name widget-added, by hand nowhere"
declared=0
(cd "$copy" && "$bin" schema declare --check >"$copy/declare.out") || declared=$?
[ "$declared" -eq 1 ] && grep -q 'deploy/clowdapp.yaml: topic platform.event-router.widget-added: missing' "$copy/declare.out" &&
  grep -q 'deploy/kubernetes/kafka-topics.yaml: topic platform.event-router.widget-added: missing' "$copy/declare.out" ||
  { cat "$copy/declare.out" >&2; echo "check-new-topic: the declaration check did not name widget-added (exit $declared)" >&2; exit 1; }
(cd "$copy" && make --quiet declare-topics CARGO_TARGET_DIR="$target" >/dev/null)
grep -q '^        - topicName: platform.event-router.widget-added$' "$copy/deploy/clowdapp.yaml" &&
  grep -q '^  topicName: platform.event-router.widget-added$' "$copy/deploy/kubernetes/kafka-topics.yaml" ||
  { echo "check-new-topic: make declare-topics did not declare widget-added" >&2; exit 1; }
(cd "$copy" && "$bin" schema declare --check >/dev/null) ||
  { echo "check-new-topic: the declarations are still out of date after make declare-topics" >&2; exit 1; }
(cd "$copy" && "$bin" schema check --against "$root/api/event" >"$copy/compat.out") ||
  { cat "$copy/compat.out" >&2; echo "check-new-topic: adding a topic was reported as incompatible" >&2; exit 1; }
grep -q '^topic widget-added (widget-added.event.json, backward): new$' "$copy/compat.out" ||
  { cat "$copy/compat.out" >&2; echo "check-new-topic: the compatibility check did not report widget-added as new" >&2; exit 1; }

say "adding the handler and its registration line"
cp "$fixture/widget_added.rs" "$copy/src/handlers/"
sed -i -e 's/^pub mod todo_created;$/&\npub mod widget_added;/' \
  -e 's/^        \.register::<TodoCreated>(todo_created::StoreTodo)$/&\n        .register::<crate::topics::WidgetAdded>(widget_added::StoreWidget)/' "$handlers"

say "running the registry-driven test in the copy"
output="$(cd "$copy" && CARGO_TARGET_DIR="$target" \
  cargo test --quiet --test it every_topic_in_the_registry_gets_its_examples_through -- --nocapture 2>&1)" ||
  { echo "$output" >&2; echo "check-new-topic: the new topic did not get through" >&2; exit 1; }
grep -q '^handled and streamed: widget-added ' <<<"$output" ||
  { echo "$output" >&2; echo "check-new-topic: the test did not see widget-added" >&2; exit 1; }
say "a new topic needed its schema, handler, registration line, migration and make declare-topics, nothing else"
