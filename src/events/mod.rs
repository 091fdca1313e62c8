//! Events: what happened to a cluster, a host or an infra-env, in words a person reads.
//!
//! A routed message is data for machines; an event is its human-readable consequence, with a
//! severity, kept so that a reader can follow how a resource reached its state. Every event is
//! declared in `api/events.yaml` and generated into a type of [`catalog`] at build time, so a
//! handler can only emit events that exist, with every property they need, and readers get the
//! catalog's wording.
//!
//! A handler emits through its context ([`Context::emit`](crate::router::Context::emit)); the
//! pipeline writes what was emitted in the handler's own transaction ([`record`]), so an event
//! exists exactly when the handler's rows do: a redelivered message emits nothing (its handler
//! does not run again) and a rolled-back batch leaves nothing. The same event seen again within
//! the deduplication window is folded into the first row (`count`, `last_seen`) instead of
//! adding one; each new event also goes to the stream through the outbox ([`stream`]).
//!
//! The compiler holds handlers to the catalog. This emits a catalog event:
//!
//! ```
//! use event_router::events::catalog::ClusterInstallCompleted;
//! use event_router::router::Context;
//!
//! fn completed(ctx: &Context, cluster_id: uuid::Uuid) {
//!     ctx.emit(ClusterInstallCompleted { cluster_id, host_count: 3 });
//! }
//! ```
//!
//! An event the catalog does not declare does not compile:
//!
//! ```compile_fail,E0422
//! # use event_router::router::Context;
//! fn rebooted(ctx: &Context, cluster_id: uuid::Uuid) {
//!     ctx.emit(ClusterRebooted { cluster_id });
//! }
//! ```
//!
//! and neither does one without a required property:
//!
//! ```compile_fail,E0063
//! # use event_router::events::catalog::ClusterInstallCompleted;
//! # use event_router::router::Context;
//! fn completed(ctx: &Context, cluster_id: uuid::Uuid) {
//!     ctx.emit(ClusterInstallCompleted { cluster_id });
//! }
//! ```

pub mod catalog;
mod record;
pub mod stream;

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

pub(crate) use record::{record, Pending, Recorded};

/// How bad it is (guidelines in README.md, "Events").
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Warning,
    Error,
    Critical,
}

impl Severity {
    pub const ALL: [Severity; 4] = [Severity::Info, Severity::Warning, Severity::Error, Severity::Critical];

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
            Severity::Critical => "critical",
        }
    }
}

/// What an event is about; it decides which entity ids the event must carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    /// Carries `cluster_id`.
    Cluster,
    /// Carries `host_id` and `infra_env_id`.
    Host,
    /// Carries `infra_env_id`.
    InfraEnv,
}

/// The ids that tie an event to its cluster, host and infra-env.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Entity {
    pub cluster_id: Option<Uuid>,
    pub host_id: Option<Uuid>,
    pub infra_env_id: Option<Uuid>,
}

impl Entity {
    /// The id the event is most specifically about: its stream record's key, so that one
    /// entity's events stay in order on the stream.
    pub fn key(&self) -> Option<Uuid> {
        self.host_id.or(self.infra_env_id).or(self.cluster_id)
    }
}

/// An event of the catalog. Implemented by generated code only: each event of
/// `api/events.yaml` is a struct whose fields are its properties.
pub trait CatalogEvent: Serialize {
    /// The event's name in the catalog, e.g. `host_status_updated`.
    const NAME: &'static str;
    const SEVERITY: Severity;
    const EVENT_TYPE: EventType;

    /// The entity ids among its properties.
    fn entity(&self) -> Entity;

    /// The catalog's message template with the properties filled in.
    fn message(&self) -> String;
}

/// One entry of the generated [`catalog::CATALOG`].
#[derive(Debug, Clone, Copy)]
pub struct EventDefinition {
    pub name: &'static str,
    pub severity: Severity,
    pub event_type: EventType,
    /// The message template, placeholders unfilled.
    pub message: &'static str,
    /// The template taken apart by the build (the one parser of the template grammar).
    pub template: &'static [TemplatePiece],
    pub properties: &'static [PropertyDefinition],
}

/// A piece of a message template: literal text (braces already unescaped) or a placeholder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TemplatePiece {
    Text(&'static str),
    Placeholder(&'static str),
}

impl EventDefinition {
    /// Looks an event up by name.
    pub fn find(name: &str) -> Option<&'static EventDefinition> {
        catalog::CATALOG.iter().find(|e| e.name == name)
    }
}

/// One property of an [`EventDefinition`].
#[derive(Debug, Clone, Copy)]
pub struct PropertyDefinition {
    pub name: &'static str,
    /// `string`, `integer`, `boolean`, `uuid` or `date-time`.
    pub kind: &'static str,
    pub optional: bool,
}

/// An event a handler emitted, rendered and waiting for its transaction.
#[derive(Debug, Clone, PartialEq)]
pub struct Emitted {
    pub name: &'static str,
    pub severity: Severity,
    pub event_type: EventType,
    pub entity: Entity,
    /// Rendered, with control characters escaped: it is shown to people and written to logs.
    pub message: String,
    /// The event's properties as a JSON object.
    pub properties: serde_json::Value,
}

impl Emitted {
    pub fn new<E: CatalogEvent>(event: &E) -> Emitted {
        Emitted {
            name: E::NAME,
            severity: E::SEVERITY,
            event_type: E::EVENT_TYPE,
            entity: event.entity(),
            message: crate::envelope::reason::escape_control(event.message()),
            // Strings, numbers, booleans, UUIDs and times: serializing them cannot fail.
            properties: serde_json::to_value(event).unwrap_or_default(),
        }
    }
}

/// The most events one message may cause. Each event costs a few kilobytes until its
/// transaction commits (rendered message, properties, stream record, outbox row), which the
/// consumer's byte budget does not see; a message that would cause more (a host reporting 128
/// failing validations at once) has the rest counted in `event_router_events_dropped_total` and
/// logged, not recorded.
pub const MAX_PER_MESSAGE: usize = 16;

/// The events one message's handler emitted, waiting for its transaction.
#[derive(Debug, Default)]
pub(crate) struct Emissions {
    pub(crate) events: Vec<Emitted>,
    /// Emitted beyond [`MAX_PER_MESSAGE`], and so not recorded.
    pub(crate) dropped: usize,
}

impl Emissions {
    pub(crate) fn push<E: CatalogEvent>(&mut self, event: &E) {
        if self.events.len() < MAX_PER_MESSAGE {
            self.events.push(Emitted::new(event));
        } else {
            self.dropped += 1;
        }
    }

    pub(crate) fn push_emitted(&mut self, event: Emitted) {
        if self.events.len() < MAX_PER_MESSAGE {
            self.events.push(event);
        } else {
            self.dropped += 1;
        }
    }
}

/// When an event happened: the time of the message that caused it, or now when it has none.
pub(crate) fn event_time(message_time: Option<DateTime<Utc>>) -> DateTime<Utc> {
    message_time.unwrap_or_else(Utc::now)
}

impl EventDefinition {
    /// The event with these `properties`, checked against the catalog as the generated types
    /// check it at compile time: every required property present, none unknown, each of its
    /// declared type. For events that arrive as data (the recorder's ingest topic) rather than
    /// from a handler's code. `Err` says which property and why.
    pub fn instantiate(&'static self, properties: &serde_json::Map<String, serde_json::Value>) -> Result<Emitted, String> {
        use serde_json::Value;
        if let Some(unknown) = properties.keys().find(|name| !self.properties.iter().any(|p| p.name == name.as_str())) {
            let shown: String = unknown.chars().take(64).flat_map(char::escape_default).collect();
            return Err(format!("event `{}` has no property `{shown}` in the catalog", self.name));
        }
        let mut text = std::collections::HashMap::new();
        let mut entity = Entity::default();
        for property in self.properties {
            let value = properties.get(property.name).filter(|v| !v.is_null());
            let Some(value) = value else {
                if property.optional {
                    continue;
                }
                return Err(format!("event `{}` needs the property `{}` ({})", self.name, property.name, property.kind));
            };
            let wrong = || format!("event `{}`: property `{}` must be {}", self.name, property.name, property.kind);
            let shown = match (property.kind, value) {
                ("string", Value::String(s)) => s.clone(),
                ("integer", Value::Number(n)) if n.is_i64() => n.to_string(),
                ("boolean", Value::Bool(b)) => b.to_string(),
                ("uuid", Value::String(s)) => {
                    let id = Uuid::parse_str(s).map_err(|_| wrong())?;
                    match property.name {
                        "cluster_id" => entity.cluster_id = Some(id),
                        "host_id" => entity.host_id = Some(id),
                        "infra_env_id" => entity.infra_env_id = Some(id),
                        _ => {}
                    }
                    id.to_string()
                }
                ("date-time", Value::String(s)) => chrono::DateTime::parse_from_rfc3339(s)
                    .map_err(|_| wrong())?
                    .with_timezone(&Utc)
                    .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
                _ => return Err(wrong()),
            };
            text.insert(property.name, shown);
        }
        Ok(Emitted {
            name: self.name,
            severity: self.severity,
            event_type: self.event_type,
            entity,
            message: crate::envelope::reason::escape_control(render(self.template, &text)),
            properties: Value::Object(properties.clone()),
        })
    }
}

/// Fills a catalog template with `values`.
fn render(template: &[TemplatePiece], values: &std::collections::HashMap<&str, String>) -> String {
    template
        .iter()
        .map(|piece| match piece {
            TemplatePiece::Text(text) => *text,
            TemplatePiece::Placeholder(name) => values.get(name).map_or("", String::as_str),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn properties(value: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
        value.as_object().cloned().unwrap()
    }

    #[test]
    fn an_event_as_data_renders_as_its_generated_type_would() {
        let definition = EventDefinition::find("host_validation_failed").unwrap();
        let given = properties(json!({
            "host_id": "00000000-0000-0000-0000-000000000001", "infra_env_id": "00000000-0000-0000-0000-000000000002",
            "host_name": "worker-0", "validation_id": "ntp-synced", "validation_message": "Host clock is not synchronized"
        }));
        let emitted = definition.instantiate(&given).unwrap();
        let typed = Emitted::new(&catalog::HostValidationFailed {
            host_id: Uuid::from_u128(1),
            infra_env_id: Uuid::from_u128(2),
            cluster_id: None,
            host_name: "worker-0".into(),
            validation_id: "ntp-synced".into(),
            validation_message: "Host clock is not synchronized".into(),
        });
        assert_eq!(
            (emitted.message.as_str(), emitted.entity, emitted.severity),
            (typed.message.as_str(), typed.entity, typed.severity)
        );
    }

    #[test]
    fn missing_unknown_and_mistyped_properties_are_named() {
        let definition = EventDefinition::find("cluster_install_completed").unwrap();
        let id = "0e9d8c7b-6a5f-4e3d-9c2b-1a0f9e8d7c6b";
        let cases = [
            (json!({"cluster_id": id}), "needs the property `host_count` (integer)"),
            (json!({"cluster_id": id, "host_count": 3, "colour": "red"}), "has no property `colour`"),
            (json!({"cluster_id": "nope", "host_count": 3}), "property `cluster_id` must be uuid"),
            (json!({"cluster_id": id, "host_count": "3"}), "property `host_count` must be integer"),
            (json!({"cluster_id": id, "host_count": 1.5}), "property `host_count` must be integer"),
        ];
        for (given, expected) in cases {
            let problem = definition.instantiate(&properties(given.clone())).unwrap_err();
            assert!(problem.contains(expected), "{given}: {problem}");
        }
        let template = [TemplatePiece::Text("a "), TemplatePiece::Placeholder("x"), TemplatePiece::Text(" {y}")];
        assert_eq!(render(&template, &[("x", "1".to_owned())].into_iter().collect()), "a 1 {y}");
    }
}
