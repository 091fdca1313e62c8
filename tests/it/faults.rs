//! Fault injection: the database drops the service's connections and the broker fails requests or
//! goes away while messages flow. The service retries and, once the faults stop, has lost and
//! duplicated nothing.

use std::time::Duration;

use event_router::kafka::Publisher;
use event_router::message::header_refs;
use event_router::producer::{EventProducer, IdentityHeader, Outgoing};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use testkit::{eventually, spawn_app, TestApp};

const WAIT: Duration = Duration::from_secs(90);
const TOPICS: [&str; 3] = ["todo-created", "host-status-changed", "cluster-install-progressed"];

/// Sends `count` valid messages spread over the three topics and many keys, and every tenth an
/// invalid one (a schema violation). The test's own producer waits up to two minutes for each
/// acknowledgement: under injected broker faults on a loaded machine librdkafka's usual 30 s
/// delivery timeout can expire, which would fail the test for the sender, not the service.
fn send_mix(app: &TestApp, count: u64) -> impl std::future::Future<Output = ()> + 'static {
    let producer = app.producer();
    let publisher = Publisher::with_timeout(&app.config.kafka, Duration::from_secs(120)).unwrap();
    async move { send_with(producer, publisher, count).await }
}

async fn send_with(producer: EventProducer, publisher: Publisher, count: u64) {
    for n in 0..count {
        let identity = IdentityHeader::Document(samples::user_identity("9"));
        let key = Some(format!("k{}", n % 32));
        let (topic, outgoing) = if n % 10 == 9 {
            ("todo-created", Outgoing { key, ..Outgoing::json(&serde_json::json!({"id": n}), identity) })
        } else {
            let topic = TOPICS[(n % 3) as usize];
            (topic, Outgoing { key, ..Outgoing::json(&testkit::sample(topic, n), identity) })
        };
        let message = producer.build(topic, &outgoing);
        publisher
            .publish(
                &message.topic,
                message.key.as_deref(),
                message.payload.as_deref().unwrap_or_default(),
                &header_refs(&message.headers),
            )
            .await
            .unwrap();
    }
}

/// Every table holds exactly what was sent.
async fn assert_exact(app: &TestApp, count: u64) {
    let invalid = (0..count).filter(|n| n % 10 == 9).count() as i64;
    let valid = count as i64 - invalid;
    eventually(WAIT, "everything processed", || async {
        app.db.inbox_entries().await == valid && app.db.count("dead_letters").await == invalid
    })
    .await;
    let per_topic = |t: u64| (0..count).filter(|n| n % 10 != 9 && n % 3 == t).count() as i64;
    assert_eq!(app.db.count("todos").await, per_topic(0));
    assert_eq!(app.db.count("host_statuses").await, per_topic(1));
    assert_eq!(app.db.count("cluster_install_progress").await, per_topic(2), "append-only: no duplicate");
    eventually(WAIT, "outbox drained", || async { app.db.count("outbox").await == 0 }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_connections_terminated_mid_flow_lose_and_duplicate_nothing() {
    let app = spawn_app().await;
    let sending = tokio::spawn(send_mix(&app, 600));
    let mut terminated = 0i64;
    while !sending.is_finished() {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let killed: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                                   WHERE datname = current_database() AND application_name = $1) AS t",
        )
        .bind(event_router::store::APPLICATION_NAME)
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
        terminated += killed;
    }
    sending.await.unwrap();
    assert!(terminated > 0, "the service's sessions were terminated");
    assert_exact(&app, 600).await;
    assert!(app.metric("event_router_retries_total", &[("step", "database")]).await >= 1.0, "failures were retried");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_request_errors_and_an_outage_lose_and_duplicate_nothing() {
    let app = spawn_app().await;
    // Produce requests fail for a while: dead-letter publishes and the outbox relay retry.
    let errors = vec![RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION; 30];
    let sending = tokio::spawn(send_mix(&app, 300));
    tokio::time::sleep(Duration::from_millis(300)).await;
    app.broker.embedded().push_request_errors(RDKafkaApiKey::Produce, &errors);
    app.broker
        .embedded()
        .push_request_errors(RDKafkaApiKey::OffsetCommit, &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_COORDINATOR_NOT_AVAILABLE; 5]);
    // Then the broker goes away for three seconds.
    tokio::time::sleep(Duration::from_millis(500)).await;
    app.broker.embedded().broker_down(1).unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    app.broker.embedded().broker_up(1).unwrap();
    sending.await.unwrap();
    assert_exact(&app, 300).await;
    let stream = testkit::drain_topic(app.broker.bootstrap_servers(), &app.topic("events-stream"), Duration::from_secs(3)).await;
    let distinct = |kind: &str| -> std::collections::HashSet<_> {
        stream.iter().filter(|m| testkit::stream_kind(m).as_deref() == Some(kind)).map(|m| m.payload.clone()).collect()
    };
    assert_eq!(distinct("message").len(), 270, "every handled message reached the stream");
    assert_eq!(distinct("event").len() as i64, app.db.count("events").await, "every catalog event reached the stream");
    app.stop().await;
}
