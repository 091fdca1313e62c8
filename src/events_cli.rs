//! `event-router events list | watch | wait`: the events API from a terminal or a script.
//!
//! `wait` behaves like OpenSVC's `om node wait`: it exits 0 as soon as the filter holds on the
//! state document (at once if it already does), re-checking after each new event, and prints
//! `timeout` and exits 1 when the duration passes; a bad filter or an API it cannot reach is
//! exit 2, with the reason.

use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use event_router::api::client::{ApiClient, ClientError};
use event_router::envelope::identity::encode_identity;
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use serde_json::Value;

#[derive(Subcommand)]
pub(crate) enum EventsCommand {
    /// List events, newest first: a table, or JSON lines with --format json.
    List {
        #[command(flatten)]
        api: ApiArgs,
        #[command(flatten)]
        filters: Filters,
        #[arg(long)]
        limit: Option<u32>,
        #[arg(long)]
        offset: Option<u64>,
        /// `desc` (newest first) or `asc`.
        #[arg(long)]
        order: Option<String>,
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// Follow new events until interrupted.
    Watch {
        #[command(flatten)]
        api: ApiArgs,
        #[command(flatten)]
        filters: Filters,
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// Wait until the state document has PATH (e.g. `hosts.<id>.status`), or has it equal to
    /// VALUE; exit 0 when it does, 1 after --duration (printing `timeout`), 2 on a bad filter or
    /// an unreachable API.
    Wait {
        #[command(flatten)]
        api: ApiArgs,
        /// PATH[=VALUE], PATH dotted, e.g. `clusters.0e9d8c7b-6a5f-4e3d-9c2b-1a0f9e8d7c6b.stage=installed`.
        #[arg(long)]
        filter: String,
        /// How long to wait: e.g. 30s, 2m, 1h, 500ms.
        #[arg(long, default_value = "30s")]
        duration: String,
    },
}

/// Where the API is and who asks.
#[derive(Args)]
pub(crate) struct ApiArgs {
    #[arg(long, default_value = "http://127.0.0.1:8000", env = "EVENT_ROUTER_API_URL")]
    url: String,
    /// A ready-made x-rh-identity value (base64).
    #[arg(long, env = "EVENT_ROUTER_IDENTITY")]
    identity_header: Option<String>,
    /// For development: the org of a generated User identity (when --identity-header is absent).
    #[arg(long, default_value = "12345")]
    org_id: String,
}

/// The API's filters.
#[derive(Args)]
pub(crate) struct Filters {
    #[arg(long)]
    cluster_id: Option<String>,
    #[arg(long)]
    host_id: Option<String>,
    #[arg(long)]
    infra_env_id: Option<String>,
    /// A catalog event name.
    #[arg(long)]
    name: Option<String>,
    /// Comma list: info, warning, error, critical.
    #[arg(long)]
    severities: Option<String>,
    /// Case-insensitive substring of the message.
    #[arg(long)]
    message: Option<String>,
    /// RFC 3339.
    #[arg(long)]
    since: Option<String>,
    /// RFC 3339.
    #[arg(long)]
    until: Option<String>,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum Format {
    Text,
    Json,
}

fn query(pairs: &[(&str, Option<String>)]) -> String {
    pairs
        .iter()
        .filter_map(|(name, value)| value.as_ref().map(|v| format!("{name}={}", utf8_percent_encode(v, NON_ALPHANUMERIC))))
        .collect::<Vec<_>>()
        .join("&")
}

impl Filters {
    fn pairs(&self) -> Vec<(&'static str, Option<String>)> {
        vec![
            ("cluster_id", self.cluster_id.clone()),
            ("host_id", self.host_id.clone()),
            ("infra_env_id", self.infra_env_id.clone()),
            ("name", self.name.clone()),
            ("severities", self.severities.clone()),
            ("message", self.message.clone()),
            ("since", self.since.clone()),
            ("until", self.until.clone()),
        ]
    }
}

impl ApiArgs {
    fn client(&self) -> Result<ApiClient, ClientError> {
        let identity = match &self.identity_header {
            Some(header) => header.clone(),
            None => encode_identity(&samples::identity_of_type("User", &self.org_id)),
        };
        ApiClient::new(&self.url, identity)
    }
}

fn print(event: &Value, format: Format) {
    match format {
        Format::Json => println!("{event}"),
        Format::Text => println!(
            "{}  {:<8}  {:<34}  {}",
            event["event_time"].as_str().unwrap_or("?"),
            event["severity"].as_str().unwrap_or("?"),
            event["name"].as_str().unwrap_or("?"),
            event["message"].as_str().unwrap_or("?")
        ),
    }
}

/// Runs an `events` command; the process's exit code.
pub(crate) async fn run(command: EventsCommand) -> i32 {
    let result = match command {
        EventsCommand::List { api, filters, limit, offset, order, format } => {
            list(api, filters, limit, offset, order, format).await
        }
        EventsCommand::Watch { api, filters, format } => watch(api, filters, format).await,
        EventsCommand::Wait { api, filter, duration } => return wait(api, &filter, &duration).await,
    };
    match result {
        Ok(()) => 0,
        Err(error) => {
            eprintln!("event-router events: {error}");
            2
        }
    }
}

async fn list(
    api: ApiArgs,
    filters: Filters,
    limit: Option<u32>,
    offset: Option<u64>,
    order: Option<String>,
    format: Format,
) -> Result<(), ClientError> {
    let mut pairs = filters.pairs();
    pairs.extend([("limit", limit.map(|l| l.to_string())), ("offset", offset.map(|o| o.to_string())), ("order", order)]);
    let page = api.client()?.list(&query(&pairs)).await?;
    for event in &page.events {
        print(event, format);
    }
    if let Format::Text = format {
        eprintln!("{} of {} events", page.events.len(), page.total);
    }
    Ok(())
}

async fn watch(api: ApiArgs, filters: Filters, format: Format) -> Result<(), ClientError> {
    let client = api.client()?;
    let query = query(&filters.pairs());
    let mut last_id = None;
    loop {
        let mut feed = client.feed(&query, last_id).await?;
        while let Ok(Some(event)) = feed.next().await {
            print(&event.event, format);
        }
        // The connection ended: resume after the last event seen.
        last_id = feed.last_id;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// `PATH[=VALUE]`.
struct WaitFilter {
    path: Vec<String>,
    value: Option<String>,
}

impl WaitFilter {
    fn parse(text: &str) -> Result<WaitFilter, String> {
        let (path, value) = match text.split_once('=') {
            Some((path, value)) => (path, Some(value.to_owned())),
            None => (text, None),
        };
        let path: Vec<String> = path.split('.').map(str::to_owned).collect();
        if path.iter().any(String::is_empty) {
            return Err(format!("`{text}` is not PATH[=VALUE] with a dotted PATH such as hosts.<id>.status"));
        }
        Ok(WaitFilter { path, value })
    }

    fn holds(&self, state: &Value) -> bool {
        let found = self.path.iter().try_fold(state, |at, key| at.get(key));
        match (found, &self.value) {
            (None | Some(Value::Null), _) => false,
            (Some(_), None) => true,
            (Some(Value::String(text)), Some(wanted)) => text == wanted,
            (Some(other), Some(wanted)) => serde_json::to_string(other).is_ok_and(|text| text == *wanted),
        }
    }
}

/// `30s`, `2m`, `1h`, `500ms`, or seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    match text.parse::<u64>() {
        Ok(seconds) => Ok(Duration::from_secs(seconds)),
        Err(_) => event_router::config::parse_duration(text)
            .ok_or_else(|| format!("`{text}` is not a duration such as 30s (units: ms, s, m, h)")),
    }
}

async fn wait(api: ApiArgs, filter: &str, duration: &str) -> i32 {
    let fail = |reason: String| {
        eprintln!("event-router events wait: {reason}");
        2
    };
    let (filter, duration) = match (WaitFilter::parse(filter), parse_duration(duration)) {
        (Ok(filter), Ok(duration)) => (filter, duration),
        (Err(reason), _) | (_, Err(reason)) => return fail(reason),
    };
    let client = match api.client() {
        Ok(client) => client,
        Err(error) => return fail(error.to_string()),
    };
    let outcome = tokio::time::timeout(duration, async {
        // The feed is opened first: an event between reading the state and opening the feed
        // would otherwise go unseen.
        let mut feed = client.feed("", None).await?;
        loop {
            if filter.holds(&client.state().await?) {
                return Ok::<(), ClientError>(());
            }
            match feed.next().await {
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    feed = client.feed("", feed.last_id).await?;
                }
            }
        }
    })
    .await;
    match outcome {
        Ok(Ok(())) => 0,
        Ok(Err(error)) => fail(error.to_string()),
        Err(_) => {
            println!("timeout");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_filter_holds_on_a_path_or_a_value() {
        let state =
            json!({"hosts": {"h1": {"status": "installed", "failing_validations": []}}, "clusters": {"c1": {"progress": 40}}});
        let holds = |f: &str| WaitFilter::parse(f).unwrap().holds(&state);
        assert!(holds("hosts.h1.status=installed"));
        assert!(!holds("hosts.h1.status=known"));
        assert!(holds("hosts.h1"));
        assert!(!holds("hosts.h2"));
        assert!(holds("clusters.c1.progress=40"));
        assert!(WaitFilter::parse("hosts..status").is_err());
    }

    #[test]
    fn durations_read_their_units() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("3d").is_err());
    }
}
