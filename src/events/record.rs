//! Writing emitted events, with the deduplication window, in the handler's transaction.
//!
//! The same event (same org, name, entity ids and message) seen again within the window is
//! folded into the row that holds it: `count` goes up and `last_seen` moves. Several instances
//! and partitions write at once, so "is there a row to fold into?" and "insert one" must not
//! interleave between two transactions: each transaction first takes a transaction-scoped
//! advisory lock per distinct event (in key order, so two transactions cannot wait on each other
//! in a circle), then folds what it can and inserts the rest. A second transaction emitting the
//! same event waits at the lock until the first commits, then sees its row and folds into it.
//! Three statements per transaction, whatever the number of events.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use sqlx::types::Json;

use super::stream::Cause;
use super::Emitted;
use crate::store::Tx;

/// An emitted event with when it happened and the message that caused it.
pub(crate) struct Pending<'a> {
    pub(crate) event: &'a Emitted,
    pub(crate) time: DateTime<Utc>,
    pub(crate) cause: Cause<'a>,
}

/// What became of each pending event, in the order given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Recorded {
    /// A new row with this id: the event goes to the stream.
    New(i64),
    /// Counted into an earlier occurrence within the window.
    Folded,
}

/// The identity of an event for deduplication.
fn dedup_key(event: &Emitted, org_id: Option<&str>) -> [u8; 16] {
    let mut hash = Sha256::new();
    for part in [org_id.unwrap_or_default(), event.name, event.message.as_str()] {
        hash.update(part.as_bytes());
        hash.update([0]);
    }
    for id in [event.entity.cluster_id, event.entity.host_id, event.entity.infra_env_id] {
        hash.update(id.map(|id| *id.as_bytes()).unwrap_or_default());
    }
    let digest = hash.finalize();
    let mut key = [0; 16];
    key.copy_from_slice(&digest[..16]);
    key
}

/// Occurrences of one event within a transaction that fold together.
struct Group {
    key: [u8; 16],
    /// Index of the first occurrence: the row is made of it.
    first: usize,
    count: i32,
    first_seen: DateTime<Utc>,
    last_seen: DateTime<Utc>,
    /// Whether an earlier group of the same key came first in this transaction: then there is
    /// no older row to fold into.
    follows_own_group: bool,
}

/// Writes `events` in `tx`: folds those seen within `window` (zero: none) and inserts the rest.
pub(crate) async fn record(tx: &mut Tx, events: &[Pending<'_>], window: Duration) -> Result<Vec<Recorded>, sqlx::Error> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let window_chrono = chrono::Duration::from_std(window).unwrap_or(chrono::Duration::MAX);
    let mut outcome = vec![Recorded::Folded; events.len()];
    let mut groups: Vec<Group> = Vec::new();
    for (index, pending) in events.iter().enumerate() {
        let key = dedup_key(pending.event, pending.cause.org_id);
        let open = (!window.is_zero())
            .then(|| {
                groups
                    .iter_mut()
                    .rev()
                    .find(|g| g.key == key)
                    .filter(|g| pending.time >= g.first_seen - window_chrono && pending.time <= g.last_seen + window_chrono)
            })
            .flatten();
        match open {
            Some(group) => {
                group.count += 1;
                group.first_seen = group.first_seen.min(pending.time);
                group.last_seen = group.last_seen.max(pending.time);
            }
            None => {
                let follows_own_group = groups.iter().any(|g| g.key == key);
                groups.push(Group {
                    key,
                    first: index,
                    count: 1,
                    first_seen: pending.time,
                    last_seen: pending.time,
                    follows_own_group,
                });
            }
        }
    }

    let mut folded_keys: Vec<[u8; 16]> = Vec::new();
    if !window.is_zero() {
        let mut lock_keys: Vec<i64> = groups.iter().map(|g| lock_id(&g.key)).collect();
        lock_keys.sort_unstable();
        lock_keys.dedup();
        sqlx::query("SELECT pg_advisory_xact_lock(k) FROM UNNEST($1::int8[]) WITH ORDINALITY AS l(k, n) ORDER BY n")
            .bind(&lock_keys)
            .execute(&mut **tx)
            .await?;
        let candidates: Vec<&Group> = groups.iter().filter(|g| !g.follows_own_group).collect();
        // The newest row of each key is found through the dedup index first, then updated by
        // primary key. Comparing `e.id` with a subquery over `u` instead made PostgreSQL hash
        // the whole table on every transaction (25 ms at 20,000 rows, growing with the table;
        // this form: 4.7 ms, flat).
        folded_keys = sqlx::query_scalar(
            "WITH newest AS (
                SELECT x.id, u.dedup_key, u.count, u.first_seen, u.last_seen
                  FROM UNNEST($1::bytea[], $2::int4[], $3::timestamptz[], $4::timestamptz[]) AS u(dedup_key, count, first_seen, last_seen)
                 CROSS JOIN LATERAL (SELECT x.id, x.first_seen, x.last_seen FROM events AS x
                                      WHERE x.dedup_key = u.dedup_key ORDER BY x.id DESC LIMIT 1) AS x
                 WHERE x.last_seen >= u.first_seen - $5::float8 * interval '1 second'
                   AND x.first_seen <= u.last_seen + $5::float8 * interval '1 second')
             UPDATE events AS e
                SET count = e.count + n.count,
                    first_seen = LEAST(e.first_seen, n.first_seen), last_seen = GREATEST(e.last_seen, n.last_seen)
               FROM newest AS n
              WHERE e.id = n.id
          RETURNING n.dedup_key",
        )
        .bind(candidates.iter().map(|g| g.key.to_vec()).collect::<Vec<_>>())
        .bind(candidates.iter().map(|g| g.count).collect::<Vec<_>>())
        .bind(candidates.iter().map(|g| g.first_seen).collect::<Vec<_>>())
        .bind(candidates.iter().map(|g| g.last_seen).collect::<Vec<_>>())
        .bind(window.as_secs_f64())
        .fetch_all(&mut **tx)
        .await?
        .into_iter()
        .map(|key: Vec<u8>| key.try_into().unwrap_or_default())
        .collect();
    }

    let inserted: Vec<&Group> = groups.iter().filter(|g| g.follows_own_group || !folded_keys.contains(&g.key)).collect();
    if inserted.is_empty() {
        return Ok(outcome);
    }
    let row = |g: &&Group| &events[g.first];
    let ids: Vec<i64> = sqlx::query_scalar(
        "INSERT INTO events (name, severity, message, event_time, cluster_id, host_id, infra_env_id, properties,
                             org_id, request_id, source_topic, source_partition, source_offset,
                             count, first_seen, last_seen, dedup_key)
         SELECT name, severity, message, event_time, cluster_id, host_id, infra_env_id, properties,
                org_id, request_id, source_topic, source_partition, source_offset,
                count, first_seen, last_seen, dedup_key
           FROM UNNEST($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::uuid[], $6::uuid[], $7::uuid[],
                       $8::jsonb[], $9::text[], $10::text[], $11::text[], $12::int4[], $13::int8[], $14::int4[],
                       $15::timestamptz[], $16::timestamptz[], $17::bytea[])
                WITH ORDINALITY AS r(name, severity, message, event_time, cluster_id, host_id, infra_env_id, properties,
                                     org_id, request_id, source_topic, source_partition, source_offset,
                                     count, first_seen, last_seen, dedup_key, n)
          ORDER BY n
         RETURNING id",
    )
    .bind(inserted.iter().map(|g| row(g).event.name).collect::<Vec<_>>())
    .bind(inserted.iter().map(|g| row(g).event.severity.as_str()).collect::<Vec<_>>())
    .bind(inserted.iter().map(|g| row(g).event.message.as_str()).collect::<Vec<_>>())
    .bind(inserted.iter().map(|g| row(g).time).collect::<Vec<_>>())
    .bind(inserted.iter().map(|g| row(g).event.entity.cluster_id).collect::<Vec<_>>())
    .bind(inserted.iter().map(|g| row(g).event.entity.host_id).collect::<Vec<_>>())
    .bind(inserted.iter().map(|g| row(g).event.entity.infra_env_id).collect::<Vec<_>>())
    .bind(inserted.iter().map(|g| Json(&row(g).event.properties)).collect::<Vec<_>>())
    .bind(inserted.iter().map(|g| row(g).cause.org_id).collect::<Vec<_>>())
    .bind(inserted.iter().map(|g| row(g).cause.request_id).collect::<Vec<_>>())
    .bind(inserted.iter().map(|g| row(g).cause.topic).collect::<Vec<_>>())
    .bind(inserted.iter().map(|g| row(g).cause.partition).collect::<Vec<_>>())
    .bind(inserted.iter().map(|g| row(g).cause.offset).collect::<Vec<_>>())
    .bind(inserted.iter().map(|g| g.count).collect::<Vec<_>>())
    .bind(inserted.iter().map(|g| g.first_seen).collect::<Vec<_>>())
    .bind(inserted.iter().map(|g| g.last_seen).collect::<Vec<_>>())
    .bind(inserted.iter().map(|g| g.key.to_vec()).collect::<Vec<_>>())
    .fetch_all(&mut **tx)
    .await?;
    for (group, id) in inserted.iter().zip(ids) {
        outcome[group.first] = Recorded::New(id);
    }
    Ok(outcome)
}

/// The advisory lock that serializes writers of one event: the key's first eight bytes.
fn lock_id(key: &[u8; 16]) -> i64 {
    let mut bytes = [0; 8];
    bytes.copy_from_slice(&key[..8]);
    i64::from_be_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::catalog::HostValidationFailed;
    use uuid::Uuid;

    fn failing(validation_id: &str) -> Emitted {
        Emitted::new(&HostValidationFailed {
            host_id: Uuid::from_u128(1),
            infra_env_id: Uuid::from_u128(2),
            cluster_id: None,
            host_name: "worker-0".into(),
            validation_id: validation_id.into(),
            validation_message: "Waiting for NTP".into(),
        })
    }

    fn pending(event: &Emitted, seconds: i64) -> Pending<'_> {
        let time = DateTime::from_timestamp(1_800_000_000 + seconds, 0).unwrap();
        Pending { event, time, cause: Cause { topic: "t", partition: 0, offset: seconds, org_id: Some("1"), request_id: "r" } }
    }

    async fn record_alone(pool: &sqlx::PgPool, events: &[Pending<'_>], window: Duration) -> Vec<Recorded> {
        let mut tx = pool.begin().await.unwrap();
        let recorded = record(&mut tx, events, window).await.unwrap();
        tx.commit().await.unwrap();
        recorded
    }

    async fn rows(pool: &sqlx::PgPool) -> Vec<(String, i32, DateTime<Utc>, DateTime<Utc>)> {
        sqlx::query_as("SELECT properties->>'validation_id', count, first_seen, last_seen FROM events ORDER BY id")
            .fetch_all(pool)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn the_same_event_within_the_window_is_folded_and_after_it_is_new() {
        let db = testkit::TestDb::create().await;
        let (ntp, disk) = (failing("ntp-synced"), failing("disk-speed"));
        let window = Duration::from_secs(60);
        assert!(matches!(record_alone(&db.pool, &[pending(&ntp, 0)], window).await[..], [Recorded::New(_)]));
        assert_eq!(record_alone(&db.pool, &[pending(&ntp, 30)], window).await, [Recorded::Folded]);
        // Late, but within the window of what was seen: folded too; the span keeps its ends.
        assert_eq!(record_alone(&db.pool, &[pending(&ntp, 10)], window).await, [Recorded::Folded]);
        // Another validation is another event; the same one 61 s after it was last seen is new.
        let recorded = record_alone(&db.pool, &[pending(&disk, 40), pending(&ntp, 91), pending(&ntp, 95)], window).await;
        assert!(matches!(recorded[..], [Recorded::New(_), Recorded::New(_), Recorded::Folded]), "{recorded:?}");
        let t = |s: i64| DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap();
        assert_eq!(
            rows(&db.pool).await,
            [
                ("ntp-synced".into(), 3, t(0), t(30)),
                ("disk-speed".into(), 1, t(40), t(40)),
                ("ntp-synced".into(), 2, t(91), t(95)),
            ]
        );
    }

    #[tokio::test]
    async fn a_zero_window_folds_nothing() {
        let db = testkit::TestDb::create().await;
        let ntp = failing("ntp-synced");
        let recorded = record_alone(&db.pool, &[pending(&ntp, 0), pending(&ntp, 0)], Duration::ZERO).await;
        assert!(matches!(recorded[..], [Recorded::New(a), Recorded::New(b)] if a != b), "{recorded:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_transactions_emitting_the_same_event_at_once_leave_one_row() {
        let db = testkit::TestDb::create().await;
        let ntp = failing("ntp-synced");
        let window = Duration::from_secs(60);
        let mut first = db.pool.begin().await.unwrap();
        assert!(matches!(record(&mut first, &[pending(&ntp, 0)], window).await.unwrap()[..], [Recorded::New(_)]));
        // The second transaction writes the same event before the first has committed.
        let pool = db.pool.clone();
        let second = tokio::spawn(async move {
            let ntp = failing("ntp-synced");
            let mut tx = pool.begin().await.unwrap();
            let recorded = record(&mut tx, &[pending(&ntp, 5)], window).await.unwrap();
            tx.commit().await.unwrap();
            recorded
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!second.is_finished(), "the second writer waits for the first to commit");
        first.commit().await.unwrap();
        assert_eq!(second.await.unwrap(), [Recorded::Folded]);
        let t = |s: i64| DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap();
        assert_eq!(rows(&db.pool).await, [("ntp-synced".into(), 2, t(0), t(5))]);
    }
}
