-- Retention (src/store/retention.rs) deletes inbox rows and dead letters older than their
-- configured age, in batches. BRIN indexes on the age columns let it find them without reading
-- the whole table: rows are appended in time order, so each block range's min/max summary is
-- tight. A BRIN index has no entry per row; the block range being filled is summarised later
-- (by VACUUM), so the insert path, which the inbox is on for every message, pays next to nothing,
-- where a B-tree would add an index insertion per row.
CREATE INDEX processed_messages_processed_at ON processed_messages USING brin (processed_at);
CREATE INDEX dead_letters_dead_lettered_at ON dead_letters USING brin (dead_lettered_at);
