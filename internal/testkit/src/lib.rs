//! Test kit: runs the real service against the embedded broker and a fresh PostgreSQL database.
//!
//! Every [`TestApp`] gets its own librdkafka mock cluster (topics created up front) and its own
//! database (`er_test_<uuid>`, migrated), so tests run in parallel without seeing each other.
//! Nothing here replaces a part of the service: tests send real Kafka messages and read real
//! tables and topics.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dev_broker::DevBroker;
use event_router::app::Application;
use event_router::config::Config;
use event_router::message::RawMessage;
use event_router::producer::{EventProducer, Outgoing, Sent};
use event_router::router::Router;
use event_router::topics::REGISTRY;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::ClientConfig;
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Partitions of every topic in a test cluster.
pub const PARTITIONS: i32 = 4;

/// Where to create test databases; `TEST_DATABASE_URL` overrides (it must point at a database
/// the user may `CREATE DATABASE` from).
pub fn admin_database_url() -> String {
    std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A fresh, migrated database.
pub struct TestDb {
    pub name: String,
    pub url: String,
    pub pool: PgPool,
}

impl TestDb {
    pub async fn create() -> TestDb {
        let admin_url = admin_database_url();
        let name = format!("er_test_{}", uuid::Uuid::new_v4().simple());
        let admin = PgPool::connect(&admin_url).await.expect("PostgreSQL must be running (make test starts it)");
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&admin).await.expect("create test database");
        admin.close().await;
        let url = match admin_url.rsplit_once('/') {
            Some((base, _)) => format!("{base}/{name}"),
            None => panic!("TEST_DATABASE_URL must end in /<database>"),
        };
        event_router::store::create_and_migrate(&url).await.expect("migrate test database");
        let pool = PgPool::connect(&url).await.expect("connect test database");
        TestDb { name, url, pool }
    }

    /// Drops the database (closing this pool and any session still in it).
    pub async fn drop_database(self) {
        self.pool.close().await;
        let admin = PgPool::connect(&admin_database_url()).await.expect("connect admin database");
        sqlx::query(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name))
            .execute(&admin)
            .await
            .expect("drop test database");
        admin.close().await;
    }

    /// `SELECT count(*) FROM <table>`.
    pub async fn count(&self, table: &str) -> i64 {
        sqlx::query_scalar(&format!("SELECT count(*) FROM {table}")).fetch_one(&self.pool).await.expect("count rows")
    }

    /// How many entries the inbox holds (see [`COUNT_INBOX_ENTRIES`]).
    pub async fn inbox_entries(&self) -> i64 {
        sqlx::query_scalar(COUNT_INBOX_ENTRIES).fetch_one(&self.pool).await.expect("count inbox entries")
    }

    /// How many distinct (topic, partition, offset) the inbox holds.
    pub async fn distinct_inbox_offsets(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM (SELECT DISTINCT topic, kafka_partition, kafka_offset FROM inbox_entries) AS o")
            .fetch_one(&self.pool)
            .await
            .expect("count inbox offsets")
    }
}

/// How many entries the inbox holds: one per message recorded (an offset recorded twice counts
/// twice). Sums the runs' lengths rather than expanding them, as tests poll it.
pub const COUNT_INBOX_ENTRIES: &str =
    "SELECT (SELECT count(*) FROM processed_messages) + (SELECT coalesce(sum(length(offsets) / 8), 0) FROM inbox_runs)";

/// The broker a test runs against: the embedded one (librdkafka's mock cluster, with fault
/// injection) or tansu, a second, independent Kafka implementation run as its own process.
pub enum TestBroker {
    Embedded(DevBroker),
    Tansu(Tansu),
}

impl TestBroker {
    pub fn bootstrap_servers(&self) -> &str {
        match self {
            TestBroker::Embedded(broker) => broker.bootstrap_servers(),
            TestBroker::Tansu(tansu) => &tansu.bootstrap,
        }
    }

    pub fn create_topic(&self, topic: &str, partitions: i32) -> anyhow::Result<()> {
        match self {
            TestBroker::Embedded(broker) => broker.create_topic(topic, partitions),
            TestBroker::Tansu(tansu) => tansu.create_topic(topic, partitions),
        }
    }

    /// The embedded broker, for fault injection.
    pub fn embedded(&self) -> &DevBroker {
        match self {
            TestBroker::Embedded(broker) => broker,
            TestBroker::Tansu(_) => panic!("fault injection needs the embedded broker"),
        }
    }

    /// Creates the service's topics (schema topics, stream, dead letters).
    fn create_service_topics(&self, config: &Config) {
        let mut topics: Vec<String> = REGISTRY.iter().map(|schema| config.topics.name(schema.key)).collect();
        topics.push(config.topics.stream());
        topics.push(config.topics.dead_letter());
        for topic in topics {
            self.create_topic(&topic, PARTITIONS).unwrap_or_else(|e| panic!("create topic {topic}: {e:#}"));
        }
    }
}

/// A tansu broker process (in-memory storage), advertised on 127.0.0.1. Stopped when dropped.
pub struct Tansu {
    bootstrap: String,
    url: String,
    _process: tokio::process::Child,
}

impl Tansu {
    /// Starts `tansu broker` on a free port and waits until it accepts connections.
    pub async fn start() -> Tansu {
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        let url = format!("tcp://127.0.0.1:{port}");
        let process = tokio::process::Command::new("tansu")
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url, "--storage-engine", "memory://tansu/"])
            .args(["--cluster-id", &format!("test-{port}")])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect(
                "tansu is installed (make test installs it: cargo install tansu --version 0.6.0 --locked --features dynostore)",
            );
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            assert!(Instant::now() < deadline, "tansu did not listen on port {port} within 30 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Tansu { bootstrap: format!("127.0.0.1:{port}"), url, _process: process }
    }

    fn create_topic(&self, topic: &str, partitions: i32) -> anyhow::Result<()> {
        let output = std::process::Command::new("tansu")
            .args(["topic", "create", "--broker", &self.url, "--partitions", &partitions.to_string(), topic])
            .output()?;
        anyhow::ensure!(output.status.success(), "tansu topic create: {}", String::from_utf8_lossy(&output.stderr));
        Ok(())
    }
}

/// An embedded broker with the service's topics created.
pub fn start_broker(config: &Config) -> Arc<TestBroker> {
    let broker = TestBroker::Embedded(DevBroker::start(1).expect("start the mock cluster"));
    broker.create_service_topics(config);
    Arc::new(broker)
}

/// A tansu broker with the service's topics created.
pub async fn start_tansu(config: &Config) -> Arc<TestBroker> {
    let broker = TestBroker::Tansu(Tansu::start().await);
    broker.create_service_topics(config);
    Arc::new(broker)
}

/// The configuration a test app runs with: test broker, test database, port 0 for HTTP.
pub fn test_config(brokers: &str, database_url: &str, group: &str, extra: &[(&str, &str)]) -> Config {
    // `extra` first: the first setting of a name wins, so a test can override any default.
    let mut vars: Vec<(&str, &str)> = extra.to_vec();
    vars.extend_from_slice(&[
        ("KAFKA_BROKERS", brokers),
        ("KAFKA_GROUP_ID", group),
        ("DATABASE_URL", database_url),
        ("METRICS_ADDR", "127.0.0.1:0"),
        ("API_ADDR", "127.0.0.1:0"),
        ("SHUTDOWN_TIMEOUT_SECONDS", "10"),
        ("RETRY_MAX_BACKOFF_MS", "1000"),
    ]);
    Config::from_env(&vars[..]).expect("valid test configuration")
}

/// A running service instance.
pub struct TestApp {
    pub broker: Arc<TestBroker>,
    pub db: Arc<TestDb>,
    pub config: Config,
    pub http_addr: SocketAddr,
    /// Where the events API listens.
    pub api_addr: SocketAddr,
    /// The service's Kafka consumer, for fault injection. Weak: the service owns it, and it must
    /// be gone before the broker is (a consumer whose cluster vanished cannot close).
    consumer: std::sync::Weak<event_router::consumer::RouterConsumer>,
    stop: CancellationToken,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
}

/// Spawns the service with default settings on a new broker and database.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(&[]).await
}

/// Spawns the service with extra settings (`(NAME, value)` as in the environment).
pub async fn spawn_app_with(extra: &[(&str, &str)]) -> TestApp {
    spawn_app_with_router(extra, event_router::handlers::router()).await
}

/// Spawns the service with extra settings and a routing table of the test's own.
pub async fn spawn_app_with_router(extra: &[(&str, &str)], router: Router) -> TestApp {
    let db = Arc::new(TestDb::create().await);
    let probe = test_config("127.0.0.1:1", &db.url, "probe", extra);
    let broker = start_broker(&probe);
    TestApp::spawn_with_router(broker, db, "event-router-test", extra, router).await
}

/// Sample payload `n` of the topic `key` (its schema's examples, identifiers varied by `n`).
///
/// # Panics
/// When `key` is not a topic in `api/event/`.
pub fn sample(key: &str, n: u64) -> serde_json::Value {
    let topic = event_router::topics::TopicSchema::find(key).unwrap_or_else(|| panic!("no topic `{key}` in api/event/"));
    samples::TopicSamples::new(topic.schema, topic.examples).payload(n)
}

/// A `todo-created` sample whose id is `id`, for tests that look the todo up by it.
pub fn todo(id: u32) -> serde_json::Value {
    let mut todo = sample("todo-created", 0);
    todo["id"] = id.into();
    todo
}

/// A message from a User of `org`, with its key and request id set.
pub fn user_message(org: &str, payload: &serde_json::Value, key: &str, request_id: &str) -> Outgoing {
    Outgoing {
        key: Some(key.into()),
        request_id: Some(request_id.into()),
        ..Outgoing::json(payload, event_router::producer::IdentityHeader::Document(samples::user_identity(org)))
    }
}

/// Sends `messages` (topic key and message, in this order) before the service starts, then
/// starts it: each partition has a backlog from the start, which the service writes in batches.
pub async fn spawn_app_after_backlog(messages: &[(&str, Outgoing)], extra: &[(&str, &str)]) -> TestApp {
    spawn_app_after_backlog_on(Arc::new(TestDb::create().await), messages, extra).await
}

/// [`spawn_app_after_backlog`] on a database the test prepared.
pub async fn spawn_app_after_backlog_on(db: Arc<TestDb>, messages: &[(&str, Outgoing)], extra: &[(&str, &str)]) -> TestApp {
    let broker = start_broker(&test_config("127.0.0.1:1", &db.url, "probe", extra));
    let config = test_config(broker.bootstrap_servers(), &db.url, "event-router-test", extra);
    let producer = EventProducer::new(&config.kafka, &config.topics).expect("producer");
    let built: Vec<RawMessage> = messages.iter().map(|(topic, outgoing)| producer.build(topic, outgoing)).collect();
    // Queued together, in order: a partition's offsets follow the order of `messages`.
    for sent in futures::future::join_all(built.iter().map(|m| producer.send_raw(m))).await {
        sent.expect("broker accepts the message");
    }
    TestApp::spawn(broker, db, "event-router-test", extra).await
}

impl TestApp {
    /// Spawns an instance on an existing broker and database, in consumer group `group`.
    pub async fn spawn(broker: Arc<TestBroker>, db: Arc<TestDb>, group: &str, extra: &[(&str, &str)]) -> TestApp {
        Self::spawn_with_router(broker, db, group, extra, event_router::handlers::router()).await
    }

    /// Like [`TestApp::spawn`], with a routing table of the test's own.
    pub async fn spawn_with_router(
        broker: Arc<TestBroker>,
        db: Arc<TestDb>,
        group: &str,
        extra: &[(&str, &str)],
        router: Router,
    ) -> TestApp {
        if std::env::var_os("RUST_LOG").is_some() {
            // `RUST_LOG=debug cargo test -- --nocapture` shows the service's logs.
            event_router::telemetry::init_logging(event_router::telemetry::LogFormat::Text);
        }
        let config = test_config(broker.bootstrap_servers(), &db.url, group, extra);
        let app = Application::build_with_router(config.clone(), router).await.expect("the service starts");
        let http_addr = app.http_addr();
        let api_addr = app.api_addr();
        let consumer = Arc::downgrade(&app.consumer());
        let stop = CancellationToken::new();
        // The task keeps the broker alive until the service has stopped, even when a failing test
        // drops its handles first: a consumer whose cluster vanished cannot finish shutting down.
        let (stopped, alive) = (stop.clone(), broker.clone());
        let handle = tokio::spawn(async move {
            let result = app.run_until_stopped(async move { stopped.cancelled().await }).await;
            drop(alive);
            result.map_err(anyhow::Error::from)
        });
        TestApp { broker, db, config, http_addr, api_addr, consumer, stop, handle: Some(handle) }
    }

    /// The service's Kafka consumer while the service runs, for fault injection.
    pub fn consumer(&self) -> Arc<event_router::consumer::RouterConsumer> {
        self.consumer.upgrade().expect("the service is running")
    }

    /// Waits for the instance to end by itself (not asked to stop) and returns how it ended.
    pub async fn ended(mut self, timeout: Duration) -> anyhow::Result<()> {
        let handle = self.handle.take().expect("the instance runs");
        tokio::time::timeout(timeout, handle).await.expect("the instance ended in time").expect("service task")
    }

    /// Another instance on the same broker and database.
    pub async fn spawn_sibling(&self, group: &str) -> TestApp {
        TestApp::spawn(self.broker.clone(), self.db.clone(), group, &[]).await
    }

    /// Stops the instance gracefully and waits for it.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(handle) = self.handle.take() {
            handle.await.expect("service task").expect("service stopped cleanly");
        }
    }

    /// The Kafka topic name for a topic key such as `todo-created` or `dlq`.
    pub fn topic(&self, key: &str) -> String {
        self.config.topics.name(key)
    }

    pub fn producer(&self) -> EventProducer {
        EventProducer::new(&self.config.kafka, &self.config.topics).expect("producer")
    }

    /// Sends `outgoing` to topic key `topic_key` without validating it first.
    pub async fn send(&self, topic_key: &str, outgoing: &Outgoing) -> Sent {
        let producer = self.producer();
        producer.send_raw(&producer.build(topic_key, outgoing)).await.expect("broker accepts the message")
    }

    /// Reads the stream topic until `count` enriched routed messages arrived (catalog events
    /// skipped), or fails after `timeout`.
    pub async fn read_routed(&self, count: usize, timeout: Duration) -> Vec<RawMessage> {
        read_stream_kind(self.broker.bootstrap_servers(), &self.topic("events-stream"), "message", count, timeout).await
    }

    /// Reads `count` messages from `topic` (from the beginning) or fails after `timeout`.
    pub async fn read_topic(&self, topic: &str, count: usize, timeout: Duration) -> Vec<RawMessage> {
        read_topic(self.broker.bootstrap_servers(), topic, count, timeout).await
    }

    /// GETs a path on the service's HTTP port.
    pub async fn get(&self, path: &str) -> (u16, String) {
        http_get(self.http_addr, path).await
    }

    /// The service's consumer as its metrics show it (rebalances, consumer errors, messages
    /// consumed and in flight, the byte budget), one series a line: what a timed-out wait for
    /// consumption reports.
    pub async fn consumer_metrics(&self) -> String {
        let (_, metrics) = self.get("/metrics").await;
        const SERIES: [&str; 4] =
            ["event_router_rebalances_total", "event_router_consumer_", "event_router_messages_", "event_router_memory_"];
        metrics.lines().filter(|line| SERIES.iter().any(|name| line.starts_with(name))).collect::<Vec<_>>().join("\n")
    }

    /// `GET path` on the events API with `headers`.
    pub async fn api_get(&self, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
        http_request(self.api_addr, path, headers).await
    }

    /// The value of one metric series, e.g. `event_router_dead_letters_total{topic="..",reason=".."}`
    /// written as name plus label pairs in any order.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let (_, body) = self.get("/metrics").await;
        metric_value(&body, name, labels).unwrap_or_else(|| panic!("no series {name} {labels:?} in /metrics"))
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A consumer in a group of its own that reads `topic` from the beginning.
fn reader(brokers: &str, topic: &str) -> StreamConsumer {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("reader-{}", uuid::Uuid::new_v4()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("reader consumer");
    consumer.subscribe(&[topic]).expect("subscribe reader");
    consumer
}

/// How many of `topic`'s oldest records the broker no longer has (the sum of its partitions' low
/// watermarks). The embedded broker keeps about 5 MiB a partition and drops the oldest beyond
/// that, so a test that reads a large topic back checks this first: a record it dropped is a
/// limit of the test's broker, not a record the service lost.
pub async fn records_dropped_by_broker(brokers: &str, topic: &str) -> i64 {
    let (brokers, topic) = (brokers.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let consumer: rdkafka::consumer::BaseConsumer =
            ClientConfig::new().set("bootstrap.servers", &brokers).create().expect("watermark consumer");
        let timeout = Duration::from_secs(10);
        let metadata = consumer.fetch_metadata(Some(&topic), timeout).expect("topic metadata");
        let partitions: Vec<i32> = metadata.topics().iter().flat_map(|t| t.partitions().iter().map(|p| p.id())).collect();
        partitions.into_iter().map(|p| consumer.fetch_watermarks(&topic, p, timeout).expect("watermarks").0).sum()
    })
    .await
    .expect("watermark task")
}

/// Reads `count` messages from `topic` (from the beginning) or fails after `timeout`.
pub async fn read_topic(brokers: &str, topic: &str, count: usize, timeout: Duration) -> Vec<RawMessage> {
    read_topic_where(brokers, topic, count, timeout, |_| true).await
}

/// `metadata.kind` of a stream record: `message` for an enriched routed message, `event` for a
/// catalog event.
pub fn stream_kind(record: &RawMessage) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(record.payload.as_deref()?).ok()?;
    value["metadata"]["kind"].as_str().map(str::to_owned)
}

/// Reads `topic` until `count` records of stream kind `kind` have arrived (the others are
/// skipped) or fails after `timeout`.
pub async fn read_stream_kind(brokers: &str, topic: &str, kind: &str, count: usize, timeout: Duration) -> Vec<RawMessage> {
    read_topic_where(brokers, topic, count, timeout, |record| stream_kind(record).as_deref() == Some(kind)).await
}

/// Reads `topic` from the beginning until `count` records that `keep` accepts have arrived.
async fn read_topic_where(
    brokers: &str,
    topic: &str,
    count: usize,
    timeout: Duration,
    keep: impl Fn(&RawMessage) -> bool,
) -> Vec<RawMessage> {
    let consumer = reader(brokers, topic);
    let deadline = Instant::now() + timeout;
    let mut records = Vec::new();
    let mut topic_names = event_router::message::TopicNames::default();
    while records.len() < count {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, consumer.recv()).await {
            Ok(Ok(record)) => {
                let record = RawMessage::from_kafka(&record, event_router::message::HeaderLimits::UNBOUNDED, &mut topic_names);
                if keep(&record) {
                    records.push(record);
                }
            }
            Ok(Err(error)) => panic!("reading {topic}: {error}"),
            Err(_) => panic!("read {} of {count} records wanted from {topic} within {timeout:?}", records.len()),
        }
    }
    records
}

/// Reads `topic` from the beginning until the records `keep` accepts carried `expected` distinct
/// request ids, and two seconds more to count duplicates that follow the last one, or until
/// `timeout`; returns the distinct ids and how many accepted records were read. For tests that
/// allow duplicates (at least once) and count them.
pub async fn request_ids(
    brokers: &str,
    topic: &str,
    expected: usize,
    timeout: Duration,
    keep: impl Fn(&RawMessage) -> bool,
) -> (std::collections::HashSet<String>, usize) {
    let consumer = reader(brokers, topic);
    let (mut ids, mut read) = (std::collections::HashSet::new(), 0);
    let deadline = Instant::now() + timeout;
    let mut settle: Option<Instant> = None;
    let mut topic_names = event_router::message::TopicNames::default();
    while Instant::now() < deadline && settle.is_none_or(|until| Instant::now() < until) {
        let Ok(Ok(record)) = tokio::time::timeout(Duration::from_secs(1), consumer.recv()).await else { continue };
        let record = RawMessage::from_kafka(&record, event_router::message::HeaderLimits::UNBOUNDED, &mut topic_names);
        if !keep(&record) {
            continue;
        }
        read += 1;
        ids.extend(header(&record, event_router::envelope::REQUEST_ID_HEADER));
        if ids.len() >= expected && settle.is_none() {
            settle = Some(Instant::now() + Duration::from_secs(2));
        }
    }
    (ids, read)
}

/// Reads whatever arrives on `topic` within `window` (for asserting that nothing arrives).
pub async fn drain_topic(brokers: &str, topic: &str, window: Duration) -> Vec<RawMessage> {
    let consumer = reader(brokers, topic);
    let deadline = Instant::now() + window;
    let mut messages = Vec::new();
    let mut topic_names = event_router::message::TopicNames::default();
    while let Ok(Ok(message)) = tokio::time::timeout(deadline.saturating_duration_since(Instant::now()), consumer.recv()).await {
        messages.push(RawMessage::from_kafka(&message, event_router::message::HeaderLimits::UNBOUNDED, &mut topic_names));
    }
    messages
}

/// Polls `check` until it returns true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    eventually_explained(timeout, what, check, || async { String::new() }).await;
}

/// [`eventually`], and when `timeout` passes, the panic message ends with what `explain` says
/// about the state it was waiting on (for a wait that times out rarely, where the state at that
/// moment is the only evidence).
pub async fn eventually_explained<F, Fut, E, EFut>(timeout: Duration, what: &str, mut check: F, explain: E)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
    E: FnOnce() -> EFut,
    EFut: std::future::Future<Output = String>,
{
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let explanation = explain().await;
    let sep = if explanation.is_empty() { "" } else { "\n" };
    panic!("timed out after {timeout:?} waiting for: {what}{sep}{explanation}");
}

/// A minimal HTTP/1.1 GET, enough for the service's own endpoints.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect to the service's HTTP port");
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .expect("send request");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read response");
    let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("status line");
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// What an HTTP server answered.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    /// Names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    /// The first value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// The body as JSON.
    ///
    /// # Panics
    /// When it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// `GET path` with `headers` over a fresh HTTP/1.1 connection (closed after the answer), for
/// answers with a length; a chunked body is returned as it came.
pub async fn http_request(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect to the service's HTTP port");
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.expect("send request");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.expect("read response");
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|s| s.parse().ok()).expect("status line");
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    HttpResponse { status, headers, body: body.to_owned() }
}

/// Finds one series in Prometheus text output.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (series_name, series_labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if series_name != name {
            return None;
        }
        let all_match = labels.iter().all(|(k, v)| series_labels.split(',').any(|pair| pair == format!("{k}=\"{v}\"")));
        let same_count = series_labels.split(',').filter(|p| !p.is_empty()).count() == labels.len();
        (all_match && same_count).then(|| value.parse().ok()).flatten()
    })
}

/// The value of header `name` (ignoring case) as text.
pub fn header(message: &RawMessage, name: &str) -> Option<String> {
    message.header(name).map(|v| String::from_utf8_lossy(v).into_owned())
}

/// A TCP relay in front of a server (PostgreSQL, say) that a test can cut and restore: a real
/// outage of that server as the service sees it, without stopping it for other tests.
pub struct TcpProxy {
    pub addr: SocketAddr,
    cut: Arc<std::sync::atomic::AtomicBool>,
    connections: Arc<std::sync::Mutex<CancellationToken>>,
    task: JoinHandle<()>,
}

impl TcpProxy {
    pub async fn start(target: SocketAddr) -> TcpProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("a bound listener has an address");
        let cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let connections = Arc::new(std::sync::Mutex::new(CancellationToken::new()));
        let task = tokio::spawn({
            let (cut, connections) = (cut.clone(), connections.clone());
            async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    if cut.load(std::sync::atomic::Ordering::SeqCst) {
                        continue; // dropped: the connection is refused as soon as it opens
                    }
                    let closed = connections.lock().expect("proxy lock").clone();
                    tokio::spawn(async move {
                        let Ok(mut server) = tokio::net::TcpStream::connect(target).await else { return };
                        tokio::select! {
                            _ = closed.cancelled() => {}
                            _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        }
                    });
                }
            }
        });
        TcpProxy { addr, cut, connections, task }
    }

    /// Closes every connection and refuses new ones.
    pub fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        let mut connections = self.connections.lock().expect("proxy lock");
        connections.cancel();
        *connections = CancellationToken::new();
    }

    /// Lets connections through again.
    pub fn restore(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Inserts `todo` as the sample handler would, one row: for test handlers that wrap the write
/// with a behaviour of their own (a retry, a panic).
pub async fn insert_todo(
    todo: &event_router::topics::TodoCreated,
    ctx: &event_router::router::Context,
    tx: &mut event_router::store::Tx,
) -> Result<(), event_router::router::HandlerError> {
    sqlx::query("INSERT INTO todos (id, title, description, org_id, request_id) VALUES ($1, $2, $3, $4, $5)")
        .bind(todo.id as i32)
        .bind(todo.title.as_str())
        .bind(todo.description.as_str())
        .bind(ctx.org_id())
        .bind(&ctx.request_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}
