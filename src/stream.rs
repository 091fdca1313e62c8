//! The enriched event re-published to the stream topic after a message is handled.
//!
//! Shape: `{"name", "payload", "metadata": {"versions", "source", "org_id", "request_id",
//! "received_at", "schema"}}`, keyed by the source message's key, carrying the source's
//! `x-rh-identity` and `x-rh-insights-request-id` headers unchanged so that downstream services
//! see the same identity and can follow the request.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::Value;

use crate::envelope::{Checked, IDENTITY_HEADER, REQUEST_ID_HEADER};
use crate::message::{Header, RawMessage};

// Borrowed views serialized straight to text: building a `serde_json::Value` first copied every
// payload tree once more per message, which the profile showed (bench/README.md).
#[derive(Serialize)]
struct Event<'a> {
    name: &'a str,
    payload: &'a Value,
    metadata: Metadata<'a>,
}

#[derive(Serialize)]
struct Metadata<'a> {
    versions: Versions<'a>,
    source: Source<'a>,
    org_id: Option<&'a str>,
    request_id: &'a str,
    received_at: String,
    schema: &'a str,
}

#[derive(Serialize)]
struct Versions<'a> {
    #[serde(rename = "event-router")]
    event_router: &'a str,
    schema: &'a str,
}

#[derive(Serialize)]
struct Source<'a> {
    topic: &'a str,
    partition: i32,
    offset: i64,
    key: Option<std::borrow::Cow<'a, str>>,
}

/// The stream event for a handled message, as JSON text.
pub fn enriched_event(checked: &Checked, source: &RawMessage, received_at: DateTime<Utc>) -> String {
    let event = Event {
        name: checked.schema.name,
        payload: &checked.payload,
        metadata: Metadata {
            versions: Versions { event_router: env!("CARGO_PKG_VERSION"), schema: checked.schema.digest },
            source: Source {
                topic: &source.topic,
                partition: source.partition,
                offset: source.offset,
                key: source.key.as_deref().map(String::from_utf8_lossy),
            },
            org_id: checked.identity.org_id.as_deref(),
            request_id: &checked.request_id,
            received_at: received_at.to_rfc3339_opts(SecondsFormat::Millis, true),
            schema: checked.schema.file,
        },
    };
    serde_json::to_string(&event).expect("a JSON value and strings always serialize")
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
