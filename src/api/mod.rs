//! The events API: what people and scripts read, on its own address (`API_ADDR`).
//!
//! Separate from `/metrics` and the probes because it is public: it answers tenants, so every
//! request carries an `x-rh-identity` checked with the same rules as on Kafka ([`tenant`]), and
//! every query is bound to the caller's org before any filter applies. A request is answered from
//! a pool of its own, so that readers can never take the message pipeline's connections.
//!
//! - `GET /api/event-router/v1/events`: a page of events with the totals for the same filters
//!   in headers ([`events`]).
//! - `GET /api/event-router/v1/events/feed`: new events as Server-Sent Events ([`feed`]).
//! - `GET /api/event-router/v1/state`: the caller's clusters and hosts as they are now
//!   ([`state`]), the document `events wait` filters.
//! - `GET /api/event-router/v1/openapi.json`: `api/openapi.json`, the contract tests hold the
//!   answers to.
//!
//! Bad input is the client's problem and said so: 400 naming the parameter, 401/403 naming what
//! is wrong with the identity (never echoing it); nothing a client sends answers 500.

pub mod client;
mod error;
mod events;
pub mod feed;
pub mod query;
mod state;
pub mod tenant;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

pub use error::ApiError;
pub use events::{severity_count_header, EVENT_COUNT};
pub use feed::FeedSlots;
pub use query::{EventFilter, Order, MAX_LIMIT};

use crate::store::StoreError;

/// Where the API lives under its address.
pub const BASE_PATH: &str = "/api/event-router/v1";

/// The OpenAPI 3.1 document of the API, as kept in the repository.
pub const OPENAPI: &str = include_str!("../../api/openapi.json");

/// `application_name` of the API's database sessions.
pub const APPLICATION_NAME: &str = "event-router-api";

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    /// The API's own pool.
    pub pool: PgPool,
    /// The identity header's schema, compiled once (the same one the consumer uses).
    pub identity_schema: Arc<jsonschema::Validator>,
    /// The feeds open on this instance.
    pub feeds: FeedSlots,
}

/// The API's routes, each behind the request time limit.
pub fn routes(state: ApiState, request_timeout: Duration) -> Router {
    let answers = Router::new()
        .route(&format!("{BASE_PATH}/events"), get(events::list))
        .route(&format!("{BASE_PATH}/state"), get(state::state))
        .route(&format!("{BASE_PATH}/openapi.json"), get(openapi))
        .fallback(|| async { ApiError::not_found() })
        .layer(middleware::from_fn_with_state(request_timeout, time_limit));
    // The feed streams for as long as the client stays: no time limit (see `feed`).
    let streams = Router::new().route(&format!("{BASE_PATH}/events/feed"), get(feed::feed));
    answers.merge(streams).with_state(state).layer(middleware::from_fn(tenant::request_context))
}

/// Answers 503, in the API's error shape, to a request that takes longer than `limit`.
async fn time_limit(State(limit): State<Duration>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::timed_out().into_response(),
    }
}

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
}

/// The API's pool (made lazily): a few connections of its own, each query bounded in time, so that readers
/// wait for one another rather than for the pipeline, and a slow query ends.
pub fn pool(url: &str, max_connections: u32) -> Result<PgPool, StoreError> {
    let connect_error = |source| StoreError::Connect { url: crate::config::redact_url(url), source };
    let options = url.parse::<PgConnectOptions>().map_err(connect_error)?;
    let options = options.application_name(APPLICATION_NAME).options([("statement_timeout", "5s")]);
    Ok(PgPoolOptions::new().max_connections(max_connections).acquire_timeout(Duration::from_secs(5)).connect_lazy_with(options))
}
