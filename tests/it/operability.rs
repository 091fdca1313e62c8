//! What SREs rely on: metrics that match what happened and pass promtool, probes that follow the
//! database, and deployment files that only use metrics the service really exports.

use std::time::Duration;

use event_router::producer::{IdentityHeader, Outgoing};
use testkit::{eventually, spawn_app};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_consumed_and_processed_messages_per_topic_and_outcome() {
    let app = spawn_app().await;
    let todo_topic = app.topic("todo-created");
    // Series exist from the first scrape, before any message.
    assert_eq!(app.metric("event_router_messages_processed_total", &[("topic", &todo_topic), ("outcome", "handled")]).await, 0.0);
    assert_eq!(app.metric("event_router_build_info", &[("version", env!("CARGO_PKG_VERSION"))]).await, 1.0);

    let user = || IdentityHeader::Document(samples::user_identity("1"));
    let mut partitions = std::collections::BTreeSet::new();
    for id in 0..5 {
        partitions.insert(app.send("todo-created", &Outgoing::json(&testkit::todo(id), user())).await.delivery.partition);
    }
    for _ in 0..2 {
        let sent = app.send("todo-created", &Outgoing::json(&serde_json::json!({"id": "x"}), user())).await;
        partitions.insert(sent.delivery.partition);
    }
    eventually(Duration::from_secs(30), "7 messages processed", || async {
        app.metric("event_router_messages_consumed_total", &[("topic", &todo_topic)]).await == 7.0
            && app.metric("event_router_messages_in_flight", &[]).await == 0.0
    })
    .await;
    assert_eq!(app.metric("event_router_messages_processed_total", &[("topic", &todo_topic), ("outcome", "handled")]).await, 5.0);
    assert_eq!(
        app.metric("event_router_messages_processed_total", &[("topic", &todo_topic), ("outcome", "dead_lettered")]).await,
        2.0
    );
    assert_eq!(
        app.metric("event_router_dead_letters_total", &[("topic", &todo_topic), ("reason", "schema_violation")]).await,
        2.0
    );
    eventually(Duration::from_secs(30), "5 events relayed to the stream", || async {
        app.metric("event_router_stream_publish_total", &[("result", "ok")]).await == 5.0
    })
    .await;

    // Latency histograms counted each handled message once; the lag gauge and outbox gauges exist.
    let histogram_count = |name: &'static str| {
        let app = &app;
        let topic = todo_topic.clone();
        async move { app.metric(&format!("{name}_count"), &[("topic", &topic)]).await }
    };
    assert_eq!(histogram_count("event_router_end_to_end_latency_seconds").await, 5.0);
    assert_eq!(histogram_count("event_router_db_transaction_duration_seconds").await, 5.0);
    assert_eq!(histogram_count("event_router_handler_duration_seconds").await, 5.0);
    // Once drained, every partition that received messages reports a lag of 0.
    eventually(Duration::from_secs(30), "zero lag reported for the partitions that had messages", || async {
        let mut all_zero = true;
        for partition in &partitions {
            let (_, body) = app.get("/metrics").await;
            let labels = [("topic", todo_topic.as_str()), ("partition", &partition.to_string())];
            all_zero &= testkit::metric_value(&body, "event_router_consumer_lag", &labels) == Some(0.0);
        }
        all_zero
    })
    .await;
    eventually(Duration::from_secs(30), "the outbox backlog is sampled", || async {
        app.metric("event_router_outbox_backlog", &[]).await == 0.0
            && app.metric("event_router_outbox_oldest_age_seconds", &[]).await == 0.0
    })
    .await;

    let (status, body) = app.get("/healthz").await;
    assert_eq!((status, body.as_str()), (200, "ok"));
    let (status, body) = app.get("/readyz").await;
    assert_eq!(status, 200, "{body}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_switched_off_publishes_nothing_but_still_handles() {
    let app = testkit::spawn_app_with(&[("EVENT_STREAM_ENABLED", "false")]).await;
    let user = IdentityHeader::Document(samples::user_identity("1"));
    app.send("todo-created", &Outgoing::json(&testkit::todo(1), user)).await;
    eventually(Duration::from_secs(20), "todo stored", || async { app.db.count("todos").await == 1 }).await;
    let stream = testkit::drain_topic(app.broker.bootstrap_servers(), &app.topic("events-stream"), Duration::from_secs(2)).await;
    assert!(stream.is_empty(), "nothing is published when the stream is off");
    assert_eq!(app.db.count("outbox").await, 0, "and nothing waits in the outbox");
    app.stop().await;
}

/// Runs `promtool` with `args`, feeding `stdin`; returns (success, output).
fn promtool(args: &[&str], stdin: &str) -> (bool, String) {
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool is installed (make test installs the Debian package `prometheus`)");
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    (output.status.success(), format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_and_deploy_files_use_only_real_metrics() {
    // With a hook, so that the writers' series exist too.
    let hooks = std::env::temp_dir().join(format!("hooks-metrics-{}.toml", uuid::Uuid::new_v4().simple()));
    std::fs::write(&hooks, "[[hook]]\nname = \"noop\"\nevents = \"all\"\ncommand = [\"true\"]\n").unwrap();
    let app = testkit::spawn_app_with(&[("EVENT_HOOKS_FILE", hooks.to_str().unwrap())]).await;
    app.send("todo-created", &Outgoing::json(&testkit::todo(1), IdentityHeader::Document(samples::user_identity("1")))).await;
    eventually(Duration::from_secs(30), "a message handled", || async { app.db.count("todos").await == 1 }).await;
    // Consumer lag is a series per owned partition, reported from librdkafka's statistics.
    eventually(Duration::from_secs(30), "consumer lag reported", || async {
        app.get("/metrics").await.1.contains("event_router_consumer_lag{")
    })
    .await;
    let (_, metrics) = app.get("/metrics").await;
    let (ok, output) = promtool(&["check", "metrics"], &metrics);
    assert!(ok && output.trim().is_empty(), "promtool check metrics:\n{output}");

    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let alerts = root.join("deploy/prometheus/alerts.yaml");
    let (ok, output) = promtool(&["check", "rules", alerts.to_str().unwrap()], "");
    assert!(ok, "promtool check rules:\n{output}");

    // Every metric name the dashboard, alerts and manifests use is exported.
    let exported: std::collections::HashSet<&str> =
        metrics.lines().filter_map(|l| l.strip_prefix("# TYPE ")).filter_map(|l| l.split(' ').next()).collect();
    let mut files =
        vec![alerts, root.join("deploy/grafana/event-router-dashboard.json"), root.join("deploy/kubernetes/prometheusrule.yaml")];
    files.sort();
    let word = regress::Regex::new(r"event_router_[a-z_]+").unwrap();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for found in word.find_iter(&text) {
            let name = &text[found.range()];
            let base = ["_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s)).filter(|b| exported.contains(b));
            assert!(
                exported.contains(name) || base.is_some(),
                "{} uses `{name}`, which /metrics does not export",
                file.display()
            );
        }
    }
    app.stop().await;
    let _ = std::fs::remove_file(hooks);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_the_database_away_and_back() {
    let db = std::sync::Arc::new(testkit::TestDb::create().await);
    let proxy = testkit::TcpProxy::start("127.0.0.1:5432".parse().unwrap()).await;
    let proxied = db.url.replace("127.0.0.1:5432", &proxy.addr.to_string());
    assert_ne!(proxied, db.url, "TEST_DATABASE_URL must point at 127.0.0.1:5432 for this test");
    let broker = testkit::start_broker(&testkit::test_config("127.0.0.1:1", &db.url, "probe", &[]));
    let app = testkit::TestApp::spawn(broker, db.clone(), "event-router-test", &[("DATABASE_URL", proxied.as_str())]).await;
    eventually(Duration::from_secs(30), "ready", || async { app.get("/readyz").await.0 == 200 }).await;

    proxy.cut();
    eventually(Duration::from_secs(30), "unready while the database is away", || async {
        let (status, body) = app.get("/readyz").await;
        status == 503 && body.contains("\"database\":false")
    })
    .await;
    assert_eq!(app.get("/healthz").await.0, 200, "still alive: no restart needed");
    // A message that arrives meanwhile waits, and is handled once the database is back.
    app.send("todo-created", &Outgoing::json(&testkit::todo(77), IdentityHeader::Document(samples::user_identity("1")))).await;

    proxy.restore();
    eventually(Duration::from_secs(30), "ready again", || async { app.get("/readyz").await.0 == 200 }).await;
    eventually(Duration::from_secs(30), "the waiting message handled", || async { db.count("todos").await == 1 }).await;
    app.stop().await;
}

/// A consumer out of its group is not ready. Its group coordinator (the embedded broker) goes
/// down: no heartbeat gets an answer, the session times out (`session.timeout.ms`, 10 s), and
/// librdkafka revokes the assignment as lost. `/readyz` then answers 503 with `consumer_joined:
/// false`, though the database answers and the consumer task runs; once the coordinator is back
/// and the consumer has rejoined and been assigned partitions, 200 again, and it consumes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_the_consumer_out_of_its_group_and_back() {
    let app = spawn_app().await;
    eventually(Duration::from_secs(30), "ready", || async { app.get("/readyz").await.0 == 200 }).await;
    let revokes = || app.metric("event_router_rebalances_total", &[("kind", "revoke")]);
    let revoked_before = revokes().await;

    let down_at = std::time::Instant::now();
    app.broker.embedded().broker_down(1).unwrap();
    eventually(Duration::from_secs(30), "unready once out of the group", || async {
        let (status, body) = app.get("/readyz").await;
        status == 503 && body.contains("\"consumer_joined\":false")
    })
    .await;
    let noticed = down_at.elapsed();
    let (_, body) = app.get("/readyz").await;
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!((&body["database"], &body["consumer_running"]), (&true.into(), &true.into()), "only the group is missing: {body}");
    assert!(noticed >= Duration::from_secs(5), "out of the group only once the session timed out, not at once ({noticed:?})");
    assert!(revokes().await > revoked_before, "the assignment was revoked");
    assert_eq!(app.get("/healthz").await.0, 200, "still alive: no restart needed");

    let up_at = std::time::Instant::now();
    app.broker.embedded().broker_up(1).unwrap();
    eventually(Duration::from_secs(60), "ready again once rejoined", || async {
        let (status, body) = app.get("/readyz").await;
        status == 200 && body.contains("\"consumer_joined\":true")
    })
    .await;
    let rejoined = up_at.elapsed();
    app.send("todo-created", &Outgoing::json(&testkit::todo(5), IdentityHeader::Document(samples::user_identity("1")))).await;
    eventually(Duration::from_secs(30), "consuming again", || async { app.db.count("todos").await == 1 }).await;
    println!("readyz: out of the group {noticed:.1?} after its coordinator went down, ready {rejoined:.1?} after it came back");
    app.stop().await;
}

/// The HTTP server alone, on a port of its own, with `limits`; stopped by cancelling the token.
async fn serve_http(
    limits: event_router::http::HttpLimits,
) -> (std::net::SocketAddr, tokio_util::sync::CancellationToken, tokio::task::JoinHandle<std::io::Result<()>>) {
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    let state = event_router::http::HttpState {
        telemetry: Arc::new(event_router::telemetry::Telemetry::new(vec![])),
        // Never connected: the endpoints do not use the pipeline's pool.
        pool: sqlx::PgPool::connect_lazy("postgres://nobody@127.0.0.1:1/nothing").unwrap(),
        database: Arc::default(),
        consumer_joined: Arc::new(AtomicBool::new(false)),
        consumer_running: Arc::new(AtomicBool::new(false)),
        stall_threshold: Duration::from_secs(60),
        limits,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(event_router::http::serve(listener, event_router::http::routes(state), limits, {
        let stop = stop.clone();
        async move { stop.cancelled().await }
    }));
    (addr, stop, server)
}

/// Opens a connection and sends the start of a request line, then nothing.
async fn slow_client(addr: std::net::SocketAddr) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(b"GET /healthz HT").await.unwrap();
    stream
}

/// Reads until the server closes the connection (end of stream or reset).
async fn read_until_closed(stream: &mut tokio::net::TcpStream) {
    use tokio::io::AsyncReadExt;
    let mut buffer = [0u8; 1024];
    while let Ok(read) = stream.read(&mut buffer).await {
        if read == 0 {
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_is_disconnected_and_cannot_hold_the_connection_slots() {
    let header_read_timeout = Duration::from_millis(500);
    let limits = event_router::http::HttpLimits { header_read_timeout, max_connections: 1, ..Default::default() };
    let (addr, stop, server) = serve_http(limits).await;

    let started = std::time::Instant::now();
    let mut slow = slow_client(addr).await;
    // The only slot is taken: a well-behaved request waits until the slow client is gone.
    let waiting = tokio::spawn(async move {
        let answer = testkit::http_get(addr, "/healthz").await;
        (answer, started.elapsed())
    });
    tokio::time::timeout(header_read_timeout + Duration::from_secs(2), read_until_closed(&mut slow))
        .await
        .expect("the server closes a connection that sends no complete request head in time");
    assert!(started.elapsed() >= header_read_timeout - Duration::from_millis(100), "not before the timeout");

    let (answer, waited) =
        tokio::time::timeout(Duration::from_secs(5), waiting).await.expect("served once the slot is free").unwrap();
    assert_eq!(answer, (200, "ok".to_string()));
    assert!(waited >= header_read_timeout - Duration::from_millis(100), "waited for the slot ({waited:?})");

    stop.cancel();
    server.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_shutdown_is_bounded_even_with_a_connection_stuck_mid_request() {
    let limits = event_router::http::HttpLimits { header_read_timeout: Duration::from_secs(60), ..Default::default() };
    let (addr, stop, server) = serve_http(limits).await;
    let mut slow = slow_client(addr).await;
    assert_eq!(testkit::http_get(addr, "/healthz").await.0, 200);

    let stopping = std::time::Instant::now();
    stop.cancel();
    tokio::time::timeout(event_router::http::SHUTDOWN_GRACE + Duration::from_secs(2), server)
        .await
        .expect("serve returns within the shutdown grace")
        .unwrap()
        .unwrap();
    tokio::time::timeout(Duration::from_secs(1), read_until_closed(&mut slow)).await.expect("the stuck connection is closed");
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "no longer listening");
    assert!(stopping.elapsed() < event_router::http::SHUTDOWN_GRACE + Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_probes_use_one_session_of_their_own_however_many_arrive() {
    let app = spawn_app().await;
    eventually(Duration::from_secs(30), "ready", || async { app.get("/readyz").await.0 == 200 }).await;
    let (_, body) = app.get("/readyz").await;
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    for key in ["database", "consumer_running", "consumer_joined", "stalled", "stalled_seconds"] {
        assert!(body.get(key).is_some(), "/readyz reports {key}: {body}");
    }
    assert_eq!(body["consumer_running"], true);

    let probes = futures::future::join_all((0..200).map(|_| app.get("/readyz")));
    let answers = tokio::time::timeout(Duration::from_secs(10), probes).await.expect("200 probes answered promptly");
    assert!(answers.iter().all(|(status, _)| *status == 200), "every probe ready");

    // Sessions of the readiness check on this test's database, and what each last ran.
    let sessions: Vec<(String, String)> =
        sqlx::query_as("SELECT application_name, query FROM pg_stat_activity WHERE datname = $1 AND application_name = $2")
            .bind(&app.db.name)
            .bind(event_router::http::READINESS_APPLICATION_NAME)
            .fetch_all(&app.db.pool)
            .await
            .unwrap();
    assert_eq!(sessions.len(), 1, "one readiness session: {sessions:?}");
    assert_eq!(sessions[0].1, "SELECT 1", "the readiness session is the one checking the database");
    app.stop().await;
}

/// A consumer that dies (here: librdkafka raising a fatal error, injected as its own test API
/// allows) is not left running as a pod that consumes nothing: `/readyz` answers 503 with
/// `consumer_running: false` while the service stops, and the service ends with an error, so that
/// the process exits non-zero and the orchestrator restarts it. (An event waits in the outbox for
/// a stream broker that is down, so stopping takes the relay's drain deadline: long enough to
/// probe.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_dies_fails_readiness_and_ends_the_service_with_an_error() {
    use rdkafka::consumer::Consumer as _;
    let stream_cluster = dev_broker::DevBroker::start(1).unwrap();
    stream_cluster.create_topic("platform.event-router.events-stream", 1).unwrap();
    stream_cluster.broker_down(1).unwrap();
    let app = testkit::spawn_app_with(&[("EVENT_STREAM_BROKERS", stream_cluster.bootstrap_servers())]).await;
    app.send("todo-created", &Outgoing::json(&testkit::todo(1), IdentityHeader::Document(samples::user_identity("1")))).await;
    eventually(Duration::from_secs(20), "handled, its event waiting in the outbox", || async {
        app.db.count("todos").await == 1 && app.db.count("outbox").await == 1
    })
    .await;
    assert_eq!(app.get("/readyz").await.0, 200);

    let reason = std::ffi::CString::new("injected by the test").unwrap();
    // SAFETY: a live client handle of the running service, and a NUL-terminated reason.
    let injected = unsafe {
        rdkafka_sys::rd_kafka_test_fatal_error(
            app.consumer().client().native_ptr(),
            rdkafka_sys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR__NOT_IMPLEMENTED,
            reason.as_ptr(),
        )
    };
    assert_eq!(injected, rdkafka_sys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR);
    eventually(Duration::from_secs(5), "/readyz answers 503 with consumer_running false", || async {
        let (status, body) = app.get("/readyz").await;
        status == 503 && body.contains("\"consumer_running\":false")
    })
    .await;
    let ended = app.ended(Duration::from_secs(30)).await;
    let error = format!("{:#}", ended.expect_err("the service ends with an error"));
    assert!(error.contains("fatal"), "{error}");
}

/// The allocator's settings come from the environment (`_RJEM_MALLOC_CONF`, read by jemalloc
/// before `main`), outside the service's own configuration checks: whatever an operator puts
/// there, the binary reports what it could not use and runs on.
#[cfg(feature = "jemalloc")]
#[test]
fn a_malformed_allocator_setting_is_reported_and_the_binary_runs_on() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;

    let huge = "x".repeat(100_000);
    let settings: [&OsStr; 4] = [
        OsStr::from_bytes(b"\xff\xfegarbage:1"),
        OsStr::new("narenas:1,narenas:2,narenas:99999999999,dirty_decay_ms:abc"),
        OsStr::new("unknown_option:1,,:"),
        OsStr::new(&huge),
    ];
    for setting in settings {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_event-router"))
            .arg("--version")
            .env("_RJEM_MALLOC_CONF", setting)
            .output()
            .unwrap();
        let shown = String::from_utf8_lossy(&setting.as_bytes()[..setting.len().min(60)]).into_owned();
        assert!(output.status.success(), "{shown}: {:?}", output.status);
        assert_eq!(String::from_utf8_lossy(&output.stdout), format!("event-router {}\n", env!("CARGO_PKG_VERSION")), "{shown}");
        // jemalloc read the setting (so this is the allocator in use) and said what it ignored.
        assert!(String::from_utf8_lossy(&output.stderr).contains("<jemalloc>:"), "{shown}: {:?}", output.stderr);
    }
}
