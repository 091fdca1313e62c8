//! A topic's life after its schema is written in `api/event/`.
//!
//! - [`settings`]: what a schema declares about its topic (`x-compatibility`, `x-partitions`,
//!   `x-retention-ms`); the build checks them, the tools below read them.
//! - [`source`]: the schemas of one version, from a folder or a git revision; [`json`]: read
//!   refusing duplicate keys.
//! - [`compat`]: whether one schema version reads what another accepts, rule by rule.
//! - [`report`]: that check over every schema of two versions, as text or JSON.
//! - [`declare`]: the Kafka topic declarations deploys need (the ClowdApp's `kafkaTopics`,
//!   Strimzi `KafkaTopic`s), generated from the schemas and checked against `deploy/`.
//!
//! It is its own small crate (serde only) so that the build script can check the keywords with
//! the same code the `event-router schema` commands use, and so that the rules are unit tested
//! without the service.

pub mod compat;
pub mod declare;
pub mod json;
pub mod report;
pub mod settings;
pub mod source;

#[cfg(test)]
mod tests;
