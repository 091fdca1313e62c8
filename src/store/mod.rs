//! PostgreSQL: the connection pool, migrations, and the inbox that makes handling idempotent.
//!
//! A message's handler writes, and the inbox row that records the message as handled, commit in
//! one transaction. A redelivered message (same topic, partition, offset) finds its inbox row and
//! is skipped, so Kafka's at-least-once delivery yields exactly-once effects in the database.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres, Transaction};

pub mod dead_letters;

use crate::config::redact_url;
use crate::message::RawMessage;

pub type Tx = Transaction<'static, Postgres>;

/// `application_name` of the service's database sessions.
pub const APPLICATION_NAME: &str = "event-router";

/// Embedded migrations from `migrations/`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

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
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
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
    pub fingerprint: [u8; 32],
}

impl InboxKey {
    pub fn of(message: &RawMessage) -> Self {
        InboxKey {
            topic: message.topic.clone(),
            partition: message.partition,
            offset: message.offset,
            fingerprint: message.fingerprint(),
        }
    }
}

/// Records a message in the inbox, in the transaction that will carry its handler's writes.
pub async fn record_in_inbox(
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
            WHERE processed_messages.fingerprint <> EXCLUDED.fingerprint
         RETURNING xmax = 0",
    )
    .bind(&key.topic)
    .bind(key.partition)
    .bind(key.offset)
    .bind(&key.fingerprint[..])
    .bind(request_id)
    .bind(org_id)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(match fresh {
        Some(true) => InboxEntry::New,
        Some(false) => InboxEntry::OffsetReused,
        None => InboxEntry::Redelivery,
    })
}

/// Records a batch of messages in the inbox with one statement, in the batch's transaction; the
/// entries come back in the order of `keys`. Keys that repeat within the batch (two replays of
/// one dead letter) are recorded one by one, as one statement cannot update a row twice.
pub async fn record_all_in_inbox(
    tx: &mut Tx,
    keys: &[InboxKey],
    request_ids: &[&str],
    org_ids: &[Option<&str>],
) -> Result<Vec<InboxEntry>, sqlx::Error> {
    let distinct: std::collections::HashSet<(&str, i32, i64)> =
        keys.iter().map(|k| (k.topic.as_str(), k.partition, k.offset)).collect();
    if distinct.len() < keys.len() {
        let mut entries = Vec::with_capacity(keys.len());
        for ((key, request_id), org_id) in keys.iter().zip(request_ids).zip(org_ids) {
            entries.push(record_in_inbox(tx, key, request_id, *org_id).await?);
        }
        return Ok(entries);
    }
    let rows: Vec<(String, i32, i64, bool)> = sqlx::query_as(
        "INSERT INTO processed_messages (topic, kafka_partition, kafka_offset, fingerprint, request_id, org_id)
         SELECT * FROM UNNEST($1::text[], $2::int4[], $3::int8[], $4::bytea[], $5::text[], $6::text[])
         ON CONFLICT (topic, kafka_partition, kafka_offset) DO UPDATE
            SET fingerprint = EXCLUDED.fingerprint, request_id = EXCLUDED.request_id,
                org_id = EXCLUDED.org_id, processed_at = now()
            WHERE processed_messages.fingerprint <> EXCLUDED.fingerprint
         RETURNING topic, kafka_partition, kafka_offset, xmax = 0",
    )
    .bind(keys.iter().map(|k| k.topic.as_str()).collect::<Vec<_>>())
    .bind(keys.iter().map(|k| k.partition).collect::<Vec<_>>())
    .bind(keys.iter().map(|k| k.offset).collect::<Vec<_>>())
    .bind(keys.iter().map(|k| k.fingerprint.to_vec()).collect::<Vec<_>>())
    .bind(request_ids)
    .bind(org_ids)
    .fetch_all(&mut **tx)
    .await?;
    let written: std::collections::HashMap<(String, i32, i64), bool> =
        rows.into_iter().map(|(topic, partition, offset, fresh)| ((topic, partition, offset), fresh)).collect();
    Ok(keys
        .iter()
        .map(|k| match written.get(&(k.topic.clone(), k.partition, k.offset)) {
            Some(true) => InboxEntry::New,
            Some(false) => InboxEntry::OffsetReused,
            None => InboxEntry::Redelivery,
        })
        .collect())
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
