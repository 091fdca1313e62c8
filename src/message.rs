//! A consumed Kafka message as the rest of the service sees it: owned bytes, no rdkafka types.
//!
//! Copying out of librdkafka's buffer once, at the consumer, lets every later step (validation,
//! handling, dead-lettering) be plain Rust that tests can build by hand. The copy is one
//! allocation: key, value and every header's name and value go into one buffer, and the message's
//! fields are shared slices of it ([`Bytes`], [`ByteString`]). A field per allocation made copying
//! a message out about a fifth of the service's heap allocations (bench/README.md, section 27).
//! Nothing keeps such a slice past the message's own life, so the buffer goes with the message;
//! what outlives it (rows, the outbox, the identity cache) is copied or digested.
//!
//! The topic's name is shared, not copied: a consumer reads a handful of topics, and the message,
//! its partition's worker, its handler's context and its inbox key each held a copy of the name
//! (four allocations a message; bench/README.md, section 28). [`TopicNames`] hands out one
//! shared name per topic.

use std::collections::HashSet;
use std::sync::Arc;

pub use bytes::Bytes;
pub use bytestring::ByteString;
use rdkafka::message::{BorrowedMessage, Message};

/// One Kafka header; the value may be absent (a null header).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub key: ByteString,
    pub value: Option<Bytes>,
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

/// The names of the topics a consumer has read, each kept once and shared by every message of
/// its topic.
#[derive(Debug, Default)]
pub struct TopicNames(HashSet<Arc<str>>);

impl TopicNames {
    /// The shared name `topic`; allocated the first time only.
    pub fn get(&mut self, topic: &str) -> Arc<str> {
        if let Some(name) = self.0.get(topic) {
            return name.clone();
        }
        let name: Arc<str> = Arc::from(topic);
        self.0.insert(name.clone());
        name
    }
}

/// A message read from a topic partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawMessage {
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Bytes>,
    pub payload: Option<Bytes>,
    pub headers: Vec<Header>,
    /// Milliseconds since the epoch, when the broker or producer gave one.
    pub timestamp_ms: Option<i64>,
    /// What was wrong with the record's headers as read; the envelope rejects the message for it.
    pub header_problem: Option<HeaderProblem>,
}

/// Bounds on a record's headers, checked before any of them is copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderLimits {
    pub max_count: usize,
    /// Names and values together.
    pub max_bytes: usize,
}

impl HeaderLimits {
    /// What the service accepts: the platform's messages carry a handful of headers of a few
    /// kilobytes (the identity is the largest); thousands of headers are an attack or a bug.
    pub(crate) const SERVICE: HeaderLimits = HeaderLimits { max_count: 64, max_bytes: 64 * 1024 };
    /// For tools that read the service's own output topics (replay, tests): no practical bound.
    pub const UNBOUNDED: HeaderLimits = HeaderLimits { max_count: usize::MAX, max_bytes: usize::MAX };
}

/// Why a record's headers could not be taken as they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderProblem {
    /// More headers than [`HeaderLimits::max_count`]; none were copied.
    TooMany { count: usize },
    /// More header bytes than [`HeaderLimits::max_bytes`]; none were copied.
    TooLarge { bytes: usize },
    /// A header name is not UTF-8; it was kept with U+FFFD in place of the bad bytes.
    NameNotUtf8 { index: usize },
}

impl RawMessage {
    /// Copies a message out of librdkafka. Headers are read as bytes (a name that is not UTF-8
    /// becomes a [`HeaderProblem`], not a panic) and measured before they are copied. The topic's
    /// name comes from `names`.
    pub fn from_kafka(message: &BorrowedMessage<'_>, limits: HeaderLimits, names: &mut TopicNames) -> Self {
        let raw = raw_headers::headers(message);
        let (key, payload) = (message.key(), message.payload());
        let mut header_problem = None;
        let mut header_bytes = 0;
        if raw.len() > limits.max_count {
            header_problem = Some(HeaderProblem::TooMany { count: raw.len() });
        } else {
            header_bytes = raw.iter().map(|h| h.name.len() + h.value.map_or(0, <[u8]>::len)).sum();
            if header_bytes > limits.max_bytes {
                header_problem = Some(HeaderProblem::TooLarge { bytes: header_bytes });
                header_bytes = 0;
            }
        }
        // One buffer for everything, in the order sliced below.
        let mut buffer =
            bytes::BytesMut::with_capacity(key.map_or(0, <[u8]>::len) + payload.map_or(0, <[u8]>::len) + header_bytes);
        let mut take = |part: &[u8]| {
            buffer.extend_from_slice(part);
            buffer.split().freeze()
        };
        let key = key.map(&mut take);
        let payload = payload.map(&mut take);
        let mut headers = Vec::new();
        if header_problem.is_none() {
            headers.reserve(raw.len());
            for (index, h) in raw.iter().enumerate() {
                let key = ByteString::try_from(take(h.name)).unwrap_or_else(|_| {
                    header_problem.get_or_insert(HeaderProblem::NameNotUtf8 { index });
                    String::from_utf8_lossy(h.name).into_owned().into()
                });
                headers.push(Header { key, value: h.value.map(&mut take) });
            }
        }
        RawMessage {
            topic: names.get(message.topic()),
            partition: message.partition(),
            offset: message.offset(),
            key,
            payload,
            headers,
            timestamp_ms: message.timestamp().to_millis(),
            header_problem,
        }
    }

    /// The bytes this message holds in memory once copied (key, value, headers).
    pub fn size(&self) -> usize {
        self.key.as_ref().map_or(0, Bytes::len)
            + self.payload.as_ref().map_or(0, Bytes::len)
            + self.headers.iter().map(|h| h.key.len() + h.value.as_ref().map_or(0, Bytes::len)).sum::<usize>()
    }

    /// Digests of what Kafka stores immutably for a record (see [`Fingerprints`]). A redelivery
    /// has the same; a different record at the same coordinates means the topic was deleted and
    /// recreated (or the broker lost its log) and offsets are being reused.
    pub fn fingerprints(&self) -> Fingerprints {
        fingerprints(self.key.as_deref(), self.payload.as_deref(), self.timestamp_ms, &self.headers)
    }

    /// The first header whose name matches `name` ignoring ASCII case: producers differ
    /// (`X-Rh-Identity` vs `x-rh-identity`) and Kafka header keys are case-sensitive.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.iter().find(|h| h.key.eq_ignore_ascii_case(name)).and_then(|h| h.value.as_deref())
    }

    /// How many headers are named `name`, ignoring ASCII case. More than one makes a message
    /// ambiguous: which identity, which request?
    pub(crate) fn header_count(&self, name: &str) -> usize {
        self.headers.iter().filter(|h| h.key.eq_ignore_ascii_case(name)).count()
    }

    /// The key as text, for logs and stored rows; non-UTF-8 keys are shown lossily.
    pub(crate) fn key_text(&self) -> Option<String> {
        self.key.as_deref().map(|k| String::from_utf8_lossy(k).into_owned())
    }
}

/// Headers the service itself adds to copies of a record (`x-dlq-*` on a dead letter, the
/// replay header on a re-injected one): not part of what the record is, so a replayed dead letter
/// has its original's fingerprint.
fn added_by_the_service(name: &str) -> bool {
    is_dead_letter_header(name) || name.eq_ignore_ascii_case(REPLAY_OF)
}

/// Whether `name` is one of the `x-dlq-*` headers a dead letter carries, in any case.
pub(crate) fn is_dead_letter_header(name: &str) -> bool {
    name.get(..6).is_some_and(|prefix| prefix.eq_ignore_ascii_case("x-dlq-"))
}

/// Header on a re-injected dead letter: `<topic>/<partition>/<offset>` of the original.
pub const REPLAY_OF: &str = "x-event-router-replay-of";

/// What identifies a record's content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprints {
    /// SHA-256 of key, value, timestamp and headers (but not the `x-dlq-*` and replay headers the
    /// service adds to copies).
    pub current: [u8; 32],
    /// The same without the headers: what releases before headers counted stored. Rows they
    /// wrote are still recognised (a redelivery across an upgrade is still a redelivery); it
    /// costs one more digest finalisation, not a second pass over the record.
    pub legacy: [u8; 32],
}

/// [`RawMessage::fingerprints`] of a record with this key, value, timestamp and headers.
pub fn fingerprints(key: Option<&[u8]>, payload: Option<&[u8]>, timestamp_ms: Option<i64>, headers: &[Header]) -> Fingerprints {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    for part in [key, payload] {
        match part {
            Some(bytes) => {
                hasher.update([1]);
                hasher.update((bytes.len() as u64).to_be_bytes());
                hasher.update(bytes);
            }
            None => hasher.update([0]),
        }
    }
    hasher.update(timestamp_ms.unwrap_or(-1).to_be_bytes());
    let legacy = hasher.clone().finalize().into();
    for header in headers.iter().filter(|h| !added_by_the_service(&h.key)) {
        hasher.update([2]);
        hasher.update((header.key.len() as u64).to_be_bytes());
        hasher.update(header.key.as_bytes());
        match &header.value {
            Some(value) => {
                hasher.update([1]);
                hasher.update((value.len() as u64).to_be_bytes());
                hasher.update(value);
            }
            None => hasher.update([0]),
        }
    }
    Fingerprints { current: hasher.finalize().into(), legacy }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(key: &str, value: &[u8]) -> Header {
        Header { key: key.into(), value: Some(Bytes::copy_from_slice(value)) }
    }

    #[test]
    fn headers_count_except_those_the_service_adds_to_copies() {
        let base = fingerprints(Some(b"k"), Some(b"v"), Some(1), &[header("x-rh-identity", b"a")]);
        let other_identity = fingerprints(Some(b"k"), Some(b"v"), Some(1), &[header("x-rh-identity", b"b")]);
        assert_ne!(base.current, other_identity.current, "a record with other headers is another record");
        assert_eq!(base.legacy, other_identity.legacy, "the legacy digest ignores headers, as releases before did");
        let copy = fingerprints(
            Some(b"k"),
            Some(b"v"),
            Some(1),
            &[header("x-rh-identity", b"a"), header("X-DLQ-Reason", b"r"), header(REPLAY_OF, b"t/0/1")],
        );
        assert_eq!(base, copy, "dead-letter and replay headers are not part of the record");
        let null_value = fingerprints(Some(b"k"), Some(b"v"), Some(1), &[Header { key: "x-rh-identity".into(), value: None }]);
        let empty_value = fingerprints(Some(b"k"), Some(b"v"), Some(1), &[header("x-rh-identity", b"")]);
        assert_ne!(null_value.current, empty_value.current);
    }
}
