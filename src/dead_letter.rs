//! Dead letters: a rejected message goes to the dead-letter topic with its original key, value and
//! headers, plus headers that say where it came from and why it was rejected.
//!
//! Header names follow the spirit of Kafka Connect's `__connect.errors.*` and Spring Kafka's
//! `kafka_dlt-*`: enough to find the original message and to re-inject it after a fix.

use crate::envelope::Rejection;
use crate::kafka::{record_size, MAX_RECORD_BYTES};
use crate::message::{header_refs, ByteString, Header, RawMessage};

pub const ORIGINAL_TOPIC: &str = "x-dlq-original-topic";
pub const ORIGINAL_PARTITION: &str = "x-dlq-original-partition";
pub const ORIGINAL_OFFSET: &str = "x-dlq-original-offset";
pub(crate) const ORIGINAL_TIMESTAMP: &str = "x-dlq-original-timestamp";
pub const CONSUMER_GROUP: &str = "x-dlq-consumer-group";
pub const STAGE: &str = "x-dlq-stage";
pub const REASON: &str = "x-dlq-reason";
pub const ERROR_CLASS: &str = "x-dlq-error-class";
pub const MESSAGE: &str = "x-dlq-message";
pub const ATTEMPTS: &str = "x-dlq-attempts";
/// On a copy too large to send whole: which parts were left out (`value`, `headers`, `key`,
/// comma separated). The `dead_letters` table keeps the key and value in full.
pub const OMITTED: &str = "x-dlq-omitted";

/// What is published to the dead-letter topic for one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copy<'a> {
    pub key: Option<&'a [u8]>,
    pub value: &'a [u8],
    pub headers: Vec<Header>,
}

/// The dead-letter copy of `message`, made to fit in a Kafka record. The rule, in order, until
/// it fits: the whole message; the value left out; the original headers left out too (the
/// dead-letter headers and the request id stay); the key left out too. [`OMITTED`] names what
/// was left out. The `dead_letters` table row keeps the key and the value in full, and `replay`
/// takes them from there.
pub fn copy<'a>(message: &'a RawMessage, rejection: &Rejection, group_id: &str) -> Copy<'a> {
    let full = dead_letter_headers(message, rejection, group_id);
    let value = message.payload.as_deref().unwrap_or_default();
    let key = message.key.as_deref();
    let fits =
        |key: Option<&[u8]>, value: &[u8], headers: &[Header]| record_size(key, value, &header_refs(headers)) <= MAX_RECORD_BYTES;
    if fits(key, value, &full) {
        return Copy { key, value, headers: full };
    }
    let mut omitted = vec!["value"];
    let with_omitted = |mut headers: Vec<Header>, omitted: &[&str]| {
        headers.push(Header { key: ByteString::from_static(OMITTED), value: Some(omitted.join(",").into()) });
        headers
    };
    let headers = with_omitted(full.clone(), &omitted);
    if fits(key, &[], &headers) {
        return Copy { key, value: &[], headers };
    }
    omitted.push("headers");
    let context: Vec<Header> = full
        .into_iter()
        .filter(|h| {
            let name = h.key.to_ascii_lowercase();
            name.starts_with("x-dlq-") || name == crate::envelope::REQUEST_ID_HEADER
        })
        .collect();
    let headers = with_omitted(context.clone(), &omitted);
    if fits(key, &[], &headers) {
        return Copy { key, value: &[], headers };
    }
    omitted.push("key");
    Copy { key: None, value: &[], headers: with_omitted(context, &omitted) }
}

/// The original headers followed by the dead-letter headers. Any `x-dlq-*` header the message
/// already had (a message dead-lettered twice) is replaced, not duplicated.
pub(crate) fn dead_letter_headers(message: &RawMessage, rejection: &Rejection, group_id: &str) -> Vec<Header> {
    let mut headers: Vec<Header> =
        message.headers.iter().filter(|h| !crate::message::is_dead_letter_header(&h.key)).cloned().collect();
    let mut add =
        |key: &'static str, value: String| headers.push(Header { key: ByteString::from_static(key), value: Some(value.into()) });
    add(ORIGINAL_TOPIC, message.topic.to_string());
    add(ORIGINAL_PARTITION, message.partition.to_string());
    add(ORIGINAL_OFFSET, message.offset.to_string());
    if let Some(timestamp) = message.timestamp_ms {
        add(ORIGINAL_TIMESTAMP, timestamp.to_string());
    }
    add(CONSUMER_GROUP, group_id.to_string());
    add(STAGE, rejection.stage().as_str().to_string());
    add(REASON, rejection.reason.code().to_string());
    add(ERROR_CLASS, rejection.class.as_str().to_string());
    add(ATTEMPTS, rejection.attempts.to_string());
    add(MESSAGE, rejection.message.clone());
    headers
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Reason;
    use crate::message::Bytes;

    #[test]
    fn keeps_original_headers_and_replaces_old_dead_letter_headers() {
        let message = RawMessage {
            topic: "t".into(),
            partition: 3,
            offset: 42,
            key: None,
            payload: None,
            headers: vec![
                Header { key: "x-rh-insights-request-id".into(), value: Some(Bytes::from_static(b"r")) },
                Header { key: "X-DLQ-Reason".into(), value: Some(Bytes::from_static(b"old")) },
            ],
            timestamp_ms: Some(1_700_000_000_000),
            header_problem: None,
        };
        let headers = dead_letter_headers(&message, &Rejection::new(Reason::PayloadNotJson, "bad"), "g");
        let get = |k: &str| {
            headers.iter().find(|h| h.key == k).and_then(|h| h.value.clone()).map(|v| String::from_utf8(v.to_vec()).unwrap())
        };
        assert_eq!(get("x-rh-insights-request-id").as_deref(), Some("r"));
        assert_eq!(get(REASON).as_deref(), Some("payload_not_json"));
        assert_eq!(get(STAGE).as_deref(), Some("payload"));
        assert_eq!(get(ORIGINAL_OFFSET).as_deref(), Some("42"));
        assert_eq!(get(ORIGINAL_TIMESTAMP).as_deref(), Some("1700000000000"));
        assert!(get("X-DLQ-Reason").is_none());
    }

    fn message_of(key: usize, value: usize, headers: usize) -> RawMessage {
        RawMessage {
            topic: "t".into(),
            partition: 0,
            offset: 1,
            key: Some(Bytes::from(vec![b'k'; key])),
            payload: Some(Bytes::from(vec![b'v'; value])),
            headers: (0..headers)
                .map(|i| Header { key: format!("h{i}").into(), value: Some(Bytes::from(vec![b'x'; 1000])) })
                .chain([Header { key: "x-rh-insights-request-id".into(), value: Some(Bytes::from_static(b"req")) }])
                .collect(),
            timestamp_ms: None,
            header_problem: None,
        }
    }

    #[test]
    fn a_copy_always_fits_in_a_record_and_says_what_it_left_out() {
        let rejection = Rejection::new(Reason::PayloadTooLarge, "big");
        let omitted = |copy: &Copy| {
            copy.headers.iter().find(|h| h.key == OMITTED).map(|h| String::from_utf8(h.value.clone().unwrap().to_vec()).unwrap())
        };
        let cases = [
            (message_of(10, 1000, 2), None, true),
            (message_of(10, MAX_RECORD_BYTES, 2), Some("value"), true),
            (message_of(10, MAX_RECORD_BYTES, 1000), Some("value,headers"), true),
            (message_of(MAX_RECORD_BYTES, MAX_RECORD_BYTES, 2), Some("value,headers,key"), false),
        ];
        for (message, expected, key_kept) in cases {
            let copy = copy(&message, &rejection, "g");
            assert!(record_size(copy.key, copy.value, &header_refs(&copy.headers)) <= MAX_RECORD_BYTES);
            assert_eq!(omitted(&copy).as_deref(), expected);
            assert_eq!(copy.key.is_some(), key_kept);
            assert!(copy.headers.iter().any(|h| h.key == REASON), "the reason always travels");
            assert!(copy.headers.iter().any(|h| h.key == "x-rh-insights-request-id"), "so does the request id");
        }
    }
}
