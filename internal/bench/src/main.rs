//! `make bench`: how fast event-router drains a backlog, next to the ceilings of the parts it is
//! made of, all measured in the same run on the same machine (a shared, noisy machine makes
//! figures from different runs incomparable; ratios within one run are what count).
//!
//! 1. Preload N messages (the sample topics, one in `--invalid-every` invalid: 2% by default) over P partitions of the embedded
//!    broker, hosted by this process.
//! 2. Ceiling "consume only": a bare rdkafka consumer drains the backlog and does nothing else.
//! 3. Ceiling "database only": the rows the service would write (table rows, inbox, outbox, and
//!    the catalog events its handlers emit) are written with COPY, PostgreSQL's bulk path,
//!    without Kafka. The events rows are those step 4 wrote, copied out of its database. Each
//!    part is written three times into a fresh database and the fastest counts.
//! 4. "Service insert path": the service's pipeline processes the same messages from memory
//!    (validation, handler, inbox, outbox; batches of `--batch` as a worker with a backlog takes them),
//!    one task per partition, without a Kafka consumer.
//! 5. Comparison: a straightforward Python consumer (`bench/python/consumer.py`: the same checks,
//!    batched inserts) drains the same backlog into a fresh database; then the same consumer
//!    with the service's shortcut (`--identity-cache`), the fair peer.
//! 6. End to end: the service binary drains the backlog; throughput, latency percentiles (from
//!    its own histogram), peak RSS and CPU time of the process, and the drain's cost per message
//!    by process and PostgreSQL's statement time (`cost.rs`).
//! 7. Steady rate (optional): messages at a fixed rate, p99 end-to-end latency.
//!
//! Results go to `bench/results/<timestamp>.{json,md}`.

mod api;
mod cost;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _};
use clap::Parser;
use dev_broker::DevBroker;
use event_router::config::Config;
use event_router::envelope::Validators;
use event_router::message::RawMessage;
use event_router::outbox::{self, OutgoingEvent};
use event_router::pipeline::Pipeline;
use event_router::producer::{EventProducer, IdentityHeader, Outgoing};
use event_router::topics::{TopicSchema, REGISTRY};
use futures::stream::{self, StreamExt};
use rdkafka::consumer::{Consumer, StreamConsumer};
use serde_json::{json, Value};
use testkit::TestDb;
use tokio_util::sync::CancellationToken;

/// The report's steps that its ratios are computed from.
const CONSUME_ONLY: &str = "ceiling: consume only (rdkafka)";
const COPY: &str = "ceiling: database only (COPY)";
/// How many times the COPY ceiling is measured; the fastest counts. One measurement moved by
/// 40% between runs an hour apart on this shared machine (30,710 against 43,178 messages/s for
/// the same rows), and a slow ceiling flatters the end-to-end ratio (bench/README.md, 24.).
const CEILING_ATTEMPTS: usize = 3;
const PYTHON: &str = "comparison: Python consumer";
const PYTHON_FAIR: &str = "comparison: Python consumer with identity cache (fair peer)";
const END_TO_END: &str = "end to end (service)";

/// The embedded broker keeps about 5 MiB per partition and drops the oldest beyond that.
const PARTITION_BUDGET: usize = 4 * 1024 * 1024;
/// The workload's topics: a fixed set, so figures stay comparable as topics are added, and the
/// ceilings write what these topics' handlers write. Their payloads are the registry's samples.
const TOPICS: [&str; 3] = ["todo-created", "host-status-changed", "cluster-install-progressed"];

/// Sample payloads of [`TOPICS`], made once from their schemas' examples.
static SAMPLES: std::sync::LazyLock<Vec<samples::TopicSamples>> = std::sync::LazyLock::new(|| {
    TOPICS
        .iter()
        .map(|key| {
            let topic = TopicSchema::find(key).unwrap_or_else(|| panic!("the benchmark's topic `{key}` is not in api/event/"));
            samples::TopicSamples::new(topic.schema, topic.examples)
        })
        .collect()
});

#[derive(Parser, Debug, Clone)]
#[command(about = "Benchmark event-router against same-run ceilings.")]
struct Args {
    /// Messages to preload.
    #[arg(long, default_value_t = 200_000)]
    messages: u64,
    /// Partitions of every topic.
    #[arg(long, default_value_t = 64)]
    partitions: i32,
    /// Extra bytes of text in each todo description (payload size).
    #[arg(long, default_value_t = 0)]
    payload_padding: usize,
    /// Every this many messages one fails its schema and is dead-lettered (50: 2%; 2: a flood
    /// of bad input, half of it). The steady phase sends valid messages only.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(2..))]
    invalid_every: u64,
    /// Service instances sharing the backlog.
    #[arg(long, default_value_t = 1)]
    instances: usize,
    /// Most messages per transaction (the service's BATCH_MAX_MESSAGES).
    #[arg(long, default_value_t = event_router::config::Batching::default().max_messages)]
    batch: usize,
    /// Partitions of the stream and dead-letter topics (default: --partitions, as many as each
    /// source topic). The relay's CPU a message grows with this count (bench/README.md, section
    /// 30), so it is a stated property of the deployment measured, not derived from the backlog.
    /// The embedded broker drops a partition's oldest records beyond about 5 MiB; nothing here
    /// reads these topics back (the crash test and `make soak` size theirs to keep everything).
    #[arg(long, value_parser = clap::value_parser!(i32).range(1..))]
    output_partitions: Option<i32>,
    /// The Python interpreter for the comparison consumer; the step is skipped when it is
    /// missing (`scripts/bench-python-venv.sh` makes it, `make bench` runs that).
    #[arg(long, default_value = "target/bench-venv/bin/python")]
    python: PathBuf,
    /// Record a system-wide CPU profile (`perf record -a -e cpu-clock`) of the end-to-end drain
    /// into this file; `scripts/bench-profile.sh` reads it.
    #[arg(long)]
    perf: Option<PathBuf>,
    /// Skip the ceilings and comparisons (for profiling the service alone).
    #[arg(long)]
    end_to_end_only: bool,
    /// Let the outbox relay publish what the drain left before the end-to-end step ends, also
    /// without a steady phase (the valgrind scripts: the relay's share of what they count is
    /// then whole in every run).
    #[arg(long)]
    relay_catch_up: bool,
    /// Events in the table for the events API step (0 skips the step).
    #[arg(long, default_value_t = 1_000_000)]
    api_events: u64,
    /// Orgs those events are spread over.
    #[arg(long, default_value_t = 1000)]
    api_orgs: u64,
    /// First pages requested in the events API step.
    #[arg(long, default_value_t = 3000)]
    api_requests: usize,
    /// Run only the events API step.
    #[arg(long)]
    api_only: bool,
    /// After the drain, send at this rate (messages/s) for --steady-seconds and report latency.
    #[arg(long, default_value_t = 2000)]
    steady_rate: u64,
    #[arg(long, default_value_t = 20)]
    steady_seconds: u64,
    /// The service binary (built by `make bench` in release mode).
    #[arg(long, default_value = "target/release/event-router")]
    service: PathBuf,
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
}

impl Args {
    /// Partitions of the stream and dead-letter topics.
    fn output_partitions(&self) -> i32 {
        self.output_partitions.unwrap_or(self.partitions)
    }
}

/// Message `n`: topic key, outgoing message, and whether the service must accept it.
fn message(n: u64, args: &Args) -> (&'static str, Outgoing, bool) {
    if n % args.invalid_every == args.invalid_every - 1 {
        let invalid = json!({"id": n, "title": "missing its description"});
        let outgoing = Outgoing::json(&invalid, IdentityHeader::Document(samples::user_identity("bench")));
        return ("todo-created", Outgoing { key: Some(format!("key-{}", n % 4099)), ..outgoing }, false);
    }
    let (topic, outgoing) = valid_message(n, args);
    (topic, outgoing, true)
}

/// Message `n` as it is when valid: topic key and outgoing message.
fn valid_message(n: u64, args: &Args) -> (&'static str, Outgoing) {
    let identity = IdentityHeader::Document(samples::user_identity("bench"));
    let key = Some(format!("key-{}", n % 4099));
    let topic = TOPICS[(n % 3) as usize];
    let mut payload = SAMPLES[(n % 3) as usize].payload(n);
    if topic == "todo-created" && args.payload_padding > 0 {
        let description = format!("{} {}", payload["description"].as_str().unwrap_or_default(), "x".repeat(args.payload_padding));
        payload["description"] = Value::String(description.chars().take(4096).collect());
    }
    (topic, Outgoing { key, ..Outgoing::json(&payload, identity) })
}

fn config(brokers: &str, database_url: &str, group: &str) -> Config {
    testkit::test_config(brokers, database_url, group, &[])
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(args.service.exists(), "{} not found: run `make bench` (it builds it)", args.service.display());
    let mut report = Report::new(&args);
    if args.api_only {
        api_step(&args, &mut report).await?;
        return report.finish(&args.out);
    }

    let broker = DevBroker::start(1)?;
    let base = config(broker.bootstrap_servers(), "postgres://postgres@127.0.0.1:5432/unused", "bench");
    for schema in REGISTRY {
        broker.create_topic(&base.topics.name(schema.key), args.partitions)?;
    }

    // 1. Preload, checking the backlog fits the embedded broker's source topics (the service
    //    reads every message); the stream and dead-letter topics it writes are not read back.
    let producer = EventProducer::new(&base.kafka, &base.topics)?;
    let built: Vec<RawMessage> = (0..args.messages)
        .map(|n| {
            let (topic, outgoing, _) = message(n, &args);
            producer.build(topic, &outgoing)
        })
        .collect();
    let largest = built.iter().map(|m| m.payload.as_ref().map_or(0, |p| p.len())).max().unwrap_or(0);
    let per_partition = (args.messages as usize).div_ceil(TOPICS.len() * args.partitions as usize) * (largest + 400);
    ensure!(
        per_partition < PARTITION_BUDGET,
        "{} messages over {} partitions need about {} KiB per partition; the embedded broker keeps about 5 MiB: use more \
         partitions or fewer messages",
        args.messages,
        args.partitions,
        per_partition / 1024
    );
    let output_partitions = args.output_partitions();
    broker.create_topic(&base.topics.stream(), output_partitions)?;
    broker.create_topic(&base.topics.dead_letter(), output_partitions)?;
    let started = Instant::now();
    stream::iter(&built)
        .map(|m| producer.send_raw(m))
        .buffer_unordered(10_000)
        .for_each(|r| async {
            r.expect("the broker accepts the message");
        })
        .await;
    let mean_payload = built.iter().map(|m| m.payload.as_ref().map_or(0, |p| p.len())).sum::<usize>() / built.len().max(1);
    report.add(
        "preload",
        args.messages,
        started.elapsed(),
        json!({"mean_payload_bytes": mean_payload, "output_partitions": output_partitions}),
    );
    let invalid = (0..args.messages).filter(|n| !message(*n, &args).2).count() as u64;
    let valid = args.messages - invalid;

    if !args.end_to_end_only {
        // 2. Ceiling: consume only.
        let elapsed = consume_only(&base, args.messages).await?;
        report.add(CONSUME_ONLY, args.messages, elapsed, json!({}));

        // 3. Ceiling: database only, COPY: the rows built here, then (after step 4) the events.
        //    The fastest of CEILING_ATTEMPTS, each into a fresh database.
        let mut tables = Duration::MAX;
        for _ in 0..CEILING_ATTEMPTS {
            let db = TestDb::create().await;
            tables = tables.min(copy_rows(&db, &built, &base, args.batch).await?);
            // Each step's database goes when the step is done: autovacuum working through a
            // million rows of an earlier step had landed in the steady phase's latency.
            db.drop_database().await;
        }

        // 4. The service's insert path, without Kafka.
        let db = TestDb::create().await;
        let insert_path = service_insert_path(&db, &broker, &built, args.batch).await?;
        let events = copy_out_events(&db).await?;
        db.drop_database().await;
        let (mut events_elapsed, mut events_rows) = (Duration::MAX, 0);
        for _ in 0..CEILING_ATTEMPTS {
            let db = TestDb::create().await;
            let (elapsed, rows) = copy_in_events(&db, &events).await?;
            (events_elapsed, events_rows) = (events_elapsed.min(elapsed), rows);
            db.drop_database().await;
        }
        report.add(
            COPY,
            valid,
            tables + events_elapsed,
            json!({
                "events_rows": events_rows, "events_seconds": events_elapsed.as_secs_f64(), "attempts": CEILING_ATTEMPTS,
                "without_events_per_second": valid as f64 / tables.as_secs_f64(),
            }),
        );
        report.add("service insert path (no Kafka)", args.messages, insert_path, json!({}));

        // 5. Comparison: the Python consumer as it was first written, then with the service's
        //    identity cache (its validators are compiled once per topic in both).
        for (name, identity_cache) in [(PYTHON, false), (PYTHON_FAIR, true)] {
            let db = TestDb::create().await;
            if let Some((elapsed, extra)) = python_consumer(&args, &base, &db, valid, identity_cache).await? {
                report.add(name, args.messages, elapsed, extra);
            }
            db.drop_database().await;
        }
    }

    // 6. End to end.
    let db = TestDb::create().await;
    let e2e = end_to_end(&args, &broker, &db, valid, invalid).await?;
    db.drop_database().await;
    report.add(
        END_TO_END,
        args.messages,
        e2e.elapsed,
        json!({
            "p50_latency_ms": e2e.p50_ms, "p99_latency_ms": e2e.p99_ms,
            "peak_rss_mib": e2e.peak_rss_mib, "cpu_seconds": e2e.cpu_seconds,
            "steady_rate": args.steady_rate, "steady_p50_ms": e2e.steady_p50_ms, "steady_p99_ms": e2e.steady_p99_ms,
            "steady_within_50ms": e2e.steady_within_50ms,
        }),
    );
    report.cost = Some((e2e.drain_cost, e2e.catch_up_cost));
    if !args.end_to_end_only {
        api_step(&args, &mut report).await?;
    }
    report.finish(&args.out)
}

/// 7. The events API over a large events table (see `api.rs`).
async fn api_step(args: &Args, report: &mut Report) -> anyhow::Result<()> {
    if args.api_events == 0 {
        return Ok(());
    }
    let figures = api::step(args.api_events, args.api_orgs, args.api_requests).await?;
    let by_filter: serde_json::Map<String, Value> =
        figures.by_filter.iter().map(|(kind, p50, p99)| (kind.to_string(), json!({"p50_ms": p50, "p99_ms": p99}))).collect();
    report.add(
        "events API: filtered first pages",
        figures.requests as u64,
        figures.elapsed,
        json!({
            "events": args.api_events, "orgs": args.api_orgs, "seed_seconds": figures.seed_seconds,
            "p50_ms": figures.p50_ms, "p99_ms": figures.p99_ms, "max_ms": figures.max_ms, "by_filter": by_filter,
            "feed_after_commit_p50_ms": figures.feed_p50_ms, "feed_after_commit_max_ms": figures.feed_max_ms,
        }),
    );
    Ok(())
}

/// Drains every sample topic with a bare consumer in a fresh group.
async fn consume_only(base: &Config, total: u64) -> anyhow::Result<Duration> {
    let consumer: StreamConsumer = event_router::kafka::client_config(&base.kafka)
        .set("group.id", format!("bench-consume-only-{}", uuid::Uuid::new_v4()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()?;
    let topics: Vec<String> = TOPICS.iter().map(|t| base.topics.name(t)).collect();
    consumer.subscribe(&topics.iter().map(String::as_str).collect::<Vec<_>>())?;
    // The clock starts at the first message, after the group join.
    consumer.recv().await?;
    let started = Instant::now();
    let mut seen = 1;
    let mut topic_names = event_router::message::TopicNames::default();
    while seen < total {
        let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv()).await.context("consume-only stalled")??;
        let _ = RawMessage::from_kafka(&message, event_router::message::HeaderLimits::UNBOUNDED, &mut topic_names);
        seen += 1;
    }
    Ok(started.elapsed())
}

/// Writes, with COPY, the rows the service would write for the valid messages: each table row,
/// an inbox run and an outbox row per `batch` messages (the service writes a run per partition
/// and an outbox row per transaction, and a partition's batch holds at most `batch` messages),
/// packed by the service's own code with the headers it propagates.
// One benchmark step, read top to bottom: the rows, then the timed COPY.
#[allow(clippy::too_many_lines)]
async fn copy_rows(db: &TestDb, messages: &[RawMessage], base: &Config, batch: usize) -> anyhow::Result<Duration> {
    fn csv(fields: &[String]) -> String {
        let quoted: Vec<String> = fields.iter().map(|f| format!("\"{}\"", f.replace('"', "\"\""))).collect();
        quoted.join(",") + "\n"
    }
    fn hex(bytes: &[u8]) -> String {
        use std::fmt::Write as _;
        let mut out = String::with_capacity(2 + 2 * bytes.len());
        out.push_str("\\x");
        for b in bytes {
            let _ = write!(out, "{b:02x}");
        }
        out
    }
    // CSV per table; the outbox is built in binary format below.
    let mut tables: HashMap<&str, String> = HashMap::new();
    let columns = [
        ("todos", "todos (id, title, description, org_id, request_id)"),
        (
            "host_statuses",
            "host_statuses (host_id, cluster_id, status, status_info, validations, updated_at, org_id, request_id)",
        ),
        ("cluster_install_progress", "cluster_install_progress (cluster_id, stage, progress, hosts, org_id, request_id)"),
        ("inbox_runs", "inbox_runs (topic, kafka_partition, first_offset, last_offset, offsets, fingerprints)"),
        ("outbox", "outbox (events, event_count)"),
    ];
    for (table, _) in columns.iter().filter(|(table, _)| *table != "outbox") {
        tables.insert(table, String::new());
    }
    // The inbox: each topic's fingerprints, in order; a message's offset (partition 0) is its
    // position.
    let mut inbox: HashMap<String, Vec<[u8; 32]>> = HashMap::new();
    let stream_topic = base.topics.stream();
    let validators = Validators::compile(&base.topics)?;
    let mut events: Vec<(&RawMessage, Vec<u8>, String)> = Vec::new();
    for message in messages {
        let payload: Value = serde_json::from_slice(message.payload.as_deref().unwrap_or_default())?;
        let key = message.topic.rsplit('.').next().unwrap_or_default();
        let request_id = String::from_utf8_lossy(message.header("x-rh-insights-request-id").unwrap_or_default()).into_owned();
        let text = |v: &Value| v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string());
        let row = match key {
            "todo-created" if payload.get("description").is_some() => Some((
                "todos",
                vec![
                    text(&payload["id"]),
                    text(&payload["title"]),
                    text(&payload["description"]),
                    "bench".into(),
                    request_id.clone(),
                ],
            )),
            "host-status-changed" => Some((
                "host_statuses",
                vec![
                    text(&payload["host_id"]),
                    text(&payload["cluster_id"]),
                    text(&payload["status"]),
                    text(&payload["status_info"]),
                    payload["validations"].to_string(),
                    text(&payload["updated_at"]),
                    "bench".into(),
                    request_id.clone(),
                ],
            )),
            "cluster-install-progressed" => Some((
                "cluster_install_progress",
                vec![
                    text(&payload["cluster_id"]),
                    text(&payload["stage"]),
                    text(&payload["progress"]),
                    payload["hosts"].to_string(),
                    "bench".into(),
                    request_id.clone(),
                ],
            )),
            _ => None,
        };
        let Some((table, fields)) = row else { continue };
        tables.get_mut(table).expect("a table of the ceiling").push_str(&csv(&fields));
        inbox.entry(message.topic.to_string()).or_default().push(message.fingerprints().current);
        let checked = event_router::envelope::open(message, &validators).result.map_err(|r| anyhow::anyhow!("{r:?}"))?;
        let event = event_router::stream::enriched_event(&checked, message, chrono::Utc::now())
            .map_err(|size| anyhow::anyhow!("a {size}-byte stream event"))?;
        events.push((message, event, request_id));
    }
    let size = batch.max(1);
    for (topic, fingerprints) in &inbox {
        for (n, run) in fingerprints.chunks(size).enumerate() {
            let offsets = (n * size) as i64..(n * size + run.len()) as i64;
            tables.get_mut("inbox_runs").expect("the inbox table").push_str(&csv(&[
                topic.clone(),
                "0".into(),
                offsets.start.to_string(),
                (offsets.end - 1).to_string(),
                hex(&offsets.flat_map(i64::to_be_bytes).collect::<Vec<u8>>()),
                hex(&run.concat()),
            ]));
        }
    }
    // The outbox in COPY's binary format (its values are bytes; hex in CSV would double them):
    // signature, flags, header extension; per row a field count, then each field's length and
    // bytes; a -1 field count ends it.
    let mut outbox_rows: Vec<u8> = b"PGCOPY\n\xff\r\n\0".to_vec();
    outbox_rows.extend_from_slice(&[0; 8]);
    for chunk in events.chunks(batch.max(1)) {
        let packed: Vec<OutgoingEvent> = chunk
            .iter()
            .map(|(message, payload, request_id)| OutgoingEvent {
                topic: &stream_topic,
                key: message.key.as_deref(),
                payload,
                headers: event_router::stream::propagated_headers(message, request_id),
            })
            .collect();
        let packed = outbox::pack(&packed);
        outbox_rows.extend_from_slice(&2i16.to_be_bytes());
        outbox_rows.extend_from_slice(&(packed.len() as i32).to_be_bytes());
        outbox_rows.extend_from_slice(&packed);
        outbox_rows.extend_from_slice(&4i32.to_be_bytes());
        outbox_rows.extend_from_slice(&(chunk.len() as i32).to_be_bytes());
    }
    outbox_rows.extend_from_slice(&(-1i16).to_be_bytes());
    let started = Instant::now();
    let mut connection = db.pool.acquire().await?;
    for (table, spec) in columns {
        let (format, data) = match tables.get(table) {
            Some(data) => ("csv", data.as_bytes()),
            None => ("binary", outbox_rows.as_slice()),
        };
        let mut copy = connection.copy_in_raw(&format!("COPY {spec} FROM STDIN (FORMAT {format})")).await?;
        copy.send(data).await?;
        copy.finish().await?;
    }
    Ok(started.elapsed())
}

/// The columns of a catalog event the service writes (the id and transaction id are assigned).
const EVENTS_COLUMNS: &str = "name, severity, message, event_time, cluster_id, host_id, infra_env_id, properties, org_id, \
     request_id, source_topic, source_partition, source_offset, count, first_seen, last_seen, dedup_key";

/// The catalog events the service's handlers wrote into `db`, in COPY's text format. The ceiling
/// writes the same rows: the events table, with the indexes the events API reads through, is the
/// largest part of the service's statement time (bench/README.md, 20.), and a ceiling without it
/// writes less than the service does.
async fn copy_out_events(db: &TestDb) -> anyhow::Result<Vec<u8>> {
    let mut connection = db.pool.acquire().await?;
    let mut rows = connection.copy_out_raw(&format!("COPY (SELECT {EVENTS_COLUMNS} FROM events ORDER BY id) TO STDOUT")).await?;
    let mut out = Vec::new();
    while let Some(chunk) = rows.next().await {
        out.extend_from_slice(&chunk?);
    }
    Ok(out)
}

/// Writes `rows` (from [`copy_out_events`]) into `db`'s events table with one COPY; how long it
/// took and how many rows it wrote.
async fn copy_in_events(db: &TestDb, rows: &[u8]) -> anyhow::Result<(Duration, u64)> {
    let started = Instant::now();
    let mut connection = db.pool.acquire().await?;
    let mut copy = connection.copy_in_raw(&format!("COPY events ({EVENTS_COLUMNS}) FROM STDIN")).await?;
    copy.send(rows).await?;
    let written = copy.finish().await?;
    Ok((started.elapsed(), written))
}

/// Runs the service's pipeline over the messages from memory: one task per partition, in order,
/// as the consumer would.
async fn service_insert_path(db: &TestDb, broker: &DevBroker, messages: &[RawMessage], batch: usize) -> anyhow::Result<Duration> {
    let config = config(broker.bootstrap_servers(), &db.url, "bench-insert-path");
    let pool = event_router::store::connect(config.database_url.expose(), config.database_max_connections).await?;
    let pipeline = Arc::new(Pipeline::from_config(&config, event_router::handlers::router(), pool)?);
    // Give each message the coordinates a consumer would see.
    let mut partitions: HashMap<(String, i32), Vec<RawMessage>> = HashMap::new();
    for (n, message) in messages.iter().enumerate() {
        let mut message = message.clone();
        message.partition = (n % 64) as i32;
        let list = partitions.entry((message.topic.to_string(), message.partition)).or_default();
        message.offset = list.len() as i64;
        list.push(message);
    }
    // As a partition worker with a backlog does: full batches.
    let batches: Vec<Vec<Vec<RawMessage>>> =
        partitions.into_values().map(|list| list.chunks(batch).map(<[RawMessage]>::to_vec).collect()).collect();
    let started = Instant::now();
    let tasks: Vec<_> = batches
        .into_iter()
        .map(|batches| {
            let pipeline = pipeline.clone();
            tokio::spawn(async move {
                let never = CancellationToken::new();
                for batch in batches {
                    pipeline.process_batch(batch, &never).await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await?;
    }
    Ok(started.elapsed())
}

/// Runs `bench/python/consumer.py` over the backlog in a group of its own, with
/// `--identity-cache` when `identity_cache`; its own clock, from its first message to its last
/// commit, and its CPU time per message. `None` when the interpreter is missing.
async fn python_consumer(
    args: &Args,
    base: &Config,
    db: &TestDb,
    valid: u64,
    identity_cache: bool,
) -> anyhow::Result<Option<(Duration, Value)>> {
    if !args.python.exists() {
        println!("comparison: Python consumer skipped: {} missing (scripts/bench-python-venv.sh)", args.python.display());
        return Ok(None);
    }
    let topics: Vec<String> = TOPICS.iter().map(|t| base.topics.name(t)).collect();
    let mut command = tokio::process::Command::new(&args.python);
    command
        .arg("bench/python/consumer.py")
        .args(["--brokers", &base.kafka.brokers])
        .args(["--group", &format!("bench-python-{}", uuid::Uuid::new_v4())])
        .args(["--topics", &topics.join(",")])
        .args(["--database-url", &db.url])
        .args(["--expect", &args.messages.to_string()])
        .args(["--schemas", "api/event"]);
    if identity_cache {
        command.arg("--identity-cache");
    }
    let output = command.stderr(std::process::Stdio::inherit()).output().await.context("start the Python consumer")?;
    ensure!(output.status.success(), "the Python consumer failed ({})", output.status);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let result: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .with_context(|| format!("the Python consumer printed no result: {stdout}"))?;
    let inserted = db.inbox_entries().await as u64;
    ensure!(inserted == valid, "the Python consumer recorded {inserted} of {valid} valid messages");
    let seconds = result["seconds"].as_f64().context("no seconds in the Python consumer's result")?;
    let cpu_us = result["cpu_seconds"].as_f64().map(|cpu| cpu * 1e6 / args.messages as f64);
    Ok(Some((Duration::from_secs_f64(seconds), json!({"python_cpu_us_per_message": cpu_us}))))
}

struct EndToEnd {
    elapsed: Duration,
    p50_ms: f64,
    p99_ms: f64,
    peak_rss_mib: f64,
    cpu_seconds: f64,
    steady_p50_ms: Option<f64>,
    steady_p99_ms: Option<f64>,
    /// Share of the steady phase's messages within 50 ms (exact: 50 ms is a bucket bound).
    steady_within_50ms: Option<f64>,
    /// Cost per message of the drain, and of the drain with the relay's catch-up after it (when
    /// the steady phase runs, which waits for that).
    drain_cost: cost::Cost,
    catch_up_cost: Option<cost::Cost>,
}

/// Starts the service binary and waits until it drained the backlog.
// One benchmark step, read top to bottom: start, drain, steady phase, report.
#[allow(clippy::too_many_lines)]
async fn end_to_end(args: &Args, broker: &DevBroker, db: &TestDb, valid: u64, invalid: u64) -> anyhow::Result<EndToEnd> {
    let mut children = Vec::new();
    let mut metrics_ports = Vec::new();
    std::fs::create_dir_all(&args.out)?;
    let log_path = args.out.join("service.log");
    let log = std::fs::File::create(&log_path)?;
    println!("service logs: {}", log_path.display());
    for _ in 0..args.instances {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        metrics_ports.push(port);
        children.push(
            tokio::process::Command::new(&args.service)
                .arg("run")
                .env("KAFKA_BROKERS", broker.bootstrap_servers())
                .env("KAFKA_GROUP_ID", "bench-e2e")
                .env("BATCH_MAX_MESSAGES", args.batch.to_string())
                .env("DATABASE_URL", &db.url)
                .env("METRICS_ADDR", format!("127.0.0.1:{port}"))
                .env("API_ADDR", "127.0.0.1:0")
                .env("LOG_FORMAT", "json")
                .env("RUST_LOG", "warn")
                .stdout(log.try_clone()?)
                .stderr(log.try_clone()?)
                .kill_on_drop(true)
                .spawn()
                .context("start the service")?,
        );
    }
    let pids: Vec<u32> = children.iter().filter_map(tokio::process::Child::id).collect();
    std::fs::write(args.out.join("service.pid"), pids.iter().map(|pid| format!("{pid}\n")).collect::<String>())?;
    let meter = cost::Meter::new(&db.pool, pids.clone()).await;
    let first = metrics_ports[0];
    // The clock starts when the first message is consumed (after the group join).
    let scrape =
        |port: u16| async move { testkit::http_get(std::net::SocketAddr::from(([127, 0, 0, 1], port)), "/metrics").await.1 };
    let wait_start = Instant::now();
    loop {
        let consumed: f64 = match tokio::net::TcpStream::connect(("127.0.0.1", first)).await {
            Ok(_) => sum_metric(&scrape(first).await, "event_router_messages_consumed_total", &[]),
            Err(_) => 0.0,
        };
        if consumed > 0.0 {
            break;
        }
        ensure!(wait_start.elapsed() < Duration::from_secs(120), "the service consumed nothing in 2 minutes");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let started = Instant::now();
    let profiler = match &args.perf {
        Some(path) => Some(
            tokio::process::Command::new("perf")
                .args(["record", "-a", "-e", "cpu-clock", "-F", "499", "-o"])
                .arg(path)
                .stdout(std::process::Stdio::null())
                .spawn()
                .context("start perf (Debian package linux-perf)")?,
        ),
        None => None,
    };
    // Progress comes from the services' counters: polling count(*) on the tables would put a
    // sequential scan beside the work being measured, many times a second.
    let finished = || async {
        let mut sum = 0.0;
        for port in &metrics_ports {
            let body = scrape(*port).await;
            sum +=
                sum_metric(&body, "event_router_messages_processed_total", &["outcome=\"handled\"", "outcome=\"dead_lettered\""]);
        }
        sum as u64
    };
    let total = valid + invalid;
    let cost_start = meter.start(finished().await).await?;
    let at_start = cost_start.processed();
    let done = loop {
        let done = finished().await;
        if done >= total {
            break done;
        }
        ensure!(started.elapsed() < Duration::from_secs(1800), "not drained in 30 minutes: {done} of {total}");
        // Polling is light, as its cost lands in the measured window (a /metrics render in the
        // service, a parse here): about a quarter of the time the rest should take, between
        // 50 ms (the resolution of the end) and 1 s.
        let rate = done.saturating_sub(at_start) as f64 / started.elapsed().as_secs_f64();
        let rest = if rate > 0.0 { (total - done) as f64 / rate } else { 0.0 };
        tokio::time::sleep(Duration::from_secs_f64((rest / 4.0).clamp(0.05, 1.0))).await;
    };
    let elapsed = started.elapsed();
    let drain_cost = meter.cost(&cost_start, done).await?;
    drain_cost.print("drain");
    if let Some(mut perf) = profiler {
        // perf writes its file on SIGINT.
        std::process::Command::new("kill").args(["-INT", &perf.id().context("perf pid")?.to_string()]).status()?;
        perf.wait().await?;
    }
    let steady = args.steady_rate > 0 && args.steady_seconds > 0;
    let mut catch_up_cost = None;
    if steady || args.relay_catch_up {
        // Steady state means no backlog anywhere: let the outbox relay publish the drained
        // backlog's events first, or it competes with the steady traffic for the CPU.
        let relay_deadline = Instant::now() + Duration::from_secs(600);
        // The service's own backlog query: a count(*) would scan every row the relay deleted.
        while event_router::outbox::backlog(&db.pool).await?.0 > 0 && Instant::now() < relay_deadline {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let cost = meter.cost(&cost_start, done).await?;
        cost.print("drain and outbox relay catch-up");
        catch_up_cost = Some(cost);
    }
    let (processed, dead) = (db.inbox_entries().await as u64, db.count("dead_letters").await as u64);
    ensure!(
        processed == valid && dead == invalid,
        "rows do not match the messages: processed {processed} of {valid}, dead letters {dead} of {invalid}"
    );
    let body = scrape(first).await;
    let (p50_ms, p99_ms) = (quantile(&body, 0.50) * 1e3, quantile(&body, 0.99) * 1e3);

    let (mut steady_p50_ms, mut steady_p99_ms, mut steady_within_50ms) = (None, None, None);
    if steady {
        let before = scrape(first).await;
        let base = config(broker.bootstrap_servers(), &db.url, "bench");
        let producer = EventProducer::new(&base.kafka, &base.topics)?;
        let total = args.steady_rate * args.steady_seconds;
        let started = Instant::now();
        stream::iter(0..total)
            .map(|i| {
                let producer = &producer;
                async move {
                    let due = Duration::from_secs_f64(i as f64 / args.steady_rate as f64);
                    tokio::time::sleep_until((started + due).into()).await;
                    // Valid messages only, whatever --invalid-every is: the phase measures the
                    // latency of handled messages.
                    let (topic, outgoing) = valid_message(10_000_000 + i * 50, args);
                    producer.send_raw(&producer.build(topic, &outgoing)).await.expect("broker accepts");
                }
            })
            .buffer_unordered(1000)
            .for_each(|()| async {})
            .await;
        let target = valid + invalid + total;
        let deadline = Instant::now() + Duration::from_secs(120);
        while finished().await < target && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let after = scrape(first).await;
        let steady = buckets_between(&before, &after);
        steady_p50_ms = Some(quantile_of(&steady, 0.50) * 1e3);
        steady_p99_ms = Some(quantile_of(&steady, 0.99) * 1e3);
        steady_within_50ms = Some(share_within(&steady, 0.05));
    }

    let peak_rss_mib = pids.iter().filter_map(|pid| cost::peak_rss_mib(*pid)).fold(0.0, f64::max);
    let cpu_seconds = pids.iter().filter_map(|pid| cost::ProcStat::read(*pid)).map(|p| p.cpu_seconds).sum();
    for mut child in children {
        child.kill().await?;
    }
    Ok(EndToEnd {
        elapsed,
        p50_ms,
        p99_ms,
        peak_rss_mib,
        cpu_seconds,
        steady_p50_ms,
        steady_p99_ms,
        steady_within_50ms,
        drain_cost,
        catch_up_cost,
    })
}

/// The sum of a metric's series, or of those whose labels include any of `labels`.
fn sum_metric(body: &str, name: &str, labels: &[&str]) -> f64 {
    body.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| labels.is_empty() || labels.iter().any(|label| l.contains(label)))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// Cumulative end-to-end latency buckets summed over topics: (upper bound, count).
fn buckets(body: &str) -> Vec<(f64, f64)> {
    let mut by_bound: Vec<(f64, f64)> = Vec::new();
    for line in body.lines().filter(|l| l.starts_with("event_router_end_to_end_latency_seconds_bucket{")) {
        let Some(le) = line.split("le=\"").nth(1).and_then(|r| r.split('"').next()) else { continue };
        let bound = if le == "+Inf" { f64::INFINITY } else { le.parse().unwrap_or(f64::INFINITY) };
        let count: f64 = line.rsplit_once(' ').and_then(|(_, v)| v.parse().ok()).unwrap_or(0.0);
        match by_bound.iter_mut().find(|(b, _)| *b == bound) {
            Some(entry) => entry.1 += count,
            None => by_bound.push((bound, count)),
        }
    }
    by_bound.sort_by(|a, b| a.0.total_cmp(&b.0));
    by_bound
}

/// The q-quantile of cumulative buckets, interpolated linearly within a bucket (as PromQL's
/// histogram_quantile does).
fn quantile_of(buckets: &[(f64, f64)], q: f64) -> f64 {
    let total = buckets.last().map_or(0.0, |b| b.1);
    if total == 0.0 {
        return f64::NAN;
    }
    let rank = q * total;
    let mut previous = (0.0, 0.0);
    for &(bound, count) in buckets {
        if count >= rank {
            if bound.is_infinite() {
                return previous.0;
            }
            let width = count - previous.1;
            return previous.0 + (bound - previous.0) * if width > 0.0 { (rank - previous.1) / width } else { 1.0 };
        }
        previous = (bound, count);
    }
    previous.0
}

fn quantile(body: &str, q: f64) -> f64 {
    quantile_of(&buckets(body), q)
}

/// The buckets of the observations made between two scrapes.
fn buckets_between(before: &str, after: &str) -> Vec<(f64, f64)> {
    let earlier = buckets(before);
    buckets(after)
        .into_iter()
        .map(|(bound, count)| (bound, count - earlier.iter().find(|(b, _)| *b == bound).map_or(0.0, |e| e.1)))
        .collect()
}

/// The share of observations at or below `bound`, which must be a bucket bound.
fn share_within(buckets: &[(f64, f64)], bound: f64) -> f64 {
    let total = buckets.last().map_or(0.0, |b| b.1);
    let within = buckets.iter().find(|(b, _)| (*b - bound).abs() < 1e-9).map_or(f64::NAN, |b| b.1);
    within / total
}

/// The run's figures.
struct Report {
    args: Args,
    rows: Vec<(String, u64, Duration, Value)>,
    /// The end-to-end drain's cost per message, and the drain's with the relay's catch-up.
    cost: Option<(cost::Cost, Option<cost::Cost>)>,
}

impl Report {
    fn new(args: &Args) -> Self {
        Report { args: args.clone(), rows: Vec::new(), cost: None }
    }

    fn add(&mut self, name: &str, messages: u64, elapsed: Duration, extra: Value) {
        let rate = messages as f64 / elapsed.as_secs_f64();
        println!("{name:<40} {messages:>9} messages in {:>8.2} s = {rate:>10.0} /s {extra}", elapsed.as_secs_f64());
        self.rows.push((name.to_string(), messages, elapsed, extra));
    }

    fn rate(&self, step: &str) -> f64 {
        self.rows.iter().find(|r| r.0 == step).map_or(f64::NAN, |r| r.1 as f64 / r.2.as_secs_f64())
    }

    // The report, read top to bottom: the ratios, the JSON document, the markdown.
    #[allow(clippy::too_many_lines)]
    fn finish(self, out: &std::path::Path) -> anyhow::Result<()> {
        let consume = self.rate(CONSUME_ONLY);
        let database = self.rate(COPY);
        let e2e = self.rate(END_TO_END);
        let lower = consume.min(database);
        let ratio = e2e / lower;
        println!("end to end / lower ceiling = {:.0} / {:.0} = {:.2}", e2e, lower, ratio);
        let python = self.rate(PYTHON);
        let versus_python = e2e / python;
        let fair = self.rate(PYTHON_FAIR);
        let versus_fair = e2e / fair;
        if python.is_finite() {
            println!("end to end / Python consumer = {:.0} / {:.0} = {:.2}", e2e, python, versus_python);
        }
        if fair.is_finite() {
            println!("end to end / Python consumer with identity cache (fair peer) = {e2e:.0} / {fair:.0} = {versus_fair:.2}");
        }
        let allocations = Allocations::latest();
        let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
        std::fs::create_dir_all(out)?;
        let rows: Vec<Value> = self
            .rows
            .iter()
            .map(|(name, n, elapsed, extra)| {
                json!({"step": name, "messages": n, "seconds": elapsed.as_secs_f64(), "per_second": *n as f64 / elapsed.as_secs_f64(), "extra": extra})
            })
            .collect();
        let args = &self.args;
        let cost_json = self.cost.as_ref().map(|(drain, catch_up)| {
            json!({
                "drain": drain.to_json(),
                "drain_and_relay_catch_up": catch_up.as_ref().map(cost::Cost::to_json),
                "allocations": allocations.to_json(),
                "targets_us": {"service": cost::TARGET_SERVICE_US, "statements": cost::TARGET_STATEMENTS_US},
                "target_allocations": cost::TARGET_ALLOCATIONS,
            })
        });
        let document = json!({
            "when": stamp,
            "code": allocations.source,
            "messages": args.messages, "partitions": args.partitions, "output_partitions": args.output_partitions(),
            "payload_padding": args.payload_padding, "instances": args.instances,
            "invalid_every": args.invalid_every,
            "steps": rows,
            "batch": args.batch,
            "ratio_end_to_end_to_lower_ceiling": ratio,
            "ratio_end_to_end_to_python": python.is_finite().then_some(versus_python),
            "ratio_end_to_end_to_python_fair": fair.is_finite().then_some(versus_fair),
            "cost_per_message": cost_json,
        });
        std::fs::write(out.join(format!("{stamp}.json")), serde_json::to_string_pretty(&document)?)?;
        let mut md = format!(
            "# Benchmark {stamp}\n\n{}{} messages (1 in {} invalid), {} partitions a source topic, {} a stream and dead-letter topic, payload padding {}, {} instance(s), batches of up to {}\n\n| step | messages | seconds | per second | details |\n|---|---:|---:|---:|---|\n",
            allocations.source.as_ref().map_or(String::new(), |code| format!("Code: `{code}` (`scripts/source-fingerprint.sh`)\n\n")),
            args.messages, args.invalid_every, args.partitions, args.output_partitions(), args.payload_padding, args.instances, args.batch
        );
        for (name, n, elapsed, extra) in &self.rows {
            md.push_str(&format!(
                "| {name} | {n} | {:.2} | {:.0} | {} |\n",
                elapsed.as_secs_f64(),
                *n as f64 / elapsed.as_secs_f64(),
                if extra.as_object().is_some_and(|o| o.is_empty()) { String::new() } else { extra.to_string() }
            ));
        }
        md.push_str(&format!("\nEnd to end / lower ceiling: {e2e:.0} / {lower:.0} = **{ratio:.2}**\n"));
        if python.is_finite() {
            md.push_str(&format!("\nEnd to end / Python consumer: {e2e:.0} / {python:.0} = **{versus_python:.2}**\n"));
        }
        if fair.is_finite() {
            md.push_str(&format!(
                "\nEnd to end / Python consumer with identity cache (fair peer): {e2e:.0} / {fair:.0} = **{versus_fair:.2}** \
                 (target ≥ 5)\n"
            ));
        }
        if let Some((drain, catch_up)) = &self.cost {
            md.push('\n');
            md.push_str(&drain.markdown(catch_up.as_ref(), &allocations.cell()));
        }
        std::fs::write(out.join(format!("{stamp}.md")), md)?;
        println!("results: {}", out.join(format!("{stamp}.md")).display());
        Ok(())
    }
}

/// Heap allocations per message come from `scripts/bench-allocations.sh` (the service under
/// valgrind's DHAT, a run of its own): the latest summary it left, quoted only when it measured
/// the code this run measures. `make bench` names that code in `BENCH_SOURCE`
/// (`scripts/source-fingerprint.sh`); the summary records the code it measured.
struct Allocations {
    summary: Option<Value>,
    /// The code this run measures, when known.
    source: Option<String>,
}

impl Allocations {
    /// `<target>/allocations/summary.json`, next to this binary's `release/`.
    fn latest() -> Allocations {
        let path = std::env::current_exe().ok().and_then(|exe| Some(exe.parent()?.parent()?.join("allocations/summary.json")));
        let summary = path.and_then(|p| serde_json::from_str(&std::fs::read_to_string(p).ok()?).ok());
        let source = std::env::var("BENCH_SOURCE").ok().filter(|s| !s.is_empty());
        Allocations { summary, source }
    }

    /// The summary's figure applies to this run: it measured the same code, or this run's code
    /// is not known (the benchmark run by hand), which the report then says.
    fn applies(&self) -> bool {
        match (&self.summary, &self.source) {
            (Some(summary), Some(source)) => summary["source"].as_str() == Some(source.as_str()),
            (Some(_), None) => true,
            (None, _) => false,
        }
    }

    fn cell(&self) -> String {
        let Some(s) = &self.summary else {
            return "not measured in this run: `scripts/bench-allocations.sh` (DHAT) measures it".into();
        };
        let measured = s["source"].as_str().unwrap_or("code not recorded");
        if !self.applies() {
            return format!(
                "not measured for this code ({}): the last DHAT run on this machine measured {measured}; `scripts/bench-allocations.sh` measures it",
                self.source.as_deref().unwrap_or("?")
            );
        }
        format!(
            "{:.1} in a separate DHAT run ({} messages, {}, {}; `scripts/bench-allocations.sh`)",
            s["per_message_without_polling"].as_f64().unwrap_or(f64::NAN),
            s["messages"],
            s["when"].as_str().unwrap_or("?"),
            if self.source.is_some() {
                format!("of this code, {measured}")
            } else {
                format!("of {measured}, not checked against this run's code")
            },
        )
    }

    fn to_json(&self) -> Value {
        match &self.summary {
            Some(summary) if self.applies() => json!({
                "source": "scripts/bench-allocations.sh (a separate run)",
                "same_code": self.source.is_some(),
                "summary": summary,
            }),
            Some(summary) => json!({
                "note": "not measured for this code: the last DHAT run on this machine measured other code",
                "code": self.source,
                "other_code_summary": summary,
            }),
            None => json!({"note": "not measured in this run: scripts/bench-allocations.sh (DHAT) measures it"}),
        }
    }
}
