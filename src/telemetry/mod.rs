//! Logs and metrics. [`Telemetry`] is the one place where each internal event is both logged and
//! counted, so a log line and its counter can never drift apart.
//!
//! Logging rules: INFO for milestones and state changes only (start, assignment, shutdown), WARN
//! for trouble the service recovers from (a retry, a dead letter), ERROR for what needs an
//! operator. Per-message lines are DEBUG. Logs carry org id, identity type and request id, never
//! the raw identity header.

mod events;
mod labels;
mod logging;
mod metrics;

pub(crate) use events::HandlingTime;
pub use events::Telemetry;
pub use labels::{Outcome, PublishResult, RebalanceKind, RetryStep};
pub use logging::{init_logging, LogFormat};
pub use metrics::{KnownTopic, Metrics};
