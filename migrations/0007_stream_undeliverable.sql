-- Stream events that Kafka refused for good (a record over the broker's size limit, an invalid
-- record): the relay moves them here instead of retrying them forever, which would stop every
-- event behind them. Nothing here is retried automatically; an operator inspects the rows
-- (event_router_stream_undeliverable_total alerts on them). The raw x-rh-identity header is not
-- kept, only the request id.
CREATE TABLE stream_undeliverable (
    id          BIGSERIAL   PRIMARY KEY,
    outbox_id   BIGINT      NOT NULL,
    topic       TEXT        NOT NULL,
    message_key BYTEA,
    payload     BYTEA       NOT NULL,
    request_id  TEXT,
    error       TEXT        NOT NULL,
    parked_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);
