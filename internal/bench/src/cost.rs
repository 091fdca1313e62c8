//! What the end-to-end drain costs per message, by process: CPU time of the service, of
//! PostgreSQL (every process of the local cluster) and of this process, which hosts the embedded
//! broker; and PostgreSQL's statement time from `pg_stat_statements`, where the cluster loads it.
//!
//! CPU times come from `/proc/<pid>/stat` ([`ProcStat::read`] is the one place that reads it),
//! sampled when the drain starts ([`Meter::start`]) and again later ([`Meter::cost`]); a cost is
//! the difference divided by the messages processed in between.

use std::collections::HashMap;
use std::time::Instant;

use serde_json::{json, Value};
use sqlx::PgPool;

/// Linux reports CPU times in ticks of `USER_HZ`, which is 100 on the architectures it runs on.
const TICKS_PER_SECOND: f64 = 100.0;

/// The targets, per message.
pub(crate) const TARGET_SERVICE_US: f64 = 20.0;
pub(crate) const TARGET_STATEMENTS_US: f64 = 15.0;
pub(crate) const TARGET_ALLOCATIONS: f64 = 15.0;

/// Statements listed one by one in the report (all of them count in the totals).
const TOP_STATEMENTS: usize = 8;

/// One process's `/proc/<pid>/stat`.
pub(crate) struct ProcStat {
    pub(crate) comm: String,
    pub(crate) ppid: u32,
    /// utime + stime, all of its threads, in seconds.
    pub(crate) cpu_seconds: f64,
    /// cutime + cstime: the CPU time of its children that exited and were waited for.
    pub(crate) reaped_children_seconds: f64,
}

impl ProcStat {
    pub(crate) fn read(pid: u32) -> Option<ProcStat> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // `pid (comm) state ppid …`: comm may hold spaces and parentheses, so split at the last ')'.
        let (head, rest) = stat.trim_end().rsplit_once(") ")?;
        let comm = head.split_once(" (")?.1.to_string();
        let fields: Vec<&str> = rest.split(' ').collect();
        // `rest` starts at field 3 (state), numbering from 1 as proc(5) does.
        let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
        Some(ProcStat {
            comm,
            ppid: field(4) as u32,
            cpu_seconds: (field(14) + field(15)) / TICKS_PER_SECOND,
            reaped_children_seconds: (field(16) + field(17)) / TICKS_PER_SECOND,
        })
    }
}

/// Peak resident set size (`VmHWM` of `/proc/<pid>/status`), MiB.
pub(crate) fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?.split_whitespace().next()?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Every process visible in `/proc`.
fn processes() -> HashMap<u32, ProcStat> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return HashMap::new() };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| Some((pid, ProcStat::read(pid)?)))
        .collect()
}

/// CPU seconds of the processes measured, at one moment.
struct Sample {
    at: Instant,
    processed: u64,
    /// The service processes and their descendants (a wrapper, like the DHAT script's, counts
    /// what it runs).
    service: f64,
    /// This process: the embedded broker and the benchmark's own polling.
    bench: f64,
    /// The postmaster, its own time plus that of its children that exited (which it waits
    /// for); and each child's time.
    postmaster: f64,
    postgres_children: HashMap<u32, f64>,
}

/// A window's start: CPU times, taken just after statement statistics were reset.
pub(crate) struct Start(Sample);

impl Start {
    /// The services' count of finished messages at the start.
    pub(crate) fn processed(&self) -> u64 {
        self.0.processed
    }
}

/// Measures the cost of the service, PostgreSQL and this process over a window.
pub(crate) struct Meter {
    pool: PgPool,
    service_pids: Vec<u32>,
    /// The local postmaster, or why PostgreSQL's CPU time cannot be read.
    postmaster: Result<u32, String>,
    /// Whether `pg_stat_statements` can be used, or why not.
    statements: Result<(), String>,
}

impl Meter {
    /// `pool` is the benchmark's connection to the database the service writes to.
    pub(crate) async fn new(pool: &PgPool, service_pids: Vec<u32>) -> Meter {
        Meter {
            pool: pool.clone(),
            service_pids,
            postmaster: find_postmaster(pool).await,
            statements: enable_statements(pool).await,
        }
    }

    /// Resets the database's statement statistics and samples CPU times; `processed` is the
    /// services' count of finished messages at this moment.
    pub(crate) async fn start(&self, processed: u64) -> anyhow::Result<Start> {
        if self.statements.is_ok() {
            sqlx::query("SELECT pg_stat_statements_reset(0, oid, 0) FROM pg_database WHERE datname = current_database()")
                .execute(&self.pool)
                .await?;
        }
        Ok(Start(self.sample(processed)))
    }

    /// The cost per message from `start` to now, when the services have finished `processed`.
    pub(crate) async fn cost(&self, start: &Start, processed: u64) -> anyhow::Result<Cost> {
        let end = self.sample(processed);
        let start = &start.0;
        let messages = end.processed.saturating_sub(start.processed);
        let postgres = match &self.postmaster {
            Ok(_) => {
                // A child present at the start and gone at the end has its whole time in the
                // postmaster's reaped time, so subtracting its start value counts its share of
                // the window exactly; a child started in the window counts from zero.
                let children: f64 = end.postgres_children.values().sum::<f64>() - start.postgres_children.values().sum::<f64>();
                let bench_backends = self.bench_backends().await?;
                let ours: f64 = bench_backends
                    .iter()
                    .filter_map(|pid| Some(end.postgres_children.get(pid)? - start.postgres_children.get(pid).unwrap_or(&0.0)))
                    .sum();
                Ok(PostgresCpu { seconds: end.postmaster - start.postmaster + children, bench_database_backends: ours })
            }
            Err(why) => Err(why.clone()),
        };
        let statements = match &self.statements {
            Ok(()) => Ok(self.statements().await?),
            Err(why) => Err(why.clone()),
        };
        Ok(Cost {
            messages,
            seconds: end.at.duration_since(start.at).as_secs_f64(),
            service: end.service - start.service,
            bench: end.bench - start.bench,
            postgres,
            statements,
        })
    }

    fn sample(&self, processed: u64) -> Sample {
        let at = Instant::now();
        let all = processes();
        let mut service = 0.0;
        let mut tree = self.service_pids.clone();
        while let Some(pid) = tree.pop() {
            service += all.get(&pid).map_or(0.0, |p| p.cpu_seconds);
            tree.extend(all.iter().filter(|(_, p)| p.ppid == pid).map(|(child, _)| *child));
        }
        let bench = all.get(&std::process::id()).map_or(0.0, |p| p.cpu_seconds);
        let (mut postmaster, mut postgres_children) = (0.0, HashMap::new());
        if let Ok(pm) = self.postmaster {
            postmaster = all.get(&pm).map_or(0.0, |p| p.cpu_seconds + p.reaped_children_seconds);
            postgres_children =
                all.iter().filter(|(_, p)| p.ppid == pm && p.comm == "postgres").map(|(pid, p)| (*pid, p.cpu_seconds)).collect();
        }
        Sample { at, processed, service, bench, postmaster, postgres_children }
    }

    /// The backends connected to the service's database now.
    async fn bench_backends(&self) -> anyhow::Result<Vec<u32>> {
        let pids: Vec<i32> = sqlx::query_scalar("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
            .fetch_all(&self.pool)
            .await?;
        Ok(pids.into_iter().map(|p| p as u32).collect())
    }

    /// The statements run in the service's database since the reset, largest first; the
    /// benchmark's own queries of the statistics views left out.
    async fn statements(&self) -> anyhow::Result<Vec<Statement>> {
        let rows: Vec<(String, i64, i64, f64)> = sqlx::query_as(
            "SELECT s.query, s.calls, s.rows, s.total_exec_time FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid
             WHERE d.datname = current_database() AND s.query NOT LIKE '%pg_stat_%' ORDER BY s.total_exec_time DESC",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(query, calls, rows, total_ms)| Statement { part: part_of(&query), query, calls, rows, total_ms })
            .collect())
    }
}

/// The postmaster of the cluster `pool` connects to: the parent of this connection's backend,
/// when that is a process of this machine.
async fn find_postmaster(pool: &PgPool) -> Result<u32, String> {
    let backend: i32 =
        sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(pool).await.map_err(|e| format!("not available: {e}"))?;
    let is_postgres = |pid: u32| ProcStat::read(pid).filter(|p| p.comm == "postgres");
    let backend = is_postgres(backend as u32)
        .ok_or("not available: PostgreSQL's processes are not visible here (not a local cluster)".to_string())?;
    is_postgres(backend.ppid).map(|_| backend.ppid).ok_or("not available: the postmaster is not visible here".to_string())
}

/// Whether `pg_stat_statements` can be used in the service's database: the cluster loads it
/// and the extension can be created there (the database is the benchmark's, dropped after it).
async fn enable_statements(pool: &PgPool) -> Result<(), String> {
    let libraries: String =
        sqlx::query_scalar("SHOW shared_preload_libraries").fetch_one(pool).await.map_err(|e| format!("not available: {e}"))?;
    if !libraries.split(',').any(|l| l.trim() == "pg_stat_statements") {
        return Err("not available: shared_preload_libraries lacks pg_stat_statements \
                    (scripts/bench-enable-pg-stat-statements.sh enables it in the local cluster)"
            .into());
    }
    sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        .execute(pool)
        .await
        .map_err(|e| format!("not available: CREATE EXTENSION pg_stat_statements failed: {e}"))?;
    Ok(())
}

/// The part of the service a statement belongs to, from its text.
fn part_of(query: &str) -> &'static str {
    let q = query.to_ascii_lowercase();
    let q = q.trim_start();
    let has = |words: &[&str]| words.iter().any(|w| q.contains(w));
    if q.starts_with("begin") || q.starts_with("commit") || q.starts_with("rollback") {
        TRANSACTION_CONTROL
    } else if has(&["pg_try_advisory_xact_lock", "delete from outbox", "over w"]) {
        "outbox relay (lock, read, delete)"
    } else if has(&["insert into outbox"]) {
        "outbox write"
    } else if has(&["from outbox"]) {
        "outbox backlog gauge"
    } else if has(&["processed_messages", "inbox_runs", "hashtext("]) {
        "inbox"
    } else if has(&["dead_letters"]) {
        "dead letters"
    } else if has(&["into events", "update events", "pg_advisory_xact_lock("]) {
        "handlers: emitted events (lock, fold, insert)"
    } else if has(&["todos", "host_statuses", "cluster_install_progress"]) {
        "handlers: tables"
    } else {
        "other"
    }
}

/// BEGIN, COMMIT and ROLLBACK. A commit's WAL flush happens after the statement's own
/// execution, so `pg_stat_statements` does not count it.
const TRANSACTION_CONTROL: &str = "transaction control (without the commit's WAL flush)";

/// One normalized statement's total over the window.
pub(crate) struct Statement {
    part: &'static str,
    query: String,
    calls: i64,
    /// Rows returned or changed.
    rows: i64,
    total_ms: f64,
}

pub(crate) struct PostgresCpu {
    /// All of the cluster's processes.
    seconds: f64,
    /// The part of the backends connected to the service's database when the window ended.
    bench_database_backends: f64,
}

/// What a window cost.
pub(crate) struct Cost {
    pub(crate) messages: u64,
    seconds: f64,
    service: f64,
    bench: f64,
    postgres: Result<PostgresCpu, String>,
    statements: Result<Vec<Statement>, String>,
}

impl Cost {
    fn us(&self, seconds: f64) -> f64 {
        seconds * 1e6 / self.messages.max(1) as f64
    }

    pub(crate) fn service_us(&self) -> f64 {
        self.us(self.service)
    }

    pub(crate) fn statements_us(&self) -> Option<f64> {
        let statements = self.statements.as_ref().ok()?;
        Some(self.us(statements.iter().map(|s| s.total_ms).sum::<f64>() / 1e3))
    }

    /// Statement time per message by part, largest first.
    fn statements_by_part(&self) -> Vec<(&'static str, i64, f64)> {
        let Ok(statements) = &self.statements else { return Vec::new() };
        let mut parts: Vec<(&'static str, i64, f64)> = Vec::new();
        for s in statements {
            match parts.iter_mut().find(|p| p.0 == s.part) {
                Some(p) => (p.1, p.2) = (p.1 + s.calls, p.2 + s.total_ms),
                None => parts.push((s.part, s.calls, s.total_ms)),
            }
        }
        parts.sort_by(|a, b| b.2.total_cmp(&a.2));
        parts.into_iter().map(|(part, calls, ms)| (part, calls, self.us(ms / 1e3))).collect()
    }

    /// The lines of the report's table, and [`Cost::cells`] their values.
    const ROWS: [&'static str; 5] = [
        "service process(es)",
        "PostgreSQL, all of the cluster's processes",
        "… of which the service database's backends",
        "this process: embedded broker and the benchmark's own polling",
        "PostgreSQL statement time (`pg_stat_statements`)",
    ];

    fn cells(&self) -> [String; 5] {
        let us = |seconds: f64| format!("{:.1}", self.us(seconds));
        let (postgres, ours) = match &self.postgres {
            Ok(p) => (us(p.seconds), us(p.bench_database_backends)),
            Err(why) => (why.clone(), why.clone()),
        };
        let statements = match &self.statements {
            Ok(_) => format!("{:.1}", self.statements_us().unwrap_or_default()),
            Err(why) => why.clone(),
        };
        [us(self.service), postgres, ours, us(self.bench), statements]
    }

    pub(crate) fn to_json(&self) -> Value {
        json!({
            "messages": self.messages,
            "seconds": self.seconds,
            "service_cpu_seconds": self.service,
            "service_us": self.service_us(),
            "postgres_cpu_seconds": self.postgres.as_ref().ok().map(|p| p.seconds),
            "postgres_us": self.postgres.as_ref().ok().map(|p| self.us(p.seconds)),
            "postgres_bench_database_backends_us": self.postgres.as_ref().ok().map(|p| self.us(p.bench_database_backends)),
            "postgres_note": self.postgres.as_ref().err(),
            "bench_process_cpu_seconds": self.bench,
            "bench_process_us": self.us(self.bench),
            "statements_us": self.statements_us(),
            "statements_note": self.statements.as_ref().err(),
            "statements_by_part": self.statements_by_part().iter()
                .map(|(part, calls, us)| json!({"part": part, "calls": calls, "us": us})).collect::<Vec<_>>(),
            "top_statements": self.statements.as_ref().map(|all| all.iter().take(TOP_STATEMENTS).map(|s| json!({
                "part": s.part, "calls": s.calls, "rows": s.rows, "total_ms": s.total_ms, "us": self.us(s.total_ms / 1e3),
                "query": one_line(&s.query),
            })).collect::<Vec<_>>()).unwrap_or_default(),
        })
    }

    pub(crate) fn print(&self, window: &str) {
        let [service, postgres, ours, bench, statements] = self.cells();
        println!(
            "µs per message, {window} ({} messages): service {service}, PostgreSQL {postgres} (the service database's \
             backends {ours}), this process (broker) {bench}, statements {statements}",
            self.messages
        );
    }

    /// The report's section: CPU per process for the drain (and `after`, the drain with the
    /// relay's catch-up, when measured), then the drain's statements.
    pub(crate) fn markdown(&self, after: Option<&Cost>, allocations: &str) -> String {
        let mut md = format!(
            "## Cost per message\n\nCPU time per message from `/proc/<pid>/stat` (utime + stime), sampled when the drain \
             starts (first message consumed) and when the service has finished every message; {} messages in {:.2} s.\n\n",
            self.messages, self.seconds
        );
        let after_header = if after.is_some() { " drain + outbox relay catch-up |" } else { "" };
        let after_rule = if after.is_some() { "---:|" } else { "" };
        md.push_str(&format!("| µs per message | drain |{after_header} target |\n|---|---:|{after_rule}---:|\n"));
        let targets =
            [format!("≤ {TARGET_SERVICE_US}"), String::new(), String::new(), String::new(), format!("≤ {TARGET_STATEMENTS_US}")];
        let (drain, extended) = (self.cells(), after.map(Cost::cells));
        for (i, (name, target)) in Cost::ROWS.iter().zip(&targets).enumerate() {
            let extended = extended.as_ref().map(|cells| format!(" {} |", cells[i])).unwrap_or_default();
            md.push_str(&format!("| {name} | {} |{extended} {target} |\n", drain[i]));
        }
        let blank = if after.is_some() { " |" } else { "" };
        md.push_str(&format!("| heap allocations per message (service) | {allocations} |{blank} ≤ {TARGET_ALLOCATIONS} |\n"));
        md.push_str(
            "\nPostgreSQL's CPU is every process of the local cluster (postmaster and children): other clients of the same \
             cluster count too, hence the line for the service database's backends (those connected when the window ended). \
             A process that exits within the window counts through the postmaster's time of reaped children; one that \
             starts within it counts from zero. The benchmark process hosts the embedded broker, so its figure includes \
             the benchmark's own polling of the service's `/metrics` (one scrape a second while more than 4 s of work \
             remain, more often after that, every 50 ms at the end). \
             Statement time is execution time (it includes waiting for I/O and locks, not a commit's WAL flush, which comes \
             after the COMMIT statement's execution), of the service's database only.\n",
        );
        if after.is_some() {
            md.push_str(
                "The second column extends the window until the outbox is empty (the relay publishing what the drain \
                 left), over the same messages; it includes the benchmark's polling of the outbox backlog.\n",
            );
        }
        match &self.statements {
            Err(why) => md.push_str(&format!("\nStatements: {why}.\n")),
            Ok(all) => {
                md.push_str("\n### Statement time of the drain, by part\n\n| part | calls | µs per message |\n|---|---:|---:|\n");
                for (part, calls, us) in self.statements_by_part() {
                    md.push_str(&format!("| {part} | {calls} | {us:.2} |\n"));
                }
                md.push_str(
                    "\n### Largest statements of the drain\n\n| part | calls | rows | total ms | ms per call | µs per message | \
                     statement |\n|---|---:|---:|---:|---:|---:|---|\n",
                );
                for s in all.iter().take(TOP_STATEMENTS) {
                    let mut text = one_line(&s.query).replace('|', "\\|");
                    if text.chars().count() > 100 {
                        text = text.chars().take(100).collect::<String>() + "…";
                    }
                    md.push_str(&format!(
                        "| {} | {} | {} | {:.0} | {:.3} | {:.2} | `{text}` |\n",
                        s.part,
                        s.calls,
                        s.rows,
                        s.total_ms,
                        s.total_ms / s.calls.max(1) as f64,
                        self.us(s.total_ms / 1e3)
                    ));
                }
            }
        }
        md
    }
}

fn one_line(query: &str) -> String {
    query.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = ProcStat::read(std::process::id()).expect("/proc/self/stat");
        assert_eq!(me.ppid, std::os::unix::process::parent_id());
        assert!(me.cpu_seconds >= 0.0 && !me.comm.is_empty());
        assert!(peak_rss_mib(std::process::id()).is_some_and(|mib| mib > 0.0));
    }

    #[test]
    fn statements_by_part() {
        assert_eq!(part_of("INSERT INTO processed_messages (topic) SELECT $1"), "inbox");
        assert_eq!(part_of(event_router::store::LOCK_PARTITIONS), "inbox");
        assert_eq!(part_of(event_router::store::INBOX_RANGES), "inbox");
        assert_eq!(part_of("INSERT INTO outbox (events, event_count) VALUES ($1, $2)"), "outbox write");
        assert_eq!(part_of("DELETE FROM outbox WHERE id = ANY($1)"), "outbox relay (lock, read, delete)");
        assert_eq!(part_of("INSERT INTO todos (id) SELECT * FROM UNNEST($1::int4[])"), "handlers: tables");
        assert_eq!(
            part_of("SELECT pg_advisory_xact_lock(k) FROM UNNEST($1::int8[])"),
            "handlers: emitted events (lock, fold, insert)"
        );
        assert_eq!(part_of("SELECT pg_try_advisory_xact_lock($1)"), "outbox relay (lock, read, delete)");
        assert_eq!(part_of("COMMIT"), TRANSACTION_CONTROL);
    }
}
