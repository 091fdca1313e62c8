//! A handler decides whether its failure is worth retrying. A retryable one is tried again with
//! backoff while its partition waits; when the attempts run out the message is dead-lettered with
//! the attempt count. Messages behind it then flow on.

use std::time::Duration;

use event_router::dead_letter;
use event_router::handlers::router;
use event_router::producer::{IdentityHeader, Outgoing};
use event_router::router::{Context, Handler, HandlerError};
use event_router::store::Tx;
use event_router::topics::TodoCreated;
use testkit::{eventually, header, spawn_app_with_router, TestApp};

const WAIT: Duration = Duration::from_secs(30);

/// Stores a todo only once its org is registered in `known_orgs`: an ordering dependency on
/// something that may arrive later, which is what retryable handler errors are for.
pub struct TodoForKnownOrg;

impl Handler<TodoCreated> for TodoForKnownOrg {
    const REASONS: &'static [&'static str] = &["org_not_registered"];

    async fn handle(&self, todo: TodoCreated, ctx: &Context, tx: &mut Tx) -> Result<(), HandlerError> {
        let known: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM known_orgs WHERE org_id = $1)")
            .bind(ctx.org_id())
            .fetch_one(&mut **tx)
            .await?;
        if !known {
            return Err(HandlerError::retryable("org_not_registered", format!("org {:?} is not registered yet", ctx.org_id())));
        }
        testkit::insert_todo(&todo, ctx, tx).await
    }
}

/// The service with [`TodoForKnownOrg`] for `todo-created` and an empty `known_orgs` table.
pub async fn app_waiting_for_orgs(extra: &[(&str, &str)]) -> TestApp {
    let mut routes = router();
    routes.register::<TodoCreated>(TodoForKnownOrg);
    let app = spawn_app_with_router(extra, routes).await;
    sqlx::query("CREATE TABLE known_orgs (org_id TEXT PRIMARY KEY)").execute(&app.db.pool).await.unwrap();
    app
}

pub fn todo(id: u32, org: &str) -> Outgoing {
    Outgoing {
        key: Some("one-partition".into()),
        ..Outgoing::json(&testkit::todo(id), IdentityHeader::Document(samples::user_identity(org)))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retryable_failures_are_retried_then_dead_lettered_with_their_attempt_count() {
    let app = app_waiting_for_orgs(&[("HANDLER_MAX_ATTEMPTS", "4"), ("RETRY_MAX_BACKOFF_MS", "300")]).await;
    let todo_topic = app.topic("todo-created");

    // An org that is registered while the handler is retrying: the todo goes through.
    app.send("todo-created", &todo(1, "late")).await;
    eventually(WAIT, "the handler retried", || async {
        app.metric("event_router_retries_total", &[("step", "handler")]).await >= 1.0
    })
    .await;
    sqlx::query("INSERT INTO known_orgs VALUES ('late')").execute(&app.db.pool).await.unwrap();
    eventually(WAIT, "todo 1 stored after the org arrived", || async { app.db.count("todos").await == 1 }).await;

    // An org that never arrives: dead-lettered after 4 attempts; the todo behind it flows on.
    sqlx::query("INSERT INTO known_orgs VALUES ('known')").execute(&app.db.pool).await.unwrap();
    app.send("todo-created", &todo(2, "never")).await;
    app.send("todo-created", &todo(3, "known")).await;
    let dead = app.read_topic(&app.topic("dlq"), 1, WAIT).await;
    assert_eq!(header(&dead[0], dead_letter::REASON).as_deref(), Some("org_not_registered"));
    assert_eq!(header(&dead[0], dead_letter::ERROR_CLASS).as_deref(), Some("handler_retries_exhausted"));
    assert_eq!(header(&dead[0], dead_letter::ATTEMPTS).as_deref(), Some("4"));
    eventually(WAIT, "todo 3 stored behind the dead letter", || async { app.db.count("todos").await == 2 }).await;

    let (reason, class, attempts, org): (String, String, i32, Option<String>) =
        sqlx::query_as("SELECT reason, error_class, attempts, org_id FROM dead_letters").fetch_one(&app.db.pool).await.unwrap();
    assert_eq!(
        (reason.as_str(), class.as_str(), attempts, org.as_deref()),
        ("org_not_registered", "handler_retries_exhausted", 4, Some("never"))
    );
    assert_eq!(
        app.metric("event_router_dead_letters_total", &[("topic", &todo_topic), ("reason", "org_not_registered")]).await,
        1.0
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_one_partition_retries_the_others_go_on() {
    let app = app_waiting_for_orgs(&[("HANDLER_MAX_ATTEMPTS", "1000"), ("RETRY_MAX_BACKOFF_MS", "200")]).await;
    let waiting = app.send("todo-created", &todo(1, "late")).await;
    eventually(WAIT, "the handler retried", || async {
        app.metric("event_router_retries_total", &[("step", "handler")]).await >= 1.0
    })
    .await;
    // Meanwhile another partition goes on: a host status on another topic is stored.
    let other = Outgoing {
        key: Some("elsewhere".into()),
        ..Outgoing::json(&testkit::sample("host-status-changed", 1), IdentityHeader::Document(samples::user_identity("other")))
    };
    let elsewhere = app.send("host-status-changed", &other).await;
    assert_ne!(elsewhere.topic, waiting.topic);
    eventually(WAIT, "another partition is handled while one waits", || async { app.db.count("host_statuses").await == 1 }).await;
    assert_eq!(app.db.count("todos").await, 0, "the waiting todo is still waiting");
    sqlx::query("INSERT INTO known_orgs VALUES ('late')").execute(&app.db.pool).await.unwrap();
    eventually(WAIT, "the waiting todo stored once its org arrived", || async { app.db.count("todos").await == 1 }).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retrying_partition_with_a_full_buffer_does_not_hold_up_the_others() {
    // Buffers of two: the messages behind the retrying todo fill its partition's buffer at once.
    let app =
        app_waiting_for_orgs(&[("HANDLER_MAX_ATTEMPTS", "1000"), ("RETRY_MAX_BACKOFF_MS", "200"), ("BATCH_MAX_MESSAGES", "2")])
            .await;
    hold_up_one_partition(&app, (2..=20).map(|id| todo(id, "known"))).await;
    let_the_partition_go(&app, 20).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retrying_partition_holds_only_its_share_of_the_byte_budget() {
    // The smallest budget, 1 MiB. Each todo behind the retrying one is charged about 17 KiB (a
    // 4,000-character description, plus three times its value for opening it), so the 80 of
    // them are more than the whole budget: were the partition not held to its share (an
    // eighth), it would spend the budget and every partition would pause behind it.
    let app = app_waiting_for_orgs(&[
        ("HANDLER_MAX_ATTEMPTS", "1000"),
        ("RETRY_MAX_BACKOFF_MS", "200"),
        ("MAX_BUFFERED_BYTES", "1048576"),
    ])
    .await;
    let large_todos = (2..=81).map(|id| {
        let mut large = testkit::todo(id);
        large["description"] = "d".repeat(4000).into();
        Outgoing {
            key: Some("one-partition".into()),
            ..Outgoing::json(&large, IdentityHeader::Document(samples::user_identity("known")))
        }
    });
    hold_up_one_partition(&app, large_todos).await;
    assert_eq!(
        app.metric("event_router_memory_budget_exhausted_total", &[]).await,
        0.0,
        "the waiting partition held its share, not the budget"
    );
    let_the_partition_go(&app, 81).await;
    app.stop().await;
}

/// Todo 1 waits for its org (its handler retrying) while the todos `behind` it queue up on its
/// partition, then twenty host statuses are sent on another topic. Returns once they are all
/// handled, with the todo partition still waiting.
async fn hold_up_one_partition(app: &TestApp, behind: impl Iterator<Item = Outgoing>) {
    sqlx::query("INSERT INTO known_orgs VALUES ('known')").execute(&app.db.pool).await.unwrap();
    app.send("todo-created", &todo(1, "late")).await;
    eventually(WAIT, "the handler retried", || async {
        app.metric("event_router_retries_total", &[("step", "handler")]).await >= 1.0
    })
    .await;
    for message in behind {
        app.send("todo-created", &message).await;
    }
    for n in 0..20 {
        let status = Outgoing {
            key: Some(format!("host-{n}")),
            ..Outgoing::json(
                &testkit::sample("host-status-changed", n),
                IdentityHeader::Document(samples::user_identity("other")),
            )
        };
        app.send("host-status-changed", &status).await;
    }
    eventually(WAIT, "the other partitions handled while one waits", || async { app.db.count("host_statuses").await == 20 })
        .await;
    assert_eq!(app.db.count("todos").await, 0, "the todo partition still waits behind todo 1");
}

/// Registers todo 1's org: the `todos` held up behind it (ids 1 to `todos`) follow, in order,
/// none lost.
async fn let_the_partition_go(app: &TestApp, todos: i64) {
    sqlx::query("INSERT INTO known_orgs VALUES ('late')").execute(&app.db.pool).await.unwrap();
    eventually(WAIT, "every todo stored", || async { app.db.count("todos").await == todos }).await;
    let todo_ids: Vec<i64> = app
        .read_routed(todos as usize + 20, WAIT)
        .await
        .iter()
        .map(|m| serde_json::from_slice::<serde_json::Value>(m.payload.as_deref().unwrap()).unwrap())
        .filter(|event| event["name"] == "TodoCreated")
        .map(|event| event["payload"]["id"].as_i64().unwrap())
        .collect();
    assert_eq!(todo_ids, (1..=todos).collect::<Vec<i64>>(), "the todos were handled in their order");
}
