//! Catalog events through the real path: handlers compare each report with what was stored,
//! emit in their transaction, the window folds repeats, and new events reach the stream.

use std::time::Duration;

use event_router::envelope::{IDENTITY_HEADER, REQUEST_ID_HEADER};
use event_router::producer::Outgoing;
use serde_json::{json, Value};
use testkit::{eventually, header, spawn_app, spawn_app_with, TestApp};

const WAIT: Duration = Duration::from_secs(20);
const HOST: &str = "5b1f8a2e-3c4d-4e5f-8a6b-7c8d9e0f1a2b";
const INFRA_ENV: &str = "7c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f";
const CLUSTER: &str = "0e9d8c7b-6a5f-4e3d-9c2b-1a0f9e8d7c6b";

fn host_report(status: &str, status_info: &str, ntp: &str, minute: u32) -> Value {
    json!({
        "host_id": HOST, "cluster_id": CLUSTER, "infra_env_id": INFRA_ENV, "host_name": "worker-7",
        "status": status, "status_info": status_info, "updated_at": format!("2026-11-23T10:{minute:02}:00Z"),
        "validations": [{"id": "ntp-synced", "status": ntp, "message": "Host clock is not synchronized"}]
    })
}

fn progress(stage: &str, percent: u32) -> Value {
    json!({"cluster_id": CLUSTER, "stage": stage, "progress": percent, "hosts": [{"host_id": HOST, "role": "master"}]})
}

/// Sends `payloads` of topic `key` in order, on one key (so one partition), request ids `<prefix>-<n>`.
async fn send_in_order(app: &TestApp, key: &str, payloads: &[Value], prefix: &str) {
    for (n, payload) in payloads.iter().enumerate() {
        app.send(key, &testkit::user_message("org-7", payload, "one-key", &format!("{prefix}-{n}"))).await;
    }
}

async fn processed(app: &TestApp, key: &str) -> f64 {
    let mut total = 0.0;
    for outcome in ["handled", "duplicate"] {
        total += app.metric("event_router_messages_processed_total", &[("topic", &app.topic(key)), ("outcome", outcome)]).await;
    }
    total
}

/// (name, severity, message, count, request id) of every event, oldest first.
async fn events(app: &TestApp) -> Vec<(String, String, String, i32, String)> {
    sqlx::query_as("SELECT name, severity, message, count, request_id FROM events ORDER BY id")
        .fetch_all(&app.db.pool)
        .await
        .unwrap()
}

fn row(name: &str, severity: &str, message: &str, count: i32, request_id: &str) -> (String, String, String, i32, String) {
    (name.into(), severity.into(), message.into(), count, request_id.into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_failing_a_validation_passing_it_then_changing_status_leaves_exactly_its_events() {
    let app = spawn_app().await;
    let reports = [
        host_report("discovering", "Host is being discovered", "failure", 1),
        host_report("discovering", "Host is being discovered", "success", 2),
        host_report("known", "Host is ready to be installed", "success", 3),
        // Older than what is stored by then: recorded as handled, changes nothing, emits nothing.
        host_report("installing", "late report", "failure", 0),
        host_report("error", "Disk /dev/sda failed its write test", "success", 4),
    ];
    send_in_order(&app, "host-status-changed", &reports, "host").await;
    eventually(WAIT, "five reports processed", || async { processed(&app, "host-status-changed").await == 5.0 }).await;
    let expected = [
        row("host_registered", "info", "Host worker-7: registered with status discovering", 1, "host-0"),
        row(
            "host_validation_failed",
            "warning",
            "Host worker-7: validation 'ntp-synced' is now failing: Host clock is not synchronized",
            1,
            "host-0",
        ),
        row(
            "host_validation_fixed",
            "info",
            "Host worker-7: validation 'ntp-synced' that used to fail is now fixed",
            1,
            "host-1",
        ),
        row(
            "host_status_updated",
            "info",
            "Host worker-7: updated status from discovering to known (Host is ready to be installed)",
            1,
            "host-2",
        ),
        row(
            "host_failed",
            "error",
            "Host worker-7: moved from known to error: Disk /dev/sda failed its write test. The host cannot take part in an \
             installation until the cause is fixed: read its failing validations and the logs it reported, fix what they \
             name (network, disk, time), then reset the host.",
            1,
            "host-4",
        ),
    ];
    assert_eq!(events(&app).await, expected);
    let (cluster, host, infra_env, org): (Option<String>, Option<String>, Option<String>, Option<String>) = sqlx::query_as(
        "SELECT cluster_id::text, host_id::text, infra_env_id::text, org_id FROM events WHERE name = 'host_failed'",
    )
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    assert_eq!(
        (cluster.as_deref(), host.as_deref(), infra_env.as_deref(), org.as_deref()),
        (Some(CLUSTER), Some(HOST), Some(INFRA_ENV), Some("org-7"))
    );

    // On the stream: the five routed messages and the five events, told apart by metadata.kind.
    let stream = app.read_topic(&app.topic("events-stream"), 10, WAIT).await;
    let kinds = |kind: &str| -> Vec<(Value, &event_router::message::RawMessage)> {
        stream
            .iter()
            .map(|m| (serde_json::from_slice::<Value>(m.payload.as_deref().unwrap()).unwrap(), m))
            .filter(|(v, _)| v["metadata"]["kind"] == kind)
            .collect()
    };
    assert_eq!(kinds("message").len(), 5);
    let streamed = kinds("event");
    let names: Vec<&str> = streamed.iter().map(|(v, _)| v["name"].as_str().unwrap()).collect();
    assert_eq!(names, expected.iter().map(|e| e.0.as_str()).collect::<Vec<_>>(), "in order: keyed by the host");
    let (failed, record) = &streamed[4];
    assert_eq!(failed["payload"]["severity"], "error");
    assert_eq!(failed["payload"]["message"], expected[4].2);
    assert_eq!(
        (failed["payload"]["host_id"].as_str(), failed["payload"]["infra_env_id"].as_str()),
        (Some(HOST), Some(INFRA_ENV))
    );
    assert_eq!(failed["payload"]["previous_status"], "known");
    assert_eq!(failed["metadata"]["org_id"], "org-7");
    assert_eq!(failed["metadata"]["request_id"], "host-4");
    assert_eq!(failed["metadata"]["versions"]["catalog"], event_router::events::catalog::CATALOG_DIGEST);
    assert_eq!(record.key.as_deref(), Some(HOST.as_bytes()));
    assert_eq!(header(record, REQUEST_ID_HEADER).as_deref(), Some("host-4"));
    let identity = event_router::envelope::identity::encode_identity(&samples::user_identity("org-7"));
    assert_eq!(header(record, IDENTITY_HEADER), Some(identity));

    for (name, severity) in [("host_validation_failed", "warning"), ("host_failed", "error")] {
        let emitted = app.metric("event_router_events_emitted_total", &[("name", name), ("severity", severity)]).await;
        assert_eq!(emitted, 1.0, "{name}");
    }

    // Everything delivered again (a second consumer group): no event twice.
    let again = app.spawn_sibling("event-router-events-again").await;
    eventually(WAIT, "redelivered reports processed", || async {
        again
            .metric(
                "event_router_messages_processed_total",
                &[("topic", &app.topic("host-status-changed")), ("outcome", "duplicate")],
            )
            .await
            == 5.0
    })
    .await;
    assert_eq!(events(&app).await, expected, "a redelivery emits nothing");
    again.stop().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_progressing_then_failing_leaves_its_stages_and_a_critical_event() {
    let app = spawn_app().await;
    let reports = [progress("preparing", 0), progress("installing", 10), progress("installing", 40), progress("failed", 40)];
    send_in_order(&app, "cluster-install-progressed", &reports, "cluster").await;
    eventually(WAIT, "four reports processed", || async { processed(&app, "cluster-install-progressed").await == 4.0 }).await;
    let c = CLUSTER;
    assert_eq!(
        events(&app).await,
        [
            row(
                "cluster_install_stage_progressed",
                "info",
                &format!("Cluster {c}: installation reached stage preparing (0%)"),
                1,
                "cluster-0"
            ),
            row(
                "cluster_install_stage_progressed",
                "info",
                &format!("Cluster {c}: installation reached stage installing (10%)"),
                1,
                "cluster-1"
            ),
            row(
                "cluster_install_failed",
                "critical",
                &format!(
                    "Cluster {c}: installation failed at 40% after stage installing; the cluster is not usable. Download the \
                     installation logs of its 1 hosts, fix what they report (a host that lost its network or ran out of disk \
                     is the usual cause), then reset the cluster and install again."
                ),
                1,
                "cluster-3",
            ),
        ]
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_event_again_within_the_window_is_counted_not_repeated() {
    for (window, expected_rows, folded) in [("60", 1, 1.0), ("0", 2, 0.0)] {
        let app = spawn_app_with(&[("EVENT_DEDUP_WINDOW", window)]).await;
        // The validation fails, passes, and fails again with the same message.
        let reports = [
            host_report("known", "ready", "failure", 1),
            host_report("known", "ready", "success", 2),
            host_report("known", "ready", "failure", 3),
        ];
        send_in_order(&app, "host-status-changed", &reports, "flap").await;
        eventually(WAIT, "three reports processed", || async { processed(&app, "host-status-changed").await == 3.0 }).await;
        let failures: Vec<(i32,)> = sqlx::query_as("SELECT count FROM events WHERE name = 'host_validation_failed' ORDER BY id")
            .fetch_all(&app.db.pool)
            .await
            .unwrap();
        let counts: Vec<i32> = failures.into_iter().map(|(c,)| c).collect();
        assert_eq!(counts, if expected_rows == 1 { vec![2] } else { vec![1, 1] }, "window {window}");
        assert_eq!(app.metric("event_router_events_folded_total", &[("name", "host_validation_failed")]).await, folded);
        app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_without_a_known_infra_env_records_no_events_until_one_arrives() {
    let app = spawn_app().await;
    let mut without = host_report("discovering", "found", "success", 1);
    without.as_object_mut().unwrap().remove("infra_env_id");
    without.as_object_mut().unwrap().remove("host_name");
    let mut named_later = host_report("known", "ready", "success", 2);
    named_later.as_object_mut().unwrap().remove("host_name");
    let mut still_without = host_report("installing", "installing", "success", 3);
    still_without.as_object_mut().unwrap().remove("infra_env_id");
    send_in_order(&app, "host-status-changed", &[without, named_later, still_without], "late-env").await;
    eventually(WAIT, "three reports processed", || async { processed(&app, "host-status-changed").await == 3.0 }).await;
    // The first report had no infra-env: nothing. The second brought it (the host's name is still
    // unknown, so its id stands in); the third leaves the infra-env out, and the stored one is
    // used, and names the host.
    assert_eq!(
        events(&app).await,
        [
            row(
                "host_status_updated",
                "info",
                &format!("Host {HOST}: updated status from discovering to known (ready)"),
                1,
                "late-env-1"
            ),
            row(
                "host_status_updated",
                "info",
                "Host worker-7: updated status from known to installing (installing)",
                1,
                "late-env-2"
            ),
        ]
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_message_in_a_batch_leaves_no_events_of_its_batch_twice() {
    // The fourth report contradicts itself and is refused; the batch is written again without it,
    // and the events of the reports before it must exist once.
    let reports = [
        progress("preparing", 0),
        progress("installing", 10),
        progress("installing", 20),
        progress("installed", 50),
        progress("installed", 100),
    ];
    let backlog: Vec<(&str, Outgoing)> = reports
        .iter()
        .enumerate()
        .map(|(n, p)| ("cluster-install-progressed", testkit::user_message("org-7", p, "one-key", &format!("b-{n}"))))
        .collect();
    let app = testkit::spawn_app_after_backlog(&backlog, &[]).await;
    eventually(WAIT, "five reports processed", || async {
        let dead = app
            .metric(
                "event_router_dead_letters_total",
                &[("topic", &app.topic("cluster-install-progressed")), ("reason", "stage_progress_mismatch")],
            )
            .await;
        processed(&app, "cluster-install-progressed").await == 4.0 && dead == 1.0
    })
    .await;
    let names: Vec<(String, String)> = events(&app).await.into_iter().map(|(name, _, _, _, request)| (name, request)).collect();
    assert_eq!(
        names,
        [
            ("cluster_install_stage_progressed".into(), "b-0".into()),
            ("cluster_install_stage_progressed".into(), "b-1".into()),
            ("cluster_install_completed".into(), "b-4".into()),
        ]
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_spread_over_two_instances_get_each_of_their_events_once() {
    let first = spawn_app().await;
    let hosts: Vec<String> = (0..12u64).map(|n| samples::uuid_from(n, 77).to_string()).collect();
    let sequence = [
        ("discovering", "failure", 1),
        ("discovering", "success", 2),
        ("known", "success", 3),
        ("installing", "failure", 0),
        ("error", "success", 4),
    ];
    // The second instance joins while the reports flow: partitions move between them.
    let mut second = None;
    for (step, (status, ntp, minute)) in sequence.into_iter().enumerate() {
        for host in &hosts {
            let mut report = host_report(status, "info", ntp, minute);
            report["host_id"] = json!(host);
            first.send("host-status-changed", &testkit::user_message("org-7", &report, host, &format!("{host}-{step}"))).await;
        }
        if step == 1 {
            second = Some(first.spawn_sibling("event-router-test").await);
        }
    }
    let db = first.db.clone();
    eventually(Duration::from_secs(60), "every report processed", || async { db.inbox_entries().await == 60 }).await;
    let per_host: Vec<(String, Vec<String>, i64)> = sqlx::query_as(
        "SELECT host_id::text, array_agg(name ORDER BY id), sum(count) FROM events GROUP BY host_id ORDER BY host_id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(per_host.len(), 12);
    let expected = ["host_registered", "host_validation_failed", "host_validation_fixed", "host_status_updated", "host_failed"];
    for (host, names, count) in per_host {
        assert_eq!((names.as_slice(), count), (expected.map(String::from).as_slice(), 5), "host {host}");
    }
    if let Some(second) = second {
        second.stop().await;
    }
    first.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_causing_more_events_than_allowed_records_the_first_and_counts_the_rest() {
    let app = spawn_app().await;
    let mut report = host_report("discovering", "found", "failure", 1);
    report["validations"] = (0..20)
        .map(|i| json!({"id": format!("check-{i:02}"), "status": "failure", "message": "failing"}))
        .collect::<Vec<_>>()
        .into();
    send_in_order(&app, "host-status-changed", &[report], "flood").await;
    eventually(WAIT, "the report processed", || async { processed(&app, "host-status-changed").await == 1.0 }).await;
    // host_registered and 20 validations: 21 events, of which the first 16 are recorded.
    let recorded = events(&app).await;
    assert_eq!(recorded.len(), event_router::events::MAX_PER_MESSAGE);
    assert_eq!(recorded[0].0, "host_registered");
    assert!(recorded[15].2.contains("'check-14'"), "in the order emitted: {:?}", recorded[15]);
    assert_eq!(app.metric("event_router_events_dropped_total", &[]).await, 5.0);
    assert_eq!(app.db.count("host_statuses").await, 1, "the host itself is stored");
    app.stop().await;
}
