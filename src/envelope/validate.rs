//! JSON Schema validators, compiled once at start-up from the schemas embedded at build time.
//!
//! Formats (`uuid`, `date-time`, ...) are asserted: jsonschema leaves them as annotations by
//! default for drafts 2019-09 and later, which would let `"host_id": "banana"` through.

use std::collections::HashMap;

use serde_json::Value;

use super::identity::{pointer_or_root, IdentityCache, IDENTITY_SCHEMA};
use super::reason::{Reason, Rejection};
use crate::config::TopicConfig;
use crate::topics::{TopicSchema, REGISTRY};

/// A schema that does not compile; names the schema.
#[derive(Debug, thiserror::Error)]
#[error("schema {name} does not compile: {problem}")]
pub struct SchemaError {
    pub name: String,
    pub problem: String,
}

/// Compiles one embedded schema with format assertion on and no remote references.
pub(crate) fn compile_schema(text: &str, name: &str) -> Result<jsonschema::Validator, SchemaError> {
    let value: Value = serde_json::from_str(text).map_err(|e| SchemaError { name: name.into(), problem: e.to_string() })?;
    jsonschema::options()
        .should_validate_formats(true)
        .build(&value)
        .map_err(|e| SchemaError { name: name.into(), problem: e.to_string() })
}

/// Offending values longer than this (as JSON) are not echoed in rejection messages.
const MAX_ECHOED_VALUE: usize = 64;

/// A topic the service consumes, with its compiled validator.
pub(crate) struct TopicValidator {
    pub schema: &'static TopicSchema,
    pub validator: jsonschema::Validator,
}

/// Every validator the service needs, keyed by actual Kafka topic name.
pub struct Validators {
    topics: HashMap<String, TopicValidator>,
    pub(crate) identity: jsonschema::Validator,
    pub(crate) identities: IdentityCache,
    /// Larger values are rejected before they are parsed.
    pub(crate) max_payload_bytes: usize,
}

/// Distinct identities remembered as checked (see [`IdentityCache`]); a few hundred KiB at most.
const IDENTITY_CACHE_CAPACITY: usize = 4096;

/// The default limit on a message value (`MAX_MESSAGE_BYTES`); the configuration owns it.
use crate::config::DEFAULT_MAX_MESSAGE_BYTES as DEFAULT_MAX_PAYLOAD_BYTES;

impl Validators {
    /// Compiles the identity schema and every registry schema, naming topics through `topics`.
    pub fn compile(topics: &TopicConfig) -> Result<Self, SchemaError> {
        let mut by_topic = HashMap::new();
        for schema in REGISTRY {
            let validator = compile_schema(schema.schema, schema.file)?;
            by_topic.insert(topics.name(schema.key), TopicValidator { schema, validator });
        }
        Ok(Validators {
            topics: by_topic,
            identity: compile_schema(IDENTITY_SCHEMA, "x-rh-identity")?,
            identities: IdentityCache::new(IDENTITY_CACHE_CAPACITY),
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
        })
    }

    /// Rejects values larger than `bytes` (`MAX_MESSAGE_BYTES`).
    pub(crate) fn with_max_payload_bytes(self, bytes: usize) -> Self {
        Validators { max_payload_bytes: bytes, ..self }
    }

    /// The validator for a Kafka topic, if the topic has a schema.
    pub(crate) fn for_topic(&self, topic: &str) -> Option<&TopicValidator> {
        self.topics.get(topic)
    }

    /// The Kafka topic names that have a schema.
    pub(crate) fn topic_names(&self) -> impl Iterator<Item = &str> {
        self.topics.keys().map(String::as_str)
    }

    /// Each consumed Kafka topic with its schema's topic key.
    pub fn topics(&self) -> impl Iterator<Item = (&str, &'static str)> {
        self.topics.iter().map(|(name, t)| (name.as_str(), t.schema.key))
    }

    /// Checks `payload` against the topic's schema; the error names topic, path, keyword and rule.
    pub(crate) fn check_payload(&self, topic: &str, validator: &jsonschema::Validator, payload: &Value) -> Result<(), Rejection> {
        const SHOWN: usize = 3;
        // Most messages are valid: `is_valid` checks without building the error iterator, which
        // allocated for every message (bench/README.md, 14).
        if validator.is_valid(payload) {
            return Ok(());
        }
        let mut errors = validator.iter_errors(payload);
        let Some(first) = errors.next() else {
            return Ok(());
        };
        let describe = |e: &jsonschema::ValidationError| {
            let at = pointer_or_root(e.instance_path().as_str());
            // Echo small offending values (useful: `"sleeping" is not one of ...`), mask large ones.
            let rule = if e.instance().to_string().len() <= MAX_ECHOED_VALUE { e.to_string() } else { e.masked().to_string() };
            format!("at `{at}` (keyword `{}`): {rule}", e.kind().keyword())
        };
        let mut message = format!("topic {topic}: {}", describe(&first));
        // Only a few errors are shown and the rest are not collected: a hostile payload of a
        // megabyte can break a rule a million times. Counting stops at a bound too.
        const COUNTED: usize = 1000;
        let mut more = 0;
        for error in errors.take(COUNTED) {
            if more < SHOWN - 1 {
                message.push_str("; ");
                message.push_str(&describe(&error));
            }
            more += 1;
        }
        match more.checked_sub(SHOWN - 1) {
            Some(0) | None => {}
            Some(rest) if more == COUNTED => message.push_str(&format!("; and at least {rest} more")),
            Some(rest) => message.push_str(&format!("; and {rest} more")),
        }
        Err(Rejection::new(Reason::SchemaViolation, message))
    }
}
