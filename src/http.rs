//! The operational HTTP endpoints: `/metrics`, `/healthz`, `/readyz`.
//!
//! `/healthz` answers as long as the runtime can serve a request (liveness). `/readyz` answers
//! 200 only when the database answers, the consumer has joined its group, and messages in flight
//! are not stuck (none finishing for `READINESS_STALL_SECONDS`), so a pod that lost its database
//! or wedged stops being reported ready without being restarted.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use serde_json::json;
use tokio::net::TcpListener;

use crate::telemetry::Telemetry;

/// What the endpoints look at.
#[derive(Clone)]
pub struct HttpState {
    pub telemetry: Arc<Telemetry>,
    pub pool: sqlx::PgPool,
    pub consumer_joined: Arc<AtomicBool>,
    /// Messages in flight with none finishing for this long make the service unready.
    pub stall_threshold: Duration,
}

pub fn routes(state: HttpState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .with_state(state)
}

async fn metrics(State(state): State<HttpState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], state.telemetry.metrics.render())
}

async fn ready(State(state): State<HttpState>) -> impl IntoResponse {
    let database =
        tokio::time::timeout(Duration::from_secs(2), sqlx::query("SELECT 1").execute(&state.pool)).await.is_ok_and(|r| r.is_ok());
    let consumer = state.consumer_joined.load(Ordering::Acquire);
    let stalled_for = state.telemetry.stalled_for();
    let stalled = stalled_for > state.stall_threshold;
    let status = if database && consumer && !stalled { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (
        status,
        axum::Json(json!({
            "database": database,
            "consumer_joined": consumer,
            "stalled": stalled,
            "stalled_seconds": stalled_for.as_secs(),
        })),
    )
}

/// Serves `routes` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    state: HttpState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, routes(state)).with_graceful_shutdown(shutdown).await
}
