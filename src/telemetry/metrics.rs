//! The service's Prometheus registry and every metric in it.
//!
//! The service uses its own registry (not the process-global default) so that tests can run
//! several instances in one process and scrape each separately.

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::envelope::Reason;

/// Outcomes of processing one message.
pub const OUTCOMES: &[&str] = &["handled", "duplicate", "dead_lettered", "skipped", "abandoned"];
/// Label used for topics that have no schema, to keep label cardinality bounded.
pub const UNKNOWN_TOPIC_LABEL: &str = "_unknown";

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
    pub rejected: IntCounterVec,
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
    pub build_info: IntGaugeVec,
}

impl Metrics {
    /// Registers every metric and initialises the label values known at start (topics,
    /// outcomes, reasons) so every series exists from the first scrape.
    pub fn new(topics: &[KnownTopic]) -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let metric = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry.register(Box::new(metric.clone())).expect("unique metric");
            metric
        };
        let consumed = counter("event_router_messages_consumed_total", "Messages read from Kafka.", &["topic"]);
        let processed = counter(
            "event_router_messages_processed_total",
            "Messages that reached an outcome: handled, duplicate, dead_lettered, skipped, or abandoned at shutdown or revoke.",
            &["topic", "outcome"],
        );
        let rejected = counter(
            "event_router_validation_failures_total",
            "Messages rejected before or by their handler, by reason code.",
            &["topic", "reason"],
        );
        let dead_letters = counter(
            "event_router_dead_letters_total",
            "Messages published to the dead-letter topic, by reason code.",
            &["topic", "reason"],
        );
        let retries =
            counter("event_router_retries_total", "Retries after a transient failure, by the step that failed.", &["step"]);
        let stream_published = counter(
            "event_router_stream_publish_total",
            "Attempts to publish an enriched event to the stream topic, by result.",
            &["result"],
        );
        let rebalances = counter("event_router_rebalances_total", "Consumer group rebalances seen, by kind.", &["kind"]);
        let consumer_errors = IntCounter::new("event_router_consumer_errors_total", "Errors returned by the Kafka consumer.")
            .expect("valid metric");
        registry.register(Box::new(consumer_errors.clone())).expect("unique metric");
        let budget_exhausted = IntCounter::new(
            "event_router_memory_budget_exhausted_total",
            "Times fetching paused because messages held in the service reached MAX_BUFFERED_BYTES.",
        )
        .expect("valid metric");
        registry.register(Box::new(budget_exhausted.clone())).expect("unique metric");
        let stream_undeliverable = IntCounter::new(
            "event_router_stream_undeliverable_total",
            "Stream events Kafka refused for good, parked in the stream_undeliverable table.",
        )
        .expect("valid metric");
        registry.register(Box::new(stream_undeliverable.clone())).expect("unique metric");
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            let metric = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), &["topic"]).expect("valid metric");
            registry.register(Box::new(metric.clone())).expect("unique metric");
            metric
        };
        let fast = vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];
        let handler_seconds =
            histogram("event_router_handler_duration_seconds", "Time spent in the topic's handler, per topic.", fast.clone());
        let transaction_seconds = histogram(
            "event_router_db_transaction_duration_seconds",
            "Time from opening a message's database transaction (inbox, handler, outbox) to its commit, per topic.",
            fast,
        );
        let end_to_end_seconds = histogram(
            "event_router_end_to_end_latency_seconds",
            "Time from a message's Kafka timestamp to the commit of its effects, per topic.",
            // Fine around 50 ms, the latency objective at steady load, so its quantiles are read
            // off buckets rather than interpolated across 50-100 ms.
            vec![0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0],
        );
        let consumer_lag = IntGaugeVec::new(
            Opts::new("event_router_consumer_lag", "Messages between the consumer's position and the partition's end."),
            &["topic", "partition"],
        )
        .expect("valid metric");
        registry.register(Box::new(consumer_lag.clone())).expect("unique metric");
        let transaction_messages = Histogram::with_opts(
            HistogramOpts::new(
                "event_router_transaction_messages",
                "Messages written per database transaction (a partition's backlog is written in batches).",
            )
            .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]),
        )
        .expect("valid metric");
        registry.register(Box::new(transaction_messages.clone())).expect("unique metric");
        let outbox_backlog =
            IntGauge::new("event_router_outbox_backlog", "Stream events waiting in the outbox.").expect("valid metric");
        registry.register(Box::new(outbox_backlog.clone())).expect("unique metric");
        let outbox_oldest_age_seconds = Gauge::new(
            "event_router_outbox_oldest_age_seconds",
            "Age of the oldest event waiting in the outbox; 0 when it is empty.",
        )
        .expect("valid metric");
        registry.register(Box::new(outbox_oldest_age_seconds.clone())).expect("unique metric");
        let in_flight =
            IntGauge::new("event_router_messages_in_flight", "Messages read but not yet fully processed.").expect("valid metric");
        registry.register(Box::new(in_flight.clone())).expect("unique metric");
        let build_info =
            IntGaugeVec::new(Opts::new("event_router_build_info", "Always 1; labels say which build is running."), &["version"])
                .expect("valid metric");
        registry.register(Box::new(build_info.clone())).expect("unique metric");
        build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);

        let unknown = KnownTopic { name: UNKNOWN_TOPIC_LABEL.into(), handler_reasons: &[] };
        for topic in topics.iter().chain([&unknown]) {
            let name = topic.name.as_str();
            consumed.with_label_values(&[name]);
            for outcome in OUTCOMES {
                processed.with_label_values(&[name, outcome]);
            }
            let built_in = Reason::BUILT_IN.iter().map(|r| r.code());
            for reason in built_in.chain(topic.handler_reasons.iter().copied()) {
                rejected.with_label_values(&[name, reason]);
                dead_letters.with_label_values(&[name, reason]);
            }
        }
        for topic in topics {
            for histogram in [&handler_seconds, &transaction_seconds, &end_to_end_seconds] {
                histogram.with_label_values(&[topic.name.as_str()]);
            }
        }
        for step in ["database", "stream", "dead_letter", "handler"] {
            retries.with_label_values(&[step]);
        }
        for result in ["ok", "error"] {
            stream_published.with_label_values(&[result]);
        }
        for kind in ["assign", "revoke", "error"] {
            rebalances.with_label_values(&[kind]);
        }

        Metrics {
            registry,
            consumed,
            processed,
            rejected,
            dead_letters,
            retries,
            stream_published,
            handler_seconds,
            transaction_seconds,
            end_to_end_seconds,
            consumer_lag,
            transaction_messages,
            outbox_backlog,
            outbox_oldest_age_seconds,
            in_flight,
            rebalances,
            consumer_errors,
            budget_exhausted,
            stream_undeliverable,
            build_info,
        }
    }

    /// The registry in Prometheus text format.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buffer).expect("text encoding cannot fail");
        String::from_utf8(buffer).expect("prometheus text is UTF-8")
    }
}
