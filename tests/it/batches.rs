//! A partition's backlog is written in batches, and a batch has exactly the effects of its
//! messages handled one by one: the same rows, the same dead letters, the same order.

use std::time::Duration;

use event_router::dead_letter;
use event_router::producer::Outgoing;
use serde_json::{json, Value};
use testkit::{header, spawn_app_after_backlog, TestApp};

const WAIT: Duration = Duration::from_secs(30);

fn message(key: &str, payload: &Value, request_id: &str) -> Outgoing {
    testkit::user_message("12345", payload, key, request_id)
}

fn host_status(host: u64, status: &str, updated_at: &str) -> Value {
    let mut payload = testkit::sample("host-status-changed", 0);
    payload["host_id"] = json!(samples::uuid_from(host, 9).to_string());
    payload["status"] = json!(status);
    payload["updated_at"] = json!(updated_at);
    payload
}

fn progress(stage: &str, percent: i64) -> Value {
    let mut payload = testkit::sample("cluster-install-progressed", 7);
    payload["stage"] = json!(stage);
    payload["progress"] = json!(percent);
    payload
}

/// How many partitions each transaction wrote inbox runs of (those matching `condition`), most
/// first: rows written by one transaction share its xmin.
async fn partitions_per_transaction(db: &testkit::TestDb, condition: &str) -> Vec<i64> {
    sqlx::query_scalar(&format!(
        "SELECT count(DISTINCT kafka_partition) FROM inbox_runs WHERE {condition}
          GROUP BY xmin::text::bigint ORDER BY 1 DESC"
    ))
    .fetch_all(&db.pool)
    .await
    .unwrap()
}

/// Sends a backlog that exercises each handler's batch rules (late and tied host updates,
/// a self-contradicting progress report between good ones), starts the service with `batch_max`
/// and checks the outcome, which must not depend on how the backlog was cut into batches.
async fn backlog_has_one_by_one_effects(batch_max: &str) -> TestApp {
    let hosts = [
        (1, "known", "2026-11-23T10:00:00Z", "h-0"),
        (1, "discovering", "2026-11-23T09:00:00Z", "h-1"), // older than h-0: ignored
        (1, "installing", "2026-11-23T10:00:00Z", "h-2"),  // as new as h-0: the later one wins
        (2, "installing", "2026-11-23T08:00:00Z", "h-3"),
        (2, "installed", "2026-11-23T08:30:00Z", "h-4"),
        (1, "known", "2026-11-23T09:30:00Z", "h-5"),       // older than h-2: ignored
        (2, "discovering", "2026-11-23T07:00:00Z", "h-6"), // older than h-4: ignored
        (3, "installed", "2026-11-23T12:00:00Z", "h-7"),
    ];
    let reports =
        [("preparing", 0), ("installing", 10), ("installing", 40), ("installed", 50), ("installing", 70), ("installed", 100)];
    let mut backlog: Vec<(&str, Outgoing)> = Vec::new();
    for (host, status, at, request_id) in hosts {
        backlog.push(("host-status-changed", message("hosts", &host_status(host, status, at), request_id)));
    }
    for (n, (stage, percent)) in reports.iter().enumerate() {
        backlog.push(("cluster-install-progressed", message("cluster", &progress(stage, *percent), &format!("p-{n}"))));
    }
    let app = spawn_app_after_backlog(&backlog, &[("BATCH_MAX_MESSAGES", batch_max)]).await;
    let db = app.db.clone();

    let dead = app.read_topic(&app.topic("dlq"), 1, WAIT).await;
    assert_eq!(header(&dead[0], dead_letter::REASON).as_deref(), Some("stage_progress_mismatch"));
    testkit::eventually(WAIT, "13 messages handled", || async { db.inbox_entries().await == 13 }).await;

    let statuses: Vec<(String, String)> =
        sqlx::query_as("SELECT status, request_id FROM host_statuses ORDER BY updated_at").fetch_all(&db.pool).await.unwrap();
    let expected = [("installed", "h-4"), ("installing", "h-2"), ("installed", "h-7")];
    let expected: Vec<(String, String)> = expected.iter().map(|(s, r)| (s.to_string(), r.to_string())).collect();
    assert_eq!(statuses, expected, "each host keeps its newest status, the later one on a tie");

    let stored: Vec<(i16, String)> = sqlx::query_as("SELECT progress, request_id FROM cluster_install_progress ORDER BY id")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    let expected: Vec<(i16, String)> =
        [(0, "p-0"), (10, "p-1"), (40, "p-2"), (70, "p-4"), (100, "p-5")].iter().map(|(p, r)| (*p, r.to_string())).collect();
    assert_eq!(stored, expected, "reports stored in their order, without the contradicting one");
    app
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_have_the_effects_of_messages_one_by_one() {
    let app = backlog_has_one_by_one_effects("64").await;
    let transactions = app.metric("event_router_transaction_messages_count", &[]).await;
    assert!(transactions < 13.0, "the backlog was written in batches ({transactions} transactions for 13 messages)");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_message_per_transaction_has_the_same_effects() {
    let app = backlog_has_one_by_one_effects("1").await;
    // The eight host updates share one partition, so with batches of one each is a transaction
    // of its own; a progress report (another partition) may share one of them.
    let transactions = app.metric("event_router_transaction_messages_count", &[]).await;
    assert!(transactions >= 8.0, "BATCH_MAX_MESSAGES=1 writes each of a partition's messages alone ({transactions})");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_inside_a_batch_dead_letters_that_message_alone_and_keeps_order() {
    let backlog: Vec<_> = (0..40u32)
        .map(|n| {
            // The 21st message reuses id 7 with another title: its handler refuses it.
            let payload =
                if n == 20 { json!({"id": 7, "title": "taken", "description": "id 7 again"}) } else { testkit::todo(n) };
            ("todo-created", message("one-key", &payload, &format!("t-{n}")))
        })
        .collect();
    let app = spawn_app_after_backlog(&backlog, &[]).await;
    let db = app.db.clone();

    let dead = app.read_topic(&app.topic("dlq"), 1, WAIT).await;
    assert_eq!(header(&dead[0], dead_letter::REASON).as_deref(), Some("todo_id_taken"));
    testkit::eventually(WAIT, "the other 39 todos stored", || async { db.count("todos").await == 39 }).await;
    let title: String = sqlx::query_scalar("SELECT title FROM todos WHERE id = 7").fetch_one(&db.pool).await.unwrap();
    assert_eq!(title, "Water the office plants");
    let stream = app.read_routed(39, WAIT).await;
    let offsets: Vec<i64> = stream
        .iter()
        .map(|m| {
            serde_json::from_slice::<Value>(m.payload.as_deref().unwrap()).unwrap()["metadata"]["source"]["offset"]
                .as_i64()
                .unwrap()
        })
        .collect();
    let mut sorted = offsets.clone();
    sorted.sort();
    assert_eq!(offsets, sorted, "stream events keep source order across the split batch");
    assert!(!offsets.contains(&20), "the refused message has no event");
    let transactions = app.metric("event_router_transaction_messages_count", &[]).await;
    assert!(transactions < 39.0, "messages were written in batches ({transactions} transactions for 39 messages)");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_linger_gathers_a_trickle_into_one_transaction() {
    let app = testkit::spawn_app_with(&[("BATCH_LINGER_MS", "2000")]).await;
    let db = app.db.clone();
    // Five messages 100 ms apart on one key: without a linger each is written alone.
    let sent_at = std::time::Instant::now();
    for n in 0..5u32 {
        app.send("todo-created", &message("trickle", &testkit::todo(n), &format!("l-{n}"))).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    testkit::eventually(WAIT, "five todos stored", || async { db.count("todos").await == 5 }).await;
    let transactions = app.metric("event_router_transaction_messages_count", &[]).await;
    assert!(transactions <= 2.0, "the trickle was gathered ({transactions} transactions for 5 messages)");
    assert!(sent_at.elapsed() >= Duration::from_secs(2), "the first message waited for its batch to fill");
    app.stop().await;
}

/// Starts the service on a backlog of todos while the todos table is locked, so that the first
/// writes wait inside their transactions and the runs of the other partitions queue up behind
/// them; once every message is read, lets the writes go, and returns when every todo is stored.
/// The linger makes each partition's first batch take its whole backlog: without it, a worker
/// scheduled before the consumer had handed over the rest of its partition started with a shorter
/// batch, and the rest was not counted as consumed until the lock was gone (a flaky wait on 2
/// cores).
async fn todos_written_after_a_queue_forms(backlog: &[(&str, Outgoing)]) -> (std::sync::Arc<testkit::TestDb>, TestApp) {
    let db = std::sync::Arc::new(testkit::TestDb::create().await);
    let mut lock = db.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE todos IN EXCLUSIVE MODE").execute(&mut *lock).await.unwrap();
    let app = testkit::spawn_app_after_backlog_on(db.clone(), backlog, &[("BATCH_LINGER_MS", "1500")]).await;
    testkit::eventually(WAIT, "all messages read", || async {
        app.metric("event_router_messages_consumed_total", &[("topic", &app.topic("todo-created"))]).await == backlog.len() as f64
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    lock.commit().await.unwrap();
    testkit::eventually(WAIT, "every todo stored", || async { db.count("todos").await == backlog.len() as i64 }).await;
    (db, app)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_ready_at_the_same_time_share_a_transaction() {
    let backlog: Vec<_> =
        (0..40u32).map(|n| ("todo-created", message(&format!("key-{n}"), &testkit::todo(n), &format!("g-{n}")))).collect();
    let (db, app) = todos_written_after_a_queue_forms(&backlog).await;
    let partitions_per_transaction = partitions_per_transaction(&db, "TRUE").await;
    assert!(
        partitions_per_transaction[0] > 1,
        "a transaction held several partitions' messages (partitions per transaction: {partitions_per_transaction:?})"
    );
    let stream = app.read_routed(40, WAIT).await;
    assert_eq!(stream.len(), 40);
    app.stop().await;
}

/// A merged write stops taking runs at a size: every database connection keeps a buffer as
/// large as the largest statement it sent, so large messages merged without a bound would leave
/// each connection holding megabytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merged_write_stops_at_its_size() {
    const TODOS: u32 = 160;
    // Messages of a little over 4 KiB, about 40 a partition: each partition's backlog is one run
    // of about 180 KiB, and two runs are more than the 256 KiB a merged write takes.
    let description = "d".repeat(4096);
    let backlog: Vec<_> = (0..TODOS)
        .map(|n| {
            let mut todo = testkit::todo(n);
            todo["description"] = json!(description);
            ("todo-created", message(&format!("key-{n}"), &todo, &format!("large-{n}")))
        })
        .collect();
    let (db, app) = todos_written_after_a_queue_forms(&backlog).await;
    let bytes_per_transaction: Vec<i64> =
        sqlx::query_scalar("SELECT sum(length(description))::int8 FROM todos GROUP BY xmin::text::bigint ORDER BY 1 DESC")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert!(
        bytes_per_transaction[0] <= 256 * 1024,
        "no transaction wrote more than 256 KiB of descriptions (per transaction: {bytes_per_transaction:?})"
    );
    app.stop().await;
}

/// A rejection in a batch is dead-lettered alongside, and the rest of the batch is still written
/// merged with other partitions' runs. (It used to take the lone path: with one message in 50
/// invalid, most transactions of a drain held a single partition's remainder.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_run_after_a_rejection_is_still_merged_with_other_partitions() {
    const KEYS: u32 = 16;
    // Per key, in order: a todo, an invalid message, another todo. Each partition's batch is
    // then [todos, rejections, todos].
    let mut backlog = Vec::new();
    for round in 0..3u32 {
        for k in 0..KEYS {
            let (payload, request_id) = match round {
                0 => (testkit::todo(k), format!("before-{k}")),
                1 => (json!({"id": 500 + k, "title": "no description"}), format!("invalid-{k}")),
                _ => (testkit::todo(100 + k), format!("after-{k}")),
            };
            backlog.push(("todo-created", message(&format!("key-{k}"), &payload, &request_id)));
        }
    }
    // The todos after the rejections wait on rows this transaction holds, so every partition's
    // last run queues up for the merged writers before any of them can commit.
    let db = std::sync::Arc::new(testkit::TestDb::create().await);
    let mut hold = db.pool.begin().await.unwrap();
    sqlx::query("INSERT INTO todos (id, title, description, request_id) SELECT id, 'held', 'held', 'test' FROM generate_series(100, $1) AS id")
        .bind(100 + KEYS as i32 - 1)
        .execute(&mut *hold)
        .await
        .unwrap();
    let app = testkit::spawn_app_after_backlog_on(db.clone(), &backlog, &[]).await;
    let topic = app.topic("todo-created");
    testkit::eventually(WAIT, "every rejection dead-lettered", || async {
        app.metric("event_router_messages_processed_total", &[("topic", &topic), ("outcome", "dead_lettered")]).await
            == KEYS as f64
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    hold.rollback().await.unwrap();

    testkit::eventually(WAIT, "every todo stored", || async { db.count("todos").await == 2 * KEYS as i64 }).await;
    let used: Vec<i64> =
        sqlx::query_scalar("SELECT count(DISTINCT kafka_partition) FROM inbox_entries").fetch_all(&db.pool).await.unwrap();
    assert!(used[0] > 1, "the keys spread over several partitions ({used:?})");
    let partitions_per_transaction =
        partitions_per_transaction(&db, "xmin::text IN (SELECT xmin::text FROM todos WHERE request_id LIKE 'after-%')").await;
    assert!(
        partitions_per_transaction[0] > 1,
        "a transaction held the runs after the rejections of several partitions ({partitions_per_transaction:?})"
    );
    app.stop().await;
}
