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
    pub properties: &'static [PropertyDefinition],
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
}

/// When an event happened: the time of the message that caused it, or now when it has none.
pub(crate) fn event_time(message_time: Option<DateTime<Utc>>) -> DateTime<Utc> {
    message_time.unwrap_or_else(Utc::now)
}
