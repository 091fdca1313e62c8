//! Pruning: the inbox (`inbox_runs`, and `processed_messages` of earlier releases) and
//! `dead_letters` would otherwise grow without bound.
//!
//! An inbox row (a run of one partition's messages, recorded in one transaction) is only needed
//! while a redelivery of its offsets is possible: after a crash or a rebalance, Kafka redelivers
//! from the last committed offset, which is always a message still in the topic. So a row older
//! than the topic's retention can never match again and may go.
//! `INBOX_RETENTION_HOURS` must therefore stay above the consumed topics' retention (the default,
//! 14 days, is twice Kafka's default 7 days); a shorter one could let a redelivered message be
//! handled twice. A dead letter's row is what `replay --from table` chooses from; it also keeps a
//! redelivered rejected message from being dead-lettered twice, and marks a replay so that
//! replaying again has no effect. So `DEAD_LETTER_RETENTION_HOURS` (default 30 days) must stay
//! above the retention of the consumed topics and of the dead-letter topic.
//!
//! Events (`EVENTS_RETENTION_HOURS`, default 90 days, by when they were last seen) go too, but
//! never one a writer has not delivered yet: a writer that is far behind keeps its events until
//! it has passed them, so pruning cannot lose a delivery.
//!
//! Rows are deleted oldest-first in bounded batches, each its own statement and transaction, so
//! pruning a large backlog neither holds locks for long nor builds one huge transaction. The age
//! columns have BRIN indexes (migration 0006), which cost the insert path almost nothing.

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// The most rows one `DELETE` removes.
pub const BATCH_ROWS: i64 = 10_000;

/// How often [`run`] prunes by default.
pub(crate) const DEFAULT_INTERVAL: Duration = Duration::from_secs(10 * 60);

/// How long each kind of row is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub inbox: Duration,
    pub dead_letters: Duration,
    pub events: Duration,
}

/// Rows deleted by one [`prune`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    /// Rows, not messages: a run of this release's inbox and a row of an earlier release's count
    /// one each.
    pub inbox: u64,
    pub dead_letters: u64,
    pub events: u64,
}

impl Pruned {
    pub fn total(&self) -> u64 {
        self.inbox + self.dead_letters + self.events
    }
}

/// A batch delete of `$table`'s rows whose `$age` is more than $1 seconds ago (and that meet
/// `$also`, if given), at most $2 rows. The table and column names are literals here, never input.
macro_rules! prune_older {
    ($table:literal, $age:literal $(, $also:literal)?) => {
        concat!(
            "DELETE FROM ", $table, " WHERE ctid = ANY(ARRAY(SELECT ctid FROM ", $table,
            " WHERE ", $age, " < now() - make_interval(secs => $1)", $(" AND ", $also,)? " LIMIT $2))"
        )
    };
}

const PRUNE_INBOX: &str = prune_older!("processed_messages", "processed_at");
const PRUNE_INBOX_RUNS: &str = prune_older!("inbox_runs", "processed_at");
const PRUNE_DEAD_LETTERS: &str = prune_older!("dead_letters", "dead_lettered_at");
// An event stays while any writer has yet to pass it.
const PRUNE_EVENTS: &str = prune_older!(
    "events",
    "last_seen",
    "NOT EXISTS (SELECT 1 FROM writer_progress AS w WHERE (events.tx_id, events.id) > (w.tx_id, w.event_id))"
);

/// Deletes the rows past their retention.
pub async fn prune(pool: &PgPool, retention: &Retention) -> Result<Pruned, sqlx::Error> {
    Ok(Pruned {
        inbox: delete_older(pool, PRUNE_INBOX, retention.inbox).await?
            + delete_older(pool, PRUNE_INBOX_RUNS, retention.inbox).await?,
        dead_letters: delete_older(pool, PRUNE_DEAD_LETTERS, retention.dead_letters).await?,
        events: delete_older(pool, PRUNE_EVENTS, retention.events).await?,
    })
}

/// Runs `sql` (a batch delete of rows older than $1 seconds, at most $2 rows) until a batch
/// deletes fewer than [`BATCH_ROWS`]; the rows deleted in all.
async fn delete_older(pool: &PgPool, sql: &'static str, older_than: Duration) -> Result<u64, sqlx::Error> {
    let mut deleted = 0;
    loop {
        let batch = sqlx::query(sql).bind(older_than.as_secs_f64()).bind(BATCH_ROWS).execute(pool).await?.rows_affected();
        deleted += batch;
        if batch < BATCH_ROWS as u64 {
            return Ok(deleted);
        }
    }
}

/// Prunes every `every` until `stop`, starting right away. A failure is logged and the next round
/// tries again.
pub async fn run(pool: PgPool, retention: Retention, every: Duration, stop: CancellationToken) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        // A prune in progress is dropped at shutdown: each batch is its own transaction, so what
        // was deleted stays deleted and the rest waits for the next start.
        let result = tokio::select! {
            _ = stop.cancelled() => return,
            result = prune(&pool, &retention) => result,
        };
        match result {
            Ok(pruned) if pruned.total() > 0 => {
                tracing::info!(
                    inbox = pruned.inbox,
                    dead_letters = pruned.dead_letters,
                    events = pruned.events,
                    "pruned rows past their retention"
                );
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "pruning the inbox, dead letters and events failed; trying again later"),
        }
    }
}
