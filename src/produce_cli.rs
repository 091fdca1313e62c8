//! `event-router produce` and `event-router spool status | flush`: the producer library from a
//! terminal or a script.
//!
//! With `PRODUCER_SPOOL_DIR` set, what Kafka cannot take within `PRODUCER_DELIVERY_TIMEOUT_MS`
//! is spooled (a line `spooled ...`) instead of failing; `spool flush` sends it once Kafka is
//! back. Every message gets one line on stdout (`sent ...` or `spooled ...`, with its request
//! id) only once it is acknowledged or safely on disk, so a script that is killed knows what got
//! through; rejections go to stderr with the service's reason code.

use std::io::BufRead as _;

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};
use event_router::config::Config;
use event_router::producer::{EventProducer, Handed, IdentityHeader, Outgoing, ProduceError};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Args)]
pub(crate) struct ProduceArgs {
    /// Topic key of the service's own topic, e.g. `todo-created` (the Kafka topic is <prefix>.<key>).
    #[arg(required_unless_present = "topic_name", conflicts_with = "topic_name")]
    topic: Option<String>,
    /// Any topic by its full name; nothing is validated unless --schema names a JSON Schema file.
    #[arg(long)]
    topic_name: Option<String>,
    /// With --topic-name: validate each value against this JSON Schema file first.
    #[arg(long, requires = "topic_name")]
    schema: Option<std::path::PathBuf>,
    /// One value; otherwise one JSON document per line from --file or standard input.
    #[arg(long)]
    data: Option<String>,
    /// Read the lines from this file instead of standard input (with a progress bar).
    #[arg(long, conflicts_with = "data")]
    file: Option<std::path::PathBuf>,
    /// Org id for a generated identity.
    #[arg(long, default_value = "12345")]
    org_id: String,
    /// Type of the generated identity: User, System, ServiceAccount, Associate, X509.
    #[arg(long, default_value = "User")]
    identity_type: String,
    /// A ready-made x-rh-identity value (base64), used instead of a generated identity.
    #[arg(long, conflicts_with_all = ["org_id", "identity_type"])]
    identity_header: Option<String>,
    /// Request id; a UUID is generated per message when absent.
    #[arg(long)]
    request_id: Option<String>,
    #[arg(long)]
    key: Option<String>,
    /// Send even if the service would reject the message.
    #[arg(long)]
    no_validate: bool,
    /// An extra header, `NAME=VALUE`; repeat for more.
    #[arg(long = "header", value_name = "NAME=VALUE", value_parser = header_arg)]
    headers: Vec<(String, Vec<u8>)>,
}

fn header_arg(text: &str) -> Result<(String, Vec<u8>), String> {
    let (name, value) = text.split_once('=').ok_or_else(|| format!("`{text}` is not NAME=VALUE"))?;
    if name.is_empty() {
        return Err("a header needs a name".into());
    }
    Ok((name.to_owned(), value.as_bytes().to_vec()))
}

#[derive(Args)]
pub(crate) struct RecordArgs {
    /// The event's name in api/events.yaml, e.g. `cluster_install_completed`.
    name: String,
    /// A property: `key=value`; the value is read as JSON when it is JSON (numbers, true,
    /// false), as text otherwise. Repeat for each property.
    #[arg(long = "prop", value_name = "KEY=VALUE")]
    props: Vec<String>,
    /// The recording component.
    #[arg(long, default_value = "event-router-cli")]
    component: String,
    /// The node it runs on; the host name by default.
    #[arg(long)]
    node: Option<String>,
    /// Org id for a generated identity.
    #[arg(long, default_value = "12345")]
    org_id: String,
    /// A ready-made x-rh-identity value (base64), used instead of a generated identity.
    #[arg(long, conflicts_with = "org_id")]
    identity_header: Option<String>,
    /// Request id; a UUID is generated when absent.
    #[arg(long)]
    request_id: Option<String>,
}

#[derive(Subcommand)]
pub(crate) enum SpoolCommand {
    /// What waits in the spool (PRODUCER_SPOOL_DIR).
    Status,
    /// Send what waits in the spool; exits non-zero if Kafka did not take all of it.
    Flush,
}

fn producer(config: &Config) -> anyhow::Result<EventProducer> {
    Ok(match &config.producer_spool {
        Some(settings) => EventProducer::with_spool(&config.kafka, &config.topics, settings)?,
        None => EventProducer::new(&config.kafka, &config.topics)?,
    })
}

/// The values to send: `--data`, the lines of `--file`, or standard input's.
fn values(args: &ProduceArgs) -> anyhow::Result<Vec<String>> {
    let lines: Vec<String> = match (&args.data, &args.file) {
        (Some(data), _) => return Ok(vec![data.clone()]),
        (None, Some(file)) => std::fs::read_to_string(file)
            .with_context(|| format!("reading {}", file.display()))?
            .lines()
            .map(str::to_owned)
            .collect(),
        (None, None) => std::io::stdin().lock().lines().collect::<Result<_, _>>()?,
    };
    Ok(lines.into_iter().filter(|l| !l.trim().is_empty()).collect())
}

pub(crate) async fn produce(config: &Config, args: ProduceArgs) -> anyhow::Result<()> {
    let producer = producer(config)?;
    let identity = match &args.identity_header {
        Some(encoded) => IdentityHeader::Encoded(encoded.clone()),
        None => IdentityHeader::Document(samples::identity_of_type(&args.identity_type, &args.org_id)),
    };
    let schema = match &args.schema {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            let schema: serde_json::Value =
                serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
            Some(
                jsonschema::validator_for(&schema)
                    .map_err(|e| anyhow::anyhow!("{} is not a JSON Schema: {e}", path.display()))?,
            )
        }
        None => None,
    };
    let values = values(&args)?;
    let progress = if args.file.is_some() { ProgressBar::new(values.len() as u64) } else { ProgressBar::hidden() };
    progress.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} {per_sec} {msg}").unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let (mut sent, mut spooled, mut rejected) = (0u64, 0u64, 0u64);
    for value in values {
        progress.inc(1);
        let outgoing = Outgoing {
            key: args.key.clone(),
            value: value.into_bytes(),
            identity: identity.clone(),
            request_id: args.request_id.clone(),
            extra_headers: args.headers.clone(),
        };
        let handed = match (&args.topic, &args.topic_name) {
            (_, Some(name)) => {
                let message = producer.build_for_topic_name(name, &outgoing);
                match schema.as_ref().map(|schema| producer.check_with_schema(schema, &message)) {
                    Some(Err(rejection)) => Err(ProduceError::Rejected(rejection)),
                    _ => producer.send_raw_or_spool(&message).await,
                }
            }
            (Some(key), None) if args.no_validate => producer.send_raw_or_spool(&producer.build(key, &outgoing)).await,
            (Some(key), None) => producer.send_or_spool(key, &outgoing).await,
            (None, None) => bail!("a topic key or --topic-name is needed"),
        };
        match handed {
            Ok(Handed::Sent(done)) => {
                sent += 1;
                progress.suspend(|| {
                    println!(
                        "sent {} partition {} offset {} request-id {}",
                        done.topic, done.delivery.partition, done.delivery.offset, done.request_id
                    )
                });
            }
            Ok(Handed::Spooled { topic, request_id }) => {
                spooled += 1;
                progress.suspend(|| println!("spooled {topic} request-id {request_id}"));
            }
            Err(ProduceError::Rejected(rejection)) => {
                rejected += 1;
                progress.suspend(|| eprintln!("rejected: {rejection}"));
            }
            Err(error) => {
                progress.finish_and_clear();
                eprintln!("sent {sent}, spooled {spooled}, rejected {rejected} before stopping");
                return Err(error).context("sending");
            }
        }
    }
    progress.finish_and_clear();
    eprintln!(
        "sent {sent}, spooled {spooled}, rejected {rejected}{}",
        if spooled > 0 { " (run `event-router spool flush` once Kafka is back)" } else { "" }
    );
    if rejected > 0 {
        bail!("{rejected} message(s) rejected and not sent (use --no-validate to send anyway)");
    }
    Ok(())
}

pub(crate) async fn spool(config: &Config, command: SpoolCommand) -> anyhow::Result<()> {
    if config.producer_spool.is_none() {
        bail!("PRODUCER_SPOOL_DIR is not set: there is no spool");
    }
    let producer = producer(config)?;
    let status = |producer: &EventProducer| -> anyhow::Result<String> {
        let Some(status) = producer.spool_status()? else { return Ok("no spool".into()) };
        let age = status
            .oldest_spooled_at_ms
            .map(|ms| format!(", the oldest spooled {:.1} s ago", (chrono::Utc::now().timestamp_millis() - ms) as f64 / 1000.0))
            .unwrap_or_default();
        Ok(format!("{} bytes waiting{age}", status.pending_bytes))
    };
    match command {
        SpoolCommand::Status => println!("{}", status(&producer)?),
        SpoolCommand::Flush => {
            let result = producer.resend_spooled().await;
            let resent = producer.spool_status()?.map_or(0, |s| s.resent_total);
            println!("re-sent {resent}; {}", status(&producer)?);
            result.context("Kafka did not take everything; what is left stays in the spool")?;
        }
    }
    Ok(())
}

pub(crate) async fn record(config: &Config, args: RecordArgs) -> anyhow::Result<()> {
    let mut properties = serde_json::Map::new();
    for prop in &args.props {
        let Some((key, value)) = prop.split_once('=') else { bail!("--prop `{prop}` is not KEY=VALUE") };
        let value = serde_json::from_str::<serde_json::Value>(value)
            .ok()
            .filter(|v| !v.is_string() && !v.is_object() && !v.is_array())
            .unwrap_or_else(|| serde_json::Value::String(value.to_owned()));
        if properties.insert(key.to_owned(), value).is_some() {
            bail!("--prop `{key}` is given more than once");
        }
    }
    let identity = match &args.identity_header {
        Some(encoded) => IdentityHeader::Encoded(encoded.clone()),
        None => IdentityHeader::Document(samples::identity_of_type("User", &args.org_id)),
    };
    let node = args.node.clone().or_else(|| std::env::var("HOSTNAME").ok()).unwrap_or_else(|| "unknown".into());
    let recorder = event_router::producer::Recorder::new(
        producer(config)?,
        event_router::producer::RecordSource { component: args.component.clone(), node },
        identity,
    );
    match recorder.record_value(&args.name, serde_json::Value::Object(properties), args.request_id.clone()).await {
        Ok(Handed::Sent(sent)) => println!("recorded {} request-id {}", args.name, sent.request_id),
        Ok(Handed::Spooled { request_id, .. }) => println!("spooled {} request-id {request_id}", args.name),
        Err(ProduceError::Rejected(rejection)) => bail!("rejected: {rejection}"),
        Err(error) => return Err(error).context("recording"),
    }
    Ok(())
}
