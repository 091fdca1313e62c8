//! The stream goes through the transactional outbox: consumption and database writes go on while
//! the stream broker is down, and the backlog drains, in order per key, when it is back.

use std::collections::HashMap;
use std::time::Duration;

use dev_broker::DevBroker;
use event_router::producer::{IdentityHeader, Outgoing};
use serde_json::Value;
use testkit::{eventually, spawn_app_with, TestApp};

const WAIT: Duration = Duration::from_secs(30);

/// The service, with its stream on a cluster of its own (the stream topic with `partitions`)
/// whose broker is down.
async fn app_with_stream_down(partitions: i32) -> (DevBroker, TestApp) {
    let stream_cluster = DevBroker::start(1).unwrap();
    stream_cluster.create_topic("platform.event-router.events-stream", partitions).unwrap();
    stream_cluster.broker_down(1).unwrap();
    let app = spawn_app_with(&[
        ("EVENT_STREAM_BROKERS", stream_cluster.bootstrap_servers()),
        ("EVENT_STREAM_PUBLISH_TIMEOUT_MS", "500"),
    ])
    .await;
    (stream_cluster, app)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_outage_stops_nothing_and_the_backlog_drains_in_order() {
    let (stream_cluster, app) = app_with_stream_down(2).await;

    let identity = || IdentityHeader::Document(samples::user_identity("5"));
    let keys = ["alpha", "beta"];
    for id in 0..8u32 {
        let key = keys[id as usize % 2];
        app.send("todo-created", &Outgoing { key: Some(key.into()), ..Outgoing::json(&testkit::todo(id), identity()) }).await;
    }
    eventually(WAIT, "all todos stored while the stream is down", || async { app.db.count("todos").await == 8 }).await;
    eventually(WAIT, "a failed publish was counted", || async {
        app.metric("event_router_stream_publish_total", &[("result", "error")]).await >= 1.0
    })
    .await;
    let (waiting, _) = event_router::outbox::backlog(&app.db.pool).await.unwrap();
    assert_eq!(waiting, 8, "every event waits in the outbox");
    assert_eq!(
        app.metric("event_router_messages_processed_total", &[("topic", &app.topic("todo-created")), ("outcome", "handled")])
            .await,
        8.0
    );

    stream_cluster.broker_up(1).unwrap();
    eventually(WAIT, "the outbox drains once the stream is back", || async { app.db.count("outbox").await == 0 }).await;

    let events = testkit::read_topic(stream_cluster.bootstrap_servers(), "platform.event-router.events-stream", 8, WAIT).await;
    // At least once, in order per key: the first appearance of each todo follows source order.
    let mut seen: HashMap<String, Vec<i64>> = HashMap::new();
    for event in &events {
        let body: Value = serde_json::from_slice(event.payload.as_deref().unwrap()).unwrap();
        let key = body["metadata"]["source"]["key"].as_str().unwrap().to_string();
        let offset = body["metadata"]["source"]["offset"].as_i64().unwrap();
        let offsets = seen.entry(key).or_default();
        if !offsets.contains(&offset) {
            offsets.push(offset);
        }
    }
    for (key, offsets) in &seen {
        let mut sorted = offsets.clone();
        sorted.sort();
        assert_eq!(offsets, &sorted, "events of key {key} are published in source order");
        assert_eq!(offsets.len(), 4, "every event of key {key} was published");
    }
    app.stop().await;
}

/// Migration 0005 packs a transaction's events into one outbox row; a row an older release wrote
/// (one event in its own columns) during a rolling upgrade is still published, before the newer
/// rows, with its headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_an_older_release_wrote_are_relayed_in_order_with_packed_ones() {
    let (stream_cluster, app) = app_with_stream_down(1).await;
    sqlx::query(
        "INSERT INTO outbox (topic, message_key, payload, headers, source_topic, source_partition, source_offset)
         VALUES ('platform.event-router.events-stream', 'alpha', '{\"legacy\": true}',
                 '[[\"x-rh-insights-request-id\", \"legacy-request\"]]', 'old-topic', 0, 7)",
    )
    .execute(&app.db.pool)
    .await
    .unwrap();
    let identity = || IdentityHeader::Document(samples::user_identity("5"));
    for id in 0..2u32 {
        app.send("todo-created", &Outgoing { key: Some("alpha".into()), ..Outgoing::json(&testkit::todo(id), identity()) }).await;
    }
    eventually(WAIT, "both todos stored", || async { app.db.count("todos").await == 2 }).await;
    assert_eq!(event_router::outbox::backlog(&app.db.pool).await.unwrap().0, 3, "one old row and the new events wait");

    stream_cluster.broker_up(1).unwrap();
    eventually(WAIT, "the outbox drains", || async { app.db.count("outbox").await == 0 }).await;
    let events = testkit::read_topic(stream_cluster.bootstrap_servers(), "platform.event-router.events-stream", 3, WAIT).await;
    let mut first_seen: Vec<Value> = Vec::new();
    for event in &events {
        let body: Value = serde_json::from_slice(event.payload.as_deref().unwrap()).unwrap();
        if !first_seen.contains(&body) {
            first_seen.push(body);
        }
    }
    assert_eq!(first_seen.len(), 3, "every event was published: {first_seen:?}");
    assert_eq!(first_seen[0], serde_json::json!({"legacy": true}), "the older row first");
    let legacy = events.iter().find(|e| e.payload.as_deref() == Some(br#"{"legacy": true}"#.as_slice())).unwrap();
    assert_eq!(legacy.key.as_deref(), Some(b"alpha".as_slice()));
    assert_eq!(legacy.header("x-rh-insights-request-id"), Some(b"legacy-request".as_slice()));
    let ids: Vec<i64> = first_seen[1..].iter().map(|body| body["payload"]["id"].as_i64().unwrap()).collect();
    assert_eq!(ids, [0, 1], "then the new events, in source order");
    app.stop().await;
}

#[test]
fn invalid_stream_settings_stop_start_up_naming_the_setting() {
    for (setting, value) in [("EVENT_STREAM_BROKERS", "no-port-here"), ("EVENT_STREAM_PUBLISH_TIMEOUT_MS", "soon")] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_event-router"))
            .arg("run")
            .env(setting, value)
            .env("LOG_FORMAT", "text")
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(&format!("configuration setting {setting}")), "{stderr}");
    }
}

/// An event the stream broker refuses for good (its own record limit is lower than the
/// service's) is parked in `stream_undeliverable`, without the identity header, and the events
/// behind it are published: one such event does not stop the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_refused_for_good_is_parked_and_the_stream_goes_on() {
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let stream_cluster = DevBroker::start(1).unwrap();
    let stream_topic = "platform.event-router.events-stream";
    stream_cluster.create_topic(stream_topic, 1).unwrap();
    // The stream cluster answers the next produce requests with "record too large".
    stream_cluster.push_request_errors(RDKafkaApiKey::Produce, &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE; 3]);
    let app = spawn_app_with(&[("EVENT_STREAM_BROKERS", stream_cluster.bootstrap_servers())]).await;
    let identity = || IdentityHeader::Document(samples::user_identity("5"));
    let send = |id: u32| Outgoing {
        key: Some(format!("k{id}")),
        request_id: Some(format!("req-{id}")),
        ..Outgoing::json(&testkit::todo(id), identity())
    };

    app.send("todo-created", &send(1)).await;
    eventually(WAIT, "the refused event is parked", || async { app.db.count("stream_undeliverable").await >= 1 }).await;
    for id in 2..=4 {
        app.send("todo-created", &send(id)).await;
    }
    eventually(WAIT, "the outbox drains", || async { app.db.count("outbox").await == 0 }).await;
    let parked: Vec<(String, Option<String>, String)> =
        sqlx::query_as("SELECT topic, request_id, error FROM stream_undeliverable ORDER BY id")
            .fetch_all(&app.db.pool)
            .await
            .unwrap();
    assert!(!parked.is_empty() && parked.len() <= 3, "{parked:?}");
    assert!(
        parked.iter().all(|(topic, _, error)| topic == stream_topic && error.to_lowercase().contains("too large")),
        "{parked:?}"
    );
    assert_eq!(parked[0].1.as_deref(), Some("req-1"));
    let parked_ids: Vec<String> = parked.iter().filter_map(|(_, id, _)| id.clone()).collect();
    // Every event not parked reached the stream.
    let expected = 4 - parked.len();
    let events = testkit::read_topic(stream_cluster.bootstrap_servers(), stream_topic, expected, WAIT).await;
    for event in &events {
        let request_id = testkit::header(event, event_router::envelope::REQUEST_ID_HEADER).unwrap();
        assert!(!parked_ids.contains(&request_id), "{request_id} was both parked and published");
    }
    assert_eq!(app.metric("event_router_stream_undeliverable_total", &[]).await, parked.len() as f64);
    app.stop().await;
}

/// The relay's publisher queues a whole batch and matches each delivery report to its record by
/// the record's place in the batch and the batch's generation: results come back in order, a
/// record refused when queued fails alone, and the late report of a batch given up on (a
/// shutdown deadline) is not taken for a record of the next batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_batch_publisher_matches_each_report_to_its_record_even_after_a_batch_was_given_up() {
    use event_router::kafka::{BatchPublisher, Record, MAX_RECORD_BYTES};
    use event_router::message::HeaderRef;
    use rdkafka::types::RDKafkaErrorCode;

    let cluster = DevBroker::start(1).unwrap();
    cluster.create_topic("batches", 2).unwrap();
    let config = testkit::test_config(cluster.bootstrap_servers(), "postgres://unused", "unused", &[]);
    let publisher = BatchPublisher::new(&config.kafka, Duration::from_secs(10), Duration::from_millis(5)).unwrap();
    let headers = [HeaderRef { key: "x-rh-insights-request-id", value: Some(b"r") }];
    let huge = vec![b'x'; MAX_RECORD_BYTES + 1];
    let record = |payload: &'static [u8]| Record { topic: "batches", key: Some(b"k"), payload, headers: &headers };

    let results = publisher.publish_all(&[record(b"1"), Record { payload: &huge, ..record(b"") }, record(b"2")]).await;
    let refused = results[1].as_ref().expect_err("a record over message.max.bytes is refused");
    assert_eq!(refused.rdkafka_error_code(), Some(RDKafkaErrorCode::MessageSizeTooLarge), "{refused}");
    let (first, third) = (results[0].as_ref().unwrap(), results[2].as_ref().unwrap());
    assert_eq!((third.partition, third.offset), (first.partition, first.offset + 1), "one key, in order");

    // Given up on while the broker is down; delivered once it is back, ahead of the next batch's
    // records (same key, same partition), so its report comes first.
    cluster.broker_down(1).unwrap();
    let given_up = tokio::time::timeout(Duration::from_millis(300), publisher.publish_all(&[record(b"late")])).await;
    assert!(given_up.is_err(), "the broker is down: nothing is acknowledged");
    cluster.broker_up(1).unwrap();
    let results = tokio::time::timeout(WAIT, publisher.publish_all(&[record(b"3"), record(b"4")])).await.unwrap();
    // Had the late report been taken for the first record, that result would be the late
    // record's offset (or its timeout), two before the second's.
    let offsets: Vec<i64> = results.iter().map(|r| r.as_ref().expect("delivered").offset).collect();
    assert!(offsets[0] > third.offset && offsets[1] == offsets[0] + 1, "{offsets:?} after {}", third.offset);
}
