//! Recovery: re-inject dead letters into their original topics once the cause is fixed.
//!
//! The dead-letter topic holds each rejected message with its original key, value and headers;
//! the `dead_letters` table says why and when, and where each copy is. `event-router replay`
//! picks dead letters, from the table or straight from the topic, filtered by topic, reason and
//! time; reads their copies; and produces them to their original topics with their original
//! key, value, headers and timestamp, plus [`REPLAY_OF`] naming the original coordinates.
//!
//! Replaying twice must not double any effect. Two things see to that: a replayed dead letter is
//! marked in the table and skipped next time (unless asked otherwise), and the pipeline files a
//! replayed message in the inbox under its original coordinates, provided a dead letter with the
//! same fingerprint was recorded there. That proviso keeps a producer from using the header to
//! make a new message pass for an old one and be skipped.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};

use crate::config::Config;
use crate::dead_letter;
use crate::kafka::{self, Publisher};
use crate::message::{header_refs, ByteString, Bytes, Header, RawMessage};
use crate::store::dead_letters::{self, Recorded};
use crate::store::{self, InboxKey, StoreError};

pub use crate::message::REPLAY_OF;

/// Where the dead letters to replay are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Source {
    /// The `dead_letters` table (copies are then read from the dead-letter topic).
    Table,
    /// The dead-letter topic alone (for dead letters the table does not have).
    Topic,
}

/// Which dead letters to replay.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Original topic (actual Kafka name).
    pub topic: Option<String>,
    pub reason: Option<String>,
    /// Dead-lettered at or after.
    pub since: Option<DateTime<Utc>>,
    /// Dead-lettered before.
    pub until: Option<DateTime<Utc>>,
    /// Replay dead letters that were replayed before, too.
    pub include_replayed: bool,
}

/// What a replay did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub matched: u64,
    pub replayed: u64,
    pub skipped_already_replayed: u64,
    /// Chosen in the table, but the copy is no longer in the dead-letter topic (retention).
    pub missing_copies: u64,
    /// Copies naming an original topic the service does not own: never re-injected.
    pub refused_foreign_topic: u64,
    /// Copies that left out their value or key (too large to copy whole) and have no
    /// `dead_letters` row to take them from.
    pub incomplete_copies: u64,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} matched, {} replayed, {} skipped (replayed before; --include-replayed to replay again), {} missing from the dead-letter topic, {} refused (original topic not owned by the service), {} incomplete (value or key left out of the copy and not in the dead_letters table)",
            self.matched,
            self.replayed,
            self.skipped_already_replayed,
            self.missing_copies,
            self.refused_foreign_topic,
            self.incomplete_copies
        )
    }
}

/// Why a replay stopped. Dead letters replayed before it are marked as replayed.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The database is not reachable (`DATABASE_URL`).
    #[error(transparent)]
    Connect(#[from] StoreError),
    #[error("reading the dead_letters table")]
    ReadTable(#[source] sqlx::Error),
    #[error("reading a dead letter's value from the dead_letters table")]
    ReadValue(#[source] sqlx::Error),
    /// Looking up or marking a dead letter failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error("KAFKA_BROKERS: cannot create the replay consumer")]
    CreateConsumer(#[source] KafkaError),
    #[error("reading metadata of {topic}")]
    Metadata {
        topic: String,
        #[source]
        source: KafkaError,
    },
    #[error("reading the dead-letter topic")]
    ReadTopic(#[source] KafkaError),
    #[error("the dead-letter topic stopped answering before its end was reached")]
    TopicStalled,
    #[error("re-injecting into {topic}")]
    Reinject {
        topic: String,
        #[source]
        source: KafkaError,
    },
    /// Creating the producer, reading watermarks or assigning partitions failed.
    #[error(transparent)]
    Kafka(#[from] KafkaError),
}

/// A dead letter's copy, read back from the dead-letter topic.
struct Copy {
    message: RawMessage,
    original: InboxKey,
    original_timestamp: Option<i64>,
}

impl Copy {
    fn parse(message: RawMessage) -> Option<Copy> {
        let text = |name| message.header(name).and_then(|v| std::str::from_utf8(v).ok()).map(str::to_owned);
        let original_timestamp = text(dead_letter::ORIGINAL_TIMESTAMP).and_then(|t| t.parse().ok());
        let original_message = RawMessage {
            topic: text(dead_letter::ORIGINAL_TOPIC)?.into(),
            partition: text(dead_letter::ORIGINAL_PARTITION)?.parse().ok()?,
            offset: text(dead_letter::ORIGINAL_OFFSET)?.parse().ok()?,
            key: message.key.clone(),
            payload: message.payload.clone(),
            // The original's headers and the dead-letter ones, which fingerprints leave out.
            headers: message.headers.clone(),
            timestamp_ms: original_timestamp,
            header_problem: None,
        };
        Some(Copy { original: InboxKey::of(&original_message), original_timestamp, message })
    }

    /// Whether the copy left out its value or key ([`dead_letter::OMITTED`]).
    fn is_incomplete(&self) -> bool {
        self.message
            .header(dead_letter::OMITTED)
            .is_some_and(|omitted| omitted.split(|b| *b == b',').any(|part| part == b"value" || part == b"key"))
    }

    /// Puts back the key and value the copy left out, as the `dead_letters` row kept them; the
    /// original's fingerprint is then the real one again.
    fn complete(&mut self, key: Option<Vec<u8>>, value: Option<Vec<u8>>) {
        self.message.key = key.map(Bytes::from);
        self.message.payload = value.map(Bytes::from);
        let fingerprints = crate::message::fingerprints(
            self.message.key.as_deref(),
            self.message.payload.as_deref(),
            self.original_timestamp,
            &self.message.headers,
        );
        self.original.fingerprint = fingerprints.current;
        self.original.legacy_fingerprint = fingerprints.legacy;
    }

    fn reason(&self) -> Option<&str> {
        self.message.header(dead_letter::REASON).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The original headers, without the dead-letter ones, plus [`REPLAY_OF`].
    fn replay_headers(&self) -> Vec<Header> {
        let mut headers: Vec<Header> = self
            .message
            .headers
            .iter()
            .filter(|h| {
                let key = h.key.to_ascii_lowercase();
                !key.starts_with("x-dlq-") && key != REPLAY_OF
            })
            .cloned()
            .collect();
        let original = &self.original;
        let value = format!("{}/{}/{}", original.topic, original.partition, original.offset);
        headers.push(Header { key: ByteString::from_static(REPLAY_OF), value: Some(value.into()) });
        headers
    }
}

/// Runs a replay. With `dry_run`, counts what would be replayed and sends nothing.
pub async fn run(config: &Config, source: Source, filter: &Filter, dry_run: bool) -> Result<Summary, ReplayError> {
    let pool = store::connect(config.database_url.expose(), 2).await?;
    let mut summary = Summary::default();
    // From the table: the copies wanted, by their coordinates in the dead-letter topic.
    let wanted: Option<HashSet<(i32, i64)>> = match source {
        Source::Topic => None,
        Source::Table => {
            let rows: Vec<(i32, i64, bool)> = sqlx::query_as(
                "SELECT dlq_partition, dlq_offset, replayed_at IS NOT NULL FROM dead_letters
                 WHERE ($1::text IS NULL OR topic = $1) AND ($2::text IS NULL OR reason = $2)
                   AND ($3::timestamptz IS NULL OR dead_lettered_at >= $3)
                   AND ($4::timestamptz IS NULL OR dead_lettered_at < $4)",
            )
            .bind(&filter.topic)
            .bind(&filter.reason)
            .bind(filter.since)
            .bind(filter.until)
            .fetch_all(&pool)
            .await
            .map_err(ReplayError::ReadTable)?;
            summary.matched = rows.len() as u64;
            summary.skipped_already_replayed = rows.iter().filter(|r| r.2 && !filter.include_replayed).count() as u64;
            Some(rows.into_iter().filter(|r| !r.2 || filter.include_replayed).map(|(p, o, _)| (p, o)).collect())
        }
    };
    let to_find = wanted.as_ref().map(HashSet::len);

    // Only topics the service owns are re-injected into: the original topic comes from a header
    // of the copy, which whoever can write to the dead-letter topic controls.
    let owned: HashSet<String> = crate::topics::REGISTRY.iter().map(|schema| config.topics.name(schema.key)).collect();
    let publisher = Publisher::new(&config.kafka)?;
    let copies = read_dead_letter_topic(config)?;
    let progress = indicatif::ProgressBar::new(copies.len() as u64).with_message("dead letters read");
    progress.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} {msg} ({eta} left)").expect("a valid progress template"),
    );
    let mut found = 0;
    // The topic may hold a dead letter twice (it is written at least once): replay it once.
    let mut done: HashSet<(String, i32, i64, [u8; 32])> = HashSet::new();
    for message in copies {
        progress.inc(1);
        let coordinates = (message.partition, message.offset);
        let Some(mut copy) = Copy::parse(message) else { continue };
        match &wanted {
            Some(wanted) if !wanted.contains(&coordinates) => continue,
            Some(_) => found += 1,
            None if !matches_headers(&copy, filter) => continue,
            None => summary.matched += 1,
        }
        if !owned.contains(&*copy.original.topic) {
            summary.refused_foreign_topic += 1;
            continue;
        }
        // A copy too large to send whole left out its value (or key): the table kept them.
        if copy.is_incomplete() {
            match original_from_table(&pool, &copy).await? {
                Some((key, value)) => copy.complete(key, value),
                None => {
                    summary.incomplete_copies += 1;
                    continue;
                }
            }
        }
        if wanted.is_none()
            && !filter.include_replayed
            && dead_letters::lookup(&pool, &copy.original).await? == Recorded::Replayed
        {
            summary.skipped_already_replayed += 1;
            continue;
        }
        let original = &copy.original;
        if !done.insert((original.topic.to_string(), original.partition, original.offset, original.fingerprint)) {
            continue;
        }
        if !dry_run {
            publisher
                .publish_at(
                    &copy.original.topic,
                    copy.message.key.as_deref(),
                    copy.message.payload.as_deref().unwrap_or_default(),
                    &header_refs(&copy.replay_headers()),
                    copy.original_timestamp,
                )
                .await
                .map_err(|source| ReplayError::Reinject { topic: copy.original.topic.to_string(), source })?;
            dead_letters::mark_replayed(&pool, &copy.original).await?;
        }
        summary.replayed += 1;
    }
    progress.finish_and_clear();
    if let Some(to_find) = to_find {
        summary.missing_copies = (to_find - found) as u64;
    }
    pool.close().await;
    Ok(summary)
}

/// The key and value a `dead_letters` row kept of the copy's original, found by the copy's
/// coordinates in the dead-letter topic.
async fn original_from_table(
    pool: &sqlx::PgPool,
    copy: &Copy,
) -> Result<Option<(Option<Vec<u8>>, Option<Vec<u8>>)>, ReplayError> {
    sqlx::query_as(
        "SELECT message_key, payload FROM dead_letters
         WHERE topic = $1 AND kafka_partition = $2 AND kafka_offset = $3 AND dlq_partition = $4 AND dlq_offset = $5",
    )
    .bind(&*copy.original.topic)
    .bind(copy.original.partition)
    .bind(copy.original.offset)
    .bind(copy.message.partition)
    .bind(copy.message.offset)
    .fetch_optional(pool)
    .await
    .map_err(ReplayError::ReadValue)
}

fn matches_headers(copy: &Copy, filter: &Filter) -> bool {
    let dead_lettered_at = copy.message.timestamp_ms.and_then(|ms| Utc.timestamp_millis_opt(ms).single());
    filter.topic.as_ref().is_none_or(|t| **t == *copy.original.topic)
        && filter.reason.as_deref().is_none_or(|r| copy.reason() == Some(r))
        && filter.since.is_none_or(|since| dead_lettered_at.is_some_and(|at| at >= since))
        && filter.until.is_none_or(|until| dead_lettered_at.is_some_and(|at| at < until))
}

/// Reads the dead-letter topic from its start to its current end, every partition.
fn read_dead_letter_topic(config: &Config) -> Result<Vec<RawMessage>, ReplayError> {
    let topic = config.topics.dead_letter();
    let mut client = kafka::client_config(&config.kafka);
    client.set("group.id", "event-router-replay").set("enable.auto.commit", "false").set("enable.partition.eof", "false");
    let consumer: BaseConsumer = client.create().map_err(ReplayError::CreateConsumer)?;
    let timeout = Duration::from_secs(10);
    let metadata = consumer
        .fetch_metadata(Some(&topic), timeout)
        .map_err(|source| ReplayError::Metadata { topic: topic.clone(), source })?;
    let partitions: Vec<i32> = metadata.topics().iter().flat_map(|t| t.partitions().iter().map(|p| p.id())).collect::<Vec<_>>();
    let mut ends = HashMap::new();
    let mut assignment = TopicPartitionList::new();
    for partition in partitions {
        let (low, high) = consumer.fetch_watermarks(&topic, partition, timeout)?;
        if high > low {
            ends.insert(partition, high);
            assignment.add_partition_offset(&topic, partition, Offset::Offset(low))?;
        }
    }
    consumer.assign(&assignment)?;
    let mut messages = Vec::new();
    let mut topic_names = crate::message::TopicNames::default();
    let mut idle = 0;
    while !ends.is_empty() {
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(message)) => {
                idle = 0;
                let message = RawMessage::from_kafka(&message, crate::message::HeaderLimits::UNBOUNDED, &mut topic_names);
                if ends.get(&message.partition).is_some_and(|end| message.offset + 1 >= *end) {
                    ends.remove(&message.partition);
                }
                messages.push(message);
            }
            Some(Err(error)) => return Err(ReplayError::ReadTopic(error)),
            None => {
                idle += 1;
                if idle >= 60 {
                    return Err(ReplayError::TopicStalled);
                }
            }
        }
    }
    Ok(messages)
}
