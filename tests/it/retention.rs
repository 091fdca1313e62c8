//! Retention: inbox rows, dead letters and events older than their retention are pruned, in
//! batches, nothing younger is touched, and no event a writer has yet to deliver.

use std::time::Duration;

use event_router::store::retention::{self, Pruned, Retention, BATCH_ROWS};
use testkit::TestDb;
use tokio_util::sync::CancellationToken;

const HOUR: Duration = Duration::from_secs(3600);
const INBOX_RETENTION: Duration = Duration::from_secs(14 * 24 * 3600);
const DEAD_LETTER_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);
const EVENTS_RETENTION: Duration = Duration::from_secs(90 * 24 * 3600);

fn retention(inbox: Duration) -> Retention {
    Retention { inbox, dead_letters: DEAD_LETTER_RETENTION, events: EVENTS_RETENTION }
}

/// Inbox rows for offsets `offsets` of `topic`, processed `age_hours` ago.
async fn insert_inbox(db: &TestDb, topic: &str, offsets: std::ops::Range<i64>, age_hours: i64) {
    insert_rows(
        db,
        "INSERT INTO processed_messages (topic, kafka_partition, kafka_offset, fingerprint, request_id, org_id, processed_at)
         SELECT $1, 0, o, '\\x01'::bytea, 'req-' || o, '42', now() - make_interval(hours => $4)
         FROM generate_series($2::int8, $3::int8 - 1) AS o",
        topic,
        offsets,
        age_hours,
    )
    .await;
}

/// Inbox runs, one for each offset in `offsets` of `topic`, recorded `age_hours` ago.
async fn insert_runs(db: &TestDb, topic: &str, offsets: std::ops::Range<i64>, age_hours: i64) {
    insert_rows(
        db,
        "INSERT INTO inbox_runs (topic, kafka_partition, first_offset, last_offset, offsets, fingerprints, processed_at)
         SELECT $1, 0, o, o, int8send(o), sha256(int8send(o)), now() - make_interval(hours => $4)
         FROM generate_series($2::int8, $3::int8 - 1) AS o",
        topic,
        offsets,
        age_hours,
    )
    .await;
}

/// Runs `sql` with `topic` as $1, the offsets' range as $2..$3 and the age in hours as $4.
async fn insert_rows(db: &TestDb, sql: &str, topic: &str, offsets: std::ops::Range<i64>, age_hours: i64) {
    sqlx::query(sql)
        .bind(topic)
        .bind(offsets.start)
        .bind(offsets.end)
        .bind(age_hours as i32)
        .execute(&db.pool)
        .await
        .expect("insert rows");
}

/// Dead letters for offsets `offsets` of `topic`, dead-lettered `age_hours` ago.
async fn insert_dead_letters(db: &TestDb, topic: &str, offsets: std::ops::Range<i64>, age_hours: i64) {
    insert_rows(
        db,
        "INSERT INTO dead_letters (topic, kafka_partition, kafka_offset, fingerprint, message_key, payload, stage, reason,
                                   error_class, message, attempts, consumer_group, request_id, org_id, dlq_partition,
                                   dlq_offset, dead_lettered_at)
         SELECT $1, 0, o, '\\x01'::bytea, NULL, '{}'::bytea, 'schema', 'schema_violation', 'permanent', 'bad', 1,
                'event-router', 'req-' || o, '42', 0, o, now() - make_interval(hours => $4)
         FROM generate_series($2::int8, $3::int8 - 1) AS o",
        topic,
        offsets,
        age_hours,
    )
    .await;
}

async fn topics_left(db: &TestDb, table: &str) -> Vec<(String, i64)> {
    sqlx::query_as(&format!("SELECT topic, count(*) FROM {table} GROUP BY topic ORDER BY topic"))
        .fetch_all(&db.pool)
        .await
        .expect("count rows by topic")
}

#[tokio::test]
async fn prune_deletes_exactly_the_rows_past_their_retention() {
    let db = TestDb::create().await;
    // More old inbox rows than one batch deletes, so the loop runs twice, in an earlier release's
    // table and in the runs alike.
    let old_inbox = BATCH_ROWS + 5;
    insert_inbox(&db, "old", 0..old_inbox, 15 * 24).await;
    let old_runs = BATCH_ROWS + 2;
    insert_runs(&db, "old", 0..old_runs, 15 * 24).await;
    insert_runs(&db, "young", 0..3, 13 * 24).await;
    // A run of several messages is one row, deleted whole.
    sqlx::query(
        "INSERT INTO inbox_runs (topic, kafka_partition, first_offset, last_offset, offsets, fingerprints, processed_at)
         SELECT 'old', 1, 0, 2, string_agg(int8send(o), '' ORDER BY o), string_agg(sha256(int8send(o)), '' ORDER BY o),
                now() - interval '15 days'
         FROM generate_series(0, 2) AS o",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    insert_inbox(&db, "just-old", 0..3, 14 * 24 + 1).await;
    insert_inbox(&db, "young", 0..4, 14 * 24 - 1).await;
    insert_inbox(&db, "new", 0..5, 0).await;
    insert_dead_letters(&db, "old", 0..7, 31 * 24).await;
    insert_dead_letters(&db, "young", 0..2, 29 * 24).await;
    // A dead letter younger than its own retention but older than the inbox's stays.
    insert_dead_letters(&db, "new", 0..3, 15 * 24).await;

    let pruned = retention::prune(&db.pool, &retention(INBOX_RETENTION)).await.unwrap();

    assert_eq!(pruned, Pruned { inbox: (old_inbox + 3 + old_runs + 1) as u64, dead_letters: 7, events: 0 });
    assert_eq!(topics_left(&db, "processed_messages").await, [("new".to_string(), 5), ("young".to_string(), 4)]);
    assert_eq!(topics_left(&db, "inbox_runs").await, [("young".to_string(), 3)]);
    assert_eq!(topics_left(&db, "dead_letters").await, [("new".to_string(), 3), ("young".to_string(), 2)]);

    // Nothing more is old enough.
    let again = retention::prune(&db.pool, &retention(INBOX_RETENTION)).await.unwrap();
    assert_eq!(again, Pruned::default());

    // A shorter retention reaches younger rows; each table has its own.
    let pruned = retention::prune(&db.pool, &retention(2 * HOUR)).await.unwrap();
    assert_eq!(pruned, Pruned { inbox: 4 + 3, dead_letters: 0, events: 0 });
    assert_eq!(topics_left(&db, "processed_messages").await, [("new".to_string(), 5)]);
    assert_eq!(topics_left(&db, "inbox_runs").await, []);
    db.drop_database().await;
}

#[tokio::test]
async fn the_retention_task_prunes_until_stopped() {
    let db = TestDb::create().await;
    insert_inbox(&db, "old", 0..3, 15 * 24).await;
    insert_dead_letters(&db, "old", 0..2, 31 * 24).await;
    insert_inbox(&db, "new", 0..1, 0).await;

    let stop = CancellationToken::new();
    let task = tokio::spawn(retention::run(db.pool.clone(), retention(INBOX_RETENTION), Duration::from_millis(50), stop.clone()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while db.inbox_entries().await != 1 || db.count("dead_letters").await != 0 {
        assert!(tokio::time::Instant::now() < deadline, "the retention task did not prune within 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Rows that age past the retention later are pruned by a later round.
    insert_inbox(&db, "later", 0..2, 15 * 24).await;
    while db.inbox_entries().await != 1 {
        assert!(tokio::time::Instant::now() < deadline, "the retention task did not prune again within 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), task).await.expect("the retention task stops").unwrap();
    assert_eq!(db.inbox_entries().await, 1);
    db.drop_database().await;
}

/// `count` events last seen `age_hours` ago, each in a transaction of its own (so each has its
/// own `tx_id`, as events written by different messages do); their ids.
async fn insert_events(db: &TestDb, count: usize, age_hours: i32) -> Vec<i64> {
    let mut ids = Vec::new();
    for _ in 0..count {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO events (name, severity, message, event_time, cluster_id, properties, org_id, request_id,
                                 source_topic, source_partition, source_offset, first_seen, last_seen, dedup_key)
             SELECT 'cluster_install_completed', 'info', 'm', t, gen_random_uuid(), '{}', '42', 'r', 't', 0, 0, t, t,
                    decode(md5(random()::text), 'hex')
               FROM (SELECT now() - make_interval(hours => $1) AS t) AS at
             RETURNING id",
        )
        .bind(age_hours)
        .fetch_one(&db.pool)
        .await
        .unwrap();
        ids.push(id);
    }
    ids
}

#[tokio::test]
async fn old_events_go_but_not_before_every_writer_has_passed_them() {
    let db = TestDb::create().await;
    let old = insert_events(&db, 6, 91 * 24).await;
    let young = insert_events(&db, 2, 89 * 24).await;
    // A writer that has delivered the first four old events, and no further.
    sqlx::query("INSERT INTO writer_progress (writer, tx_id, event_id) SELECT 'hook:slow', tx_id, id FROM events WHERE id = $1")
        .bind(old[3])
        .execute(&db.pool)
        .await
        .unwrap();
    let pruned = retention::prune(&db.pool, &retention(INBOX_RETENTION)).await.unwrap();
    assert_eq!(pruned.events, 4, "the old events the writer has passed");
    let left: Vec<i64> = sqlx::query_scalar("SELECT id FROM events ORDER BY id").fetch_all(&db.pool).await.unwrap();
    assert_eq!(left, [&old[4..], &young[..]].concat());
    // Once the writer has passed everything, the rest of the old events go; the young stay.
    sqlx::query("UPDATE writer_progress SET tx_id = e.tx_id, event_id = e.id FROM events AS e WHERE e.id = $1")
        .bind(young[1])
        .execute(&db.pool)
        .await
        .unwrap();
    assert_eq!(retention::prune(&db.pool, &retention(INBOX_RETENTION)).await.unwrap().events, 2);
    assert_eq!(db.count("events").await, 2);
    db.drop_database().await;
}
