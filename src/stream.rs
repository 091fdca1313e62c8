//! The enriched event re-published to the stream topic after a message is handled.
//!
//! Shape: `{"name", "payload", "metadata": {"versions", "source", "org_id", "request_id",
//! "received_at", "schema"}}`, keyed by the source message's key, carrying the source's
//! `x-rh-identity` and `x-rh-insights-request-id` headers unchanged so that downstream services
//! see the same identity and can follow the request.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};

use crate::envelope::{Checked, IDENTITY_HEADER, REQUEST_ID_HEADER};
use crate::message::{Header, RawMessage};

/// The stream event for a handled message.
pub fn enriched_event(checked: &Checked, source: &RawMessage, received_at: DateTime<Utc>) -> Value {
    json!({
        "name": checked.schema.name,
        "payload": checked.payload,
        "metadata": {
            "versions": {
                "event-router": env!("CARGO_PKG_VERSION"),
                "schema": checked.schema.digest,
            },
            "source": {
                "topic": source.topic,
                "partition": source.partition,
                "offset": source.offset,
                "key": source.key_text(),
            },
            "org_id": checked.identity.org_id,
            "request_id": checked.request_id,
            "received_at": received_at.to_rfc3339_opts(SecondsFormat::Millis, true),
            "schema": checked.schema.file,
        }
    })
}

/// The headers a stream event carries: the source's identity and request id.
pub fn propagated_headers(source: &RawMessage, request_id: &str) -> Vec<Header> {
    let mut headers = Vec::with_capacity(2);
    if let Some(identity) = source.header(IDENTITY_HEADER) {
        headers.push(Header { key: IDENTITY_HEADER.into(), value: Some(identity.to_vec()) });
    }
    headers.push(Header { key: REQUEST_ID_HEADER.into(), value: Some(request_id.as_bytes().to_vec()) });
    headers
}
