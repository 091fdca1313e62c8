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
use serde_json::Value;

use super::{catalog::CATALOG_DIGEST, Emitted};

/// The value `metadata.kind` has on a catalog event.
pub const KIND: &str = "event";

#[derive(Serialize)]
struct Envelope<'a> {
    name: &'a str,
    payload: Payload<'a>,
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
/// entity ids, keys in order as a JSON object of them would have them. Serialized from borrowed
/// parts: building it as a tree copied every property of every event (a tenth of the service's
/// allocations, bench/README.md, 18.).
struct Payload<'a> {
    properties: &'a Value,
    message: &'a str,
    severity: &'a str,
    entity: super::Entity,
}

impl Serialize for Payload<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        enum Field<'a> {
            Value(&'a Value),
            Text(&'a str),
            Id(uuid::Uuid),
        }
        let ids = [
            ("cluster_id", self.entity.cluster_id),
            ("host_id", self.entity.host_id),
            ("infra_env_id", self.entity.infra_env_id),
        ];
        let ids = ids.iter().filter_map(|(name, id)| Some((*name, Field::Id((*id)?))));
        let added = [("message", Field::Text(self.message)), ("severity", Field::Text(self.severity))].into_iter().chain(ids);
        let mut fields: Vec<(&str, Field<'_>)> = Vec::with_capacity(16);
        fields.extend(added);
        let added_count = fields.len();
        if let Value::Object(properties) = self.properties {
            for (name, value) in properties {
                // A property of the same name as an added field is replaced by it.
                if !fields[..added_count].iter().any(|(added, _)| added == name) {
                    fields.push((name, Field::Value(value)));
                }
            }
        }
        fields.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let mut map = serializer.serialize_map(Some(fields.len()))?;
        for (name, field) in &fields {
            match field {
                Field::Value(value) => map.serialize_entry(name, value)?,
                Field::Text(text) => map.serialize_entry(name, text)?,
                Field::Id(id) => map.serialize_entry(name, id.hyphenated().encode_lower(&mut uuid::Uuid::encode_buffer()))?,
            }
        }
        map.end()
    }
}

/// [`Payload`] as a JSON value, for the writers (hooks get the same document as the stream).
pub(crate) fn payload(properties: &Value, message: &str, severity: &str, entity: super::Entity) -> Value {
    serde_json::to_value(Payload { properties, message, severity, entity }).unwrap_or_default()
}

/// The stream record's value for the new event `id`.
pub(crate) fn render(event: &Emitted, id: i64, event_time: DateTime<Utc>, cause: &Cause<'_>) -> Vec<u8> {
    let payload = Payload {
        properties: &event.properties,
        message: &event.message,
        severity: event.severity.as_str(),
        entity: event.entity,
    };
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
    // Sized for a typical event, so the text is not grown several times over.
    let mut record = Vec::with_capacity(1024);
    match serde_json::to_writer(&mut record, &envelope) {
        Ok(()) => record,
        Err(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Entity;
    use uuid::Uuid;

    #[test]
    fn the_payload_has_the_properties_and_the_added_fields_in_key_order() {
        let (host, infra_env) = (Uuid::from_u128(7), Uuid::from_u128(8));
        let properties = serde_json::json!({
            "zeta": 1, "alpha": "a", "host_id": "a stale copy", "cluster_id": null, "message": "replaced",
            "nested": {"b": [1, 2], "a": true},
        });
        let entity = Entity { cluster_id: None, host_id: Some(host), infra_env_id: Some(infra_env) };
        let text =
            serde_json::to_string(&Payload { properties: &properties, message: "Host up", severity: "info", entity }).unwrap();
        let expected = serde_json::json!({
            "alpha": "a", "cluster_id": null, "host_id": host.to_string(), "infra_env_id": infra_env.to_string(),
            "message": "Host up", "nested": {"a": true, "b": [1, 2]}, "severity": "info", "zeta": 1,
        });
        // Byte for byte what a JSON object of the same fields serializes to: keys sorted, each once.
        assert_eq!(text, serde_json::to_string(&expected).unwrap());
        assert_eq!(payload(&properties, "Host up", "info", entity), expected);
    }
}
