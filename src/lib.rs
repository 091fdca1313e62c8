//! event-router consumes Kafka topics whose messages are described by JSON Schema, validates each
//! message and its identity headers, hands it to the handler registered for its topic, records the
//! outcome in PostgreSQL and re-publishes an enriched event to an output stream.
//!
//! # How a message travels
//!
//! ```text
//! Kafka → consumer → envelope → router → handler → store (inbox + rows + outbox, one tx) → offset
//!                       └── any rejection → dead-letter topic → offset        outbox relay → stream
//! ```
//!
//! - [`consumer`] knows Kafka: group membership, a worker per partition, offsets stored only after
//!   a message is finished.
//! - [`envelope`] turns bytes and headers into a checked message or a [`envelope::Rejection`]
//!   with a stable reason code. Pure, so every rule is unit-tested.
//! - [`router`] maps a topic to its handler; [`handlers`] holds one file per topic.
//! - [`store`] owns SQL: the pool, migrations, and the inbox that makes redelivery a no-op (a
//!   replayed dead letter is filed there under its original's coordinates).
//! - [`pipeline`] strings those together: open (checks) → write (one transaction, merged across
//!   partitions) → finish, with the dead-letter flow; [`retry`] is the backoff it and the outbox
//!   relay share.
//! - [`stream`] and [`dead_letter`] shape what is re-published; [`kafka`] publishes it;
//!   [`outbox`] keeps stream events in the handler's transaction and relays them.
//! - [`topics`] is generated at build time from `api/event/*.event.json`.
//! - [`telemetry`] logs and counts; [`http`] serves `/metrics`, `/healthz`, `/readyz`.
//! - [`app`] assembles it all; [`config`] reads the environment.
//! - [`replay`] re-injects dead letters once their cause is fixed.
//! - [`producer`] is the library behind `event-router produce`. The demo traffic of `make run`
//!   is the binary's own (`src/demo.rs`), from the sample payloads of `internal/samples`. librdkafka's mock cluster, for development and tests, is hosted by the
//!   `internal/dev-broker` crate, which with `internal/raw-headers` holds all of the project's
//!   `unsafe` (FFI); this crate has none.

#![forbid(unsafe_code)]

pub mod app;
pub mod config;
pub mod consumer;
pub mod dead_letter;
pub mod envelope;
pub mod handlers;
pub mod http;
pub mod kafka;
pub mod message;
pub mod outbox;
pub mod pipeline;
pub mod producer;
pub mod replay;
pub mod retry;
pub mod router;
pub mod store;
pub mod stream;
pub mod telemetry;
pub mod topics;
