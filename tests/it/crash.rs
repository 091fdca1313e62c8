//! Crash test: the broker runs in its own process, the service in others; instances are killed
//! with SIGKILL at random moments while messages (valid and invalid) flow, and restarted. In the
//! end every valid message is in the database exactly once and in the stream at least once, and
//! every invalid one is in the dead-letter topic and table.
//!
//! `make test` runs it with 50,000 messages, one instance and 5 kills; `make soak` sets
//! `CRASH_MESSAGES`, `CRASH_KILLS`, `CRASH_INSTANCES` and `CRASH_PARTITIONS` higher (the embedded
//! broker keeps about 5 MiB per partition, so more messages need more partitions; the stream topic
//! carries the catalog events the host and cluster messages cause too, which took 16 partitions
//! past that limit once: 32 by default).

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use event_router::config::Config;
use event_router::producer::{EventProducer, IdentityHeader, Outgoing};
use futures::stream::{self, StreamExt};
use serde_json::json;
use testkit::TestDb;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// What message `n` is: its topic key, and whether the service must accept it.
fn message(n: u64) -> (&'static str, Outgoing, bool) {
    let identity = || IdentityHeader::Document(samples::user_identity("crash"));
    let request_id = Some(format!("crash-{n}"));
    // Many keys, so every partition gets a fair share: the embedded broker keeps only about
    // 5 MiB per partition and truncates the oldest messages beyond that.
    let key = Some(format!("key-{}", n % 1009));
    if n % 10 == 9 {
        // Invalid: alternately a broken identity and a schema violation.
        let outgoing = if n % 20 == 9 {
            Outgoing::json(&testkit::todo(n as u32), IdentityHeader::Encoded("%%".into()))
        } else {
            Outgoing::json(&json!({"id": n, "title": "no description"}), identity())
        };
        return ("todo-created", Outgoing { key, request_id, ..outgoing }, false);
    }
    let topic = ["todo-created", "host-status-changed", "cluster-install-progressed"][(n % 3) as usize];
    let payload = testkit::sample(topic, n);
    (topic, Outgoing { key, request_id, ..Outgoing::json(&payload, identity()) }, true)
}

struct Cluster {
    brokers: String,
    db: TestDb,
    logs: PathBuf,
    _broker: Child,
}

impl Cluster {
    async fn start() -> Cluster {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let brokers = format!("127.0.0.1:{port}");
        let mut broker = Command::new(env!("CARGO_BIN_EXE_event-router"))
            .args(["dev-broker", "--listen", &brokers, "--partitions", &setting("CRASH_PARTITIONS", 32).to_string()])
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start the broker process");
        let mut lines = BufReader::new(broker.stdout.take().unwrap()).lines();
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.starts_with("topics") {
                break;
            }
        }
        let logs = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("crash-{port}"));
        std::fs::create_dir_all(&logs).unwrap();
        Cluster { brokers, db: TestDb::create().await, logs, _broker: broker }
    }

    fn config(&self) -> Config {
        testkit::test_config(&self.brokers, &self.db.url, "crash", &[])
    }

    /// Starts instance `index` (its log goes to the cluster's log folder, appended per start).
    fn start_instance(&self, index: usize) -> Child {
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.logs.join(format!("instance-{index}.log"))).unwrap();
        Command::new(env!("CARGO_BIN_EXE_event-router"))
            .arg("run")
            .env("KAFKA_BROKERS", &self.brokers)
            .env("KAFKA_GROUP_ID", "crash")
            .env("DATABASE_URL", &self.db.url)
            .env("METRICS_ADDR", "127.0.0.1:0")
            .env("API_ADDR", "127.0.0.1:0")
            .env("RETRY_MAX_BACKOFF_MS", "1000")
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "warn")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("start a service instance")
    }
}

async fn produce(producer: EventProducer, total: u64, pace: Duration) {
    let started = Instant::now();
    stream::iter(0..total)
        .map(|n| {
            let producer = &producer;
            async move {
                // Spread the messages over `pace` so that kills land while they flow.
                let due = pace.mul_f64(n as f64 / total as f64);
                tokio::time::sleep_until((started + due).into()).await;
                let (topic, outgoing, _) = message(n);
                producer.send_raw(&producer.build(topic, &outgoing)).await.expect("the broker accepts the message");
            }
        })
        .buffer_unordered(2000)
        .collect::<()>()
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_at_random_moments_the_service_loses_and_duplicates_nothing() {
    let total = setting("CRASH_MESSAGES", 50_000);
    let kills = setting("CRASH_KILLS", 5);
    let instance_count = setting("CRASH_INSTANCES", 1) as usize;
    let cluster = Cluster::start().await;
    let config = cluster.config();
    let producer = EventProducer::new(&config.kafka, &config.topics).unwrap();

    let mut instances: Vec<Child> = (0..instance_count).map(|i| cluster.start_instance(i)).collect();
    let producing = tokio::spawn(produce(producer, total, Duration::from_secs(kills * 3)));
    for _ in 0..kills {
        tokio::time::sleep(Duration::from_millis(1000 + fastrand::u64(0..3000))).await;
        let victim = fastrand::usize(0..instance_count);
        instances[victim].kill().await.expect("SIGKILL an instance");
        instances[victim] = cluster.start_instance(victim);
    }
    producing.await.unwrap();

    let valid: Vec<u64> = (0..total).filter(|n| message(*n).2).collect();
    let invalid: Vec<u64> = (0..total).filter(|n| !message(*n).2).collect();
    let db = &cluster.db;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let (processed, dead, outbox) = (db.inbox_entries().await, db.count("dead_letters").await, db.count("outbox").await);
        // At least: a message recorded twice must fail the checks below, not time out here.
        if processed >= valid.len() as i64 && dead >= invalid.len() as i64 && outbox == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not finished after 10 minutes: processed {processed}/{}, dead letters {dead}/{}, outbox {outbox}; logs in {}",
            valid.len(),
            invalid.len(),
            cluster.logs.display()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Exactly once in the database: every table's rows match what was sent, one for one.
    let count_of = |topic: &str| valid.iter().filter(|n| message(**n).0 == topic).count() as i64;
    assert_eq!(db.count("todos").await, count_of("todo-created"));
    assert_eq!(db.count("host_statuses").await, count_of("host-status-changed"));
    assert_eq!(db.count("cluster_install_progress").await, count_of("cluster-install-progressed"), "append-only: no duplicate");
    assert_eq!(db.inbox_entries().await, valid.len() as i64, "one inbox entry per valid message");
    assert_eq!(db.distinct_inbox_offsets().await, valid.len() as i64, "no offset recorded twice");

    // At least once in the stream; every invalid message in the dead-letter topic. The stream
    // carries the catalog events too: in a soak it outgrows what the embedded broker keeps.
    for topic in [config.topics.stream(), config.topics.dead_letter()] {
        let dropped = testkit::records_dropped_by_broker(&cluster.brokers, &topic).await;
        assert_eq!(
            dropped, 0,
            "the embedded broker dropped the oldest {dropped} records of {topic} (it keeps about 5 MiB a partition), so they \
             cannot be checked: raise CRASH_PARTITIONS"
        );
    }
    let want = |ns: &[u64]| ns.iter().map(|n| format!("crash-{n}")).collect::<HashSet<_>>();
    let (stream_ids, stream_read) =
        testkit::request_ids(&cluster.brokers, &config.topics.stream(), valid.len(), Duration::from_secs(300), |m| {
            testkit::stream_kind(m).as_deref() == Some("message")
        })
        .await;
    let missing_in_stream = want(&valid).difference(&stream_ids).count();
    let (dead_ids, dead_read) =
        testkit::request_ids(&cluster.brokers, &config.topics.dead_letter(), invalid.len(), Duration::from_secs(120), |_| true)
            .await;
    let missing_in_dlq = want(&invalid).difference(&dead_ids).count();
    println!(
        "crash test: sent {total} ({} valid, {} invalid) to {instance_count} instance(s), {kills} kills; \
         rows: processed {} todos {} hosts {} progress {} dead_letters {}; \
         stream {stream_read} message events for {} ids ({} duplicates); dead-letter topic {dead_read} for {} ids ({} duplicates); \
         missing: stream {missing_in_stream}, dead-letter {missing_in_dlq}",
        valid.len(),
        invalid.len(),
        db.inbox_entries().await,
        db.count("todos").await,
        db.count("host_statuses").await,
        db.count("cluster_install_progress").await,
        db.count("dead_letters").await,
        stream_ids.len(),
        stream_read - stream_ids.len(),
        dead_ids.len(),
        dead_read - dead_ids.len(),
    );
    assert_eq!(missing_in_stream, 0, "every valid message reached the stream");
    assert_eq!(missing_in_dlq, 0, "every invalid message reached the dead-letter topic");
    for mut instance in instances {
        instance.kill().await.unwrap();
    }
}
