//! The happy path and group scaling against tansu, a second, independent Kafka implementation
//! (tansu 0.6.0, in-memory storage, its own process), so the service does not only work with
//! librdkafka's mock cluster. Crash and fault tests stay on the embedded broker.

use std::sync::Arc;

use testkit::{start_tansu, test_config, TestApp, TestDb};

async fn app_on_tansu() -> TestApp {
    let db = Arc::new(TestDb::create().await);
    let broker = start_tansu(&test_config("127.0.0.1:1", &db.url, "probe", &[])).await;
    TestApp::spawn(broker, db, "event-router-test", &[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn happy_path_on_tansu() {
    crate::happy_path::lands_in_its_table_and_in_the_stream(app_on_tansu().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_scaling_on_tansu() {
    crate::scaling::share_partitions_and_hand_them_over(app_on_tansu().await).await;
}
