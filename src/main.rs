//! The `event-router` binary: a thin clap front end over the library.

use std::net::SocketAddr;

use clap::{Parser, Subcommand};
use dev_broker::DevBroker;
use event_router::app::Application;
use event_router::config::{Config, ProcessEnv};
use event_router::telemetry::{init_logging, LogFormat};
use event_router::{replay, store, topics};

mod demo;
mod events_cli;
mod produce_cli;
mod schema_cli;
use tokio_util::sync::CancellationToken;

/// jemalloc, not glibc's malloc. In a call-graph profile of the service's drain, glibc's
/// `malloc`, `free` and their helpers (`unlink_chunk`, `malloc_consolidate`) were a quarter of
/// its samples. With jemalloc the same drain costs about a fifth less CPU per message, at a
/// similar peak RSS (bench/README.md, section 22). Operators can tune it through
/// `_RJEM_MALLOC_CONF` (a malformed value is reported on stderr and ignored).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(name = "event-router", version, about = "Validates, handles, records and re-publishes schema-described Kafka events.")]
struct Cli {
    /// Log output: JSON in containers, text on a terminal by default.
    #[arg(long, value_enum, default_value = "auto", global = true, env = "LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service (configuration from the environment; see README).
    Run,
    /// Create the database if needed and apply migrations, then exit.
    Migrate,
    /// Host librdkafka's mock cluster for development and tests. Not a production broker.
    DevBroker {
        /// Address of the first broker; broker n listens on port + n - 1.
        #[arg(long, default_value = "127.0.0.1:9092")]
        listen: SocketAddr,
        #[arg(long, default_value_t = 1)]
        brokers: i32,
        /// Partitions of each topic the service owns.
        #[arg(long, default_value_t = 4)]
        partitions: i32,
    },
    /// Validate and send messages: one value (--data) or one JSON document per line from --file
    /// or standard input. With PRODUCER_SPOOL_DIR, what Kafka cannot take now is spooled.
    Produce(produce_cli::ProduceArgs),
    /// Record a catalog event (api/events.yaml) through the service's ingest topic, which checks
    /// it against the catalog and stores it like a handler's own.
    Record(produce_cli::RecordArgs),
    /// The producer's spool (PRODUCER_SPOOL_DIR): what waits, and sending it.
    Spool {
        #[command(subcommand)]
        command: produce_cli::SpoolCommand,
    },
    /// Re-inject dead letters into their original topics (after fixing what rejected them).
    /// Replaying twice has no second effect.
    Replay {
        /// Where to choose dead letters: the dead_letters table, or the dead-letter topic alone.
        #[arg(long, value_enum, default_value = "table")]
        from: replay::Source,
        /// Original topic: a key such as `todo-created`, or a full topic name.
        #[arg(long)]
        topic: Option<String>,
        /// Reason code, e.g. `schema_violation`.
        #[arg(long)]
        reason: Option<String>,
        /// Dead-lettered at or after this time (RFC 3339).
        #[arg(long)]
        since: Option<chrono::DateTime<chrono::Utc>>,
        /// Dead-lettered before this time (RFC 3339).
        #[arg(long)]
        until: Option<chrono::DateTime<chrono::Utc>>,
        /// Also replay dead letters that were replayed before.
        #[arg(long)]
        include_replayed: bool,
        /// Count what would be replayed; send nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Read events from the events API: list, watch, wait.
    Events {
        #[command(subcommand)]
        command: events_cli::EventsCommand,
    },
    /// Schema lifecycle: compatibility with a previous version, and the topic declarations
    /// deploys need.
    Schema {
        #[command(subcommand)]
        command: schema_cli::SchemaCommand,
    },
    /// Send demo traffic (valid and invalid) and print what the service publishes.
    Demo {
        /// Messages per second.
        #[arg(long, default_value_t = 2.0)]
        rate: f64,
        /// Stop after this many messages.
        #[arg(long)]
        count: Option<u64>,
    },
}

fn stop_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        trigger.cancel();
    });
    token
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    // A client of the API: no service configuration to read, and exit codes of its own.
    if let Command::Events { command } = cli.command {
        std::process::exit(events_cli::run(command).await);
    }
    // Tools over the files in api/event/ and deploy/: no service configuration either.
    if let Command::Schema { command } = cli.command {
        std::process::exit(schema_cli::run(command));
    }
    if let Err(error) = execute(cli.command).await {
        tracing::error!("{error:#}");
        eprintln!("event-router: {error:#}");
        std::process::exit(1);
    }
}

async fn execute(command: Command) -> anyhow::Result<()> {
    let config = Config::from_env(&ProcessEnv)?;
    match command {
        Command::Run => {
            let stop = stop_on_signal();
            let app = Application::build(config).await?;
            tracing::info!(addr = %app.http_addr(), "serving /metrics, /healthz and /readyz");
            Ok(app.run_until_stopped(async move { stop.cancelled().await }).await?)
        }
        Command::Migrate => {
            store::create_and_migrate(config.database_url.expose()).await?;
            println!("database ready: {}", event_router::config::redact_url(config.database_url.expose()));
            Ok(())
        }
        Command::DevBroker { listen, brokers, partitions } => {
            let stop = stop_on_signal();
            let broker = DevBroker::start_listening(brokers, listen).await?;
            let mut created = Vec::new();
            for schema in topics::REGISTRY {
                created.push(config.topics.name(schema.key));
            }
            created.push(config.topics.stream());
            created.push(config.topics.dead_letter());
            for topic in &created {
                broker.create_topic(topic, partitions)?;
            }
            println!("embedded broker (librdkafka mock cluster, development only) at {}", broker.bootstrap_servers());
            println!("topics ({partitions} partitions each): {}", created.join(", "));
            stop.cancelled().await;
            Ok(())
        }
        Command::Produce(args) => produce_cli::produce(&config, args).await,
        Command::Spool { command } => produce_cli::spool(&config, command).await,
        Command::Record(args) => produce_cli::record(&config, args).await,
        Command::Replay { from, topic, reason, since, until, include_replayed, dry_run } => {
            // A key (`todo-created`, `todo-created.v2`) or a full topic name.
            let topic =
                topic.map(
                    |t| if topics::TopicSchema::find(&t).is_some() || !t.contains('.') { config.topics.name(&t) } else { t },
                );
            let filter = replay::Filter { topic, reason, since, until, include_replayed };
            let summary = replay::run(&config, from, &filter, dry_run).await?;
            println!("{}{summary}", if dry_run { "dry run: " } else { "" });
            Ok(())
        }
        Command::Events { .. } | Command::Schema { .. } => unreachable!("handled before the configuration is read"),
        Command::Demo { rate, count } => {
            let stop = stop_on_signal();
            demo::run(&config.kafka, &config.topics, rate, count, stop).await
        }
    }
}
