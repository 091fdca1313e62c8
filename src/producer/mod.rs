//! The producer library: validate a message exactly as the service will, then send it with the
//! identity and request-id headers set.
//!
//! Validation reuses the service's own envelope step on the message as it would arrive, so a
//! producer learns before sending the same reason code the service would dead-letter it with.
//! Other topics are reached by their full name, checked against a schema of the caller's or sent
//! as they are. With a spool ([`spool`]), nothing is lost while Kafka is away.
//!
//! ```no_run
//! use std::time::Duration;
//! use event_router::config::{Config, ProcessEnv};
//! use event_router::producer::{EventProducer, Handed, IdentityHeader, Outgoing, SpoolSettings};
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let config = Config::from_env(&ProcessEnv)?;
//! let spool = SpoolSettings { dir: "/var/spool/my-service".into(), max_bytes: 256 << 20, delivery_timeout: Duration::from_secs(10) };
//! let producer = EventProducer::with_spool(&config.kafka, &config.topics, &spool)?;
//! let identity = IdentityHeader::Encoded("eyJpZGVudGl0eSI6...".into()); // the caller's x-rh-identity
//! let todo = serde_json::json!({"id": 7, "title": "Water the plants", "description": "The ficus first."});
//! let outgoing = Outgoing { key: Some("todo-7".into()), ..Outgoing::json(&todo, identity) };
//! match producer.send_or_spool("todo-created", &outgoing).await? {
//!     Handed::Sent(sent) => println!("offset {}", sent.delivery.offset),
//!     Handed::Spooled { request_id, .. } => println!("kept on disk: {request_id}"),
//! }
//! // Later (a task of the service): send what waits.
//! producer.resend_spooled().await?;
//! # Ok(())
//! # }
//! ```

pub mod spool;

use serde_json::Value;
use uuid::Uuid;

use crate::config::{KafkaConfig, TopicConfig};
use crate::envelope::validate::SchemaError;
use crate::envelope::{self, identity::encode_identity, Rejection, Validators, IDENTITY_HEADER, REQUEST_ID_HEADER};
use crate::kafka::{Delivery, Publisher};
use crate::message::{header_refs, ByteString, Bytes, Header, RawMessage};

/// The identity to put in `x-rh-identity`.
#[derive(Debug, Clone)]
pub enum IdentityHeader {
    /// A decoded identity document, encoded here.
    Document(Value),
    /// An already encoded header value, sent as is.
    Encoded(String),
    /// No identity header at all.
    Absent,
}

/// One message to send.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub key: Option<String>,
    /// The message value; usually JSON text.
    pub value: Vec<u8>,
    pub identity: IdentityHeader,
    /// Generated (UUID v4) when absent.
    pub request_id: Option<String>,
    /// Headers besides the identity and the request id, in order.
    pub extra_headers: Vec<(String, Vec<u8>)>,
}

impl Outgoing {
    pub fn json(payload: &Value, identity: IdentityHeader) -> Self {
        Outgoing { key: None, value: payload.to_string().into_bytes(), identity, request_id: None, extra_headers: Vec::new() }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    #[error("rejected before sending: {0}")]
    Rejected(Rejection),
    #[error("Kafka did not accept the message: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// Kafka could not take it and neither could the spool (full, or its disk failed).
    #[error("Kafka could not take the message and the spool could not keep it: {0}")]
    Spool(#[from] spool::SpoolError),
}

/// What became of a message handed to [`EventProducer::send_or_spool`].
#[derive(Debug, Clone)]
pub enum Handed {
    /// Kafka acknowledged it.
    Sent(Sent),
    /// Kafka could not take it now; it is on disk and will be sent by [`EventProducer::resend_spooled`].
    Spooled { topic: String, request_id: String },
}

/// Where and how the producer keeps what Kafka cannot take now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolSettings {
    /// `PRODUCER_SPOOL_DIR`.
    pub dir: std::path::PathBuf,
    /// `PRODUCER_SPOOL_MAX_BYTES`: undelivered bytes the spool may hold.
    pub max_bytes: u64,
    /// How long one send waits for Kafka before the message is spooled instead.
    pub delivery_timeout: std::time::Duration,
}

/// What the spool holds now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpoolStatus {
    pub pending_bytes: u64,
    /// When the oldest message waiting was spooled (ms since the epoch).
    pub oldest_spooled_at_ms: Option<i64>,
    pub spooled_total: u64,
    pub resent_total: u64,
}

/// A producer's spool and its counts.
struct SpoolState {
    spool: std::sync::Mutex<spool::Spool>,
    /// Re-sending waits longer than a first send: a message that times out while a batch is
    /// re-sent is sent again with everything after it.
    resender: Publisher,
    spooled: std::sync::atomic::AtomicU64,
    resent: std::sync::atomic::AtomicU64,
}

/// Why an [`EventProducer`] could not be created.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The spool directory cannot be used (in use by another process, unreadable).
    #[error(transparent)]
    Spool(#[from] spool::SpoolError),
    /// The Kafka producer could not be created (a bad client setting).
    #[error(transparent)]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// A schema does not compile.
    #[error(transparent)]
    Schema(#[from] SchemaError),
}

/// What was sent, where.
#[derive(Debug, Clone)]
pub struct Sent {
    pub topic: String,
    pub request_id: String,
    pub delivery: Delivery,
}

pub struct EventProducer {
    publisher: Publisher,
    validators: Validators,
    topics: TopicConfig,
    spool: Option<SpoolState>,
}

/// Messages re-sent from the spool per round.
const RESEND_BATCH: usize = 500;
/// How long a re-sent message may wait for Kafka, at least.
const RESEND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

impl SpoolState {
    fn lock(&self) -> std::sync::MutexGuard<'_, spool::Spool> {
        self.spool.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl EventProducer {
    pub fn new(kafka: &KafkaConfig, topics: &TopicConfig) -> Result<Self, SetupError> {
        Ok(EventProducer {
            publisher: Publisher::new(kafka)?,
            validators: Validators::compile(topics)?,
            topics: topics.clone(),
            spool: None,
        })
    }

    /// A producer that spools what Kafka cannot take within `settings.delivery_timeout`
    /// ([`EventProducer::send_or_spool`]) instead of failing.
    pub fn with_spool(kafka: &KafkaConfig, topics: &TopicConfig, settings: &SpoolSettings) -> Result<Self, SetupError> {
        let spool = spool::Spool::open(&settings.dir, settings.max_bytes)?;
        Ok(EventProducer {
            publisher: Publisher::with_timeout(kafka, settings.delivery_timeout)?,
            validators: Validators::compile(topics)?,
            topics: topics.clone(),
            spool: Some(SpoolState {
                spool: std::sync::Mutex::new(spool),
                resender: Publisher::with_timeout(kafka, settings.delivery_timeout.max(RESEND_TIMEOUT))?,
                spooled: Default::default(),
                resent: Default::default(),
            }),
        })
    }

    /// Validates, then sends; what Kafka cannot take now is spooled (with a spool; without one,
    /// as [`EventProducer::send`]). A message is spooled without trying Kafka while older ones
    /// wait in the spool, so that messages sent one after another keep their order.
    pub async fn send_or_spool(&self, topic_key: &str, outgoing: &Outgoing) -> Result<Handed, ProduceError> {
        let message = self.build(topic_key, outgoing);
        self.check(&message).map_err(ProduceError::Rejected)?;
        self.send_raw_or_spool(&message).await
    }

    /// [`EventProducer::send_or_spool`] without validating: any topic, by its full name.
    pub async fn send_raw_or_spool(&self, message: &RawMessage) -> Result<Handed, ProduceError> {
        let Some(state) = &self.spool else { return self.send_raw(message).await.map(Handed::Sent) };
        let request_id = envelope::request_id(message).unwrap_or_default();
        let waiting = !state.lock().is_empty();
        if !waiting {
            match self.send_raw(message).await {
                Ok(sent) => return Ok(Handed::Sent(sent)),
                Err(ProduceError::Kafka(error)) if !crate::kafka::is_permanent(&error) => {
                    tracing::debug!(%error, topic = %message.topic, "Kafka did not take the message; spooling it");
                }
                Err(error) => return Err(error),
            }
        }
        let spooled = spool::SpooledMessage {
            topic: message.topic.to_string(),
            key: message.key.as_deref().map(<[u8]>::to_vec),
            value: message.payload.as_deref().map(<[u8]>::to_vec).unwrap_or_default(),
            headers: message
                .headers
                .iter()
                .map(|h| (h.key.to_string(), h.value.as_deref().map(serde_bytes::ByteBuf::from)))
                .collect(),
            spooled_at_ms: chrono::Utc::now().timestamp_millis(),
        };
        state.lock().append(&spooled)?;
        state.spooled.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(Handed::Spooled { topic: message.topic.to_string(), request_id })
    }

    /// Sends what waits in the spool, oldest first, 500 at a time, and removes messages once
    /// Kafka acknowledged them. Duplicates come from two places only: a crash between Kafka's
    /// acknowledgement and the removal, and a batch Kafka took in part, which is sent again from
    /// its first unacknowledged message. Stops at the first message Kafka does not take; the
    /// count re-sent.
    pub async fn resend_spooled(&self) -> Result<u64, ProduceError> {
        let Some(state) = &self.spool else { return Ok(0) };
        let mut resent = 0;
        loop {
            let batch = state.lock().peek(RESEND_BATCH)?;
            if batch.is_empty() {
                return Ok(resent);
            }
            let sends = batch.iter().map(|(message, _)| {
                let headers: Vec<crate::message::HeaderRef<'_>> = message
                    .headers
                    .iter()
                    .map(|(key, value)| crate::message::HeaderRef { key, value: value.as_deref().map(|v| &**v) })
                    .collect();
                async move { state.resender.publish(&message.topic, message.key.as_deref(), &message.value, &headers).await }
            });
            let results = futures::future::join_all(sends).await;
            // Only the acknowledged prefix leaves the spool, so order holds across a failure.
            let acknowledged = results.iter().take_while(|r| r.is_ok()).count();
            if acknowledged > 0 {
                state.lock().delivered_until(batch[acknowledged - 1].1)?;
                state.resent.fetch_add(acknowledged as u64, std::sync::atomic::Ordering::Relaxed);
                resent += acknowledged as u64;
            }
            if let Some(Err(error)) = results.into_iter().find(Result::is_err) {
                return Err(ProduceError::Kafka(error));
            }
        }
    }

    /// Re-sends the spool every `every` (at once again while there is more), until `stop`: the
    /// background task a service runs beside its producer.
    pub async fn resend_until_stopped(
        self: std::sync::Arc<Self>,
        every: std::time::Duration,
        stop: tokio_util::sync::CancellationToken,
    ) {
        loop {
            if let Err(error) = self.resend_spooled().await {
                tracing::debug!(%error, "re-sending the spool failed; trying again later");
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
        }
    }

    /// What the spool holds, if there is one.
    pub fn spool_status(&self) -> Result<Option<SpoolStatus>, ProduceError> {
        let Some(state) = &self.spool else { return Ok(None) };
        let mut spool = state.lock();
        let oldest = spool.peek(1)?.first().map(|(m, _)| m.spooled_at_ms);
        Ok(Some(SpoolStatus {
            pending_bytes: spool.pending_bytes(),
            oldest_spooled_at_ms: oldest,
            spooled_total: state.spooled.load(std::sync::atomic::Ordering::Relaxed),
            resent_total: state.resent.load(std::sync::atomic::Ordering::Relaxed),
        }))
    }

    /// Adds the spool's metrics to `registry`, read from the spool at each scrape:
    /// `event_router_producer_spooled_total`, `…_resent_total`, `…_spool_bytes` and
    /// `…_spool_oldest_age_seconds`. Nothing without a spool.
    pub fn register_spool_metrics(self: &std::sync::Arc<Self>, registry: &prometheus::Registry) -> prometheus::Result<()> {
        if self.spool.is_none() {
            return Ok(());
        }
        registry.register(Box::new(SpoolCollector::new(std::sync::Arc::downgrade(self))?))
    }

    /// The Kafka message `outgoing` becomes on the topic named `topic` (any topic, not only the
    /// service's own); no schema applies unless the caller checks it.
    pub fn build_for_topic_name(&self, topic: &str, outgoing: &Outgoing) -> RawMessage {
        let mut message = self.build("", outgoing);
        message.topic = topic.into();
        message
    }

    /// The Kafka message `outgoing` becomes on topic key `topic_key` (the service's own topic).
    pub fn build(&self, topic_key: &str, outgoing: &Outgoing) -> RawMessage {
        let mut headers = Vec::new();
        match &outgoing.identity {
            IdentityHeader::Document(document) => headers
                .push(Header { key: ByteString::from_static(IDENTITY_HEADER), value: Some(encode_identity(document).into()) }),
            IdentityHeader::Encoded(encoded) => {
                headers.push(Header { key: ByteString::from_static(IDENTITY_HEADER), value: Some(encoded.clone().into()) })
            }
            IdentityHeader::Absent => {}
        }
        let request_id = outgoing.request_id.clone().unwrap_or_else(|| Uuid::new_v4().to_string());
        headers.push(Header { key: ByteString::from_static(REQUEST_ID_HEADER), value: Some(request_id.into()) });
        // A second identity or request id among them is the caller's to answer for: `check`
        // refuses it as the service would (`identity_duplicate`, `request_id_duplicate`).
        headers.extend(
            outgoing
                .extra_headers
                .iter()
                .map(|(key, value)| Header { key: key.as_str().into(), value: Some(Bytes::copy_from_slice(value)) }),
        );
        RawMessage {
            topic: self.topics.name(topic_key).into(),
            partition: -1,
            offset: -1,
            key: outgoing.key.clone().map(Bytes::from),
            payload: Some(Bytes::copy_from_slice(&outgoing.value)),
            headers,
            timestamp_ms: None,
            header_problem: None,
        }
    }

    /// Checks a message for another topic against `schema` (the caller's): its value must be
    /// JSON that the schema accepts. The rejection says where and why, as the service's do.
    pub fn check_with_schema(&self, schema: &jsonschema::Validator, message: &RawMessage) -> Result<(), Rejection> {
        let value: Value = serde_json::from_slice(message.payload.as_deref().unwrap_or_default()).map_err(|e| {
            Rejection::new(envelope::Reason::PayloadNotJson, format!("topic {}: the value is not JSON: {e}", message.topic))
        })?;
        let first = schema.iter_errors(&value).next().map(|error| format!("at `{}`: {error}", error.instance_path()));
        match first {
            None => Ok(()),
            Some(problem) => {
                Err(Rejection::new(envelope::Reason::SchemaViolation, format!("topic {}: {problem}", message.topic)))
            }
        }
    }

    /// Checks the message as the service would; the rejection carries the service's reason code.
    pub fn check(&self, message: &RawMessage) -> Result<(), Rejection> {
        envelope::open(message, &self.validators).result.map(|_| ())
    }

    /// Validates, then sends and waits for the broker's acknowledgement.
    pub async fn send(&self, topic_key: &str, outgoing: &Outgoing) -> Result<Sent, ProduceError> {
        let message = self.build(topic_key, outgoing);
        self.check(&message).map_err(ProduceError::Rejected)?;
        self.send_raw(&message).await
    }

    /// Sends without validating: for tests and demo traffic that must reach the service invalid.
    pub async fn send_raw(&self, message: &RawMessage) -> Result<Sent, ProduceError> {
        let delivery = self
            .publisher
            .publish(
                &message.topic,
                message.key.as_deref(),
                message.payload.as_deref().unwrap_or_default(),
                &header_refs(&message.headers),
            )
            .await?;
        let request_id = envelope::request_id(message).unwrap_or_default();
        Ok(Sent { topic: message.topic.to_string(), request_id, delivery })
    }
}

/// The topic key recorded events go to (`platform.event-router.event-recorded`).
pub const RECORDED_TOPIC_KEY: &str = "event-recorded";

/// Who records: the component and the node it runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordSource {
    pub component: String,
    pub node: String,
}

/// Records catalog events (Pensando's `recorder.Event(...)`) from another service: each goes
/// to event-router's ingest topic, is checked against the catalog there and stored like a
/// handler's own event. Built on an [`EventProducer`], so with a spool nothing is lost while
/// Kafka is away.
pub struct Recorder {
    producer: EventProducer,
    source: RecordSource,
    identity: IdentityHeader,
}

impl Recorder {
    pub fn new(producer: EventProducer, source: RecordSource, identity: IdentityHeader) -> Recorder {
        Recorder { producer, source, identity }
    }

    /// Records `event`, one of the generated catalog types.
    pub async fn record<E: crate::events::CatalogEvent>(&self, event: &E) -> Result<Handed, ProduceError> {
        let properties = serde_json::to_value(event).unwrap_or_default();
        self.record_value(E::NAME, properties, None).await
    }

    /// Records the event `name` with `properties` as JSON (checked by the service, not here:
    /// the CLI's way in).
    pub async fn record_value(&self, name: &str, properties: Value, request_id: Option<String>) -> Result<Handed, ProduceError> {
        // Keyed by what the event is about, so one entity's events stay in order.
        let key = ["host_id", "infra_env_id", "cluster_id"]
            .iter()
            .find_map(|id| properties.get(id).and_then(Value::as_str))
            .map(str::to_owned);
        let payload = serde_json::json!({
            "name": name,
            "properties": properties,
            "source": {"component": self.source.component, "node": self.source.node},
        });
        let outgoing = Outgoing { key, request_id, ..Outgoing::json(&payload, self.identity.clone()) };
        self.producer.send_or_spool(RECORDED_TOPIC_KEY, &outgoing).await
    }
}

/// The spool's metrics, read from the spool when Prometheus gathers.
struct SpoolCollector {
    producer: std::sync::Weak<EventProducer>,
    spooled: prometheus::IntCounter,
    resent: prometheus::IntCounter,
    bytes: prometheus::IntGauge,
    oldest: prometheus::Gauge,
}

impl SpoolCollector {
    fn new(producer: std::sync::Weak<EventProducer>) -> prometheus::Result<SpoolCollector> {
        Ok(SpoolCollector {
            producer,
            spooled: prometheus::IntCounter::new(
                "event_router_producer_spooled_total",
                "Messages spooled because Kafka could not take them.",
            )?,
            resent: prometheus::IntCounter::new(
                "event_router_producer_resent_total",
                "Spooled messages Kafka acknowledged later.",
            )?,
            bytes: prometheus::IntGauge::new(
                "event_router_producer_spool_bytes",
                "Bytes of spooled messages waiting to be sent.",
            )?,
            oldest: prometheus::Gauge::new(
                "event_router_producer_spool_oldest_age_seconds",
                "Age of the oldest spooled message waiting; 0 when none.",
            )?,
        })
    }
}

impl prometheus::core::Collector for SpoolCollector {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        [self.spooled.desc(), self.resent.desc(), self.bytes.desc(), self.oldest.desc()].concat()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        if let Some(Ok(Some(status))) = self.producer.upgrade().map(|p| p.spool_status()) {
            self.spooled.inc_by(status.spooled_total.saturating_sub(self.spooled.get()));
            self.resent.inc_by(status.resent_total.saturating_sub(self.resent.get()));
            self.bytes.set(status.pending_bytes as i64);
            let age =
                status.oldest_spooled_at_ms.map_or(0.0, |ms| (chrono::Utc::now().timestamp_millis() - ms).max(0) as f64 / 1000.0);
            self.oldest.set(age);
        }
        [self.spooled.collect(), self.resent.collect(), self.bytes.collect(), self.oldest.collect()].concat()
    }
}
