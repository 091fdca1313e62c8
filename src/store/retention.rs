//! Pruning: the inbox (`processed_messages`) and `dead_letters` would otherwise grow without bound.
//!
//! An inbox row is only needed while a redelivery of its offset is possible: after a crash or a
//! rebalance, Kafka redelivers from the last committed offset, which is always a message still
//! in the topic. So a row older than the topic's retention can never match again and may go.
//! `INBOX_RETENTION_HOURS` must therefore stay above the consumed topics' retention (the default,
//! 14 days, is twice Kafka's default 7 days); a shorter one could let a redelivered message be
//! handled twice. A dead letter's row is what `replay --from table` chooses from; it also keeps a
//! redelivered rejected message from being dead-lettered twice, and marks a replay so that
//! replaying again has no effect. So `DEAD_LETTER_RETENTION_HOURS` (default 30 days) must stay
//! above the retention of the consumed topics and of the dead-letter topic.
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

/// Rows deleted by one [`prune`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    pub inbox: u64,
    pub dead_letters: u64,
}

impl Pruned {
    pub fn total(&self) -> u64 {
        self.inbox + self.dead_letters
    }
}

// The table and column names are constants here, never input.
const PRUNE_INBOX: &str = "DELETE FROM processed_messages WHERE ctid = ANY(ARRAY(
        SELECT ctid FROM processed_messages
        WHERE processed_at < now() - make_interval(secs => $1)
        LIMIT $2))";
const PRUNE_DEAD_LETTERS: &str = "DELETE FROM dead_letters WHERE ctid = ANY(ARRAY(
        SELECT ctid FROM dead_letters
        WHERE dead_lettered_at < now() - make_interval(secs => $1)
        LIMIT $2))";

/// Deletes inbox rows older than `inbox` and dead letters older than `dead_letters`.
pub async fn prune(pool: &PgPool, inbox: Duration, dead_letters: Duration) -> Result<Pruned, sqlx::Error> {
    Ok(Pruned {
        inbox: delete_older(pool, PRUNE_INBOX, inbox).await?,
        dead_letters: delete_older(pool, PRUNE_DEAD_LETTERS, dead_letters).await?,
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
pub async fn run(pool: PgPool, inbox: Duration, dead_letters: Duration, every: Duration, stop: CancellationToken) {
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
            result = prune(&pool, inbox, dead_letters) => result,
        };
        match result {
            Ok(pruned) if pruned.total() > 0 => {
                tracing::info!(inbox = pruned.inbox, dead_letters = pruned.dead_letters, "pruned rows past their retention");
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "pruning the inbox and dead letters failed; trying again later"),
        }
    }
}
