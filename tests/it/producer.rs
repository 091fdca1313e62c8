//! The producer library and CLI validate before sending, with the service's own reason codes.

use std::process::Command;
use std::time::Duration;

use event_router::envelope::Reason;
use event_router::producer::{IdentityHeader, Outgoing, ProduceError};
use testkit::{eventually, spawn_app};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_library_refuses_what_the_service_would_dead_letter() {
    let app = spawn_app().await;
    let producer = app.producer();
    let bad = Outgoing::json(&serde_json::json!({"id": 1}), IdentityHeader::Document(samples::user_identity("1")));
    match producer.send("todo-created", &bad).await {
        Err(ProduceError::Rejected(rejection)) => {
            assert_eq!(rejection.reason, Reason::SchemaViolation);
            assert!(rejection.message.contains("todo-created"), "{}", rejection.message);
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    let no_org = Outgoing::json(&testkit::todo(1), IdentityHeader::Document(serde_json::json!({"identity": {"type": "User"}})));
    assert!(
        matches!(producer.send("todo-created", &no_org).await, Err(ProduceError::Rejected(r)) if r.reason == Reason::IdentityOrgIdMissing)
    );

    let good = Outgoing::json(&testkit::todo(2), IdentityHeader::Document(samples::user_identity("1")));
    let sent = producer.send("todo-created", &good).await.unwrap();
    assert_eq!(sent.request_id.len(), 36, "a request id (UUID) is generated when none is given");
    eventually(Duration::from_secs(20), "todo stored", || async { app.db.count("todos").await == 1 }).await;

    // Extra headers travel as given; a second identity among them is refused as the service would.
    let traced = Outgoing { extra_headers: vec![("x-trace".into(), b"abc".to_vec())], ..good.clone() };
    let traced = Outgoing { value: testkit::todo(3).to_string().into_bytes(), ..traced };
    producer.send("todo-created", &traced).await.unwrap();
    let records = app.read_topic(&app.topic("todo-created"), 2, Duration::from_secs(20)).await;
    assert!(records.iter().any(|r| testkit::header(r, "x-trace").as_deref() == Some("abc")));
    let sneaky = Outgoing { extra_headers: vec![("X-Rh-Identity".into(), b"e30=".to_vec())], ..good };
    assert!(
        matches!(producer.send("todo-created", &sneaky).await, Err(ProduceError::Rejected(r)) if r.reason == Reason::IdentityDuplicate)
    );

    // Any topic, by its full name, sent as is.
    let anywhere = producer
        .build_for_topic_name("some.other.topic", &Outgoing::json(&serde_json::json!({"free": "form"}), IdentityHeader::Absent));
    assert_eq!(&*anywhere.topic, "some.other.topic");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_sends_valid_lines_and_refuses_invalid_ones() {
    let app = spawn_app().await;
    let cli = |args: &[&str], stdin: Option<&str>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_event-router"));
        command.arg("produce").args(args).env("KAFKA_BROKERS", app.broker.bootstrap_servers()).env("LOG_FORMAT", "text");
        match stdin {
            None => command.output().unwrap(),
            Some(input) => {
                use std::io::Write;
                let mut child = command
                    .stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap();
                child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
                child.wait_with_output().unwrap()
            }
        }
    };
    let lines = format!("{}\n{}\n", testkit::todo(31), testkit::todo(32));
    let out = cli(&["todo-created", "--org-id", "777", "--request-id", "cli-req"], Some(&lines));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).matches("request-id cli-req").count(), 2);

    let out = cli(&["todo-created", "--data", r#"{"id": 1, "title": "t"}"#], None);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("schema_violation") && stderr.contains("description"), "{stderr}");

    eventually(Duration::from_secs(20), "both CLI todos stored", || async { app.db.count("todos").await == 2 }).await;

    // Another topic by its full name, checked against a schema of the caller's.
    let schema = std::env::temp_dir().join(format!("schema-{}.json", uuid::Uuid::new_v4().simple()));
    std::fs::write(&schema, r#"{"type": "object", "required": ["b"]}"#).unwrap();
    let other = app.topic("events-stream");
    let with_schema = |data: &str| {
        cli(&["--topic-name", &other, "--schema", schema.to_str().unwrap(), "--data", data, "--header", "x-trace=cli"], None)
    };
    let refused = with_schema(r#"{"a": 1}"#);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("schema_violation"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let sent = with_schema(r#"{"b": 2}"#);
    assert!(sent.status.success(), "{}", String::from_utf8_lossy(&sent.stderr));
    assert!(String::from_utf8_lossy(&sent.stdout).starts_with(&format!("sent {other} ")));
    let _ = std::fs::remove_file(schema);
    let orgs: Vec<String> = sqlx::query_scalar("SELECT org_id FROM todos").fetch_all(&app.db.pool).await.unwrap();
    assert_eq!(orgs, ["777", "777"]);
    app.stop().await;
}
