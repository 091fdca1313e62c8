//! The enriched event re-published to the stream topic after a message is handled.
//!
//! Shape: `{"name", "payload", "metadata": {"kind": "message", "versions", "source", "org_id",
//! "request_id", "received_at", "schema"}}`, keyed by the source message's key, carrying the
//! source's `x-rh-identity` and `x-rh-insights-request-id` headers unchanged so that downstream
//! services see the same identity and can follow the request. Catalog events share the topic
//! with `"kind": "event"` (see `crate::events::stream`).

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::Value;

use crate::envelope::{Checked, IDENTITY_HEADER, REQUEST_ID_HEADER};
use crate::message::{Bytes, HeaderRef, RawMessage};

/// The value `metadata.kind` has on an enriched routed message.
pub const KIND: &str = "message";

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
    kind: &'static str,
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
    /// Set when `key` was left out for the event to fit in a record (see [`enriched_event`]).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    key_omitted: bool,
}

/// The stream event for a handled message, as JSON bytes; `Err` with the record's size in bytes
/// when the event cannot fit in a record at all.
///
/// The key travels twice: as the record's key, and as text in `metadata.source.key` (JSON-escaped,
/// up to six bytes for a byte of a binary key). When that copy would make the record larger than
/// a record may be, it is left out (`"key": null, "key_omitted": true`): the record's own key is
/// the key. An event too large even then is refused before the message has any effect (see
/// `pipeline::open`). The size is measured once per rendering, with the headers the event carries.
pub fn enriched_event(checked: &Checked, source: &RawMessage, received_at: DateTime<Utc>) -> Result<Vec<u8>, usize> {
    let fits = |event: &[u8]| {
        let size = record_size(source, &checked.request_id, event);
        (size <= crate::kafka::MAX_RECORD_BYTES).then_some(()).ok_or(size)
    };
    let event = render(checked, source, received_at, true);
    match fits(&event) {
        Ok(()) => Ok(event),
        Err(size) if source.key.is_none() => Err(size),
        Err(_) => {
            let event = render(checked, source, received_at, false);
            fits(&event).map(|()| event)
        }
    }
}

fn render(checked: &Checked, source: &RawMessage, received_at: DateTime<Utc>, with_key: bool) -> Vec<u8> {
    let event = Event {
        name: checked.schema.name,
        payload: &checked.payload,
        metadata: Metadata {
            kind: KIND,
            versions: Versions { event_router: env!("CARGO_PKG_VERSION"), schema: checked.schema.digest },
            source: Source {
                topic: &source.topic,
                partition: source.partition,
                offset: source.offset,
                key: source.key.as_deref().filter(|_| with_key).map(String::from_utf8_lossy),
                key_omitted: !with_key,
            },
            org_id: checked.identity.org_id.as_deref(),
            request_id: &checked.request_id,
            received_at: received_at.to_rfc3339_opts(SecondsFormat::Millis, true),
            schema: checked.schema.file,
        },
    };
    // Room for the payload and the metadata up front: grown from serde_json's default instead,
    // a typical event was reallocated three times.
    let mut bytes = Vec::with_capacity(source.payload.as_ref().map_or(0, Bytes::len) + METADATA_BYTES);
    serde_json::to_writer(&mut bytes, &event).expect("a JSON value and strings always serialize");
    bytes
}

/// About what an event adds to its payload (names, metadata, the schema's digest).
const METADATA_BYTES: usize = 512;

/// [`crate::kafka::record_size`] of the stream event `event` for `source`, with the headers of
/// [`propagated_headers`] counted in place (this runs for every message).
pub fn record_size(source: &RawMessage, request_id: &str, event: &[u8]) -> usize {
    let identity = source.header(IDENTITY_HEADER).map_or(0, |value| IDENTITY_HEADER.len() + value.len() + 16);
    let request = REQUEST_ID_HEADER.len() + request_id.len() + 16;
    crate::kafka::record_size(source.key.as_deref(), event, &[]) + identity + request
}

/// The headers a stream event carries: the source's identity and request id, borrowed from the
/// source message.
pub fn propagated_headers<'a>(source: &'a RawMessage, request_id: &'a str) -> Vec<HeaderRef<'a>> {
    let mut headers = Vec::with_capacity(2);
    if let Some(identity) = source.header(IDENTITY_HEADER) {
        headers.push(HeaderRef { key: IDENTITY_HEADER, value: Some(identity) });
    }
    headers.push(HeaderRef { key: REQUEST_ID_HEADER, value: Some(request_id.as_bytes()) });
    headers
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Header;

    #[test]
    fn the_counted_size_is_that_of_the_record_as_published() {
        let source = RawMessage {
            topic: "t".into(),
            partition: 0,
            offset: 0,
            key: Some(Bytes::from_static(b"key")),
            payload: None,
            headers: vec![
                Header { key: "X-Rh-Identity".into(), value: Some(Bytes::from(vec![b'i'; 300])) },
                Header { key: "other".into(), value: Some(Bytes::from(vec![b'o'; 50])) },
            ],
            timestamp_ms: None,
            header_problem: None,
        };
        let event = vec![b'e'; 1000];
        assert_eq!(
            record_size(&source, "request", &event),
            crate::kafka::record_size(source.key.as_deref(), &event, &propagated_headers(&source, "request"))
        );
    }
}
