//! The transactional outbox and its relay to the stream topic.
//!
//! Publishing the enriched event straight after the database commit would tie consumption to the
//! stream broker: while it is down, every partition would wait, and a crash between commit and
//! publish would lose the event. Instead the event is written to the `outbox` table in the same
//! transaction as the handler's rows and the inbox row, and a relay publishes it later. So the
//! event exists exactly when its effects do, consumption goes on while the stream is down, and
//! the backlog drains when it comes back.
//!
//! A transaction's events are one row, in order (one row per event made the outbox the largest
//! part of the database's work: an insert, a read, a delete and a vacuumed index entry each).
//! The relay reads rows in id order and deletes a row only after the broker acknowledged all of
//! its events. It deletes only the acknowledged *prefix* of a batch: a row with a failed event,
//! and every row after it, is sent again whole next time, so a consumer of the stream never sees
//! an event of a key before an earlier one (it may see one twice: the stream is at least once).
//! One relay is active at a time across all instances (a PostgreSQL advisory lock per batch),
//! which keeps that order with several instances running.
//!
//! The outbox holds the propagated headers, `x-rh-identity` among them, because the stream event
//! must carry them; a row lives only until its events are acknowledged.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::types::Json;
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::kafka::{BatchPublisher, Record};
use crate::message::HeaderRef;
use crate::retry::Backoff;
use crate::store::Tx;
use crate::telemetry::Telemetry;

/// Advisory lock key that makes one relay active at a time ("outbox" in ASCII).
const RELAY_LOCK: i64 = 0x6f7574626f78;
/// Events published per batch: whole rows are read until they hold at least this many (every row
/// holds at least one, so that is also the most rows a batch reads). A batch waits for all its
/// acknowledgements before the next is read, so this sets how far the relay keeps up with a
/// draining backlog: at 500 it fell further behind and cost more CPU a message; at 2,000 it kept
/// up but held enough more memory to lift a million-message drain's peak over 150 MB
/// (bench/README.md, section 23).
const BATCH: i64 = 1000;
/// Bytes of events read per batch, by the same rule (a row larger than this is read alone): with
/// large messages, 1,000 events could be a gigabyte.
const BATCH_BYTES: i64 = 16 * 1024 * 1024;
/// How often an idle relay looks for rows written by other instances.
const IDLE_POLL: Duration = Duration::from_millis(500);

/// An event waiting to be published. A transaction's events are stored together as one row's
/// `events` value: postcard (a documented, stable binary format) of the list, so header values
/// stay bytes. Everything is borrowed: from the consumed message when the pipeline writes a row,
/// from the row when the relay reads it back (copies were a good part of both's allocations).
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct OutgoingEvent<'a> {
    pub topic: &'a str,
    #[serde(borrow, with = "serde_bytes")]
    pub key: Option<&'a [u8]>,
    #[serde(with = "serde_bytes")]
    pub payload: &'a [u8],
    #[serde(borrow)]
    pub headers: Vec<HeaderRef<'a>>,
}

/// The `events` value of an outbox row holding `events`, in order. The buffer is sized up front
/// (the bytes plus a few varint lengths each): a row is tens to hundreds of kilobytes, and
/// growing it by doubling copied it over and over.
pub fn pack(events: &[OutgoingEvent<'_>]) -> Vec<u8> {
    let size: usize = events
        .iter()
        .map(|e| {
            let headers: usize = e.headers.iter().map(|h| h.key.len() + h.value.map_or(0, <[u8]>::len) + 8).sum();
            e.topic.len() + e.key.map_or(0, <[u8]>::len) + e.payload.len() + headers + 16
        })
        .sum();
    postcard::to_extend(events, Vec::with_capacity(size + 8)).expect("an outbox row serialises")
}

/// The events of an outbox row's `events` value.
fn unpack(events: &[u8]) -> Result<Vec<OutgoingEvent<'_>>, postcard::Error> {
    postcard::from_bytes(events)
}

/// Writes a transaction's events into the outbox as one row, in order: the relay publishes rows
/// in id order and a row's events in theirs, which keeps each key's order.
pub(crate) async fn enqueue_all(tx: &mut Tx, events: &[OutgoingEvent<'_>]) -> Result<(), sqlx::Error> {
    if events.is_empty() {
        return Ok(());
    }
    sqlx::query("INSERT INTO outbox (events, event_count) VALUES ($1, $2)")
        .bind(pack(events))
        .bind(events.len() as i32)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// An outbox row: `events` since migration 0005; one event in the other columns when an older
/// release wrote it.
#[derive(sqlx::FromRow)]
struct Row {
    id: i64,
    events: Option<Vec<u8>>,
    topic: Option<String>,
    message_key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
    headers: Json<Vec<(String, Option<String>)>>,
}

impl Row {
    fn events(&self) -> Result<Vec<OutgoingEvent<'_>>, RelayError> {
        if let Some(events) = &self.events {
            return unpack(events).map_err(|problem| RelayError::Unreadable { id: self.id, problem });
        }
        let headers =
            self.headers.0.iter().map(|(key, value)| HeaderRef { key, value: value.as_deref().map(str::as_bytes) }).collect();
        Ok(vec![OutgoingEvent {
            topic: self.topic.as_deref().unwrap_or_default(),
            key: self.message_key.as_deref(),
            payload: self.payload.as_deref().unwrap_or_default(),
            headers,
        }])
    }
}

/// Why a relay batch failed; what was acknowledged before the failure is still deleted.
#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// The decoding problem is told in the message, not kept as a cause.
    #[error("outbox row {id} is unreadable: {problem}")]
    Unreadable { id: i64, problem: postcard::Error },
    #[error("publishing to the stream ({published} of {total} events acknowledged in order)")]
    Publish {
        published: usize,
        total: usize,
        #[source]
        source: rdkafka::error::KafkaError,
    },
}

/// Publishes outbox rows to the stream.
pub(crate) struct Relay {
    pool: PgPool,
    publisher: BatchPublisher,
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
    pub(crate) fn new(
        pool: PgPool,
        publisher: BatchPublisher,
        telemetry: Arc<Telemetry>,
        backoff: Backoff,
        wake: Arc<Notify>,
    ) -> Self {
        Relay { pool, publisher, telemetry, wake, backoff }
    }

    /// Relays until `stop` is cancelled, then tries to empty the outbox within `drain_deadline`.
    /// Rows left behind are published by the next instance to run.
    pub(crate) async fn run(self, stop: CancellationToken, drain_deadline: Duration) {
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
    async fn batch(&self) -> Result<BatchResult, RelayError> {
        let mut tx = self.pool.begin().await?;
        let locked: bool =
            sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)").bind(RELAY_LOCK).fetch_one(&mut *tx).await?;
        if !locked {
            return Ok(BatchResult { published: 0, locked_out: true });
        }
        // Whole rows in id order, until they hold at least BATCH events or BATCH_BYTES bytes
        // (`octet_length` reads the stored size, not the data).
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT id, events, topic, message_key, payload, headers
             FROM (SELECT *, sum(event_count) OVER w - event_count AS before,
                          sum(size) OVER w - size AS bytes_before
                   FROM (SELECT *, COALESCE(octet_length(events), octet_length(payload), 0)::int8 AS size
                         FROM outbox ORDER BY id LIMIT $1) AS o
                   WINDOW w AS (ORDER BY id)) AS oldest
             WHERE before < $1 AND bytes_before < $2 ORDER BY id",
        )
        .bind(BATCH)
        .bind(BATCH_BYTES)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            tx.commit().await?;
            return Ok(BatchResult { published: 0, locked_out: false });
        }
        let events = rows.iter().map(Row::events).collect::<Result<Vec<_>, _>>()?;
        // All sends are queued at once (librdkafka batches them and, being idempotent, keeps their
        // order per partition); then the rows whose events were all acknowledged, up to the first
        // that was not, are deleted. A row with a failure is sent again whole.
        let records: Vec<Record<'_>> = events
            .iter()
            .flatten()
            .map(|event| Record { topic: event.topic, key: event.key, payload: event.payload, headers: &event.headers })
            .collect();
        let results = self.publisher.publish_all(&records).await;
        let mut results = results.into_iter();
        let mut delivered = Vec::with_capacity(rows.len());
        let (mut published, mut total) = (0, 0);
        let mut first_error = None;
        for (row, events) in rows.iter().zip(&events) {
            // A row is done when each of its events was acknowledged or refused for good (those
            // are parked); a transient failure keeps it, and every row after it, for next time.
            let mut refused = Vec::new();
            for (event, result) in events.iter().zip(results.by_ref().take(events.len())) {
                total += 1;
                self.telemetry.stream_published(result.is_ok());
                match result {
                    Ok(_) => {}
                    Err(error) if crate::kafka::is_permanent(&error) => refused.push((event, error)),
                    Err(error) => {
                        first_error.get_or_insert(error);
                    }
                }
            }
            if first_error.is_none() {
                for (event, error) in refused {
                    park(&mut tx, row.id, event, &error).await?;
                    self.telemetry.stream_event_undeliverable(event.topic, &error);
                }
                delivered.push(row.id);
                published += events.len();
            }
        }
        sqlx::query("DELETE FROM outbox WHERE id = ANY($1)").bind(&delivered).execute(&mut *tx).await?;
        tx.commit().await?;
        match first_error {
            None => Ok(BatchResult { published, locked_out: false }),
            Some(source) => Err(RelayError::Publish { published, total, source }),
        }
    }
}

/// Moves an event Kafka refused for good out of the way of the events behind it (see migration
/// 0007): kept without its identity header, with the error.
async fn park(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    outbox_id: i64,
    event: &OutgoingEvent<'_>,
    error: &rdkafka::error::KafkaError,
) -> Result<(), sqlx::Error> {
    let request_id = event
        .headers
        .iter()
        .find(|h| h.key.eq_ignore_ascii_case(crate::envelope::REQUEST_ID_HEADER))
        .and_then(|h| h.value)
        .map(String::from_utf8_lossy);
    sqlx::query(
        "INSERT INTO stream_undeliverable (outbox_id, topic, message_key, payload, request_id, error) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(outbox_id)
    .bind(event.topic)
    .bind(event.key)
    .bind(event.payload)
    .bind(request_id.map(|id| crate::envelope::reason::escape_control(id.into_owned())))
    .bind(crate::envelope::reason::escape_control(error.to_string()))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Rows read at most: beyond it the backlog gauge reads what those rows hold; the age is what
/// alerts.
const BACKLOG_ROW_LIMIT: i64 = 1_000_000;

/// Events waiting in the outbox (in at most `BACKLOG_ROW_LIMIT` rows) and the age of the
/// oldest, in seconds. Read through the primary key from the oldest row, as the relay reads: a
/// `count(*)` over the table scanned every row the relay had deleted and autovacuum not yet
/// removed, which after a large drain took a visible share of the database under steady load
/// (bench/README.md).
pub async fn backlog(pool: &PgPool) -> Result<(i64, f64), sqlx::Error> {
    sqlx::query_as(
        "SELECT COALESCE(sum(event_count), 0)::int8, COALESCE(EXTRACT(EPOCH FROM now() - min(created_at))::float8, 0)
         FROM (SELECT created_at, event_count FROM outbox ORDER BY id LIMIT $1) AS oldest",
    )
    .bind(BACKLOG_ROW_LIMIT)
    .fetch_one(pool)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_packed_row_keeps_its_events_in_order_with_their_bytes() {
        let headers =
            vec![HeaderRef { key: "x-rh-identity", value: Some(&[0xff, 0x00, b'a']) }, HeaderRef { key: "empty", value: None }];
        let events = [
            OutgoingEvent { topic: "stream", key: Some(&[0xfe, 0x01]), payload: b"{}", headers },
            OutgoingEvent { topic: "other", key: None, payload: &[], headers: vec![] },
        ];
        let packed = pack(&events);
        assert_eq!(unpack(&packed).unwrap(), events);
        assert!(packed.capacity() >= packed.len() && packed.capacity() < packed.len() + 64, "sized up front, not grown");
        assert!(unpack(&packed[..packed.len() - 1]).is_err(), "a truncated row is an error, not fewer events");
    }

    /// Rows the previous release wrote, with owned headers, read the same: a rolling update
    /// leaves them in the table for the new relay. `Written` and `WrittenHeader` are that
    /// release's types, kept here as the stored format.
    #[test]
    fn rows_written_with_owned_headers_read_back_borrowed() {
        #[derive(Serialize)]
        struct WrittenHeader {
            key: String,
            #[serde(with = "serde_bytes")]
            value: Option<Vec<u8>>,
        }
        #[derive(Serialize)]
        struct Written {
            topic: String,
            #[serde(with = "serde_bytes")]
            key: Option<Vec<u8>>,
            #[serde(with = "serde_bytes")]
            payload: Vec<u8>,
            headers: Vec<WrittenHeader>,
        }
        let written = vec![Written {
            topic: "stream".into(),
            key: Some(vec![0xfe]),
            payload: b"{}".to_vec(),
            headers: vec![
                WrittenHeader { key: "x-rh-identity".into(), value: Some(vec![0xff, 0x00]) },
                WrittenHeader { key: "empty".into(), value: None },
            ],
        }];
        let row = postcard::to_allocvec(&written).unwrap();
        let read = unpack(&row).unwrap();
        assert_eq!(
            read,
            [OutgoingEvent {
                topic: "stream",
                key: Some(&[0xfe]),
                payload: b"{}",
                headers: vec![
                    HeaderRef { key: "x-rh-identity", value: Some(&[0xff, 0x00]) },
                    HeaderRef { key: "empty", value: None },
                ],
            }]
        );
    }
}
