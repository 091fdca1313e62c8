//! A consumed Kafka message as the rest of the service sees it: owned bytes, no rdkafka types.
//!
//! Copying out of librdkafka's buffer once, at the consumer, lets every later step (validation,
//! handling, dead-lettering) be plain Rust that tests can build by hand.

use rdkafka::message::{Headers, Message};

/// One Kafka header; the value may be absent (a null header).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub key: String,
    pub value: Option<Vec<u8>>,
}

/// `headers` borrowed, as [`crate::kafka::Publisher`] takes them.
pub fn header_refs(headers: &[Header]) -> Vec<HeaderRef<'_>> {
    headers.iter().map(|h| HeaderRef { key: &h.key, value: h.value.as_deref() }).collect()
}

/// A header borrowed from where it is kept (a [`Header`], an outbox row). Serialized into the
/// outbox with its value as bytes, whatever they are, in the encoding the previous release wrote
/// with owned headers (the outbox's tests hold it to that).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HeaderRef<'a> {
    pub key: &'a str,
    #[serde(borrow, with = "serde_bytes")]
    pub value: Option<&'a [u8]>,
}

/// A message read from a topic partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawMessage {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<Header>,
    /// Milliseconds since the epoch, when the broker or producer gave one.
    pub timestamp_ms: Option<i64>,
}

impl RawMessage {
    /// Copies a message out of librdkafka.
    pub fn from_kafka<M: Message>(message: &M) -> Self {
        let headers = message
            .headers()
            .map(|headers| {
                headers.iter().map(|h| Header { key: h.key.to_string(), value: h.value.map(<[u8]>::to_vec) }).collect()
            })
            .unwrap_or_default();
        RawMessage {
            topic: message.topic().to_string(),
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec),
            headers,
            timestamp_ms: message.timestamp().to_millis(),
        }
    }

    /// A digest of what Kafka stores immutably for a record (key, value, timestamp). A redelivery
    /// has the same fingerprint; a different record at the same coordinates means the topic was
    /// deleted and recreated (or the broker lost its log) and offsets are being reused.
    pub fn fingerprint(&self) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        let mut hasher = Sha256::new();
        for part in [self.key.as_deref(), self.payload.as_deref()] {
            match part {
                Some(bytes) => {
                    hasher.update([1]);
                    hasher.update((bytes.len() as u64).to_be_bytes());
                    hasher.update(bytes);
                }
                None => hasher.update([0]),
            }
        }
        hasher.update(self.timestamp_ms.unwrap_or(-1).to_be_bytes());
        hasher.finalize().into()
    }

    /// The first header whose name matches `name` ignoring ASCII case: producers differ
    /// (`X-Rh-Identity` vs `x-rh-identity`) and Kafka header keys are case-sensitive.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.iter().find(|h| h.key.eq_ignore_ascii_case(name)).and_then(|h| h.value.as_deref())
    }

    /// The key as text, for logs and stored rows; non-UTF-8 keys are shown lossily.
    pub fn key_text(&self) -> Option<String> {
        self.key.as_deref().map(|k| String::from_utf8_lossy(k).into_owned())
    }
}
