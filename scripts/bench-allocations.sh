#!/usr/bin/env bash
# Heap allocations per message while the service drains a backlog: runs the benchmark's
# end-to-end step with the service under `valgrind --tool=dhat`, then prints allocations per
# message by the part of the service that made them. Counts, unlike CPU samples, barely move
# with the machine's load, so a change is measured in one run each. Arguments go to the
# benchmark (default: 20,000 messages, no steady phase; DHAT makes the service ~50x slower).
# Output: ${CARGO_TARGET_DIR:-target}/allocations/{dhat.out,by-part.txt,summary.json}; the last
# line printed is the figure to quote (the issue's target: at most 15 per message), and
# summary.json is what `make bench` quotes in its report (marked as a separate run), provided it
# was made from the same code (scripts/source-fingerprint.sh).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$(dirname "$0")/.."

. scripts/bench-valgrind.sh
# The code measured, recorded in summary.json: `make bench` quotes the figure only for that code.
source=$(scripts/source-fingerprint.sh)
# DHAT counts what goes through malloc; the service's jemalloc (a Cargo feature, on by default)
# is linked in statically and would not be seen, so this drain runs a build without it. The
# number of allocations the code makes does not depend on the allocator.
SERVICE_BUILD_FLAGS=--no-default-features drain_under_valgrind allocations "--tool=dhat --dhat-out-file=@OUT@/dhat.out" "$@"

python3 - "$out/dhat.out" "$messages" "$out/summary.json" "$source" <<'EOF' | tee "$out/by-part.txt"
import collections, datetime, json, re, sys
dhat = json.load(open(sys.argv[1]))
messages, frames = float(sys.argv[2]), dhat["ftbl"]
# The first pattern any frame of an allocation's stack matches names its part.
parts = [
    ("/metrics render (the benchmark polls it)", r"Metrics::render"),
    ("identity check", r"envelope::identity"),
    ("stream event", r"event_router::stream::"),
    ("outbox (write and relay)", r"event_router::outbox::"),
    ("inbox", r"event_router::store::"),
    ("handlers: emitted events (recorded and streamed)", r"event_router::events::"),
    ("handlers: typed payload and rows", r"event_router::router::|event_router::handlers::|event_router::topics::"),
    ("payload JSON and schema", r"envelope::open|envelope::check|envelope::validate"),
    ("pipeline: opening", r"pipeline::open::|Pipeline::open"),
    ("pipeline: transaction", r"pipeline::write::|pipeline::group_commit::|Attempt::write|GroupCommit"),
    ("consumer: copying messages out", r"event_router::consumer::|RawMessage::from_kafka"),
    ("librdkafka itself", r"rd_kafka|rd_buf|rd_list|rd_hdr"),
]
counts = collections.Counter()
for pp in dhat["pps"]:
    stack = " | ".join(frames[i] for i in pp["fs"])
    part = next((name for name, pattern in parts if re.search(pattern, stack)), "other")
    counts[part] += pp["tbk"]
total = sum(counts.values())
polled = counts["/metrics render (the benchmark polls it)"]
print(f"allocations per message: {total / messages:.1f}; without the benchmark's /metrics polling: {(total - polled) / messages:.1f}")
for part, count in counts.most_common():
    print(f"{count / messages:8.2f}  {part}")
summary = {
    "source": sys.argv[4],
    "when": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%MZ"),
    "messages": int(messages),
    "per_message": round(total / messages, 2),
    "per_message_without_polling": round((total - polled) / messages, 2),
    "target": 15,
    "by_part": {part: round(count / messages, 2) for part, count in counts.most_common()},
}
json.dump(summary, open(sys.argv[3], "w"), indent=2)
print(f"heap allocations per message (service, {int(messages):,} messages, without the benchmark's polling): "
      f"{summary['per_message_without_polling']:.1f} (target <= 15)")
EOF
