//! librdkafka client settings and the two ways the service writes to Kafka.
//!
//! All clients (consumer, stream and dead-letter producers, the producer CLI) get their
//! connection and security settings from [`client_config`], so SASL/TLS is configured once.
//! A record counts as sent only when the broker has acknowledged it: [`Publisher::publish`]
//! waits for one record's delivery report, [`BatchPublisher::publish_all`] (the outbox relay's)
//! for a whole batch's.

use std::sync::Mutex;
use std::time::Duration;

use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header as KafkaHeader, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, FutureProducer, FutureRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::util::Timeout;
use rdkafka::ClientContext;
use tokio::sync::Notify;

use crate::config::KafkaConfig;
use crate::message::HeaderRef;

/// Connection and security settings shared by every client.
pub fn client_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &kafka.brokers).set("client.id", "event-router");
    if let Some(protocol) = &kafka.security_protocol {
        config.set("security.protocol", protocol.to_ascii_lowercase());
    }
    if let Some(mechanism) = &kafka.sasl_mechanism {
        config.set("sasl.mechanism", mechanism);
    }
    if let Some(username) = &kafka.sasl_username {
        config.set("sasl.username", username);
    }
    if let Some(password) = &kafka.sasl_password {
        config.set("sasl.password", password.expose());
    }
    if let Some(ca) = &kafka.ssl_ca_location {
        config.set("ssl.ca.location", ca);
    }
    config
}

/// Consumer settings: offsets are stored by the service after a message is fully processed and
/// committed from there by librdkafka's background commit (and explicitly at shutdown).
pub(crate) fn consumer_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut config = client_config(kafka);
    config
        .set("group.id", &kafka.group_id)
        .set("enable.auto.commit", "true")
        // Short: a handover that cannot commit (a broker refusing commits mid-rebalance, a crash)
        // redoes at most this much finished work.
        .set("auto.commit.interval.ms", "250")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", &kafka.auto_offset_reset)
        .set("enable.partition.eof", "false")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        .set("topic.metadata.refresh.interval.ms", "10000")
        // Feeds the consumer lag gauge.
        .set("statistics.interval.ms", "5000")
        // librdkafka pre-fetches up to this much (all partitions together; 64 MiB by default):
        // enough to keep every worker busy, small enough to bound memory.
        .set("queued.max.messages.kbytes", "16384")
        // A fetch returns as soon as data is there, or after this long when there is none
        // (librdkafka's 500 ms default puts up to half a second on a quiet partition's latency).
        .set("fetch.wait.max.ms", "10")
        // What one fetch may bring on top of that queue (librdkafka's default is 50 MB, per
        // broker connection). Its response buffers live until the last of their messages is
        // copied out, so this adds to peak memory directly; a record larger than this is still
        // fetched, alone (bench/README.md, 21.).
        .set("fetch.max.bytes", "4194304");
    config
}

/// The largest record the service's producers send (librdkafka's `message.max.bytes`, set
/// explicitly at its default; a Kafka broker's own default is about 1 MiB). Everything the
/// service publishes is checked against it first (see [`record_size`]), because a record over it
/// can never be sent, and retrying it would stop whatever waits behind it.
pub const MAX_RECORD_BYTES: usize = 1_000_000;

/// What librdkafka counts of a record against `message.max.bytes`: key, value and headers, with
/// a margin for the length prefixes and the record's framing.
pub fn record_size(key: Option<&[u8]>, value: &[u8], headers: &[HeaderRef<'_>]) -> usize {
    let headers: usize = headers.iter().map(|h| h.key.len() + h.value.map_or(0, <[u8]>::len) + 16).sum();
    key.map_or(0, <[u8]>::len) + value.len() + headers + 128
}

/// Whether a publish error can never succeed on retry: the record itself is refused (too
/// large, invalid), by librdkafka or by the broker.
pub(crate) fn is_permanent(error: &KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as Code;
    matches!(
        error.rdkafka_error_code(),
        Some(
            Code::MessageSizeTooLarge
                | Code::InvalidMessageSize
                | Code::InvalidMessage
                | Code::InvalidRecord
                | Code::InvalidTopic
        )
    )
}

/// How long a partition's records wait to be sent together: librdkafka's default, for the dead
/// letters and producers that wait on each send ([`BatchPublisher`] takes its own).
const PRODUCER_LINGER: Duration = Duration::from_millis(5);

/// Producer settings: idempotent, acknowledged by all in-sync replicas.
pub(crate) fn producer_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut config = client_config(kafka);
    config
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", PRODUCER_LINGER.as_millis().to_string())
        .set("message.timeout.ms", "30000")
        .set("message.max.bytes", MAX_RECORD_BYTES.to_string());
    config
}

/// Routes librdkafka's own log lines into `tracing` at the service's levels: librdkafka reports a
/// lost connection as an error, but it reconnects by itself, and the service retries whatever
/// failed meanwhile; for an operator that is a warning.
pub(crate) fn log_librdkafka(level: RDKafkaLogLevel, facility: &str, message: &str) {
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error
        | RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", facility, "{message}"),
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => tracing::info!(target: "librdkafka", facility, "{message}"),
        RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", facility, "{message}"),
    }
}

/// Client context of the service's producers: librdkafka logs at the service's levels.
#[derive(Clone, Copy, Default)]
pub(crate) struct ProducerLogs;

impl ClientContext for ProducerLogs {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        log_librdkafka(level, fac, log_message);
    }
}

/// A producer that waits for delivery reports.
#[derive(Clone)]
pub struct Publisher {
    producer: FutureProducer<ProducerLogs>,
}

/// What a delivered message got from the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    pub partition: i32,
    pub offset: i64,
}

impl Publisher {
    pub fn new(kafka: &KafkaConfig) -> Result<Self, KafkaError> {
        Ok(Publisher { producer: producer_config(kafka).create_with_context(ProducerLogs)? })
    }

    /// A publisher whose sends fail after `timeout` without an acknowledgement.
    pub fn with_timeout(kafka: &KafkaConfig, timeout: Duration) -> Result<Self, KafkaError> {
        let mut config = producer_config(kafka);
        config.set("message.timeout.ms", timeout.as_millis().to_string());
        Ok(Publisher { producer: config.create_with_context(ProducerLogs)? })
    }

    /// Sends one message and waits for the broker to acknowledge it.
    pub async fn publish(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: &[u8],
        headers: &[HeaderRef<'_>],
    ) -> Result<Delivery, KafkaError> {
        self.publish_at(topic, key, payload, headers, None).await
    }

    /// Like [`Publisher::publish`], with the record's timestamp set (milliseconds since the
    /// epoch) instead of taken from the clock.
    pub async fn publish_at(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: &[u8],
        headers: &[HeaderRef<'_>],
        timestamp_ms: Option<i64>,
    ) -> Result<Delivery, KafkaError> {
        let mut owned = OwnedHeaders::new_with_capacity(headers.len());
        for header in headers {
            owned = owned.insert(KafkaHeader { key: header.key, value: header.value });
        }
        let mut record = FutureRecord::to(topic).payload(payload).headers(owned);
        if let Some(key) = key {
            record = record.key(key);
        }
        if let Some(timestamp) = timestamp_ms {
            record = record.timestamp(timestamp);
        }
        self.producer
            .send(record, Timeout::Never)
            .await
            .map(|delivery| Delivery { partition: delivery.partition, offset: delivery.offset })
            .map_err(|(error, _)| error)
    }

    /// Waits up to `timeout` for queued messages to be delivered.
    pub(crate) fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.producer.flush(Timeout::After(timeout))
    }
}

/// One record of a batch for [`BatchPublisher::publish_all`].
pub struct Record<'a> {
    pub topic: &'a str,
    pub key: Option<&'a [u8]>,
    pub payload: &'a [u8],
    pub headers: &'a [HeaderRef<'a>],
}

/// A producer for whole batches (the outbox relay's): every record is queued at once, then the
/// batch waits for all their delivery reports, each matched to its record by its place in the
/// batch. [`Publisher`] gives each record a future of its own (a channel, and a wake-up of the
/// waiting task per report), which cost the relay more than queueing the records
/// (bench/README.md, section 24).
pub struct BatchPublisher {
    producer: ThreadedProducer<BatchAcks>,
    /// One batch at a time: reports are told apart by the batch's generation.
    sending: tokio::sync::Mutex<()>,
}

/// The delivery reports of the batch being sent.
#[derive(Default)]
struct BatchAcks {
    batch: Mutex<Acks>,
    settled: Notify,
}

#[derive(Default)]
struct Acks {
    /// Reports of an earlier generation belong to a batch whose sender stopped waiting for
    /// them (a shutdown deadline); they are dropped.
    generation: u32,
    results: Vec<Option<Result<Delivery, KafkaError>>>,
    outstanding: usize,
}

// A record's opaque is its batch's generation in the upper 32 bits and its index in the lower.
const _: () = assert!(usize::BITS >= 64, "the batch publisher packs two u32s into a usize");

impl BatchAcks {
    fn settle(&self, generation: u32, index: usize, result: Result<Delivery, KafkaError>) {
        let mut acks = self.batch.lock().expect("batch acks lock");
        if acks.generation != generation {
            return;
        }
        if let Some(slot @ None) = acks.results.get_mut(index) {
            *slot = Some(result);
            acks.outstanding -= 1;
            if acks.outstanding == 0 {
                self.settled.notify_one();
            }
        }
    }
}

impl ClientContext for BatchAcks {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        log_librdkafka(level, fac, log_message);
    }
}

impl ProducerContext for BatchAcks {
    type DeliveryOpaque = usize;

    fn delivery(&self, report: &DeliveryResult<'_>, opaque: usize) {
        let result = match report {
            Ok(message) => Ok(Delivery { partition: message.partition(), offset: message.offset() }),
            Err((error, _)) => Err(error.clone()),
        };
        self.settle((opaque >> 32) as u32, opaque & 0xffff_ffff, result);
    }
}

impl BatchPublisher {
    /// A batch publisher whose sends fail after `timeout` without an acknowledgement, each
    /// partition's records waiting up to `linger` to be sent together.
    pub fn new(kafka: &KafkaConfig, timeout: Duration, linger: Duration) -> Result<Self, KafkaError> {
        let mut config = producer_config(kafka);
        config.set("message.timeout.ms", timeout.as_millis().to_string()).set("linger.ms", linger.as_millis().to_string());
        Ok(BatchPublisher { producer: config.create_with_context(BatchAcks::default())?, sending: Default::default() })
    }

    /// Sends every record and waits until each is acknowledged or failed (within the timeout
    /// the publisher was made with); the results come back in the records' order. librdkafka
    /// keeps the records' order per partition (the producer is idempotent).
    pub async fn publish_all(&self, records: &[Record<'_>]) -> Vec<Result<Delivery, KafkaError>> {
        let _one_batch = self.sending.lock().await;
        let acks = self.producer.context();
        let generation = {
            let mut batch = acks.batch.lock().expect("batch acks lock");
            batch.generation = batch.generation.wrapping_add(1);
            batch.results.clear();
            batch.results.resize_with(records.len(), || None);
            batch.outstanding = records.len();
            batch.generation
        };
        for (index, record) in records.iter().enumerate() {
            let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
            for header in record.headers {
                headers = headers.insert(KafkaHeader { key: header.key, value: header.value });
            }
            let opaque = ((generation as usize) << 32) | index;
            let mut queued = BaseRecord::with_opaque_to(record.topic, opaque).payload(record.payload).headers(headers);
            if let Some(key) = record.key {
                queued = queued.key(key);
            }
            loop {
                match self.producer.send(queued) {
                    Ok(()) => break,
                    // librdkafka's queue is full: wait for deliveries to make room.
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        queued = back;
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    Err((error, _)) => {
                        acks.settle(generation, index, Err(error));
                        break;
                    }
                }
            }
        }
        loop {
            let settled = acks.settled.notified();
            {
                let mut batch = acks.batch.lock().expect("batch acks lock");
                if batch.outstanding == 0 {
                    return std::mem::take(&mut batch.results)
                        .into_iter()
                        .map(|result| result.expect("every record of a settled batch has its result"))
                        .collect();
                }
            }
            settled.await;
        }
    }
}
