//! Every kind of invalid message reaches the dead-letter topic with the right reason, and nothing
//! behind it is lost or blocked.

use std::collections::HashMap;
use std::time::Duration;

use event_router::dead_letter;
use event_router::envelope::REQUEST_ID_HEADER;
use event_router::message::Header;
use event_router::producer::{IdentityHeader, Outgoing};
use serde_json::{json, Value};
use testkit::{header, spawn_app_with};

const WAIT: Duration = Duration::from_secs(30);

struct Case {
    name: &'static str,
    topic_key: &'static str,
    outgoing: Outgoing,
    drop_request_id: bool,
    reason: &'static str,
    stage: &'static str,
}

fn user() -> IdentityHeader {
    IdentityHeader::Document(samples::user_identity("12345"))
}

fn case(name: &'static str, topic_key: &'static str, outgoing: Outgoing, reason: &'static str, stage: &'static str) -> Case {
    Case { name, topic_key, outgoing: Outgoing { key: Some(name.into()), ..outgoing }, drop_request_id: false, reason, stage }
}

fn cases() -> Vec<Case> {
    let todo = testkit::todo(100);
    let with = |payload: &Value, identity| Outgoing::json(payload, identity);
    let mut bad_host = testkit::sample("host-status-changed", 1);
    bad_host["cluster_id"] = json!("12345");
    let mut bad_progress = testkit::sample("cluster-install-progressed", 1);
    bad_progress["progress"] = json!(150);
    let mut contradictory = testkit::sample("cluster-install-progressed", 2);
    contradictory["stage"] = json!("preparing");
    contradictory["progress"] = json!(30);
    let mut missing_request = case("missing-request-id", "todo-created", with(&todo, user()), "request_id_missing", "headers");
    missing_request.drop_request_id = true;
    vec![
        case(
            "bad-base64",
            "todo-created",
            with(&todo, IdentityHeader::Encoded("%%%not-base64%%%".into())),
            "identity_not_base64",
            "headers",
        ),
        case(
            "identity-without-org",
            "todo-created",
            with(&todo, IdentityHeader::Document(json!({"identity": {"type": "User", "user": {"username": "x"}}}))),
            "identity_org_id_missing",
            "headers",
        ),
        case(
            "unknown-identity-type",
            "todo-created",
            with(&todo, IdentityHeader::Document(samples::identity_of_type("Martian", "1"))),
            "identity_type_unknown",
            "headers",
        ),
        case("no-identity", "todo-created", with(&todo, IdentityHeader::Absent), "identity_missing", "headers"),
        missing_request,
        case(
            "too-large",
            "todo-created",
            with(&json!({"id": 4, "title": "big", "description": "x".repeat(3000)}), user()),
            "payload_too_large",
            "payload",
        ),
        case(
            "non-json",
            "todo-created",
            Outgoing { value: b"<xml/>".to_vec(), ..with(&todo, user()) },
            "payload_not_json",
            "payload",
        ),
        case("todo-schema", "todo-created", with(&json!({"id": 1, "title": "t"}), user()), "schema_violation", "schema"),
        case("host-schema", "host-status-changed", with(&bad_host, user()), "schema_violation", "schema"),
        case("progress-schema", "cluster-install-progressed", with(&bad_progress, user()), "schema_violation", "schema"),
        case("handler-rejects", "cluster-install-progressed", with(&contradictory, user()), "stage_progress_mismatch", "handler"),
        case("unknown-topic", "no-schema-here", with(&json!({"a": 1}), user()), "unknown_topic", "routing"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_invalid_kind_is_dead_lettered_with_its_reason_and_valid_traffic_flows_on() {
    // A pattern subscription, so a topic without a schema is consumed (and dead-lettered).
    let app =
        spawn_app_with(&[("EVENT_ROUTER_TOPIC_PATTERN", r"^platform\.event-router\.no-schema.*"), ("MAX_MESSAGE_BYTES", "2048")])
            .await;
    app.broker.create_topic(&app.topic("no-schema-here"), 1).unwrap();
    let producer = app.producer();
    let cases = cases();
    let mut sent_by_name = HashMap::new();
    for case in &cases {
        let mut message = producer.build(case.topic_key, &case.outgoing);
        if case.drop_request_id {
            message.headers.retain(|h| !h.key.eq_ignore_ascii_case(REQUEST_ID_HEADER));
        }
        message.headers.push(Header { key: "x-original-extra".into(), value: Some(b"kept".to_vec()) });
        producer.send_raw(&message).await.unwrap();
        sent_by_name.insert(case.name, message);
    }
    // Valid messages behind the invalid ones, on the same keys (so the same partitions).
    let mut valid_ids = Vec::new();
    for (i, case) in cases.iter().enumerate().filter(|(_, c)| c.topic_key == "todo-created") {
        let id = 5000 + i as u32;
        valid_ids.push(id as i32);
        app.send("todo-created", &Outgoing { key: Some(case.name.into()), ..Outgoing::json(&testkit::todo(id), user()) }).await;
    }

    let dead = app.read_topic(&app.topic("dlq"), cases.len(), WAIT).await;
    for case in &cases {
        let original = &sent_by_name[case.name];
        let letter = dead
            .iter()
            .find(|m| m.key.as_deref() == Some(case.name.as_bytes()))
            .unwrap_or_else(|| panic!("{}: not dead-lettered", case.name));
        assert_eq!(header(letter, dead_letter::REASON).as_deref(), Some(case.reason), "{}", case.name);
        assert_eq!(header(letter, dead_letter::STAGE).as_deref(), Some(case.stage), "{}", case.name);
        let class = if case.stage == "handler" { "handler_rejected" } else { "invalid_input" };
        assert_eq!(header(letter, dead_letter::ERROR_CLASS).as_deref(), Some(class), "{}", case.name);
        assert_eq!(letter.payload, original.payload, "{}: value kept byte for byte", case.name);
        assert_eq!(header(letter, "x-original-extra").as_deref(), Some("kept"), "{}: original headers kept", case.name);
        assert_eq!(header(letter, dead_letter::ORIGINAL_TOPIC), Some(original.topic.clone()), "{}", case.name);
        assert!(
            header(letter, dead_letter::ORIGINAL_PARTITION).is_some() && header(letter, dead_letter::ORIGINAL_OFFSET).is_some()
        );
        assert_eq!(header(letter, dead_letter::CONSUMER_GROUP).as_deref(), Some("event-router-test"));
        let message = header(letter, dead_letter::MESSAGE).unwrap();
        assert!(!message.is_empty() && message.len() <= 1024, "{}: {message}", case.name);
    }
    let schema_message = |name: &str| {
        header(dead.iter().find(|m| m.key.as_deref() == Some(name.as_bytes())).unwrap(), dead_letter::MESSAGE).unwrap()
    };
    assert!(schema_message("todo-schema").contains("(keyword `required`)"));
    assert!(schema_message("host-schema").contains("at `/cluster_id` (keyword `format`)"));
    assert!(schema_message("progress-schema").contains("at `/progress` (keyword `maximum`)"));

    testkit::eventually(WAIT, "valid todos behind invalid ones are stored", || async {
        app.db.count("todos").await == valid_ids.len() as i64
    })
    .await;
    let stored: Vec<i32> = sqlx::query_scalar("SELECT id FROM todos ORDER BY id").fetch_all(&app.db.pool).await.unwrap();
    assert_eq!(stored, valid_ids);
    assert_eq!(app.db.count("cluster_install_progress").await, 0, "rejected by its handler: nothing written");
    assert_eq!(app.db.count("host_statuses").await, 0);

    // Each dead letter is recorded once, pointing at its copy in the dead-letter topic.
    type Row = (Option<Vec<u8>>, String, String, i32, i32, i64);
    let recorded: Vec<Row> =
        sqlx::query_as("SELECT message_key, reason, error_class, attempts, dlq_partition, dlq_offset FROM dead_letters")
            .fetch_all(&app.db.pool)
            .await
            .unwrap();
    assert_eq!(recorded.len(), cases.len());
    for case in &cases {
        let (_, reason, class, attempts, dlq_partition, dlq_offset) = recorded
            .iter()
            .find(|r| r.0.as_deref() == Some(case.name.as_bytes()))
            .unwrap_or_else(|| panic!("{}: no row", case.name));
        assert_eq!((reason.as_str(), *attempts), (case.reason, 1), "{}", case.name);
        assert_eq!(class, if case.stage == "handler" { "handler_rejected" } else { "invalid_input" });
        let copy = dead.iter().find(|m| m.key.as_deref() == Some(case.name.as_bytes())).unwrap();
        assert_eq!((copy.partition, copy.offset), (*dlq_partition, *dlq_offset), "{}: row points at its copy", case.name);
    }
    let stored_columns: Vec<String> =
        sqlx::query_scalar("SELECT column_name::text FROM information_schema.columns WHERE table_name = 'dead_letters'")
            .fetch_all(&app.db.pool)
            .await
            .unwrap();
    assert!(!stored_columns.iter().any(|c| c.contains("header") || c.contains("identity")), "{stored_columns:?}");

    // A redelivery of the invalid messages (a second group) publishes no second copy.
    let again =
        testkit::TestApp::spawn(app.broker.clone(), app.db.clone(), "event-router-redelivery", &[("MAX_MESSAGE_BYTES", "2048")])
            .await;
    testkit::eventually(WAIT, "the redelivered dead letters are recognised", || async {
        let mut duplicates = 0.0;
        for key in ["todo-created", "host-status-changed", "cluster-install-progressed"] {
            duplicates += again
                .metric("event_router_messages_processed_total", &[("topic", &app.topic(key)), ("outcome", "duplicate")])
                .await;
        }
        // Every message but the unknown topic's (the sibling has no pattern subscription) is seen
        // again: the dead letters and the valid todos behind them.
        duplicates == (cases.len() - 1 + valid_ids.len()) as f64
    })
    .await;
    let all_dead = testkit::drain_topic(app.broker.bootstrap_servers(), &app.topic("dlq"), Duration::from_secs(3)).await;
    assert_eq!(all_dead.len(), cases.len(), "no second copy in the dead-letter topic");
    assert_eq!(app.db.count("dead_letters").await, cases.len() as i64);
    again.stop().await;

    for case in &cases {
        let topic = if case.reason == "unknown_topic" { "_unknown".to_string() } else { app.topic(case.topic_key) };
        assert!(
            app.metric("event_router_dead_letters_total", &[("topic", &topic), ("reason", case.reason)]).await >= 1.0,
            "{}",
            case.name
        );
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_todo_id_is_rejected_by_the_handler_not_merged() {
    let app = testkit::spawn_app().await;
    let first = Outgoing { key: Some("a".into()), ..Outgoing::json(&testkit::todo(9), user()) };
    let other = json!({"id": 9, "title": "another todo", "description": "same id"});
    let second = Outgoing { key: Some("a".into()), ..Outgoing::json(&other, user()) };
    app.send("todo-created", &first).await;
    app.send("todo-created", &second).await;
    let dead = app.read_topic(&app.topic("dlq"), 1, WAIT).await;
    assert_eq!(header(&dead[0], dead_letter::REASON).as_deref(), Some("todo_id_taken"));
    let title: String = sqlx::query_scalar("SELECT title FROM todos WHERE id = 9").fetch_one(&app.db.pool).await.unwrap();
    assert_eq!(title, "Water the office plants", "the first todo is kept");
    app.stop().await;
}

#[tokio::test]
async fn the_dead_letter_lookup_keeps_to_the_unique_key_when_planned_on_an_empty_table() {
    // A connection caches prepared statements: the plan made while the table was empty is the
    // plan used once it is large. It must be the unique key, or each lookup reads the topic's
    // every dead letter.
    let db = testkit::TestDb::create().await;
    let mut connection = db.pool.acquire().await.unwrap();
    sqlx::raw_sql(&format!("PREPARE lookup(text, int, bigint, bytea, bytea) AS {}", event_router::store::dead_letters::LOOKUP))
        .execute(&mut *connection)
        .await
        .unwrap();
    // Five custom plans, then PostgreSQL settles on a generic one.
    for _ in 0..6 {
        sqlx::raw_sql("EXECUTE lookup('platform.event-router.todo-created', 0, 1, '\\x00', '\\x01')")
            .execute(&mut *connection)
            .await
            .unwrap();
    }
    let plan: Vec<String> =
        sqlx::query_scalar("EXPLAIN EXECUTE lookup('platform.event-router.todo-created', 0, 1, '\\x00', '\\x01')")
            .fetch_all(&mut *connection)
            .await
            .unwrap();
    let condition = plan.iter().find(|line| line.contains("Index Cond")).cloned().unwrap_or_default();
    assert!(
        condition.contains("kafka_partition = $2") && condition.contains("kafka_offset = $3"),
        "the lookup finds the record's coordinates through the unique key (its fingerprints, current or legacy, then pick among the few rows there):\n{}",
        plan.join("\n")
    );
}
