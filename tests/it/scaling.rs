//! Several instances share a group's partitions. When one joins or leaves, partitions move without
//! loss and without duplicate rows; a graceful stop commits at its last finished message.

use std::time::Duration;

use event_router::producer::{EventProducer, IdentityHeader, Outgoing};
use testkit::{eventually, spawn_app, TestApp};

const WAIT: Duration = Duration::from_secs(60);

async fn consumed(app: &TestApp) -> f64 {
    app.metric("event_router_messages_consumed_total", &[("topic", &app.topic("todo-created"))]).await
}

async fn duplicates(app: &TestApp) -> f64 {
    app.metric("event_router_messages_processed_total", &[("topic", &app.topic("todo-created")), ("outcome", "duplicate")]).await
}

/// Sends todos with these ids over 16 keys, so they spread over every partition.
async fn send_todos(producer: EventProducer, ids: std::ops::Range<u32>) {
    for id in ids {
        let identity = IdentityHeader::Document(samples::user_identity("3"));
        let outgoing = Outgoing { key: Some(format!("k{}", id % 16)), ..Outgoing::json(&testkit::todo(id), identity) };
        producer.send_raw(&producer.build("todo-created", &outgoing)).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_share_partitions_and_hand_them_over_without_loss_or_duplicate_rows() {
    share_partitions_and_hand_them_over(spawn_app().await).await;
}

/// Group scaling on any broker (see also `tansu.rs`): `first` is an instance in group
/// `event-router-test`.
pub async fn share_partitions_and_hand_them_over(first: TestApp) {
    send_todos(first.producer(), 0..300).await;
    eventually(WAIT, "the first instance handled the first batch", || async { first.db.count("todos").await == 300 }).await;

    // A second instance joins while messages flow: the first gives up partitions mid-stream.
    let sending = tokio::spawn(send_todos(first.producer(), 300..900));
    let second = first.spawn_sibling("event-router-test").await;
    sending.await.unwrap();
    eventually(WAIT, "all todos stored by the pair", || async { first.db.count("todos").await == 900 }).await;
    eventually(WAIT, "both instances own partitions", || async { consumed(&second).await > 0.0 && consumed(&first).await > 0.0 })
        .await;

    // A join may redo what the first instance finished since its last commit: the embedded broker
    // refuses commits while a rebalance is in progress (RebalanceInProgress), so the commit on
    // revoke cannot land there. The inbox makes the redo harmless: the row counts are exact.

    // The first instance leaves gracefully; the second takes everything over.
    let second_db = second.db.clone();
    first.stop().await;
    send_todos(second.producer(), 900..1000).await;
    eventually(WAIT, "the survivor handled the rest", || async { second_db.count("todos").await == 1000 }).await;
    assert_eq!(second_db.inbox_entries().await, 1000);
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_restart_commits_at_the_last_finished_message() {
    let first = spawn_app().await;
    send_todos(first.producer(), 0..200).await;
    eventually(WAIT, "all todos stored", || async { first.db.count("todos").await == 200 }).await;
    let (broker, db) = (first.broker.clone(), first.db.clone());
    first.stop().await;

    let second = TestApp::spawn(broker, db.clone(), "event-router-test", &[]).await;
    eventually(WAIT, "the restarted instance joined", || async { second.get("/readyz").await.0 == 200 }).await;
    send_todos(second.producer(), 200..210).await;
    eventually(WAIT, "new todos stored", || async { db.count("todos").await == 210 }).await;
    assert_eq!(consumed(&second).await, 10.0, "only the new messages are delivered after a graceful stop");
    assert_eq!(duplicates(&second).await, 0.0);
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_commits_and_exits_zero() {
    // Only the service process consumes: a broker and a database, no in-process instance.
    let db = std::sync::Arc::new(testkit::TestDb::create().await);
    let broker = testkit::start_broker(&testkit::test_config("127.0.0.1:1", &db.url, "probe", &[]));
    let config = testkit::test_config(broker.bootstrap_servers(), &db.url, "sigterm", &[]);
    let producer = || EventProducer::new(&config.kafka, &config.topics).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut service = tokio::process::Command::new(env!("CARGO_BIN_EXE_event-router"))
        .arg("run")
        .env("KAFKA_BROKERS", broker.bootstrap_servers())
        .env("KAFKA_GROUP_ID", "sigterm")
        .env("DATABASE_URL", &db.url)
        .env("METRICS_ADDR", format!("127.0.0.1:{port}"))
        .env("API_ADDR", "127.0.0.1:0")
        .env("LOG_FORMAT", "json")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    eventually(WAIT, "the service is ready", || async {
        tokio::net::TcpStream::connect(addr).await.is_ok() && testkit::http_get(addr, "/readyz").await.0 == 200
    })
    .await;
    send_todos(producer(), 0..200).await;
    eventually(WAIT, "todos stored", || async { db.count("todos").await == 200 }).await;

    let pid = service.id().unwrap().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = tokio::time::timeout(Duration::from_secs(20), service.wait()).await.expect("exits within the deadline").unwrap();
    assert_eq!(status.code(), Some(0), "a SIGTERM ends the service cleanly");

    // The same group starts right after the last finished message.
    let again = TestApp::spawn(broker, db.clone(), "sigterm", &[]).await;
    eventually(WAIT, "restarted", || async { again.get("/readyz").await.0 == 200 }).await;
    send_todos(again.producer(), 200..205).await;
    eventually(WAIT, "new todos stored", || async { db.count("todos").await == 205 }).await;
    assert_eq!(consumed(&again).await, 5.0, "nothing the stopped service finished is delivered again");
    again.stop().await;
}
