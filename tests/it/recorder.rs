//! The recorder: catalog events recorded by another service, through the ingest topic, land in
//! the events table and the stream like a handler's own; what does not fit the catalog is
//! dead-lettered with a reason.

use std::time::Duration;

use event_router::dead_letter;
use event_router::events::catalog::ClusterInstallCompleted;
use event_router::producer::{EventProducer, Handed, IdentityHeader, RecordSource, Recorder};
use testkit::{eventually, header, spawn_app, TestApp};

const WAIT: Duration = Duration::from_secs(20);
const CLUSTER: &str = "0e9d8c7b-6a5f-4e3d-9c2b-1a0f9e8d7c6b";

fn recorder(app: &TestApp) -> Recorder {
    let producer = EventProducer::new(&app.config.kafka, &app.config.topics).unwrap();
    Recorder::new(
        producer,
        RecordSource { component: "installer".into(), node: "node-3".into() },
        IdentityHeader::Document(samples::user_identity("org-r")),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_event_is_stored_and_streamed_like_a_handlers_own() {
    let app = spawn_app().await;
    let event = ClusterInstallCompleted { cluster_id: CLUSTER.parse().unwrap(), host_count: 5 };
    assert!(matches!(recorder(&app).record(&event).await.unwrap(), Handed::Sent(_)));
    eventually(WAIT, "the event stored", || async { app.db.count("events").await == 1 }).await;
    let (name, severity, message, org, recorded_by): (String, String, String, Option<String>, serde_json::Value) =
        sqlx::query_as("SELECT name, severity, message, org_id, properties->'recorded_by' FROM events")
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
    assert_eq!(
        (name.as_str(), severity.as_str(), message, org.as_deref()),
        ("cluster_install_completed", "info", format!("Cluster {CLUSTER}: installation completed with 5 hosts"), Some("org-r"))
    );
    assert_eq!(recorded_by, serde_json::json!({"component": "installer", "node": "node-3"}));
    let events = testkit::read_stream_kind(app.broker.bootstrap_servers(), &app.topic("events-stream"), "event", 1, WAIT).await;
    let streamed: serde_json::Value = serde_json::from_slice(events[0].payload.as_deref().unwrap()).unwrap();
    assert_eq!(streamed["name"], "cluster_install_completed");
    assert_eq!(streamed["payload"]["cluster_id"], CLUSTER);

    // The CLI records too, properties given as key=value.
    let cli = tokio::process::Command::new(env!("CARGO_BIN_EXE_event-router"))
        .args([
            "record",
            "cluster_install_stage_progressed",
            "--prop",
            &format!("cluster_id={CLUSTER}"),
            "--prop",
            "stage=finalizing",
        ])
        .args(["--prop", "progress=90", "--component", "cli-test", "--node", "n1", "--org-id", "org-r"])
        .env("KAFKA_BROKERS", app.broker.bootstrap_servers())
        .output()
        .await
        .unwrap();
    assert!(cli.status.success(), "{}", String::from_utf8_lossy(&cli.stderr));
    eventually(WAIT, "the CLI's event stored", || async { app.db.count("events").await == 2 }).await;
    let message: String = sqlx::query_scalar("SELECT message FROM events WHERE name = 'cluster_install_stage_progressed'")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(message, format!("Cluster {CLUSTER}: installation reached stage finalizing (90%)"));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_does_not_fit_the_catalog_is_dead_lettered_with_its_reason() {
    let app = spawn_app().await;
    let recorder = recorder(&app);
    let cases = [
        ("cluster_rebooted", serde_json::json!({"cluster_id": CLUSTER}), "event_unknown"),
        ("cluster_install_completed", serde_json::json!({"cluster_id": CLUSTER}), "event_properties_invalid"),
        ("cluster_install_completed", serde_json::json!({"cluster_id": "x", "host_count": 1}), "event_properties_invalid"),
        // Hostile: a NUL PostgreSQL cannot store, and a name far over its length.
        (
            "cluster_install_stage_progressed",
            serde_json::json!({"cluster_id": CLUSTER, "stage": "in\u{0}stalling", "progress": 5}),
            "database_rejected",
        ),
    ];
    for (name, properties, _) in &cases {
        recorder.record_value(name, properties.clone(), None).await.unwrap();
    }
    // A name far over the schema's 128 characters, sent past the recorder's own check.
    let long = serde_json::json!({"name": "n".repeat(200), "properties": {}, "source": {"component": "c", "node": "n"}});
    app.send("event-recorded", &testkit::user_message("org-r", &long, CLUSTER, "long-name")).await;
    let dead = app.read_topic(&app.topic("dlq"), cases.len() + 1, WAIT).await;
    let mut reasons: Vec<String> = dead.iter().filter_map(|m| header(m, dead_letter::REASON)).collect();
    reasons.sort();
    let mut expected: Vec<String> =
        cases.iter().map(|(_, _, reason)| reason.to_string()).chain(["schema_violation".to_owned()]).collect();
    expected.sort();
    assert_eq!(reasons, expected);
    let messages: Vec<String> = dead.iter().filter_map(|m| header(m, dead_letter::MESSAGE)).collect();
    assert!(messages.iter().any(|m| m.contains("needs the property `host_count`")), "{messages:?}");
    assert_eq!(app.db.count("events").await, 0);
    // None of it held up the topic: a good recording behind them, on the same key, is stored.
    let good = ClusterInstallCompleted { cluster_id: CLUSTER.parse().unwrap(), host_count: 2 };
    recorder.record(&good).await.unwrap();
    eventually(WAIT, "the good event behind the misfits stored", || async { app.db.count("events").await == 1 }).await;
    app.stop().await;
}
