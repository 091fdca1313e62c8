#!/usr/bin/env bash
# Proves README.md's "Adding a topic": in a copy of the tree, add a schema with `examples`, a
# handler, its registration line and a migration (tests/new-topic/), touch nothing else, and run
# the registry-driven integration test there. The new topic must come out handled and streamed.
# The copy builds into this tree's target directory, so only the workspace's crates recompile.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
root="$(cd "$(dirname "$0")/.." && pwd)"
fixture="$root/tests/new-topic"
copy="$(mktemp -d "${TMPDIR:-/tmp}/event-router-new-topic.XXXXXX")"
trap 'rm -rf "$copy"' EXIT

say "copying the tree to $copy and adding the topic widget-added the documented way"
tar -C "$root" --exclude=./target --exclude=./.git -cf - . | tar -C "$copy" -xf -
cp "$fixture/widget-added.event.json" "$copy/api/event/"
cp "$fixture/widget_added.rs" "$copy/src/handlers/"
cp "$fixture/9000_widgets.sql" "$copy/migrations/"
handlers="$copy/src/handlers/mod.rs"
grep -q '^pub mod todo_created;$' "$handlers" && grep -q '^        \.register::<TodoCreated>(todo_created::StoreTodo)$' "$handlers" ||
  { echo "check-new-topic: src/handlers/mod.rs changed shape; update this script's two anchors" >&2; exit 1; }
sed -i -e 's/^pub mod todo_created;$/&\npub mod widget_added;/' \
  -e 's/^        \.register::<TodoCreated>(todo_created::StoreTodo)$/&\n        .register::<crate::topics::WidgetAdded>(widget_added::StoreWidget)/' "$handlers"

say "running the registry-driven test in the copy"
output="$(cd "$copy" && CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}" \
  cargo test --quiet --test it every_topic_in_the_registry_gets_its_examples_through -- --nocapture 2>&1)" ||
  { echo "$output" >&2; echo "check-new-topic: the new topic did not get through" >&2; exit 1; }
grep -q '^handled and streamed: widget-added ' <<<"$output" ||
  { echo "$output" >&2; echo "check-new-topic: the test did not see widget-added" >&2; exit 1; }
say "a new topic needed its schema, handler, registration line and migration, nothing else"
