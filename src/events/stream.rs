//! A catalog event as it goes to the stream topic.
//!
//! The seed's envelope: `{"name", "payload": {"message", <properties>, "severity", <entity ids>},
//! "metadata": {"kind": "event", "versions", "event_id", "event_time", "org_id", "request_id",
//! "source"}}`, keyed by the id the event is most specifically about (host, infra-env, cluster),
//! with the identity and request-id headers of the message that caused it. A consumer of the
//! stream tells the two kinds of record apart by `metadata.kind`: `"event"` here, `"message"` for
//! an enriched routed message (`crate::stream`), whose `name` is a topic's type name.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::{Map, Value};

use super::{catalog::CATALOG_DIGEST, Emitted};

/// The value `metadata.kind` has on a catalog event.
pub const KIND: &str = "event";

#[derive(Serialize)]
struct Envelope<'a> {
    name: &'a str,
    payload: Value,
    metadata: Metadata<'a>,
}

#[derive(Serialize)]
struct Metadata<'a> {
    kind: &'static str,
    versions: Versions,
    event_id: i64,
    event_time: String,
    org_id: Option<&'a str>,
    request_id: &'a str,
    source: Source<'a>,
}

#[derive(Serialize)]
struct Versions {
    #[serde(rename = "event-router")]
    event_router: &'static str,
    catalog: &'static str,
}

#[derive(Serialize)]
struct Source<'a> {
    topic: &'a str,
    partition: i32,
    offset: i64,
}

/// Where the message that caused an event came from, and who sent it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Cause<'a> {
    pub(crate) topic: &'a str,
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    pub(crate) org_id: Option<&'a str>,
    pub(crate) request_id: &'a str,
}

/// The event's `payload` in the seed's shape: its properties, the message, the severity and the
/// entity ids. Shared by the stream and the writers (hooks get the same document).
pub(crate) fn payload(properties: &Value, message: &str, severity: &str, entity: super::Entity) -> Value {
    let mut payload = match properties {
        Value::Object(properties) => properties.clone(),
        _ => Map::new(),
    };
    payload.insert("message".into(), Value::String(message.to_owned()));
    payload.insert("severity".into(), Value::String(severity.to_owned()));
    for (name, id) in [("cluster_id", entity.cluster_id), ("host_id", entity.host_id), ("infra_env_id", entity.infra_env_id)] {
        if let Some(id) = id {
            payload.insert(name.into(), Value::String(id.to_string()));
        }
    }
    Value::Object(payload)
}

/// The stream record's value for the new event `id`.
pub(crate) fn render(event: &Emitted, id: i64, event_time: DateTime<Utc>, cause: &Cause<'_>) -> Vec<u8> {
    let payload = payload(&event.properties, &event.message, event.severity.as_str(), event.entity);
    let envelope = Envelope {
        name: event.name,
        payload,
        metadata: Metadata {
            kind: KIND,
            versions: Versions { event_router: env!("CARGO_PKG_VERSION"), catalog: CATALOG_DIGEST },
            event_id: id,
            event_time: event_time.to_rfc3339_opts(SecondsFormat::Millis, true),
            org_id: cause.org_id,
            request_id: cause.request_id,
            source: Source { topic: cause.topic, partition: cause.partition, offset: cause.offset },
        },
    };
    serde_json::to_vec(&envelope).unwrap_or_default()
}
