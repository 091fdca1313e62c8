//! The producer's spool against the embedded broker taken down and brought back: nothing the
//! producer acknowledged is lost, nothing arrives twice, and a full spool says so.

use std::time::Duration;

use event_router::producer::spool::SpoolError;
use event_router::producer::{EventProducer, Handed, ProduceError, SpoolSettings};
use testkit::TestApp;

const WAIT: Duration = Duration::from_secs(30);

fn settings(dir: &std::path::Path, max_bytes: u64) -> SpoolSettings {
    SpoolSettings { dir: dir.to_path_buf(), max_bytes, delivery_timeout: Duration::from_secs(1) }
}

fn scratch() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("spool-it-{}", uuid::Uuid::new_v4().simple()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_is_produced_while_the_broker_is_down_is_spooled_and_all_arrives_once_it_is_back() {
    let app = testkit::spawn_app().await;
    let dir = scratch();
    let producer = EventProducer::with_spool(&app.config.kafka, &app.config.topics, &settings(&dir, 64 << 20)).unwrap();
    app.broker.embedded().broker_down(1).unwrap();
    let mut spooled = 0;
    for id in 0..300u32 {
        let outgoing = testkit::user_message("org-spool", &testkit::todo(id), &format!("k{}", id % 7), &format!("s-{id}"));
        match producer.send_or_spool("todo-created", &outgoing).await.unwrap() {
            Handed::Spooled { .. } => spooled += 1,
            Handed::Sent(sent) => panic!("sent while the broker was down: {sent:?}"),
        }
    }
    assert_eq!(spooled, 300);
    let status = producer.spool_status().unwrap().unwrap();
    assert!(status.pending_bytes > 0 && status.oldest_spooled_at_ms.is_some());
    // Still down: re-sending fails and keeps everything.
    assert!(producer.resend_spooled().await.is_err());
    assert_eq!(producer.spool_status().unwrap().unwrap().pending_bytes, status.pending_bytes);

    app.broker.embedded().broker_up(1).unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while producer.spool_status().unwrap().unwrap().pending_bytes > 0 {
        assert!(tokio::time::Instant::now() < deadline, "the spool did not drain");
        let _ = producer.resend_spooled().await;
    }
    assert_eq!(producer.spool_status().unwrap().unwrap().resent_total, 300);
    // Every todo reached the service once, in each key's order.
    testkit::eventually(WAIT, "300 todos stored", || async { app.db.count("todos").await == 300 }).await;
    let records = app.read_topic(&app.topic("todo-created"), 300, WAIT).await;
    let mut ids: Vec<String> = records.iter().filter_map(|m| testkit::header(m, "x-rh-insights-request-id")).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 300, "each once");
    let _ = std::fs::remove_dir_all(dir);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_refuses_with_a_clear_error_and_keeps_what_it_has() {
    let app: TestApp = testkit::spawn_app().await;
    let dir = scratch();
    let producer = EventProducer::with_spool(&app.config.kafka, &app.config.topics, &settings(&dir, 4096)).unwrap();
    app.broker.embedded().broker_down(1).unwrap();
    let mut kept = 0;
    let error = loop {
        let outgoing = testkit::user_message("org-spool", &testkit::todo(kept), "k", &format!("f-{kept}"));
        match producer.send_or_spool("todo-created", &outgoing).await {
            Ok(_) => kept += 1,
            Err(error) => break error,
        }
    };
    assert!(matches!(error, ProduceError::Spool(SpoolError::Full { max: 4096, .. })), "{error}");
    assert!(error.to_string().contains("PRODUCER_SPOOL_MAX_BYTES") && error.to_string().contains("nothing was dropped"));
    // A second producer on the same directory is turned away.
    let second = EventProducer::with_spool(&app.config.kafka, &app.config.topics, &settings(&dir, 4096));
    assert!(second.err().is_some_and(|e| e.to_string().contains("in use by another process")));
    app.broker.embedded().broker_up(1).unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while producer.spool_status().unwrap().unwrap().pending_bytes > 0 {
        assert!(tokio::time::Instant::now() < deadline, "the spool did not drain");
        let _ = producer.resend_spooled().await;
    }
    testkit::eventually(WAIT, "every kept todo stored", || async { app.db.count("todos").await == i64::from(kept) }).await;
    let _ = std::fs::remove_dir_all(dir);
    app.stop().await;
}
