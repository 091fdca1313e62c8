-- The inbox remembers what each handled record looked like, not only where it was. A topic that
-- is deleted and recreated (or a development broker that restarts empty) reuses offsets: a new
-- record at known coordinates must be handled, not mistaken for a redelivery. Rows written before
-- this column existed have an empty fingerprint and so never match a real record.
ALTER TABLE processed_messages ADD COLUMN fingerprint BYTEA NOT NULL DEFAULT ''::bytea;
ALTER TABLE processed_messages ALTER COLUMN fingerprint DROP DEFAULT;
