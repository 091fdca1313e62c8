//! The transactional outbox and its relay to the stream topic.
//!
//! Publishing the enriched event straight after the database commit would tie consumption to the
//! stream broker: while it is down, every partition would wait, and a crash between commit and
//! publish would lose the event. Instead the event is written to the `outbox` table in the same
//! transaction as the handler's rows and the inbox row, and a relay publishes it later. So the
//! event exists exactly when its effects do, consumption goes on while the stream is down, and
//! the backlog drains when it comes back.
//!
//! The relay reads rows in id order and deletes a row only after the broker acknowledged it. It
//! deletes only the acknowledged *prefix* of a batch: a row whose predecessor failed is sent again
//! with it next time, so a consumer of the stream never sees an event of a key before an earlier
//! one (it may see one twice: the stream is at least once). One relay is active at a time across
//! all instances (a PostgreSQL advisory lock per batch), which keeps that order with several
//! instances running.
//!
//! The outbox holds the propagated headers, `x-rh-identity` among them, because the stream event
//! must carry them; a row lives only until its event is acknowledged.

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use sqlx::types::Json;
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::kafka::Publisher;
use crate::message::{Header, RawMessage};
use crate::pipeline::Backoff;
use crate::store::Tx;
use crate::telemetry::Telemetry;

/// Advisory lock key that makes one relay active at a time ("outbox" in ASCII).
const RELAY_LOCK: i64 = 0x6f7574626f78;
/// Rows published per batch.
const BATCH: i64 = 500;
/// How often an idle relay looks for rows written by other instances.
const IDLE_POLL: Duration = Duration::from_millis(500);

/// An event waiting to be published.
pub struct OutgoingEvent<'a> {
    pub topic: &'a str,
    pub key: Option<&'a [u8]>,
    pub payload: &'a [u8],
    pub headers: &'a [Header],
}

/// Writes several events into the outbox with one statement, in order (their ids follow the
/// order of `events`, which keeps the relay's per-key order).
pub async fn enqueue_all(tx: &mut Tx, events: &[(OutgoingEvent<'_>, &RawMessage)]) -> Result<(), sqlx::Error> {
    if events.is_empty() {
        return Ok(());
    }
    let headers: Vec<String> = events
        .iter()
        .map(|(event, _)| {
            let pairs: Vec<(&str, Option<String>)> = event
                .headers
                .iter()
                .map(|h| (h.key.as_str(), h.value.as_deref().map(|v| String::from_utf8_lossy(v).into_owned())))
                .collect();
            serde_json::to_string(&pairs).expect("headers serialise")
        })
        .collect();
    sqlx::query(
        "INSERT INTO outbox (topic, message_key, payload, headers, source_topic, source_partition, source_offset)
         SELECT topic, message_key, payload, headers::jsonb, source_topic, source_partition, source_offset
         FROM UNNEST($1::text[], $2::bytea[], $3::bytea[], $4::text[], $5::text[], $6::int4[], $7::int8[])
              WITH ORDINALITY AS e(topic, message_key, payload, headers, source_topic, source_partition, source_offset, n)
         ORDER BY n",
    )
    .bind(events.iter().map(|(e, _)| e.topic).collect::<Vec<_>>())
    .bind(events.iter().map(|(e, _)| e.key.map(<[u8]>::to_vec)).collect::<Vec<_>>())
    .bind(events.iter().map(|(e, _)| e.payload.to_vec()).collect::<Vec<_>>())
    .bind(headers)
    .bind(events.iter().map(|(_, m)| m.topic.as_str()).collect::<Vec<_>>())
    .bind(events.iter().map(|(_, m)| m.partition).collect::<Vec<_>>())
    .bind(events.iter().map(|(_, m)| m.offset).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[derive(sqlx::FromRow)]
struct Row {
    id: i64,
    topic: String,
    message_key: Option<Vec<u8>>,
    payload: Vec<u8>,
    headers: Json<Vec<(String, Option<String>)>>,
}

impl Row {
    fn headers(&self) -> Vec<Header> {
        self.headers
            .0
            .iter()
            .map(|(key, value)| Header { key: key.clone(), value: value.clone().map(String::into_bytes) })
            .collect()
    }
}

/// Publishes outbox rows to the stream.
pub struct Relay {
    pool: PgPool,
    publisher: Publisher,
    telemetry: Arc<Telemetry>,
    /// Woken by the pipeline after each commit that wrote an outbox row.
    pub wake: Arc<Notify>,
    backoff: Backoff,
}

/// What one batch did.
struct BatchResult {
    published: usize,
    /// Another instance holds the relay lock.
    locked_out: bool,
}

impl Relay {
    pub fn new(pool: PgPool, publisher: Publisher, telemetry: Arc<Telemetry>, backoff: Backoff) -> Self {
        Relay { pool, publisher, telemetry, wake: Arc::new(Notify::new()), backoff }
    }

    /// Relays until `stop` is cancelled, then tries to empty the outbox within `drain_deadline`.
    /// Rows left behind are published by the next instance to run.
    pub async fn run(self, stop: CancellationToken, drain_deadline: Duration) {
        let mut failures = 0u32;
        while !stop.is_cancelled() {
            match self.batch().await {
                Ok(result) => {
                    failures = 0;
                    if result.published == 0 || result.locked_out {
                        tokio::select! {
                            _ = stop.cancelled() => {}
                            _ = self.wake.notified() => {}
                            _ = tokio::time::sleep(IDLE_POLL) => {}
                        }
                    }
                }
                Err(error) => {
                    let delay = self.backoff.delay(failures);
                    failures += 1;
                    self.telemetry.outbox_relay_failed(failures, delay, &error);
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        let drained = tokio::time::timeout(drain_deadline, async {
            loop {
                match self.batch().await {
                    Ok(BatchResult { published: 0, .. }) => return true,
                    Ok(_) => {}
                    Err(error) => {
                        self.telemetry.outbox_relay_failed(1, Duration::ZERO, &error);
                        return false;
                    }
                }
            }
        })
        .await;
        if !matches!(drained, Ok(true)) {
            self.telemetry.outbox_left_at_shutdown();
        }
    }

    /// Publishes one batch; deletes the acknowledged prefix. An error means at least one
    /// publish (or the database) failed; what was acknowledged before it is still deleted.
    async fn batch(&self) -> anyhow::Result<BatchResult> {
        let mut tx = self.pool.begin().await?;
        let locked: bool =
            sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)").bind(RELAY_LOCK).fetch_one(&mut *tx).await?;
        if !locked {
            return Ok(BatchResult { published: 0, locked_out: true });
        }
        let rows: Vec<Row> = sqlx::query_as("SELECT id, topic, message_key, payload, headers FROM outbox ORDER BY id LIMIT $1")
            .bind(BATCH)
            .fetch_all(&mut *tx)
            .await?;
        if rows.is_empty() {
            tx.commit().await?;
            return Ok(BatchResult { published: 0, locked_out: false });
        }
        // All sends are queued at once (librdkafka batches them and, being idempotent, keeps their
        // order per partition); then the acknowledged prefix is deleted.
        let headers: Vec<Vec<Header>> = rows.iter().map(Row::headers).collect();
        let results = join_all(
            rows.iter()
                .zip(&headers)
                .map(|(row, headers)| self.publisher.publish(&row.topic, row.message_key.as_deref(), &row.payload, headers)),
        )
        .await;
        let mut delivered = Vec::with_capacity(rows.len());
        let mut first_error = None;
        for (row, result) in rows.iter().zip(results) {
            self.telemetry.stream_published(result.is_ok());
            match result {
                Ok(_) if first_error.is_none() => delivered.push(row.id),
                Ok(_) => {}
                Err(error) => {
                    first_error.get_or_insert(error);
                }
            }
        }
        sqlx::query("DELETE FROM outbox WHERE id = ANY($1)").bind(&delivered).execute(&mut *tx).await?;
        tx.commit().await?;
        match first_error {
            None => Ok(BatchResult { published: delivered.len(), locked_out: false }),
            Some(error) => Err(anyhow::Error::new(error).context(format!(
                "publishing to the stream ({} of {} events acknowledged)",
                delivered.len(),
                rows.len()
            ))),
        }
    }
}

/// Counted at most: beyond it the backlog gauge reads this; the age is what alerts.
const BACKLOG_COUNT_LIMIT: i64 = 1_000_000;

/// Rows waiting in the outbox (at most [`BACKLOG_COUNT_LIMIT`]) and the age of the oldest, in
/// seconds. Read through the primary key from the oldest row, as the relay reads: a `count(*)`
/// over the table scanned every row the relay had deleted and autovacuum not yet removed, 400 ms
/// every 5 s after a 1,000,000-message drain, in the middle of the steady load (bench/README.md).
pub async fn backlog(pool: &PgPool) -> Result<(i64, f64), sqlx::Error> {
    sqlx::query_as(
        "SELECT count(*), COALESCE(EXTRACT(EPOCH FROM now() - min(created_at))::float8, 0)
         FROM (SELECT created_at FROM outbox ORDER BY id LIMIT $1) AS oldest",
    )
    .bind(BACKLOG_COUNT_LIMIT)
    .fetch_one(pool)
    .await
}
