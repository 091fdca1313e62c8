-- Catalog events (api/events.yaml): what happened to a cluster, a host or an infra-env, for
-- people to read. Written in the transaction of the handler that emitted them.
CREATE TABLE events (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL,
    severity text NOT NULL CHECK (severity IN ('info', 'warning', 'error', 'critical')),
    -- Rendered from the catalog's template; control characters escaped.
    message text NOT NULL,
    -- When it happened: the causing message's timestamp.
    event_time timestamptz NOT NULL,
    -- Which of these are set follows the event's type: cluster, host (and its infra-env), infra-env.
    cluster_id uuid,
    host_id uuid,
    infra_env_id uuid,
    properties jsonb NOT NULL,
    -- The tenant: only the org id of the identity, never the identity itself.
    org_id text,
    request_id text NOT NULL,
    source_topic text NOT NULL,
    source_partition integer NOT NULL,
    source_offset bigint NOT NULL,
    -- Occurrences folded into this row by the deduplication window, and their span.
    count integer NOT NULL DEFAULT 1 CHECK (count >= 1),
    first_seen timestamptz NOT NULL,
    last_seen timestamptz NOT NULL,
    -- sha256 of org, name, entity ids and message: what "the same event" means.
    dedup_key bytea NOT NULL
);

-- Reads are per tenant and entity, newest first, optionally by severity (the events API).
CREATE INDEX events_by_cluster ON events (org_id, cluster_id, event_time DESC, id DESC) WHERE cluster_id IS NOT NULL;
CREATE INDEX events_by_host ON events (org_id, host_id, event_time DESC, id DESC) WHERE host_id IS NOT NULL;
CREATE INDEX events_by_infra_env ON events (org_id, infra_env_id, event_time DESC, id DESC) WHERE infra_env_id IS NOT NULL;
CREATE INDEX events_by_severity ON events (org_id, severity, event_time DESC, id DESC);
-- The deduplication window looks up the newest row of an event.
CREATE INDEX events_by_dedup_key ON events (dedup_key, id DESC);
