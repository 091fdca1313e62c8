//! One instance of a group is SIGKILLed while messages flow: it gets no chance to leave the group
//! or commit. The others take its partitions over once the broker has noticed (the session
//! timeout), and every message still has exactly one effect.
//!
//! The instances are separate processes, as in production. Which partitions each one holds is
//! read from its own log: every rebalance is logged ("consumer group rebalance", `kind` assign or
//! revoke, `partitions`), and with the eager protocol an instance whose last rebalance was an
//! assign owns exactly what it was assigned. The group is settled when the instances' last
//! assignments cover every partition once.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use event_router::producer::{EventProducer, IdentityHeader, Outgoing};
use futures::stream::{self, StreamExt};
use testkit::{eventually, TestDb};
use tokio::process::{Child, Command};

/// `session.timeout.ms` of the service's consumer (src/kafka.rs).
const SESSION_TIMEOUT: Duration = Duration::from_secs(10);
/// `heartbeat.interval.ms` (src/kafka.rs): the killed instance's last heartbeat is at most this old.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// After expelling a member, the embedded broker waits this long (session timeout - 1 s) for the
/// others to rejoin before it elects a leader (librdkafka's rdkafka_mock_cgrp.c). A Kafka broker
/// goes on as soon as every remaining member has rejoined, about a heartbeat later.
const MOCK_JOIN_WINDOW: Duration = Duration::from_secs(9);
/// For everything else: the broker's 1 s session check, the rejoin, the first fetch and write, on
/// a busy machine (18.5 to 19.5 s in all were measured on this project's 2-core machine).
const MARGIN: Duration = Duration::from_secs(8);

const INSTANCES: usize = 3;
const MESSAGES: u64 = 800;
/// Messages are spread over this long; the kill comes a few seconds in.
const PRODUCE_FOR: Duration = Duration::from_secs(16);
const WAIT: Duration = Duration::from_secs(40);

type Slot = (String, i32);

/// Message `n`: a todo or a cluster progress report (append-only: a second effect would be a
/// second row), keyed so that every partition gets its share.
fn message(n: u64) -> (&'static str, Outgoing) {
    let identity = IdentityHeader::Document(samples::user_identity("takeover"));
    let (topic, payload) = if n.is_multiple_of(2) {
        ("todo-created", testkit::todo(n as u32))
    } else {
        ("cluster-install-progressed", testkit::sample("cluster-install-progressed", n))
    };
    let outgoing = Outgoing {
        key: Some(format!("key-{}", n % 64)),
        request_id: Some(format!("takeover-{n}")),
        ..Outgoing::json(&payload, identity)
    };
    (topic, outgoing)
}

struct Instance {
    child: Child,
    log: PathBuf,
    http: std::net::SocketAddr,
}

fn start_instance(brokers: &str, db: &TestDb, log: PathBuf) -> Instance {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let http: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let file = std::fs::File::create(&log).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_event-router"))
        .arg("run")
        .env("KAFKA_BROKERS", brokers)
        .env("KAFKA_GROUP_ID", "takeover")
        .env("DATABASE_URL", &db.url)
        .env("METRICS_ADDR", http.to_string())
        .env("API_ADDR", "127.0.0.1:0")
        .env("RETRY_MAX_BACKOFF_MS", "1000")
        .env("LOG_FORMAT", "json")
        // The rebalance lines this test reads are at info.
        .env("RUST_LOG", "info,rdkafka=warn,sqlx=warn,librdkafka=warn")
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .kill_on_drop(true)
        .spawn()
        .expect("start a service instance");
    Instance { child, log, http }
}

/// The partitions an instance owns: those of its last rebalance if that was an assign; `None`
/// while it has not joined or is between a revoke and the next assign.
fn owned(log: &Path) -> Option<BTreeSet<Slot>> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let last = text
        .lines()
        .rev()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|line| line["message"] == "consumer group rebalance")?;
    if last["kind"] != "assign" {
        return None;
    }
    let partitions = last["partitions"].as_str().expect("the partitions field");
    Some(
        partitions
            .split(',')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (topic, partition) = p.trim_end_matches(']').rsplit_once('[').expect("topic[partition]");
                (topic.to_owned(), partition.parse().expect("a partition number"))
            })
            .collect(),
    )
}

/// Each instance's partitions, once their assignments cover `all` and none overlap.
fn settled(instances: &[&Instance], all: &BTreeSet<Slot>) -> Option<Vec<BTreeSet<Slot>>> {
    let assignments: Vec<BTreeSet<Slot>> = instances.iter().map(|i| owned(&i.log)).collect::<Option<_>>()?;
    let union: BTreeSet<Slot> = assignments.iter().flatten().cloned().collect();
    (union == *all && assignments.iter().map(BTreeSet::len).sum::<usize>() == all.len()).then_some(assignments)
}

/// Waits until `instances` have settled over `all` (see [`settled`]) and returns their partitions.
async fn settle(instances: &[&Instance], all: &BTreeSet<Slot>, logs: &Path) -> Vec<BTreeSet<Slot>> {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(assignments) = settled(instances, all) {
            return assignments;
        }
        assert!(
            Instant::now() < deadline,
            "{} instances did not settle over every partition within {WAIT:?}; logs in {}",
            instances.len(),
            logs.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The highest offset handled (in the inbox) per partition.
async fn handled_up_to(db: &TestDb) -> BTreeMap<Slot, i64> {
    let rows: Vec<(String, i32, i64)> =
        sqlx::query_as("SELECT topic, kafka_partition, max(kafka_offset) FROM inbox_entries GROUP BY 1, 2")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    rows.into_iter().map(|(topic, partition, offset)| ((topic, partition), offset)).collect()
}

/// Sends every message, spread over [`PRODUCE_FOR`]; returns where each one went.
async fn produce(producer: Arc<EventProducer>) -> Vec<Slot> {
    let started = Instant::now();
    stream::iter(0..MESSAGES)
        .map(|n| {
            let producer = producer.clone();
            async move {
                tokio::time::sleep_until((started + PRODUCE_FOR.mul_f64(n as f64 / MESSAGES as f64)).into()).await;
                let (topic, outgoing) = message(n);
                let sent = producer.send_raw(&producer.build(topic, &outgoing)).await.expect("the broker accepts the message");
                (sent.topic, sent.delivery.partition)
            }
        })
        .buffered(1000)
        .collect()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_instances_partitions_are_taken_over_within_the_session_timeout_and_handled_once() {
    let test_started = Instant::now();
    let db = TestDb::create().await;
    let probe = testkit::test_config("127.0.0.1:1", &db.url, "takeover", &[]);
    let broker = testkit::start_broker(&probe);
    let brokers = broker.bootstrap_servers().to_owned();
    let config = testkit::test_config(&brokers, &db.url, "takeover", &[]);
    let all: BTreeSet<Slot> = event_router::topics::REGISTRY
        .iter()
        .flat_map(|schema| {
            let topic = config.topics.name(schema.key);
            (0..testkit::PARTITIONS).map(move |p| (topic.clone(), p))
        })
        .collect();
    let produced_topics = [config.topics.name("todo-created"), config.topics.name("cluster-install-progressed")];
    let of_produced = |slots: &BTreeSet<Slot>| -> BTreeSet<Slot> {
        slots.iter().filter(|(topic, _)| produced_topics.contains(topic)).cloned().collect()
    };
    let logs = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("takeover-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&logs).unwrap();

    let mut instances: Vec<Instance> =
        (0..INSTANCES).map(|i| start_instance(&brokers, &db, logs.join(format!("instance-{i}.log")))).collect();
    settle(&instances.iter().collect::<Vec<_>>(), &all, &logs).await;
    for instance in &instances {
        eventually(WAIT, "every instance ready", || async { testkit::http_get(instance.http, "/readyz").await.0 == 200 }).await;
    }
    let settled_after = test_started.elapsed();

    let producer = Arc::new(EventProducer::new(&config.kafka, &config.topics).unwrap());
    let producing = tokio::spawn(produce(producer));
    // Kill while messages flow, once every partition the test sends to is being handled.
    eventually(WAIT, "messages handled on every partition", || async {
        let handled = handled_up_to(&db).await;
        of_produced(&all).iter().all(|slot| handled.contains_key(slot))
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await; // a little more traffic in flight before the kill
                                                      // The victim: the instance with the most partitions of the topics the test sends to, as they
                                                      // are assigned right now.
    let before = settle(&instances.iter().collect::<Vec<_>>(), &all, &logs).await;
    let victim = (0..INSTANCES).max_by_key(|&i| of_produced(&before[i]).len()).unwrap();
    let victim_slots = of_produced(&before[victim]);
    assert!(!victim_slots.is_empty(), "the victim holds partitions of the produced topics: {before:?}");
    let killed_at = Instant::now();
    instances[victim].child.kill().await.expect("SIGKILL the victim");
    assert_eq!(owned(&instances[victim].log).as_ref(), Some(&before[victim]), "no rebalance between reading and the kill");

    // A dead process commits nothing more; half a second later the database has settled too.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let at_kill = handled_up_to(&db).await;
    let bound = SESSION_TIMEOUT + MOCK_JOIN_WINDOW + MARGIN;
    let (progressed, took) = loop {
        let now = handled_up_to(&db).await;
        let moved = victim_slots.iter().find(|slot| now.get(*slot) > at_kill.get(*slot));
        if let Some(slot) = moved {
            break (slot.clone(), killed_at.elapsed());
        }
        assert!(
            killed_at.elapsed() < bound,
            "none of the killed instance's partitions {victim_slots:?} made progress within {bound:?} of the kill; logs in {}",
            logs.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Before the broker can have noticed, nobody else may touch them: they were the victim's alone.
    assert!(
        took >= SESSION_TIMEOUT - HEARTBEAT - Duration::from_secs(1),
        "{progressed:?} progressed {took:?} after the kill, before the session could time out: it was not the victim's"
    );

    let survivors: Vec<&Instance> = instances.iter().enumerate().filter(|(i, _)| *i != victim).map(|(_, s)| s).collect();
    // The survivors' own view: between them they hold every partition, the victim's included.
    let after = settle(&survivors, &all, &logs).await;
    let sent_to = producing.await.unwrap();

    eventually(WAIT, "every message handled and every event relayed", || async {
        // At least: a message recorded twice must fail the checks below, not time out here.
        db.inbox_entries().await >= MESSAGES as i64 && db.count("outbox").await == 0
    })
    .await;

    // Exactly one effect each: one inbox entry per message and partition, one row in the tables.
    let mut sent_per_slot: BTreeMap<Slot, i64> = BTreeMap::new();
    for slot in &sent_to {
        *sent_per_slot.entry(slot.clone()).or_default() += 1;
    }
    let handled_per_slot: BTreeMap<Slot, i64> =
        sqlx::query_as::<_, (String, i32, i64)>("SELECT topic, kafka_partition, count(*) FROM inbox_entries GROUP BY 1, 2")
            .fetch_all(&db.pool)
            .await
            .unwrap()
            .into_iter()
            .map(|(topic, partition, count)| ((topic, partition), count))
            .collect();
    assert_eq!(handled_per_slot, sent_per_slot, "every partition's messages handled once");
    assert_eq!(db.inbox_entries().await, MESSAGES as i64, "one inbox entry per message");
    assert_eq!(db.distinct_inbox_offsets().await, MESSAGES as i64, "no offset recorded twice");
    assert_eq!(db.count("todos").await, (MESSAGES / 2) as i64);
    assert_eq!(db.count("cluster_install_progress").await, (MESSAGES / 2) as i64, "append-only: no second row");
    assert_eq!(db.count("dead_letters").await, 0, "a redelivered todo would be refused as a taken id");

    // At least once on the stream.
    let (stream_ids, stream_read) =
        testkit::request_ids(&brokers, &config.topics.stream(), MESSAGES as usize, Duration::from_secs(30), |record| {
            testkit::stream_kind(record).as_deref() == Some("message")
        })
        .await;
    assert_eq!(stream_ids.len(), MESSAGES as usize, "every message reached the stream");

    let mut skipped = 0.0;
    for survivor in &survivors {
        let (_, metrics) = testkit::http_get(survivor.http, "/metrics").await;
        for topic in &produced_topics {
            let labels = [("topic", topic.as_str()), ("outcome", "duplicate")];
            skipped += testkit::metric_value(&metrics, "event_router_messages_processed_total", &labels).unwrap_or(0.0);
        }
    }
    let moved_to: Vec<usize> = after.iter().map(|slots| victim_slots.intersection(slots).count()).collect();
    println!(
        "takeover: {INSTANCES} instances settled {settled_after:.1?} after start; killed instance {victim} holding \
         {victim_slots:?}; first progress on {progressed:?} {took:.1?} after the SIGKILL (bound {bound:?}); its partitions \
         went {moved_to:?} to the survivors; {MESSAGES} messages, {skipped} redeliveries skipped by the inbox, stream \
         {stream_read} records for {} ids; {:.1?} in all",
        stream_ids.len(),
        test_started.elapsed()
    );
    for mut instance in instances {
        let _ = instance.child.kill().await;
    }
    drop(broker);
    db.drop_database().await;
    let _ = std::fs::remove_dir_all(&logs); // kept when the test fails
}
