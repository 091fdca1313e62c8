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
        .bind(&*key.topic)
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
    .bind(&*key.topic)
    .bind(key.partition)
    .bind(key.offset)
    .bind(&key.fingerprint[..])
    .bind(&key.legacy_fingerprint[..])
    .execute(pool)
    .await?;
    Ok(())
}

/// Which of the records $1 to $5 (topic, partition, offset, fingerprint, legacy fingerprint,
/// one array element each) have a row, by their ordinals: one probe of the unique key per
/// record, written in the form of the inbox's range read (bench/README.md, 24).
pub const RECORDED: &str = "SELECT k.n FROM UNNEST($1::text[], $2::int4[], $3::int8[], $4::bytea[], $5::bytea[])
                               WITH ORDINALITY AS k(topic, kafka_partition, kafka_offset, fingerprint, legacy, n)
     CROSS JOIN LATERAL (SELECT 1 FROM dead_letters AS d
                          WHERE d.topic = k.topic AND d.kafka_partition = k.kafka_partition
                            AND d.kafka_offset = k.kafka_offset AND d.fingerprint IN (k.fingerprint, k.legacy)
                          LIMIT 1) AS d";

/// Whether each of `keys` was dead-lettered before at its coordinates, in the order given.
pub(crate) async fn recorded(pool: &PgPool, keys: &[InboxKey]) -> Result<Vec<bool>, sqlx::Error> {
    let found: Vec<i64> = sqlx::query_scalar(RECORDED)
        .bind(keys.iter().map(|k| &*k.topic).collect::<Vec<_>>())
        .bind(keys.iter().map(|k| k.partition).collect::<Vec<_>>())
        .bind(keys.iter().map(|k| k.offset).collect::<Vec<_>>())
        .bind(keys.iter().map(|k| &k.fingerprint[..]).collect::<Vec<_>>())
        .bind(keys.iter().map(|k| &k.legacy_fingerprint[..]).collect::<Vec<_>>())
        .fetch_all(pool)
        .await?;
    let mut recorded = vec![false; keys.len()];
    for n in found {
        if let Some(slot) = usize::try_from(n - 1).ok().and_then(|i| recorded.get_mut(i)) {
            *slot = true;
        }
    }
    Ok(recorded)
}

/// Records dead letters in one statement; recording the same one twice keeps the first row.
pub async fn record_all(pool: &PgPool, letters: &[DeadLetter<'_>]) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO dead_letters (topic, kafka_partition, kafka_offset, fingerprint, message_key, payload,
                                   original_timestamp, stage, reason, error_class, message, attempts, consumer_group,
                                   request_id, org_id, dlq_partition, dlq_offset)
         SELECT * FROM UNNEST($1::text[], $2::int4[], $3::int8[], $4::bytea[], $5::bytea[], $6::bytea[],
                              $7::timestamptz[], $8::text[], $9::text[], $10::text[], $11::text[], $12::int4[],
                              $13::text[], $14::text[], $15::text[], $16::int4[], $17::int8[])
         ON CONFLICT (topic, kafka_partition, kafka_offset, fingerprint) DO NOTHING",
    )
    .bind(letters.iter().map(|l| &*l.message.topic).collect::<Vec<_>>())
    .bind(letters.iter().map(|l| l.message.partition).collect::<Vec<_>>())
    .bind(letters.iter().map(|l| l.message.offset).collect::<Vec<_>>())
    .bind(letters.iter().map(|l| &l.fingerprint[..]).collect::<Vec<_>>())
    .bind(letters.iter().map(|l| l.message.key.as_deref()).collect::<Vec<_>>())
    .bind(letters.iter().map(|l| l.message.payload.as_deref()).collect::<Vec<_>>())
    .bind(letters.iter().map(|l| l.message.timestamp_ms.and_then(|ms| Utc.timestamp_millis_opt(ms).single())).collect::<Vec<_>>())
    .bind(letters.iter().map(|l| l.rejection.stage().as_str()).collect::<Vec<_>>())
    .bind(letters.iter().map(|l| l.rejection.reason.code()).collect::<Vec<_>>())
    .bind(letters.iter().map(|l| l.rejection.class.as_str()).collect::<Vec<_>>())
    .bind(letters.iter().map(|l| l.rejection.message.as_str()).collect::<Vec<_>>())
    .bind(letters.iter().map(|l| l.rejection.attempts as i32).collect::<Vec<_>>())
    .bind(letters.iter().map(|l| l.consumer_group).collect::<Vec<_>>())
    .bind(letters.iter().map(|l| l.request_id).collect::<Vec<_>>())
    .bind(letters.iter().map(|l| l.org_id).collect::<Vec<_>>())
    .bind(letters.iter().map(|l| l.dead_letter_partition).collect::<Vec<_>>())
    .bind(letters.iter().map(|l| l.dead_letter_offset).collect::<Vec<_>>())
    .execute(pool)
    .await?;
    Ok(())
}
