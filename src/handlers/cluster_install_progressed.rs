//! `cluster-install-progressed`: appends each progress report. A report that contradicts itself
//! (stage `installed` below 100%, or `preparing` above 0%) is rejected.

use crate::router::{Context, Handler, HandlerError};
use crate::store::Tx;
use crate::topics::cluster_install_progressed::ClusterInstallProgressedStage as Stage;
use crate::topics::ClusterInstallProgressed;

pub struct RecordProgress;

impl Handler<ClusterInstallProgressed> for RecordProgress {
    const REASONS: &'static [&'static str] = &["stage_progress_mismatch"];

    async fn handle(&self, report: ClusterInstallProgressed, ctx: &Context, tx: &mut Tx) -> Result<(), HandlerError> {
        let consistent = match report.stage {
            Stage::Installed => report.progress == 100,
            Stage::Preparing => report.progress == 0,
            _ => true,
        };
        if !consistent {
            return Err(HandlerError::rejected(
                "stage_progress_mismatch",
                format!("stage `{}` cannot have progress {}%", report.stage, report.progress),
            ));
        }
        let hosts = serde_json::to_value(&report.hosts).map_err(|e| HandlerError::Transient(e.into()))?;
        sqlx::query(
            "INSERT INTO cluster_install_progress (cluster_id, stage, progress, hosts, org_id, request_id)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(report.cluster_id)
        .bind(report.stage.to_string())
        .bind(report.progress as i16)
        .bind(hosts)
        .bind(ctx.org_id())
        .bind(&ctx.request_id)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }
}
