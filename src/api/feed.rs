//! `GET /events/feed`: new events as Server-Sent Events, for `events watch` and `wait`.
//!
//! Each client gets a task that polls its org's events past a cursor every
//! [`POLL_INTERVAL`] and sends them, oldest first, as SSE messages whose `id` is the event id;
//! a client that reconnects with `Last-Event-ID` resumes after that event. Polling, rather than a
//! notification from the writers, keeps the write path untouched and works across instances.
//!
//! Ids are handed out when a row is inserted, not when its transaction commits, so an event
//! with a lower id can become visible after a higher one was sent. The cursor therefore stays
//! [`SETTLE`] behind: every poll reads from the highest id sent longer ago than that, and skips
//! the ids sent since. A transaction that commits later than [`SETTLE`] after inserting would be
//! missed; the pipeline's transactions last milliseconds.
//!
//! Memory per client is bounded: the task hands events over through a channel of
//! [`BUFFERED`] and waits when the client reads slowly; the ids remembered for the settle window
//! are at most [`MAX_REMEMBERED`]; a client that goes away ends its task at the next send.
//! Feeds are few by design: at most [`MAX_FEEDS`] at once per instance, the rest get 503.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use sqlx::{Postgres, QueryBuilder};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use super::events::{push_filters, EventRow, COLUMNS};
use super::query::EventFilter;
use super::tenant::Tenant;
use super::{ApiError, ApiState};

/// How often a feed looks for new events.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// How long after sending an id the feed still looks below it for late commits.
pub const SETTLE: Duration = Duration::from_secs(30);
/// Events read per poll at most.
const PAGE: i64 = 200;
/// Events waiting for a slow client.
const BUFFERED: usize = 64;
/// Ids remembered for the settle window, at most.
const MAX_REMEMBERED: usize = 10_000;
/// Feeds open at once per instance.
pub const MAX_FEEDS: usize = 64;
/// An SSE comment sent when nothing else was, so proxies keep the connection and clients know it
/// is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(15);

/// The feeds open now, shared by the routes.
#[derive(Clone)]
pub struct FeedSlots(Arc<Semaphore>);

impl Default for FeedSlots {
    fn default() -> Self {
        FeedSlots(Arc::new(Semaphore::new(MAX_FEEDS)))
    }
}

/// Where a feed is: the ids sent within [`SETTLE`], and the highest id sent before them.
struct Cursor {
    floor: i64,
    recent: VecDeque<(i64, Instant)>,
}

impl Cursor {
    fn settle(&mut self) {
        while let Some(&(id, sent)) = self.recent.front() {
            if sent.elapsed() < SETTLE && self.recent.len() <= MAX_REMEMBERED {
                break;
            }
            self.floor = self.floor.max(id);
            self.recent.pop_front();
        }
    }

    fn sent(&mut self, id: i64) {
        self.recent.push_back((id, Instant::now()));
    }

    fn recent_ids(&self) -> Vec<i64> {
        self.recent.iter().map(|(id, _)| *id).collect()
    }
}

async fn next_events(
    state: &ApiState,
    org_id: &str,
    filter: &EventFilter,
    cursor: &Cursor,
) -> Result<Vec<EventRow>, sqlx::Error> {
    let mut sql = QueryBuilder::<Postgres>::new(format!("SELECT {COLUMNS} FROM events"));
    push_filters(&mut sql, org_id, filter, true);
    sql.push(" AND id > ").push_bind(cursor.floor);
    if !cursor.recent.is_empty() {
        sql.push(" AND NOT (id = ANY(").push_bind(cursor.recent_ids()).push("))");
    }
    sql.push(" ORDER BY id LIMIT ").push_bind(PAGE);
    sql.build_query_as().fetch_all(&state.pool).await
}

async fn newest_id(state: &ApiState, org_id: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT coalesce(max(id), 0) FROM events WHERE org_id = $1").bind(org_id).fetch_one(&state.pool).await
}

/// Polls and sends until the client is gone.
async fn follow(state: ApiState, org_id: String, filter: EventFilter, mut cursor: Cursor, to_client: mpsc::Sender<Event>) {
    let mut every = tokio::time::interval(POLL_INTERVAL);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = to_client.closed() => return,
            _ = every.tick() => {}
        }
        cursor.settle();
        let rows = match next_events(&state, &org_id, &filter, &cursor).await {
            Ok(rows) => rows,
            Err(error) => {
                tracing::warn!(%error, "events feed query failed; trying again");
                continue;
            }
        };
        for row in rows {
            let id = row.id;
            let Ok(event) = Event::default().id(id.to_string()).event("event").json_data(&row) else { continue };
            if to_client.send(event).await.is_err() {
                return;
            }
            cursor.sent(id);
        }
    }
}

pub(super) async fn feed(
    State(state): State<ApiState>,
    tenant: Tenant,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let filter = EventFilter::parse(query.as_deref().unwrap_or_default())?;
    let last_event_id = match headers.get("last-event-id") {
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse::<i64>().ok())
                .filter(|id| *id >= 0)
                .ok_or_else(|| ApiError::bad_parameter("last-event-id", "must be an event id (a whole number)"))?,
        ),
    };
    let slot: OwnedSemaphorePermit = state.feeds.0.clone().try_acquire_owned().map_err(|_| ApiError::busy())?;
    let floor = match last_event_id {
        Some(id) => id,
        None => newest_id(&state, &tenant.org_id).await.map_err(|error| ApiError::unavailable(&error))?,
    };
    let (to_client, from_feed) = mpsc::channel(BUFFERED);
    let cursor = Cursor { floor, recent: VecDeque::new() };
    tokio::spawn(follow(state, tenant.org_id, filter, cursor, to_client));
    let stream = futures::stream::unfold((from_feed, slot), |(mut from_feed, slot)| async move {
        from_feed.recv().await.map(|event| (Ok::<_, Infallible>(event), (from_feed, slot)))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(HEARTBEAT).text("heartbeat")).into_response())
}
