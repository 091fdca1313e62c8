//! The topics this service owns, generated at build time from `api/event/*.event.json`.
//!
//! Each schema file becomes a module (`topics::todo_created`) holding the payload types typify
//! made of it, and its root payload type implements [`Topic`]. That trait is what ties a handler
//! to a topic: `router.register::<TodoCreated>(handler)` only compiles when `handler` takes a
//! `TodoCreated`. [`REGISTRY`] lists every schema so that validators, topic names, the embedded
//! broker's topic list and the sample payloads (each schema's `examples`) all come from the same
//! files.

use serde::de::DeserializeOwned;

/// A topic's payload type, tied to its schema. Implemented by generated code only.
pub trait Topic: DeserializeOwned + Send + Sync + 'static {
    /// The file stem of the schema, e.g. `todo-created`; the Kafka topic is `<prefix>.<KEY>`.
    const KEY: &'static str;
}

/// One entry of the generated registry.
#[derive(Debug, Clone, Copy)]
pub struct TopicSchema {
    /// File stem, e.g. `todo-created`.
    pub key: &'static str,
    /// Event name used in the stream envelope, e.g. `TodoCreated` (the generated type's name).
    pub name: &'static str,
    /// Path of the schema within the repository, e.g. `api/event/todo-created.event.json`.
    pub file: &'static str,
    /// `sha256:…` of the schema file, reported as the schema's version in stream events.
    pub digest: &'static str,
    /// The schema text.
    pub schema: &'static str,
    /// The schema's `examples` as compact JSON, at least one: sample payloads for the demo, the
    /// tests and the benchmark (the `samples` crate varies them), checked against the schema by
    /// this crate's tests.
    pub examples: &'static [&'static str],
}

impl TopicSchema {
    /// Looks a topic up by key.
    pub fn find(key: &str) -> Option<&'static TopicSchema> {
        REGISTRY.iter().find(|t| t.key == key)
    }
}

include!(concat!(env!("OUT_DIR"), "/topics.rs"));

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_holds_every_sample_topic_in_file_order() {
        let keys: Vec<_> = REGISTRY.iter().map(|t| t.key).collect();
        assert_eq!(keys, ["cluster-install-progressed", "event-recorded", "host-status-changed", "todo-created"]);
        assert_eq!(TopicSchema::find("todo-created").unwrap().name, "TodoCreated");
        assert_eq!(<TodoCreated as Topic>::KEY, "todo-created");
    }

    #[test]
    fn generated_types_follow_the_schema() {
        let todo: TodoCreated = serde_json::from_value(serde_json::json!({"id": 7, "title": "t", "description": "d"})).unwrap();
        assert_eq!(todo.id, 7);
        let progress: ClusterInstallProgressed = serde_json::from_value(serde_json::json!({
            "cluster_id": "7b0e0a52-6d5c-4d2a-9d7c-2f1f1f1f1f1f", "stage": "installing", "progress": 40,
            "hosts": [{"host_id": "9b0e0a52-6d5c-4d2a-9d7c-2f1f1f1f1f1f", "role": "master"}]
        }))
        .unwrap();
        assert_eq!(progress.hosts.len(), 1);
    }
}
