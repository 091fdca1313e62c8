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
        std::env::var(name).ok().filter(|v| !v.trim().is_empty())
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
    pub topics: TopicConfig,
    pub database_url: Secret,
    pub database_max_connections: u32,
    pub metrics_addr: SocketAddr,
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
}

/// How a partition's messages are grouped into one database transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batching {
    /// The most messages in one transaction; also how many a partition buffers.
    pub max_messages: usize,
    /// How long a batch that is not full waits for more messages. Zero takes what is waiting:
    /// under a backlog batches fill anyway, and a lone message is not held back.
    pub linger: Duration,
}

impl Default for Batching {
    fn default() -> Self {
        Batching { max_messages: 64, linger: Duration::ZERO }
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("kafka", &self.kafka)
            .field("stream_brokers", &self.stream_kafka.brokers)
            .field("stream_publish_timeout", &self.stream_publish_timeout)
            .field("topics", &self.topics)
            .field("database_url", &redact_url(self.database_url.expose()))
            .field("database_max_connections", &self.database_max_connections)
            .field("metrics_addr", &self.metrics_addr)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .field("max_backoff", &self.max_backoff)
            .field("handler_max_attempts", &self.handler_max_attempts)
            .field("readiness_stall", &self.readiness_stall)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("batching", &self.batching)
            .finish()
    }
}

/// The database URL with any password replaced, for logs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let credentials = &url[scheme_end + 3..at];
            match credentials.find(':') {
                Some(colon) => format!("{}{}:***{}", &url[..scheme_end + 3], &credentials[..colon], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/event_router";
pub const DEFAULT_BROKERS: &str = "127.0.0.1:9092";
pub const DEFAULT_TOPIC_PREFIX: &str = "platform.event-router";

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
            None => brokers.clone(),
        };
        let stream_publish_timeout = Duration::from_millis(parse_number(env, "EVENT_STREAM_PUBLISH_TIMEOUT_MS", 10_000u64)?);
        if stream_publish_timeout < Duration::from_millis(100) {
            return Err(invalid("EVENT_STREAM_PUBLISH_TIMEOUT_MS", "must be at least 100"));
        }

        let database_url = env.var("DATABASE_URL").unwrap_or_else(|| DEFAULT_DATABASE_URL.into());
        if !(database_url.starts_with("postgres://") || database_url.starts_with("postgresql://")) {
            return Err(invalid("DATABASE_URL", "must start with postgres:// or postgresql://"));
        }
        let database_max_connections = parse_number(env, "DATABASE_MAX_CONNECTIONS", 10u32)?;
        if database_max_connections == 0 {
            return Err(invalid("DATABASE_MAX_CONNECTIONS", "must be at least 1"));
        }

        let metrics_addr = match env.var("METRICS_ADDR") {
            Some(addr) => {
                addr.parse().map_err(|_| invalid("METRICS_ADDR", format!("`{addr}` is not an address such as 0.0.0.0:9000")))?
            }
            None => SocketAddr::from(([0, 0, 0, 0], 9000)),
        };
        let shutdown_timeout = Duration::from_secs(parse_number(env, "SHUTDOWN_TIMEOUT_SECONDS", 30u64)?);
        let max_backoff = Duration::from_millis(parse_number(env, "RETRY_MAX_BACKOFF_MS", 30_000u64)?);
        let handler_max_attempts = parse_number(env, "HANDLER_MAX_ATTEMPTS", 5u32)?;
        if handler_max_attempts == 0 {
            return Err(invalid("HANDLER_MAX_ATTEMPTS", "must be at least 1"));
        }
        let readiness_stall = Duration::from_secs(parse_number(env, "READINESS_STALL_SECONDS", 120u64)?);
        let max_message_bytes =
            parse_number(env, "MAX_MESSAGE_BYTES", crate::envelope::validate::DEFAULT_MAX_PAYLOAD_BYTES as u64)? as usize;
        if max_message_bytes == 0 {
            return Err(invalid("MAX_MESSAGE_BYTES", "must be at least 1"));
        }
        let defaults = Batching::default();
        let batching = Batching {
            max_messages: parse_number(env, "BATCH_MAX_MESSAGES", defaults.max_messages as u64)? as usize,
            linger: Duration::from_millis(parse_number(env, "BATCH_LINGER_MS", defaults.linger.as_millis() as u64)?),
        };
        if !(1..=10_000).contains(&batching.max_messages) {
            return Err(invalid("BATCH_MAX_MESSAGES", "must be between 1 and 10000"));
        }

        let kafka = KafkaConfig {
            brokers,
            group_id,
            security_protocol,
            sasl_mechanism,
            sasl_username,
            sasl_password,
            ssl_ca_location,
            auto_offset_reset,
        };
        Ok(Config {
            stream_kafka: KafkaConfig { brokers: stream_brokers, ..kafka.clone() },
            stream_publish_timeout,
            kafka,
            topics: TopicConfig { prefix, translations, pattern, stream_enabled },
            database_url: Secret::new(database_url),
            database_max_connections,
            metrics_addr,
            shutdown_timeout,
            max_backoff,
            handler_max_attempts,
            readiness_stall,
            max_message_bytes,
            batching,
        })
    }
}

fn is_topic_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

fn check_brokers(setting: &'static str, brokers: &str) -> Result<(), ConfigError> {
    for broker in brokers.split(',').map(str::trim) {
        let port_ok = broker.rsplit_once(':').is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !port_ok {
            return Err(invalid(setting, format!("`{broker}` is not host:port")));
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
        Some(v) => v.trim().parse().map_err(|_| invalid(setting, format!("`{v}` is not a non-negative whole number"))),
    }
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
        assert_eq!(config.batching, Batching { max_messages: 500, linger: Duration::from_millis(20) });
    }

    #[test]
    fn every_error_names_its_setting() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("KAFKA_BROKERS", "localhost")], "KAFKA_BROKERS"),
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
            (&[("DATABASE_URL", "mysql://x")], "DATABASE_URL"),
            (&[("DATABASE_MAX_CONNECTIONS", "0")], "DATABASE_MAX_CONNECTIONS"),
            (&[("METRICS_ADDR", "9000")], "METRICS_ADDR"),
            (&[("HANDLER_MAX_ATTEMPTS", "0")], "HANDLER_MAX_ATTEMPTS"),
            (&[("READINESS_STALL_SECONDS", "a while")], "READINESS_STALL_SECONDS"),
            (&[("MAX_MESSAGE_BYTES", "0")], "MAX_MESSAGE_BYTES"),
            (&[("BATCH_MAX_MESSAGES", "0")], "BATCH_MAX_MESSAGES"),
            (&[("BATCH_MAX_MESSAGES", "20000")], "BATCH_MAX_MESSAGES"),
            (&[("BATCH_LINGER_MS", "-5")], "BATCH_LINGER_MS"),
            (&[("SHUTDOWN_TIMEOUT_SECONDS", "-1")], "SHUTDOWN_TIMEOUT_SECONDS"),
        ];
        for (vars, setting) in cases {
            let error = parse(vars).unwrap_err();
            assert_eq!(&error.setting, setting, "{vars:?}");
            assert!(error.to_string().contains(setting));
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
    }

    #[test]
    fn translations_rename_topics() {
        let mut config = parse(&[("EVENT_ROUTER_TOPIC_PREFIX", "acme.events")]).unwrap();
        config.topics.translations.insert("acme.events.dlq".into(), "acme.events.dlq-prod".into());
        assert_eq!(config.topics.dead_letter(), "acme.events.dlq-prod");
        assert_eq!(config.topics.name("todo-created"), "acme.events.todo-created");
    }
}
