#!/usr/bin/env bash
# Where the CPU goes while the service drains a backlog: runs the benchmark's end-to-end step
# under a system-wide `perf record -e cpu-clock` (virtual machines here have no hardware
# counters; the software clock samples every process), then prints the share of each process and
# the service's hottest functions. Arguments go to the benchmark, e.g.
#   scripts/bench-profile.sh --messages 200000 --steady-seconds 0
# Output: ${CARGO_TARGET_DIR:-target}/profile/{perf.data,by-process.txt,service-functions.txt}.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$(dirname "$0")/.."

command -v perf >/dev/null || apt_install linux-perf
scripts/ensure-postgres.sh
cargo build --release -p event-router --bin event-router -p bench --bin event-router-bench
target_dir=${CARGO_TARGET_DIR:-target}
out=$target_dir/profile
mkdir -p "$out"
# The benchmark's default service binary is under target/; point it at the one just built.
service=(--service "$target_dir/release/event-router")
for arg in "$@"; do [[ $arg == --service* ]] && service=(); done
"$target_dir/release/event-router-bench" "${service[@]}" --end-to-end-only --perf "$out/perf.data" --out "$out" "$@"

# Share of CPU samples per process (postgres backends, the service, the benchmark hosting the
# embedded broker), then the service's own functions.
perf report -i "$out/perf.data" --sort pid --stdio 2>/dev/null | grep -v '^$' | head -30 >"$out/by-process.txt"
perf report -i "$out/perf.data" --pid "$(head -1 "$out/service.pid")" --sort dso,sym --stdio 2>/dev/null |
  grep -v '^$' | head -60 >"$out/service-functions.txt"
cat "$out/by-process.txt"
echo
cat "$out/service-functions.txt"
