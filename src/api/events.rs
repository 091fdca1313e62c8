//! `GET /events`: one page of the caller's events, and the totals for the same filters.
//!
//! The SQL is built from the filters present only, each value bound, so that every query the
//! planner sees can use the `(org_id, <entity>, event_time)` indexes; the org comes first in all
//! of them, so a count reads one org's rows, never the table.

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::types::Json as JsonColumn;
use sqlx::{Postgres, QueryBuilder};
use uuid::Uuid;

use super::query::{EventFilter, Order};
use super::tenant::Tenant;
use super::{ApiError, ApiState};
use crate::events::Severity;

/// An event as the API shows it.
#[derive(Debug, Serialize, sqlx::FromRow)]
pub(super) struct EventRow {
    pub(super) id: i64,
    name: String,
    severity: String,
    message: String,
    event_time: DateTime<Utc>,
    cluster_id: Option<Uuid>,
    host_id: Option<Uuid>,
    infra_env_id: Option<Uuid>,
    properties: JsonColumn<serde_json::Value>,
    count: i32,
    first_seen: DateTime<Utc>,
    last_seen: DateTime<Utc>,
    request_id: String,
}

/// The total of events matching all filters.
pub const EVENT_COUNT: &str = "event-count";

/// The header with the count of one severity (every filter but `severities`).
pub fn severity_count_header(severity: Severity) -> &'static str {
    match severity {
        Severity::Info => "severity-count-info",
        Severity::Warning => "severity-count-warning",
        Severity::Error => "severity-count-error",
        Severity::Critical => "severity-count-critical",
    }
}

pub(super) const COLUMNS: &str =
    "id, name, severity, message, event_time, cluster_id, host_id, infra_env_id, properties, count, first_seen, last_seen, request_id";

/// `WHERE` for `org_id` and `filter`; the severities only when `with_severities`.
pub(super) fn push_filters<'a>(
    sql: &mut QueryBuilder<'a, Postgres>,
    org_id: &'a str,
    filter: &'a EventFilter,
    with_severities: bool,
) {
    sql.push(" WHERE org_id = ").push_bind(org_id);
    let ids = [("cluster_id", filter.cluster_id), ("host_id", filter.host_id), ("infra_env_id", filter.infra_env_id)];
    for (column, id) in ids {
        if let Some(id) = id {
            sql.push(format_args!(" AND {column} = ")).push_bind(id);
        }
    }
    if let Some(name) = filter.name {
        sql.push(" AND name = ").push_bind(name);
    }
    if let (true, Some(severities)) = (with_severities, &filter.severities) {
        sql.push(" AND severity = ANY(").push_bind(severities.iter().map(|s| s.as_str()).collect::<Vec<_>>()).push(")");
    }
    if let Some(text) = &filter.message {
        // The text is a substring, not a pattern: LIKE's own characters are escaped.
        let escaped = text.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
        sql.push(" AND message ILIKE ").push_bind(format!("%{escaped}%")).push(" ESCAPE '\\'");
    }
    if let Some(since) = filter.since {
        sql.push(" AND event_time >= ").push_bind(since);
    }
    if let Some(until) = filter.until {
        sql.push(" AND event_time < ").push_bind(until);
    }
}

/// The page `filter` asks for.
async fn page(state: &ApiState, org_id: &str, filter: &EventFilter) -> Result<Vec<EventRow>, sqlx::Error> {
    let mut sql = QueryBuilder::new(format!("SELECT {COLUMNS} FROM events"));
    push_filters(&mut sql, org_id, filter, true);
    sql.push(match filter.order {
        Order::Desc => " ORDER BY event_time DESC, id DESC",
        Order::Asc => " ORDER BY event_time ASC, id ASC",
    });
    sql.push(" LIMIT ").push_bind(i64::from(filter.limit)).push(" OFFSET ").push_bind(filter.offset as i64);
    sql.build_query_as().fetch_all(&state.pool).await
}

/// Events per severity for every filter but the severities.
async fn severity_counts(state: &ApiState, org_id: &str, filter: &EventFilter) -> Result<Vec<(String, i64)>, sqlx::Error> {
    let mut sql = QueryBuilder::new("SELECT severity, count(*) FROM events");
    push_filters(&mut sql, org_id, filter, false);
    sql.push(" GROUP BY severity");
    sql.build_query_as().fetch_all(&state.pool).await
}

pub(super) async fn list(State(state): State<ApiState>, tenant: Tenant, RawQuery(query): RawQuery) -> Result<Response, ApiError> {
    let filter = EventFilter::parse(query.as_deref().unwrap_or_default())?;
    let (rows, counts) =
        tokio::try_join!(page(&state, &tenant.org_id, &filter), severity_counts(&state, &tenant.org_id, &filter))
            .map_err(|error| ApiError::unavailable(&error))?;
    let mut headers = HeaderMap::new();
    let mut total = 0;
    for severity in Severity::ALL {
        let count = counts.iter().find(|(s, _)| s == severity.as_str()).map_or(0, |(_, n)| *n);
        if filter.severities.as_ref().is_none_or(|wanted| wanted.contains(&severity)) {
            total += count;
        }
        headers.insert(HeaderName::from_static(severity_count_header(severity)), HeaderValue::from(count));
    }
    headers.insert(HeaderName::from_static(EVENT_COUNT), HeaderValue::from(total));
    Ok((headers, Json(rows)).into_response())
}
