//! Hooks: a command run for each matching event, with the event as JSON on stdin.
//!
//! Declared in the TOML file `EVENT_HOOKS_FILE` names (as OpenSVC's `[hook#1] events = all,
//! command = ...`):
//!
//! ```toml
//! [[hook]]
//! name = "notify"
//! events = ["host_status_updated", "cluster_install_failed"]   # or "all"
//! command = ["/usr/local/bin/on-event", "--verbose"]            # argv, no shell
//! timeout = "10s"
//! attempts = 3
//! concurrency = 1
//! ```
//!
//! Each hook is a writer of its own (`hook:<name>`), so a slow or failing hook holds up no other.
//! The command gets the event on stdin (the stream's shape, no identity) and, in an environment
//! that holds nothing of the service's own (no database URL, no Kafka password), `PATH`,
//! `EVENT_ID`, `EVENT_NAME`, `EVENT_SEVERITY`, `ORG_ID` and `REQUEST_ID`. It runs in a process
//! group of its own; past its timeout the whole group is killed. A failure is retried with
//! backoff up to `attempts`, then recorded in `writer_failures` and the hook moves on.

use std::collections::HashSet;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::{FutureExt as _, StreamExt as _};
use serde::Deserialize;
use sqlx::PgPool;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::{WriterError, WrittenEvent};
use crate::events::EventDefinition;
use crate::retry::Backoff;
use crate::telemetry::Telemetry;

/// The most of a run's stderr kept for the log.
const STDERR_TAIL: usize = 1024;
/// The largest hooks file read.
const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// A hooks file that cannot be used: names the file, the hook and the field.
#[derive(Debug, thiserror::Error)]
#[error("EVENT_HOOKS_FILE {file}: {problem}")]
pub struct HooksError {
    pub file: String,
    pub problem: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HooksFile {
    #[serde(default)]
    hook: Vec<HookEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HookEntry {
    name: String,
    events: EventsEntry,
    command: Vec<String>,
    #[serde(default)]
    timeout: Option<String>,
    #[serde(default)]
    attempts: Option<u32>,
    #[serde(default)]
    concurrency: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum EventsEntry {
    All(String),
    Names(Vec<String>),
}

/// One hook, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    pub name: String,
    /// `None`: every event.
    pub events: Option<HashSet<String>>,
    pub command: Vec<String>,
    pub timeout: Duration,
    pub attempts: u32,
    pub concurrency: usize,
}

/// Reads and checks the hooks file at `path`.
pub fn load(path: &Path) -> Result<Vec<Hook>, HooksError> {
    let file = path.display().to_string();
    let fail = |problem: String| HooksError { file: file.clone(), problem };
    let size = std::fs::metadata(path).map_err(|e| fail(format!("cannot read: {e}")))?.len();
    if size > MAX_FILE_BYTES {
        return Err(fail(format!("{size} bytes, over the limit of {MAX_FILE_BYTES}")));
    }
    let bytes = std::fs::read(path).map_err(|e| fail(format!("cannot read: {e}")))?;
    let text = String::from_utf8(bytes).map_err(|_| fail("is not UTF-8".into()))?;
    parse(&text).map_err(fail)
}

/// Checks hooks file text; the error names the hook and the field.
pub fn parse(text: &str) -> Result<Vec<Hook>, String> {
    let parsed: HooksFile = toml::from_str(text).map_err(|e| format!("not a hooks file: {}", e.message()))?;
    let mut names = HashSet::new();
    let mut hooks = Vec::with_capacity(parsed.hook.len());
    for (index, entry) in parsed.hook.into_iter().enumerate() {
        let shown: String = entry.name.chars().take(64).flat_map(char::escape_default).collect();
        let at = |field: &str, problem: String| format!("hook #{} (`{shown}`), field `{field}`: {problem}", index + 1);
        let name_ok = !entry.name.is_empty()
            && entry.name.len() <= 64
            && entry.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !name_ok {
            return Err(at("name", "1 to 64 letters, digits, `-` or `_`".into()));
        }
        if !names.insert(entry.name.clone()) {
            return Err(at("name", "another hook has this name".into()));
        }
        let events = match entry.events {
            EventsEntry::All(all) if all == "all" => None,
            EventsEntry::All(other) => {
                return Err(at("events", format!("`{}` is neither \"all\" nor a list of event names", other.escape_default())))
            }
            EventsEntry::Names(names) => {
                if names.is_empty() {
                    return Err(at("events", "an empty list matches nothing; list events or write \"all\"".into()));
                }
                if let Some(unknown) = names.iter().find(|n| EventDefinition::find(n).is_none()) {
                    return Err(at("events", format!("no event `{}` in api/events.yaml", unknown.escape_default())));
                }
                Some(names.into_iter().collect())
            }
        };
        if entry.command.first().is_none_or(|program| program.is_empty()) {
            return Err(at("command", "needs at least the program, as an argv list".into()));
        }
        if entry.command.iter().any(|arg| arg.contains('\0')) {
            return Err(at("command", "an argument holds a NUL character".into()));
        }
        let timeout = match &entry.timeout {
            None => Duration::from_secs(10),
            Some(text) => {
                crate::config::parse_duration(text).filter(|t| !t.is_zero() && *t <= Duration::from_secs(3600)).ok_or_else(
                    || at("timeout", format!("`{}` is not a duration from 1ms to 60m, such as \"10s\"", text.escape_default())),
                )?
            }
        };
        let attempts = entry.attempts.unwrap_or(3);
        if !(1..=20).contains(&attempts) {
            return Err(at("attempts", "from 1 to 20".into()));
        }
        let concurrency = entry.concurrency.unwrap_or(1);
        if !(1..=16).contains(&concurrency) {
            return Err(at("concurrency", "from 1 to 16".into()));
        }
        hooks.push(Hook { name: entry.name, events, command: entry.command, timeout, attempts, concurrency });
    }
    Ok(hooks)
}

/// A hook as a writer.
pub struct HookWriter {
    hook: Hook,
    writer_name: String,
    pool: PgPool,
    telemetry: Arc<Telemetry>,
    backoff: Backoff,
}

impl HookWriter {
    pub fn new(hook: Hook, pool: PgPool, telemetry: Arc<Telemetry>) -> HookWriter {
        let writer_name = format!("hook:{}", hook.name);
        telemetry.writer_configured(&writer_name);
        telemetry.hook_configured(&hook.name);
        HookWriter {
            hook,
            writer_name,
            pool,
            telemetry,
            backoff: Backoff { initial: Duration::from_millis(200), max: Duration::from_secs(10) },
        }
    }

    /// One run of the command for `event`: `Err` with why it failed.
    async fn run_once(&self, event: &WrittenEvent) -> Result<(), String> {
        let mut command = tokio::process::Command::new(&self.hook.command[0]);
        command
            .args(&self.hook.command[1..])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into()))
            .env("EVENT_ID", event.id.to_string())
            .env("EVENT_NAME", &event.name)
            .env("EVENT_SEVERITY", &event.severity)
            .env("ORG_ID", event.org_id.as_deref().unwrap_or_default())
            .env("REQUEST_ID", &event.request_id)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = command.spawn().map_err(|e| format!("cannot start `{}`: {e}", self.hook.command[0]))?;
        let group = child.id();
        let input = serde_json::to_vec(&event.document()).unwrap_or_default();
        let mut stdin = child.stdin.take();
        let mut stderr = child.stderr.take();
        let work = async {
            if let Some(stdin) = stdin.as_mut() {
                // A command that does not read its input is not a failure.
                let _ = stdin.write_all(&input).await;
            }
            drop(stdin.take());
            let mut tail = Vec::new();
            if let Some(stderr) = stderr.as_mut() {
                let mut chunk = [0u8; 4096];
                while let Ok(read) = stderr.read(&mut chunk).await {
                    if read == 0 {
                        break;
                    }
                    tail.extend_from_slice(&chunk[..read]);
                    if tail.len() > STDERR_TAIL {
                        tail.drain(..tail.len() - STDERR_TAIL);
                    }
                }
            }
            (child.wait().await, tail)
        };
        match tokio::time::timeout(self.hook.timeout, work).await {
            Ok((Ok(status), tail)) if status.success() => {
                let _ = tail;
                Ok(())
            }
            Ok((Ok(status), tail)) => Err(format!("{status}; stderr: {}", String::from_utf8_lossy(&tail).trim())),
            Ok((Err(error), _)) => Err(format!("waiting for it failed: {error}")),
            Err(_) => {
                if let Some(group) = group.and_then(|pid| i32::try_from(pid).ok()) {
                    // The command and everything it started.
                    let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(group), nix::sys::signal::Signal::SIGKILL);
                }
                Err(format!("killed with its process group after its timeout of {:?}", self.hook.timeout))
            }
        }
    }

    /// Runs the command for `event` until it succeeds or its attempts are spent; then records it.
    async fn run(&self, event: &WrittenEvent) -> Result<(), WriterError> {
        let mut attempt = 1;
        loop {
            let started = Instant::now();
            let result = self.run_once(event).await;
            self.telemetry.hook_ran(&self.hook.name, event.id, attempt, started.elapsed(), result.as_ref().err());
            match result {
                Ok(()) => return Ok(()),
                Err(error) if attempt >= self.hook.attempts => {
                    sqlx::query("INSERT INTO writer_failures (writer, event_id, attempts, error) VALUES ($1, $2, $3, $4)")
                        .bind(&self.writer_name)
                        .bind(event.id)
                        .bind(attempt as i32)
                        .bind(crate::envelope::reason::escape_control(error))
                        .execute(&self.pool)
                        .await
                        .map_err(|e| WriterError(format!("recording a failed hook run: {e}")))?;
                    self.telemetry.hook_gave_up(&self.hook.name, event.id, attempt);
                    return Ok(());
                }
                Err(_) => {
                    tokio::time::sleep(self.backoff.delay(attempt)).await;
                    attempt += 1;
                }
            }
        }
    }
}

impl super::Writer for HookWriter {
    fn name(&self) -> &str {
        &self.writer_name
    }

    fn deliver<'a>(&'a self, events: &'a [WrittenEvent]) -> BoxFuture<'a, Result<(), WriterError>> {
        async move {
            // In order, at most `concurrency` runs at once; the batch is confirmed when all are done.
            let mut running = futures::stream::FuturesOrdered::new();
            for event in events {
                if self.hook.events.as_ref().is_some_and(|names| !names.contains(&event.name)) {
                    continue;
                }
                running.push_back(self.run(event));
                if running.len() >= self.hook.concurrency {
                    if let Some(result) = running.next().await {
                        result?;
                    }
                }
            }
            while let Some(result) = running.next().await {
                result?;
            }
            Ok(())
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[[hook]]
name = "notify"
events = ["host_status_updated", "cluster_install_failed"]
command = ["/usr/local/bin/on-event", "--verbose"]
timeout = "10s"

[[hook]]
name = "everything"
events = "all"
command = ["cat"]
"#;

    #[test]
    fn a_good_file_gives_its_hooks_with_defaults() {
        let hooks = parse(GOOD).unwrap();
        assert_eq!(hooks.len(), 2);
        assert_eq!(hooks[0].events.as_ref().map(HashSet::len), Some(2));
        assert_eq!(
            (hooks[1].events.clone(), hooks[1].timeout, hooks[1].attempts, hooks[1].concurrency),
            (None, Duration::from_secs(10), 3, 1)
        );
    }

    #[test]
    fn each_mistake_names_the_hook_and_the_field() {
        let cases = [
            (GOOD.replacen("\"notify\"", "\"two words\"", 1), "hook #1 (`two words`), field `name`"),
            (GOOD.replacen("\"everything\"", "\"notify\"", 1), "hook #2 (`notify`), field `name`: another hook"),
            (
                GOOD.replacen("\"cluster_install_failed\"", "\"cluster_exploded\"", 1),
                "field `events`: no event `cluster_exploded`",
            ),
            (GOOD.replacen("\"all\"", "\"some\"", 1), "hook #2 (`everything`), field `events`"),
            (GOOD.replacen("[\"cat\"]", "[]", 1), "field `command`"),
            (GOOD.replacen("\"10s\"", "\"soon\"", 1), "hook #1 (`notify`), field `timeout`"),
            (GOOD.replacen("timeout = \"10s\"", "attempts = 0", 1), "field `attempts`"),
            (GOOD.replacen("timeout = \"10s\"", "concurrency = 99", 1), "field `concurrency`"),
            (GOOD.replacen("timeout", "timout", 1), "unknown field `timout`"),
            (GOOD.replacen("name = \"notify\"", "name = \"notify\"\nname = \"again\"", 1), "not a hooks file"),
            (GOOD.replacen("on-event", "on\\u0000event", 1), "NUL"),
            ("[[hook]]\nname = 5".to_owned(), "not a hooks file"),
        ];
        for (text, expected) in cases {
            let problem = parse(&text).unwrap_err();
            assert!(problem.contains(expected), "expected `{expected}` in `{problem}`");
        }
    }

    #[test]
    fn a_file_that_is_not_utf8_or_too_large_is_refused() {
        let dir = std::env::temp_dir().join(format!("hooks-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let binary = dir.join("binary.toml");
        std::fs::write(&binary, [0xff, 0xfe, b'[']).unwrap();
        assert!(load(&binary).unwrap_err().to_string().contains("is not UTF-8"));
        let huge = dir.join("huge.toml");
        std::fs::write(&huge, "#".repeat(MAX_FILE_BYTES as usize + 1)).unwrap();
        assert!(load(&huge).unwrap_err().to_string().contains("over the limit"));
        assert!(load(&dir.join("missing.toml")).unwrap_err().to_string().starts_with("EVENT_HOOKS_FILE"));
        let _ = std::fs::remove_dir_all(dir);
    }
}
