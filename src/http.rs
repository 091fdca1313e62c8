//! The operational HTTP endpoints: `/metrics`, `/healthz`, `/readyz`.
//!
//! `/healthz` answers as long as the runtime can serve a request (liveness). `/readyz` answers
//! 200 only when the database answers, the consumer task runs and has joined its group, and
//! messages in flight are not stuck (none finishing for `READINESS_STALL_SECONDS`), so a pod that
//! lost its database or wedged stops being reported ready without being restarted.
//!
//! # Probes cannot starve the pipeline
//!
//! `/readyz` does no I/O: it reads the result of [`watch_database`], a background task that runs
//! `SELECT 1` every [`DATABASE_CHECK_INTERVAL`] on a pool of its own with one connection
//! ([`readiness_pool`], `application_name` [`READINESS_APPLICATION_NAME`]). A flood of probes
//! therefore costs no database connection, and never one of the message pipeline's.
//!
//! # Slow or greedy clients
//!
//! The port is open to whatever can reach the pod, so [`serve`] bounds what a client can hold
//! ([`HttpLimits`]): a connection must send a request's headers within `header_read_timeout`
//! (which also closes idle keep-alive connections, and defeats slowloris), a request must be
//! answered within `request_timeout` (503 otherwise), and at most `max_connections` connections
//! are served at once (more wait in the listen backlog). At shutdown, requests in flight finish
//! and connections close, within [`SHUTDOWN_GRACE`].

use std::future::Future;
use std::io::ErrorKind;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use serde_json::json;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::redact_url;
use crate::store::StoreError;
use crate::telemetry::Telemetry;

/// How often the readiness task checks the database.
pub const DATABASE_CHECK_INTERVAL: Duration = Duration::from_secs(2);
/// How long one database check may take before it counts as failed.
pub(crate) const DATABASE_CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// A database check older than this counts as failed (the checking task is stuck or gone).
pub(crate) const DATABASE_CHECK_STALE: Duration = Duration::from_secs(10);
/// `application_name` of the readiness check's database session, to tell it from the pipeline's.
pub const READINESS_APPLICATION_NAME: &str = "event-router-readiness";
/// How long shutdown waits for requests in flight before closing their connections anyway.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// What a client may hold of the HTTP server.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// A connection that has not sent a complete request head within this time is closed.
    pub header_read_timeout: Duration,
    /// A request not answered within this time gets 503.
    pub request_timeout: Duration,
    /// Connections served at once; more wait to be accepted.
    pub max_connections: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_connections: 256,
        }
    }
}

/// The latest database check made for `/readyz`: whether it passed, and when.
#[derive(Debug, Default)]
pub struct DatabaseCheck(Mutex<Option<(bool, Instant)>>);

impl DatabaseCheck {
    pub fn record(&self, ok: bool) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some((ok, Instant::now()));
    }

    /// True if the latest check passed and is recent; false before the first check.
    pub fn is_ok(&self) -> bool {
        let latest = *self.0.lock().unwrap_or_else(|e| e.into_inner());
        latest.is_some_and(|(ok, at)| ok && at.elapsed() <= DATABASE_CHECK_STALE)
    }
}

/// What the endpoints look at.
#[derive(Clone)]
pub struct HttpState {
    pub telemetry: Arc<Telemetry>,
    /// The pipeline's pool, for the outbox sampler; the endpoints never use it.
    pub pool: PgPool,
    /// Written by [`watch_database`].
    pub database: Arc<DatabaseCheck>,
    pub consumer_joined: Arc<AtomicBool>,
    /// True while the consumer task runs.
    pub consumer_running: Arc<AtomicBool>,
    /// Messages in flight with none finishing for this long make the service unready.
    pub stall_threshold: Duration,
    pub limits: HttpLimits,
}

pub fn routes(state: HttpState) -> Router {
    let request_timeout = state.limits.request_timeout;
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .with_state(state)
        .layer(middleware::from_fn_with_state(request_timeout, time_limit))
}

/// Answers 503 to a request that takes longer than `limit`.
async fn time_limit(State(limit): State<Duration>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "request timed out\n").into_response(),
    }
}

async fn metrics(State(state): State<HttpState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], state.telemetry.metrics.render())
}

async fn ready(State(state): State<HttpState>) -> impl IntoResponse {
    let database = state.database.is_ok();
    let running = state.consumer_running.load(Ordering::Acquire);
    let joined = state.consumer_joined.load(Ordering::Acquire);
    let stalled_for = state.telemetry.stalled_for();
    let stalled = stalled_for > state.stall_threshold;
    let status = if database && running && joined && !stalled { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (
        status,
        axum::Json(json!({
            "database": database,
            "consumer_running": running,
            "consumer_joined": joined,
            "stalled": stalled,
            "stalled_seconds": stalled_for.as_secs(),
        })),
    )
}

/// The readiness check's own pool: one connection, named [`READINESS_APPLICATION_NAME`].
pub async fn readiness_pool(url: &str) -> Result<PgPool, StoreError> {
    let connect_error = |source| StoreError::Connect { url: redact_url(url), source };
    let options = url.parse::<PgConnectOptions>().map_err(connect_error)?.application_name(READINESS_APPLICATION_NAME);
    PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(DATABASE_CHECK_TIMEOUT)
        .connect_with(options)
        .await
        .map_err(connect_error)
}

/// Checks the database through `pool` every [`DATABASE_CHECK_INTERVAL`] and records the result in
/// `check`, until `stop`; then closes `pool`.
pub async fn watch_database(pool: PgPool, check: Arc<DatabaseCheck>, stop: CancellationToken) {
    let mut every = tokio::time::interval(DATABASE_CHECK_INTERVAL);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let select_one = || async {
        let query = sqlx::query("SELECT 1").execute(&pool);
        tokio::time::timeout(DATABASE_CHECK_TIMEOUT, query).await.is_ok_and(|r| r.is_ok())
    };
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = every.tick() => {}
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            ok = select_one() => check.record(ok),
        }
    }
    pool.close().await;
}

/// Serves `router` on `listener`, within `limits`, until `shutdown` completes; then lets requests
/// in flight finish (for up to [`SHUTDOWN_GRACE`]) and closes every connection. The operational
/// endpoints ([`routes`]) and the events API (`crate::api`) are each served this way.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let service = TowerToHyperService::new(router);
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(_) = connections.join_next() => {}
            (stream, slot) = accept(&listener, &slots) => {
                let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service.clone()));
                connections.spawn(async move {
                    // An error here is the client's (reset, too slow): nothing to do but close.
                    let _ = connection.await;
                    drop(slot);
                });
            }
        }
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown()).await.is_err() {
        tracing::warn!(
            grace_s = SHUTDOWN_GRACE.as_secs(),
            "HTTP requests still in flight at shutdown; closing their connections"
        );
    }
    connections.shutdown().await;
    Ok(())
}

/// The next connection, once fewer than `max_connections` are open.
async fn accept(listener: &TcpListener, slots: &Arc<Semaphore>) -> (TcpStream, OwnedSemaphorePermit) {
    let slot = slots.clone().acquire_owned().await.expect("the semaphore is never closed");
    loop {
        match listener.accept().await {
            Ok((stream, _)) => return (stream, slot),
            // The client gave up before it was accepted.
            Err(error) if matches!(error.kind(), ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset) => {}
            // Out of file descriptors, say: wait for some to be released rather than spin.
            Err(error) => {
                tracing::warn!(%error, "HTTP accept failed; retrying in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt as _;

    #[tokio::test]
    async fn a_request_over_the_time_limit_gets_503() {
        let router = Router::new()
            .route("/slow", get(|| tokio::time::sleep(Duration::from_secs(60))))
            .route("/fast", get(|| async { "ok" }))
            .layer(middleware::from_fn_with_state(Duration::from_millis(100), time_limit));
        let get = |path: &str| Request::get(path).body(axum::body::Body::empty()).unwrap();
        assert_eq!(router.clone().oneshot(get("/fast")).await.unwrap().status(), StatusCode::OK);
        assert_eq!(router.oneshot(get("/slow")).await.unwrap().status(), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn a_database_check_counts_until_it_is_stale() {
        let check = DatabaseCheck::default();
        assert!(!check.is_ok(), "not checked yet");
        check.record(false);
        assert!(!check.is_ok());
        check.record(true);
        assert!(check.is_ok());
        *check.0.lock().unwrap() = Some((true, Instant::now() - DATABASE_CHECK_STALE - Duration::from_secs(1)));
        assert!(!check.is_ok(), "stale");
    }
}
