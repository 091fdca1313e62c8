//! The events API step: a first page of one org's events, filtered, out of a large table; and
//! how soon the feed shows an event after its commit.
//!
//! The table is filled in SQL (`generate_series`), evenly over the orgs, each org with its own
//! clusters, hosts and infra-envs, and analysed; the API is the library's own router, served
//! in-process on a loopback port, read through the library's own client.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use event_router::api::client::ApiClient;
use event_router::api::{self, ApiState, FeedSlots};
use event_router::envelope::identity::encode_identity;
use futures::StreamExt as _;
use testkit::TestDb;

/// What the step measured.
pub(crate) struct ApiFigures {
    pub(crate) seed_seconds: f64,
    pub(crate) requests: usize,
    /// How long the requests took, 4 at a time.
    pub(crate) elapsed: Duration,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub(crate) max_ms: f64,
    /// Per kind of filter: (kind, p50, p99).
    pub(crate) by_filter: Vec<(&'static str, f64, f64)>,
    pub feed_p50_ms: f64,
    pub(crate) feed_max_ms: f64,
}

const CLUSTERS_PER_ORG: u64 = 10;
const HOSTS_PER_ORG: u64 = 100;

/// Fills `events` with `events` rows over `orgs` orgs, newest last.
async fn seed(db: &TestDb, events: u64, orgs: u64) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO events (name, severity, message, event_time, cluster_id, host_id, infra_env_id, properties,
                             org_id, request_id, source_topic, source_partition, source_offset, count, first_seen,
                             last_seen, dedup_key)
         SELECT (ARRAY['host_registered','host_status_updated','host_validation_failed','host_failed'])[1 + (g / $2) % 4],
                (ARRAY['info','info','warning','error'])[1 + (g / $2) % 4],
                'Host worker-' || (g / $2) % $4 || ': something happened, number ' || g,
                timestamptz '2026-11-01' + g * interval '1 second',
                md5('c' || g % $2 || '-' || (g / $2) % $3)::uuid,
                md5('h' || g % $2 || '-' || (g / $2) % $4)::uuid,
                md5('i' || g % $2 || '-' || (g / $2) % $3)::uuid,
                jsonb_build_object('host_name', 'worker-' || (g / $2) % $4),
                'org-' || g % $2, 'bench-' || g, 'platform.event-router.host-status-changed', 0, g, 1,
                timestamptz '2026-11-01' + g * interval '1 second', timestamptz '2026-11-01' + g * interval '1 second',
                decode(md5(g::text), 'hex')
           FROM generate_series(1, $1) AS g",
    )
    .bind(events as i64)
    .bind(orgs as i64)
    .bind(CLUSTERS_PER_ORG as i64)
    .bind(HOSTS_PER_ORG as i64)
    .execute(&db.pool)
    .await
    .context("seeding events")?;
    sqlx::query("ANALYZE events").execute(&db.pool).await?;
    Ok(())
}

async fn id_of(db: &TestDb, kind: &str, org: u64, n: u64) -> anyhow::Result<String> {
    Ok(sqlx::query_scalar(&format!("SELECT md5('{kind}' || $1 || '-' || $2)::uuid::text"))
        .bind(org as i64)
        .bind(n as i64)
        .fetch_one(&db.pool)
        .await?)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// Runs the step: `events` rows over `orgs`, then `requests` first pages, 4 at a time.
pub(crate) async fn step(events: u64, orgs: u64, requests: usize) -> anyhow::Result<ApiFigures> {
    let db = TestDb::create().await;
    let seeded = Instant::now();
    seed(&db, events, orgs).await?;
    let seed_seconds = seeded.elapsed().as_secs_f64();

    let state = ApiState {
        pool: api::pool(&db.url, 4)?,
        identity_schema: Arc::new(event_router::envelope::identity::compile_schema()?),
        feeds: FeedSlots::default(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let stop = tokio_util::sync::CancellationToken::new();
    let limits = event_router::http::HttpLimits::default();
    let server = tokio::spawn(event_router::http::serve(listener, api::routes(state, limits.request_timeout), limits, {
        let stop = stop.clone();
        async move { stop.cancelled().await }
    }));
    let url = format!("http://{addr}");
    let client_of = |org: u64| {
        let identity = encode_identity(&samples::user_identity(&format!("org-{org}")));
        ApiClient::new(&url, identity)
    };

    // The request mix: every filter the API has, on a random org each time.
    let kinds = ["org only", "cluster", "host", "severities", "message", "name"];
    let mut plan = Vec::with_capacity(requests);
    for n in 0..requests as u64 {
        let org = fastrand::u64(0..orgs);
        let kind = kinds[(n % kinds.len() as u64) as usize];
        let query = match kind {
            "cluster" => format!("cluster_id={}", id_of(&db, "c", org, fastrand::u64(0..CLUSTERS_PER_ORG)).await?),
            "host" => format!("host_id={}", id_of(&db, "h", org, fastrand::u64(0..HOSTS_PER_ORG)).await?),
            "severities" => "severities=warning,error".to_owned(),
            "message" => format!("message=worker-{}%3A", fastrand::u64(0..HOSTS_PER_ORG)),
            "name" => "name=host_failed".to_owned(),
            _ => String::new(),
        };
        plan.push((org, kind, query));
    }
    let requesting = Instant::now();
    let timings: Vec<(&'static str, f64)> = futures::stream::iter(plan)
        .map(|(org, kind, query)| {
            let client = client_of(org);
            async move {
                let client = client?;
                let started = Instant::now();
                let page = client.list(&query).await?;
                anyhow::ensure!(!page.events.is_empty() || kind == "message", "{kind} found nothing for org-{org}");
                Ok::<_, anyhow::Error>((kind, started.elapsed().as_secs_f64() * 1000.0))
            }
        })
        .buffer_unordered(4)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    let elapsed = requesting.elapsed();
    let mut all: Vec<f64> = timings.iter().map(|(_, ms)| *ms).collect();
    all.sort_by(f64::total_cmp);
    let by_filter = kinds
        .iter()
        .map(|kind| {
            let mut these: Vec<f64> = timings.iter().filter(|(k, _)| k == kind).map(|(_, ms)| *ms).collect();
            these.sort_by(f64::total_cmp);
            (*kind, percentile(&these, 0.5), percentile(&these, 0.99))
        })
        .collect();

    // The feed: an event committed for org-0, and the time until the feed shows it.
    let mut feed = client_of(0)?.feed("", None).await?;
    let mut delays = Vec::new();
    for n in 0..20u64 {
        let committed = Instant::now();
        sqlx::query(
            "INSERT INTO events (name, severity, message, event_time, host_id, infra_env_id, properties, org_id, request_id,
                                 source_topic, source_partition, source_offset, first_seen, last_seen, dedup_key)
             VALUES ('host_failed', 'error', 'feed probe', now(), gen_random_uuid(), gen_random_uuid(), '{}', 'org-0',
                     'probe-' || $1, 't', 0, 0, now(), now(), decode(md5('probe' || $1), 'hex'))",
        )
        .bind(n as i64)
        .execute(&db.pool)
        .await?;
        let seen = tokio::time::timeout(Duration::from_secs(10), feed.next()).await.context("the feed showed nothing")??;
        anyhow::ensure!(seen.is_some(), "the feed closed");
        delays.push(committed.elapsed().as_secs_f64() * 1000.0);
    }
    delays.sort_by(f64::total_cmp);

    stop.cancel();
    let _ = server.await;
    db.drop_database().await;
    Ok(ApiFigures {
        seed_seconds,
        requests,
        elapsed,
        p50_ms: percentile(&all, 0.5),
        p99_ms: percentile(&all, 0.99),
        max_ms: all.last().copied().unwrap_or(f64::NAN),
        by_filter,
        feed_p50_ms: percentile(&delays, 0.5),
        feed_max_ms: delays.last().copied().unwrap_or(f64::NAN),
    })
}
