"""Statement time of the inbox: a row per message (what the service writes: one read of each
partition's offset range, then one INSERT ... SELECT FROM UNNEST of the new rows) against a row
per partition and transaction holding the run's offsets and fingerprints packed in one bytea
(the per-partition record the issue's "high-water mark" candidate would need to keep offset
reuse detectable), taken under a per-partition advisory lock. Alternating, into a fresh
database migrated like the service's (bench/README.md, section 24).

    target/bench-venv/bin/python bench/experiments/inbox_runs.py [ROUNDS] [MESSAGES] [PARTITIONS]

MESSAGES a transaction (default 193, the service's average rows per inbox INSERT in `make
bench`), spread over PARTITIONS partitions (default 4). Needs pg_stat_statements loaded
(scripts/bench-enable-pg-stat-statements.sh) and PostgreSQL at DATABASE_ADMIN_URL (default
postgres://postgres@127.0.0.1:5432/postgres). Prints µs a message for each variant's
statements.
"""
import hashlib, os, sys, uuid

import psycopg

import scratch_db

DB = "inbox_runs_experiment"
ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 300
MESSAGES = int(sys.argv[2]) if len(sys.argv) > 2 else 193
PARTITIONS = int(sys.argv[3]) if len(sys.argv) > 3 else 4
TOPIC = "platform.events.host-status"
# The candidate's table: one row per partition and transaction.
RUNS_TABLE = (
    """CREATE TABLE inbox_runs (
        topic text NOT NULL, kafka_partition int4 NOT NULL, first_offset int8 NOT NULL, last_offset int8 NOT NULL,
        entries bytea NOT NULL, processed_at timestamptz NOT NULL DEFAULT now())""",
    "CREATE INDEX inbox_runs_range ON inbox_runs (topic, kafka_partition, last_offset)",
    "CREATE INDEX inbox_runs_processed_at ON inbox_runs USING brin (processed_at)",
)

next_offset = {("rows", p): 0 for p in range(PARTITIONS)} | {("runs", p): 0 for p in range(PARTITIONS)}


def batch(variant):
    """MESSAGES messages over PARTITIONS partitions: (partition, offset, fingerprint, request id, org id)."""
    out = []
    for n in range(MESSAGES):
        p = n % PARTITIONS
        offset = next_offset[(variant, p)]
        next_offset[(variant, p)] += 1
        out.append((p, offset, hashlib.sha256(os.urandom(16)).digest(), str(uuid.uuid4()), "12345"))
    return out


with scratch_db.migrated(DB, *RUNS_TABLE) as url, psycopg.connect(url) as conn, conn.cursor() as cur:
    for round_ in range(ROUNDS):
        for variant in (("rows", "runs") if round_ % 2 == 0 else ("runs", "rows")):
            messages = batch(variant)
            ranges = {}
            for p, offset, *_ in messages:
                low, high = ranges.get(p, (offset, offset))
                ranges[p] = (min(low, offset), max(high, offset))
            parts = sorted(ranges)
            if variant == "rows":
                # The service's read (src/store/mod.rs, INBOX_RANGES).
                cur.execute("""SELECT r.topic, r.kafka_partition, p.kafka_offset, p.fingerprint
                     FROM UNNEST(%s::text[], %s::int4[], %s::int8[], %s::int8[]) AS r(topic, kafka_partition, low, high)
                     CROSS JOIN LATERAL (SELECT p.kafka_offset, p.fingerprint FROM processed_messages AS p
                                          WHERE p.topic = r.topic AND p.kafka_partition = r.kafka_partition
                                            AND p.kafka_offset BETWEEN r.low AND r.high
                                          ORDER BY p.kafka_offset LIMIT r.high - r.low + 1) AS p""",
                            ([TOPIC] * len(parts), parts, [ranges[p][0] for p in parts], [ranges[p][1] for p in parts]),
                            binary=True)
                cur.fetchall()
                cur.execute("""INSERT INTO processed_messages (topic, kafka_partition, kafka_offset, fingerprint, request_id, org_id)
                     SELECT * FROM UNNEST(%s::text[], %s::int4[], %s::int8[], %s::bytea[], %s::text[], %s::text[])""",
                            ([TOPIC] * len(messages), [m[0] for m in messages], [m[1] for m in messages],
                             [m[2] for m in messages], [m[3] for m in messages], [m[4] for m in messages]), binary=True)
            else:
                cur.execute("SELECT pg_advisory_xact_lock(k) FROM UNNEST(%s::int8[]) WITH ORDINALITY AS l(k, n) ORDER BY n",
                            ([1_000_000 + p for p in parts],), binary=True)
                # One index range per partition: the runs ending at or after the batch's first
                # offset (a run never spans more than one transaction's messages).
                cur.execute("""SELECT r.kafka_partition, x.entries
                     FROM UNNEST(%s::text[], %s::int4[], %s::int8[], %s::int8[]) AS r(topic, kafka_partition, low, high)
                     CROSS JOIN LATERAL (SELECT x.entries FROM inbox_runs x
                                          WHERE x.topic = r.topic AND x.kafka_partition = r.kafka_partition
                                            AND x.last_offset >= r.low AND x.first_offset <= r.high
                                          ORDER BY x.last_offset LIMIT r.high - r.low + 1) AS x""",
                            ([TOPIC] * len(parts), parts, [ranges[p][0] for p in parts], [ranges[p][1] for p in parts]),
                            binary=True)
                cur.fetchall()
                # Per message: the offset's distance from the run's first (4 bytes) and 16 bytes of
                # the fingerprint; request and org ids are not kept per message.
                entries = {p: bytearray() for p in parts}
                for p, offset, fingerprint, *_ in messages:
                    entries[p] += (offset - ranges[p][0]).to_bytes(4, "big") + fingerprint[:16]
                cur.execute("""INSERT INTO inbox_runs (topic, kafka_partition, first_offset, last_offset, entries)
                     SELECT * FROM UNNEST(%s::text[], %s::int4[], %s::int8[], %s::int8[], %s::bytea[])""",
                            ([TOPIC] * len(parts), parts, [ranges[p][0] for p in parts], [ranges[p][1] for p in parts],
                             [bytes(entries[p]) for p in parts]), binary=True)
            conn.commit()
        if round_ == 20:
            # As autovacuum would by then: without statistics the planner scans the young
            # runs table whole.
            cur.execute("ANALYZE inbox_runs")
            cur.execute("ANALYZE processed_messages")
            conn.commit()
    cur.execute("""SELECT CASE WHEN query LIKE '%%inbox_runs%%' OR query LIKE '%%advisory%%' THEN 'runs' ELSE 'rows' END,
                          left(regexp_replace(query, '\\s+', ' ', 'g'), 60), calls, round(total_exec_time::numeric, 1)
                     FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = %s)
                      AND (query LIKE '%%processed_messages%%' OR query LIKE '%%inbox_runs%%' OR query LIKE '%%advisory%%')
                    ORDER BY 1, 4 DESC""", (DB,))
    totals = {}
    print(f"{ROUNDS} transactions each way, {MESSAGES} messages over {PARTITIONS} partitions each")
    for variant, query, calls, ms in cur.fetchall():
        totals[variant] = totals.get(variant, 0) + float(ms)
        print(f"{variant} | {query} | {calls} calls | {ms} ms")
    for variant, ms in sorted(totals.items()):
        print(f"{variant}: {ms * 1000 / (ROUNDS * MESSAGES):.2f} µs a message")
