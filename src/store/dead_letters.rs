//! The `dead_letters` table: every dead-lettered message, why, and where its copy in the
//! dead-letter topic is.
//!
//! A row holds the original coordinates, key and value, the rejection and the copy's
//! coordinates in the dead-letter topic. It does not hold the original headers: they include the
//! raw `x-rh-identity`, which is never stored in the database. The copy in the dead-letter topic
//! has them all, which is what `replay` re-injects.

use chrono::{TimeZone, Utc};
use sqlx::{PgExecutor, PgPool};

use super::InboxKey;

use crate::envelope::Rejection;
use crate::message::RawMessage;

/// Everything recorded about one dead letter.
pub struct DeadLetter<'a> {
    pub message: &'a RawMessage,
    pub fingerprint: &'a [u8; 32],
    pub rejection: &'a Rejection,
    pub consumer_group: &'a str,
    pub request_id: Option<&'a str>,
    pub org_id: Option<&'a str>,
    pub dead_letter_partition: i32,
    pub dead_letter_offset: i64,
}

/// What the table knows of this very record at these coordinates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    No,
    DeadLettered,
    Replayed,
}

/// The lookup of one record by its unique key (topic, partition, offset, fingerprint), by its
/// current or its legacy fingerprint (rows older releases wrote).
pub const LOOKUP: &str = "SELECT bool_or(replayed_at IS NOT NULL) FROM dead_letters
     WHERE topic = $1 AND kafka_partition = $2 AND kafka_offset = $3 AND fingerprint IN ($4, $5)";

/// Looks the record up.
pub async fn lookup<'e>(executor: impl PgExecutor<'e>, key: &InboxKey) -> Result<Recorded, sqlx::Error> {
    let replayed: Option<bool> = sqlx::query_scalar(LOOKUP)
        .bind(&key.topic)
        .bind(key.partition)
        .bind(key.offset)
        .bind(&key.fingerprint[..])
        .bind(&key.legacy_fingerprint[..])
        .fetch_one(executor)
        .await?;
    Ok(match replayed {
        None => Recorded::No,
        Some(false) => Recorded::DeadLettered,
        Some(true) => Recorded::Replayed,
    })
}

/// Whether this very record was dead-lettered before at these coordinates.
pub(crate) async fn is_recorded<'e>(executor: impl PgExecutor<'e>, key: &InboxKey) -> Result<bool, sqlx::Error> {
    Ok(lookup(executor, key).await? != Recorded::No)
}

/// Marks the dead letter of this record as replayed.
pub(crate) async fn mark_replayed(pool: &PgPool, key: &InboxKey) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE dead_letters SET replayed_at = now()
         WHERE topic = $1 AND kafka_partition = $2 AND kafka_offset = $3 AND fingerprint IN ($4, $5)",
    )
    .bind(&key.topic)
    .bind(key.partition)
    .bind(key.offset)
    .bind(&key.fingerprint[..])
    .bind(&key.legacy_fingerprint[..])
    .execute(pool)
    .await?;
    Ok(())
}

/// Records a dead letter; recording the same one twice keeps the first row.
pub async fn record(pool: &PgPool, letter: &DeadLetter<'_>) -> Result<(), sqlx::Error> {
    let message = letter.message;
    let timestamp = message.timestamp_ms.and_then(|ms| Utc.timestamp_millis_opt(ms).single());
    sqlx::query(
        "INSERT INTO dead_letters (topic, kafka_partition, kafka_offset, fingerprint, message_key, payload,
                                   original_timestamp, stage, reason, error_class, message, attempts, consumer_group,
                                   request_id, org_id, dlq_partition, dlq_offset)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)
         ON CONFLICT (topic, kafka_partition, kafka_offset, fingerprint) DO NOTHING",
    )
    .bind(&message.topic)
    .bind(message.partition)
    .bind(message.offset)
    .bind(&letter.fingerprint[..])
    .bind(message.key.as_deref())
    .bind(message.payload.as_deref())
    .bind(timestamp)
    .bind(letter.rejection.stage().as_str())
    .bind(letter.rejection.reason.code())
    .bind(letter.rejection.class.as_str())
    .bind(&letter.rejection.message)
    .bind(letter.rejection.attempts as i32)
    .bind(letter.consumer_group)
    .bind(letter.request_id)
    .bind(letter.org_id)
    .bind(letter.dead_letter_partition)
    .bind(letter.dead_letter_offset)
    .execute(pool)
    .await?;
    Ok(())
}
