//! Demo traffic for `make run`: a steady mix of valid and invalid messages, and a watcher that
//! prints what came out on the stream (routed messages and catalog events) and dead-letter
//! topics, so a newcomer sees the service work.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use event_router::config::{KafkaConfig, TopicConfig};
use event_router::dead_letter;
use event_router::message::RawMessage;
use event_router::producer::{EventProducer, IdentityHeader, Outgoing};
use event_router::topics::REGISTRY;
use samples::TopicSamples;

/// One demo message: where it goes, what it is, and what the service should do with it.
pub(crate) struct DemoCase {
    pub topic_key: &'static str,
    pub outgoing: Outgoing,
    pub expect: &'static str,
}

/// Every topic's samples, from the registry: the demo's valid traffic cycles through them, so a
/// new topic shows up in `make run` without a line here.
pub(crate) struct DemoTopics(Vec<(&'static str, TopicSamples)>);

impl DemoTopics {
    pub(crate) fn from_registry() -> DemoTopics {
        DemoTopics(REGISTRY.iter().map(|topic| (topic.key, TopicSamples::new(topic.schema, topic.examples))).collect())
    }

    /// Sample `n` of the topic `key`, which the demo's rejection cases use.
    fn sample(&self, key: &str, n: u64) -> Value {
        let (_, samples) = self.0.iter().find(|(k, _)| *k == key).unwrap_or_else(|| panic!("the demo needs topic `{key}`"));
        samples.payload(n)
    }
}

/// The `n`-th demo message, its identifiers varied by `base + n`. Six in ten are valid, taking
/// every topic in turn; the rest cycle through the rejection reasons.
pub(crate) fn demo_case(topics: &DemoTopics, n: u64, base: u64) -> DemoCase {
    let user = || IdentityHeader::Document(samples::user_identity("12345"));
    let key = |k: &str| Some(format!("{k}-{n}"));
    let invalid =
        |topic_key: &'static str, outgoing: Outgoing, reason: &'static str| DemoCase { topic_key, outgoing, expect: reason };
    let varied = base.wrapping_add(n);
    let todo = topics.sample("todo-created", varied);
    match n % 10 {
        slot @ 0..=5 => {
            let turn = n / 10 * 6 + slot;
            let (topic_key, samples) = &topics.0[(turn % topics.0.len() as u64) as usize];
            let (payload, record_key) = match *topic_key {
                // Keyed by the host: its reports stay in order on one partition.
                "host-status-changed" => {
                    let report = host_life(samples, base, turn / topics.0.len() as u64);
                    let host = report["host_id"].as_str().map(str::to_owned);
                    (report, host)
                }
                _ => (samples.payload(varied), key(topic_key)),
            };
            DemoCase { topic_key, outgoing: Outgoing { key: record_key, ..Outgoing::json(&payload, user()) }, expect: "stream" }
        }
        slot => match ((n / 10) * 4 + (slot - 6)) % 8 {
            0 => invalid(
                "todo-created",
                Outgoing::json(&todo, IdentityHeader::Encoded("not*base64".into())),
                "identity_not_base64",
            ),
            1 => invalid(
                "todo-created",
                Outgoing::json(&todo, IdentityHeader::Document(json!({"identity": {"type": "User", "user": {}}}))),
                "identity_org_id_missing",
            ),
            2 => invalid(
                "host-status-changed",
                Outgoing::json(
                    &topics.sample("host-status-changed", varied),
                    IdentityHeader::Document(samples::identity_of_type("Robot", "1")),
                ),
                "identity_type_unknown",
            ),
            3 => invalid(
                "todo-created",
                Outgoing { value: b"{\"id\": 1, oops".to_vec(), ..Outgoing::json(&todo, user()) },
                "payload_not_json",
            ),
            4 => invalid(
                "todo-created",
                Outgoing::json(&json!({"id": 1, "title": "x".repeat(300), "description": "too long a title"}), user()),
                "schema_violation",
            ),
            5 => {
                let mut bad = topics.sample("host-status-changed", varied);
                bad["host_id"] = json!("not-a-uuid");
                invalid("host-status-changed", Outgoing::json(&bad, user()), "schema_violation")
            }
            6 => {
                let mut contradictory = topics.sample("cluster-install-progressed", varied);
                contradictory["stage"] = json!("installed");
                contradictory["progress"] = json!(42);
                invalid("cluster-install-progressed", Outgoing::json(&contradictory, user()), "stage_progress_mismatch")
            }
            _ => invalid("demo-unknown", Outgoing::json(&json!({"hello": "world"}), user()), "unknown_topic"),
        },
    }
}

/// Host report `k` of the demo: each host is reported four times, moving from discovering to
/// known to installing to error, its NTP validation failing and then passing, so that `make run`
/// shows every kind of host event (registered, validation failed and fixed, status updated,
/// failed), not only hosts seen once.
fn host_life(samples: &TopicSamples, base: u64, k: u64) -> Value {
    const LIFE: [(&str, &str, &str); 4] = [
        ("discovering", "failure", "Waiting for the host's clock to synchronize"),
        ("known", "success", "Host is ready to be installed"),
        ("installing", "success", "Writing the image to disk"),
        ("error", "success", "Failed to write the image: disk /dev/sda is read-only"),
    ];
    let (status, ntp, status_info) = LIFE[(k % 4) as usize];
    let mut report = samples.payload(base.wrapping_add(k / 4));
    report["status"] = json!(status);
    report["status_info"] = json!(status_info);
    report["updated_at"] = json!(format!("2026-11-23T10:00:0{}Z", k % 4));
    report["validations"] = json!([{"id": "ntp-synced", "status": ntp, "message": "NTP is not synchronized"}]);
    report
}

/// Sends demo traffic at `rate` messages per second until `stop` (or `count` messages).
pub(crate) async fn run(
    kafka: &KafkaConfig,
    topics: &TopicConfig,
    rate: f64,
    count: Option<u64>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let producer = EventProducer::new(kafka, topics)?;
    let watcher = tokio::spawn(watch(kafka.clone(), topics.clone(), stop.clone()));
    // Each run's identifiers differ from the last run's: a second demo against the same database
    // would otherwise reuse todo ids, which the service rightly refuses.
    let base = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() * 1000;
    let demo_topics = DemoTopics::from_registry();
    let interval = Duration::from_secs_f64(1.0 / rate.max(0.01));
    let mut n = 0u64;
    while count.is_none_or(|c| n < c) && !stop.is_cancelled() {
        let case = demo_case(&demo_topics, n, base);
        let message = producer.build(case.topic_key, &case.outgoing);
        match producer.send_raw(&message).await {
            Ok(sent) => println!("→ sent   {:<45} expect {:<24} request {}", sent.topic, case.expect, sent.request_id),
            Err(error) => println!("→ failed {:<45} {error}", message.topic),
        }
        n += 1;
        tokio::select! { _ = stop.cancelled() => break, _ = tokio::time::sleep(interval) => {} }
    }
    if count.is_some() {
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    stop.cancel();
    let _ = watcher.await;
    Ok(())
}

/// Prints each event on the stream and dead-letter topics.
async fn watch(kafka: KafkaConfig, topics: TopicConfig, stop: CancellationToken) {
    let mut config = event_router::kafka::client_config(&kafka);
    config
        .set("group.id", format!("event-router-demo-watch-{}", uuid::Uuid::new_v4()))
        .set("auto.offset.reset", "latest")
        .set("enable.auto.commit", "false");
    let consumer: StreamConsumer = match config.create() {
        Ok(consumer) => consumer,
        Err(error) => return eprintln!("demo watcher: {error}"),
    };
    let (stream, dlq) = (topics.stream(), topics.dead_letter());
    if let Err(error) = consumer.subscribe(&[&stream, &dlq]) {
        return eprintln!("demo watcher: {error}");
    }
    let mut topic_names = event_router::message::TopicNames::default();
    loop {
        let received = tokio::select! { _ = stop.cancelled() => return, m = consumer.recv() => m };
        let Ok(message) = received else { continue };
        let raw = RawMessage::from_kafka(&message, event_router::message::HeaderLimits::UNBOUNDED, &mut topic_names);
        let text = |h: &str| raw.header(h).map(|v| String::from_utf8_lossy(v).into_owned()).unwrap_or_default();
        if message.topic() == stream {
            let event: Value = serde_json::from_slice(raw.payload.as_deref().unwrap_or_default()).unwrap_or_default();
            if event["metadata"]["kind"] == event_router::events::stream::KIND {
                println!(
                    "← event  {:<8} {:<32} {}",
                    event["payload"]["severity"].as_str().unwrap_or("?"),
                    event["name"].as_str().unwrap_or("?"),
                    event["payload"]["message"].as_str().unwrap_or("?").chars().take(120).collect::<String>()
                );
                continue;
            }
            println!(
                "← stream {:<45} name {:<24} request {}",
                event["metadata"]["source"]["topic"].as_str().unwrap_or("?"),
                event["name"].as_str().unwrap_or("?"),
                event["metadata"]["request_id"].as_str().unwrap_or("?"),
            );
        } else {
            println!(
                "← dlq    {:<45} reason {:<24} {}",
                text(dead_letter::ORIGINAL_TOPIC),
                text(dead_letter::REASON),
                text(dead_letter::MESSAGE).chars().take(100).collect::<String>()
            );
        }
    }
}
