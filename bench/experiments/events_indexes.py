"""What each of the events table's indexes adds to the service's INSERT, per row: the same
rows go, alternating, into the events table as migrated and into copies of it that each lack
one of its secondary indexes (or all of them), in transactions of BATCH rows
(bench/README.md, section 25).

    target/bench-venv/bin/python bench/experiments/events_indexes.py [ROUNDS] [BATCH]

Needs pg_stat_statements (scripts/bench-enable-pg-stat-statements.sh). Prints each table's
statement time a row; its difference from `events` is what the missing index costs.
"""
import sys

import psycopg

import events_copy
import scratch_db

DB = "events_indexes_experiment"
ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 100
BATCH = int(sys.argv[2]) if len(sys.argv) > 2 else 232

with scratch_db.migrated(DB) as url, psycopg.connect(url) as conn, conn.cursor() as cur:
    cur.execute("""SELECT indexname, indexdef FROM pg_indexes
                    WHERE tablename = 'events' AND indexname <> 'events_pkey' ORDER BY indexname""")
    indexes = dict(cur.fetchall())
    tables = ["events"]
    for left_out in list(indexes) + ["all"]:
        table = f"without_{left_out}"
        cur.execute(f"CREATE TABLE {table} (LIKE events INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING IDENTITY)")
        cur.execute(f"ALTER TABLE {table} ADD PRIMARY KEY (id)")
        for name, definition in indexes.items():
            if left_out not in (name, "all"):
                cur.execute(definition.replace(f"INDEX {name} ON public.events ", f"INDEX {table}_{name} ON public.{table} "))
        tables.append(table)
    conn.commit()
    cur.execute("SELECT pg_stat_statements_reset()")
    for round_ in range(ROUNDS):
        batch = events_copy.rows(BATCH)
        for table in tables if round_ % 2 == 0 else reversed(tables):
            cur.execute(events_copy.INSERT.replace("INSERT INTO events ", f"INSERT INTO {table} "),
                        [list(column) for column in zip(*batch)], binary=True)
            cur.fetchall()
            conn.commit()
    cur.execute("""SELECT substring(query from 'INSERT INTO (\\S+)'), calls, rows,
                          round((total_exec_time * 1000 / nullif(rows, 0))::numeric, 2)
                     FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = %s)
                      AND query LIKE 'INSERT INTO %%' ORDER BY 4 DESC""", (DB,))
    print(f"{ROUNDS} rounds of {BATCH} rows into each table")
    print("table | calls | rows | µs a row")
    for row in cur.fetchall():
        print(" | ".join(str(x) for x in row))
