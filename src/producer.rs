//! The producer library: validate a message exactly as the service will, then send it with the
//! identity and request-id headers set.
//!
//! Validation reuses the service's own envelope step on the message as it would arrive, so a
//! producer learns before sending the same reason code the service would dead-letter it with.

use serde_json::Value;
use uuid::Uuid;

use crate::config::{KafkaConfig, TopicConfig};
use crate::envelope::validate::SchemaError;
use crate::envelope::{self, identity::encode_identity, Rejection, Validators, IDENTITY_HEADER, REQUEST_ID_HEADER};
use crate::kafka::{Delivery, Publisher};
use crate::message::{header_refs, Header, RawMessage};

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
}

impl Outgoing {
    pub fn json(payload: &Value, identity: IdentityHeader) -> Self {
        Outgoing { key: None, value: payload.to_string().into_bytes(), identity, request_id: None }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    #[error("rejected before sending: {0}")]
    Rejected(Rejection),
    #[error("Kafka did not accept the message: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
}

/// Why an [`EventProducer`] could not be created.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
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
}

impl EventProducer {
    pub fn new(kafka: &KafkaConfig, topics: &TopicConfig) -> Result<Self, SetupError> {
        Ok(EventProducer { publisher: Publisher::new(kafka)?, validators: Validators::compile(topics)?, topics: topics.clone() })
    }

    /// The Kafka message `outgoing` becomes on topic key `topic_key`.
    pub fn build(&self, topic_key: &str, outgoing: &Outgoing) -> RawMessage {
        let mut headers = Vec::new();
        match &outgoing.identity {
            IdentityHeader::Document(document) => {
                headers.push(Header { key: IDENTITY_HEADER.into(), value: Some(encode_identity(document).into_bytes()) })
            }
            IdentityHeader::Encoded(encoded) => {
                headers.push(Header { key: IDENTITY_HEADER.into(), value: Some(encoded.clone().into_bytes()) })
            }
            IdentityHeader::Absent => {}
        }
        let request_id = outgoing.request_id.clone().unwrap_or_else(|| Uuid::new_v4().to_string());
        headers.push(Header { key: REQUEST_ID_HEADER.into(), value: Some(request_id.into_bytes()) });
        RawMessage {
            topic: self.topics.name(topic_key),
            partition: -1,
            offset: -1,
            key: outgoing.key.clone().map(String::into_bytes),
            payload: Some(outgoing.value.clone()),
            headers,
            timestamp_ms: None,
            header_problem: None,
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
        Ok(Sent { topic: message.topic.clone(), request_id, delivery })
    }
}
