-- Event writers (syslog, hooks) read the events table in the order of the transactions that
-- wrote it. An id is handed out at insert, so a transaction can commit a lower id after a
-- higher one was read; the writing transaction's id is kept with each event, and a writer reads
-- only events of transactions older than every transaction still running
-- (pg_snapshot_xmin), in (tx_id, id) order: nothing can appear behind its cursor.
ALTER TABLE events ADD COLUMN tx_id xid8 NOT NULL DEFAULT pg_current_xact_id();
CREATE INDEX events_by_transaction ON events (tx_id, id);

-- How far each writer has delivered, advanced only after the writer confirmed.
CREATE TABLE writer_progress (
    writer text PRIMARY KEY,
    tx_id xid8 NOT NULL DEFAULT '0',
    event_id bigint NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Deliveries a writer gave up on after its attempts (a hook that kept failing), for operators.
CREATE TABLE writer_failures (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    writer text NOT NULL,
    event_id bigint NOT NULL,
    attempts integer NOT NULL,
    error text NOT NULL,
    failed_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX writer_failures_by_writer ON writer_failures (writer, failed_at DESC);
