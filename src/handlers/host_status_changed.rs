//! `host-status-changed`: keeps the latest status of each host. Events can arrive late (another
//! partition, a replay); an event older than the stored status is recorded as handled but does
//! not overwrite it.
//!
//! Written set-based: one upsert per batch. Applied one by one, of several events for the same
//! host the newest wins (the later one on a tie), so the batch keeps only that one per host; an
//! upsert may not touch a row twice in one statement anyway.

use std::collections::HashMap;

use sqlx::types::Json;

use crate::router::{BatchError, Context, Handler, HandlerError};
use crate::store::Tx;
use crate::topics::HostStatusChanged;

pub(crate) struct TrackHostStatus;

impl Handler<HostStatusChanged> for TrackHostStatus {
    async fn handle(&self, event: HostStatusChanged, ctx: &Context, tx: &mut Tx) -> Result<(), HandlerError> {
        self.handle_batch(vec![(event, ctx)], tx).await.map_err(|e| e.error)
    }

    async fn handle_batch<'a>(&'a self, events: Vec<(HostStatusChanged, &'a Context)>, tx: &'a mut Tx) -> Result<(), BatchError> {
        let mut latest: Vec<(HostStatusChanged, &Context)> = Vec::with_capacity(events.len());
        let mut position = HashMap::with_capacity(events.len());
        for (event, ctx) in events {
            match position.get(&event.host_id) {
                Some(&i) => {
                    let kept: &mut (HostStatusChanged, &Context) = &mut latest[i];
                    if kept.0.updated_at <= event.updated_at {
                        *kept = (event, ctx);
                    }
                }
                None => {
                    position.insert(event.host_id, latest.len());
                    latest.push((event, ctx));
                }
            }
        }
        sqlx::query(
            "INSERT INTO host_statuses (host_id, cluster_id, status, status_info, validations, updated_at, org_id, request_id)
             SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::jsonb[], $6::timestamptz[], $7::text[], $8::text[])
             ON CONFLICT (host_id) DO UPDATE SET
                 cluster_id = EXCLUDED.cluster_id, status = EXCLUDED.status, status_info = EXCLUDED.status_info,
                 validations = EXCLUDED.validations, updated_at = EXCLUDED.updated_at,
                 org_id = EXCLUDED.org_id, request_id = EXCLUDED.request_id
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
        .execute(&mut **tx)
        .await?;
        Ok(())
    }
}
