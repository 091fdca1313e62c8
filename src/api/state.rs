//! `GET /state`: where the caller's clusters and hosts are now, as the events tell it.
//!
//! The document `events wait` filters: objects keyed by id, so that a path such as
//! `hosts.<host id>.status` names one value.
//!
//! ```json
//! {"clusters": {"<id>": {"stage": "installing", "progress": 40}},
//!  "hosts": {"<id>": {"status": "known", "status_info": "...", "cluster_id": "...",
//!                     "infra_env_id": "...", "host_name": "...", "failing_validations": ["ntp-synced"],
//!                     "updated_at": "..."}}}
//! ```
//!
//! It reads the handlers' own tables (the latest host status, the latest progress report per
//! cluster), bound to the caller's org, and at most [`MAX_ENTITIES`] of each.

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};
use sqlx::types::Json as JsonColumn;
use uuid::Uuid;

use super::tenant::Tenant;
use super::{ApiError, ApiState};

/// Hosts, and clusters, in one state document at most.
pub(super) const MAX_ENTITIES: i64 = 10_000;

type HostRow = (Uuid, Uuid, String, String, JsonColumn<Vec<Value>>, DateTime<Utc>, Option<Uuid>, Option<String>);

pub(super) async fn state(State(state): State<ApiState>, tenant: Tenant) -> Result<Json<Value>, ApiError> {
    let unavailable = |error: sqlx::Error| ApiError::unavailable(&error);
    let hosts: Vec<HostRow> = sqlx::query_as(
        "SELECT host_id, cluster_id, status, status_info, validations, updated_at, infra_env_id, host_name
           FROM host_statuses WHERE org_id = $1 ORDER BY host_id LIMIT $2",
    )
    .bind(&tenant.org_id)
    .bind(MAX_ENTITIES)
    .fetch_all(&state.pool)
    .await
    .map_err(unavailable)?;
    let clusters: Vec<(Uuid, String, i16)> = sqlx::query_as(
        "SELECT DISTINCT ON (cluster_id) cluster_id, stage, progress
           FROM cluster_install_progress WHERE org_id = $1 ORDER BY cluster_id, id DESC LIMIT $2",
    )
    .bind(&tenant.org_id)
    .bind(MAX_ENTITIES)
    .fetch_all(&state.pool)
    .await
    .map_err(unavailable)?;

    let hosts: Map<String, Value> = hosts
        .into_iter()
        .map(|(host_id, cluster_id, status, status_info, JsonColumn(validations), updated_at, infra_env_id, host_name)| {
            let failing: Vec<&Value> = validations
                .iter()
                .filter(|v| matches!(v["status"].as_str(), Some("failure" | "error")))
                .map(|v| &v["id"])
                .collect();
            let host = json!({
                "status": status, "status_info": status_info, "cluster_id": cluster_id, "infra_env_id": infra_env_id,
                "host_name": host_name, "failing_validations": failing, "updated_at": updated_at,
            });
            (host_id.to_string(), host)
        })
        .collect();
    let clusters: Map<String, Value> = clusters
        .into_iter()
        .map(|(cluster_id, stage, progress)| (cluster_id.to_string(), json!({"stage": stage, "progress": progress})))
        .collect();
    Ok(Json(json!({"clusters": clusters, "hosts": hosts})))
}
