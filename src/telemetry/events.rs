//! Internal events: each is logged and counted here, and nowhere else.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use super::labels::{Outcome, PublishResult, RebalanceKind, RetryStep};
use super::metrics::{KnownTopic, Metrics, UNKNOWN_TOPIC_LABEL};
use crate::envelope::Rejection;
use crate::error::ErrorChain;
use crate::events::Severity;
use crate::message::RawMessage;
use crate::router::Context;
use prometheus::{Histogram, IntCounter};

/// Where the time of a handled message went.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct HandlingTime {
    /// Inside the topic's handler.
    pub handler: Duration,
    /// From opening the transaction to its commit (inbox, handler, outbox).
    pub transaction: Duration,
}

/// Logs and counts what happens to messages.
pub struct Telemetry {
    pub metrics: Metrics,
    /// The series of each known topic, found once at start.
    topics: HashMap<String, TopicSeries>,
    /// The series of every other topic, counted under one label.
    unknown: TopicSeries,
    /// The series of each catalog event, found once at start.
    events: HashMap<&'static str, EventSeries>,
    /// When a message last reached an outcome (Unix milliseconds), for stall detection.
    last_progress_ms: AtomicI64,
}

/// A topic's per-message series. Finding a series by its label values hashes them and takes a
/// lock, and a message touched five to seven series that way (2.0% of the service's CPU in a
/// drain's profile, bench/README.md section 28); it now finds its topic's series once.
struct TopicSeries {
    consumed: IntCounter,
    /// By [`Outcome`], in the order of [`Outcome::ALL`].
    processed: Vec<IntCounter>,
    /// Handler, transaction and end-to-end time; known topics only (a topic without a schema
    /// is never handled).
    timing: Option<[Histogram; 3]>,
}

/// A catalog event's series.
struct EventSeries {
    severity: Severity,
    emitted: IntCounter,
    folded: IntCounter,
}

impl TopicSeries {
    fn new(metrics: &Metrics, label: &str, timing: bool) -> Self {
        TopicSeries {
            consumed: metrics.consumed.with_label_values(&[label]),
            processed: Outcome::ALL.iter().map(|o| metrics.processed.with_label_values(&[label, o.as_str()])).collect(),
            timing: timing.then(|| {
                [&metrics.handler_seconds, &metrics.transaction_seconds, &metrics.end_to_end_seconds]
                    .map(|histogram| histogram.with_label_values(&[label]))
            }),
        }
    }

    fn processed(&self, outcome: Outcome) -> &IntCounter {
        let index = Outcome::ALL.iter().position(|o| *o == outcome).expect("every outcome is in Outcome::ALL");
        &self.processed[index]
    }
}

impl Telemetry {
    pub fn new(topics: Vec<KnownTopic>) -> Self {
        let metrics = Metrics::new(&topics);
        let series = topics.iter().map(|t| (t.name.clone(), TopicSeries::new(&metrics, &t.name, true))).collect();
        let unknown = TopicSeries::new(&metrics, UNKNOWN_TOPIC_LABEL, false);
        let events = crate::events::catalog::CATALOG
            .iter()
            .map(|event| {
                let series = EventSeries {
                    severity: event.severity,
                    emitted: metrics.events_emitted.with_label_values(&[event.name, event.severity.as_str()]),
                    folded: metrics.events_folded.with_label_values(&[event.name]),
                };
                (event.name, series)
            })
            .collect();
        Telemetry { metrics, topics: series, unknown, events, last_progress_ms: AtomicI64::new(now_ms()) }
    }

    /// The series of `topic`: its own when it is known, the shared ones otherwise.
    fn series(&self, topic: &str) -> &TopicSeries {
        self.topics.get(topic).unwrap_or(&self.unknown)
    }

    /// How long messages have been in flight without any reaching an outcome; zero when nothing
    /// is in flight.
    pub(crate) fn stalled_for(&self) -> Duration {
        if self.metrics.in_flight.get() <= 0 {
            return Duration::ZERO;
        }
        Duration::from_millis((now_ms() - self.last_progress_ms.load(Ordering::Relaxed)).max(0) as u64)
    }

    /// The topic as a metric label: known topics by name, anything else collapsed.
    fn label<'a>(&self, topic: &'a str) -> &'a str {
        if self.topics.contains_key(topic) {
            topic
        } else {
            UNKNOWN_TOPIC_LABEL
        }
    }

    /// A message read from Kafka: counted, and in flight until it finishes or is abandoned.
    pub(crate) fn message_consumed(&self, message: &RawMessage) {
        self.series(&message.topic).consumed.inc();
        if self.metrics.in_flight.get() == 0 {
            // Stall time counts from when work arrived, not from the last message of a quiet spell.
            self.last_progress_ms.store(now_ms(), Ordering::Relaxed);
        }
        self.metrics.in_flight.inc();
    }

    /// A transaction committed these catalog events (name, severity, whether it was folded into
    /// an earlier occurrence).
    pub(crate) fn events_recorded(&self, events: &[(&'static str, crate::events::Severity, bool)]) {
        for &(name, severity, folded) in events {
            match self.events.get(name).filter(|series| series.severity == severity) {
                Some(series) => {
                    series.emitted.inc();
                    if folded {
                        series.folded.inc();
                    }
                }
                // Not in the catalog as counted at start (a test's own event): found by label.
                None => {
                    self.metrics.events_emitted.with_label_values(&[name, severity.as_str()]).inc();
                    if folded {
                        self.metrics.events_folded.with_label_values(&[name]).inc();
                    }
                }
            }
        }
    }

    /// A message's handler emitted `dropped` events beyond the most one message may cause.
    pub(crate) fn events_dropped(&self, ctx: &Context, dropped: usize) {
        self.metrics.events_dropped.inc_by(dropped as u64);
        tracing::warn!(
            topic = %ctx.topic, partition = ctx.partition, offset = ctx.offset, request_id = %ctx.request_id,
            org_id = ctx.org_id().unwrap_or_default(), dropped, max = crate::events::MAX_PER_MESSAGE,
            "a message caused more events than are recorded for one message; the rest were not recorded"
        );
    }

    /// A writer is configured: its series exist from the first scrape.
    pub(crate) fn writer_configured(&self, writer: &str) {
        self.metrics.writer_backlog.with_label_values(&[writer]);
        self.metrics.writer_oldest_age_seconds.with_label_values(&[writer]);
        self.metrics.writer_delivered.with_label_values(&[writer]);
        self.metrics.writer_errors.with_label_values(&[writer]);
    }

    /// A hook is configured: its series exist from the first scrape.
    pub(crate) fn hook_configured(&self, hook: &str) {
        for result in ["ok", "failed", "given_up"] {
            self.metrics.hook_runs.with_label_values(&[hook, result]);
        }
    }

    /// A writer's backlog, read before each batch.
    pub(crate) fn writer_backlog(&self, writer: &str, count: i64, oldest: Option<chrono::DateTime<chrono::Utc>>) {
        self.metrics.writer_backlog.with_label_values(&[writer]).set(count);
        let age = oldest.map_or(0.0, |t| (chrono::Utc::now() - t).num_milliseconds().max(0) as f64 / 1000.0);
        self.metrics.writer_oldest_age_seconds.with_label_values(&[writer]).set(age);
    }

    /// A writer confirmed `count` events.
    pub(crate) fn writer_delivered(&self, writer: &str, count: usize) {
        self.metrics.writer_delivered.with_label_values(&[writer]).inc_by(count as u64);
    }

    /// A writer's batch failed; its dispatcher tries again after `retry_in`.
    pub(crate) fn writer_failed(&self, writer: &str, error: &crate::writers::WriterError, retry_in: Duration) {
        self.metrics.writer_errors.with_label_values(&[writer]).inc();
        tracing::warn!(writer, %error, retry_in_ms = retry_in.as_millis() as u64, "event writer failed; trying the batch again");
    }

    /// One run of a hook's command.
    pub(crate) fn hook_ran(&self, hook: &str, event_id: i64, attempt: u32, took: Duration, error: Option<&String>) {
        let result = if error.is_some() { "failed" } else { "ok" };
        self.metrics.hook_runs.with_label_values(&[hook, result]).inc();
        match error {
            None => tracing::info!(hook, event_id, attempt, duration_ms = took.as_millis() as u64, "hook ran"),
            Some(error) => {
                tracing::warn!(hook, event_id, attempt, duration_ms = took.as_millis() as u64, %error, "hook failed")
            }
        }
    }

    /// A hook gave up on an event after its attempts; recorded in `writer_failures`.
    pub(crate) fn hook_gave_up(&self, hook: &str, event_id: i64, attempts: u32) {
        self.metrics.hook_runs.with_label_values(&[hook, "given_up"]).inc();
        tracing::error!(hook, event_id, attempts, "hook gave up on the event after its attempts; recorded in writer_failures");
    }

    /// A message reached a final outcome; its offset may now advance.
    pub(crate) fn message_finished(&self, topic: &str, outcome: Outcome) {
        self.series(topic).processed(outcome).inc();
        self.metrics.in_flight.dec();
        self.last_progress_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// A message left unfinished at shutdown; it will be redelivered.
    pub(crate) fn message_abandoned(&self, message: &RawMessage) {
        self.metrics.in_flight.dec();
        self.series(&message.topic).processed(Outcome::Abandoned).inc();
        tracing::warn!(
            topic = %message.topic, partition = message.partition, offset = message.offset,
            "shutdown deadline reached; message left unprocessed and will be redelivered"
        );
    }

    /// A message's effects were committed (or found committed before, for a duplicate).
    pub(crate) fn message_handled(&self, ctx: &Context, timing: &HandlingTime, first_time: bool) {
        let elapsed = timing.transaction;
        if let (true, Some([handler, transaction, end_to_end])) = (first_time, &self.series(&ctx.topic).timing) {
            handler.observe(timing.handler.as_secs_f64());
            transaction.observe(timing.transaction.as_secs_f64());
            if let Some(timestamp) = ctx.timestamp {
                let latency = (chrono::Utc::now() - timestamp).to_std().unwrap_or_default();
                end_to_end.observe(latency.as_secs_f64());
            }
        }
        tracing::debug!(
            topic = %ctx.topic, partition = ctx.partition, offset = ctx.offset,
            request_id = %ctx.request_id, org_id = ctx.org_id().unwrap_or("-"),
            identity_type = ctx.identity.identity_type.as_str(),
            duplicate = !first_time, elapsed_ms = elapsed.as_secs_f64() * 1e3,
            "message handled"
        );
    }

    /// A record differs from the one handled before at the same coordinates.
    pub(crate) fn offset_reused(&self, ctx: &Context) {
        tracing::warn!(
            topic = %ctx.topic, partition = ctx.partition, offset = ctx.offset, request_id = %ctx.request_id,
            org_id = ctx.org_id().unwrap_or("-"),
            "a different record was handled at this offset before: the topic was recreated or its log lost; handling it as new"
        );
    }

    /// A message was rejected and published to the dead-letter topic.
    pub(crate) fn message_dead_lettered(&self, message: &RawMessage, rejection: &Rejection, request_id: Option<&str>) {
        let topic = self.label(&message.topic);
        self.metrics.dead_letters.with_label_values(&[topic, rejection.reason.code()]).inc();
        tracing::warn!(
            topic = %message.topic, partition = message.partition, offset = message.offset,
            request_id = request_id.unwrap_or("-"), reason = rejection.reason.code(),
            stage = rejection.stage().as_str(), detail = %rejection.message,
            "message rejected and dead-lettered"
        );
    }

    /// The broker refused even a dead-letter copy that fits the producer's limit; the message is
    /// recorded in the `dead_letters` table only.
    pub(crate) fn dead_letter_copy_refused(&self, message: &RawMessage, error: &(dyn std::error::Error + 'static)) {
        self.count_retry(RetryStep::DeadLetter);
        tracing::error!(
            topic = %message.topic, partition = message.partition, offset = message.offset, error = %ErrorChain(error),
            "the dead-letter topic refused the message's copy for good; it is recorded in the dead_letters table only"
        );
    }

    /// The database refused a `dead_letters` row for good; the copy in the topic is the record.
    pub(crate) fn dead_letter_row_refused(&self, message: &RawMessage, error: &(dyn std::error::Error + 'static)) {
        tracing::error!(
            topic = %message.topic, partition = message.partition, offset = message.offset, error = %ErrorChain(error),
            "the database refused the dead_letters row for good; the copy in the dead-letter topic is the only record"
        );
    }

    /// A handler asked to try the message again later.
    pub(crate) fn handler_retrying(
        &self,
        ctx: &Context,
        rejection: &Rejection,
        attempt: u32,
        max_attempts: u32,
        delay: Duration,
    ) {
        self.count_retry(RetryStep::Handler);
        tracing::warn!(
            topic = %ctx.topic, partition = ctx.partition, offset = ctx.offset, request_id = %ctx.request_id,
            reason = rejection.reason.code(), attempt, max_attempts, retry_in_ms = delay.as_millis() as u64,
            detail = %rejection.message,
            "handler cannot finish yet; the partition waits and retries"
        );
    }

    /// A step failed for a reason outside the message; it will be tried again after `delay`.
    pub fn retrying(&self, step: RetryStep, message: &RawMessage, attempt: u32, delay: Duration, error: &dyn std::fmt::Display) {
        self.count_retry(step);
        tracing::warn!(
            step = step.as_str(), topic = %message.topic, partition = message.partition, offset = message.offset,
            attempt, retry_in_ms = delay.as_millis() as u64, error = %error,
            "transient failure; the partition waits and retries"
        );
    }

    /// The outbox relay could not publish (or reach the database); the backlog waits.
    pub(crate) fn outbox_relay_failed(&self, attempt: u32, retry_in: Duration, error: &(dyn std::error::Error + 'static)) {
        self.count_retry(RetryStep::Stream);
        tracing::warn!(
            attempt, retry_in_ms = retry_in.as_millis() as u64, error = %ErrorChain(error),
            "stream publish failed; events wait in the outbox and are retried"
        );
    }

    /// Shutdown came before the outbox was empty.
    pub(crate) fn outbox_left_at_shutdown(&self) {
        tracing::warn!("stopping with events still in the outbox; the next instance to run publishes them");
    }

    /// A transaction that wrote `messages` messages committed.
    pub(crate) fn transaction_committed(&self, messages: usize) {
        self.metrics.transaction_messages.observe(messages as f64);
    }

    /// Consumer lag per partition, from librdkafka's statistics. A partition this consumer does
    /// not own (lag unknown) loses its series.
    pub(crate) fn consumer_lag(&self, topic: &str, partition: i32, lag: Option<i64>) {
        let partition = partition.to_string();
        match lag {
            Some(lag) => self.metrics.consumer_lag.with_label_values(&[self.label(topic), &partition]).set(lag),
            None => {
                let _ = self.metrics.consumer_lag.remove_label_values(&[self.label(topic), &partition]);
            }
        }
    }

    pub(crate) fn outbox_backlog(&self, rows: i64, oldest_age_seconds: f64) {
        self.metrics.outbox_backlog.set(rows);
        self.metrics.outbox_oldest_age_seconds.set(oldest_age_seconds);
    }

    /// Kafka refused a stream event for good; it was parked in `stream_undeliverable`.
    pub(crate) fn stream_event_undeliverable(&self, topic: &str, error: &dyn std::fmt::Display) {
        self.metrics.stream_undeliverable.inc();
        tracing::error!(%topic, error = %error, "Kafka refused a stream event for good; it is kept in the stream_undeliverable table and the stream goes on");
    }

    pub(crate) fn stream_published(&self, ok: bool) {
        let result = if ok { PublishResult::Ok } else { PublishResult::Error };
        self.metrics.stream_published.with_label_values(&[result.as_str()]).inc();
    }

    /// The byte budget for messages held in the service is spent: fetching pauses until finished
    /// messages give bytes back.
    pub(crate) fn budget_spent(&self, available: usize, total: usize) {
        self.metrics.budget_exhausted.inc();
        tracing::info!(
            available,
            total,
            "message memory budget (MAX_BUFFERED_BYTES) spent; fetching paused until messages finish"
        );
    }

    pub(crate) fn consumer_error(&self, error: &dyn std::fmt::Display) {
        self.metrics.consumer_errors.inc();
        tracing::warn!(error = %error, "Kafka consumer error; librdkafka retries on its own");
    }

    /// The commit made when partitions are revoked did not land; the next owner redoes what was
    /// finished since the last background commit (the inbox makes that a no-op).
    pub(crate) fn commit_on_revoke_failed(&self, error: &dyn std::fmt::Display) {
        self.metrics.consumer_errors.inc();
        tracing::warn!(error = %error, "offset commit on partition revoke failed; the next owner may redo recent messages");
    }

    pub fn rebalance(&self, kind: RebalanceKind, partitions: &str) {
        self.metrics.rebalances.with_label_values(&[kind.as_str()]).inc();
        tracing::info!(kind = kind.as_str(), partitions, "consumer group rebalance");
    }
}

impl Telemetry {
    fn count_retry(&self, step: RetryStep) {
        self.metrics.retries.with_label_values(&[step.as_str()]).inc();
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{Identity, IdentityType};

    fn telemetry() -> Telemetry {
        Telemetry::new(vec![KnownTopic { name: "todos".into(), handler_reasons: &[] }])
    }

    fn processed(telemetry: &Telemetry, topic: &str, outcome: Outcome) -> u64 {
        telemetry.metrics.processed.with_label_values(&[topic, outcome.as_str()]).get()
    }

    /// The series found at start are the ones the labels name: each outcome its own, a topic
    /// without a schema under `_unknown`.
    #[test]
    fn a_message_is_counted_under_its_topic_and_outcome() {
        let telemetry = telemetry();
        for (n, outcome) in Outcome::ALL.iter().enumerate() {
            for _ in 0..=n {
                telemetry.message_finished("todos", *outcome);
            }
        }
        telemetry.message_finished("no-schema", Outcome::DeadLettered);
        for (n, outcome) in Outcome::ALL.iter().enumerate() {
            assert_eq!(processed(&telemetry, "todos", *outcome), n as u64 + 1, "{outcome:?}");
        }
        assert_eq!(processed(&telemetry, UNKNOWN_TOPIC_LABEL, Outcome::DeadLettered), 1);
        assert_eq!(processed(&telemetry, UNKNOWN_TOPIC_LABEL, Outcome::Handled), 0);

        let message = |topic: &str| RawMessage {
            topic: topic.into(),
            partition: 0,
            offset: 0,
            key: None,
            payload: None,
            headers: Vec::new(),
            timestamp_ms: None,
            header_problem: None,
        };
        telemetry.message_consumed(&message("todos"));
        telemetry.message_consumed(&message("no-schema"));
        telemetry.message_consumed(&message("no-schema"));
        assert_eq!(telemetry.metrics.consumed.with_label_values(&["todos"]).get(), 1);
        assert_eq!(telemetry.metrics.consumed.with_label_values(&[UNKNOWN_TOPIC_LABEL]).get(), 2);
    }

    #[test]
    fn a_handled_message_is_timed_under_its_topic() {
        let telemetry = telemetry();
        let ctx = Context {
            topic: "todos".into(),
            partition: 0,
            offset: 0,
            key: None,
            timestamp: Some(chrono::Utc::now()),
            identity: std::sync::Arc::new(Identity {
                identity_type: IdentityType::User,
                org_id: None,
                account_number: None,
                auth_type: None,
            }),
            request_id: "r".into(),
            emitted: Default::default(),
        };
        let timing = HandlingTime { handler: Duration::from_millis(3), transaction: Duration::from_millis(7) };
        telemetry.message_handled(&ctx, &timing, true);
        telemetry.message_handled(&ctx, &timing, false);
        let handler = telemetry.metrics.handler_seconds.with_label_values(&["todos"]);
        assert_eq!(handler.get_sample_count(), 1, "a duplicate is not timed");
        assert!((handler.get_sample_sum() - 0.003).abs() < 1e-9);
        let transaction = telemetry.metrics.transaction_seconds.with_label_values(&["todos"]);
        assert!((transaction.get_sample_sum() - 0.007).abs() < 1e-9);
        assert_eq!(telemetry.metrics.end_to_end_seconds.with_label_values(&["todos"]).get_sample_count(), 1);
    }

    #[test]
    fn catalog_events_are_counted_by_name_and_severity() {
        let telemetry = telemetry();
        let event = &crate::events::catalog::CATALOG[0];
        telemetry.events_recorded(&[(event.name, event.severity, false), (event.name, event.severity, true)]);
        // A severity the catalog does not give this event still gets its own series.
        let other = Severity::ALL.into_iter().find(|s| *s != event.severity).unwrap();
        telemetry.events_recorded(&[(event.name, other, true)]);
        let emitted =
            |severity: Severity| telemetry.metrics.events_emitted.with_label_values(&[event.name, severity.as_str()]).get();
        assert_eq!(emitted(event.severity), 2);
        assert_eq!(emitted(other), 1);
        assert_eq!(telemetry.metrics.events_folded.with_label_values(&[event.name]).get(), 2);
    }
}
