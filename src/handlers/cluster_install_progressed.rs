//! `cluster-install-progressed`: appends each progress report. A report that contradicts itself
//! (stage `installed` below 100%, or `preparing` above 0%) is rejected.
//!
//! Written set-based: one `INSERT ... SELECT FROM UNNEST ... WITH ORDINALITY` per batch, ordered,
//! so the row ids keep the reports' order.

use sqlx::types::Json;

use crate::router::{BatchError, Context, Handler, HandlerError};
use crate::store::Tx;
use crate::topics::cluster_install_progressed::ClusterInstallProgressedStage as Stage;
use crate::topics::ClusterInstallProgressed;

pub(crate) struct RecordProgress;

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
