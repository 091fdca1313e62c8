//! Redelivery leaves the database unchanged: the inbox turns a second delivery into a no-op.

use std::time::Duration;

use event_router::producer::{IdentityHeader, Outgoing};
use event_router::samples;
use testkit::{eventually, spawn_app};

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consuming_everything_again_creates_no_duplicate_rows() {
    let app = spawn_app().await;
    let identity = || IdentityHeader::Document(samples::user_identity("7"));
    let per_topic = 10u64;
    for n in 0..per_topic {
        for key in ["todo-created", "host-status-changed", "cluster-install-progressed"] {
            let payload = samples::payload_for(key, n).unwrap();
            app.send(key, &Outgoing { key: Some(format!("k{n}")), ..Outgoing::json(&payload, identity()) }).await;
        }
    }
    let total = (per_topic * 3) as i64;
    eventually(WAIT, "first delivery handled", || async { app.db.count("processed_messages").await == total }).await;
    let before =
        (app.db.count("todos").await, app.db.count("host_statuses").await, app.db.count("cluster_install_progress").await);
    assert_eq!(before, (10, 10, 10));
    app.read_topic(&app.topic("events-stream"), total as usize, WAIT).await;

    // A second consumer group reads every message again from the beginning: a full redelivery.
    let again = app.spawn_sibling("event-router-redelivery").await;
    eventually(WAIT, "redelivered messages processed as duplicates", || async {
        let mut duplicates = 0.0;
        for key in ["todo-created", "host-status-changed", "cluster-install-progressed"] {
            duplicates += again
                .metric("event_router_messages_processed_total", &[("topic", &app.topic(key)), ("outcome", "duplicate")])
                .await;
        }
        duplicates == total as f64
    })
    .await;
    let after =
        (app.db.count("todos").await, app.db.count("host_statuses").await, app.db.count("cluster_install_progress").await);
    assert_eq!(after, before, "no row was added by the redelivery");
    assert_eq!(app.db.count("processed_messages").await, total);
    assert_eq!(
        again
            .metric("event_router_dead_letters_total", &[("topic", &app.topic("todo-created")), ("reason", "todo_id_taken")])
            .await,
        0.0,
        "a redelivered todo is recognised, not mistaken for a new todo with a taken id"
    );
    // The stream is at least once: the redelivery published the events again.
    app.read_topic(&app.topic("events-stream"), 2 * total as usize, WAIT).await;
    again.stop().await;
    app.stop().await;
}
