//! Dead letters: a rejected message goes to the dead-letter topic with its original key, value and
//! headers, plus headers that say where it came from and why it was rejected.
//!
//! Header names follow the spirit of Kafka Connect's `__connect.errors.*` and Spring Kafka's
//! `kafka_dlt-*`: enough to find the original message and to re-inject it after a fix.

use crate::envelope::Rejection;
use crate::message::{Header, RawMessage};

pub const ORIGINAL_TOPIC: &str = "x-dlq-original-topic";
pub const ORIGINAL_PARTITION: &str = "x-dlq-original-partition";
pub const ORIGINAL_OFFSET: &str = "x-dlq-original-offset";
pub const ORIGINAL_TIMESTAMP: &str = "x-dlq-original-timestamp";
pub const CONSUMER_GROUP: &str = "x-dlq-consumer-group";
pub const STAGE: &str = "x-dlq-stage";
pub const REASON: &str = "x-dlq-reason";
pub const ERROR_CLASS: &str = "x-dlq-error-class";
pub const MESSAGE: &str = "x-dlq-message";
pub const ATTEMPTS: &str = "x-dlq-attempts";

/// The original headers followed by the dead-letter headers. Any `x-dlq-*` header the message
/// already had (a message dead-lettered twice) is replaced, not duplicated.
pub fn dead_letter_headers(message: &RawMessage, rejection: &Rejection, group_id: &str) -> Vec<Header> {
    let mut headers: Vec<Header> =
        message.headers.iter().filter(|h| !h.key.to_ascii_lowercase().starts_with("x-dlq-")).cloned().collect();
    let mut add = |key: &str, value: String| headers.push(Header { key: key.into(), value: Some(value.into_bytes()) });
    add(ORIGINAL_TOPIC, message.topic.clone());
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

    #[test]
    fn keeps_original_headers_and_replaces_old_dead_letter_headers() {
        let message = RawMessage {
            topic: "t".into(),
            partition: 3,
            offset: 42,
            key: None,
            payload: None,
            headers: vec![
                Header { key: "x-rh-insights-request-id".into(), value: Some(b"r".to_vec()) },
                Header { key: "X-DLQ-Reason".into(), value: Some(b"old".to_vec()) },
            ],
            timestamp_ms: Some(1_700_000_000_000),
        };
        let headers = dead_letter_headers(&message, &Rejection::new(Reason::PayloadNotJson, "bad"), "g");
        let get =
            |k: &str| headers.iter().find(|h| h.key == k).and_then(|h| h.value.clone()).map(|v| String::from_utf8(v).unwrap());
        assert_eq!(get("x-rh-insights-request-id").as_deref(), Some("r"));
        assert_eq!(get(REASON).as_deref(), Some("payload_not_json"));
        assert_eq!(get(STAGE).as_deref(), Some("payload"));
        assert_eq!(get(ORIGINAL_OFFSET).as_deref(), Some("42"));
        assert_eq!(get(ORIGINAL_TIMESTAMP).as_deref(), Some("1700000000000"));
        assert!(get("X-DLQ-Reason").is_none());
    }
}
