//! Service configuration, read from the environment through the small [`Env`] trait.
//!
//! Reading through a trait (rather than `std::env` directly) lets tests parse any configuration
//! without touching the process environment. Every error names the setting it is about, and
//! secrets (passwords, the database URL's password) never appear in `Debug` output or errors.

pub mod clowder;

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where settings come from.
pub trait Env {
    /// The value of `name`, if set. Empty values count as unset.
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        // A value that is not UTF-8 is kept (lossily) rather than read as unset, so that it fails
        // its setting's check instead of silently giving way to the default.
        std::env::var_os(name).map(|v| v.to_string_lossy().into_owned()).filter(|v| !v.trim().is_empty())
    }
}

impl<S: std::hash::BuildHasher> Env for HashMap<String, String, S> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned().filter(|v| !v.trim().is_empty())
    }
}

impl Env for [(&str, &str)] {
    fn var(&self, name: &str) -> Option<String> {
        self.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string()).filter(|v| !v.trim().is_empty())
    }
}

/// One source of settings, then another for what the first does not set.
struct Layered<'a, E: ?Sized> {
    first: &'a E,
    then: &'a HashMap<String, String>,
}

impl<E: Env + ?Sized> Env for Layered<'_, E> {
    fn var(&self, name: &str) -> Option<String> {
        self.first.var(name).or_else(|| self.then.var(name))
    }
}

/// A setting that is missing or does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("configuration setting {setting}: {problem}")]
pub struct ConfigError {
    pub setting: &'static str,
    pub problem: String,
}

fn invalid(setting: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError { setting, problem: problem.into() }
}

/// A string that is never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    /// The secret itself, for handing to a client library.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// A secret read from a file (the Clowder file's passwords). A value that is not a string is an
/// error that does not quote it, as serde's own message would.
impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        <String as serde::Deserialize>::deserialize(deserializer)
            .map(Secret)
            .map_err(|_| serde::de::Error::custom("expected a string (the value is secret and not shown)"))
    }
}

/// How the service talks to Kafka.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaConfig {
    /// `host:port` list, comma separated.
    pub brokers: String,
    pub group_id: String,
    pub security_protocol: Option<String>,
    pub sasl_mechanism: Option<String>,
    pub sasl_username: Option<String>,
    pub sasl_password: Option<Secret>,
    pub ssl_ca_location: Option<String>,
    /// Where a new consumer group starts: `earliest` or `latest`.
    pub auto_offset_reset: String,
}

/// Topic naming: `<prefix>.<key>` unless a translation says otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicConfig {
    pub prefix: String,
    /// Requested name → actual name, e.g. from the platform's Clowder file.
    pub translations: HashMap<String, String>,
    /// Extra subscription: a regex of topics to consume besides the schema topics. Messages on
    /// matching topics that have no schema are dead-lettered as `unknown_topic`.
    pub pattern: Option<String>,
    pub stream_enabled: bool,
}

impl TopicConfig {
    /// The topic name the service uses for a key such as `todo-created` or `dlq`.
    pub fn name(&self, key: &str) -> String {
        let requested = format!("{}.{}", self.prefix, key);
        self.translations.get(&requested).cloned().unwrap_or(requested)
    }
    pub fn stream(&self) -> String {
        self.name("events-stream")
    }
    pub fn dead_letter(&self) -> String {
        self.name("dlq")
    }
}

/// Everything the service needs to start.
#[derive(Clone, PartialEq, Eq)]
pub struct Config {
    pub kafka: KafkaConfig,
    /// Where the stream is published: the consumer's cluster unless `EVENT_STREAM_BROKERS` says
    /// otherwise (same security settings).
    pub stream_kafka: KafkaConfig,
    /// How long one stream publish may take before it counts as failed and is retried.
    pub stream_publish_timeout: Duration,
    /// How long the relay's producer lets a partition's records wait to be sent together
    /// (librdkafka's `linger.ms`): a little latency on the stream for fewer, larger requests.
    pub stream_linger: Duration,
    pub topics: TopicConfig,
    pub database_url: Secret,
    pub database_max_connections: u32,
    pub metrics_addr: SocketAddr,
    /// Where the events API listens (`API_ADDR`).
    pub api_addr: SocketAddr,
    /// The events API's own database connections (`API_DATABASE_MAX_CONNECTIONS`).
    pub api_database_connections: u32,
    /// How long shutdown may take to finish in-flight work.
    pub shutdown_timeout: Duration,
    /// Upper bound of the retry backoff for transient failures.
    pub max_backoff: Duration,
    /// Attempts a handler's retryable failure gets before the message is dead-lettered.
    pub handler_max_attempts: u32,
    /// `/readyz` fails when messages are in flight and none has finished for this long.
    pub readiness_stall: Duration,
    /// Message values larger than this are dead-lettered as `payload_too_large`.
    pub max_message_bytes: usize,
    pub batching: Batching,
    /// Inbox rows older than this are pruned (see [`crate::store::retention`]).
    pub inbox_retention: Duration,
    /// `dead_letters` rows older than this are pruned.
    pub dead_letter_retention: Duration,
    /// Events last seen longer ago than this are pruned, once every writer has passed them.
    pub events_retention: Duration,
    /// The hooks file (`EVENT_HOOKS_FILE`, TOML; see [`crate::writers::hooks`]), if any.
    pub event_hooks_file: Option<std::path::PathBuf>,
    /// The producer's spool (`PRODUCER_SPOOL_DIR`, `PRODUCER_SPOOL_MAX_BYTES`,
    /// `PRODUCER_DELIVERY_TIMEOUT_MS`), for `event-router produce` and `spool`; none when no
    /// directory is set.
    pub producer_spool: Option<crate::producer::SpoolSettings>,
    /// Where the syslog writer sends events (`SYSLOG_ADDR`), if anywhere.
    pub syslog_addr: Option<crate::writers::syslog::SyslogAddr>,
    /// The syslog facility (`SYSLOG_FACILITY`, default `local0`).
    pub syslog_facility: u8,
    /// How often writers look for new events (`WRITER_BATCH_INTERVAL_MS`).
    pub writer_batch_interval: Duration,
    /// The same event seen again within this long is counted into its first row instead of
    /// adding one (`EVENT_DEDUP_WINDOW`, seconds; zero turns folding off).
    pub event_dedup_window: Duration,
}

/// How consumed messages are buffered and grouped into database transactions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batching {
    /// The most messages in one transaction; also how many a partition buffers.
    pub max_messages: usize,
    /// How long a batch that is not full waits for more messages. Zero takes what is waiting:
    /// under a backlog batches fill anyway, and a lone message is not held back.
    pub linger: Duration,
    /// The memory all messages held in the service may take, buffered or opened, in bytes (see
    /// `consumer::ByteBudget` for how a message is charged). Fetching pauses while it is spent.
    /// The default, 32 MiB, kept a 1,000,000-message drain over 384 partitions at a peak RSS of
    /// 146 MiB, against 196 MiB with 64 MiB, and drained no slower (bench/README.md, 17.).
    pub max_buffered_bytes: usize,
}

impl Default for Batching {
    fn default() -> Self {
        Batching { max_messages: 64, linger: Duration::ZERO, max_buffered_bytes: 32 * 1024 * 1024 }
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("kafka", &self.kafka)
            .field("stream_brokers", &self.stream_kafka.brokers)
            .field("stream_publish_timeout", &self.stream_publish_timeout)
            .field("stream_linger", &self.stream_linger)
            .field("topics", &self.topics)
            .field("database_url", &redact_url(self.database_url.expose()))
            .field("database_max_connections", &self.database_max_connections)
            .field("metrics_addr", &self.metrics_addr)
            .field("api_addr", &self.api_addr)
            .field("api_database_connections", &self.api_database_connections)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .field("max_backoff", &self.max_backoff)
            .field("handler_max_attempts", &self.handler_max_attempts)
            .field("readiness_stall", &self.readiness_stall)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("batching", &self.batching)
            .field("inbox_retention", &self.inbox_retention)
            .field("dead_letter_retention", &self.dead_letter_retention)
            .field("events_retention", &self.events_retention)
            .field("event_dedup_window", &self.event_dedup_window)
            .field("event_hooks_file", &self.event_hooks_file)
            .field("writer_batch_interval", &self.writer_batch_interval)
            .field("producer_spool", &self.producer_spool)
            .field("syslog_addr", &self.syslog_addr)
            .field("syslog_facility", &self.syslog_facility)
            .finish()
    }
}

/// Query parameters whose values are secret (libpq's names; compared case-insensitively).
const SECRET_PARAMETERS: &[&str] = &["password", "sslpassword"];

/// The database URL with any password replaced by `***`, for logs: the userinfo's password and
/// the values of `password` and `sslpassword` query parameters. The rest stays readable.
///
/// It is used in error messages about URLs that do not parse, so it does not rely on the URL
/// being well formed: a password with unencoded `@`, `?` or `/` is still hidden, and query
/// parameters are found wherever a `?` or `&` introduces them. When in doubt it hides too much.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let start = scheme_end + 3;
    let rest = &url[start..];
    let mut hidden: Vec<(usize, usize)> = Vec::new();

    // The userinfo ends at an '@': the last one before the query, when a path separates the two
    // (`user:pass@host/db?x=a@b`), otherwise the last one of all (a password with a raw '?').
    let before_query = rest.find('?').and_then(|q| rest[..q].rfind('@').filter(|&at| rest[at..q].contains('/')));
    if let Some(at) = before_query.or_else(|| rest.rfind('@')) {
        if let Some(colon) = rest[..at].find(':') {
            hidden.push((start + colon + 1, start + at));
        }
    }

    // `?name=value` and `&name=value` with a secret name; the value runs to the next '&'.
    for (i, _) in rest.match_indices(['?', '&']) {
        let tail = &rest[i + 1..];
        let Some(eq) = tail.find(['=', '&']).filter(|&eq| tail[eq..].starts_with('=')) else {
            continue;
        };
        let name = percent_encoding::percent_decode_str(&tail[..eq]).decode_utf8_lossy();
        if SECRET_PARAMETERS.iter().any(|secret| name.trim().eq_ignore_ascii_case(secret)) {
            let value_start = start + i + 1 + eq + 1;
            let value_end = tail[eq + 1..].find('&').map_or(url.len(), |end| value_start + end);
            hidden.push((value_start, value_end));
        }
    }

    // Overlapping ranges (a fallback '@' inside the query) become one.
    hidden.sort_unstable();
    let mut merged: Vec<(usize, usize)> = Vec::with_capacity(hidden.len());
    for (from, to) in hidden {
        match merged.last_mut() {
            Some(last) if from <= last.1 => last.1 = last.1.max(to),
            _ => merged.push((from, to)),
        }
    }
    let mut redacted = String::with_capacity(url.len());
    let mut shown_from = 0;
    for (from, to) in merged {
        redacted.push_str(&url[shown_from..from]);
        redacted.push_str("***");
        shown_from = to;
    }
    redacted.push_str(&url[shown_from..]);
    redacted
}

/// The default limit on a message value: below the 1,000,000-byte record the service's producers
/// send (`kafka::MAX_RECORD_BYTES`), with room for what the enriched stream event adds (metadata,
/// the identity header).
pub(crate) const DEFAULT_MAX_MESSAGE_BYTES: usize = 900_000;
pub(crate) const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/event_router";
pub(crate) const DEFAULT_BROKERS: &str = "127.0.0.1:9092";
pub const DEFAULT_TOPIC_PREFIX: &str = "platform.event-router";
/// 14 days: well above the usual 7-day topic retention (see [`crate::store::retention`]).
pub(crate) const DEFAULT_INBOX_RETENTION_HOURS: u64 = 14 * 24;
pub(crate) const DEFAULT_EVENT_DEDUP_WINDOW_SECONDS: u64 = 60;
pub(crate) const DEFAULT_EVENTS_RETENTION_HOURS: u64 = 90 * 24;
pub(crate) const DEFAULT_DEAD_LETTER_RETENTION_HOURS: u64 = 30 * 24;
/// 20 ms: fewer, fuller produce requests while a backlog drains. Together with the relay's batch
/// of 1,000 events, about a fifth less service CPU a message than 500 events and 5 ms
/// (bench/README.md, section 23).
pub(crate) const DEFAULT_STREAM_LINGER_MS: u64 = 20;
/// A second: a bound, so that a mistyped value cannot hold the stream back for long.
const MAX_STREAM_LINGER_MS: u64 = 1000;

const DAY_SECONDS: u64 = 24 * 60 * 60;
const DAY_MS: u64 = DAY_SECONDS * 1000;
/// The longest retention: ten years, in hours.
const MAX_RETENTION_HOURS: u64 = 10 * 365 * 24;

impl Config {
    /// Reads the configuration; the first missing or invalid setting is the error.
    /// With `ACG_CONFIG` set, the platform's Clowder file fills in what the environment does not
    /// set (see [`clowder`]).
    pub fn from_env(env: &(impl Env + ?Sized)) -> Result<Config, ConfigError> {
        let Some(path) = env.var("ACG_CONFIG") else {
            return Self::from_settings(env, HashMap::new());
        };
        let cert_dir =
            env.var("EVENT_ROUTER_CERT_DIR").map(PathBuf::from).unwrap_or_else(|| std::env::temp_dir().join("event-router"));
        let clowder = clowder::load(Path::new(&path), &cert_dir)?;
        Self::from_settings(&Layered { first: env, then: &clowder.settings }, clowder.translations)
    }

    fn from_settings(env: &(impl Env + ?Sized), translations: HashMap<String, String>) -> Result<Config, ConfigError> {
        let kafka = KafkaConfig::from_settings(env)?;

        let prefix = env.var("EVENT_ROUTER_TOPIC_PREFIX").unwrap_or_else(|| DEFAULT_TOPIC_PREFIX.into());
        if prefix.starts_with('.') || prefix.ends_with('.') || !prefix.chars().all(is_topic_char) {
            return Err(invalid(
                "EVENT_ROUTER_TOPIC_PREFIX",
                format!("`{prefix}` is not a valid topic name prefix (letters, digits, '.', '_', '-')"),
            ));
        }
        let pattern = env.var("EVENT_ROUTER_TOPIC_PATTERN");
        if let Some(pattern) = &pattern {
            if !pattern.starts_with('^') {
                return Err(invalid(
                    "EVENT_ROUTER_TOPIC_PATTERN",
                    "a topic pattern must start with `^` (Kafka's regex subscription rule)",
                ));
            }
        }
        let stream_enabled = parse_bool(env, "EVENT_STREAM_ENABLED", true)?;
        let stream_brokers = match env.var("EVENT_STREAM_BROKERS") {
            Some(list) => {
                check_brokers("EVENT_STREAM_BROKERS", &list)?;
                list
            }
            None => kafka.brokers.clone(),
        };
        let (stream_publish_timeout, stream_linger) = parse_stream_timing(env)?;

        let database_url = env.var("DATABASE_URL").unwrap_or_else(|| DEFAULT_DATABASE_URL.into());
        if !(database_url.starts_with("postgres://") || database_url.starts_with("postgresql://")) {
            return Err(invalid("DATABASE_URL", "must start with postgres:// or postgresql://"));
        }
        let database_max_connections = parse_bounded(env, "DATABASE_MAX_CONNECTIONS", 10, 1000)? as u32;
        if database_max_connections == 0 {
            return Err(invalid("DATABASE_MAX_CONNECTIONS", "must be at least 1"));
        }

        let metrics_addr = parse_addr(env, "METRICS_ADDR", SocketAddr::from(([0, 0, 0, 0], 9000)))?;
        let api_addr = parse_addr(env, "API_ADDR", SocketAddr::from(([127, 0, 0, 1], 8000)))?;
        let api_database_connections = parse_bounded(env, "API_DATABASE_MAX_CONNECTIONS", 4, 1000)? as u32;
        if api_database_connections == 0 {
            return Err(invalid("API_DATABASE_MAX_CONNECTIONS", "must be at least 1"));
        }
        let shutdown_timeout = Duration::from_secs(parse_bounded(env, "SHUTDOWN_TIMEOUT_SECONDS", 30, DAY_SECONDS)?);
        let max_backoff = Duration::from_millis(parse_bounded(env, "RETRY_MAX_BACKOFF_MS", 30_000, 3_600_000)?);
        let handler_max_attempts = parse_bounded(env, "HANDLER_MAX_ATTEMPTS", 5, 1000)? as u32;
        if handler_max_attempts == 0 {
            return Err(invalid("HANDLER_MAX_ATTEMPTS", "must be at least 1"));
        }
        let readiness_stall = Duration::from_secs(parse_bounded(env, "READINESS_STALL_SECONDS", 120, DAY_SECONDS)?);
        let max_message_bytes =
            parse_bounded(env, "MAX_MESSAGE_BYTES", DEFAULT_MAX_MESSAGE_BYTES as u64, 100 * 1024 * 1024)? as usize;
        if max_message_bytes == 0 {
            return Err(invalid("MAX_MESSAGE_BYTES", "must be at least 1"));
        }
        let batching = Batching::from_settings(env)?;
        let inbox_retention = parse_retention(env, "INBOX_RETENTION_HOURS", DEFAULT_INBOX_RETENTION_HOURS)?;
        let dead_letter_retention = parse_retention(env, "DEAD_LETTER_RETENTION_HOURS", DEFAULT_DEAD_LETTER_RETENTION_HOURS)?;
        let events_retention = parse_retention(env, "EVENTS_RETENTION_HOURS", DEFAULT_EVENTS_RETENTION_HOURS)?;
        let event_hooks_file = env.var("EVENT_HOOKS_FILE").filter(|path| !path.is_empty()).map(std::path::PathBuf::from);
        let producer_spool_max_bytes =
            parse_bounded(env, "PRODUCER_SPOOL_MAX_BYTES", 256 * 1024 * 1024, 64 * 1024 * 1024 * 1024)?;
        let producer_delivery_timeout =
            Duration::from_millis(parse_bounded(env, "PRODUCER_DELIVERY_TIMEOUT_MS", 10_000, 300_000)?);
        if producer_delivery_timeout < Duration::from_millis(100) {
            return Err(invalid("PRODUCER_DELIVERY_TIMEOUT_MS", "must be at least 100"));
        }
        let producer_spool =
            env.var("PRODUCER_SPOOL_DIR").filter(|dir| !dir.is_empty()).map(|dir| crate::producer::SpoolSettings {
                dir: dir.into(),
                max_bytes: producer_spool_max_bytes,
                delivery_timeout: producer_delivery_timeout,
            });
        let syslog_addr = match env.var("SYSLOG_ADDR").filter(|addr| !addr.is_empty()) {
            Some(addr) => {
                Some(crate::writers::syslog::SyslogAddr::parse(&addr).map_err(|problem| invalid("SYSLOG_ADDR", problem))?)
            }
            None => None,
        };
        let syslog_facility =
            crate::writers::syslog::parse_facility(&env.var("SYSLOG_FACILITY").unwrap_or_else(|| "local0".into()))
                .map_err(|problem| invalid("SYSLOG_FACILITY", problem))?;
        let writer_batch_interval = Duration::from_millis(parse_bounded(env, "WRITER_BATCH_INTERVAL_MS", 1000, 60_000)?);
        if writer_batch_interval < Duration::from_millis(10) {
            return Err(invalid("WRITER_BATCH_INTERVAL_MS", "must be at least 10"));
        }
        let event_dedup_window =
            Duration::from_secs(parse_bounded(env, "EVENT_DEDUP_WINDOW", DEFAULT_EVENT_DEDUP_WINDOW_SECONDS, DAY_SECONDS)?);

        Ok(Config {
            stream_kafka: KafkaConfig { brokers: stream_brokers, ..kafka.clone() },
            stream_publish_timeout,
            stream_linger,
            kafka,
            topics: TopicConfig { prefix, translations, pattern, stream_enabled },
            database_url: Secret::new(database_url),
            database_max_connections,
            metrics_addr,
            api_addr,
            api_database_connections,
            shutdown_timeout,
            max_backoff,
            handler_max_attempts,
            readiness_stall,
            max_message_bytes,
            batching,
            inbox_retention,
            dead_letter_retention,
            events_retention,
            event_dedup_window,
            event_hooks_file,
            writer_batch_interval,
            producer_spool,
            syslog_addr,
            syslog_facility,
        })
    }
}

/// A duration written with its unit: `500ms`, `10s`, `2m`, `1h` (hooks' timeouts, the CLI's
/// `--duration`); `None` for anything else, an overflow included.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    match unit {
        "ms" => Some(Duration::from_millis(number)),
        "s" => Some(Duration::from_secs(number)),
        "m" => number.checked_mul(60).map(Duration::from_secs),
        "h" => number.checked_mul(3600).map(Duration::from_secs),
        _ => None,
    }
}

/// A listening address from the setting `name`, or `default`.
fn parse_addr(env: &(impl Env + ?Sized), name: &'static str, default: SocketAddr) -> Result<SocketAddr, ConfigError> {
    match env.var(name) {
        Some(addr) => addr.parse().map_err(|_| invalid(name, format!("`{addr}` is not an address such as 0.0.0.0:9000"))),
        None => Ok(default),
    }
}

impl KafkaConfig {
    /// The connection, security and group settings (`KAFKA_*`).
    fn from_settings(env: &(impl Env + ?Sized)) -> Result<KafkaConfig, ConfigError> {
        let brokers = env.var("KAFKA_BROKERS").unwrap_or_else(|| DEFAULT_BROKERS.to_string());
        check_brokers("KAFKA_BROKERS", &brokers)?;

        let security_protocol = env.var("KAFKA_SECURITY_PROTOCOL").map(|v| v.to_ascii_uppercase());
        if let Some(protocol) = &security_protocol {
            if !["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"].contains(&protocol.as_str()) {
                return Err(invalid(
                    "KAFKA_SECURITY_PROTOCOL",
                    format!("`{protocol}` is not one of PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL"),
                ));
            }
        }
        let sasl_mechanism = env.var("KAFKA_SASL_MECHANISM").map(|v| v.to_ascii_uppercase());
        if let Some(mechanism) = &sasl_mechanism {
            if !["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"].contains(&mechanism.as_str()) {
                return Err(invalid(
                    "KAFKA_SASL_MECHANISM",
                    format!("`{mechanism}` is not one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512"),
                ));
            }
        }
        let sasl_username = env.var("KAFKA_SASL_USERNAME");
        let sasl_password = env.var("KAFKA_SASL_PASSWORD").map(Secret::new);
        if security_protocol.as_deref().is_some_and(|p| p.starts_with("SASL")) {
            if sasl_mechanism.is_none() {
                return Err(invalid("KAFKA_SASL_MECHANISM", "required when KAFKA_SECURITY_PROTOCOL is SASL_*"));
            }
            if sasl_username.is_none() {
                return Err(invalid("KAFKA_SASL_USERNAME", "required when KAFKA_SECURITY_PROTOCOL is SASL_*"));
            }
            if sasl_password.is_none() {
                return Err(invalid("KAFKA_SASL_PASSWORD", "required when KAFKA_SECURITY_PROTOCOL is SASL_*"));
            }
        }
        let ssl_ca_location = env.var("KAFKA_SSL_CA_LOCATION");
        if let Some(path) = &ssl_ca_location {
            if !std::path::Path::new(path).is_file() {
                return Err(invalid("KAFKA_SSL_CA_LOCATION", format!("no file at `{path}`")));
            }
        }
        let auto_offset_reset = env.var("KAFKA_AUTO_OFFSET_RESET").unwrap_or_else(|| "earliest".into());
        if !["earliest", "latest"].contains(&auto_offset_reset.as_str()) {
            return Err(invalid("KAFKA_AUTO_OFFSET_RESET", format!("`{auto_offset_reset}` is not `earliest` or `latest`")));
        }
        let group_id = env.var("KAFKA_GROUP_ID").unwrap_or_else(|| "event-router".into());

        Ok(KafkaConfig {
            brokers,
            group_id,
            security_protocol,
            sasl_mechanism,
            sasl_username,
            sasl_password,
            ssl_ca_location,
            auto_offset_reset,
        })
    }
}

impl Batching {
    /// `BATCH_MAX_MESSAGES`, `BATCH_LINGER_MS` and `MAX_BUFFERED_BYTES`.
    fn from_settings(env: &(impl Env + ?Sized)) -> Result<Batching, ConfigError> {
        let defaults = Batching::default();
        let max_messages = parse_number(env, "BATCH_MAX_MESSAGES", defaults.max_messages as u64)?;
        if !(1..=10_000).contains(&max_messages) {
            return Err(invalid("BATCH_MAX_MESSAGES", "must be between 1 and 10000"));
        }
        let batching = Batching {
            max_messages: max_messages as usize,
            linger: Duration::from_millis(parse_bounded(env, "BATCH_LINGER_MS", defaults.linger.as_millis() as u64, 60_000)?),
            max_buffered_bytes: parse_number(env, "MAX_BUFFERED_BYTES", defaults.max_buffered_bytes as u64)? as usize,
        };
        if !(1024 * 1024..=16 * 1024 * 1024 * 1024u64).contains(&(batching.max_buffered_bytes as u64)) {
            return Err(invalid("MAX_BUFFERED_BYTES", "must be between 1 MiB (1048576) and 16 GiB"));
        }
        Ok(batching)
    }
}

fn is_topic_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

fn check_brokers(setting: &'static str, brokers: &str) -> Result<(), ConfigError> {
    for broker in brokers.split(',').map(str::trim) {
        // A host name, or an IPv4 / bracketed IPv6 address: anything else (a NUL, a space) would
        // only fail later, inside librdkafka, without naming the setting.
        let host_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '[' | ']' | ':');
        let port_ok = broker
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && host.chars().all(host_char) && port.parse::<u16>().is_ok());
        if !port_ok {
            return Err(invalid(setting, format!("`{}` is not host:port", broker.escape_debug())));
        }
    }
    Ok(())
}

fn parse_bool(env: &(impl Env + ?Sized), setting: &'static str, default: bool) -> Result<bool, ConfigError> {
    match env.var(setting).map(|v| v.to_ascii_lowercase()) {
        None => Ok(default),
        Some(v) if ["1", "true", "yes", "on"].contains(&v.as_str()) => Ok(true),
        Some(v) if ["0", "false", "no", "off"].contains(&v.as_str()) => Ok(false),
        Some(v) => Err(invalid(setting, format!("`{v}` is not true or false"))),
    }
}

fn parse_number<T: std::str::FromStr>(env: &(impl Env + ?Sized), setting: &'static str, default: T) -> Result<T, ConfigError> {
    match env.var(setting) {
        None => Ok(default),
        Some(v) => {
            v.trim().parse().map_err(|_| invalid(setting, format!("`{}` is not a non-negative whole number", v.escape_debug())))
        }
    }
}

/// A number no larger than `max`: durations and sizes beyond a sane bound are mistakes, and
/// would overflow later (`Instant + Duration`, librdkafka's i32 milliseconds).
fn parse_bounded(env: &(impl Env + ?Sized), setting: &'static str, default: u64, max: u64) -> Result<u64, ConfigError> {
    let value = parse_number(env, setting, default)?;
    if value > max {
        return Err(invalid(setting, format!("{value} is more than the largest allowed, {max}")));
    }
    Ok(value)
}

/// The stream publisher's timeout and linger: a linger as long as the timeout would fail sends
/// before they were tried.
fn parse_stream_timing(env: &(impl Env + ?Sized)) -> Result<(Duration, Duration), ConfigError> {
    // librdkafka takes milliseconds as an i32; a day is well below that.
    let timeout =
        Duration::from_millis(parse_bounded(env, "EVENT_STREAM_PUBLISH_TIMEOUT_MS", 10_000, DAY_MS.min(i32::MAX as u64))?);
    if timeout < Duration::from_millis(100) {
        return Err(invalid("EVENT_STREAM_PUBLISH_TIMEOUT_MS", "must be at least 100"));
    }
    let linger =
        Duration::from_millis(parse_bounded(env, "EVENT_STREAM_LINGER_MS", DEFAULT_STREAM_LINGER_MS, MAX_STREAM_LINGER_MS)?);
    if linger >= timeout {
        return Err(invalid("EVENT_STREAM_LINGER_MS", "must be less than EVENT_STREAM_PUBLISH_TIMEOUT_MS"));
    }
    Ok((timeout, linger))
}

/// A retention in hours: at least one, at most ten years.
fn parse_retention(env: &(impl Env + ?Sized), setting: &'static str, default_hours: u64) -> Result<Duration, ConfigError> {
    let hours = parse_bounded(env, setting, default_hours, MAX_RETENTION_HOURS)?;
    if hours == 0 {
        return Err(invalid(setting, "must be at least 1"));
    }
    Ok(Duration::from_secs(hours * 60 * 60))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_env(vars)
    }

    #[test]
    fn defaults_fit_local_development() {
        let config = parse(&[]).unwrap();
        assert_eq!(config.kafka.brokers, "127.0.0.1:9092");
        assert_eq!(config.database_url.expose(), DEFAULT_DATABASE_URL);
        assert_eq!(config.topics.name("todo-created"), "platform.event-router.todo-created");
        assert_eq!(config.topics.stream(), "platform.event-router.events-stream");
        assert_eq!(config.topics.dead_letter(), "platform.event-router.dlq");
        assert!(config.topics.stream_enabled);
        assert_eq!(config.metrics_addr.port(), 9000);
        assert_eq!(config.batching, Batching::default());
    }

    #[test]
    fn batching_is_configurable() {
        let config = parse(&[("BATCH_MAX_MESSAGES", "500"), ("BATCH_LINGER_MS", "20")]).unwrap();
        assert_eq!(config.batching, Batching { max_messages: 500, linger: Duration::from_millis(20), ..Batching::default() });
    }

    #[test]
    fn every_error_names_its_setting() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("KAFKA_BROKERS", "localhost")], "KAFKA_BROKERS"),
            (&[("KAFKA_BROKERS", "kafka\0evil:9092")], "KAFKA_BROKERS"),
            (&[("KAFKA_BROKERS", "two words:9092")], "KAFKA_BROKERS"),
            (&[("KAFKA_SECURITY_PROTOCOL", "TLS")], "KAFKA_SECURITY_PROTOCOL"),
            (&[("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")], "KAFKA_SASL_MECHANISM"),
            (&[("KAFKA_SECURITY_PROTOCOL", "SASL_SSL"), ("KAFKA_SASL_MECHANISM", "PLAIN")], "KAFKA_SASL_USERNAME"),
            (&[("KAFKA_SASL_MECHANISM", "GSSAPI")], "KAFKA_SASL_MECHANISM"),
            (&[("KAFKA_SSL_CA_LOCATION", "/no/such/ca.pem")], "KAFKA_SSL_CA_LOCATION"),
            (&[("KAFKA_AUTO_OFFSET_RESET", "middle")], "KAFKA_AUTO_OFFSET_RESET"),
            (&[("EVENT_ROUTER_TOPIC_PREFIX", "bad prefix")], "EVENT_ROUTER_TOPIC_PREFIX"),
            (&[("EVENT_ROUTER_TOPIC_PATTERN", "platform.*")], "EVENT_ROUTER_TOPIC_PATTERN"),
            (&[("EVENT_STREAM_ENABLED", "maybe")], "EVENT_STREAM_ENABLED"),
            (&[("EVENT_STREAM_BROKERS", "kafka.example.com")], "EVENT_STREAM_BROKERS"),
            (&[("EVENT_STREAM_PUBLISH_TIMEOUT_MS", "soon")], "EVENT_STREAM_PUBLISH_TIMEOUT_MS"),
            (&[("EVENT_STREAM_PUBLISH_TIMEOUT_MS", "5")], "EVENT_STREAM_PUBLISH_TIMEOUT_MS"),
            (&[("EVENT_STREAM_LINGER_MS", "-1")], "EVENT_STREAM_LINGER_MS"),
            (&[("EVENT_STREAM_LINGER_MS", "20 ms")], "EVENT_STREAM_LINGER_MS"),
            (&[("EVENT_STREAM_LINGER_MS", "1001")], "EVENT_STREAM_LINGER_MS"),
            (&[("EVENT_STREAM_LINGER_MS", "18446744073709551616")], "EVENT_STREAM_LINGER_MS"),
            (&[("EVENT_STREAM_LINGER_MS", "2\u{0}0")], "EVENT_STREAM_LINGER_MS"),
            (&[("EVENT_STREAM_LINGER_MS", "\u{fffd}20")], "EVENT_STREAM_LINGER_MS"),
            (&[("EVENT_STREAM_LINGER_MS", "500"), ("EVENT_STREAM_PUBLISH_TIMEOUT_MS", "500")], "EVENT_STREAM_LINGER_MS"),
            (&[("DATABASE_URL", "mysql://x")], "DATABASE_URL"),
            (&[("DATABASE_MAX_CONNECTIONS", "0")], "DATABASE_MAX_CONNECTIONS"),
            (&[("METRICS_ADDR", "9000")], "METRICS_ADDR"),
            (&[("API_ADDR", "localhost")], "API_ADDR"),
            (&[("API_DATABASE_MAX_CONNECTIONS", "0")], "API_DATABASE_MAX_CONNECTIONS"),
            (&[("EVENT_DEDUP_WINDOW", "-1")], "EVENT_DEDUP_WINDOW"),
            (&[("WRITER_BATCH_INTERVAL_MS", "5")], "WRITER_BATCH_INTERVAL_MS"),
            (&[("SYSLOG_ADDR", "syslog.example.com:514")], "SYSLOG_ADDR"),
            (&[("SYSLOG_ADDR", "tcp://logs:0")], "SYSLOG_ADDR"),
            (&[("SYSLOG_FACILITY", "local9")], "SYSLOG_FACILITY"),
            (&[("HANDLER_MAX_ATTEMPTS", "0")], "HANDLER_MAX_ATTEMPTS"),
            (&[("READINESS_STALL_SECONDS", "a while")], "READINESS_STALL_SECONDS"),
            (&[("MAX_MESSAGE_BYTES", "0")], "MAX_MESSAGE_BYTES"),
            (&[("BATCH_MAX_MESSAGES", "0")], "BATCH_MAX_MESSAGES"),
            (&[("BATCH_MAX_MESSAGES", "20000")], "BATCH_MAX_MESSAGES"),
            (&[("BATCH_LINGER_MS", "-5")], "BATCH_LINGER_MS"),
            (&[("MAX_BUFFERED_BYTES", "1000")], "MAX_BUFFERED_BYTES"),
            (&[("SHUTDOWN_TIMEOUT_SECONDS", "-1")], "SHUTDOWN_TIMEOUT_SECONDS"),
            // Upper bounds: a value that would overflow later is refused now.
            (&[("SHUTDOWN_TIMEOUT_SECONDS", "18446744073709551615")], "SHUTDOWN_TIMEOUT_SECONDS"),
            (&[("SHUTDOWN_TIMEOUT_SECONDS", "86401")], "SHUTDOWN_TIMEOUT_SECONDS"),
            (&[("SHUTDOWN_TIMEOUT_SECONDS", "18446744073709551616")], "SHUTDOWN_TIMEOUT_SECONDS"),
            (&[("RETRY_MAX_BACKOFF_MS", "3600001")], "RETRY_MAX_BACKOFF_MS"),
            (&[("EVENT_STREAM_PUBLISH_TIMEOUT_MS", "2147483648")], "EVENT_STREAM_PUBLISH_TIMEOUT_MS"),
            (&[("EVENT_STREAM_PUBLISH_TIMEOUT_MS", "86400001")], "EVENT_STREAM_PUBLISH_TIMEOUT_MS"),
            (&[("BATCH_LINGER_MS", "60001")], "BATCH_LINGER_MS"),
            (&[("BATCH_MAX_MESSAGES", "18446744073709551615")], "BATCH_MAX_MESSAGES"),
            (&[("READINESS_STALL_SECONDS", "86401")], "READINESS_STALL_SECONDS"),
            (&[("HANDLER_MAX_ATTEMPTS", "1001")], "HANDLER_MAX_ATTEMPTS"),
            (&[("HANDLER_MAX_ATTEMPTS", "4294967296")], "HANDLER_MAX_ATTEMPTS"),
            (&[("DATABASE_MAX_CONNECTIONS", "1001")], "DATABASE_MAX_CONNECTIONS"),
            (&[("MAX_MESSAGE_BYTES", "104857601")], "MAX_MESSAGE_BYTES"),
            (&[("INBOX_RETENTION_HOURS", "0")], "INBOX_RETENTION_HOURS"),
            (&[("INBOX_RETENTION_HOURS", "87601")], "INBOX_RETENTION_HOURS"),
            (&[("INBOX_RETENTION_HOURS", "two weeks")], "INBOX_RETENTION_HOURS"),
            (&[("DEAD_LETTER_RETENTION_HOURS", "0")], "DEAD_LETTER_RETENTION_HOURS"),
            (&[("DEAD_LETTER_RETENTION_HOURS", "87601")], "DEAD_LETTER_RETENTION_HOURS"),
        ];
        for (vars, setting) in cases {
            let error = parse(vars).unwrap_err();
            assert_eq!(&error.setting, setting, "{vars:?}");
            assert!(error.to_string().contains(setting));
        }
    }

    #[test]
    fn the_largest_allowed_values_are_accepted() {
        let config = parse(&[
            ("SHUTDOWN_TIMEOUT_SECONDS", "86400"),
            ("RETRY_MAX_BACKOFF_MS", "3600000"),
            ("EVENT_STREAM_PUBLISH_TIMEOUT_MS", "86400000"),
            ("EVENT_STREAM_LINGER_MS", "1000"),
            ("BATCH_LINGER_MS", "60000"),
            ("BATCH_MAX_MESSAGES", "10000"),
            ("READINESS_STALL_SECONDS", "86400"),
            ("HANDLER_MAX_ATTEMPTS", "1000"),
            ("DATABASE_MAX_CONNECTIONS", "1000"),
            ("MAX_MESSAGE_BYTES", "104857600"),
            ("INBOX_RETENTION_HOURS", "87600"),
            ("DEAD_LETTER_RETENTION_HOURS", "87600"),
        ])
        .unwrap();
        assert_eq!(config.shutdown_timeout, Duration::from_secs(86_400));
        assert_eq!(config.stream_publish_timeout, Duration::from_millis(86_400_000));
        assert_eq!(config.stream_linger, Duration::from_secs(1));
        assert_eq!(config.handler_max_attempts, 1000);
        assert_eq!(config.database_max_connections, 1000);
        assert_eq!(config.max_message_bytes, 100 * 1024 * 1024);
        assert_eq!(config.inbox_retention, Duration::from_secs(87_600 * 3600));
        // The bounds keep later arithmetic safe.
        assert!(std::time::Instant::now().checked_add(config.shutdown_timeout).is_some());
        assert!(i32::try_from(config.stream_publish_timeout.as_millis()).is_ok());
    }

    #[test]
    fn retention_defaults_and_settings() {
        let config = parse(&[]).unwrap();
        assert_eq!(config.inbox_retention, Duration::from_secs(14 * 24 * 3600));
        assert_eq!(config.dead_letter_retention, Duration::from_secs(30 * 24 * 3600));
        let config = parse(&[("INBOX_RETENTION_HOURS", "1"), ("DEAD_LETTER_RETENTION_HOURS", " 48 ")]).unwrap();
        assert_eq!(config.inbox_retention, Duration::from_secs(3600));
        assert_eq!(config.dead_letter_retention, Duration::from_secs(48 * 3600));
        let printed = format!("{config:?}");
        assert!(printed.contains("inbox_retention") && printed.contains("dead_letter_retention"), "{printed}");
    }

    #[test]
    fn odd_bytes_in_numeric_settings_are_errors_not_panics() {
        let numeric = [
            "EVENT_STREAM_PUBLISH_TIMEOUT_MS",
            "DATABASE_MAX_CONNECTIONS",
            "SHUTDOWN_TIMEOUT_SECONDS",
            "RETRY_MAX_BACKOFF_MS",
            "HANDLER_MAX_ATTEMPTS",
            "READINESS_STALL_SECONDS",
            "MAX_MESSAGE_BYTES",
            "BATCH_MAX_MESSAGES",
            "BATCH_LINGER_MS",
            "INBOX_RETENTION_HOURS",
            "DEAD_LETTER_RETENTION_HOURS",
        ];
        let odd = ["12\0", "\0\x31", "\0", "１２", "12ms", "٣", "1\u{200b}", "\u{FFFD}", "1e3", "+-1", "0x10"];
        for setting in numeric {
            for value in odd {
                let result = std::panic::catch_unwind(|| parse(&[(setting, value)]));
                let error = result.unwrap_or_else(|_| panic!("{setting}={value:?} panicked")).unwrap_err();
                assert_eq!(error.setting, setting, "{value:?}");
                assert!(!error.to_string().contains('\0'), "NUL bytes are escaped: {error}");
            }
        }
    }

    #[test]
    fn redact_url_hides_passwords_and_keeps_the_rest() {
        let cases = [
            ("postgres://app:hunter2@db:5432/er", "postgres://app:***@db:5432/er"),
            ("postgres://app@db:5432/er", "postgres://app@db:5432/er"),
            ("postgres://db/er", "postgres://db/er"),
            ("postgresql://app:p%40ss%2Fw%3Ard@db/er?sslmode=require", "postgresql://app:***@db/er?sslmode=require"),
            ("postgres://u@h/db?password=hunter2&sslmode=require", "postgres://u@h/db?password=***&sslmode=require"),
            ("postgres://u@h/db?sslmode=require&PassWord=hunter2", "postgres://u@h/db?sslmode=require&PassWord=***"),
            ("postgres://u@h/db?sslpassword=hunter2&sslkey=/k.pem", "postgres://u@h/db?sslpassword=***&sslkey=/k.pem"),
            ("postgres://u@h/db?SSLPASSWORD=a%26b", "postgres://u@h/db?SSLPASSWORD=***"),
            ("postgres://u@h/db?%70assword=hunter2", "postgres://u@h/db?%70assword=***"),
            ("postgres://u:pw@h/db?password=pw2&sslpassword=pw3", "postgres://u:***@h/db?password=***&sslpassword=***"),
            ("postgres://u@h/db?application_name=a@b&password=x", "postgres://u@h/db?application_name=a@b&password=***"),
            ("postgres://u:pw@h/db?application_name=a@b", "postgres://u:***@h/db?application_name=a@b"),
            ("postgres://u@h/db?passwords=visible&password_x=visible", "postgres://u@h/db?passwords=visible&password_x=visible"),
            ("postgres://u:@h/db", "postgres://u:***@h/db"),
            ("postgres://u:pw@[::1]:5432/db", "postgres://u:***@[::1]:5432/db"),
            // Not well formed: raw '@', '?', '/' and '#' in the password are still hidden.
            ("postgres://u:p@ss@h/db", "postgres://u:***@h/db"),
            ("postgres://u:pa?ss@h/db?sslmode=require", "postgres://u:***@h/db?sslmode=require"),
            ("postgres://u:p@s?s@h/db", "postgres://u:***@h/db"),
            ("postgres://u:a/b#c@h/db", "postgres://u:***@h/db"),
            ("postgres://u@h/db?password=a#b&c", "postgres://u@h/db?password=***&c"),
            ("not a url", "not a url"),
        ];
        for (url, expected) in cases {
            assert_eq!(redact_url(url), expected, "{url}");
        }
    }

    #[test]
    fn redact_url_never_shows_the_password() {
        for password in ["hunter2", "p@ss", "pa?ss", "a/b", "x&password=y", "with space", "ünïcödé"] {
            for url in [
                format!("postgres://user:{password}@db.example:5432/er?sslmode=require"),
                format!("postgres://user@db.example:5432/er?sslmode=require&password={password}"),
                format!("postgres://user@db.example/er?sslpassword={password}"),
            ] {
                let redacted = redact_url(&url);
                assert!(!redacted.contains(password), "{url} → {redacted}");
                assert!(redacted.contains("***") && redacted.contains("user"), "{url} → {redacted}");
            }
        }
    }

    #[test]
    fn secrets_never_print() {
        let config = parse(&[
            ("DATABASE_URL", "postgres://app:hunter2@db:5432/er"),
            ("KAFKA_SECURITY_PROTOCOL", "SASL_SSL"),
            ("KAFKA_SASL_MECHANISM", "SCRAM-SHA-512"),
            ("KAFKA_SASL_USERNAME", "svc"),
            ("KAFKA_SASL_PASSWORD", "s3cret-pass"),
        ])
        .unwrap();
        let printed = format!("{config:?}");
        assert!(!printed.contains("hunter2") && !printed.contains("s3cret-pass"), "{printed}");
        assert!(printed.contains("postgres://app:***@db:5432/er"), "{printed}");
        let config = parse(&[("DATABASE_URL", "postgres://app@db/er?sslmode=require&password=hunter2")]).unwrap();
        let printed = format!("{config:?}");
        assert!(!printed.contains("hunter2") && printed.contains("sslmode=require&password=***"), "{printed}");
    }

    #[test]
    fn translations_rename_topics() {
        let mut config = parse(&[("EVENT_ROUTER_TOPIC_PREFIX", "acme.events")]).unwrap();
        config.topics.translations.insert("acme.events.dlq".into(), "acme.events.dlq-prod".into());
        assert_eq!(config.topics.dead_letter(), "acme.events.dlq-prod");
        assert_eq!(config.topics.name("todo-created"), "acme.events.todo-created");
    }
}
