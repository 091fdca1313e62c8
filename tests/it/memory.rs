//! Memory is bounded in bytes: the service, as its own process, drains a backlog of large
//! messages (valid ones of ~150 kB and invalid ones of ~800 kB) many times larger than its
//! `MAX_BUFFERED_BYTES`, and its peak resident memory stays bounded. The same backlog drained with
//! a budget too large to matter is measured in the same test, for comparison.

use std::process::Stdio;
use std::time::{Duration, Instant};

use dev_broker::DevBroker;
use event_router::envelope::identity::encode_identity;
use event_router::envelope::{IDENTITY_HEADER, REQUEST_ID_HEADER};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::ClientConfig;
use serde_json::json;
use testkit::TestDb;

/// Partitions of each input topic: the mock broker keeps at most about 5 MiB per partition, so
/// the backlog is spread to fit.
const PARTITIONS: i32 = 16;
const LARGE_INVALID: usize = 64;
const LARGE_VALID: usize = 384;

/// A host status with 128 validations of 1 kB messages: about 150 kB, valid.
fn large_host_status(n: u64) -> Vec<u8> {
    let mut host = testkit::sample("host-status-changed", n);
    host["validations"] = (0..128)
        .map(|i| json!({"id": format!("check-{i}"), "status": "failure", "message": "m".repeat(1000)}))
        .collect::<Vec<_>>()
        .into();
    host.to_string().into_bytes()
}

/// A todo whose description is far over its `maxLength`: about 800 kB, dead-lettered.
fn large_invalid_todo(n: u32) -> Vec<u8> {
    json!({"id": n, "title": "big", "description": "d".repeat(800_000)}).to_string().into_bytes()
}

async fn produce_backlog(brokers: &str) -> usize {
    let producer: FutureProducer =
        ClientConfig::new().set("bootstrap.servers", brokers).set("message.max.bytes", "1000000").create().unwrap();
    let identity = encode_identity(&samples::user_identity("org-memory"));
    let records: Vec<(&str, Vec<u8>)> = (0..LARGE_VALID)
        .map(|n| ("platform.event-router.host-status-changed", large_host_status(n as u64)))
        .chain((0..LARGE_INVALID).map(|n| ("platform.event-router.todo-created", large_invalid_todo(n as u32))))
        .collect();
    let mut sends = Vec::new();
    let mut bytes = 0;
    for (n, (topic, value)) in records.iter().enumerate() {
        bytes += value.len();
        let headers = OwnedHeaders::new()
            .insert(Header { key: IDENTITY_HEADER, value: Some(identity.as_bytes()) })
            .insert(Header { key: REQUEST_ID_HEADER, value: Some(format!("mem-{n}").as_bytes()) });
        let record = FutureRecord::to(topic).partition(n as i32 % PARTITIONS).key("k").payload(value).headers(headers);
        sends.push(producer.send(record, Timeout::Never));
    }
    for sent in futures::future::join_all(sends).await {
        sent.map_err(|(error, _)| error).expect("the broker accepts the backlog");
    }
    bytes
}

/// Drains a fresh backlog with `budget` bytes and returns the service's peak RSS in bytes.
async fn peak_rss_draining(budget: usize) -> (u64, usize) {
    let broker = DevBroker::start(1).unwrap();
    for (topic, partitions) in [
        ("platform.event-router.host-status-changed", PARTITIONS),
        ("platform.event-router.todo-created", PARTITIONS),
        ("platform.event-router.cluster-install-progressed", 1),
        ("platform.event-router.events-stream", 4),
        ("platform.event-router.dlq", 4),
    ] {
        broker.create_topic(topic, partitions).unwrap();
    }
    let backlog = produce_backlog(broker.bootstrap_servers()).await;
    let db = TestDb::create().await;
    let mut service = tokio::process::Command::new(env!("CARGO_BIN_EXE_event-router"))
        .arg("run")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("KAFKA_BROKERS", broker.bootstrap_servers())
        .env("DATABASE_URL", &db.url)
        .env("METRICS_ADDR", "127.0.0.1:0")
        .env("API_ADDR", "127.0.0.1:0")
        .env("MAX_BUFFERED_BYTES", budget.to_string())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the service binary starts");
    let pid = service.id().unwrap();
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let handled: i64 = sqlx::query_scalar(testkit::COUNT_INBOX_ENTRIES).fetch_one(&db.pool).await.unwrap_or(0);
        let dead: i64 = sqlx::query_scalar("SELECT count(*) FROM dead_letters").fetch_one(&db.pool).await.unwrap_or(0);
        if handled == LARGE_VALID as i64 && dead == LARGE_INVALID as i64 {
            break;
        }
        assert!(service.try_wait().unwrap().is_none(), "the service exited while draining");
        assert!(
            Instant::now() < deadline,
            "drained {handled} of {LARGE_VALID} valid and {dead} of {LARGE_INVALID} invalid messages in time"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let peak_kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/<pid>/status");
    service.kill().await.unwrap();
    db.drop_database().await;
    (peak_kib * 1024, backlog)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_of_large_messages_drains_within_the_byte_budget() {
    const MIB: u64 = 1024 * 1024;
    let budget = 16 * MIB as usize;
    let (bounded, backlog) = peak_rss_draining(budget).await;
    let (unbounded, _) = peak_rss_draining(4096 * MIB as usize).await;
    eprintln!(
        "backlog {} MiB; peak RSS with a {} MiB budget: {} MiB; with a budget too large to matter: {} MiB ({:.2}x)",
        backlog as u64 / MIB,
        budget as u64 / MIB,
        bounded / MIB,
        unbounded / MIB,
        unbounded as f64 / bounded as f64
    );
    // What the budget bounds plus what it does not: the process itself, librdkafka's pre-fetch
    // queue (16 MiB) and its fetch buffers, the relay's batch of 16 MiB and the copies the
    // producers queue. Well under the backlog, and under the 256 MiB the deployment allows.
    assert!(bounded < 160 * MIB, "peak RSS {} MiB with a 16 MiB budget", bounded / MIB);
    assert!(bounded < unbounded, "the budget made no difference: {} vs {} MiB", bounded / MIB, unbounded / MIB);
}
