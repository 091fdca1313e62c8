//! Every kind of invalid message reaches the dead-letter topic with the right reason, and nothing
//! behind it is lost or blocked.

use std::collections::HashMap;
use std::time::Duration;

use event_router::dead_letter;
use event_router::envelope::REQUEST_ID_HEADER;
use event_router::message::{Bytes, Header};
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
        message.headers.push(Header { key: "x-original-extra".into(), value: Some(Bytes::from_static(b"kept")) });
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
        assert_eq!(header(letter, dead_letter::ORIGINAL_TOPIC), Some(original.topic.to_string()), "{}", case.name);
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

/// Rejections and valid messages alternating on one partition: `pairs` of each, the rejection
/// first (todos `0..pairs` are valid, `1000..` miss their description).
fn alternating(pairs: u32) -> Vec<(&'static str, Outgoing)> {
    let on_one_partition = |payload: &Value| Outgoing { key: Some("one-key".into()), ..Outgoing::json(payload, user()) };
    (0..pairs)
        .flat_map(|n| {
            [
                ("todo-created", on_one_partition(&json!({"id": 1000 + n, "title": "no description"}))),
                ("todo-created", on_one_partition(&testkit::todo(n))),
            ]
        })
        .collect()
}

/// A partition's rejections are dead-lettered together, not one producer round trip and two
/// statements each while the partition waits: their rows come from one statement (they share its
/// `now()`), their copies keep the partition's order, and the valid messages between them are
/// all written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitions_rejections_are_dead_lettered_together_and_in_order() {
    const PAIRS: u32 = 20;
    let app = testkit::spawn_app_after_backlog(&alternating(PAIRS), &[]).await;
    let copies = app.read_topic(&app.topic("dlq"), PAIRS as usize, WAIT).await;
    let offsets: Vec<i64> =
        copies.iter().map(|c| header(c, dead_letter::ORIGINAL_OFFSET).expect("original offset").parse().unwrap()).collect();
    assert_eq!(offsets, (0..PAIRS as i64).map(|n| 2 * n).collect::<Vec<_>>(), "each rejection once, in the partition's order");
    testkit::eventually(WAIT, "every row written", || async {
        app.db.count("dead_letters").await == PAIRS as i64 && app.db.count("todos").await == PAIRS as i64
    })
    .await;
    let statements: i64 =
        sqlx::query_scalar("SELECT count(DISTINCT dead_lettered_at) FROM dead_letters").fetch_one(&app.db.pool).await.unwrap();
    // One batch, or two should the consumer's fetch have split the backlog; one by one was 20.
    assert!(statements <= 2, "the {PAIRS} rows came from {statements} statements");
    app.stop().await;
}

/// Should the database refuse one dead letter's row for good, it is the only row missing: the
/// batch's other rows are recorded, every copy is in the topic, and the partition goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_dead_letter_row_leaves_the_rest_of_its_batch_recorded() {
    let db = std::sync::Arc::new(testkit::TestDb::create().await);
    sqlx::raw_sql(
        "CREATE FUNCTION refuse_offset_4() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           IF NEW.kafka_offset = 4 THEN RAISE EXCEPTION 'refused by the test' USING ERRCODE = '22023'; END IF;
           RETURN NEW;
         END $$;
         CREATE TRIGGER refuse BEFORE INSERT ON dead_letters FOR EACH ROW EXECUTE FUNCTION refuse_offset_4();",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    const PAIRS: u32 = 5;
    let app = testkit::spawn_app_after_backlog_on(db.clone(), &alternating(PAIRS), &[]).await;
    let copies = app.read_topic(&app.topic("dlq"), PAIRS as usize, WAIT).await;
    assert_eq!(copies.len(), PAIRS as usize, "every rejection has its copy, the refused row's too");
    let topic = app.topic("todo-created");
    testkit::eventually(WAIT, "every message finished", || async {
        db.count("todos").await == PAIRS as i64
            && app.metric("event_router_messages_processed_total", &[("topic", &topic), ("outcome", "dead_lettered")]).await
                == PAIRS as f64
    })
    .await;
    let recorded: Vec<i64> =
        sqlx::query_scalar("SELECT kafka_offset FROM dead_letters ORDER BY kafka_offset").fetch_all(&db.pool).await.unwrap();
    assert_eq!(recorded, vec![0, 2, 6, 8], "only the refused row is missing");
    app.stop().await;
}

/// The batch's lookup of which rejections were dead-lettered before is one unique-key probe per
/// message once the table has statistics, in a generic plan and a custom one alike (the inbox's
/// read was not), and finds a row by its current or its legacy fingerprint.
#[tokio::test]
async fn the_batch_lookup_of_dead_letters_probes_the_unique_key_of_an_analyzed_table() {
    let db = testkit::TestDb::create().await;
    sqlx::query(
        "INSERT INTO dead_letters (topic, kafka_partition, kafka_offset, fingerprint, stage, reason, error_class, message,
                                   attempts, consumer_group, dlq_partition, dlq_offset)
         SELECT 't', p, o, sha256(o::text::bytea), 'schema', 'schema_violation', 'invalid_input', 'm', 1, 'g', 0, o
           FROM generate_series(0, 3) AS p, generate_series(0, 5000) AS o",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query("ANALYZE dead_letters").execute(&db.pool).await.unwrap();
    let mut session = db.pool.acquire().await.unwrap();
    sqlx::query(&format!("PREPARE recorded AS {}", event_router::store::dead_letters::RECORDED))
        .execute(&mut *session)
        .await
        .unwrap();
    let keys = "'{t,t,t,t}', '{0,1,2,3}', '{10,20,30,6000}', \
                ARRAY[sha256('10'), '\\x00', '\\x00', sha256('6000')], ARRAY['\\x01', sha256('20'), '\\x01', '\\x01']::bytea[]";
    for mode in ["force_generic_plan", "force_custom_plan"] {
        sqlx::query(&format!("SET plan_cache_mode = {mode}")).execute(&mut *session).await.unwrap();
        let plan: Vec<String> =
            sqlx::query_scalar(&format!("EXPLAIN EXECUTE recorded({keys})")).fetch_all(&mut *session).await.unwrap();
        let plan = plan.join("\n");
        assert!(!plan.contains("Seq Scan") && !plan.contains("Hash"), "{mode}:\n{plan}");
        assert!(plan.contains("kafka_offset = k.kafka_offset"), "{mode}:\n{plan}");
        let found: Vec<i64> = sqlx::query_scalar(&format!("EXECUTE recorded({keys})")).fetch_all(&mut *session).await.unwrap();
        assert_eq!(found, vec![1, 2], "{mode}: the first by its fingerprint, the second by its legacy one, the others not");
    }
    drop(session);
    db.drop_database().await;
}

/// Hostile records that reach the dead letters' one insert together, on one partition: values
/// near the record limit, NUL bytes, bytes that are not UTF-8, and the same record twice. Each
/// gets its row with its full value, the valid message behind them is handled, and the service
/// stays ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_rejections_dead_lettered_together_keep_their_full_values() {
    let on_one_partition = |value: Vec<u8>| Outgoing {
        key: Some("one-key".into()),
        value,
        identity: user(),
        request_id: None,
        extra_headers: Vec::new(),
    };
    let values: Vec<Vec<u8>> = vec![
        vec![b' '; 999_000],
        b"{\"id\": 1, \"title\": \"a\0b\", \"description\": \"NUL\"}".to_vec(),
        vec![0xff, 0xfe, 0x00, 0xc3, 0x28],
        vec![0xff, 0xfe, 0x00, 0xc3, 0x28],
        vec![b'{'; 999_000],
        b"\0\0\0\0".to_vec(),
    ];
    let mut backlog: Vec<(&str, Outgoing)> = values.iter().map(|v| ("todo-created", on_one_partition(v.clone()))).collect();
    backlog.push(("todo-created", Outgoing { key: Some("one-key".into()), ..Outgoing::json(&testkit::todo(7), user()) }));
    let app = testkit::spawn_app_after_backlog(&backlog, &[]).await;

    let copies = app.read_topic(&app.topic("dlq"), values.len(), WAIT).await;
    assert_eq!(copies.len(), values.len());
    testkit::eventually(WAIT, "the valid message behind them handled", || async { app.db.count("todos").await == 1 }).await;
    let rows: Vec<(i64, Option<Vec<u8>>)> =
        sqlx::query_as("SELECT kafka_offset, payload FROM dead_letters ORDER BY kafka_offset")
            .fetch_all(&app.db.pool)
            .await
            .unwrap();
    let offsets: Vec<i64> = rows.iter().map(|(offset, _)| *offset).collect();
    assert_eq!(offsets, (0..values.len() as i64).collect::<Vec<_>>(), "a row each, the duplicate's too");
    for ((offset, payload), value) in rows.iter().zip(&values) {
        assert_eq!(payload.as_deref(), Some(value.as_slice()), "offset {offset}: the row keeps the full value");
    }
    let (status, body) = app.get("/readyz").await;
    assert_eq!(status, 200, "{body}");
    app.stop().await;
}
