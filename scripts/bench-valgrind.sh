# The part bench-allocations.sh and bench-instructions.sh share: the benchmark's end-to-end drain
# with the service under a valgrind tool. Sourced, not run.
#
# drain_under_valgrind NAME TOOL_OPTIONS [BENCHMARK_ARGUMENTS...]
#   Builds the service and the benchmark, runs the drain (default: 20,000 messages, no steady
#   phase; valgrind makes the service ~50x slower) with the service under
#   `valgrind TOOL_OPTIONS`, and stops the service once the relay has published what the drain
#   left. TOOL_OPTIONS may name the output directory as @OUT@. Sets `out` (${CARGO_TARGET_DIR:-target}/NAME) and `messages`.
drain_under_valgrind() {
  local name=$1 tool_options=$2
  shift 2
  command -v valgrind >/dev/null || apt_install valgrind
  scripts/ensure-postgres.sh
  # SERVICE_BUILD_FLAGS: cargo flags for the service's binary alone (bench-allocations.sh builds
  # it without jemalloc, whose allocations DHAT cannot see).
  cargo build --release -p bench --bin event-router-bench
  # shellcheck disable=SC2086
  cargo build --release -p event-router --bin event-router ${SERVICE_BUILD_FLAGS:-}
  local target_dir
  target_dir=$(realpath -m "${CARGO_TARGET_DIR:-target}")
  out=$target_dir/$name
  rm -rf "$out" && mkdir -p "$out"

  # The benchmark kills the service with SIGKILL, which would lose valgrind's report. So the
  # service runs as a child of a wrapper the benchmark may kill, and gets a SIGTERM (a clean
  # shutdown, and the report) afterwards.
  cat >"$out/service.sh" <<WRAPPER
#!/usr/bin/env bash
valgrind ${tool_options//@OUT@/\"$out\"} "$target_dir/release/event-router" "\$@" &
echo \$! >"$out/valgrind.pid"
wait
WRAPPER
  chmod +x "$out/service.sh"
  local args=("$@") i
  messages=
  for ((i = 0; i < ${#args[@]}; i++)); do [ "${args[i]}" = --messages ] && messages=${args[i + 1]}; done
  [ -n "$messages" ] || { messages=20000; args+=(--messages "$messages"); }
  # --relay-catch-up: the step ends once the relay has published what the drain left, so that
  # the relay's share is whole in every run.
  "$target_dir/release/event-router-bench" --end-to-end-only --steady-seconds 0 --relay-catch-up \
    --service "$out/service.sh" --out "$out" "${args[@]}"
  local pid
  pid=$(cat "$out/valgrind.pid")
  kill -TERM "$pid"
  while kill -0 "$pid" 2>/dev/null; do sleep 1; done
}
