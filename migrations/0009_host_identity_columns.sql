-- host-status-changed may carry the host's infra-env and name (optional members): the host's
-- events need the infra-env, and a name makes their messages readable. Kept from the last
-- message that had them, so a later message without them still has both.
ALTER TABLE host_statuses ADD COLUMN infra_env_id uuid, ADD COLUMN host_name text;
