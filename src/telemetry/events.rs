//! Internal events: each is logged and counted here, and nowhere else.

use std::collections::HashSet;
use std::time::Duration;

use super::metrics::{KnownTopic, Metrics, UNKNOWN_TOPIC_LABEL};
use crate::envelope::Rejection;
use crate::message::RawMessage;
use crate::router::Context;

/// Logs and counts what happens to messages.
pub struct Telemetry {
    pub metrics: Metrics,
    known_topics: HashSet<String>,
}

impl Telemetry {
    pub fn new(topics: Vec<KnownTopic>) -> Self {
        let known_topics = topics.iter().map(|t| t.name.clone()).collect();
        Telemetry { metrics: Metrics::new(&topics), known_topics }
    }

    /// The topic as a metric label: known topics by name, anything else collapsed.
    fn label<'a>(&self, topic: &'a str) -> &'a str {
        if self.known_topics.contains(topic) {
            topic
        } else {
            UNKNOWN_TOPIC_LABEL
        }
    }

    pub fn message_consumed(&self, message: &RawMessage) {
        self.metrics.consumed.with_label_values(&[self.label(&message.topic)]).inc();
        self.metrics.in_flight.inc();
    }

    /// A message reached a final outcome; its offset may now advance.
    pub fn message_finished(&self, topic: &str, outcome: &'static str) {
        self.metrics.processed.with_label_values(&[self.label(topic), outcome]).inc();
        self.metrics.in_flight.dec();
    }

    /// A message left unfinished at shutdown; it will be redelivered.
    pub fn message_abandoned(&self, message: &RawMessage) {
        self.metrics.in_flight.dec();
        tracing::warn!(
            topic = %message.topic, partition = message.partition, offset = message.offset,
            "shutdown deadline reached; message left unprocessed and will be redelivered"
        );
    }

    pub fn message_handled(&self, ctx: &Context, elapsed: Duration, first_time: bool) {
        if first_time {
            self.metrics.handler_seconds.with_label_values(&[self.label(&ctx.topic)]).observe(elapsed.as_secs_f64());
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
    pub fn offset_reused(&self, ctx: &Context) {
        tracing::warn!(
            topic = %ctx.topic, partition = ctx.partition, offset = ctx.offset, request_id = %ctx.request_id,
            "a different record was handled at this offset before: the topic was recreated or its log lost; handling it as new"
        );
    }

    /// A message was rejected and published to the dead-letter topic.
    pub fn message_dead_lettered(&self, message: &RawMessage, rejection: &Rejection, request_id: Option<&str>) {
        let topic = self.label(&message.topic);
        self.metrics.rejected.with_label_values(&[topic, rejection.reason.code()]).inc();
        self.metrics.dead_letters.with_label_values(&[topic, rejection.reason.code()]).inc();
        tracing::warn!(
            topic = %message.topic, partition = message.partition, offset = message.offset,
            request_id = request_id.unwrap_or("-"), reason = rejection.reason.code(),
            stage = rejection.stage().as_str(), detail = %rejection.message,
            "message rejected and dead-lettered"
        );
    }

    /// A handler asked to try the message again later.
    pub fn handler_retrying(&self, ctx: &Context, rejection: &Rejection, attempt: u32, max_attempts: u32, delay: Duration) {
        self.metrics.retries.with_label_values(&["handler"]).inc();
        tracing::warn!(
            topic = %ctx.topic, partition = ctx.partition, offset = ctx.offset, request_id = %ctx.request_id,
            reason = rejection.reason.code(), attempt, max_attempts, retry_in_ms = delay.as_millis() as u64,
            detail = %rejection.message,
            "handler cannot finish yet; the partition waits and retries"
        );
    }

    /// A step failed for a reason outside the message; it will be tried again after `delay`.
    pub fn retrying(
        &self,
        step: &'static str,
        message: &RawMessage,
        attempt: u32,
        delay: Duration,
        error: &dyn std::fmt::Display,
    ) {
        self.metrics.retries.with_label_values(&[step]).inc();
        tracing::warn!(
            step, topic = %message.topic, partition = message.partition, offset = message.offset,
            attempt, retry_in_ms = delay.as_millis() as u64, error = %error,
            "transient failure; the partition waits and retries"
        );
    }

    /// The outbox relay could not publish (or reach the database); the backlog waits.
    pub fn outbox_relay_failed(&self, attempt: u32, retry_in: Duration, error: &anyhow::Error) {
        self.metrics.retries.with_label_values(&["stream"]).inc();
        tracing::warn!(
            attempt, retry_in_ms = retry_in.as_millis() as u64, error = %format!("{error:#}"),
            "stream publish failed; events wait in the outbox and are retried"
        );
    }

    /// Shutdown came before the outbox was empty.
    pub fn outbox_left_at_shutdown(&self) {
        tracing::warn!("stopping with events still in the outbox; the next instance to run publishes them");
    }

    pub fn stream_published(&self, ok: bool) {
        self.metrics.stream_published.with_label_values(&[if ok { "ok" } else { "error" }]).inc();
    }

    pub fn consumer_error(&self, error: &dyn std::fmt::Display) {
        self.metrics.consumer_errors.inc();
        tracing::warn!(error = %error, "Kafka consumer error; librdkafka retries on its own");
    }

    /// The commit made when partitions are revoked did not land; the next owner redoes what was
    /// finished since the last background commit (the inbox makes that a no-op).
    pub fn commit_on_revoke_failed(&self, error: &dyn std::fmt::Display) {
        self.metrics.consumer_errors.inc();
        tracing::warn!(error = %error, "offset commit on partition revoke failed; the next owner may redo recent messages");
    }

    pub fn rebalance(&self, kind: &'static str, partitions: &str) {
        self.metrics.rebalances.with_label_values(&[kind]).inc();
        tracing::info!(kind, partitions, "consumer group rebalance");
    }
}
