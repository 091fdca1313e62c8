-- Events older than EVENTS_RETENTION_HOURS (by when they were last seen) are pruned; the
-- retention task finds them through this index, which costs the insert path almost nothing.
CREATE INDEX events_last_seen_brin ON events USING brin (last_seen);
