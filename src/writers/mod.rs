//! Writers: every event, handed to each configured writer (syslog, hooks), in order, at least
//! once.
//!
//! One dispatcher task per writer reads the events after the writer's cursor every
//! `WRITER_BATCH_INTERVAL_MS` (at once again when a batch was full), hands them over, and moves
//! the cursor, kept in `writer_progress`, only after the writer has confirmed: an outage, a
//! restart or a SIGKILL loses nothing; what was handed over but not confirmed is handed over
//! again (the duplicates a writer may see).
//!
//! Ids are handed out at insert, so a transaction can commit a lower id after a higher one was
//! read. Each event keeps the id of the transaction that wrote it (`tx_id`), and a dispatcher
//! reads only events of transactions older than every transaction still running
//! (`pg_snapshot_xmin`), in `(tx_id, id)` order: by the time it reads past a point, nothing can
//! still appear behind it. "Every transaction" is the whole PostgreSQL server's: a long write
//! transaction in any database of it holds writers back until it ends.
//!
//! With several instances, one dispatcher per writer runs at a time: each holds a session-level
//! advisory lock for its writer on a connection of its own, and the others wait for it. One
//! writer's failure never holds up another's cursor or the message pipeline.

pub mod hooks;
pub mod syslog;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::{Connection as _, PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::retry::Backoff;
use crate::telemetry::Telemetry;

/// Events handed to a writer at once, at most.
pub const BATCH: i64 = 100;

/// An event as writers get it.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct WrittenEvent {
    pub id: i64,
    /// The writing transaction's id: with `id`, the writer's position.
    #[serde(skip)]
    pub tx_id: i64,
    pub name: String,
    pub severity: String,
    pub message: String,
    pub event_time: DateTime<Utc>,
    pub cluster_id: Option<Uuid>,
    pub host_id: Option<Uuid>,
    pub infra_env_id: Option<Uuid>,
    pub properties: sqlx::types::Json<Value>,
    pub org_id: Option<String>,
    pub request_id: String,
}

impl WrittenEvent {
    /// The stream's shape (`name`, `payload`, `metadata`), without any identity.
    pub fn document(&self) -> Value {
        let entity =
            crate::events::Entity { cluster_id: self.cluster_id, host_id: self.host_id, infra_env_id: self.infra_env_id };
        let payload = crate::events::stream::payload(&self.properties.0, &self.message, &self.severity, entity);
        serde_json::json!({
            "name": self.name,
            "payload": payload,
            "metadata": {
                "kind": crate::events::stream::KIND,
                "event_id": self.id,
                "event_time": self.event_time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                "org_id": self.org_id,
                "request_id": self.request_id,
            },
        })
    }
}

/// Why a writer could not take a batch: the dispatcher tries the same batch again later.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct WriterError(pub String);

/// Something events are delivered to.
pub trait Writer: Send + Sync + 'static {
    /// Unique among writers: the key of its progress (`hook:notify`, `syslog`).
    fn name(&self) -> &str;

    /// Delivers `events`, in order. `Ok` confirms all of them, and the cursor moves past them.
    fn deliver<'a>(&'a self, events: &'a [WrittenEvent]) -> BoxFuture<'a, Result<(), WriterError>>;
}

/// Where a writer is: the last event it confirmed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Cursor {
    tx_id: i64,
    event_id: i64,
}

const COLUMNS: &str = "id, tx_id::text::bigint AS tx_id, name, severity, message, event_time, cluster_id, host_id, \
                       infra_env_id, properties, org_id, request_id";

/// The events after `cursor` whose transactions are all finished, in order.
async fn next_batch(connection: &mut PgConnection, cursor: Cursor, limit: i64) -> Result<Vec<WrittenEvent>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM events
          WHERE (tx_id, id) > ($1::text::xid8, $2)
            AND tx_id < pg_snapshot_xmin(pg_current_snapshot())
          ORDER BY tx_id, id
          LIMIT $3"
    ))
    .bind(cursor.tx_id.to_string())
    .bind(cursor.event_id)
    .bind(limit)
    .fetch_all(connection)
    .await
}

async fn load_cursor(connection: &mut PgConnection, writer: &str) -> Result<Cursor, sqlx::Error> {
    let (tx_id, event_id): (i64, i64) = sqlx::query_as(
        "INSERT INTO writer_progress (writer) VALUES ($1)
         ON CONFLICT (writer) DO UPDATE SET writer = EXCLUDED.writer
         RETURNING tx_id::text::bigint, event_id",
    )
    .bind(writer)
    .fetch_one(connection)
    .await?;
    Ok(Cursor { tx_id, event_id })
}

async fn store_cursor(connection: &mut PgConnection, writer: &str, cursor: Cursor) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE writer_progress SET tx_id = $2::text::xid8, event_id = $3, updated_at = now() WHERE writer = $1")
        .bind(writer)
        .bind(cursor.tx_id.to_string())
        .bind(cursor.event_id)
        .execute(connection)
        .await?;
    Ok(())
}

/// Undelivered events (counted up to a bound) and the age of the oldest, for the metrics.
async fn backlog(connection: &mut PgConnection, cursor: Cursor) -> Result<(i64, Option<DateTime<Utc>>), sqlx::Error> {
    sqlx::query_as(
        "SELECT count(*), min(event_time) FROM (
            SELECT event_time FROM events WHERE (tx_id, id) > ($1::text::xid8, $2) ORDER BY tx_id, id LIMIT 100000) AS b",
    )
    .bind(cursor.tx_id.to_string())
    .bind(cursor.event_id)
    .fetch_one(connection)
    .await
}

/// The advisory lock a writer's dispatcher holds.
fn lock_key(writer: &str) -> i64 {
    let digest = Sha256::digest(format!("event-router writer {writer}").as_bytes());
    let mut bytes = [0; 8];
    bytes.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(bytes)
}

/// Runs one writer's dispatcher until `stop`.
pub async fn run(pool: PgPool, writer: Arc<dyn Writer>, interval: Duration, telemetry: Arc<Telemetry>, stop: CancellationToken) {
    let backoff = Backoff { initial: Duration::from_millis(200), max: Duration::from_secs(30) };
    let mut failures = 0;
    while !stop.is_cancelled() {
        let result = lead(&pool, writer.as_ref(), interval, &telemetry, &stop).await;
        if let Err(error) = result {
            failures += 1;
            let delay = backoff.delay(failures);
            telemetry.writer_failed(writer.name(), &error, delay);
            tokio::select! { () = stop.cancelled() => return, () = tokio::time::sleep(delay) => {} }
        } else {
            failures = 0;
        }
    }
}

/// Takes the writer's lock (waiting while another instance has it) and dispatches until `stop`.
async fn lead(
    pool: &PgPool,
    writer: &dyn Writer,
    interval: Duration,
    telemetry: &Telemetry,
    stop: &CancellationToken,
) -> Result<(), WriterError> {
    let database = |error: sqlx::Error| WriterError(format!("database: {error}"));
    // A connection of its own, closed rather than pooled at the end, so the lock goes with it.
    let mut connection = pool.acquire().await.map_err(database)?.detach();
    loop {
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(lock_key(writer.name()))
            .fetch_one(&mut connection)
            .await
            .map_err(database)?;
        if locked {
            break;
        }
        tokio::select! { () = stop.cancelled() => return Ok(()), () = tokio::time::sleep(interval) => {} }
    }
    let mut cursor = load_cursor(&mut connection, writer.name()).await.map_err(database)?;
    while !stop.is_cancelled() {
        let (count, oldest) = backlog(&mut connection, cursor).await.map_err(database)?;
        telemetry.writer_backlog(writer.name(), count, oldest);
        let events = next_batch(&mut connection, cursor, BATCH).await.map_err(database)?;
        if let Some(last) = events.last() {
            // At shutdown a delivery in progress is dropped (a hook's command with it); the batch
            // was not confirmed, so it is handed over again after the restart.
            tokio::select! {
                () = stop.cancelled() => break,
                delivered = writer.deliver(&events) => delivered?,
            }
            cursor = Cursor { tx_id: last.tx_id, event_id: last.id };
            store_cursor(&mut connection, writer.name(), cursor).await.map_err(database)?;
            telemetry.writer_delivered(writer.name(), events.len());
        }
        if events.len() < BATCH as usize {
            tokio::select! { () = stop.cancelled() => break, () = tokio::time::sleep(interval) => {} }
        }
    }
    let _ = connection.close().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn insert(tx: &mut sqlx::Transaction<'_, sqlx::Postgres>, n: i64) -> i64 {
        sqlx::query_scalar(
            "INSERT INTO events (name, severity, message, event_time, cluster_id, properties, org_id, request_id,
                                 source_topic, source_partition, source_offset, first_seen, last_seen, dedup_key)
             VALUES ('cluster_install_completed', 'info', 'm' || $1, now(), gen_random_uuid(), '{}', 'o', 'r', 't', 0, $1,
                     now(), now(), decode(md5($1::text), 'hex'))
             RETURNING id",
        )
        .bind(n)
        .fetch_one(&mut **tx)
        .await
        .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lower_id_committed_after_a_higher_one_is_not_skipped() {
        let db = testkit::TestDb::create().await;
        // Two overlapping transactions: the first takes the lower id and commits last.
        let mut slow = db.pool.begin().await.unwrap();
        let lower = insert(&mut slow, 1).await;
        let mut fast = db.pool.begin().await.unwrap();
        let higher = insert(&mut fast, 2).await;
        assert!(lower < higher);
        fast.commit().await.unwrap();

        let mut reader = db.pool.acquire().await.unwrap();
        let first = next_batch(&mut reader, Cursor::default(), BATCH).await.unwrap();
        assert!(first.is_empty(), "nothing is read while an older transaction may still commit: {first:?}");
        slow.commit().await.unwrap();
        // Transactions of other databases on the same server (other tests) count too: wait for
        // those older than ours to end, as a dispatcher does.
        let mut read = Vec::new();
        for _ in 0..200 {
            read = next_batch(&mut reader, Cursor::default(), BATCH).await.unwrap().iter().map(|e| e.id).collect();
            if !read.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(read, [lower, higher], "both, the lower first");
        let all = next_batch(&mut reader, Cursor::default(), BATCH).await.unwrap();
        let after = Cursor { tx_id: all[0].tx_id, event_id: all[0].id };
        let rest: Vec<i64> = next_batch(&mut reader, after, BATCH).await.unwrap().iter().map(|e| e.id).collect();
        assert_eq!(rest, [higher]);
    }
}
