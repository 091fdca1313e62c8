//! PostgreSQL: the connection pool, migrations, and the inbox that makes handling idempotent.
//!
//! A message's handler writes, and the inbox entry that records the message as handled, commit in
//! one transaction. A redelivered message (same topic, partition, offset and fingerprint) finds
//! its entry and is skipped, so Kafka's at-least-once delivery yields exactly-once effects in the
//! database.

use std::collections::HashMap;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres, Transaction};

pub mod dead_letters;
pub mod retention;

use crate::config::redact_url;
use crate::message::RawMessage;

pub type Tx = Transaction<'static, Postgres>;

/// `application_name` of the service's database sessions.
pub const APPLICATION_NAME: &str = "event-router";

/// Embedded migrations from `migrations/`.
pub(crate) static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// A database problem at start-up, naming the setting and the redacted URL.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("DATABASE_URL ({url}) is not usable: {source}")]
    Connect { url: String, source: sqlx::Error },
    #[error("migrations failed on {url}: {source}")]
    Migrate { url: String, source: sqlx::migrate::MigrateError },
}

/// Connects a pool. Connections are made lazily and re-made after failures, so a database that
/// goes away and comes back needs no restart.
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, StoreError> {
    let options: PgConnectOptions =
        url.parse::<PgConnectOptions>().map_err(|source| StoreError::Connect { url: redact_url(url), source })?;
    // Named, so operators (and the fault-injection tests) can find the service's sessions.
    let options = options.application_name(APPLICATION_NAME);
    // No ping before each acquire: sqlx pings every connection when it is released anyway, and a
    // connection that died while idle fails its first statement, which the callers retry like
    // any transient failure. The ping was a round trip per transaction (bench/README.md, 18.).
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .test_before_acquire(false)
        .connect_with(options)
        .await
        .map_err(|source| StoreError::Connect { url: redact_url(url), source })
}

/// Creates the database if it does not exist, then applies migrations.
pub async fn create_and_migrate(url: &str) -> Result<(), StoreError> {
    use sqlx::migrate::MigrateDatabase;
    let redacted = redact_url(url);
    if !Postgres::database_exists(url).await.map_err(|source| StoreError::Connect { url: redacted.clone(), source })? {
        Postgres::create_database(url).await.map_err(|source| StoreError::Connect { url: redacted.clone(), source })?;
    }
    let pool = connect(url, 2).await?;
    MIGRATOR.run(&pool).await.map_err(|source| StoreError::Migrate { url: redacted, source })?;
    pool.close().await;
    Ok(())
}

/// What the inbox knew about a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboxEntry {
    /// Never seen: handle it.
    New,
    /// The same record was handled before: a redelivery, nothing to do.
    Redelivery,
    /// A different record was handled at these coordinates before: the topic was recreated and
    /// offsets restarted. Handle it; it is recorded again, and the newer entry is the one that
    /// counts.
    OffsetReused,
}

/// What the inbox knows a message by: where it was (or, for a replayed dead letter, where the
/// original was) and what it looked like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxKey {
    pub topic: std::sync::Arc<str>,
    pub partition: i32,
    pub offset: i64,
    /// [`crate::message::Fingerprints::current`]: what this release stores.
    pub fingerprint: [u8; 32],
    /// [`crate::message::Fingerprints::legacy`]: a stored row that has it is this record too.
    pub legacy_fingerprint: [u8; 32],
}

impl InboxKey {
    pub fn of(message: &RawMessage) -> Self {
        let fingerprints = message.fingerprints();
        InboxKey {
            topic: message.topic.clone(),
            partition: message.partition,
            offset: message.offset,
            fingerprint: fingerprints.current,
            legacy_fingerprint: fingerprints.legacy,
        }
    }

    /// Whether a stored fingerprint is this record's.
    pub fn matches(&self, stored: &[u8]) -> bool {
        stored == self.fingerprint || stored == self.legacy_fingerprint
    }
}

/// The original a replayed message claims to be, with the replayed message's own fingerprints
/// (`key`'s: key, value, timestamp and headers are the original's, so the fingerprints agree
/// when the claim is true).
pub(crate) fn replay_of(message: &RawMessage, key: &InboxKey) -> Option<InboxKey> {
    let value = std::str::from_utf8(message.header(crate::message::REPLAY_OF)?).ok()?;
    let mut parts = value.rsplitn(3, '/');
    let offset = parts.next()?.parse().ok()?;
    let partition = parts.next()?.parse().ok()?;
    let topic = parts.next()?.into();
    Some(InboxKey { topic, partition, offset, ..key.clone() })
}

/// The widest run: its last offset is less than this many offsets past its first (the
/// `inbox_runs_shape` constraint of migration 0012 says the same). A batch's messages of one
/// partition further apart than this make two runs. The bound is what lets the read of a range
/// stop: a run that starts at or before a range's end ends at most this far past it, so the read
/// scans the runs ending in that window only, not every later run of the partition (which a
/// consumer group reset to the earliest offset would otherwise pay for on every batch).
pub const MAX_RUN_SPAN: i64 = 10_000;

/// Records a batch of messages in the inbox, in the batch's transaction; the entries come back in
/// the order of `keys`.
///
/// The inbox keeps a run per partition and transaction (migration 0012): the offsets and
/// fingerprints of the messages it recorded, packed. Three statements whatever the batch's size:
/// 1. an advisory lock per partition, held until the transaction ends, so that two instances
///    writing one partition at once (a rebalance) take turns; the second then reads what the
///    first committed and finds its messages redelivered;
/// 2. one read of what the inbox holds in each partition's offset range, from the runs and from
///    the rows of earlier releases;
/// 3. one insert of a run per partition, of the messages that were new or whose offset was reused,
///    timed when it is written (not when the transaction began, which may be before it waited
///    for the lock), so that a newer run of an offset never looks older to the retention.
///
/// A key that repeats within the batch (two replays of one dead letter) is a redelivery the
/// second time: the batch's own entries count as known once decided.
pub async fn record_all_in_inbox(tx: &mut Tx, keys: &[InboxKey]) -> Result<Vec<InboxEntry>, sqlx::Error> {
    let mut entries = vec![InboxEntry::Redelivery; keys.len()];
    if keys.is_empty() {
        return Ok(entries);
    }
    let segments = Segment::of(keys);
    // 1. Turns per partition, in one order for every instance so that two never wait on each other.
    sqlx::query(LOCK_PARTITIONS)
        .bind(segments.iter().map(|s| s.topic).collect::<Vec<_>>())
        .bind(segments.iter().map(|s| s.partition).collect::<Vec<_>>())
        .execute(&mut **tx)
        .await?;
    // 2. What the inbox holds at the batch's coordinates: the newest entry of each offset.
    let mut known: HashMap<(&str, i32, i64), Option<[u8; 32]>> =
        keys.iter().map(|k| ((&*k.topic, k.partition, k.offset), None)).collect();
    let mut runs: Vec<(i64, i64, Vec<u8>, Vec<u8>)> = sqlx::query_as(INBOX_RANGES)
        .bind(segments.iter().map(|s| s.topic).collect::<Vec<_>>())
        .bind(segments.iter().map(|s| s.partition).collect::<Vec<_>>())
        .bind(segments.iter().map(|s| s.low).collect::<Vec<_>>())
        .bind(segments.iter().map(|s| s.high).collect::<Vec<_>>())
        .bind(segments.iter().map(|s| s.high.saturating_add(MAX_RUN_SPAN - 1)).collect::<Vec<_>>())
        .fetch_all(&mut **tx)
        .await?;
    // Oldest first (an earlier release's row is run 0), so that a newer entry overwrites.
    runs.sort_by_key(|(_, run, ..)| *run);
    for (segment, _, offsets, fingerprints) in &runs {
        let Some(segment) = usize::try_from(*segment - 1).ok().and_then(|s| segments.get(s)) else { continue };
        for (offset, fingerprint) in offsets.chunks_exact(8).zip(fingerprints.chunks_exact(32)) {
            let offset = i64::from_be_bytes(offset.try_into().expect("8 bytes"));
            if let Some(slot) = known.get_mut(&(segment.topic, segment.partition, offset)) {
                *slot = Some(fingerprint.try_into().expect("32 bytes"));
            }
        }
    }
    // 3. New runs, of the messages the inbox did not know as they are.
    let mut new_runs = NewRuns::default();
    for segment in &segments {
        let mut written: Vec<usize> = Vec::new();
        for &i in &segment.members {
            let key = &keys[i];
            let slot = known.get_mut(&(&*key.topic, key.partition, key.offset)).expect("every key is known");
            entries[i] = match slot {
                None => InboxEntry::New,
                Some(stored) if key.matches(stored) => InboxEntry::Redelivery,
                Some(_) => InboxEntry::OffsetReused,
            };
            if entries[i] != InboxEntry::Redelivery {
                *slot = Some(key.fingerprint);
                written.push(i);
            }
        }
        new_runs.push(segment, &written, keys);
    }
    if !new_runs.topics.is_empty() {
        sqlx::query(
            "INSERT INTO inbox_runs (topic, kafka_partition, first_offset, last_offset, offsets, fingerprints, processed_at)
             SELECT *, clock_timestamp() FROM UNNEST($1::text[], $2::int4[], $3::int8[], $4::int8[], $5::bytea[], $6::bytea[])",
        )
        .bind(new_runs.topics)
        .bind(new_runs.partitions)
        .bind(new_runs.first_offsets)
        .bind(new_runs.last_offsets)
        .bind(new_runs.offsets)
        .bind(new_runs.fingerprints)
        .execute(&mut **tx)
        .await?;
    }
    Ok(entries)
}

/// Keys of one partition whose offsets lie within [`MAX_RUN_SPAN`] of the first: what one range
/// read covers and one run records.
struct Segment<'k> {
    topic: &'k str,
    partition: i32,
    low: i64,
    high: i64,
    /// Indexes into the keys, by offset (a repeated key in the batch's order).
    members: Vec<usize>,
}

impl<'k> Segment<'k> {
    fn of(keys: &'k [InboxKey]) -> Vec<Segment<'k>> {
        let mut order: Vec<usize> = (0..keys.len()).collect();
        order.sort_by(|&a, &b| {
            let (a, b) = (&keys[a], &keys[b]);
            (&*a.topic, a.partition, a.offset).cmp(&(&*b.topic, b.partition, b.offset))
        });
        let mut segments: Vec<Segment<'k>> = Vec::new();
        for i in order {
            let key = &keys[i];
            match segments.last_mut() {
                Some(s)
                    if s.topic == &*key.topic
                        && s.partition == key.partition
                        && key.offset.checked_sub(s.low).is_some_and(|span| span < MAX_RUN_SPAN) =>
                {
                    s.high = key.offset;
                    s.members.push(i);
                }
                _ => segments.push(Segment {
                    topic: &key.topic,
                    partition: key.partition,
                    low: key.offset,
                    high: key.offset,
                    members: vec![i],
                }),
            }
        }
        segments
    }
}

/// The columns of the runs to insert, bound as arrays.
#[derive(Default)]
struct NewRuns<'k> {
    topics: Vec<&'k str>,
    partitions: Vec<i32>,
    first_offsets: Vec<i64>,
    last_offsets: Vec<i64>,
    offsets: Vec<Vec<u8>>,
    fingerprints: Vec<Vec<u8>>,
}

impl<'k> NewRuns<'k> {
    /// A run of `segment`'s messages `written` (indexes into `keys`, by offset), if any.
    fn push(&mut self, segment: &Segment<'k>, written: &[usize], keys: &[InboxKey]) {
        let (Some(&first), Some(&last)) = (written.first(), written.last()) else { return };
        self.topics.push(segment.topic);
        self.partitions.push(segment.partition);
        self.first_offsets.push(keys[first].offset);
        self.last_offsets.push(keys[last].offset);
        self.offsets.push(written.iter().flat_map(|&i| keys[i].offset.to_be_bytes()).collect());
        self.fingerprints.push(written.iter().flat_map(|&i| keys[i].fingerprint).collect());
    }
}

/// Takes a transaction-scoped advisory lock for each partition of $1 and $2 (topics, partitions),
/// one after the other in the order of their keys, which every instance shares, so that two
/// transactions locking overlapping partitions cannot each wait for the other. The keys are of
/// the two-`int4` kind, a space apart from the `bigint` keys the events and the relay lock; two
/// topics whose names hash alike only take turns.
pub const LOCK_PARTITIONS: &str = "SELECT count(pg_advisory_xact_lock(t, p))
     FROM (SELECT DISTINCT hashtext(topic) AS t, kafka_partition AS p
           FROM UNNEST($1::text[], $2::int4[]) AS r(topic, kafka_partition) ORDER BY t, p) AS locks";

/// What the inbox holds in each of the ranges $1 to $4 (topic, partition, lowest and highest
/// offset; $5 the highest a run overlapping the range can end at, [`MAX_RUN_SPAN`] − 1 past its
/// highest offset): the runs that overlap it, and the rows of earlier releases in it as runs of
/// one (run id 0, the offset as 8 big-endian bytes; the empty fingerprint of a row older than
/// migration 0002 as the digest of nothing, which no record's fingerprint is, so that such a row
/// still tells a reused offset). Each row comes with its range's position in the arrays (from 1)
/// and its run's id.
///
/// One index range per partition and table, found with a lateral subquery: the plain join, once
/// `ANALYZE` had given the table statistics, was planned as a hash join over the whole inbox (15
/// ms a batch at 60,000 rows and growing with the table, against 0.1 ms flat; bench/README.md,
/// section 24); a test `EXPLAIN`s this one over analysed tables. A run that starts at or before
/// the range's end ends less than [`MAX_RUN_SPAN`] past it, which is $5's bound on the runs'
/// index range.
pub const INBOX_RANGES: &str = "SELECT r.n, x.id, x.offsets, x.fingerprints
     FROM UNNEST($1::text[], $2::int4[], $3::int8[], $4::int8[], $5::int8[]) WITH ORDINALITY AS r(topic, kafka_partition, low, high, bound, n)
     CROSS JOIN LATERAL (
         SELECT 0::int8 AS id, int8send(p.kafka_offset) AS offsets,
                CASE WHEN length(p.fingerprint) = 32 THEN p.fingerprint ELSE sha256(''::bytea) END AS fingerprints
         FROM processed_messages AS p
         WHERE p.topic = r.topic AND p.kafka_partition = r.kafka_partition AND p.kafka_offset BETWEEN r.low AND r.high
         UNION ALL
         SELECT x.id, x.offsets, x.fingerprints
         FROM inbox_runs AS x
         WHERE x.topic = r.topic AND x.kafka_partition = r.kafka_partition
           AND x.last_offset BETWEEN r.low AND r.bound AND x.first_offset <= r.high) AS x";

/// Whether a value itself was refused (SQLSTATE class 22, data exception: a NUL in text, a
/// number out of range, bad encoding): retrying the same statement can never succeed. Unlike
/// [`is_data_error`] this leaves out integrity constraints, which in the service's own tables
/// mean a concurrent writer (the inbox during a rebalance) and succeed on retry.
pub(crate) fn is_data_exception(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(db) => db.code().is_some_and(|code| code.starts_with("22")),
        sqlx::Error::Encode(_) => true,
        _ => false,
    }
}

/// Whether a database error is about the data (retrying cannot help) rather than the database
/// being unavailable. SQLSTATE classes 22 (data exception) and 23 (integrity constraint).
pub fn is_data_error(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(db) => db.code().is_some_and(|code| code.starts_with("22") || code.starts_with("23")),
        sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) | sqlx::Error::Encode(_) => true,
        _ => false,
    }
}
