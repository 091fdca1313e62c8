//! The service's Prometheus registry and every metric in it.
//!
//! The service uses its own registry (not the process-global default) so that tests can run
//! several instances in one process and scrape each separately. Every series whose labels are
//! known at start (topics, reason codes, the label enums of [`super::labels`]) is created here,
//! so dashboards and alerts see zeros rather than gaps.

use prometheus::core::Collector;
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use super::labels::{Outcome, PublishResult, RebalanceKind, RetryStep};
use crate::envelope::Reason;

/// Label used for topics that have no schema, to keep label cardinality bounded.
pub(super) const UNKNOWN_TOPIC_LABEL: &str = "_unknown";

/// A consumed topic and the reason codes its handler declared.
#[derive(Debug, Clone)]
pub struct KnownTopic {
    pub name: String,
    pub handler_reasons: &'static [&'static str],
}

pub struct Metrics {
    registry: Registry,
    pub consumed: IntCounterVec,
    pub processed: IntCounterVec,
    pub dead_letters: IntCounterVec,
    pub retries: IntCounterVec,
    pub stream_published: IntCounterVec,
    pub handler_seconds: HistogramVec,
    pub transaction_seconds: HistogramVec,
    pub end_to_end_seconds: HistogramVec,
    pub consumer_lag: IntGaugeVec,
    pub transaction_messages: Histogram,
    pub outbox_backlog: IntGauge,
    pub outbox_oldest_age_seconds: Gauge,
    pub in_flight: IntGauge,
    pub rebalances: IntCounterVec,
    pub consumer_errors: IntCounter,
    pub budget_exhausted: IntCounter,
    pub stream_undeliverable: IntCounter,
    pub events_emitted: IntCounterVec,
    pub events_folded: IntCounterVec,
    pub events_dropped: IntCounter,
    pub writer_backlog: IntGaugeVec,
    pub writer_oldest_age_seconds: prometheus::GaugeVec,
    pub writer_delivered: IntCounterVec,
    pub writer_errors: IntCounterVec,
    pub hook_runs: IntCounterVec,
    pub build_info: IntGaugeVec,
}

/// Adds `metric` to `registry` and hands it back. Names are constants of this file, so a clash
/// or an invalid name is a bug found by the first test that starts the service.
fn register<M: Collector + Clone + 'static>(registry: &Registry, metric: prometheus::Result<M>) -> M {
    let metric = metric.expect("a valid metric definition");
    registry.register(Box::new(metric.clone())).expect("a metric name used once");
    metric
}

/// Buckets of handler and transaction time.
const FAST_SECONDS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];
/// Fine around 50 ms, the latency objective at steady load, so its quantiles are read off
/// buckets rather than interpolated across 50-100 ms.
const END_TO_END_SECONDS: &[f64] =
    &[0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];
/// Up to the largest transaction: a merged write of 512 messages.
const TRANSACTION_MESSAGES: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

impl Metrics {
    /// Registers every metric and initialises the label values known at start (topics,
    /// outcomes, reasons, steps) so every series exists from the first scrape.
    pub fn new(topics: &[KnownTopic]) -> Self {
        let registry = Registry::new();
        let counters =
            |name: &str, help: &str, labels: &[&str]| register(&registry, IntCounterVec::new(Opts::new(name, help), labels));
        let counter = |name: &str, help: &str| register(&registry, IntCounter::new(name, help));
        let gauge = |name: &str, help: &str| register(&registry, IntGauge::new(name, help));
        let per_topic_histogram = |name: &str, help: &str, buckets: &[f64]| {
            register(&registry, HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets.to_vec()), &["topic"]))
        };
        let metrics = Metrics {
            consumed: counters("event_router_messages_consumed_total", "Messages read from Kafka.", &["topic"]),
            processed: counters(
                "event_router_messages_processed_total",
                "Messages that reached an outcome: handled, duplicate, dead_lettered, skipped, or abandoned at shutdown or revoke.",
                &["topic", "outcome"],
            ),
            dead_letters: counters(
                "event_router_dead_letters_total",
                "Messages rejected (before or by their handler) and dead-lettered, by reason code.",
                &["topic", "reason"],
            ),
            retries: counters("event_router_retries_total", "Retries after a transient failure, by the step that failed.", &["step"]),
            stream_published: counters(
                "event_router_stream_publish_total",
                "Attempts to publish an enriched event to the stream topic, by result.",
                &["result"],
            ),
            rebalances: counters("event_router_rebalances_total", "Consumer group rebalances seen, by kind.", &["kind"]),
            consumer_errors: counter("event_router_consumer_errors_total", "Errors returned by the Kafka consumer."),
            budget_exhausted: counter(
                "event_router_memory_budget_exhausted_total",
                "Times fetching paused because messages held in the service reached MAX_BUFFERED_BYTES.",
            ),
            stream_undeliverable: counter(
                "event_router_stream_undeliverable_total",
                "Stream events Kafka refused for good, parked in the stream_undeliverable table.",
            ),
            handler_seconds: per_topic_histogram(
                "event_router_handler_duration_seconds",
                "Time spent in the topic's handler, per topic.",
                FAST_SECONDS,
            ),
            transaction_seconds: per_topic_histogram(
                "event_router_db_transaction_duration_seconds",
                "Time from opening a message's database transaction (inbox, handler, outbox) to its commit, per topic.",
                FAST_SECONDS,
            ),
            end_to_end_seconds: per_topic_histogram(
                "event_router_end_to_end_latency_seconds",
                "Time from a message's Kafka timestamp to the commit of its effects, per topic.",
                END_TO_END_SECONDS,
            ),
            consumer_lag: register(
                &registry,
                IntGaugeVec::new(
                    Opts::new("event_router_consumer_lag", "Messages between the consumer's position and the partition's end."),
                    &["topic", "partition"],
                ),
            ),
            transaction_messages: register(
                &registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "event_router_transaction_messages",
                        "Messages written per database transaction (a partition's backlog is written in batches).",
                    )
                    .buckets(TRANSACTION_MESSAGES.to_vec()),
                ),
            ),
            outbox_backlog: gauge("event_router_outbox_backlog", "Stream events waiting in the outbox."),
            outbox_oldest_age_seconds: register(
                &registry,
                Gauge::new(
                    "event_router_outbox_oldest_age_seconds",
                    "Age of the oldest event waiting in the outbox; 0 when it is empty.",
                ),
            ),
            in_flight: gauge("event_router_messages_in_flight", "Messages read but not yet fully processed."),
            events_emitted: counters(
                "event_router_events_emitted_total",
                "Catalog events emitted by handlers and committed, by event name and severity (folded ones included).",
                &["name", "severity"],
            ),
            events_folded: counters(
                "event_router_events_folded_total",
                "Catalog events counted into an earlier occurrence within EVENT_DEDUP_WINDOW instead of adding one.",
                &["name"],
            ),
            events_dropped: counter(
                "event_router_events_dropped_total",
                "Catalog events not recorded because their message caused more than events::MAX_PER_MESSAGE.",
            ),
            writer_backlog: register(
                &registry,
                IntGaugeVec::new(Opts::new("event_router_writer_backlog", "Events a writer has not yet confirmed (counted up to 100,000)."), &["writer"]),
            ),
            writer_oldest_age_seconds: register(
                &registry,
                prometheus::GaugeVec::new(
                    Opts::new("event_router_writer_oldest_undelivered_age_seconds", "Age of the oldest event a writer has not yet confirmed; 0 when none."),
                    &["writer"],
                ),
            ),
            writer_delivered: counters("event_router_writer_delivered_total", "Events a writer confirmed.", &["writer"]),
            writer_errors: counters("event_router_writer_errors_total", "Batches a writer or its dispatcher failed, to be tried again.", &["writer"]),
            hook_runs: counters(
                "event_router_hook_runs_total",
                "Hook command runs, by hook and result (ok, failed, and given_up once its attempts are spent).",
                &["hook", "result"],
            ),
            build_info: register(
                &registry,
                IntGaugeVec::new(Opts::new("event_router_build_info", "Always 1; labels say which build is running."), &["version"]),
            ),
            registry,
        };
        metrics.build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        metrics.initialise_series(topics);
        metrics
    }

    /// Creates every series whose labels are known at start.
    fn initialise_series(&self, topics: &[KnownTopic]) {
        let unknown = KnownTopic { name: UNKNOWN_TOPIC_LABEL.into(), handler_reasons: &[] };
        for topic in topics.iter().chain([&unknown]) {
            let name = topic.name.as_str();
            self.consumed.with_label_values(&[name]);
            for outcome in Outcome::ALL {
                self.processed.with_label_values(&[name, outcome.as_str()]);
            }
            let built_in = Reason::BUILT_IN.iter().map(|r| r.code());
            for reason in built_in.chain(topic.handler_reasons.iter().copied()) {
                self.dead_letters.with_label_values(&[name, reason]);
            }
        }
        for topic in topics {
            for histogram in [&self.handler_seconds, &self.transaction_seconds, &self.end_to_end_seconds] {
                histogram.with_label_values(&[topic.name.as_str()]);
            }
        }
        for step in RetryStep::ALL {
            self.retries.with_label_values(&[step.as_str()]);
        }
        for result in PublishResult::ALL {
            self.stream_published.with_label_values(&[result.as_str()]);
        }
        for kind in RebalanceKind::ALL {
            self.rebalances.with_label_values(&[kind.as_str()]);
        }
        for event in crate::events::catalog::CATALOG {
            self.events_emitted.with_label_values(&[event.name, event.severity.as_str()]);
            self.events_folded.with_label_values(&[event.name]);
        }
    }

    /// The registry in Prometheus text format.
    pub(crate) fn render(&self) -> String {
        let mut buffer = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buffer).expect("text encoding cannot fail");
        String::from_utf8(buffer).expect("prometheus text is UTF-8")
    }
}
