-- Rows written by the sample topics' handlers, plus the inbox that makes redelivery a no-op.

-- One row per consumed message that was handled: a redelivered message finds its row and is
-- skipped, so handler effects happen once even though Kafka delivers at least once.
CREATE TABLE processed_messages (
    topic        TEXT        NOT NULL,
    kafka_partition INTEGER  NOT NULL,
    kafka_offset BIGINT      NOT NULL,
    request_id   TEXT        NOT NULL,
    org_id       TEXT,
    processed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, kafka_partition, kafka_offset)
);

CREATE TABLE todos (
    id          INTEGER     PRIMARY KEY,
    title       TEXT        NOT NULL,
    description TEXT        NOT NULL,
    org_id      TEXT,
    request_id  TEXT        NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Latest known status per host; an older event never overwrites a newer one.
CREATE TABLE host_statuses (
    host_id     UUID        PRIMARY KEY,
    cluster_id  UUID        NOT NULL,
    status      TEXT        NOT NULL,
    status_info TEXT        NOT NULL,
    validations JSONB       NOT NULL DEFAULT '[]',
    updated_at  TIMESTAMPTZ NOT NULL,
    org_id      TEXT,
    request_id  TEXT        NOT NULL
);
CREATE INDEX host_statuses_cluster_id ON host_statuses (cluster_id);

-- Every progress report, in arrival order; the latest per cluster is the current state.
CREATE TABLE cluster_install_progress (
    id          BIGSERIAL   PRIMARY KEY,
    cluster_id  UUID        NOT NULL,
    stage       TEXT        NOT NULL,
    progress    SMALLINT    NOT NULL CHECK (progress BETWEEN 0 AND 100),
    hosts       JSONB       NOT NULL,
    org_id      TEXT,
    request_id  TEXT        NOT NULL,
    reported_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX cluster_install_progress_cluster ON cluster_install_progress (cluster_id, id DESC);
