//! Assembles the service from its configuration and runs it until told to stop.
//!
//! `Application::build` does everything that can fail at start-up (database, migrations, schema
//! compilation, handler completeness, Kafka clients, the HTTP listener) so that a bad setting
//! stops the process before it consumes anything. `run_until_stopped` then runs the consumer and
//! the HTTP endpoints until the shutdown future completes, finishes in-flight work within the
//! configured deadline, and commits offsets. If the consumer task ends first (it died), it stops
//! the rest the same way and returns an error, so that the process exits non-zero and is restarted.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::error::KafkaError;
use tokio::net::TcpListener;
use tokio::task::JoinError;
use tokio_util::sync::CancellationToken;

use crate::api::{self, ApiState};
use crate::config::Config;
use crate::consumer::{self, ConsumerError, ConsumerEvents, RouterConsumer};
use crate::error::ErrorChain;
use crate::http::{self, HttpState};
use crate::kafka;
use crate::outbox::Relay;
use crate::pipeline::{Pipeline, PipelineError};
use crate::router::Router;
use crate::store::StoreError;
use crate::writers::hooks::HookWriter;
use crate::writers::syslog::SyslogWriter;
use crate::writers::Writer;
use crate::{handlers, store};

/// The longest a rebalance waits for revoked partitions' messages in hand (librdkafka holds the
/// group's rebalance until then).
const MAX_REVOKE_DEADLINE: Duration = Duration::from_secs(10);

/// How long shutdown may spend publishing what is left in the outbox.
const RELAY_DRAIN_DEADLINE: Duration = Duration::from_secs(5);

/// Why the service could not start; each names the setting to look at.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// `DATABASE_URL` is not usable.
    #[error(transparent)]
    Database(#[from] StoreError),
    #[error("applying database migrations")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    /// A schema without a handler, a schema that does not compile, or no Kafka producer.
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error("KAFKA_BROKERS: cannot create the Kafka consumer")]
    Consumer(#[source] KafkaError),
    #[error("EVENT_ROUTER_TOPIC_PATTERN: cannot subscribe")]
    Subscribe(#[source] KafkaError),
    #[error("EVENT_STREAM_BROKERS: cannot create the stream producer")]
    StreamProducer(#[source] KafkaError),
    /// `EVENT_HOOKS_FILE` cannot be used.
    #[error(transparent)]
    Hooks(#[from] crate::writers::hooks::HooksError),
    /// The events API's identity schema does not compile.
    #[error(transparent)]
    Schema(#[from] crate::envelope::validate::SchemaError),
    #[error("{setting}: cannot listen on {addr}")]
    Listen {
        setting: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Why the service stopped with an error (the process should exit non-zero and be restarted).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The consumer ended with an error of its own (a partition worker died, a fatal Kafka error).
    #[error("the consumer died")]
    ConsumerDied(#[source] ConsumerError),
    /// The consumer ended without an error before shutdown was requested.
    #[error("the consumer stopped without being asked to")]
    ConsumerStopped,
    /// A task of the service panicked; `task` names it ("the consumer task", "the HTTP task", ...).
    #[error("{task} panicked")]
    TaskPanicked {
        task: &'static str,
        #[source]
        source: JoinError,
    },
    /// The HTTP server (`/metrics`, `/healthz`, `/readyz`) failed.
    #[error("the HTTP server failed")]
    Http(#[source] std::io::Error),
}

impl RunError {
    fn panicked(task: &'static str) -> impl FnOnce(JoinError) -> RunError {
        move |source| RunError::TaskPanicked { task, source }
    }
}

pub struct Application {
    config: Config,
    listener: TcpListener,
    /// The events API's.
    api_listener: TcpListener,
    api_state: ApiState,
    /// Where events are delivered besides the stream (hooks).
    writers: Vec<Arc<dyn Writer>>,
    consumer: Arc<RouterConsumer>,
    pipeline: Arc<Pipeline>,
    relay: Option<Relay>,
    http_state: HttpState,
    /// The readiness check's own pool, so that probes never take the pipeline's connections.
    readiness_pool: sqlx::PgPool,
}

impl Application {
    /// Builds the service with its own handlers ([`handlers::router`]).
    pub async fn build(config: Config) -> Result<Self, StartError> {
        Self::build_with_router(config, handlers::router()).await
    }

    /// Builds the service with another routing table (a binary with its own handlers, a test).
    pub async fn build_with_router(config: Config, router: Router) -> Result<Self, StartError> {
        let pool = store::connect(config.database_url.expose(), config.database_max_connections).await?;
        store::MIGRATOR.run(&pool).await.map_err(StartError::Migrate)?;
        let readiness_pool = http::readiness_pool(config.database_url.expose()).await?;
        let pipeline = Arc::new(Pipeline::from_config(&config, router, pool.clone())?);
        let telemetry = pipeline.telemetry.clone();
        let mut topics: Vec<String> = pipeline.validators.topic_names().map(str::to_owned).collect();
        topics.sort();

        let joined = Arc::new(AtomicBool::new(false));
        let consumer: RouterConsumer = kafka::consumer_config(&config.kafka)
            .create_with_context(ConsumerEvents::new(
                telemetry.clone(),
                joined.clone(),
                config.shutdown_timeout.min(MAX_REVOKE_DEADLINE),
            ))
            .map_err(StartError::Consumer)?;
        consumer::subscribe(&consumer, &topics, config.topics.pattern.as_deref()).map_err(StartError::Subscribe)?;
        let relay = if config.topics.stream_enabled {
            let stream_publisher =
                kafka::BatchPublisher::new(&config.stream_kafka, config.stream_publish_timeout, config.stream_linger)
                    .map_err(StartError::StreamProducer)?;
            tracing::info!(topic = %config.topics.stream(), "event stream enabled");
            Some(Relay::new(pool.clone(), stream_publisher, telemetry.clone(), pipeline.backoff, pipeline.relay_wake()))
        } else {
            tracing::debug!("event stream is switched off (EVENT_STREAM_ENABLED=false): handled messages are not re-published");
            None
        };

        let bind = |setting, addr| async move {
            TcpListener::bind(addr).await.map_err(|source| StartError::Listen { setting, addr, source })
        };
        let listener = bind("METRICS_ADDR", config.metrics_addr).await?;
        let api_listener = bind("API_ADDR", config.api_addr).await?;
        let hooks = match &config.event_hooks_file {
            Some(path) => crate::writers::hooks::load(path)?,
            None => Vec::new(),
        };
        let mut writers: Vec<Arc<dyn Writer>> = hooks
            .into_iter()
            .map(|hook| Arc::new(HookWriter::new(hook, pool.clone(), telemetry.clone())) as Arc<dyn Writer>)
            .collect();
        if let Some(addr) = &config.syslog_addr {
            telemetry.writer_configured("syslog");
            writers.push(Arc::new(SyslogWriter::new(addr.clone(), config.syslog_facility)));
        }
        let api_state = ApiState {
            pool: api::pool(config.database_url.expose(), config.api_database_connections)?,
            identity_schema: Arc::new(crate::envelope::identity::compile_schema()?),
            feeds: api::FeedSlots::default(),
        };
        tracing::info!(topics = ?topics, group = %config.kafka.group_id, "event-router started");
        let stall_threshold = config.readiness_stall;
        Ok(Application {
            config,
            listener,
            api_listener,
            api_state,
            writers,
            consumer: Arc::new(consumer),
            pipeline,
            relay,
            http_state: HttpState {
                telemetry,
                pool,
                database: Arc::default(),
                consumer_joined: joined,
                consumer_running: Arc::new(AtomicBool::new(false)),
                stall_threshold,
                limits: http::HttpLimits::default(),
            },
            readiness_pool,
        })
    }

    /// The Kafka consumer, for fault injection in tests (librdkafka's `rd_kafka_test_fatal_error`
    /// needs the client).
    #[doc(hidden)]
    pub fn consumer(&self) -> Arc<RouterConsumer> {
        self.consumer.clone()
    }

    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub fn http_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    /// Where the events API is served.
    pub fn api_addr(&self) -> SocketAddr {
        self.api_listener.local_addr().expect("a bound listener has an address")
    }

    pub async fn run_until_stopped(self, shutdown: impl std::future::Future<Output = ()>) -> Result<(), RunError> {
        let stop = CancellationToken::new();
        let http_stop = CancellationToken::new();
        let limits = self.http_state.limits;
        let stopped = |stop: &CancellationToken| {
            let stop = stop.clone();
            async move { stop.cancelled().await }
        };
        let http = tokio::spawn(http::serve(self.listener, http::routes(self.http_state.clone()), limits, stopped(&http_stop)));
        let api_pool = self.api_state.pool.clone();
        let api_routes = api::routes(self.api_state, limits.request_timeout);
        let serving_api = tokio::spawn(http::serve(self.api_listener, api_routes, limits, stopped(&http_stop)));
        let sampling = tokio::spawn(sample_outbox(self.http_state.clone(), http_stop.clone()));
        let pruning = tokio::spawn(store::retention::run(
            self.http_state.pool.clone(),
            store::retention::Retention {
                inbox: self.config.inbox_retention,
                dead_letters: self.config.dead_letter_retention,
                events: self.config.events_retention,
            },
            store::retention::DEFAULT_INTERVAL,
            http_stop.clone(),
        ));
        let checking =
            tokio::spawn(http::watch_database(self.readiness_pool, self.http_state.database.clone(), http_stop.clone()));
        self.http_state.consumer_running.store(true, Ordering::Release);
        let mut consuming = tokio::spawn(consumer::run(
            self.consumer.clone(),
            self.pipeline.clone(),
            stop.clone(),
            self.config.shutdown_timeout,
            self.config.batching,
        ));
        let writers_stop = CancellationToken::new();
        let writing: Vec<_> = self
            .writers
            .iter()
            .map(|writer| {
                tokio::spawn(crate::writers::run(
                    self.http_state.pool.clone(),
                    writer.clone(),
                    self.config.writer_batch_interval,
                    self.http_state.telemetry.clone(),
                    writers_stop.clone(),
                ))
            })
            .collect();
        let relay_stop = CancellationToken::new();
        let relaying = self.relay.map(|relay| tokio::spawn(relay.run(relay_stop.clone(), RELAY_DRAIN_DEADLINE)));

        // The consumer ending by itself (a worker panicked, a fatal Kafka error) leaves a pod that
        // consumes nothing: stop the service and fail, so that the orchestrator restarts it.
        let consumer_died = tokio::select! {
            biased;
            () = shutdown => None,
            ended = &mut consuming => Some(ended),
        };
        let consumed = match consumer_died {
            None => {
                tracing::info!(
                    deadline_s = self.config.shutdown_timeout.as_secs(),
                    "shutting down: finishing in-flight messages"
                );
                stop.cancel();
                let ended = consuming.await;
                self.http_state.consumer_running.store(false, Ordering::Release);
                ended.map_err(RunError::panicked("the consumer task")).and_then(|result| result.map_err(RunError::ConsumerDied))
            }
            Some(ended) => {
                self.http_state.consumer_running.store(false, Ordering::Release);
                let error = match ended {
                    Ok(Ok(())) => RunError::ConsumerStopped,
                    Ok(Err(error)) => RunError::ConsumerDied(error),
                    Err(panic) => RunError::panicked("the consumer task")(panic),
                };
                tracing::error!(error = %ErrorChain(&error), "the consumer ended before shutdown was requested; stopping the service");
                stop.cancel();
                Err(error)
            }
        };
        relay_stop.cancel();
        writers_stop.cancel();
        for writer in writing {
            writer.await.map_err(RunError::panicked("an event writer"))?;
        }
        if let Some(relaying) = relaying {
            relaying.await.map_err(RunError::panicked("the outbox relay"))?;
        }
        if consumed.is_ok() {
            consumer::close(self.consumer, CONSUMER_CLOSE_DEADLINE).await;
        } else {
            // A consumer that died of a fatal error can hang in librdkafka's teardown; the
            // process is about to exit, so it is left as it is rather than destroyed.
            std::mem::forget(self.consumer.clone());
        }
        if let Err(error) = self.pipeline.publisher.flush(Duration::from_secs(5)) {
            tracing::warn!(%error, "producer flush at shutdown failed");
        }
        http_stop.cancel();
        serving_api.await.map_err(RunError::panicked("the API task"))?.map_err(RunError::Http)?;
        api_pool.close().await;
        http.await.map_err(RunError::panicked("the HTTP task"))?.map_err(RunError::Http)?;
        sampling.await.map_err(RunError::panicked("the outbox sampler"))?;
        pruning.await.map_err(RunError::panicked("the retention task"))?;
        checking.await.map_err(RunError::panicked("the readiness check"))?;
        self.http_state.pool.close().await;
        consumed?;
        tracing::info!("event-router stopped");
        Ok(())
    }
}

/// How long a graceful shutdown waits for the Kafka consumer to leave its group and close.
const CONSUMER_CLOSE_DEADLINE: Duration = Duration::from_secs(10);

/// How often the outbox backlog gauges are refreshed.
const OUTBOX_SAMPLE_INTERVAL: Duration = Duration::from_secs(5);

/// Keeps the outbox backlog gauges current until `stop`.
async fn sample_outbox(state: HttpState, stop: CancellationToken) {
    let mut every = tokio::time::interval(OUTBOX_SAMPLE_INTERVAL);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = every.tick() => {}
        }
        // A failed sample leaves the last values; the database trouble shows in /readyz and retries.
        if let Ok((rows, age)) = crate::outbox::backlog(&state.pool).await {
            state.telemetry.outbox_backlog(rows, age);
        }
    }
}
