-- The inbox keeps one row per partition and transaction instead of one per message.
--
-- A row per message was most of the inbox's statement time: an index entry, a heap tuple and
-- their WAL for every message, and the read of each batch's range then returned a row per
-- message (bench/README.md, sections 24 and 26). A run holds what the inbox needs to know about
-- each message it covers, its offset and its fingerprint, packed: `offsets` is 8 bytes per
-- message (big-endian), `fingerprints` the 32-byte fingerprint of each, in the same order.
-- `first_offset` and `last_offset` bound the run, so a batch's read is one index range per
-- partition. The request and org ids are no longer kept per message: the handlers' rows, the
-- stream events and the logs have them.
--
-- Without a row per offset there is no unique key for two instances writing the same partition
-- during a rebalance to collide on; the service takes a transaction-scoped advisory lock per
-- partition before it reads the partition's runs instead (src/store/mod.rs).
--
-- A reused offset (a recreated topic) is recorded again in a newer run: the newest entry for an
-- offset (highest `id`, then its last position in the run) is what the inbox knows.
--
-- `processed_messages` stays, read but no longer written, so that rows of earlier releases still
-- mark their messages as handled until retention removes them. An earlier release does not read
-- the runs: stop every instance of it before starting this one (README.md, "Upgrading").
CREATE TABLE inbox_runs (
    id              BIGINT      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    topic           TEXT        NOT NULL,
    kafka_partition INTEGER     NOT NULL,
    first_offset    BIGINT      NOT NULL,
    last_offset     BIGINT      NOT NULL,
    offsets         BYTEA       NOT NULL,
    fingerprints    BYTEA       NOT NULL,
    processed_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT inbox_runs_shape CHECK (
        length(offsets) > 0 AND length(offsets) % 8 = 0
        AND length(fingerprints) = length(offsets) * 4
        AND first_offset <= last_offset
        -- MAX_RUN_SPAN in src/store/mod.rs: the inbox's read relies on it.
        AND last_offset - first_offset < 10000)
);
-- Offsets and fingerprints do not compress: keep PostgreSQL from trying.
ALTER TABLE inbox_runs ALTER COLUMN offsets SET STORAGE EXTERNAL, ALTER COLUMN fingerprints SET STORAGE EXTERNAL;
CREATE INDEX inbox_runs_range ON inbox_runs (topic, kafka_partition, last_offset);
CREATE INDEX inbox_runs_processed_at ON inbox_runs USING brin (processed_at);

-- Every entry of the inbox, one row per message, for people and tests (the service reads the
-- tables itself). An offset recorded again (a reused offset) appears once per recording; the
-- newest (highest `run`, then `position`) is what the service goes by. An earlier release's row
-- is run 0.
CREATE VIEW inbox_entries AS
SELECT topic, kafka_partition, kafka_offset, fingerprint, processed_at, 0::bigint AS run, 0 AS position
FROM processed_messages
UNION ALL
SELECT r.topic, r.kafka_partition,
       ('x' || encode(substring(r.offsets FROM n * 8 + 1 FOR 8), 'hex'))::bit(64)::bigint,
       substring(r.fingerprints FROM n * 32 + 1 FOR 32), r.processed_at, r.id, n
FROM inbox_runs AS r CROSS JOIN LATERAL generate_series(0, length(r.offsets) / 8 - 1) AS n;
