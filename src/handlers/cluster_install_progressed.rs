//! `cluster-install-progressed`: appends each progress report. A report that contradicts itself
//! (stage `installed` below 100%, or `preparing` above 0%) is rejected.
//!
//! A report whose stage differs from the cluster's previous report records an event: the
//! install failing (`cluster_install_failed`, critical), completing
//! (`cluster_install_completed`), or any other new stage (`cluster_install_stage_progressed`).
//! "Previous" is the last report stored before the batch, then each report of the batch in turn.
//!
//! Written set-based: one read of the clusters' last stages and one
//! `INSERT ... SELECT FROM UNNEST ... WITH ORDINALITY` per batch, ordered, so the row ids keep the
//! reports' order.

use std::collections::HashMap;

use sqlx::types::Json;
use uuid::Uuid;

use crate::events::catalog::{ClusterInstallCompleted, ClusterInstallFailed, ClusterInstallStageProgressed};

use crate::router::{BatchError, Context, Handler, HandlerError};
use crate::store::Tx;
use crate::topics::cluster_install_progressed::ClusterInstallProgressedStage as Stage;
use crate::topics::ClusterInstallProgressed;

pub(crate) struct RecordProgress;

/// The events a report causes, given its cluster's stage before it.
fn emit_events(report: &ClusterInstallProgressed, previous_stage: Option<&str>, ctx: &Context) {
    let stage = report.stage.to_string();
    if previous_stage == Some(stage.as_str()) {
        return;
    }
    let (cluster_id, progress, host_count) = (report.cluster_id, report.progress, report.hosts.len() as i64);
    match report.stage {
        Stage::Failed => ctx.emit(ClusterInstallFailed {
            cluster_id,
            previous_stage: previous_stage.unwrap_or("none").to_owned(),
            progress,
            host_count,
        }),
        Stage::Installed => ctx.emit(ClusterInstallCompleted { cluster_id, host_count }),
        _ => ctx.emit(ClusterInstallStageProgressed { cluster_id, stage, progress }),
    }
}

/// The stage of each cluster's last stored report.
async fn last_stages(clusters: Vec<Uuid>, tx: &mut Tx) -> Result<HashMap<Uuid, String>, sqlx::Error> {
    let rows: Vec<(Uuid, String)> = sqlx::query_as(
        "SELECT DISTINCT ON (cluster_id) cluster_id, stage
           FROM cluster_install_progress WHERE cluster_id = ANY($1) ORDER BY cluster_id, id DESC",
    )
    .bind(clusters)
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows.into_iter().collect())
}

fn contradiction(report: &ClusterInstallProgressed) -> Option<HandlerError> {
    let consistent = match report.stage {
        Stage::Installed => report.progress == 100,
        Stage::Preparing => report.progress == 0,
        _ => true,
    };
    (!consistent).then(|| {
        HandlerError::rejected(
            "stage_progress_mismatch",
            format!("stage `{}` cannot have progress {}%", report.stage, report.progress),
        )
    })
}

impl Handler<ClusterInstallProgressed> for RecordProgress {
    const REASONS: &'static [&'static str] = &["stage_progress_mismatch"];

    async fn handle(&self, report: ClusterInstallProgressed, ctx: &Context, tx: &mut Tx) -> Result<(), HandlerError> {
        self.handle_batch(vec![(report, ctx)], tx).await.map_err(|e| e.error)
    }

    async fn handle_batch<'a>(
        &'a self,
        reports: Vec<(ClusterInstallProgressed, &'a Context)>,
        tx: &'a mut Tx,
    ) -> Result<(), BatchError> {
        // The reports before the first contradiction are written; the error names it.
        let refused = reports.iter().enumerate().find_map(|(i, (r, _))| contradiction(r).map(|e| BatchError::at(i, e)));
        let writable = &reports[..refused.as_ref().map_or(reports.len(), |e| e.index)];
        if writable.is_empty() {
            return refused.map_or(Ok(()), Err);
        }
        let mut stages = last_stages(writable.iter().map(|(r, _)| r.cluster_id).collect(), tx).await?;
        for (report, ctx) in writable {
            emit_events(report, stages.get(&report.cluster_id).map(String::as_str), ctx);
            stages.insert(report.cluster_id, report.stage.to_string());
        }
        sqlx::query(
            "INSERT INTO cluster_install_progress (cluster_id, stage, progress, hosts, org_id, request_id)
             SELECT cluster_id, stage, progress, hosts, org_id, request_id
             FROM UNNEST($1::uuid[], $2::text[], $3::int2[], $4::jsonb[], $5::text[], $6::text[])
                  WITH ORDINALITY AS r(cluster_id, stage, progress, hosts, org_id, request_id, n)
             ORDER BY n",
        )
        .bind(writable.iter().map(|(r, _)| r.cluster_id).collect::<Vec<_>>())
        .bind(writable.iter().map(|(r, _)| r.stage.to_string()).collect::<Vec<_>>())
        .bind(writable.iter().map(|(r, _)| r.progress as i16).collect::<Vec<_>>())
        .bind(writable.iter().map(|(r, _)| Json(&r.hosts)).collect::<Vec<_>>())
        .bind(writable.iter().map(|(_, ctx)| ctx.org_id()).collect::<Vec<_>>())
        .bind(writable.iter().map(|(_, ctx)| ctx.request_id.as_str()).collect::<Vec<_>>())
        .execute(&mut **tx)
        .await?;
        refused.map_or(Ok(()), Err)
    }
}
