-- Exists only in scripts/check-new-topic.sh's copy of the tree.
CREATE TABLE widgets (
    widget_id uuid PRIMARY KEY,
    name text NOT NULL,
    org_id text
);
