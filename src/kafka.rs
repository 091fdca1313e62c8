//! librdkafka client settings and the one way the service writes to Kafka.
//!
//! All clients (consumer, stream and dead-letter producers, the producer CLI) get their
//! connection and security settings from [`client_config`], so SASL/TLS is configured once.
//! [`Publisher::publish`] waits for the broker's delivery report: a message counts as sent only
//! when the broker has acknowledged it.

use std::time::Duration;

use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header as KafkaHeader, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use rdkafka::ClientContext;

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

/// How long a partition's records wait to be sent together, unless a publisher says otherwise:
/// librdkafka's default, for the dead letters and producers that wait on each send.
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
        Self::with_timeout_and_linger(kafka, timeout, PRODUCER_LINGER)
    }

    /// Like [`Publisher::with_timeout`], with each partition's records waiting up to `linger` to be
    /// sent together (the outbox relay's publisher, which sends whole batches at once).
    pub fn with_timeout_and_linger(kafka: &KafkaConfig, timeout: Duration, linger: Duration) -> Result<Self, KafkaError> {
        let mut config = producer_config(kafka);
        config.set("message.timeout.ms", timeout.as_millis().to_string()).set("linger.ms", linger.as_millis().to_string());
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
