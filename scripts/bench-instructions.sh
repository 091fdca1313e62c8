#!/usr/bin/env bash
# CPU instructions per message while the service drains a backlog: runs the benchmark's
# end-to-end step with the service under `valgrind --tool=callgrind`, then prints instructions
# per message, in all and by the part of the service that ran them. CPU seconds on this shared
# 2-core machine move by 10% from run to run, more than most single changes do; the service's
# own parts move by under 1% here (timing still decides a few things, such as how many partitions
# a merged write gathers), librdkafka's threads by up to 15% (how its fetches and produce batches
# fall). So a change is judged by the part it touches, and `make bench` gives the seconds.
# Arguments go to the benchmark (default: 20,000 messages, no steady phase; callgrind makes the
# service ~50x slower).
# Output: ${CARGO_TARGET_DIR:-target}/instructions/{callgrind.out,by-part.txt,summary.json}; the
# last line printed is the figure to quote.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$(dirname "$0")/.."

. scripts/bench-valgrind.sh
drain_under_valgrind instructions "--tool=callgrind --callgrind-out-file=@OUT@/callgrind.out" "$@"

callgrind_annotate --inclusive=yes --threshold=100 "$out/callgrind.out" >"$out/annotated.txt" 2>/dev/null
python3 - "$out/annotated.txt" "$messages" "$out/summary.json" <<'EOF' | tee "$out/by-part.txt"
import datetime, json, re, sys
text = open(sys.argv[1]).read()
messages = float(sys.argv[2])
total = int(re.search(r"^\s*([\d,]+) \(100\.0%\)\s+PROGRAM TOTALS", text, re.M).group(1).replace(",", ""))
inclusive = {}
for line in text.splitlines():
    m = re.match(r"^\s*([\d,]+) \(\s*[\d.]+%\)\s+\*?\s*(?:\S+?:)?(.+?)(?: \[[^\]]*\])?\s*$", line)
    if m:
        inclusive.setdefault(m.group(2), int(m.group(1).replace(",", "")))
def part(pattern):
    # The largest inclusive count of a function matching `pattern`: its outermost frame.
    return max((v for k, v in inclusive.items() if re.search(pattern, k)), default=0)
# Inclusive counts of the functions each part runs under. The indented parts are inside the one
# above them; binding parameters and SHA-256 are inside several of them.
parts = [
    ("partition workers (opening, transactions, dead letters)", r"event_router::consumer::partition_worker::\{\{closure\}\}$"),
    ("  opening (JSON, schema, identity, stream event)", r"event_router::pipeline::open::<impl event_router::pipeline::Pipeline>::open$"),
    ("    identity check (with its cache key's SHA-256)", r"IdentityCache::check$"),
    ("    payload JSON parse", r"^serde_json::de::from_trait"),
    ("    schema check", r"Validators::check_payload"),
    ("    stream event", r"event_router::stream::enriched_event$"),
    ("  transactions (inbox, handlers, events, outbox)", r"event_router::pipeline::write::Attempt::write_once::\{\{closure\}\}$"),
    ("    inbox fingerprints (SHA-256 nearly all)", r"^event_router::message::fingerprints$"),
    ("    handlers", r"ErasedHandler>::call::\{\{closure\}\}$"),
    ("    catalog stream records", r"^event_router::events::stream::render$"),
    ("    events' dedup keys (SHA-256)", r"events::record::dedup_key$"),
    ("    outbox row", r"^event_router::outbox::pack$"),
    ("consumer loop (copying messages out, dispatch)", r"event_router::consumer::run::\{\{closure\}\}$"),
    ("outbox relay", r"event_router::outbox::Relay::run::\{\{closure\}\}$"),
    ("librdkafka's broker threads (fetch, produce)", r"^rd_kafka_broker_thread_main$"),
    ("binding statements' parameters (every statement, inside the parts above)", r"^sqlx_core::query::Query<DB,<DB as sqlx_core::database::Database>::Arguments>::bind$"),
    ("SHA-256 (fingerprints, identity cache, dedup keys)", r"^sha2::sha256::compress256$"),
    ("/metrics render (the benchmark polls it)", r"Metrics::render$"),
]
print(f"instructions per message, all of the process: {total / messages:,.0f}")
rows = {}
for name, pattern in parts:
    rows[name] = part(pattern)
    print(f"{rows[name] / messages:12,.0f}  {name}")
# valgrind's CPU has no SHA extensions, so SHA-256 runs in software here: about 30% of these
# instructions, against 2-3% of the service's CPU samples in a real run (perf, SHA-NI). It is
# left out of the figure to quote, as is the benchmark's polling.
sha, polled = rows[parts[-2][0]], rows[parts[-1][0]]
per_message = (total - sha - polled) / messages
summary = {
    "when": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%MZ"),
    "messages": int(messages),
    "instructions_per_message": round(per_message),
    "by_part": {name.strip(): round(v / messages) for name, v in rows.items()},
}
json.dump(summary, open(sys.argv[3], "w"), indent=2)
print(f"instructions per message (service, {int(messages):,} messages, without SHA-256 and the benchmark's polling): {per_message:,.0f}")
EOF
