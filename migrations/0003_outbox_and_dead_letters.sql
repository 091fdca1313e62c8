-- The transactional outbox: a handled message's stream event is written in the same transaction
-- as the handler's rows and the inbox row, so an event exists exactly when its effects do. The
-- relay publishes rows in id order and deletes each only after the broker acknowledged it.
CREATE TABLE outbox (
    id               BIGSERIAL   PRIMARY KEY,
    topic            TEXT        NOT NULL,
    message_key      BYTEA,
    payload          BYTEA       NOT NULL,
    headers          JSONB       NOT NULL DEFAULT '[]',
    source_topic     TEXT        NOT NULL,
    source_partition INTEGER     NOT NULL,
    source_offset    BIGINT      NOT NULL,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Every dead-lettered message: where it came from, why it was rejected, and where its copy in the
-- dead-letter topic is. The original headers are not kept here (they hold the raw x-rh-identity,
-- which is never stored in the database); the copy in the dead-letter topic has them.
CREATE TABLE dead_letters (
    id                 BIGSERIAL   PRIMARY KEY,
    topic              TEXT        NOT NULL,
    kafka_partition    INTEGER     NOT NULL,
    kafka_offset       BIGINT      NOT NULL,
    fingerprint        BYTEA       NOT NULL,
    message_key        BYTEA,
    payload            BYTEA,
    original_timestamp TIMESTAMPTZ,
    stage              TEXT        NOT NULL,
    reason             TEXT        NOT NULL,
    error_class        TEXT        NOT NULL,
    message            TEXT        NOT NULL,
    attempts           INTEGER     NOT NULL,
    consumer_group     TEXT        NOT NULL,
    request_id         TEXT,
    org_id             TEXT,
    dlq_partition      INTEGER     NOT NULL,
    dlq_offset         BIGINT      NOT NULL,
    dead_lettered_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    replayed_at        TIMESTAMPTZ,
    UNIQUE (topic, kafka_partition, kafka_offset, fingerprint)
);
CREATE INDEX dead_letters_reason ON dead_letters (topic, reason, dead_lettered_at);
