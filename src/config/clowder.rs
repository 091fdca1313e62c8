//! The platform's Clowder configuration: `ACG_CONFIG` names a `cdappconfig.json` that says where
//! Kafka and the database are, with which credentials, what the requested topics are really
//! called, and which port to serve metrics on.
//!
//! It is turned into the same settings the environment gives (`KAFKA_BROKERS`, `DATABASE_URL`,
//! ...), used wherever the environment does not set them, plus the topic name translations. So
//! one parser validates everything, and an operator can still override a single setting.
//! Certificates arrive as PEM text; they are written to files for librdkafka and PostgreSQL.
//!
//! Passwords are held as [`Secret`]s from the moment they are read, and [`Clowder`]'s `Debug`
//! hides the settings that carry them, so no `{:?}` of these types can print one.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use serde::Deserialize;

use super::{invalid, redact_url, ConfigError, Secret};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AppConfig {
    metrics_port: Option<u16>,
    /// The platform's public web port: where the events API listens.
    public_port: Option<u16>,
    kafka: Option<Kafka>,
    database: Option<Database>,
}

#[derive(Debug, Deserialize)]
struct Kafka {
    #[serde(default)]
    brokers: Vec<Broker>,
    #[serde(default)]
    topics: Vec<Topic>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Broker {
    hostname: String,
    port: Option<u16>,
    cacert: Option<String>,
    authtype: Option<String>,
    sasl: Option<Sasl>,
    security_protocol: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Sasl {
    username: Option<String>,
    password: Option<Secret>,
    sasl_mechanism: Option<String>,
    security_protocol: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Topic {
    requested_name: String,
    name: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Database {
    name: String,
    username: String,
    password: Secret,
    hostname: String,
    port: u16,
    ssl_mode: Option<String>,
    rds_ca: Option<String>,
}

/// What the Clowder file contributes.
#[derive(Default)]
pub struct Clowder {
    /// Settings by environment variable name, used where the environment has none.
    pub settings: HashMap<String, String>,
    /// Requested topic name → actual topic name.
    pub translations: HashMap<String, String>,
}

/// The settings with passwords hidden: `*PASSWORD*` settings entirely, `DATABASE_URL` redacted.
impl fmt::Debug for Clowder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let settings: BTreeMap<&str, String> = self
            .settings
            .iter()
            .map(|(name, value)| {
                let shown = if name.contains("PASSWORD") {
                    "***".to_string()
                } else if name.ends_with("_URL") {
                    redact_url(value)
                } else {
                    value.clone()
                };
                (name.as_str(), shown)
            })
            .collect();
        f.debug_struct("Clowder").field("settings", &settings).field("translations", &self.translations).finish()
    }
}

/// Reads the Clowder file at `path`, writing its certificates next to `cert_dir`.
pub fn load(path: &Path, cert_dir: &Path) -> Result<Clowder, ConfigError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| invalid("ACG_CONFIG", format!("cannot read `{}`: {e}", path.display())))?;
    let config: AppConfig = serde_json::from_str(&text)
        .map_err(|e| invalid("ACG_CONFIG", format!("`{}` is not a Clowder config: {e}", path.display())))?;
    let mut clowder = Clowder::default();
    let mut set = |name: &str, value: String| {
        clowder.settings.insert(name.to_string(), value);
    };
    if let Some(port) = config.metrics_port {
        set("METRICS_ADDR", format!("0.0.0.0:{port}"));
    }
    if let Some(port) = config.public_port {
        set("API_ADDR", format!("0.0.0.0:{port}"));
    }
    if let Some(kafka) = &config.kafka {
        if !kafka.brokers.is_empty() {
            let list: Vec<String> = kafka.brokers.iter().map(|b| format!("{}:{}", b.hostname, b.port.unwrap_or(9092))).collect();
            set("KAFKA_BROKERS", list.join(","));
        }
        // Every broker of a cluster shares its authentication; the first one says it.
        if let Some(broker) = kafka.brokers.first() {
            let sasl = broker.sasl.as_ref().filter(|_| broker.authtype.as_deref() == Some("sasl"));
            let protocol = sasl.and_then(|s| s.security_protocol.clone()).or_else(|| broker.security_protocol.clone());
            if let Some(protocol) = protocol {
                set("KAFKA_SECURITY_PROTOCOL", protocol);
            } else if broker.cacert.is_some() {
                set("KAFKA_SECURITY_PROTOCOL", "SSL".into());
            }
            if let Some(sasl) = sasl {
                if let Some(mechanism) = &sasl.sasl_mechanism {
                    set("KAFKA_SASL_MECHANISM", mechanism.clone());
                }
                if let Some(username) = &sasl.username {
                    set("KAFKA_SASL_USERNAME", username.clone());
                }
                if let Some(password) = &sasl.password {
                    set("KAFKA_SASL_PASSWORD", password.expose().to_string());
                }
            }
            if let Some(ca) = &broker.cacert {
                set("KAFKA_SSL_CA_LOCATION", write_cert(cert_dir, "kafka-ca.pem", ca)?.display().to_string());
            }
        }
        clowder.translations = kafka.topics.iter().map(|t| (t.requested_name.clone(), t.name.clone())).collect();
    }
    if let Some(db) = &config.database {
        let encode = |s: &str| utf8_percent_encode(s, NON_ALPHANUMERIC).to_string();
        let mut url = format!(
            "postgres://{}:{}@{}:{}/{}",
            encode(&db.username),
            encode(db.password.expose()),
            db.hostname,
            db.port,
            encode(&db.name)
        );
        let mut params = Vec::new();
        if let Some(mode) = &db.ssl_mode {
            params.push(format!("sslmode={}", encode(mode)));
        }
        if let Some(ca) = &db.rds_ca {
            let file = write_cert(cert_dir, "database-ca.pem", ca)?;
            params.push(format!("sslrootcert={}", encode(&file.display().to_string())));
        }
        if !params.is_empty() {
            url = format!("{url}?{}", params.join("&"));
        }
        clowder.settings.insert("DATABASE_URL".into(), url);
    }
    Ok(clowder)
}

fn write_cert(dir: &Path, name: &str, pem: &str) -> Result<PathBuf, ConfigError> {
    let path = dir.join(name);
    std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::write(&path, pem))
        .map_err(|e| invalid("ACG_CONFIG", format!("cannot write the certificate to `{}`: {e}", path.display())))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const SAMPLE: &str = r#"{
      "metricsPort": 9123,
      "webPort": 8000,
      "kafka": {
        "brokers": [
          {"hostname": "kafka-0.example", "port": 9093, "authtype": "sasl", "cacert": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
           "sasl": {"username": "svc", "password": "p@ss:word", "saslMechanism": "SCRAM-SHA-512", "securityProtocol": "SASL_SSL"}},
          {"hostname": "kafka-1.example", "port": 9093}
        ],
        "topics": [
          {"requestedName": "platform.event-router.todo-created", "name": "platform.event-router.todo-created-prod"},
          {"requestedName": "platform.event-router.dlq", "name": "platform.event-router.dlq-prod"}
        ]
      },
      "database": {"name": "event-router", "username": "er", "password": "s3cr/et", "hostname": "db.example", "port": 5432,
                   "sslMode": "verify-full", "rdsCa": "-----BEGIN CERTIFICATE-----\nMIIC\n-----END CERTIFICATE-----\n"}
    }"#;

    fn write_sample(dir: &Path) -> PathBuf {
        let path = dir.join("cdappconfig.json");
        std::fs::write(&path, SAMPLE).unwrap();
        path
    }

    fn temp_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("clowder-test-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn the_clowder_file_configures_kafka_database_topics_and_metrics() {
        let dir = temp_dir();
        let path = write_sample(&dir).display().to_string();
        let config =
            Config::from_env(&[("ACG_CONFIG", path.as_str()), ("EVENT_ROUTER_CERT_DIR", dir.to_str().unwrap())][..]).unwrap();
        assert_eq!(config.kafka.brokers, "kafka-0.example:9093,kafka-1.example:9093");
        assert_eq!(config.kafka.security_protocol.as_deref(), Some("SASL_SSL"));
        assert_eq!(config.kafka.sasl_mechanism.as_deref(), Some("SCRAM-SHA-512"));
        assert_eq!(config.kafka.sasl_username.as_deref(), Some("svc"));
        assert_eq!(config.kafka.sasl_password.as_ref().unwrap().expose(), "p@ss:word");
        let ca = config.kafka.ssl_ca_location.clone().unwrap();
        assert!(std::fs::read_to_string(ca).unwrap().contains("MIIB"));
        assert_eq!(config.metrics_addr.port(), 9123);
        assert_eq!(config.topics.name("todo-created"), "platform.event-router.todo-created-prod");
        assert_eq!(config.topics.dead_letter(), "platform.event-router.dlq-prod");
        assert_eq!(config.topics.stream(), "platform.event-router.events-stream", "untranslated names stay");
        let url = config.database_url.expose();
        assert!(
            url.starts_with("postgres://er:s3cr%2Fet@db.example:5432/event%2Drouter?sslmode=verify%2Dfull&sslrootcert="),
            "{url}"
        );
        assert!(!format!("{config:?}").contains("p@ss:word") && !format!("{config:?}").contains("s3cr"), "secrets never print");
    }

    #[test]
    fn the_environment_overrides_the_clowder_file() {
        let dir = temp_dir();
        let path = write_sample(&dir).display().to_string();
        let config = Config::from_env(
            &[
                ("ACG_CONFIG", path.as_str()),
                ("EVENT_ROUTER_CERT_DIR", dir.to_str().unwrap()),
                ("KAFKA_BROKERS", "override:9092"),
                ("METRICS_ADDR", "127.0.0.1:9999"),
            ][..],
        )
        .unwrap();
        assert_eq!(config.kafka.brokers, "override:9092");
        assert_eq!(config.metrics_addr.port(), 9999);
        assert_eq!(config.kafka.sasl_username.as_deref(), Some("svc"));
    }

    #[test]
    fn passwords_never_print_through_debug() {
        let secrets = ["p@ss:word", "p%40ss%3Aword", "s3cr/et", "s3cr%2Fet"];
        let dir = temp_dir();
        let path = write_sample(&dir);
        let parsed: AppConfig = serde_json::from_str(SAMPLE).unwrap();
        let loaded = load(&path, &dir).unwrap();
        let config =
            Config::from_env(&[("ACG_CONFIG", path.to_str().unwrap()), ("EVENT_ROUTER_CERT_DIR", dir.to_str().unwrap())][..])
                .unwrap();
        assert_eq!(loaded.settings["KAFKA_SASL_PASSWORD"], "p@ss:word", "the settings themselves hold the password");
        let kafka = parsed.kafka.as_ref().unwrap();
        for printed in [
            format!("{parsed:?}"),
            format!("{parsed:#?}"),
            format!("{:?}", kafka.brokers[0]),
            format!("{:?}", kafka.brokers[0].sasl),
            format!("{:?}", parsed.database),
            format!("{loaded:?}"),
            format!("{loaded:#?}"),
            format!("{config:?}"),
            format!("{config:#?}"),
        ] {
            for secret in secrets {
                assert!(!printed.contains(secret), "`{secret}` printed in {printed}");
            }
        }
        // What is not secret stays visible.
        let printed = format!("{loaded:?}");
        assert!(printed.contains("\"KAFKA_SASL_PASSWORD\": \"***\""), "{printed}");
        assert!(printed.contains("postgres://er:***@db.example:5432/event%2Drouter?sslmode=verify%2Dfull"), "{printed}");
        assert!(printed.contains("kafka-0.example:9093") && printed.contains("svc"), "{printed}");
    }

    #[test]
    fn a_password_that_is_not_a_string_is_not_quoted_in_the_error() {
        let dir = temp_dir();
        let path = dir.join("cdappconfig.json");
        let text = SAMPLE.replace("\"s3cr/et\"", "918273645");
        std::fs::write(&path, text).unwrap();
        let error = load(&path, &dir).unwrap_err();
        assert_eq!(error.setting, "ACG_CONFIG");
        assert!(!error.problem.contains("918273645"), "{}", error.problem);
        assert!(error.problem.contains("secret"), "{}", error.problem);
    }

    #[test]
    fn a_missing_or_broken_clowder_file_names_acg_config() {
        let error = Config::from_env(&[("ACG_CONFIG", "/no/such/cdappconfig.json")][..]).unwrap_err();
        assert_eq!(error.setting, "ACG_CONFIG");
        let dir = temp_dir();
        let path = dir.join("broken.json");
        std::fs::write(&path, "{\"kafka\": {\"brokers\": [{\"port\": 1}]}}").unwrap();
        let error = Config::from_env(&[("ACG_CONFIG", path.to_str().unwrap())][..]).unwrap_err();
        assert_eq!(error.setting, "ACG_CONFIG");
        assert!(error.problem.contains("hostname"), "{}", error.problem);
    }

    #[test]
    fn a_hostile_clowder_file_is_a_configuration_error_not_a_panic() {
        let dir = temp_dir();
        let cases: [(&str, &[u8]); 4] = [
            ("not-utf8.json", b"{\"metricsPort\": 9000, \"x\": \"\xff\xfe\"}"),
            ("nul-host.json", b"{\"kafka\": {\"brokers\": [{\"hostname\": \"kafka\\u0000evil\", \"port\": 9092}]}}"),
            ("duplicate-keys.json", b"{\"metricsPort\": 9000, \"metricsPort\": 9001}"),
            ("huge-port.json", b"{\"metricsPort\": 99999999999}"),
        ];
        for (name, bytes) in cases {
            let path = dir.join(name);
            std::fs::write(&path, bytes).unwrap();
            let error = Config::from_env(&[("ACG_CONFIG", path.to_str().unwrap())][..]).unwrap_err();
            assert!(["ACG_CONFIG", "KAFKA_BROKERS"].contains(&error.setting), "{name}: {error}");
            assert!(!error.to_string().contains('\0'), "{name}: {error}");
        }
    }
}
