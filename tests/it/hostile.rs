//! Hostile records, one input class each, on the real path: each ends stored and streamed or
//! dead-lettered with its own reason, and a valid canary sent right after it on the same key (so
//! the same partition) must be stored and streamed too. Nothing may panic, stick a partition or
//! stop the stream, and the raw identity may appear in no table and no metric.

use std::time::Duration;

use event_router::dead_letter;
use event_router::envelope::identity::encode_identity;
use event_router::envelope::{IDENTITY_HEADER, REQUEST_ID_HEADER};
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::ClientConfig;
use serde_json::{json, Value};
use testkit::{header, spawn_app, TestApp};

const WAIT: Duration = Duration::from_secs(60);

/// A record as a hostile producer may write it: any key, value and header bytes.
struct Record {
    topic_key: &'static str,
    key: Vec<u8>,
    value: Vec<u8>,
    headers: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

/// A hostile record and what must become of it.
struct Case {
    name: &'static str,
    record: Record,
    /// The dead-letter reason, or `None` when the record is valid and must be handled.
    reason: Option<&'static str>,
}

fn identity() -> Vec<u8> {
    encode_identity(&samples::user_identity("org-hostile")).into_bytes()
}

fn identity_with(member: &str, value: Value) -> Vec<u8> {
    let mut document = samples::user_identity("org-hostile");
    document["identity"][member] = value;
    encode_identity(&document).into_bytes()
}

fn good_headers(request_id: &str) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
    vec![(IDENTITY_HEADER.into(), Some(identity())), (REQUEST_ID_HEADER.into(), Some(request_id.as_bytes().to_vec()))]
}

fn todo(id: u32) -> Vec<u8> {
    testkit::todo(id).to_string().into_bytes()
}

/// A case on `todo-created` keyed by its name, with valid headers unless `headers` says otherwise.
fn case(name: &'static str, value: Vec<u8>, headers: Vec<(Vec<u8>, Option<Vec<u8>>)>, reason: &'static str) -> Case {
    Case {
        name,
        record: Record { topic_key: "todo-created", key: name.as_bytes().to_vec(), value, headers },
        reason: Some(reason),
    }
}

fn cases() -> Vec<Case> {
    let with_extra = |extra: Vec<(Vec<u8>, Option<Vec<u8>>)>| {
        let mut headers = good_headers("req-hostile");
        headers.extend(extra);
        headers
    };
    let mut host_nul_jsonb = testkit::sample("host-status-changed", 9);
    host_nul_jsonb["validations"][0]["message"] = json!("bad\u{0}byte");
    let mut many_errors = testkit::todo(9);
    for i in 0..20_000 {
        many_errors[format!("x{i}")] = json!(i);
    }
    // Binary bytes are escaped as \u00XX in the event's `metadata.source.key`: six bytes each.
    let binary_key = vec![0x01u8; 160_000];
    vec![
        case(
            "header-name-not-utf8",
            todo(900),
            with_extra(vec![(b"bad-\xff\xfe-name".to_vec(), Some(b"v".to_vec()))]),
            "header_name_not_utf8",
        ),
        case(
            "request-id-not-utf8",
            todo(901),
            vec![(IDENTITY_HEADER.into(), Some(identity())), (REQUEST_ID_HEADER.into(), Some(b"\xff\xfe\xfd".to_vec()))],
            "request_id_invalid",
        ),
        case("request-id-nul", todo(902), good_headers("req\0uest"), "request_id_invalid"),
        case(
            "org-id-nul",
            todo(903),
            vec![
                (IDENTITY_HEADER.into(), Some(identity_with("org_id", json!("12\u{0}34")))),
                (REQUEST_ID_HEADER.into(), Some(b"r".to_vec())),
            ],
            "identity_schema_violation",
        ),
        case(
            "identity-type-nul",
            todo(904),
            vec![
                (IDENTITY_HEADER.into(), Some(identity_with("type", json!("Us\u{0}er")))),
                (REQUEST_ID_HEADER.into(), Some(b"r".to_vec())),
            ],
            "identity_type_unknown",
        ),
        case(
            "identity-not-utf8-base64",
            todo(905),
            vec![(IDENTITY_HEADER.into(), Some(vec![0xff; 64])), (REQUEST_ID_HEADER.into(), Some(b"r".to_vec()))],
            "identity_not_base64",
        ),
        case(
            "payload-string-nul",
            json!({"id": 906, "title": "a\u{0}b", "description": "d"}).to_string().into_bytes(),
            good_headers("r"),
            "database_rejected",
        ),
        Case {
            name: "jsonb-nul",
            record: Record {
                topic_key: "host-status-changed",
                key: b"jsonb-nul".to_vec(),
                value: host_nul_jsonb.to_string().into_bytes(),
                headers: good_headers("r"),
            },
            reason: Some("database_rejected"),
        },
        case(
            "property-name-nul",
            json!({"id": 907, "title": "t", "description": "d", "na\u{0}me": 1}).to_string().into_bytes(),
            good_headers("r"),
            "schema_violation",
        ),
        case("payload-not-utf8", vec![0xff, 0xfe, 0x00, 0x7b], good_headers("r"), "payload_not_json"),
        case(
            "thousands-of-headers",
            todo(908),
            with_extra((0..10_000).map(|i| (format!("h{i}").into_bytes(), Some(b"v".to_vec()))).collect()),
            "headers_too_large",
        ),
        case("huge-header", todo(909), with_extra(vec![(b"big".to_vec(), Some(vec![b'x'; 200_000]))]), "headers_too_large"),
        case(
            "identity-twice-mixed-case",
            todo(910),
            with_extra(vec![(b"X-Rh-Identity".to_vec(), Some(identity_with("org_id", json!("other-org"))))]),
            "identity_duplicate",
        ),
        case(
            "request-id-twice",
            todo(911),
            with_extra(vec![(b"X-RH-INSIGHTS-REQUEST-ID".to_vec(), Some(b"other".to_vec()))]),
            "request_id_duplicate",
        ),
        case(
            "deeply-nested",
            format!("{}{}", "[".repeat(50_000), "]".repeat(50_000)).into_bytes(),
            good_headers("r"),
            "payload_not_json",
        ),
        case("many-validation-errors", many_errors.to_string().into_bytes(), good_headers("r"), "schema_violation"),
        // Over MAX_MESSAGE_BYTES and close to the broker's limit: its dead-letter copy cannot hold
        // the value as well as the dead-letter headers, so it leaves the value out.
        case("near-record-limit", vec![b' '; 999_000], good_headers("r"), "payload_too_large"),
        // Valid: its event leaves out the key's text copy (`key_omitted`) and fits.
        Case {
            name: "large-binary-key",
            record: Record { topic_key: "todo-created", key: binary_key, value: todo(912), headers: good_headers("r") },
            reason: None,
        },
        // Valid, but key and value alone nearly fill a record: the event cannot fit.
        Case {
            name: "key-at-record-limit",
            record: Record { topic_key: "todo-created", key: vec![b'k'; 999_000], value: todo(913), headers: good_headers("r") },
            reason: Some("event_too_large"),
        },
    ]
}

fn producer(app: &TestApp) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", app.broker.bootstrap_servers())
        .set("message.max.bytes", "1000000")
        .create()
        .expect("test producer")
}

/// Sends `record` to `partition` of its topic.
async fn send(producer: &FutureProducer, app: &TestApp, record: &Record, partition: i32) {
    let mut headers = OwnedHeaders::new();
    for (name, value) in &record.headers {
        headers = raw_headers::with_raw_header(headers, name, value.as_deref());
    }
    let topic = app.topic(record.topic_key);
    let record = FutureRecord::to(&topic).partition(partition).key(&record.key).payload(&record.value).headers(headers);
    let future = producer.send(record, Timeout::Never);
    future.await.unwrap_or_else(|(error, _)| panic!("the broker accepts the record: {error}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_hostile_record_is_dead_lettered_and_the_canary_behind_it_is_handled() {
    let app = spawn_app().await;
    let producer = producer(&app);
    let cases = cases();
    for (i, case) in cases.iter().enumerate() {
        let partition = i as i32 % testkit::PARTITIONS;
        send(&producer, &app, &case.record, partition).await;
        // The canary: valid, on the same partition, right behind.
        let canary_id = 10_000 + i as u32;
        let canary = match case.record.topic_key {
            "todo-created" => todo(canary_id),
            _ => testkit::sample("host-status-changed", canary_id as u64).to_string().into_bytes(),
        };
        let canary = Record {
            topic_key: case.record.topic_key,
            key: format!("canary-{i}").into_bytes(),
            value: canary,
            headers: good_headers(&format!("canary-{i}")),
        };
        send(&producer, &app, &canary, partition).await;
    }

    for (i, case) in cases.iter().enumerate() {
        let request_id = format!("canary-{i}");
        let pool = &app.db.pool;
        testkit::eventually(WAIT, &format!("{}: its canary stored", case.name), || async {
            sqlx::query_scalar::<_, i64>(
                "SELECT (SELECT count(*) FROM todos WHERE request_id = $1) + (SELECT count(*) FROM host_statuses WHERE request_id = $1)",
            )
            .bind(&request_id)
            .fetch_one(pool)
            .await
            .unwrap()
                == 1
        })
        .await;
    }
    let expected_dead = cases.iter().filter(|c| c.reason.is_some()).count();
    let dead = app.read_topic(&app.topic("dlq"), expected_dead, WAIT).await;
    let stream = testkit::drain_topic(app.broker.bootstrap_servers(), &app.topic("events-stream"), Duration::from_secs(10)).await;
    for (i, case) in cases.iter().enumerate() {
        // The canary behind it was handled and streamed.
        let request_id = format!("canary-{i}");
        assert!(
            stream.iter().any(|m| header(m, REQUEST_ID_HEADER).as_deref() == Some(request_id.as_str())),
            "{}: its canary was not streamed",
            case.name
        );
        let stored: i64 = sqlx::query_scalar(
            "SELECT (SELECT count(*) FROM todos WHERE request_id = $1) + (SELECT count(*) FROM host_statuses WHERE request_id = $1)",
        )
        .bind(&request_id)
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
        assert_eq!(stored, 1, "{}: its canary was not stored", case.name);
        let Some(reason) = case.reason else {
            // A valid record: stored and streamed, keyed as sent.
            let event = stream
                .iter()
                .find(|m| m.key.as_deref() == Some(case.record.key.as_slice()))
                .unwrap_or_else(|| panic!("{}: not streamed", case.name));
            let body: Value = serde_json::from_slice(event.payload.as_deref().unwrap()).unwrap();
            assert_eq!(body["metadata"]["source"]["key_omitted"], true, "{}", case.name);
            assert!(body["metadata"]["source"]["key"].is_null(), "{}", case.name);
            continue;
        };
        let letter = dead
            .iter()
            .find(|m| {
                header(m, dead_letter::REASON).as_deref() == Some(reason) && m.key.as_deref() == Some(case.record.key.as_slice())
            })
            .unwrap_or_else(|| panic!("{}: no dead letter with reason {reason}", case.name));
        let message = header(letter, dead_letter::MESSAGE).unwrap_or_default();
        assert!(!message.contains('\0') && message.len() <= 1024, "{}: {message:?}", case.name);
        // The dead letter's row is there, with the full value.
        let payload: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT payload FROM dead_letters WHERE reason = $1 AND message_key = $2")
                .bind(reason)
                .bind(&case.record.key)
                .fetch_optional(&app.db.pool)
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("{}: no dead_letters row", case.name));
        assert_eq!(payload.as_deref(), Some(case.record.value.as_slice()), "{}: the row keeps the full value", case.name);
    }

    // The copy too large to send whole left its value out and says so.
    let near_limit = dead.iter().find(|m| header(m, dead_letter::REASON).as_deref() == Some("payload_too_large")).unwrap();
    assert_eq!(header(near_limit, dead_letter::OMITTED).as_deref(), Some("value"));
    assert_eq!(near_limit.payload.as_deref().unwrap_or_default(), b"");

    // No raw identity in any table or metric; the service is still ready.
    let raw_identity = String::from_utf8(identity()).unwrap();
    assert_no_raw_identity(&app, &raw_identity).await;
    let (status, body) = app.get("/readyz").await;
    assert_eq!(status, 200, "{body}");
    app.stop().await;
}

/// The raw identity header appears in no row of any table but the outbox (which holds the
/// headers a stream event must carry, until it is published) and in no metric.
async fn assert_no_raw_identity(app: &TestApp, raw_identity: &str) {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public' AND table_name <> 'outbox'",
    )
    .fetch_all(&app.db.pool)
    .await
    .unwrap();
    for table in tables {
        let found: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {table} t WHERE strpos(t::text, $1) > 0"))
            .bind(raw_identity)
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
        assert_eq!(found, 0, "the raw identity is stored in {table}");
    }
    let (_, metrics) = app.get("/metrics").await;
    assert!(!metrics.contains(raw_identity), "the raw identity is in /metrics");
}

/// A handler that panics on some input: the bug dead-letters that message (`handler_panicked`)
/// and the messages behind it, in the same batch and after it, are handled; the consumer goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_panic_dead_letters_the_message_and_the_partition_goes_on() {
    use event_router::handlers::router;
    use event_router::producer::{IdentityHeader, Outgoing};
    use event_router::router::{Context, Handler, HandlerError};
    use event_router::store::Tx;
    use event_router::topics::TodoCreated;

    struct PanicsOnThirteen;
    impl Handler<TodoCreated> for PanicsOnThirteen {
        async fn handle(&self, todo: TodoCreated, ctx: &Context, tx: &mut Tx) -> Result<(), HandlerError> {
            assert!(todo.id != 13, "thirteen is unlucky");
            testkit::insert_todo(&todo, ctx, tx).await
        }
    }
    let mut routes = router();
    routes.register::<TodoCreated>(PanicsOnThirteen);
    let app = testkit::spawn_app_with_router(&[], routes).await;
    for id in [12, 13, 14] {
        let outgoing = Outgoing {
            key: Some("one-partition".into()),
            ..Outgoing::json(&testkit::todo(id), IdentityHeader::Document(samples::user_identity("1")))
        };
        app.send("todo-created", &outgoing).await;
    }
    let dead = app.read_topic(&app.topic("dlq"), 1, WAIT).await;
    assert_eq!(header(&dead[0], dead_letter::REASON).as_deref(), Some("handler_panicked"));
    assert!(header(&dead[0], dead_letter::MESSAGE).unwrap().contains("thirteen is unlucky"));
    testkit::eventually(WAIT, "the todos around it stored", || async { app.db.count("todos").await == 2 }).await;
    let (status, body) = app.get("/readyz").await;
    assert_eq!(status, 200, "{body}");
    app.stop().await;
}

/// The consumer copies a record out of librdkafka into one buffer and slices it: each field must
/// come back byte for byte, in order, with a null header value told from an empty one, a repeated
/// name kept twice, and a name that is not UTF-8 marked (and shown with U+FFFD).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_is_copied_out_byte_for_byte() {
    let app = spawn_app().await;
    let producer = producer(&app);
    let full = Record {
        topic_key: "todo-created",
        key: b"k\xff\0".to_vec(),
        value: b"{\"a\":1}\0\xfe".to_vec(),
        headers: vec![
            (b"x-a".to_vec(), Some(b"1".to_vec())),
            (b"x-null".to_vec(), None),
            (b"x-empty".to_vec(), Some(Vec::new())),
            (b"x-a".to_vec(), Some(b"2".to_vec())),
            (b"bad\xffname".to_vec(), Some(b"v\0".to_vec())),
        ],
    };
    send(&producer, &app, &full, 0).await;
    let empty = Record { topic_key: "todo-created", key: Vec::new(), value: Vec::new(), headers: Vec::new() };
    send(&producer, &app, &empty, 0).await;

    let read = app.read_topic(&app.topic("todo-created"), 2, WAIT).await;
    let names: Vec<&str> = read[0].headers.iter().map(|h| &*h.key).collect();
    assert_eq!(names, ["x-a", "x-null", "x-empty", "x-a", "bad\u{fffd}name"]);
    let values: Vec<Option<&[u8]>> = read[0].headers.iter().map(|h| h.value.as_deref()).collect();
    assert_eq!(values, [Some(&b"1"[..]), None, Some(&b""[..]), Some(&b"2"[..]), Some(&b"v\0"[..])]);
    assert_eq!(read[0].key.as_deref(), Some(&full.key[..]));
    assert_eq!(read[0].payload.as_deref(), Some(&full.value[..]));
    assert_eq!(read[0].header_problem, Some(event_router::message::HeaderProblem::NameNotUtf8 { index: 4 }));
    // Header names and values as held: 3 + 1, 6, 7, 3 + 1, and 10 + 2 (U+FFFD is three bytes).
    assert_eq!(read[0].size(), full.key.len() + full.value.len() + 33, "every byte counted once");
    // librdkafka may hand an empty key or value over as absent; either way, nothing to slice.
    assert!(matches!(read[1].key.as_deref(), None | Some(b"")) && matches!(read[1].payload.as_deref(), None | Some(b"")));
    assert!(read[1].headers.is_empty() && read[1].header_problem.is_none());
    app.stop().await;
}
