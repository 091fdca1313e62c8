//! Redelivery leaves the database unchanged: the inbox turns a second delivery into a no-op.

use std::time::Duration;

use event_router::producer::{IdentityHeader, Outgoing};
use testkit::{eventually, spawn_app};

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consuming_everything_again_creates_no_duplicate_rows() {
    let app = spawn_app().await;
    let identity = || IdentityHeader::Document(samples::user_identity("7"));
    let per_topic = 10u64;
    for n in 0..per_topic {
        for key in ["todo-created", "host-status-changed", "cluster-install-progressed"] {
            let payload = testkit::sample(key, n);
            app.send(key, &Outgoing { key: Some(format!("k{n}")), ..Outgoing::json(&payload, identity()) }).await;
        }
    }
    let total = (per_topic * 3) as i64;
    eventually(WAIT, "first delivery handled", || async { app.db.inbox_entries().await == total }).await;
    let before =
        (app.db.count("todos").await, app.db.count("host_statuses").await, app.db.count("cluster_install_progress").await);
    assert_eq!(before, (10, 10, 10));
    app.read_routed(total as usize, WAIT).await;

    // A second consumer group reads every message again from the beginning: a full redelivery.
    let again = app.spawn_sibling("event-router-redelivery").await;
    eventually(WAIT, "redelivered messages processed as duplicates", || async {
        let mut duplicates = 0.0;
        for key in ["todo-created", "host-status-changed", "cluster-install-progressed"] {
            duplicates += again
                .metric("event_router_messages_processed_total", &[("topic", &app.topic(key)), ("outcome", "duplicate")])
                .await;
        }
        duplicates == total as f64
    })
    .await;
    let after =
        (app.db.count("todos").await, app.db.count("host_statuses").await, app.db.count("cluster_install_progress").await);
    assert_eq!(after, before, "no row was added by the redelivery");
    assert_eq!(app.db.inbox_entries().await, total);
    assert_eq!(
        again
            .metric("event_router_dead_letters_total", &[("topic", &app.topic("todo-created")), ("reason", "todo_id_taken")])
            .await,
        0.0,
        "a redelivered todo is recognised, not mistaken for a new todo with a taken id"
    );
    // The events were written once, with the effects; the redelivery adds none.
    let stream = testkit::drain_topic(app.broker.bootstrap_servers(), &app.topic("events-stream"), Duration::from_secs(3)).await;
    let of_kind = |kind: &str| stream.iter().filter(|m| testkit::stream_kind(m).as_deref() == Some(kind)).count();
    assert_eq!(of_kind("message"), total as usize);
    assert!(of_kind("event") > 0, "the hosts and clusters caused catalog events");
    assert_eq!(of_kind("event") as i64, app.db.count("events").await, "each catalog event once");
    again.stop().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreated_topic_reusing_offsets_is_handled_not_mistaken_for_redelivery() {
    let first = spawn_app().await;
    let identity = || IdentityHeader::Document(samples::user_identity("7"));
    for id in [1, 2] {
        first
            .send("todo-created", &Outgoing { key: Some("same-key".into()), ..Outgoing::json(&testkit::todo(id), identity()) })
            .await;
    }
    eventually(WAIT, "first broker's todos stored", || async { first.db.count("todos").await == 2 }).await;
    let db = first.db.clone();
    first.stop().await;

    // A new, empty broker: the same topics, offsets start at 0 again, same database.
    let config = testkit::test_config("127.0.0.1:1", &db.url, "probe", &[]);
    let second = testkit::TestApp::spawn(testkit::start_broker(&config), db.clone(), "event-router-test", &[]).await;
    for id in [3, 4] {
        second
            .send("todo-created", &Outgoing { key: Some("same-key".into()), ..Outgoing::json(&testkit::todo(id), identity()) })
            .await;
    }
    eventually(WAIT, "second broker's todos stored", || async { db.count("todos").await == 4 }).await;
    let ids: Vec<i32> = sqlx::query_scalar("SELECT id FROM todos ORDER BY id").fetch_all(&db.pool).await.unwrap();
    assert_eq!(ids, [1, 2, 3, 4]);
    assert_eq!(db.inbox_entries().await, 4, "each reused offset is recorded again, in a newer run");
    assert_eq!(db.distinct_inbox_offsets().await, 2);

    // A real redelivery on the new broker is still recognised.
    let again = second.spawn_sibling("event-router-redelivery").await;
    eventually(WAIT, "redelivery seen as duplicates", || async {
        again
            .metric(
                "event_router_messages_processed_total",
                &[("topic", &second.topic("todo-created")), ("outcome", "duplicate")],
            )
            .await
            == 2.0
    })
    .await;
    assert_eq!(db.count("todos").await, 4);
    again.stop().await;
    second.stop().await;
}

/// During a rebalance two instances can write the same partition's messages at once. Each
/// transaction takes the partition's advisory lock before it reads the inbox: the second writer
/// waits for the first transaction, then reads what it committed, and finds its message a
/// redelivery: the message is handled once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_owners_of_a_partition_record_a_message_once() {
    use event_router::store::{record_all_in_inbox, InboxEntry, InboxKey};
    let db = testkit::TestDb::create().await;
    let key = InboxKey {
        topic: "platform.event-router.todo-created".into(),
        partition: 3,
        offset: 41,
        fingerprint: [7; 32],
        legacy_fingerprint: [8; 32],
    };
    // Another partition's writer does not wait.
    let elsewhere = InboxKey { partition: 4, ..key.clone() };

    let mut first = db.pool.begin().await.unwrap();
    assert_eq!(record_all_in_inbox(&mut first, std::slice::from_ref(&key)).await.unwrap(), [InboxEntry::New]);
    let second = tokio::spawn({
        let pool = db.pool.clone();
        let key = key.clone();
        async move {
            let mut tx = pool.begin().await.unwrap();
            let entries = record_all_in_inbox(&mut tx, std::slice::from_ref(&key)).await.unwrap();
            tx.commit().await.unwrap();
            entries
        }
    });
    let mut other = db.pool.begin().await.unwrap();
    let entries = tokio::time::timeout(WAIT, record_all_in_inbox(&mut other, std::slice::from_ref(&elsewhere))).await;
    assert_eq!(entries.expect("another partition's writer does not wait").unwrap(), [InboxEntry::New]);
    other.commit().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!second.is_finished(), "the second writer waits for the first transaction");
    first.commit().await.unwrap();
    assert_eq!(second.await.unwrap(), [InboxEntry::Redelivery], "the second writer finds the first's entry");
    assert_eq!(db.inbox_entries().await, 2);
    db.drop_database().await;
}

/// A batch's messages are decided against each other as well as the inbox: a key repeated in
/// the batch (two replays of one dead letter) is a redelivery the second time, a reused offset
/// is recorded again and wins over the older entry, and a partition's messages further apart
/// than a run may span make two runs, each found again by a later read.
#[tokio::test]
async fn a_batch_is_decided_in_order_and_split_into_runs_of_bounded_span() {
    use event_router::store::{record_all_in_inbox, InboxEntry, InboxKey, MAX_RUN_SPAN};
    let db = testkit::TestDb::create().await;
    let key = |offset: i64, fingerprint: u8| InboxKey {
        topic: "t".into(),
        partition: 0,
        offset,
        fingerprint: [fingerprint; 32],
        legacy_fingerprint: [fingerprint.wrapping_add(100); 32],
    };
    let record = |keys: Vec<InboxKey>| {
        let pool = db.pool.clone();
        async move {
            let mut tx = pool.begin().await.unwrap();
            let entries = record_all_in_inbox(&mut tx, &keys).await.unwrap();
            tx.commit().await.unwrap();
            entries
        }
    };
    let far = 5 + MAX_RUN_SPAN;
    let first = record(vec![key(5, 1), key(6, 1), key(5, 1), key(8, 1), key(far, 1)]).await;
    assert_eq!(first, [InboxEntry::New, InboxEntry::New, InboxEntry::Redelivery, InboxEntry::New, InboxEntry::New]);
    let spans: Vec<(i64, i64)> =
        sqlx::query_as("SELECT first_offset, last_offset FROM inbox_runs ORDER BY id").fetch_all(&db.pool).await.unwrap();
    assert_eq!(spans, [(5, 8), (far, far)], "two runs: the far offset is past the first run's span");

    // Offset 6 again with another record: reused, recorded in a newer run that ends before the
    // older one does. Then the newer entry is the one that counts, whatever order the read
    // returns the runs in.
    assert_eq!(record(vec![key(6, 2)]).await, [InboxEntry::OffsetReused]);
    let second = record(vec![key(far, 1), key(7, 1), key(6, 2), key(5, 1), key(8, 1)]).await;
    assert_eq!(
        second,
        [InboxEntry::Redelivery, InboxEntry::New, InboxEntry::Redelivery, InboxEntry::Redelivery, InboxEntry::Redelivery]
    );
    assert_eq!(record(vec![key(6, 1)]).await, [InboxEntry::OffsetReused]);
    // A key as an earlier release fingerprinted it matches.
    let legacy = InboxKey { fingerprint: [0; 32], legacy_fingerprint: [1; 32], ..key(6, 0) };
    assert_eq!(record(vec![legacy]).await, [InboxEntry::Redelivery]);
    // Rows an earlier release wrote, a row per message: one with a fingerprint, one from before
    // fingerprints (empty). Each is known, and a newer run of its offset wins over it.
    sqlx::query(
        "INSERT INTO processed_messages (topic, kafka_partition, kafka_offset, fingerprint, request_id)
         VALUES ('t', 0, 20, $1, 'r'), ('t', 0, 21, ''::bytea, 'r')",
    )
    .bind(&[3u8; 32][..])
    .execute(&db.pool)
    .await
    .unwrap();
    assert_eq!(record(vec![key(20, 3), key(21, 3)]).await, [InboxEntry::Redelivery, InboxEntry::OffsetReused]);
    assert_eq!(record(vec![key(20, 4)]).await, [InboxEntry::OffsetReused]);
    assert_eq!(record(vec![key(20, 4), key(21, 3)]).await, [InboxEntry::Redelivery; 2], "the runs win");
    // Offsets at the ends of their range (a replay header names any it likes) neither overflow
    // the span nor the read's bound.
    let ends = vec![key(i64::MIN, 1), key(0, 1), key(i64::MAX, 1)];
    assert_eq!(record(ends.clone()).await, [InboxEntry::New; 3]);
    assert_eq!(record(ends).await, [InboxEntry::Redelivery; 3]);
    db.drop_database().await;
}

/// Inbox rows written by releases whose fingerprint left the headers out are still recognised:
/// a redelivery across the upgrade is a duplicate, not a second handling. And a recreated topic
/// whose new record differs from the old one only in its headers (another identity) is a new
/// record, not a redelivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fingerprints_count_headers_and_rows_of_older_releases_still_match() {
    let app = spawn_app().await;
    let identity = || IdentityHeader::Document(samples::user_identity("7"));
    app.send("todo-created", &Outgoing { key: Some("k".into()), ..Outgoing::json(&testkit::todo(1), identity()) }).await;
    eventually(WAIT, "handled", || async { app.db.count("todos").await == 1 }).await;
    // Replace the entry with the row an older release stored: a row per message, in
    // `processed_messages`, its fingerprint without the headers in the digest.
    let sent = app.read_topic(&app.topic("todo-created"), 1, WAIT).await.remove(0);
    let legacy = sent.fingerprints().legacy;
    assert_ne!(legacy, sent.fingerprints().current);
    sqlx::query("DELETE FROM inbox_runs").execute(&app.db.pool).await.unwrap();
    sqlx::query(
        "INSERT INTO processed_messages (topic, kafka_partition, kafka_offset, fingerprint, request_id)
         VALUES ($1, $2, $3, $4, 'an older release')",
    )
    .bind(&*sent.topic)
    .bind(sent.partition)
    .bind(sent.offset)
    .bind(&legacy[..])
    .execute(&app.db.pool)
    .await
    .unwrap();

    let again = app.spawn_sibling("event-router-redelivery").await;
    eventually(WAIT, "the redelivery is a duplicate", || async {
        again
            .metric("event_router_messages_processed_total", &[("topic", &app.topic("todo-created")), ("outcome", "duplicate")])
            .await
            == 1.0
    })
    .await;
    assert_eq!(app.db.count("todos").await, 1);
    again.stop().await;
    let db = app.db.clone();
    app.stop().await;

    // An entry as this release stores it (a legacy row cannot tell records apart by headers),
    // then a new, empty broker (offsets start at 0 again) and a record with the same key, value
    // and timestamp as the first, but another identity header.
    let current = sent.fingerprints().current;
    sqlx::query("DELETE FROM processed_messages").execute(&db.pool).await.unwrap();
    sqlx::query(
        "INSERT INTO inbox_runs (topic, kafka_partition, first_offset, last_offset, offsets, fingerprints)
         VALUES ($1, $2, $3, $3, int8send($3), $4)",
    )
    .bind(&*sent.topic)
    .bind(sent.partition)
    .bind(sent.offset)
    .bind(&current[..])
    .execute(&db.pool)
    .await
    .unwrap();
    let config = testkit::test_config("127.0.0.1:1", &db.url, "probe", &[]);
    let second = testkit::TestApp::spawn(testkit::start_broker(&config), db.clone(), "event-router-test", &[]).await;
    let producer = second.producer();
    let mut record = producer.build(
        "todo-created",
        &Outgoing {
            key: Some("k".into()),
            request_id: Some("other-identity".into()),
            ..Outgoing::json(&testkit::todo(1), IdentityHeader::Document(samples::user_identity("8")))
        },
    );
    record.timestamp_ms = sent.timestamp_ms;
    record.payload = sent.payload.clone();
    let publisher = event_router::kafka::Publisher::new(&second.config.kafka).unwrap();
    publisher
        .publish_at(
            &record.topic,
            record.key.as_deref(),
            record.payload.as_deref().unwrap(),
            &event_router::message::header_refs(&record.headers),
            record.timestamp_ms,
        )
        .await
        .unwrap();
    eventually(WAIT, "the new record was handled, not skipped as a redelivery", || async {
        second
            .metric("event_router_dead_letters_total", &[("topic", &second.topic("todo-created")), ("reason", "todo_id_taken")])
            .await
            == 1.0
    })
    .await;
    second.stop().await;
}

/// The inbox read stays an index range scan per partition and table once the tables have
/// statistics (autovacuum's `ANALYZE`), in the generic plan a prepared statement switches to as
/// in a custom one. A plain join was planned as a hash join over the whole inbox there, a cost
/// that grew with the table; a fresh table (every other test, the benchmark) never showed it.
#[tokio::test]
async fn the_inbox_read_scans_only_the_batch_ranges_of_an_analyzed_inbox() {
    use event_router::store::{INBOX_RANGES, MAX_RUN_SPAN};
    let db = testkit::TestDb::create().await;
    // An earlier release's rows for offsets 0 to 15,000 of partitions 0 to 3, then runs of ten
    // offsets each up to 30,000.
    sqlx::query(
        "INSERT INTO processed_messages (topic, kafka_partition, kafka_offset, fingerprint, request_id, org_id)
         SELECT 't', p, o, sha256(o::text::bytea), 'r', 'o' FROM generate_series(0, 3) AS p, generate_series(0, 15000) AS o",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO inbox_runs (topic, kafka_partition, first_offset, last_offset, offsets, fingerprints)
         SELECT 't', p, f, f + 9,
                (SELECT string_agg(int8send(o), '' ORDER BY o) FROM generate_series(f, f + 9) AS o),
                (SELECT string_agg(sha256(o::text::bytea), '' ORDER BY o) FROM generate_series(f, f + 9) AS o)
         FROM generate_series(0, 3) AS p, generate_series(15001, 29991, 10) AS f",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query("ANALYZE processed_messages").execute(&db.pool).await.unwrap();
    sqlx::query("ANALYZE inbox_runs").execute(&db.pool).await.unwrap();
    let mut session = db.pool.acquire().await.unwrap();
    sqlx::query(&format!("PREPARE inbox_ranges AS {INBOX_RANGES}")).execute(&mut *session).await.unwrap();
    for mode in ["force_generic_plan", "force_custom_plan"] {
        sqlx::query(&format!("SET plan_cache_mode = {mode}")).execute(&mut *session).await.unwrap();
        let plan: Vec<String> = sqlx::query_scalar(&format!(
            "EXPLAIN EXECUTE inbox_ranges('{{t,t}}', '{{0,1}}', '{{14995,30001}}', '{{15014,30050}}', '{{{},{}}}')",
            15014 + MAX_RUN_SPAN - 1,
            30050 + MAX_RUN_SPAN - 1
        ))
        .fetch_all(&mut *session)
        .await
        .unwrap();
        let plan = plan.join("\n");
        assert!(!plan.contains("Seq Scan") && !plan.contains("Hash"), "{mode}:\n{plan}");
        assert!(plan.contains("Index Scan using processed_messages_pkey"), "{mode}:\n{plan}");
        assert!(plan.contains("Index Scan using inbox_runs_range"), "{mode}:\n{plan}");
    }
    let rows: Vec<(i64, i64, Vec<u8>, Vec<u8>)> = sqlx::query_as(INBOX_RANGES)
        .bind(["t", "t"])
        .bind([0, 1])
        .bind([14995i64, 30001])
        .bind([15014i64, 30050])
        .bind([15014 + MAX_RUN_SPAN - 1, 30050 + MAX_RUN_SPAN - 1])
        .fetch_all(&mut *session)
        .await
        .unwrap();
    let mut found: Vec<(i64, i64, usize)> = rows
        .iter()
        .map(|(range, _, offsets, _)| (*range, i64::from_be_bytes(offsets[..8].try_into().unwrap()), offsets.len() / 8))
        .collect();
    found.sort();
    let mut expected: Vec<(i64, i64, usize)> = (14995..=15000).map(|o| (1, o, 1)).collect();
    expected.extend([(1, 15001, 10), (1, 15011, 10)]);
    assert_eq!(found, expected, "partition 0's old rows and runs in its range; none past partition 1's last offset");
    drop(session);
    db.drop_database().await;
}
