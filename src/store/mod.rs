//! PostgreSQL: the connection pool, migrations, and the inbox that makes handling idempotent.
//!
//! A message's handler writes, and the inbox row that records the message as handled, commit in
//! one transaction. A redelivered message (same topic, partition, offset) finds its inbox row and
//! is skipped, so Kafka's at-least-once delivery yields exactly-once effects in the database.

use std::collections::{HashMap, HashSet};
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
    /// offsets restarted. Handle it; the inbox row now describes the new record.
    OffsetReused,
}

/// What the inbox knows a message by: where it was (or, for a replayed dead letter, where the
/// original was) and what it looked like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxKey {
    pub topic: String,
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
    let topic = parts.next()?.to_string();
    Some(InboxKey { topic, partition, offset, ..key.clone() })
}

/// Records a message in the inbox, in the transaction that will carry its handler's writes.
pub(crate) async fn record_in_inbox(
    tx: &mut Tx,
    key: &InboxKey,
    request_id: &str,
    org_id: Option<&str>,
) -> Result<InboxEntry, sqlx::Error> {
    // xmax = 0 tells a fresh insert from an update of a conflicting row; no row at all means the
    // conflicting row has the same fingerprint.
    let fresh: Option<bool> = sqlx::query_scalar(
        "INSERT INTO processed_messages (topic, kafka_partition, kafka_offset, fingerprint, request_id, org_id)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (topic, kafka_partition, kafka_offset) DO UPDATE
            SET fingerprint = EXCLUDED.fingerprint, request_id = EXCLUDED.request_id,
                org_id = EXCLUDED.org_id, processed_at = now()
            WHERE processed_messages.fingerprint NOT IN (EXCLUDED.fingerprint, $7)
         RETURNING xmax = 0",
    )
    .bind(&key.topic)
    .bind(key.partition)
    .bind(key.offset)
    .bind(&key.fingerprint[..])
    .bind(request_id)
    .bind(org_id)
    .bind(&key.legacy_fingerprint[..])
    .fetch_optional(&mut **tx)
    .await?;
    Ok(match fresh {
        Some(true) => InboxEntry::New,
        Some(false) => InboxEntry::OffsetReused,
        None => InboxEntry::Redelivery,
    })
}

/// Records a batch of messages in the inbox, in the batch's transaction; the entries come back in
/// the order of `keys`. Keys that repeat within the batch (two replays of one dead letter) are
/// recorded one by one, as one statement cannot write a row twice.
///
/// Not `INSERT … ON CONFLICT`: its speculative insertion made the inbox the database's costliest
/// statement (bench/README.md). Instead one read finds what the inbox holds in each partition's
/// offset range, the new rows are a plain insert, and reused offsets an update. Another instance
/// that owned the partition a moment ago (a rebalance) may insert one of these rows in between;
/// the insert then fails with a unique violation, the transaction is retried like any transient
/// failure, and the read finds the row.
pub async fn record_all_in_inbox(
    tx: &mut Tx,
    keys: &[InboxKey],
    request_ids: &[&str],
    org_ids: &[Option<&str>],
) -> Result<Vec<InboxEntry>, sqlx::Error> {
    let distinct: HashSet<(&str, i32, i64)> = keys.iter().map(|k| (k.topic.as_str(), k.partition, k.offset)).collect();
    if distinct.len() < keys.len() {
        let mut entries = Vec::with_capacity(keys.len());
        for ((key, request_id), org_id) in keys.iter().zip(request_ids).zip(org_ids) {
            entries.push(record_in_inbox(tx, key, request_id, *org_id).await?);
        }
        return Ok(entries);
    }
    // 1. What the inbox holds in each (topic, partition)'s offset range: one index range each.
    let mut ranges: HashMap<(&str, i32), (i64, i64)> = HashMap::new();
    for k in keys {
        let range = ranges.entry((k.topic.as_str(), k.partition)).or_insert((k.offset, k.offset));
        *range = (range.0.min(k.offset), range.1.max(k.offset));
    }
    let known: Vec<(String, i32, i64, Vec<u8>)> = sqlx::query_as(INBOX_RANGES)
        .bind(ranges.keys().map(|(topic, _)| *topic).collect::<Vec<_>>())
        .bind(ranges.keys().map(|(_, partition)| *partition).collect::<Vec<_>>())
        .bind(ranges.values().map(|(low, _)| *low).collect::<Vec<_>>())
        .bind(ranges.values().map(|(_, high)| *high).collect::<Vec<_>>())
        .fetch_all(&mut **tx)
        .await?;
    let known: HashMap<(&str, i32, i64), &[u8]> = known
        .iter()
        .map(|(topic, partition, offset, fingerprint)| ((topic.as_str(), *partition, *offset), &fingerprint[..]))
        .collect();
    let mut entries: Vec<InboxEntry> = keys
        .iter()
        .map(|k| match known.get(&(k.topic.as_str(), k.partition, k.offset)) {
            None => InboxEntry::New,
            Some(fingerprint) if k.matches(fingerprint) => InboxEntry::Redelivery,
            Some(_) => InboxEntry::OffsetReused,
        })
        .collect();
    // 2. New rows.
    let new: Vec<usize> = (0..keys.len()).filter(|&i| entries[i] == InboxEntry::New).collect();
    if !new.is_empty() {
        inbox_rows(
            "INSERT INTO processed_messages (topic, kafka_partition, kafka_offset, fingerprint, request_id, org_id)
             SELECT topic, kafka_partition, kafka_offset, fingerprint, request_id, org_id
             FROM UNNEST($1::text[], $2::int4[], $3::int8[], $4::bytea[], $5::text[], $6::text[], $7::int4[])
                  AS r(topic, kafka_partition, kafka_offset, fingerprint, request_id, org_id, n)",
            &new,
            keys,
            request_ids,
            org_ids,
        )
        .fetch_all(&mut **tx)
        .await?;
    }
    // 3. Reused offsets: the row now describes the new record. A row another instance rewrote in
    //    the meantime is not returned, and its message counts as a redelivery.
    let reused: Vec<usize> = (0..keys.len()).filter(|&i| entries[i] == InboxEntry::OffsetReused).collect();
    if !reused.is_empty() {
        let updated = inbox_rows(
            "UPDATE processed_messages p
             SET fingerprint = r.fingerprint, request_id = r.request_id, org_id = r.org_id, processed_at = now()
             FROM UNNEST($1::text[], $2::int4[], $3::int8[], $4::bytea[], $5::text[], $6::text[], $7::int4[])
                  AS r(topic, kafka_partition, kafka_offset, fingerprint, request_id, org_id, n)
             WHERE p.topic = r.topic AND p.kafka_partition = r.kafka_partition AND p.kafka_offset = r.kafka_offset
               AND p.fingerprint <> r.fingerprint
             RETURNING r.n",
            &reused,
            keys,
            request_ids,
            org_ids,
        )
        .fetch_all(&mut **tx)
        .await?;
        let updated: HashSet<usize> = updated.into_iter().map(|(n,)| n as usize).collect();
        for i in reused {
            if !updated.contains(&i) {
                entries[i] = InboxEntry::Redelivery;
            }
        }
    }
    Ok(entries)
}

/// What the inbox holds in each of the ranges $1 to $4 (topic, partition, lowest and highest
/// offset): one primary-key range scan per partition. Written as a lateral subquery with a
/// `LIMIT` (never reached: a range holds at most one row per offset) because the plain join,
/// once `ANALYZE` had given the table statistics, was planned as a hash join over the whole
/// inbox: 15 ms a batch at 60,000 rows and growing with the table, against 0.1 ms flat
/// (bench/README.md, section 24). A fresh table has no statistics, so the benchmark never saw
/// it; a service that has run for a while would have.
pub const INBOX_RANGES: &str = "SELECT r.topic, r.kafka_partition, p.kafka_offset, p.fingerprint
     FROM UNNEST($1::text[], $2::int4[], $3::int8[], $4::int8[]) AS r(topic, kafka_partition, low, high)
     CROSS JOIN LATERAL (SELECT p.kafka_offset, p.fingerprint FROM processed_messages AS p
                          WHERE p.topic = r.topic AND p.kafka_partition = r.kafka_partition
                            AND p.kafka_offset BETWEEN r.low AND r.high
                          ORDER BY p.kafka_offset LIMIT r.high - r.low + 1) AS p";

/// `sql` with the inbox columns of `keys[i]`, for each `i` in `rows`, bound as arrays $1 to $6
/// (topic, partition, offset, fingerprint, request id, org id) and `i` itself as $7, which a
/// statement returns to say which rows it wrote.
fn inbox_rows<'q>(
    sql: &'q str,
    rows: &[usize],
    keys: &'q [InboxKey],
    request_ids: &[&'q str],
    org_ids: &[Option<&'q str>],
) -> sqlx::query::QueryAs<'q, Postgres, (i32,), sqlx::postgres::PgArguments> {
    sqlx::query_as(sql)
        .bind(rows.iter().map(|&i| keys[i].topic.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|&i| keys[i].partition).collect::<Vec<_>>())
        .bind(rows.iter().map(|&i| keys[i].offset).collect::<Vec<_>>())
        .bind(rows.iter().map(|&i| &keys[i].fingerprint[..]).collect::<Vec<_>>())
        .bind(rows.iter().map(|&i| request_ids[i]).collect::<Vec<_>>())
        .bind(rows.iter().map(|&i| org_ids[i]).collect::<Vec<_>>())
        .bind(rows.iter().map(|&i| i as i32).collect::<Vec<_>>())
}

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
