//! The one integration test binary: the real service on the embedded broker and PostgreSQL, a
//! fresh broker and database per test. A module per capability.

// Tests unwrap (a panic is how a test fails), and a scenario may read best as one long function.
#![allow(clippy::unwrap_used, clippy::too_many_lines, unreachable_pub)]

mod api;
mod batches;
mod crash;
mod dead_letters;
mod events;
mod faults;
mod handler_retries;
mod happy_path;
mod hooks;
mod hostile;
mod memory;
mod operability;
mod producer;
mod recorder;
mod redelivery;
mod replay;
mod retention;
mod scaling;
mod schema_build;
mod schema_lifecycle;
mod spool;
mod stream_outbox;
mod syslog;
mod takeover;
mod tansu;
