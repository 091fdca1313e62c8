//! The first operational surface: metrics counters match what happened, probes answer.

use std::time::Duration;

use event_router::producer::{IdentityHeader, Outgoing};
use event_router::samples;
use testkit::{eventually, spawn_app};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_consumed_and_processed_messages_per_topic_and_outcome() {
    let app = spawn_app().await;
    let todo_topic = app.topic("todo-created");
    // Series exist from the first scrape, before any message.
    assert_eq!(app.metric("event_router_messages_processed_total", &[("topic", &todo_topic), ("outcome", "handled")]).await, 0.0);
    assert_eq!(app.metric("event_router_build_info", &[("version", env!("CARGO_PKG_VERSION"))]).await, 1.0);

    let user = || IdentityHeader::Document(samples::user_identity("1"));
    for id in 0..5 {
        app.send("todo-created", &Outgoing::json(&samples::todo_created(id), user())).await;
    }
    for _ in 0..2 {
        app.send("todo-created", &Outgoing::json(&serde_json::json!({"id": "x"}), user())).await;
    }
    eventually(Duration::from_secs(30), "7 messages processed", || async {
        app.metric("event_router_messages_consumed_total", &[("topic", &todo_topic)]).await == 7.0
            && app.metric("event_router_messages_in_flight", &[]).await == 0.0
    })
    .await;
    assert_eq!(app.metric("event_router_messages_processed_total", &[("topic", &todo_topic), ("outcome", "handled")]).await, 5.0);
    assert_eq!(
        app.metric("event_router_messages_processed_total", &[("topic", &todo_topic), ("outcome", "dead_lettered")]).await,
        2.0
    );
    assert_eq!(
        app.metric("event_router_validation_failures_total", &[("topic", &todo_topic), ("reason", "schema_violation")]).await,
        2.0
    );
    eventually(Duration::from_secs(30), "5 events relayed to the stream", || async {
        app.metric("event_router_stream_publish_total", &[("result", "ok")]).await == 5.0
    })
    .await;

    let (status, body) = app.get("/healthz").await;
    assert_eq!((status, body.as_str()), (200, "ok"));
    let (status, body) = app.get("/readyz").await;
    assert_eq!(status, 200, "{body}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_switched_off_publishes_nothing_but_still_handles() {
    let app = testkit::spawn_app_with(&[("EVENT_STREAM_ENABLED", "false")]).await;
    let user = IdentityHeader::Document(samples::user_identity("1"));
    app.send("todo-created", &Outgoing::json(&samples::todo_created(1), user)).await;
    eventually(Duration::from_secs(20), "todo stored", || async { app.db.count("todos").await == 1 }).await;
    let stream = testkit::drain_topic(app.broker.bootstrap_servers(), &app.topic("events-stream"), Duration::from_secs(2)).await;
    assert!(stream.is_empty(), "nothing is published when the stream is off");
    assert_eq!(app.db.count("outbox").await, 0, "and nothing waits in the outbox");
    app.stop().await;
}
