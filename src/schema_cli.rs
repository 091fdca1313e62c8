//! `event-router schema check | declare`: a topic's life after its schema is written.
//!
//! `check` holds every schema in `api/event/` to the compatibility mode it declares against a
//! previous version (a git revision or a folder), so that a change that strands yesterday's
//! backlog or today's producers is caught in review; `declare` writes or checks the topic
//! declarations in `deploy/` that follow from the schemas. Both exit 0 when all is well, 1 when
//! something is incompatible or out of date, and 2 when they cannot do their job (a revision that
//! does not exist, a folder that cannot be read): scripts and `make lint` tell the two apart.

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};
use topic_lifecycle::declare::{self, Drift};
use topic_lifecycle::report::{self, AllowedRemovals};
use topic_lifecycle::source;

#[derive(Subcommand)]
pub(crate) enum SchemaCommand {
    /// Compare every schema with its previous version under the schema's `x-compatibility`.
    Check(CheckArgs),
    /// Generate the Kafka topic declarations in deploy/ from the schemas: print them, write them
    /// (--write) or fail when deploy/ differs (--check).
    Declare(DeclareArgs),
}

#[derive(Args)]
pub(crate) struct CheckArgs {
    /// The previous version: a git revision (e.g. `main`, `$(git merge-base HEAD main)`) or a
    /// folder of schemas (or a tree holding api/event/).
    #[arg(long)]
    against: String,
    /// The current schemas.
    #[arg(long, default_value = "api/event")]
    schemas: PathBuf,
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
    /// A topic whose schema is deleted on purpose (the topic is retired); repeatable.
    #[arg(long = "allow-removal", value_name = "KEY")]
    allow_removal: Vec<String>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Text,
    Json,
}

#[derive(Args)]
pub(crate) struct DeclareArgs {
    /// Rewrite the generated parts of the deploy files.
    #[arg(long, conflicts_with = "check")]
    write: bool,
    /// Fail, naming each topic, when the deploy files differ from what the schemas give.
    #[arg(long)]
    check: bool,
    #[arg(long, default_value = "api/event")]
    schemas: PathBuf,
    /// Topic name prefix, as EVENT_ROUTER_TOPIC_PREFIX.
    #[arg(long, default_value = event_router::config::DEFAULT_TOPIC_PREFIX)]
    prefix: String,
    /// The ClowdApp template whose `kafkaTopics` list is generated.
    #[arg(long, default_value = "deploy/clowdapp.yaml")]
    clowdapp: PathBuf,
    /// The Strimzi KafkaTopic file, generated whole.
    #[arg(long, default_value = "deploy/kubernetes/kafka-topics.yaml")]
    kafka_topics: PathBuf,
}

/// Runs one command and returns the process's exit code.
pub(crate) fn run(command: SchemaCommand) -> i32 {
    match command {
        SchemaCommand::Check(args) => check(args),
        SchemaCommand::Declare(args) => match declare_topics(&args) {
            Ok(code) => code,
            Err(problem) => {
                eprintln!("event-router schema declare: {problem}");
                2
            }
        },
    }
}

fn check(args: CheckArgs) -> i32 {
    let sets = source::from_dir(&args.schemas).and_then(|current| Ok((source::previous(&args.against, &args.schemas)?, current)));
    let (previous, current) = match sets {
        Ok(sets) => sets,
        Err(problem) => {
            eprintln!("event-router schema check: {problem}");
            return 2;
        }
    };
    let allowed: AllowedRemovals = args.allow_removal.into_iter().collect();
    let report = report::check(&previous, &current, &allowed);
    match args.format {
        Format::Text => print!("{}", report.text()),
        Format::Json => println!("{}", report.json()),
    }
    if report.compatible {
        0
    } else {
        1
    }
}

fn read(path: &PathBuf) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

fn declare_topics(args: &DeclareArgs) -> Result<i32, String> {
    let schemas = source::from_dir(&args.schemas).map_err(|e| e.to_string())?;
    let topics = declare::topics(&schemas, &args.prefix)?;
    let clowdapp = read(&args.clowdapp)?;
    let strimzi = declare::strimzi_file(&topics);
    if args.write {
        let written = declare::write_clowdapp(&clowdapp, &topics).map_err(|e| format!("{}: {e}", args.clowdapp.display()))?;
        for (path, text) in [(&args.clowdapp, &written), (&args.kafka_topics, &strimzi)] {
            // Only files that change are written (and named).
            if std::fs::read_to_string(path).ok().as_ref() != Some(text) {
                std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
                println!("wrote {}", path.display());
            }
        }
        println!("{} topics declared", topics.len());
        return Ok(0);
    }
    if args.check {
        let mut drift: Vec<Drift> = declare::check_clowdapp(&args.clowdapp.display().to_string(), &clowdapp, &topics);
        let kafka_topics = args.kafka_topics.display().to_string();
        match std::fs::read_to_string(&args.kafka_topics) {
            Ok(text) => drift.extend(declare::check_strimzi(&kafka_topics, &text, &topics)),
            Err(e) => drift.push(Drift { file: kafka_topics, topic: "-".into(), problem: format!("cannot be read: {e}") }),
        }
        for d in &drift {
            println!("{}: topic {}: {}", d.file, d.topic, d.problem);
        }
        if drift.is_empty() {
            println!("deploy declarations match the schemas: {} topics", topics.len());
            return Ok(0);
        }
        println!("the deploy declarations are out of date: run `event-router schema declare --write` (make declare-topics)");
        return Ok(1);
    }
    print!("{strimzi}");
    Ok(0)
}
