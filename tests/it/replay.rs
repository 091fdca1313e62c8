//! `event-router replay` re-injects dead letters once their cause is fixed; replaying twice has
//! no second effect.

use std::process::Command;
use std::time::Duration;

use testkit::{eventually, TestApp};

use crate::handler_retries::{app_waiting_for_orgs, todo};

const WAIT: Duration = Duration::from_secs(30);

fn replay(app: &TestApp, args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_event-router"))
        .arg("replay")
        .args(args)
        .env("KAFKA_BROKERS", app.broker.bootstrap_servers())
        .env("DATABASE_URL", &app.db.url)
        .env("LOG_FORMAT", "text")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "replay failed: {stdout}{}", String::from_utf8_lossy(&output.stderr));
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_fixed_dead_letters_applies_them_once() {
    let app = app_waiting_for_orgs(&[("HANDLER_MAX_ATTEMPTS", "2"), ("RETRY_MAX_BACKOFF_MS", "200")]).await;

    // Three todos of an unregistered org are dead-lettered; one schema violation too.
    for id in 1..=3 {
        app.send("todo-created", &todo(id, "acme")).await;
    }
    app.send(
        "todo-created",
        &event_router::producer::Outgoing::json(
            &serde_json::json!({"id": 9}),
            event_router::producer::IdentityHeader::Document(samples::user_identity("acme")),
        ),
    )
    .await;
    eventually(WAIT, "four dead letters recorded", || async { app.db.count("dead_letters").await == 4 }).await;

    // A dry run changes nothing; a filter picks only the handler's reason.
    let out = replay(&app, &["--reason", "org_not_registered", "--dry-run"]);
    assert!(out.contains("3 matched, 3 replayed"), "{out}");
    let unreplayed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM dead_letters WHERE replayed_at IS NULL").fetch_one(&app.db.pool).await.unwrap();
    assert_eq!(unreplayed, 4);

    // The org is registered (the fix); the replay applies the three todos.
    sqlx::query("INSERT INTO known_orgs VALUES ('acme')").execute(&app.db.pool).await.unwrap();
    let out = replay(&app, &["--topic", "todo-created", "--reason", "org_not_registered"]);
    assert!(out.contains("3 matched, 3 replayed"), "{out}");
    eventually(WAIT, "replayed todos stored", || async { app.db.count("todos").await == 3 }).await;

    // Again: nothing left to replay; forced again from the topic: recognised, no new rows.
    let out = replay(&app, &["--reason", "org_not_registered"]);
    assert!(out.contains("3 matched, 0 replayed, 3 skipped"), "{out}");
    let out = replay(&app, &["--from", "topic", "--reason", "org_not_registered", "--include-replayed"]);
    assert!(out.contains("3 matched, 3 replayed"), "{out}");
    eventually(WAIT, "the forced replay was seen as a redelivery", || async {
        app.metric("event_router_messages_processed_total", &[("topic", &app.topic("todo-created")), ("outcome", "duplicate")])
            .await
            == 3.0
    })
    .await;
    assert_eq!(app.db.count("todos").await, 3);
    assert_eq!(app.db.inbox_entries().await, 3);
    assert_eq!(app.db.count("dead_letters").await, 4, "nothing was dead-lettered again");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_replay_header_neither_hides_a_new_message_nor_displaces_the_original() {
    let app = testkit::spawn_app().await;
    // A message whose replay header points at a handled message, without a matching dead letter.
    let sent = app.send("todo-created", &todo(1, "o")).await;
    eventually(WAIT, "first todo stored", || async { app.db.count("todos").await == 1 }).await;
    let producer = app.producer();
    let mut forged = producer.build("todo-created", &todo(2, "o"));
    let first = format!("{}/{}/{}", sent.topic, sent.delivery.partition, sent.delivery.offset);
    forged.headers.push(event_router::message::Header { key: event_router::replay::REPLAY_OF.into(), value: Some(first.into()) });
    producer.send_raw(&forged).await.unwrap();
    eventually(WAIT, "the forged message is handled as new", || async { app.db.count("todos").await == 2 }).await;

    // Nor did it take the original's place in the inbox: redelivering both changes nothing.
    let again = app.spawn_sibling("event-router-redelivery").await;
    eventually(WAIT, "both redelivered messages recognised", || async {
        again
            .metric("event_router_messages_processed_total", &[("topic", &app.topic("todo-created")), ("outcome", "duplicate")])
            .await
            == 2.0
    })
    .await;
    assert_eq!(app.db.count("todos").await, 2);
    assert_eq!(app.db.count("dead_letters").await, 0, "the original was not mistaken for a new todo with a taken id");
    again.stop().await;
    app.stop().await;
}
