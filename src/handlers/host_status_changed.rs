//! `host-status-changed`: keeps the latest status of each host and records what changed as
//! events. Reports can arrive late (another partition, a replay); one older than the stored
//! status is recorded as handled but changes nothing and emits nothing.
//!
//! Events compare a report with what was stored before it, read under a row lock so that two
//! transactions cannot both compare with the same old state:
//! - the host's first report: `host_registered`;
//! - a new status: `host_status_updated`, or `host_failed` when the status is `error`;
//! - a validation that fails (`failure` or `error`) and did not before, including one never
//!   reported: `host_validation_failed`; one that failed and now succeeds: `host_validation_fixed`.
//!
//! A host event needs the host's infra-env. Reports may leave it out (the member is optional); the
//! last one given is kept, and until one is known the host's events are not recorded.
//!
//! Written set-based: one locking read and one upsert per batch. Applied one by one, of several
//! reports for the same host the newest wins (the later one on a tie), so the upsert writes only
//! that one per host; an upsert may not touch a row twice in one statement anyway.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use uuid::Uuid;

use crate::events::catalog::{HostFailed, HostRegistered, HostStatusUpdated, HostValidationFailed, HostValidationFixed};
use crate::router::{BatchError, Context, Handler, HandlerError};
use crate::store::Tx;
use crate::topics::host_status_changed::{HostStatus, ValidationStatus};
use crate::topics::HostStatusChanged;

pub(crate) struct TrackHostStatus;

/// A host as stored before the batch, then as each report of the batch leaves it.
struct Known {
    status: String,
    /// Validation id → whether it was failing.
    failing: HashMap<String, bool>,
    updated_at: DateTime<Utc>,
    infra_env_id: Option<Uuid>,
    host_name: Option<String>,
}

fn failing(status: ValidationStatus) -> bool {
    matches!(status, ValidationStatus::Failure | ValidationStatus::Error)
}

/// The events `report` causes, given what was known of its host before it.
fn emit_events(report: &HostStatusChanged, before: Option<&Known>, infra_env_id: Uuid, host_name: &str, ctx: &Context) {
    let (host_id, cluster_id, host_name) = (report.host_id, Some(report.cluster_id), host_name.to_owned());
    let status = report.status.to_string();
    let previous_status = before.map(|known| known.status.clone());
    if report.status == HostStatus::Error && previous_status.as_deref() != Some("error") {
        ctx.emit(HostFailed {
            host_id,
            infra_env_id,
            cluster_id,
            host_name: host_name.clone(),
            previous_status: previous_status.unwrap_or_else(|| "unregistered".into()),
            status_info: report.status_info.to_string(),
        });
    } else if let Some(previous_status) = previous_status {
        if previous_status != status {
            ctx.emit(HostStatusUpdated {
                host_id,
                infra_env_id,
                cluster_id,
                host_name: host_name.clone(),
                previous_status,
                status,
                status_info: report.status_info.to_string(),
            });
        }
    } else {
        ctx.emit(HostRegistered { host_id, infra_env_id, cluster_id, host_name: host_name.clone(), status });
    }
    for validation in &report.validations {
        let was_failing = before.and_then(|known| known.failing.get(validation.id.as_str())).copied();
        let now_failing = failing(validation.status);
        if now_failing && was_failing != Some(true) {
            ctx.emit(HostValidationFailed {
                host_id,
                infra_env_id,
                cluster_id,
                host_name: host_name.clone(),
                validation_id: validation.id.to_string(),
                validation_message: validation.message.to_string(),
            });
        } else if validation.status == ValidationStatus::Success && was_failing == Some(true) {
            ctx.emit(HostValidationFixed {
                host_id,
                infra_env_id,
                cluster_id,
                host_name: host_name.clone(),
                validation_id: validation.id.to_string(),
            });
        }
    }
}

type StoredHost = (Uuid, String, Json<Vec<serde_json::Value>>, DateTime<Utc>, Option<Uuid>, Option<String>);

/// The stored state of `hosts`, their rows locked until the transaction ends.
async fn known_hosts(hosts: Vec<Uuid>, tx: &mut Tx) -> Result<HashMap<Uuid, Known>, sqlx::Error> {
    let rows: Vec<StoredHost> = sqlx::query_as(
        "SELECT host_id, status, validations, updated_at, infra_env_id, host_name
           FROM host_statuses WHERE host_id = ANY($1) ORDER BY host_id FOR UPDATE",
    )
    .bind(hosts)
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(host_id, status, Json(validations), updated_at, infra_env_id, host_name)| {
            let failing = validations
                .iter()
                .filter_map(|v| {
                    Some((v.get("id")?.as_str()?.to_owned(), matches!(v.get("status")?.as_str()?, "failure" | "error")))
                })
                .collect();
            (host_id, Known { status, failing, updated_at, infra_env_id, host_name })
        })
        .collect())
}

impl Handler<HostStatusChanged> for TrackHostStatus {
    async fn handle(&self, event: HostStatusChanged, ctx: &Context, tx: &mut Tx) -> Result<(), HandlerError> {
        self.handle_batch(vec![(event, ctx)], tx).await.map_err(|e| e.error)
    }

    async fn handle_batch<'a>(
        &'a self,
        reports: Vec<(HostStatusChanged, &'a Context)>,
        tx: &'a mut Tx,
    ) -> Result<(), BatchError> {
        let mut hosts: Vec<Uuid> = reports.iter().map(|(r, _)| r.host_id).collect();
        hosts.sort_unstable();
        hosts.dedup();
        let mut known = known_hosts(hosts, tx).await?;
        // Per host, the newest report applied, in the order hosts first appear.
        let mut latest: Vec<(HostStatusChanged, &Context)> = Vec::with_capacity(reports.len());
        let mut position = HashMap::with_capacity(reports.len());
        for (report, ctx) in reports {
            let before = known.get(&report.host_id);
            if before.is_some_and(|known| report.updated_at < known.updated_at) {
                continue;
            }
            let infra_env_id = report.infra_env_id.or(before.and_then(|k| k.infra_env_id));
            let host_name = report.host_name.as_ref().map(|n| n.to_string()).or(before.and_then(|k| k.host_name.clone()));
            match infra_env_id {
                Some(infra_env_id) => {
                    let shown = host_name.clone().unwrap_or_else(|| report.host_id.to_string());
                    emit_events(&report, before, infra_env_id, &shown, ctx);
                }
                None => {
                    tracing::debug!(host_id = %report.host_id, "no infra-env known for the host yet: its events are not recorded")
                }
            }
            let failing = report.validations.iter().map(|v| (v.id.to_string(), failing(v.status))).collect();
            let now =
                Known { status: report.status.to_string(), failing, updated_at: report.updated_at, infra_env_id, host_name };
            known.insert(report.host_id, now);
            match position.get(&report.host_id) {
                Some(&i) => latest[i] = (report, ctx),
                None => {
                    position.insert(report.host_id, latest.len());
                    latest.push((report, ctx));
                }
            }
        }
        if latest.is_empty() {
            return Ok(());
        }
        let merged = |report: &HostStatusChanged| known.get(&report.host_id);
        sqlx::query(
            "INSERT INTO host_statuses (host_id, cluster_id, status, status_info, validations, updated_at, org_id, request_id,
                                        infra_env_id, host_name)
             SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::jsonb[], $6::timestamptz[], $7::text[],
                                  $8::text[], $9::uuid[], $10::text[])
             ON CONFLICT (host_id) DO UPDATE SET
                 cluster_id = EXCLUDED.cluster_id, status = EXCLUDED.status, status_info = EXCLUDED.status_info,
                 validations = EXCLUDED.validations, updated_at = EXCLUDED.updated_at,
                 org_id = EXCLUDED.org_id, request_id = EXCLUDED.request_id,
                 infra_env_id = EXCLUDED.infra_env_id, host_name = EXCLUDED.host_name
             WHERE host_statuses.updated_at <= EXCLUDED.updated_at",
        )
        .bind(latest.iter().map(|(e, _)| e.host_id).collect::<Vec<_>>())
        .bind(latest.iter().map(|(e, _)| e.cluster_id).collect::<Vec<_>>())
        .bind(latest.iter().map(|(e, _)| e.status.to_string()).collect::<Vec<_>>())
        .bind(latest.iter().map(|(e, _)| e.status_info.as_str()).collect::<Vec<_>>())
        .bind(latest.iter().map(|(e, _)| Json(&e.validations)).collect::<Vec<_>>())
        .bind(latest.iter().map(|(e, _)| e.updated_at).collect::<Vec<_>>())
        .bind(latest.iter().map(|(_, ctx)| ctx.org_id()).collect::<Vec<_>>())
        .bind(latest.iter().map(|(_, ctx)| ctx.request_id.as_str()).collect::<Vec<_>>())
        .bind(latest.iter().map(|(e, _)| merged(e).and_then(|k| k.infra_env_id)).collect::<Vec<_>>())
        .bind(latest.iter().map(|(e, _)| merged(e).and_then(|k| k.host_name.as_deref())).collect::<Vec<_>>())
        .execute(&mut **tx)
        .await?;
        Ok(())
    }
}
