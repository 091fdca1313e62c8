//! `host-status-changed`: keeps the latest status of each host. Events can arrive late (another
//! partition, a replay); an event older than the stored status is recorded as handled but does
//! not overwrite it.

use crate::router::{Context, Handler, HandlerError};
use crate::store::Tx;
use crate::topics::HostStatusChanged;

pub struct TrackHostStatus;

impl Handler<HostStatusChanged> for TrackHostStatus {
    async fn handle(&self, event: HostStatusChanged, ctx: &Context, tx: &mut Tx) -> Result<(), HandlerError> {
        let validations = serde_json::to_value(&event.validations).map_err(|e| HandlerError::Transient(e.into()))?;
        sqlx::query(
            "INSERT INTO host_statuses (host_id, cluster_id, status, status_info, validations, updated_at, org_id, request_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (host_id) DO UPDATE SET
                 cluster_id = EXCLUDED.cluster_id, status = EXCLUDED.status, status_info = EXCLUDED.status_info,
                 validations = EXCLUDED.validations, updated_at = EXCLUDED.updated_at,
                 org_id = EXCLUDED.org_id, request_id = EXCLUDED.request_id
             WHERE host_statuses.updated_at <= EXCLUDED.updated_at",
        )
        .bind(event.host_id)
        .bind(event.cluster_id)
        .bind(event.status.to_string())
        .bind(event.status_info.as_str())
        .bind(validations)
        .bind(event.updated_at)
        .bind(ctx.org_id())
        .bind(&ctx.request_id)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }
}
