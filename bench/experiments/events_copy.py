"""Statement time of writing catalog events: the service's INSERT ... SELECT FROM UNNEST against
binary COPY (with ids reserved from the sequence first), alternating, in transactions of BATCH
rows, into a fresh database migrated like the service's (bench/README.md, section 24).

    target/bench-venv/bin/python bench/experiments/events_copy.py [ROUNDS] [BATCH]

Needs pg_stat_statements loaded (scripts/bench-enable-pg-stat-statements.sh) and
PostgreSQL at DATABASE_ADMIN_URL (default postgres://postgres@127.0.0.1:5432/postgres). Prints
each statement's calls, rows, total ms and µs a row: execution time on the server, which for
COPY includes receiving the data.
"""
import datetime, json, os, random, struct, sys, uuid

import psycopg
from psycopg.types.json import Jsonb

import scratch_db

DB = "events_copy_experiment"
ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 200
BATCH = int(sys.argv[2]) if len(sys.argv) > 2 else 232  # the service's rows per events INSERT


COLUMNS = ("name, severity, message, event_time, cluster_id, host_id, infra_env_id, properties, org_id, "
           "request_id, source_topic, source_partition, source_offset, count, first_seen, last_seen, dedup_key")
TYPES = ["text", "text", "text", "timestamptz", "uuid", "uuid", "uuid", "jsonb", "text", "text", "text",
         "int4", "int8", "int4", "timestamptz", "timestamptz", "bytea"]
INSERT = (f"INSERT INTO events ({COLUMNS}) SELECT {', '.join(f'c{i}' for i in range(17))} FROM UNNEST("
          + ", ".join(f"%s::{t}[]" for t in TYPES)
          + f") WITH ORDINALITY AS r({', '.join(f'c{i}' for i in range(17))}, n) ORDER BY n RETURNING id")
EPOCH = datetime.datetime(2000, 1, 1, tzinfo=datetime.timezone.utc)
ORGS = [str(random.randint(10000, 99999)) for _ in range(50)]
CLUSTERS = [uuid.uuid4() for _ in range(2000)]


def rows(n):
    """Rows shaped like the service's: a host or cluster event, a small properties object."""
    now = datetime.datetime.now(datetime.timezone.utc)
    out = []
    for _ in range(n):
        cluster = random.choice(CLUSTERS)
        host = uuid.uuid4() if random.random() < 0.5 else None
        out.append(("host_validation_failed", random.choice(["info", "warning", "error"]),
                    f"Host {host or cluster}: validation 'has-inventory' that used to succeed is now failing", now,
                    cluster, host, cluster if host else None,
                    Jsonb({"host_id": str(host), "validation_id": "has-inventory", "status": "failure"}),
                    random.choice(ORGS), str(uuid.uuid4()), "platform.events.host-status", random.randint(0, 63),
                    random.randint(0, 10**6), 1, now, now, os.urandom(16)))
    return out


def binary(kind, value):
    """One value in COPY's binary format, None for NULL."""
    if value is None:
        return None
    if kind == "text":
        return value.encode()
    if kind == "timestamptz":
        delta = value - EPOCH
        return struct.pack(">q", (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds)
    if kind == "uuid":
        return value.bytes
    if kind == "jsonb":
        return b"\x01" + json.dumps(value.obj).encode()
    if kind == "int4":
        return struct.pack(">i", value)
    if kind == "int8":
        return struct.pack(">q", value)
    return bytes(value)


def main():
    with scratch_db.migrated(DB) as url, psycopg.connect(url) as conn, conn.cursor() as cur:
        for round_ in range(ROUNDS):
            for mode in (("insert", "copy") if round_ % 2 == 0 else ("copy", "insert")):
                batch = rows(BATCH)
                if mode == "insert":
                    cur.execute(INSERT, [list(column) for column in zip(*batch)], binary=True)
                    cur.fetchall()
                else:
                    cur.execute("SELECT nextval(pg_get_serial_sequence('events', 'id')) FROM generate_series(1, %s)", (BATCH,))
                    ids = [row[0] for row in cur.fetchall()]
                    data = bytearray(b"PGCOPY\n\xff\r\n\0" + bytes(8))
                    for id_, row in zip(ids, batch):
                        data += struct.pack(">h", 18)
                        for value in [struct.pack(">q", id_)] + [binary(k, v) for k, v in zip(TYPES, row)]:
                            data += struct.pack(">i", -1) if value is None else struct.pack(">i", len(value)) + value
                    data += struct.pack(">h", -1)
                    with cur.copy(f"COPY events (id, {COLUMNS}) FROM STDIN (FORMAT BINARY)") as copy:
                        copy.write(bytes(data))
                conn.commit()
        cur.execute("""SELECT left(regexp_replace(query, '\\s+', ' ', 'g'), 50), calls, rows, round(total_exec_time::numeric, 1),
                              round((total_exec_time * 1000 / nullif(rows, 0))::numeric, 2)
                         FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = %s)
                          AND (query LIKE 'INSERT INTO events%%' OR query LIKE 'COPY events%%' OR query LIKE '%%nextval%%')
                        ORDER BY total_exec_time DESC""", (DB,))
        print(f"{ROUNDS} rounds of {BATCH} rows each way")
        print("statement | calls | rows | total ms | µs a row")
        for row in cur.fetchall():
            print(" | ".join(str(x) for x in row))


if __name__ == "__main__":
    main()
