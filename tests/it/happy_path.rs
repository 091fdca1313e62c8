//! Every sample topic lands in its table and, enriched, in the stream.

use std::time::Duration;

use event_router::envelope::{IDENTITY_HEADER, REQUEST_ID_HEADER};
use event_router::producer::Outgoing;
use serde_json::Value;
use testkit::{header, spawn_app, TestApp};

const WAIT: Duration = Duration::from_secs(20);

fn outgoing(payload: &Value, key: &str, request_id: &str) -> Outgoing {
    testkit::user_message("org-42", payload, key, request_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_sample_topic_lands_in_its_table_and_in_the_stream() {
    lands_in_its_table_and_in_the_stream(spawn_app().await).await;
}

/// Every topic of the registry, whatever it is, gets its examples through: the schema accepts
/// them, the registered handler stores them (in the tables its migration made), and each comes
/// out on the stream under the topic's name. Nothing here names a topic, so a new schema with
/// `examples`, its handler, its registration line and its migration are covered as they are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_topic_in_the_registry_gets_its_examples_through() {
    let app = spawn_app().await;
    let mut sent = Vec::new();
    for topic in event_router::topics::REGISTRY {
        // Each example as written, and each once more with its identifiers varied.
        for n in 0..2 * topic.examples.len() as u64 {
            let key = format!("{}-{n}", topic.key);
            app.send(topic.key, &outgoing(&testkit::sample(topic.key, n), &key, &format!("req-{key}"))).await;
            sent.push((topic, key));
        }
    }
    let stream = app.read_routed(sent.len(), WAIT).await;
    for (topic, key) in &sent {
        let event = stream.iter().find(|m| m.key.as_deref() == Some(key.as_bytes()));
        let event: Value = serde_json::from_slice(event.and_then(|m| m.payload.as_deref()).unwrap_or_default())
            .unwrap_or_else(|e| panic!("{}: no stream event for {key}: {e}", topic.key));
        assert_eq!(event["name"], topic.name, "{key}");
    }
    for topic in event_router::topics::REGISTRY {
        let handled = app
            .metric("event_router_messages_processed_total", &[("topic", &app.topic(topic.key)), ("outcome", "handled")])
            .await;
        assert_eq!(handled, 2.0 * topic.examples.len() as f64, "{}: every example handled", topic.key);
        // scripts/check-new-topic.sh looks for its added topic in this line.
        println!("handled and streamed: {} ({handled} samples)", topic.key);
    }
    app.stop().await;
}

/// The happy path on any broker (see also `tansu.rs`).
pub async fn lands_in_its_table_and_in_the_stream(app: TestApp) {
    let todo = testkit::todo(7);
    let host = testkit::sample("host-status-changed", 3);
    let progress = testkit::sample("cluster-install-progressed", 5);
    let sent = [
        ("todo-created", todo.clone(), "todo-7", "req-todo"),
        ("host-status-changed", host.clone(), "host-3", "req-host"),
        ("cluster-install-progressed", progress.clone(), "cluster-5", "req-cluster"),
    ];
    let mut deliveries = Vec::new();
    for (topic, payload, key, request_id) in &sent {
        deliveries.push(app.send(topic, &outgoing(payload, key, request_id)).await);
    }

    let stream = app.read_routed(3, WAIT).await;
    for ((topic_key, payload, key, request_id), delivery) in sent.iter().zip(&deliveries) {
        let event_message = stream
            .iter()
            .find(|m| m.key.as_deref() == Some(key.as_bytes()))
            .unwrap_or_else(|| panic!("no stream event keyed {key}"));
        let event: Value = serde_json::from_slice(event_message.payload.as_deref().unwrap()).unwrap();
        let schema = event_router::topics::TopicSchema::find(topic_key).unwrap();
        assert_eq!(event["name"], schema.name);
        assert_eq!(&event["payload"], payload, "the payload is re-published unchanged");
        let metadata = &event["metadata"];
        assert_eq!(metadata["source"]["topic"], app.topic(topic_key));
        assert_eq!(metadata["source"]["partition"], delivery.delivery.partition);
        assert_eq!(metadata["source"]["offset"], delivery.delivery.offset);
        assert_eq!(metadata["source"]["key"], *key);
        assert_eq!(metadata["org_id"], "org-42");
        assert_eq!(metadata["request_id"], *request_id);
        assert_eq!(metadata["schema"], schema.file);
        assert_eq!(metadata["versions"]["event-router"], env!("CARGO_PKG_VERSION"));
        assert_eq!(metadata["versions"]["schema"], schema.digest);
        assert!(chrono::DateTime::parse_from_rfc3339(metadata["received_at"].as_str().unwrap()).is_ok());
        assert_eq!(header(event_message, REQUEST_ID_HEADER).as_deref(), Some(*request_id));
        let identity = header(event_message, IDENTITY_HEADER).expect("identity propagated");
        assert_eq!(identity, event_router::envelope::identity::encode_identity(&samples::user_identity("org-42")));
    }

    let (id, title, org, request): (i32, String, Option<String>, String) =
        sqlx::query_as("SELECT id, title, org_id, request_id FROM todos").fetch_one(&app.db.pool).await.unwrap();
    assert_eq!(
        (id, title.as_str(), org.as_deref(), request.as_str()),
        (7, "Water the office plants", Some("org-42"), "req-todo")
    );

    let (status, validations): (String, Value) =
        sqlx::query_as("SELECT status, validations FROM host_statuses WHERE host_id = $1::uuid")
            .bind(host["host_id"].as_str().unwrap())
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
    assert_eq!(status, host["status"].as_str().unwrap());
    assert_eq!(validations, host["validations"]);

    let (stage, pct, hosts): (String, i16, Value) =
        sqlx::query_as("SELECT stage, progress, hosts FROM cluster_install_progress WHERE cluster_id = $1::uuid")
            .bind(progress["cluster_id"].as_str().unwrap())
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
    assert_eq!((stage.as_str(), pct as i64), ("installing", progress["progress"].as_i64().unwrap()));
    assert_eq!(hosts, progress["hosts"]);
    assert_eq!(app.db.inbox_entries().await, 3);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_is_kept_within_a_partition() {
    let app = spawn_app().await;
    // Same key → same partition. Host status updates for one host, newest last.
    let mut host = testkit::sample("host-status-changed", 1);
    let statuses = ["discovering", "known", "installing", "installed"];
    for (i, status) in statuses.iter().enumerate() {
        host["status"] = (*status).into();
        host["updated_at"] = format!("2026-11-23T10:00:0{i}Z").into();
        app.send("host-status-changed", &outgoing(&host, "host-1", &format!("r{i}"))).await;
    }
    let stream = app.read_routed(4, WAIT).await;
    let offsets: Vec<i64> = stream
        .iter()
        .map(|m| {
            let event: Value = serde_json::from_slice(m.payload.as_deref().unwrap()).unwrap();
            event["metadata"]["source"]["offset"].as_i64().unwrap()
        })
        .collect();
    let mut sorted = offsets.clone();
    sorted.sort();
    assert_eq!(offsets, sorted, "stream events of one key come out in source order");
    let status: String = sqlx::query_scalar("SELECT status FROM host_statuses").fetch_one(&app.db.pool).await.unwrap();
    assert_eq!(status, "installed");
    app.stop().await;
}
