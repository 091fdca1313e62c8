//! event-router consumes Kafka topics whose messages are described by JSON Schema, validates each
//! message and its identity headers, hands it to the handler registered for its topic, records the
//! outcome in PostgreSQL and re-publishes an enriched event to an output stream.
//!
//! # How a message travels
//!
//! ```text
//! Kafka → consumer → pipeline: open (envelope) → write (router → handler; store: inbox + rows
//!                    + outbox, one transaction) → finish → offset stored
//!                       └── any rejection → dead-letter topic + dead_letters row → offset
//!                                                          outbox relay → stream topic
//! ```
//!
//! - [`consumer`] knows Kafka: group membership, a worker per partition, the memory budget,
//!   offsets stored only after a message is finished. It hands raw messages to the pipeline.
//! - [`pipeline`] takes a partition's messages to their outcomes: `open` runs the [`envelope`]
//!   checks once, `write` makes the transaction (merged across partitions by group commit) and
//!   the single-message path with its retries, `dead_letter` publishes and records a rejection.
//!   [`retry`] is the backoff it and the outbox relay share.
//! - [`envelope`] turns bytes and headers into a checked message or a [`envelope::Rejection`]
//!   with a stable reason code. Pure, so every rule is unit-tested (and property-tested).
//! - [`router`] maps a topic to its handler; [`handlers`] holds one file per topic. A handler
//!   emits [`events`] (declared in `api/events.yaml`, generated into types) through its context;
//!   they are written, deduplicated and streamed in its transaction.
//! - [`store`] owns SQL: the pool, migrations, the inbox that makes redelivery a no-op (a
//!   replayed dead letter is filed there under its original's coordinates), dead letters and
//!   retention.
//! - [`stream`] and [`dead_letter`] shape what is re-published, always within a record's size;
//!   [`kafka`] publishes it; [`outbox`] keeps stream events in the handler's transaction and
//!   relays them.
//! - [`message`] is a consumed record as the service sees it (headers read as bytes).
//! - [`topics`] is generated at build time from `api/event/*.event.json`.
//! - [`telemetry`] logs and counts; [`http`] serves `/metrics`, `/healthz`, `/readyz`.
//! - [`writers`] hands every event to each configured writer (syslog, hooks that run a command),
//!   in order, at least once, from durable cursors.
//! - [`api`] is the events API people and scripts read (list, feed, state), tenant-scoped by
//!   `x-rh-identity`, and the client `event-router events` talks through.
//! - [`app`] assembles it all; [`config`] reads the environment.
//! - [`replay`] re-injects dead letters once their cause is fixed; [`producer`] is the library
//!   behind `event-router produce`.
//!
//! Outside this crate: the binary's own demo traffic (`src/demo.rs`, from the payloads of
//! `internal/samples`), librdkafka's mock cluster for development and tests
//! (`internal/dev-broker`) and the raw header reader (`internal/raw-headers`). Those two hold all
//! of the project's `unsafe` (FFI); this crate has none.

#![forbid(unsafe_code)]

pub mod api;
pub mod app;
pub mod config;
pub mod consumer;
pub mod dead_letter;
pub mod envelope;
mod error;
pub mod events;
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
pub mod writers;
